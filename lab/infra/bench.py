"""Benchmark: what the sphere costs. `python -m lab.infra.bench [--sizes tiny S] [--batch 64] [--repeats 10]`

Prints, per model size, for the same model and the same batch:
- the median time of a full training step (batch draw, path, forward, loss, backward, clip,
  AdamW, EMA) for Riemannian FM (slerp path + riemannian loss) and for Euclidean FM (linear path
  + MSE), and their ratio; the two are measured interleaved so load on the machine hits both alike;
- the geometry alone (the slerp path and the Riemannian loss, forward and backward with respect
  to the network output) as a fraction of the Riemannian step;
- training throughput (samples/s) and peak memory (CUDA max_memory_allocated; on CPU the growth
  of the process's peak RSS, which only grows, so sizes are run smallest first);
then the exp-map vs Euler sampler time ratio. Warmup steps first, then the median of repeats.
On CPU the default clock is process CPU time (a shared machine inflates wall time at random).
"""
import argparse
import copy
import resource
import statistics
import sys
import time

import torch

from lab import flows, samplers
from lab.dit import dit
from lab.train import fm_step_loss, global_batch
from lab.trainutil import pick_device, update_ema

SPHERE_BUDGET = 0.10  # the sphere may cost at most 10% of a training step at the tiny size


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


CLOCKS = {"wall": time.perf_counter, "cpu": time.process_time}
_clock = time.perf_counter


def _timed(fn, device):
    _sync(device)
    t0 = _clock()
    fn()
    _sync(device)
    return _clock() - t0


def _peak_rss_mb():
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return rss / 2**20 if sys.platform == "darwin" else rss / 2**10  # bytes on macOS, KiB on Linux


def make_step(model, ema, opt, latents, labels, *, path, loss, batch, device, num_classes):
    """A closure running one full training step exactly as lab.train does (step counter inside)."""
    state = {"step": 0}

    def step():
        x1, y, x0, t = global_batch(latents, labels, state["step"], batch_size=batch, seed=0, path=path,
                                    time_dist="logit_normal", shift=True, label_dropout=0.1,
                                    num_classes=num_classes, device=device)
        value = fm_step_loss(model, x1, y, x0, t, path=path, loss=loss, radial_weight=0.1, device=device)
        opt.zero_grad(set_to_none=True)
        value.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        update_ema(ema, model, 0.9999)
        state["step"] += 1
    return step


def make_geometry(latents, batch, device):
    """The spherical part of a step alone: slerp path + Riemannian loss, forward and backward."""
    B, (N, C) = batch, latents.shape[1:]
    x1 = latents[:B].to(device).float()
    x0 = flows.sphere_prior((B, N, C), device=device)
    t = flows.sample_t(B, "logit_normal", device=device)
    pred = torch.randn(B, N, C, device=device, requires_grad=True)

    def geometry():
        x_t, u_t = flows.path("slerp", x0, x1, t)
        flows.fm_loss(pred, u_t, x_t, "riemannian", radial_weight=0.1).backward()
    return geometry


def bench_size(size, *, batch, tokens, channels, repeats, warmup, device):
    torch.manual_seed(0)
    num_classes = 10
    latents = torch.randn(max(4 * batch, 256), tokens, channels)
    labels = torch.randint(num_classes, (latents.shape[0],))
    model = dit(size, in_dim=channels, num_tokens=tokens, num_classes=num_classes).to(device)
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0)
    # one model, one optimizer for both kinds of step: any difference is the path and the loss
    steps = {kind: make_step(model, ema, opt, latents, labels, path=p, loss=l, batch=batch, device=device,
                             num_classes=num_classes)
             for kind, (p, l) in {"euclid": ("linear", "euclidean"), "riemann": ("slerp", "riemannian")}.items()}
    geometry = make_geometry(latents, batch, device)

    rss0 = _peak_rss_mb()
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    for _ in range(warmup):
        for fn in (*steps.values(), geometry):
            fn()
    times = {"euclid": [], "riemann": [], "geometry": []}
    for _ in range(repeats):  # interleaved: a burst of load on the machine hits both kinds alike
        times["euclid"].append(_timed(steps["euclid"], device))
        times["riemann"].append(_timed(steps["riemann"], device))
        times["geometry"].append(_timed(geometry, device))
    med = {k: statistics.median(v) for k, v in times.items()}
    if device.type == "cuda":
        mem = f"{torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB (CUDA peak allocated)"
    else:
        mem = f"+{_peak_rss_mb() - rss0:.0f} MiB (peak RSS growth, CPU)"
    return dict(size=size, params=model.num_params(), batch=batch, tokens=tokens, channels=channels,
                euclid_ms=1e3 * med["euclid"], riemann_ms=1e3 * med["riemann"], geometry_ms=1e3 * med["geometry"],
                ratio=med["riemann"] / med["euclid"], geometry_frac=med["geometry"] / med["riemann"],
                samples_per_s=batch / med["riemann"], samples_per_s_euclid=batch / med["euclid"], memory=mem)


