"""Train a flow-matching generator (DiT) on cached token latents [M, N, C].

One flat loop, DiT / nanoGPT style. Knobs are keyword arguments with paper defaults
(AdamW lr 1e-4, betas (0.9, 0.95), no weight decay, grad clip 1.0, EMA 0.9999, label dropout 0.1).

Reproducibility. Everything random in step s (which latents, the noise x0, the times t, which
labels are dropped) is drawn from generators seeded by (seed, s) for the *global* batch; each
rank then takes its slice. So a run resumed from a checkpoint at step k replays steps k..n
exactly as an uninterrupted run would (no replaying of the data order), and a torchrun run on W
processes sees the same samples as one process with the same global batch.

Precision. On CUDA the model runs under bf16 autocast; the path (x_t, u_t) and the loss are
computed outside it in fp32 from the model output cast to float (geometry always fp32).

Usage:
    out = train_generator(latents, labels, path='slerp', loss='riemannian', steps=2000,
                          batch_size=64, out_dir='runs/gen/try1')
    torchrun --nproc_per_node 8 -m lab.train --latents lat.safetensors --out-dir runs/gen/x ...
"""
import argparse
import copy
import os

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from lab import check_choice, flows
from lab import geometry as geo
from lab.dit import DiT, dit
from lab.trainutil import (NaNGuard, autocast, barrier, ddp_cleanup, ddp_setup, is_main,
                           latest_checkpoint, load_checkpoint, requires_grad, save_checkpoint,
                           update_ema)

TIME_DISTS = ("uniform", "logit_normal")


def step_seed(seed, step):
    """One 63-bit seed per (seed, step): the generators of step `step` start from it."""
    return (int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9 + 1) % (2**63 - 1)


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
    if shift:
        t = flows.shift_time(t, flows.shift_alpha(N, C))
    drop = torch.rand(batch_size, generator=g, device=device)[rows] < label_dropout
    y = torch.where(drop, torch.full_like(y, num_classes), y)  # null class for CFG
    return x1, y, x0, t


def fm_step_loss(net, x1, y, x0, t, *, path, loss, radial_weight, device):
    """The loss of one training step: path in fp32, model under autocast, loss in fp32."""
    x_t, u_t = flows.path(path, x0, x1, t)  # fp32 geometry, outside autocast
    with autocast(device):
        pred = net(x_t, t, y)
    return flows.fm_loss(pred.float(), u_t, x_t, loss, radial_weight)


def train_generator(latents, labels=None, *, model=None, size="tiny", model_kw=None,
                    path="linear", loss="euclidean", radial_weight=0.0, time_dist="logit_normal",
                    shift=True, steps=1000, batch_size=64, lr=1e-4, betas=(0.9, 0.95),
                    weight_decay=0.0, grad_clip=1.0, ema_decay=0.9999, label_dropout=0.1,
                    num_classes=None, out_dir=None, ckpt_every=1000, keep=3, resume=True, seed=0,
                    log_every=50, progress=True, device=None):
    """Train a generator with flow matching; return dict(model, ema, losses, step, out_dir, ckpt).

    latents [M, N, C] (any device; batches are moved to the training device), labels [M] long or
    None (unconditional: one class). path 'linear' | 'slerp' | 'shell'; loss 'euclidean' |
    'riemannian' (+ radial_weight λ); time_dist 'uniform' | 'logit_normal'; shift: the
    dimension-dependent time shift alpha = sqrt(N C / 4096). model: a module with
    forward(x_t, t, y), else dit(size, **model_kw). out_dir: checkpoints go to out_dir/checkpoints
    every `ckpt_every` steps and at the end; with resume=True the newest one is loaded first and
    training continues up to `steps` in total. batch_size is the global batch (split over ranks
    under torchrun). losses: the (rank-averaged) loss of every step since step 0.
    """
    check_choice("path", path, flows.PATHS)
    check_choice("loss", loss, flows.LOSSES)
    check_choice("time_dist", time_dist, TIME_DISTS)
    if latents.dim() != 3:
        raise ValueError(f"latents must be [M, N, C], got shape {list(latents.shape)}")
    rank, world, device = ddp_setup(device)
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
                                    device=device)

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
# Width check (RAE, "Diffusion Transformers with Representation Autoencoders", Sec. 4 / Thm. 1)
# ---------------------------------------------------------------------------------------------

