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

Time shift (`shift`): True uses alpha = max(1, sqrt(N·C/4096)) (flows.resolve_shift: the RAE shift
only where it moves time toward noise), False none, a number is alpha itself (only a number < 1
moves times toward data). The result's `shift_alpha` says which alpha the run used.

Width: a DiT built here narrower than its tokens (width < C without ddt_width >= C) is refused
(lab.dit.check_width, RAE Thm. 1) unless allow_narrow=True.

Usage:
    out = train_generator(latents, labels, path='slerp', loss='riemannian', steps=2000,
                          batch_size=64, out_dir='runs/gen/try1')
    torchrun --nproc_per_node 8 -m lab.train --latents lat.safetensors --out-dir runs/gen/x ...
"""
import argparse
import contextlib
import copy
import math
import os
import time

import torch
from torch.nn.parallel import DistributedDataParallel as DDP
from tqdm.auto import tqdm

from lab import check_choice, flows, samplers
from lab import geometry as geo
from lab.dit import dit
from lab.latent_cache import mapped_latents
from lab.infra.curves import curves
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
    y = labels[idx.to(labels.device)].to(device, torch.long, non_blocking=True)  # no host sync on CUDA
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


MEMORY_MARGIN = 1.15  # on an H100 a DiT^DH-S step (16 tokens, bf16, accum 4) peaked 8% above the fitted bytes


def train_step(net, model, ema, opt, batch, healthy, *, accum_steps=1, grad_clip=1.0, ema_decay=0.9999,
               device, **step_kw):
    """One optimizer step on this rank's batch (x1, y, x0, t) in accum_steps equal micro-batches.

    Returns (loss, gradient norm) as device tensors, the loss averaged over ranks: no host sync.
    The micro-batch losses are each divided by accum_steps, so their gradients add up to the mean
    loss's gradient over the whole batch. `healthy` (a device bool, updated in place) turns False at
    the first non-finite loss or gradient norm and stays False: from then on AdamW (through the fused
    kernel's found_inf) leaves weights and moments as they were.
    """
    b = len(batch[0])
    micro = b // accum_steps
    ddp = isinstance(net, DDP)
    opt.zero_grad(set_to_none=True)
    logged = torch.zeros((), device=device)
    for i in range(0, b, micro):
        # DDP all-reduces the gradients on the last micro-batch only (nanoGPT's no_sync trick)
        with net.no_sync() if ddp and i + micro < b else contextlib.nullcontext():
            part = fm_step_loss(net, *(v[i:i + micro] for v in batch), device=device, **step_kw) / accum_steps
            part.backward()
        logged += part.detach()
    if ddp:  # every rank must see the same value, or one rank skips a step the others take
        torch.distributed.all_reduce(logged)
        logged /= torch.distributed.get_world_size()
    grad_norm = (torch.nn.utils.clip_grad_norm_(model.parameters(), grad_clip) if grad_clip
                 else torch.zeros((), device=device))
    healthy &= torch.isfinite(logged) & torch.isfinite(grad_norm)
    opt.found_inf = (~healthy).float()  # read by the fused kernel (as GradScaler does): 1 skips the update
    opt.step()
    update_ema(ema, model, ema_decay)  # a skipped step leaves the model as it was: the EMA moves toward it
    return logged, grad_norm.float()


def step_bytes(model, batch, *, device, **step_kw):
    """Memory one step at this micro-batch adds to the resting state: gradients plus activations.

    On CUDA the measured peak (torch.cuda.max_memory_allocated) of two forward + backward passes (the
    second one as a later micro-batch runs: with the gradients already held); elsewhere the
    gradients plus the tensors autograd saves for the backward pass (a lower bound).
    """
    x1, y, x0, t = batch
    params = list(model.parameters())
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        base = torch.cuda.memory_allocated(device)
        torch.cuda.reset_peak_memory_stats(device)
        for _ in range(2):
            fm_step_loss(model, x1, y, x0, t, device=device, **step_kw).backward()
        used = torch.cuda.max_memory_allocated(device) - base
    else:
        own = {p.untyped_storage().data_ptr() for p in params}
        kept = {}

        def pack(x):
            if x.untyped_storage().data_ptr() not in own:
                kept[x.untyped_storage().data_ptr()] = x.untyped_storage().nbytes()
            return x
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda x: x):
            fm_step_loss(model, x1, y, x0, t, device=device, **step_kw)
        used = sum(kept.values()) + sum(p.numel() * p.element_size() for p in params if p.requires_grad)
    model.zero_grad(set_to_none=True)
    return used


def memory_model(model, batch, *, device, **step_kw):
    """(resting, one, per_sample) bytes: a step at micro-batch m needs about resting + one + (m - 1) per_sample.

    resting: weights, EMA and AdamW's two moments (4x the weights); one, per_sample: step_bytes at
    1 and 2 samples, after one unmeasured pass (lazily allocated workspaces stay out of the slope).
    """
    step_bytes(model, [v[:1] for v in batch], device=device, **step_kw)
    one = step_bytes(model, [v[:1] for v in batch], device=device, **step_kw)
    two = step_bytes(model, [v[:2] for v in batch], device=device, **step_kw) if len(batch[0]) > 1 else one
    return 4 * sum(p.numel() * p.element_size() for p in model.parameters()), one, max(two - one, 0)


def auto_accum_steps(model, batch, budget_gb, *, device, **step_kw):
    """The fewest micro-batches (a divisor of this rank's batch) whose step fits in budget_gb:
    MEMORY_MARGIN x memory_model's bytes."""
    b = len(batch[0])
    rest, one, per_sample = memory_model(model, batch, device=device, **step_kw)
    for k in (k for k in range(1, b + 1) if b % k == 0):
        if MEMORY_MARGIN * (rest + one + (b // k - 1) * per_sample) <= budget_gb * 2**30:
            return k
    raise ValueError(f"one sample needs {MEMORY_MARGIN * (rest + one) / 2**20:.1f} MiB > memory_budget_gb={budget_gb}: "
                     "use checkpoint=True, a smaller model or more GPUs")


SAMPLE_STATS_N, SAMPLE_STATS_STEPS = 8, 10  # a few short samples at each checkpoint: cheap


@torch.no_grad()
def sample_stats(ema, shape, *, path, shift, num_classes, seed=0):
    """Token-norm statistics of a few EMA samples: the curves' stand-in for an image grid.

    The trainer has latents, not a decoder, so it logs how far the samples' token norms sit from
    the data's (the lab's question) rather than pictures. Noise from its own generator: the
    training's RNG streams are untouched.
    """
    device = next(ema.parameters()).device
    g = torch.Generator(device).manual_seed(seed)
    y = torch.arange(SAMPLE_STATS_N, device=device) % num_classes
    x = samplers.sample(ema, (SAMPLE_STATS_N, *shape), y, steps=SAMPLE_STATS_STEPS, shift=shift,
                        prior="sphere" if path == "slerp" else "gaussian", null_class=num_classes,
                        generator=g, device=device)
    norms = x.float().norm(dim=-1)
    return {"samples/token_norm_mean": norms.mean().item(), "samples/token_norm_std": norms.std().item()}


def train_generator(latents, labels=None, *, model=None, size="tiny", model_kw=None,
                    path="linear", loss="euclidean", radial_weight=0.0, time_dist="logit_normal",
                    shift=True, steps=1000, batch_size=64, lr=1e-4, betas=(0.9, 0.95),
                    weight_decay=0.0, grad_clip=1.0, ema_decay=0.9999, label_dropout=0.1,
                    num_classes=None, out_dir=None, ckpt_every=1000, keep=3, resume=True, seed=0,
                    log_every=50, progress=True, device=None, precision=None, accum_steps=None,
                    memory_budget_gb=None, checkpoint=False, compile=False, allow_narrow=False):
    """Train a generator with flow matching; return dict(model, ema, losses, step, out_dir, ckpt, accum_steps,
    shift_alpha).

    latents [M, N, C] (any device; batches are moved to the training device), labels [M] long or
    None (unconditional: one class). path 'linear' | 'slerp' | 'shell'; loss 'euclidean' |
    'riemannian' (+ radial_weight λ); time_dist 'uniform' | 'logit_normal'; shift: True for the
    dimension-dependent alpha = max(1, sqrt(N C / 4096)), False for none, or alpha itself (< 1 moves
    time toward data). allow_narrow: build a DiT narrower than C anyway (dit.check_width). precision: 'fp32' | 'bf16' | None (default_precision). model: a module with
    forward(x_t, t, y), else dit(size, **model_kw). out_dir: checkpoints go to out_dir/checkpoints
    every `ckpt_every` steps and at the end; with resume=True the newest one is loaded first and
    training continues up to `steps` in total. batch_size is the global batch (split over ranks
    under torchrun). losses: the (rank-averaged) loss of every step since step 0.

    Curves (with out_dir, rank 0): TensorBoard event files in out_dir/tb (lab.infra.curves) with
    each step's loss and gradient norm at step number i + 1 for losses[i], written at the host
    syncs the loop already makes (every log_every steps and before a checkpoint), the lr and mean
    step time at those syncs, and, at each checkpoint, sample_stats of a few EMA samples (token
    norms: the trainer has no decoder to draw images with).

    Scale: each rank's batch runs as `accum_steps` micro-batches whose gradients add up to the
    whole batch's (same global batch, same result); with accum_steps=None and memory_budget_gb
    set, the fewest micro-batches that fit the budget per GPU (auto_accum_steps). checkpoint=True
    recomputes each DiT block's activations in the backward pass; compile=True runs the model
    through torch.compile.

    Speed: AdamW is fused (one kernel), the EMA one foreach lerp, the noise drawn on the device,
    and the host reads the loss only every `log_every` steps (and before a checkpoint). The NaN
    guard still stops at the first bad step: a step whose loss or gradient norm is not finite and
    every step after it leave the weights and AdamW's state as they were (fused AdamW's found_inf, a
    device flag, no host sync); at the next check the run saves them, as the checkpoint of that
    step, and raises, naming the step and the check that found it. (The EMA in that checkpoint has
    taken the skipped steps' lerps toward those same weights.)
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
        model = dit(size, in_dim=C, num_tokens=N, num_classes=num_classes, checkpoint=checkpoint,
                    allow_narrow=allow_narrow, **(model_kw or {}))
    elif checkpoint:
        if not hasattr(model, "checkpoint"):
            raise ValueError(f"checkpoint=True needs a model with a `checkpoint` switch (lab.dit.DiT), got {type(model).__name__}")
        model.checkpoint = True
    model = model.to(device)
    ema = copy.deepcopy(model).to(device)
    requires_grad(ema, False)
    ema.eval()
    # fused: one kernel for the whole update, and it takes found_inf, which skips a bad step on the device
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=betas, weight_decay=weight_decay, fused=True)

    ckpt_dir = os.path.join(out_dir, "checkpoints") if out_dir else None
    start, losses = 0, []
    if resume and ckpt_dir and latest_checkpoint(ckpt_dir):
        start, extra = load_checkpoint(ckpt_dir, {"model": model, "ema": ema}, {"opt": opt})
        losses = extra["losses"].tolist()

    batch_kw = dict(batch_size=batch_size, seed=seed, path=path, time_dist=time_dist, shift=shift,
                    label_dropout=label_dropout, num_classes=num_classes, device=device)
    step_kw = dict(path=path, loss=loss, radial_weight=radial_weight, precision=precision)
    b = batch_size // world
    mine = slice(rank * b, (rank + 1) * b)
    if accum_steps is None:
        accum_steps = 1 if memory_budget_gb is None else auto_accum_steps(
            model, global_batch(latents, labels, start, rows=mine, **batch_kw), memory_budget_gb,
            device=device, **step_kw)
    if b % accum_steps:
        raise ValueError(f"the per-rank batch {b} must be divisible by accum_steps={accum_steps}")

    net = torch.compile(model) if compile else model
    if world > 1:
        net = DDP(net, device_ids=[device.index] if device.type == "cuda" else None)
    net.train()

    def save(step):
        ckpt = None
        if is_main():
            ckpt = save_checkpoint(ckpt_dir, step, {"model": model, "ema": ema}, {"opt": opt},
                                   {"losses": torch.tensor(losses, dtype=torch.float64)}, keep=keep)
        barrier()
        return ckpt

    healthy = torch.ones((), dtype=torch.bool, device=device)  # False from the first bad step on
    pending = []  # (loss, gradient norm) device tensors of the steps since the last check
    log = curves(os.path.join(out_dir, "tb") if out_dir else None, start)  # no-op without out_dir / off rank 0
    since = [time.perf_counter()]  # when the steps now pending began

    def check(last):
        """One host sync: append the pending losses; at a bad step save the state before it and raise.

        The curves get what this sync brought back: each step's loss and gradient norm (at step
        number = steps done, so losses[i] is at i + 1), the mean step time since the last check, lr.
        """
        first = last + 1 - len(pending)
        values = torch.stack([torch.stack(v) for v in pending]).tolist()
        log.scalars(last + 1, {"lr": opt.param_groups[0]["lr"],
                               "step_time_s": (time.perf_counter() - since[0]) / len(pending)})
        pending.clear()
        for step, (value, grad_norm) in enumerate(values, start=first):
            log.scalars(step + 1, {"loss": value, "grad_norm": grad_norm})
            bad = [(w, v) for w, v in (("loss", value), ("gradient norm", grad_norm)) if not math.isfinite(v)]
            if bad:
                found = f"(found at the check after step {last}; checked every {log_every} steps)"
                NaNGuard(on_fail=(lambda: save(step)) if ckpt_dir else None)(bad[0][1], step, bad[0][0], found)
            losses.append(value)

    # ------------------------------------------------------------------- the loop
    bar = tqdm(range(start, steps), initial=start, total=steps, disable=not (progress and is_main()),
               desc=f"train {path}/{loss}")
    try:
        for step in bar:
            batch = global_batch(latents, labels, step, rows=mine, **batch_kw)
            pending.append(train_step(net, model, ema, opt, batch, healthy, accum_steps=accum_steps,
                                      grad_clip=grad_clip, ema_decay=ema_decay, device=device, **step_kw))

            done = step + 1
            is_ckpt = ckpt_dir and (done % ckpt_every == 0 or done == steps)
            if done % log_every == 0 or done == steps or is_ckpt:
                check(step)
                bar.set_postfix(loss=f"{sum(losses[-log_every:]) / len(losses[-log_every:]):.4f}")
            if is_ckpt:
                if log.tb is not None:
                    log.scalars(done, sample_stats(ema, (N, C), path=path, shift=shift, num_classes=num_classes))
                save(done)
            if not len(pending):
                since[0] = time.perf_counter()
    finally:
        log.close()
        bar.close()
        ddp_cleanup()
    return dict(model=model, ema=ema, losses=losses, step=max(start, steps), out_dir=out_dir,
                ckpt=latest_checkpoint(ckpt_dir) if ckpt_dir else None, accum_steps=accum_steps,
                shift_alpha=flows.resolve_shift(shift, N, C))


# ---------------------------------------------------------------------------------------------
# Command line (works under torchrun)
# ---------------------------------------------------------------------------------------------

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
    p.add_argument("--shift-alpha", type=float, help="time-shift alpha (default max(1, sqrt(N C / 4096)))")
    p.add_argument("--allow-narrow", action="store_true", help="allow width < C without the DDT head (RAE Thm. 1)")
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
    p.add_argument("--accum-steps", type=int, help="micro-batches per step (default 1, or from --memory-budget-gb)")
    p.add_argument("--memory-budget-gb", type=float, help="per-GPU budget: the fewest micro-batches that fit")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing of the DiT blocks")
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT")
    p.add_argument("--device")
    a = p.parse_args(argv)
    # memory-mapped: each rank reads only the rows of its batches, so host memory does not grow with the data
    latents, labels = mapped_latents(a.latents, a.latents_key, a.labels_key)
    model_kw = {k: v for k, v in dict(width=a.width, depth=a.depth, heads=a.heads, ddt_width=a.ddt_width).items()
                if v is not None}
    out = train_generator(latents, labels, size=a.size, model_kw=model_kw, path=a.path, loss=a.loss,
                          radial_weight=a.radial_weight, time_dist=a.time_dist,
                          shift=False if a.no_shift else (a.shift_alpha or True), precision=a.precision,
                          steps=a.steps, batch_size=a.batch_size, lr=a.lr, grad_clip=a.grad_clip,
                          ema_decay=a.ema_decay, label_dropout=a.label_dropout, num_classes=a.num_classes,
                          out_dir=a.out_dir, ckpt_every=a.ckpt_every, resume=not a.no_resume, seed=a.seed,
                          device=a.device, accum_steps=a.accum_steps, memory_budget_gb=a.memory_budget_gb,
                          checkpoint=a.checkpoint, compile=a.compile, allow_narrow=a.allow_narrow)
    if is_main():
        last = out["losses"][-50:]
        print(f"done: step {out['step']}, loss (last {len(last)}) {sum(last) / max(len(last), 1):.4f}, "
              f"accum_steps {out['accum_steps']}, checkpoint {out['ckpt']}")


if __name__ == "__main__":
    exit_process(main)  # ends with os._exit: a rank never waits on gloo's destructors at teardown