def bench_samplers(*, batch, tokens, channels, steps, repeats, warmup, device, size="tiny"):
    """Median time of sampling with the exp-map vs the Euler sampler (same model, prior, steps)."""
    torch.manual_seed(0)
    model = dit(size, in_dim=channels, num_tokens=tokens, num_classes=10).to(device).eval()
    y = torch.randint(10, (batch,), device=device)
    runs = {m: (lambda m=m: samplers.sample(model, (batch, tokens, channels), y, method=m, steps=steps,
                                            prior="sphere", device=device))
            for m in ("euler", "euler_project", "expmap")}
    for _ in range(warmup):
        for fn in runs.values():
            fn()
    times = {m: [] for m in runs}
    for _ in range(repeats):
        for m, fn in runs.items():
            times[m].append(_timed(fn, device))
    return {m: 1e3 * statistics.median(v) for m, v in times.items()}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", default=["tiny", "S"])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, default=16, help="N (a 4x4 grid by default)")
    p.add_argument("--channels", type=int, default=32, help="C, the token dimension")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--device")
    p.add_argument("--clock", choices=list(CLOCKS), help="default: wall on CUDA; cpu (process time: "
                   "robust to other jobs on a shared machine) on CPU")
    a = p.parse_args(argv)
    device = pick_device(a.device)
    global _clock
    clock = a.clock or ("wall" if device.type == "cuda" else "cpu")
    _clock = CLOCKS[clock]
    print(f"device {device} | torch {torch.__version__} | threads {torch.get_num_threads()} | {clock} clock | "
          f"batch {a.batch} x {a.tokens} tokens x {a.channels} ch | median of {a.repeats} after {a.warmup} warmup")
    print(f"{'size':>5} {'params':>8} {'euclid ms':>10} {'riemann ms':>11} {'ratio':>6} {'geom ms':>8} "
          f"{'geom %':>7} {'samples/s':>10}  peak memory")
    rows = []
    for size in a.sizes:
        r = bench_size(size, batch=a.batch, tokens=a.tokens, channels=a.channels, repeats=a.repeats,
                       warmup=a.warmup, device=device)
        rows.append(r)
        print(f"{size:>5} {r['params'] / 1e6:7.2f}M {r['euclid_ms']:10.2f} {r['riemann_ms']:11.2f} "
              f"{r['ratio']:6.3f} {r['geometry_ms']:8.2f} {100 * r['geometry_frac']:6.1f}% "
              f"{r['samples_per_s']:10.1f}  {r['memory']}", flush=True)
    s = bench_samplers(batch=a.batch, tokens=a.tokens, channels=a.channels, steps=a.sample_steps,
                       repeats=a.repeats, warmup=1, device=device)
    print(f"sampler ({a.sample_steps} steps, tiny, batch {a.batch}): euler {s['euler']:.1f} ms, "
          f"euler_project {s['euler_project']:.1f} ms, expmap {s['expmap']:.1f} ms; "
          f"expmap/euler = {s['expmap'] / s['euler']:.3f}")
    tiny = next((r for r in rows if r["size"] == "tiny"), None)
    if tiny is not None:
        cost = max(tiny["ratio"] - 1, tiny["geometry_frac"])
        verdict = "within" if cost <= SPHERE_BUDGET else "OVER"
        print(f"sphere cost at tiny: step ratio - 1 = {100 * (tiny['ratio'] - 1):+.1f}%, geometry share of the "
              f"Riemannian step = {100 * tiny['geometry_frac']:.1f}% -> {verdict} the {100 * SPHERE_BUDGET:.0f}% budget")
    return rows, s


if __name__ == "__main__":
    main()
