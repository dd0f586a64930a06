"""Train a flow-matching generator (DiT) on cached token latents [M, N, C].

One flat loop, DiT / nanoGPT style. Knobs are keyword arguments with paper defaults
(AdamW lr 1e-4, betas (0.9, 0.95), no weight decay, grad clip 1.0, EMA 0.9999, label dropout 0.1).

Reproducibility. Everything random in step s (which latents, the noise x0, the times t, which
labels are dropped) is drawn from generators seeded by (seed, s) for the *global* batch; each
rank then takes its slice. So a run resumed from a checkpoint at step k replays steps k..n
exactly as an uninterrupted run would (no replaying of the data order), and a torchrun run on W
processes sees the same samples as one process with the same global batch.

Precision (`precision`): 'bf16' runs the model under bf16 autocast, 'fp32' runs it in fp32; the
path (x_t, u_t) and the loss are always computed in fp32 from the model output cast to float.
Default (`default_precision`): fp32 on a CPU; on CUDA fp32 for the spherical path (slerp or the
Riemannian loss), since HAE (A.1, App D) found bf16 unstable for Riemannian FM, else bf16.

Time shift (`shift`): True uses alpha = sqrt(N·C/4096) (flows.shift_alpha), False none, a number
is alpha itself. For small latents alpha < 1 and the shift moves times toward data.

Usage:
    out = train_generator(latents, labels, path='slerp', loss='riemannian', steps=2000,
                          batch_size=64, out_dir='runs/gen/try1')
    torchrun --nproc_per_node 8 -m lab.train --latents lat.safetensors --out-dir runs/gen/x ...
"""
import argparse
import contextlib
import copy
import os

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from lab import check_choice, flows
from lab import geometry as geo
from lab.dit import dit
from lab.trainutil import (NaNGuard, barrier, ddp_cleanup, ddp_setup, exit_process, is_main,
                           latest_checkpoint, load_checkpoint, requires_grad, save_checkpoint,
                           step_seed, update_ema)

PRECISIONS = ("fp32", "bf16")


def default_precision(device, path, loss):
    """fp32 off CUDA; on CUDA fp32 for the spherical path (HAE A.1 / App D), bf16 otherwise."""
    if torch.device(device).type != "cuda" or path == "slerp" or loss == "riemannian":
        return "fp32"
    return "bf16"


def model_autocast(device, precision):
    """The context the network runs in: bf16 autocast for 'bf16' (CPU too, when asked), nothing for 'fp32'."""
    check_choice("precision", precision, PRECISIONS)
    if precision == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(torch.device(device).type, dtype=torch.bfloat16)


def global_batch(latents, labels, step, *, batch_size, seed, path, time_dist, shift,
                 label_dropout, num_classes, device, rows=slice(None)):
    """(x1, y, x0, t) of `step`: rows `rows` of a global batch that is the same on every rank and resume.

    The noise is drawn for the whole global batch (so it does not depend on the number of
    processes) and sliced; only this rank's latents are gathered.
    """
    g_idx = torch.Generator().manual_seed(step_seed(seed, step))
    g = torch.Generator(device).manual_seed(step_seed(seed, step))
    M, N, C = latents.shape
    idx = torch.randint(M, (batch_size,), generator=g_idx)[rows]  # sampling with replacement
    x1 = latents[idx.to(latents.device)].to(device, torch.float32, non_blocking=True)
    y = labels[idx.to(labels.device)].to(device, torch.long)
    if path == "slerp":  # the slerp path runs on the sphere of radius sqrt(C): put the data there
        x1 = geo.to_sphere(x1)
    x0 = flows.prior_for(path, (batch_size, N, C), generator=g, device=device)[rows]
    t = flows.sample_t(batch_size, time_dist, generator=g, device=device)[rows]
    t = flows.shift_time(t, flows.resolve_shift(shift, N, C))
    drop = torch.rand(batch_size, generator=g, device=device)[rows] < label_dropout
    y = torch.where(drop, torch.full_like(y, num_classes), y)  # null class for CFG
    return x1, y, x0, t


def fm_step_loss(net, x1, y, x0, t, *, path, loss, radial_weight, device, precision=None):
    """The loss of one training step: path in fp32, model under `precision` (default_precision), loss in fp32."""
    x_t, u_t = flows.path(path, x0, x1, t)  # fp32 geometry, outside autocast
    with model_autocast(device, precision or default_precision(device, path, loss)):
        pred = net(x_t, t, y)
    return flows.fm_loss(pred.float(), u_t, x_t, loss, radial_weight)


