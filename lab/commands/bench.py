"""Benchmark: step time, throughput, memory, MFU, and what the sphere costs. `python -m lab.commands.bench`

Defaults: on CUDA sizes S and XL at paper shape (256 tokens x 768 channels, RAE's 2-layer 2048-wide
DDT head, bf16); on a CPU tiny and S at 16 x 32 with a head twice the base width, fp32. Both kinds
of step run at one precision, so their ratio is the sphere's cost alone; on CUDA the generator
trains the spherical path in fp32 by default (lab.train.default_precision): `--precision fp32`.
Prints, per model size, for the same model and the same batch:
- the median time of a full training step (lab.train.train_step: batch draw, path, forward, loss,
  backward, clip, fused AdamW, foreach EMA; `--accum-steps`, `--checkpoint`, `--compile` as in
  lab.train) for Riemannian FM (slerp path + riemannian loss) and for Euclidean FM (linear path
  + MSE), and their ratio; the two are measured interleaved so load on the machine hits both alike;
- the geometry alone (the slerp path and the Riemannian loss, forward and backward with respect
  to the network output) as a fraction of the Riemannian step;
- training throughput (samples/s) and peak memory (CUDA max_memory_allocated; on CPU the growth
  of the process's peak RSS, which only grows, so sizes are run smallest first);
- model FLOPs of one forward + backward (torch.utils.flop_counter.FlopCounterMode, attention
  counted through the math SDPA kernel), the achieved TFLOP/s of the Riemannian step, and MFU
  against the GPU's dense bf16 peak (PEAK_BF16_TFLOPS; blank for an unknown GPU, "—" on a CPU);
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
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.flop_counter import FlopCounterMode

from lab import flows, samplers
from lab.dit import SIZES, dit
from lab.train import global_batch, train_step
from lab.trainutil import pick_device

SPHERE_BUDGET = 0.10  # the sphere may cost at most 10% of a training step at the tiny size
# dense bf16 tensor-core peak, TFLOP/s, by a substring of torch.cuda.get_device_name (first match);
# None: a variant whose peak differs and is not in this table (MFU left blank rather than wrong)
PEAK_BF16_TFLOPS = (("H100 PCIe", 756), ("NVL", None), ("H100", 989), ("H200", 989), ("A100", 312))


def peak_tflops(device):
    """The GPU's dense bf16 peak in TFLOP/s, None on a CPU or a GPU not in PEAK_BF16_TFLOPS."""
    if torch.device(device).type != "cuda":
        return None
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_TFLOPS if key in name), None)


def step_flops(model, batch, tokens, channels, device, count_batch=2):
    """Model FLOPs of one forward + backward at `batch`: counted at `count_batch` and scaled (every
    op of the DiT is per sample, so the count is linear in the batch). The math SDPA kernel makes
    attention visible to FlopCounterMode on every device; the count does not depend on the kernel."""
    b = min(batch, count_batch)
    x = torch.randn(b, tokens, channels, device=device)
    t, y = torch.rand(b, device=device), torch.zeros(b, dtype=torch.long, device=device)
    counter = FlopCounterMode(display=False)
    with sdpa_kernel(SDPBackend.MATH), counter:
        model(x, t, y).float().square().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops() * batch / b


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


def make_step(model, ema, opt, latents, labels, *, path, loss, batch, device, num_classes, precision=None,
              net=None, accum_steps=1):
    """A closure running one full training step exactly as lab.train does (lab.train.train_step; step
    counter inside). net: what runs the forward (torch.compile(model)), default the model itself."""
    state = {"step": 0, "healthy": torch.ones((), dtype=torch.bool, device=device)}

    def step():
        b = global_batch(latents, labels, state["step"], batch_size=batch, seed=0, path=path, time_dist="logit_normal",
                         shift=True, label_dropout=0.1, num_classes=num_classes, device=device)
        train_step(model if net is None else net, model, ema, opt, b, state["healthy"], accum_steps=accum_steps, grad_clip=1.0,
                   ema_decay=0.9999, device=device, path=path, loss=loss, radial_weight=0.1, precision=precision)
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