def width_floor(x1, width):
    """Smallest normalized FM loss a model with a rank-`width` output layer can reach on one latent.

    Target u = x1 - x0 with x0 ~ N(0, I_n) per token (n = C). Every token's output lies in
    b + S, S = range of the last linear layer (dim <= d = width), b its bias; the residual's part
    in the complement S⊥ does not depend on the network: for projector P onto S⊥,
        E|P(u - b)|^2 = tr P I P + mean_i |P(x1_i - b)|^2 >= (n - d) + sum of the n - d smallest
    eigenvalues of the token covariance of x1 (b = the token mean). Per element, divided by
    Var(u) = 1: ((n - d) + tail) / n. When N - 1 <= d, the token spread fits inside S and the
    floor is exactly (n - d)/n. Inside S, u = (x1 - x_t)/(1 - t) is a function of (x_t, t), so a
    model at least as wide as n can drive the loss to 0.
    """
    x1 = x1.reshape(-1, x1.shape[-1]).double()
    n = x1.shape[-1]
    if width >= n:
        return 0.0
    xc = x1 - x1.mean(0)
    eig = torch.linalg.eigvalsh(xc.T @ xc / x1.shape[0])  # ascending
    return float(((n - width) + eig[: n - width].sum()) / n)


@torch.no_grad()
def fm_eval_loss(model, x1, y, *, samples=4096, seed=1234, batch=1024, time_dist="uniform"):
    """Mean Euclidean FM loss of `model` on one latent x1 [N, C] over fresh (x0, t) draws."""
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    total = 0.0
    for i in range(0, samples, batch):
        n = min(batch, samples - i)
        x1b = x1[None].expand(n, *x1.shape).to(dev)
        x0 = torch.randn(x1b.shape, generator=g).to(dev)
        t = flows.sample_t(n, time_dist, generator=g).to(dev)
        x_t, u = flows.path("linear", x0, x1b, t)
        total += flows.fm_loss(model(x_t, t, torch.full((n,), y, device=dev)).float(), u, x_t).item() * n
    return total / samples


def width_check(n=32, widths=(8, 32), tokens=4, depth=2, heads=2, steps=600, batch_size=128,
                lr=2e-3, seed=0, progress=True, device=None):
    """Train DiTs of several widths to fit ONE latent [tokens, n]; return [dict(width, loss, floor, ...)].

    The loss is the per-element FM velocity MSE, normalized by Var(u) = 1 (x0 ~ N(0, I)), measured
    on 4096 fresh (x0, t) draws after training. `floor` is width_floor(x1, d) (= (n - d)/n here
    since tokens - 1 <= d); a width >= n model should end far below the narrow one's floor.
    """
    torch.manual_seed(seed)
    x1 = torch.randn(tokens, n, generator=torch.Generator().manual_seed(seed))
    rows = []
    for d in widths:
        model = DiT(n, tokens, width=d, depth=depth, heads=heads, num_classes=1, pos="sincos")
        out = train_generator(x1[None], torch.zeros(1, dtype=torch.long), model=model, path="linear",
                              loss="euclidean", time_dist="uniform", shift=False, label_dropout=0.0,
                              steps=steps, batch_size=batch_size, lr=lr, ema_decay=0.0, seed=seed,
                              progress=progress, device=device)
        loss = fm_eval_loss(out["model"], x1, 0)
        rows.append(dict(width=d, n=n, loss=loss, floor=width_floor(x1, d),
                         floor_isotropic=max(n - d, 0) / n, train_loss_end=sum(out["losses"][-20:]) / 20))
    return rows


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
    p.add_argument("--time-dist", default="logit_normal", choices=list(TIME_DISTS))
    p.add_argument("--no-shift", action="store_true")
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
                          radial_weight=a.radial_weight, time_dist=a.time_dist, shift=not a.no_shift,
                          steps=a.steps, batch_size=a.batch_size, lr=a.lr, grad_clip=a.grad_clip,
                          ema_decay=a.ema_decay, label_dropout=a.label_dropout, num_classes=a.num_classes,
                          out_dir=a.out_dir, ckpt_every=a.ckpt_every, resume=not a.no_resume, seed=a.seed,
                          device=a.device)
    if is_main():
        last = out["losses"][-50:]
        print(f"done: step {out['step']}, loss (last {len(last)}) {sum(last) / max(len(last), 1):.4f}, "
              f"checkpoint {out['ckpt']}")


if __name__ == "__main__":
    main()