def train_generator(latents, labels=None, *, model=None, size="tiny", model_kw=None,
                    path="linear", loss="euclidean", radial_weight=0.0, time_dist="logit_normal",
                    shift=True, steps=1000, batch_size=64, lr=1e-4, betas=(0.9, 0.95),
                    weight_decay=0.0, grad_clip=1.0, ema_decay=0.9999, label_dropout=0.1,
                    num_classes=None, out_dir=None, ckpt_every=1000, keep=3, resume=True, seed=0,
                    log_every=50, progress=True, device=None, precision=None):
    """Train a generator with flow matching; return dict(model, ema, losses, step, out_dir, ckpt).

    latents [M, N, C] (any device; batches are moved to the training device), labels [M] long or
    None (unconditional: one class). path 'linear' | 'slerp' | 'shell'; loss 'euclidean' |
    'riemannian' (+ radial_weight λ); time_dist 'uniform' | 'logit_normal'; shift: True for the
    dimension-dependent alpha = sqrt(N C / 4096), False for none, or alpha itself (< 1 moves time
    toward data). precision: 'fp32' | 'bf16' | None (default_precision). model: a module with
    forward(x_t, t, y), else dit(size, **model_kw). out_dir: checkpoints go to out_dir/checkpoints
    every `ckpt_every` steps and at the end; with resume=True the newest one is loaded first and
    training continues up to `steps` in total. batch_size is the global batch (split over ranks
    under torchrun). losses: the (rank-averaged) loss of every step since step 0.
    """
    check_choice("path", path, flows.PATHS)
    check_choice("loss", loss, flows.LOSSES)
    check_choice("time_dist", time_dist, flows.TIME_DISTS)
    if latents.dim() != 3:
        raise ValueError(f"latents must be [M, N, C], got shape {list(latents.shape)}")
    rank, world, device = ddp_setup(device)
    precision = precision or default_precision(device, path, loss)
    check_choice("precision", precision, PRECISIONS)
    if batch_size % world:
        raise ValueError(f"batch_size={batch_size} must be divisible by the number of processes ({world})")
    M, N, C = latents.shape
    if labels is None:
        labels = torch.zeros(M, dtype=torch.long)
    labels = torch.as_tensor(labels).long()
    num_classes = int(labels.max()) + 1 if num_classes is None else num_classes
    if device.type == "cuda":
        torch.backends.cuda.matmul.allow_tf32 = True  # only matters outside autocast
        torch.backends.cudnn.allow_tf32 = True

    # ------------------------------------------------------------------- model, EMA, optimizer
    torch.manual_seed(seed)
    if model is None:
        model = dit(size, in_dim=C, num_tokens=N, num_classes=num_classes, **(model_kw or {}))
    model = model.to(device)
    ema = copy.deepcopy(model).to(device)
    requires_grad(ema, False)
    ema.eval()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay)

    ckpt_dir = os.path.join(out_dir, "checkpoints") if out_dir else None
    start, losses = 0, []
    if resume and ckpt_dir and latest_checkpoint(ckpt_dir):
        start, extra = load_checkpoint(ckpt_dir, {"model": model, "ema": ema}, {"opt": opt})
        losses = extra["losses"].tolist()
    net = DDP(model, device_ids=[device.index] if device.type == "cuda" else None) if world > 1 else model
    net.train()

    def save(step):
        ckpt = None
        if is_main():
            ckpt = save_checkpoint(ckpt_dir, step, {"model": model, "ema": ema}, {"opt": opt},
                                   {"losses": torch.tensor(losses, dtype=torch.float64)}, keep=keep)
        barrier()
        return ckpt

    current = {"step": start}  # a checkpoint written on failure holds the weights before this step
    guard = NaNGuard(on_fail=(lambda: save(current["step"])) if ckpt_dir else None)
    batch_kw = dict(batch_size=batch_size, seed=seed, path=path, time_dist=time_dist, shift=shift,
                    label_dropout=label_dropout, num_classes=num_classes, device=device)
    b = batch_size // world
    mine = slice(rank * b, (rank + 1) * b)

    # ------------------------------------------------------------------- the loop
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not (progress and is_main()),
               desc=f"train {path}/{loss}")
    try:
        for step in bar:
            x1, y, x0, t = global_batch(latents, labels, step, rows=mine, **batch_kw)
            loss_val = fm_step_loss(net, x1, y, x0, t, path=path, loss=loss, radial_weight=radial_weight,
                                    device=device, precision=precision)

            logged = loss_val.detach().clone()
            if world > 1:  # every rank must see the same value, or one rank stops and the others hang
                torch.distributed.all_reduce(logged)
                logged /= world
            current["step"] = step
            guard(logged, step)

            opt.zero_grad(set_to_none=True)
            loss_val.backward()
            if grad_clip:
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
                guard(grad_norm, step, what="gradient norm")
            opt.step()
            update_ema(ema, model, ema_decay)

            losses.append(float(logged))
            done = step + 1
            if ckpt_dir and (done % ckpt_every == 0 or done == steps):
                save(done)
            if done % log_every == 0 or done == steps:
                bar.set_postfix(loss=f"{sum(losses[-log_every:]) / len(losses[-log_every:]):.4f}")
    finally:
        bar.close()
        ddp_cleanup()
    return dict(model=model, ema=ema, losses=losses, step=max(start, steps), out_dir=out_dir,
                ckpt=latest_checkpoint(ckpt_dir) if ckpt_dir else None)