def bench_size(size, *, batch, tokens, channels, repeats, warmup, device, ddt_width=None, precision="fp32",
               checkpoint=False, compile=False, accum_steps=1):
    """One row of the table: both kinds of step on one model (DDT head of ddt_width when given), with
    lab.train's options: activation checkpointing, torch.compile, gradient accumulation."""
    torch.manual_seed(0)
    num_classes = 10
    latents = torch.randn(max(4 * batch, 256), tokens, channels)
    labels = torch.randint(num_classes, (latents.shape[0],))
    model = dit(size, in_dim=channels, num_tokens=tokens, num_classes=num_classes, ddt_width=ddt_width,
                allow_narrow=True).to(device)  # a speed row, not a fit: RAE Thm 1 guards training
    flops = step_flops(model, batch, tokens, channels, device)  # model FLOPs: without the recomputation
    model.checkpoint = checkpoint
    ema = copy.deepcopy(model).requires_grad_(False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, betas=(0.9, 0.95), weight_decay=0.0, fused=True)
    net = torch.compile(model) if compile else model
    # one model, one optimizer for both kinds of step: any difference is the path and the loss
    steps = {kind: make_step(model, ema, opt, latents, labels, path=p, loss=l, batch=batch, device=device,
                             num_classes=num_classes, precision=precision, net=net, accum_steps=accum_steps)
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
    peak, tflops = peak_tflops(device), flops / med["riemann"] / 1e12
    return dict(size=size, params=model.num_params(), batch=batch, tokens=tokens, channels=channels,
                device=device.type, ddt_width=ddt_width, precision=precision, gflop_per_step=flops / 1e9, tflops=tflops,
                mfu=None if peak is None else tflops / peak, peak_tflops=peak,
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


HEADER = (f"{'size':>5} {'head':>5} {'params':>8} {'euclid ms':>10} {'riemann ms':>11} {'ratio':>6} {'geom ms':>8} "
          f"{'geom %':>7} {'samples/s':>10} {'GFLOP/step':>11} {'TFLOP/s':>8} {'MFU':>6}  peak memory")


def format_row(r):
    """One printed line of a bench_size row; MFU '—' on a CPU, blank for a GPU without a known peak."""
    mfu = "—" if r["device"] != "cuda" else ("" if r["mfu"] is None else f"{100 * r['mfu']:.1f}%")
    return (f"{r['size']:>5} {r['ddt_width'] or '-':>5} {r['params'] / 1e6:7.2f}M {r['euclid_ms']:10.2f} "
            f"{r['riemann_ms']:11.2f} {r['ratio']:6.3f} {r['geometry_ms']:8.2f} {100 * r['geometry_frac']:6.1f}% "
            f"{r['samples_per_s']:10.1f} {r['gflop_per_step']:11.2f} {r['tflops']:8.3f} {mfu:>6}  {r['memory']}")


def _defaults(a, device):
    """Paper shape on CUDA (S, XL; 256 x 768 tokens; 2048-wide DDT head; bf16); small on a CPU."""
    cuda = device.type == "cuda"
    a.sizes = a.sizes or (["S", "XL"] if cuda else ["tiny", "S"])
    a.tokens = a.tokens or (256 if cuda else 16)
    a.channels = a.channels or (768 if cuda else 32)
    a.precision = a.precision or ("bf16" if cuda else "fp32")
    return a


def _ddt(a, size):
    if a.ddt_width is not None:
        return a.ddt_width or None  # 0: no head
    return 2048 if a.device_type == "cuda" else 2 * SIZES[size]["width"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--sizes", nargs="+", help="default: S XL on CUDA, tiny S on a CPU")
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--tokens", type=int, help="N (default 256 = 16x16 on CUDA, 16 = 4x4 on a CPU)")
    p.add_argument("--channels", type=int, help="C, the token dimension (default 768 on CUDA, 32 on a CPU)")
    p.add_argument("--ddt-width", type=int, help="DDT head width (0: none; default 2048 on CUDA, 2x width on a CPU)")
    p.add_argument("--precision", choices=["fp32", "bf16"], help="both kinds of step (default bf16 on CUDA)")
    p.add_argument("--checkpoint", action="store_true", help="activation checkpointing of the DiT blocks")
    p.add_argument("--compile", action="store_true", help="torch.compile the DiT")
    p.add_argument("--accum-steps", type=int, default=1, help="micro-batches per step (batch / accum each)")
    p.add_argument("--repeats", type=int, default=15)
    p.add_argument("--warmup", type=int, default=3)
    p.add_argument("--sample-steps", type=int, default=20)
    p.add_argument("--device")
    p.add_argument("--clock", choices=list(CLOCKS), help="default: wall on CUDA; cpu (process time: "
                   "robust to other jobs on a shared machine) on CPU")
    a = p.parse_args(argv)
    device = pick_device(a.device)
    a = _defaults(a, device)
    a.device_type = device.type
    if device.type == "cuda":  # as lab.train sets them: fp32 matmuls outside autocast run on TF32 tensor cores
        torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    global _clock
    clock = a.clock or ("wall" if device.type == "cuda" else "cpu")
    _clock = CLOCKS[clock]
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    print(f"device {device} ({name}, bf16 peak {peak_tflops(device) or '—'} TFLOP/s) | torch {torch.__version__} | "
          f"threads {torch.get_num_threads()} | {clock} clock | {a.precision} | batch {a.batch} x {a.tokens} tokens "
          f"x {a.channels} ch | accum {a.accum_steps}{' | checkpoint' * a.checkpoint}{' | compile' * a.compile} | "
          f"median of {a.repeats} after {a.warmup} warmup")
    print(HEADER)
    rows = []
    for size in a.sizes:
        try:
            r = bench_size(size, batch=a.batch, tokens=a.tokens, channels=a.channels, repeats=a.repeats,
                           warmup=a.warmup, device=device, ddt_width=_ddt(a, size), precision=a.precision,
                           checkpoint=a.checkpoint, compile=a.compile, accum_steps=a.accum_steps)
        except torch.cuda.OutOfMemoryError:
            print(f"{size:>5} out of GPU memory at batch {a.batch}: try a smaller --batch", flush=True)
            torch.cuda.empty_cache()
            continue
        rows.append(r)
        print(format_row(r), flush=True)
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