# ---------------------------------------------------------------------------------------------
# Command line (works under torchrun)
# ---------------------------------------------------------------------------------------------

def load_latents(files, latents_key="latents", labels_key="labels"):
    """Concatenate [M, N, C] latents (and labels, if present) from safetensors files."""
    from safetensors.torch import load_file
    xs, ys = [], []
    for f in files:
        d = load_file(f)
        if latents_key not in d:
            raise KeyError(f"{f} has no tensor {latents_key!r} (has {sorted(d)}); pass --latents-key")
        xs.append(d[latents_key])
        ys.append(d[labels_key].long() if labels_key in d else torch.zeros(len(d[latents_key]), dtype=torch.long))
    return torch.cat(xs), torch.cat(ys)


def main(argv=None):
    p = argparse.ArgumentParser(description="Train a flow-matching DiT on cached latents (torchrun-ready).")
    p.add_argument("--latents", nargs="+", required=True, help="safetensors file(s) with 'latents' [M,N,C] (+ 'labels' [M])")
    p.add_argument("--latents-key", default="latents")
    p.add_argument("--labels-key", default="labels")
    p.add_argument("--out-dir", required=True)
    p.add_argument("--size", default="tiny", choices=["tiny", "S", "B", "L", "XL"])
    p.add_argument("--width", type=int)
    p.add_argument("--depth", type=int)
    p.add_argument("--heads", type=int)
    p.add_argument("--ddt-width", type=int)
    p.add_argument("--path", default="linear", choices=list(flows.PATHS))
    p.add_argument("--loss", default="euclidean", choices=list(flows.LOSSES))
    p.add_argument("--radial-weight", type=float, default=0.0)
    p.add_argument("--time-dist", default="logit_normal", choices=list(flows.TIME_DISTS))
    p.add_argument("--no-shift", action="store_true")
    p.add_argument("--shift-alpha", type=float, help="time-shift alpha (default sqrt(N C / 4096))")
    p.add_argument("--precision", choices=list(PRECISIONS), help="default: fp32 for the spherical path")
    p.add_argument("--steps", type=int, default=1000)
    p.add_argument("--batch-size", type=int, default=64, help="global batch (split over ranks)")
    p.add_argument("--lr", type=float, default=1e-4)
    p.add_argument("--grad-clip", type=float, default=1.0)
    p.add_argument("--ema-decay", type=float, default=0.9999)
    p.add_argument("--label-dropout", type=float, default=0.1)
    p.add_argument("--num-classes", type=int)
    p.add_argument("--ckpt-every", type=int, default=1000)
    p.add_argument("--no-resume", action="store_true")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device")
    a = p.parse_args(argv)
    latents, labels = load_latents(a.latents, a.latents_key, a.labels_key)
    model_kw = {k: v for k, v in dict(width=a.width, depth=a.depth, heads=a.heads, ddt_width=a.ddt_width).items()
                if v is not None}
    out = train_generator(latents, labels, size=a.size, model_kw=model_kw, path=a.path, loss=a.loss,
                          radial_weight=a.radial_weight, time_dist=a.time_dist,
                          shift=False if a.no_shift else (a.shift_alpha or True), precision=a.precision,
                          steps=a.steps, batch_size=a.batch_size, lr=a.lr, grad_clip=a.grad_clip,
                          ema_decay=a.ema_decay, label_dropout=a.label_dropout, num_classes=a.num_classes,
                          out_dir=a.out_dir, ckpt_every=a.ckpt_every, resume=not a.no_resume, seed=a.seed,
                          device=a.device)
    if is_main():
        last = out["losses"][-50:]
        print(f"done: step {out['step']}, loss (last {len(last)}) {sum(last) / max(len(last), 1):.4f}, "
              f"checkpoint {out['ckpt']}")


if __name__ == "__main__":
    exit_process(main)  # ends with os._exit: a rank never waits on gloo's destructors at teardown
