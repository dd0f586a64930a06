"""GPU tests: marked `gpu`, skipped without CUDA, deselected by plain `pytest`; run them with `pytest -m gpu`.

They check what a CPU cannot: every notebook runs at smoke size on CUDA (no LAB_DEVICE, so
pick_device picks the GPU), the generator trains in bf16 and in fp32 there, and every matmul,
convolution and attention of training, sampling and Fréchet features runs on the GPU (a tensor that
stayed on the CPU would either raise a device error or silently run there; the recorder sees both).
Tests that need something the machine may lack (papermill and a Jupyter kernel for the notebooks,
converted weights in the lab cache) skip and say what is missing.
"""
import importlib.util
import math

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from lab import evaluate, metrics
from lab.dit import dit
from lab.infra import cache
from lab.train import MEMORY_MARGIN, auto_accum_steps, global_batch, memory_model, train_generator, train_step
from lab.trainutil import requires_grad

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA (run on a GPU node with -m gpu)")]

HEAVY = ("aten.mm", "aten.addmm", "aten.bmm", "aten.baddbmm", "aten.convolution", "aten._convolution",
         "aten.cudnn_convolution", "aten.linear")


class HeavyOpDevices(TorchDispatchMode):
    """Records (op, device type) of every tensor argument of matmuls, convolutions and attention."""

    def __init__(self):
        super().__init__()
        self.seen = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        name = str(func.overloadpacket)
        if name in HEAVY or "scaled_dot_product" in name:
            self.seen |= {(name, a.device.type) for a in pytree.tree_leaves((args, kwargs)) if torch.is_tensor(a)}
        return func(*args, **kwargs)


def tiny_generator(precision, steps=6):
    g = torch.Generator().manual_seed(0)
    latents, labels = torch.randn(64, 16, 8, generator=g), torch.randint(4, (64,), generator=g)
    return train_generator(latents, labels, size="tiny", steps=steps, batch_size=16, num_classes=4,
                           progress=False, device="cuda", precision=precision)


def missing(*, modules=(), weights=()):
    """What this machine lacks of `modules` (importable) and `weights` (converted in the lab cache)."""
    return ([m for m in modules if importlib.util.find_spec(m) is None]
            + [f"weights {w} ({cache.check_converted(w)})" for w in weights if cache.check_converted(w) is not None])


def skip_unless_present(**kw):
    lacking = missing(**kw)
    if lacking:
        pytest.skip("this machine lacks " + ", ".join(lacking) + " (python -m lab.commands.weights fetch; "
                    "pip install -e .)")


@pytest.fixture
def on_the_gpu(monkeypatch):
    monkeypatch.delenv("LAB_DEVICE", raising=False)
    assert metrics.pick_device().type == "cuda"


def _notebooks():
    from test_notebooks import NOTEBOOKS
    return NOTEBOOKS


@pytest.mark.parametrize("nb", _notebooks(), ids=[p.stem for p in _notebooks()])
def test_notebook_runs_at_smoke_size_on_cuda(nb, tmp_path_factory, monkeypatch, on_the_gpu):
    skip_unless_present(modules=("papermill", "nbformat", "ipykernel", "lpips"),
                        weights=("efficientnet_lite0", "dinov2_s_imgfocus", "lpips_alex", "lpips_vgg"))
    import test_notebooks
    test_notebooks.test_notebook_runs_at_smoke_size(nb, tmp_path_factory, monkeypatch)


@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_generator_trains_on_cuda(precision, on_the_gpu):
    out = tiny_generator(precision)
    assert len(out["losses"]) == 6 and all(math.isfinite(v) for v in out["losses"])
    for name in ("model", "ema"):
        assert {p.device.type for p in out[name].parameters()} == {"cuda"}, name
    x = torch.randn(3, 16, 8, device="cuda")
    v = out["ema"](x, torch.rand(3, device="cuda"), torch.zeros(3, dtype=torch.long, device="cuda"))
    assert v.device.type == "cuda" and v.dtype == torch.float32


def test_training_sampling_and_fd_features_run_only_on_the_gpu(on_the_gpu):
    skip_unless_present(weights=("efficientnet_lite0",))
    rec = HeavyOpDevices()
    with rec:
        out = tiny_generator("bf16", steps=3)
        z, _ = evaluate.generate(out["ema"], 8, (16, 8), steps=2)
    assert z.device.type == "cpu" and torch.isfinite(z).all()  # generate hands latents back on the CPU
    images = torch.rand(6, 3, 32, 32)  # CPU images: the features must still run on the GPU
    with rec:
        value = metrics.fd(images, images.flip(0), features="effnet", batch_size=4)["value"]
    assert math.isfinite(value)
    assert rec.seen and {dev for _, dev in rec.seen} == {"cuda"}, sorted(rec.seen)


def test_moments_on_cuda_equal_the_cpu_ones(on_the_gpu):
    x = torch.randn(5000, 16, 8, dtype=torch.float64) + 2
    m = metrics.add_moments(metrics.empty_moments(8), x.reshape(-1, 8))
    assert {v.device.type for v in m.values()} == {"cuda"}
    mu, cov = metrics.mean_cov(x, chunk=4096)
    mu0, cov0 = metrics.feature_stats(x.reshape(-1, 8))
    assert abs(mu - mu0).max() < 1e-9 and abs(cov - cov0).max() < 1e-9


def test_token_fd_on_cuda_equals_the_cpu():
    g = torch.Generator().manual_seed(0)
    real, fake = torch.randn(300, 64, 16, generator=g) + 1, 1.2 * torch.randn(200, 64, 16, generator=g)
    on_cpu, on_gpu = evaluate.token_fd(real, fake, device="cpu"), evaluate.token_fd(real, fake, device="cuda")
    assert on_gpu == pytest.approx(on_cpu, rel=1e-9)


def _step_parts(size="tiny", **model_kw):
    torch.manual_seed(0)
    latents, labels = torch.randn(256, 16, 8), torch.randint(4, (256,))
    model = dit(size, in_dim=8, num_tokens=16, num_classes=4, **model_kw).cuda()
    ema = dit(size, in_dim=8, num_tokens=16, num_classes=4, **model_kw).cuda()
    requires_grad(ema, False)
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    kw = dict(batch_size=64, seed=0, path="slerp", time_dist="logit_normal", shift=True, label_dropout=0.1,
              num_classes=4, device=torch.device("cuda"))
    return model, ema, opt, (lambda step: global_batch(latents, labels, step, **kw))


@pytest.mark.parametrize("accum_steps", [1, 4])
def test_a_training_step_never_waits_for_the_gpu(accum_steps, on_the_gpu):
    """Batch draw, forward, backward, clip, fused AdamW, EMA: no host sync (CUDA's sync debug mode
    raises on one), so the CPU queues steps ahead of the GPU; the loss is read at log intervals only."""
    model, ema, opt, batch = _step_parts()
    healthy = torch.ones((), dtype=torch.bool, device="cuda")
    kw = dict(accum_steps=accum_steps, device=torch.device("cuda"), path="slerp", loss="riemannian",
              radial_weight=0.1, precision="bf16")
    train_step(model, model, ema, opt, batch(0), healthy, **kw)  # first step: lazy state, allowed to sync
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        out = [train_step(model, model, ema, opt, batch(s), healthy, **kw) for s in range(1, 4)]
    finally:
        torch.cuda.set_sync_debug_mode("default")
    assert all(math.isfinite(v) for pair in out for v in torch.stack(pair).tolist()) and bool(healthy)


def test_accumulation_checkpointing_and_compile_train_on_cuda(on_the_gpu):
    g = torch.Generator().manual_seed(0)
    latents, labels = torch.randn(64, 16, 8, generator=g), torch.randint(4, (64,), generator=g)
    kw = dict(size="tiny", steps=4, batch_size=16, num_classes=4, progress=False, device="cuda", precision="fp32",
              path="slerp", loss="riemannian", radial_weight=0.1)
    plain = train_generator(latents, labels, **kw)
    for extra in (dict(accum_steps=4), dict(checkpoint=True), dict(compile=True)):
        out = train_generator(latents, labels, **kw, **extra)
        torch.testing.assert_close(torch.tensor(out["losses"]), torch.tensor(plain["losses"]), rtol=1e-4, atol=1e-6,
                                   msg=str(extra))


def test_memory_budget_holds_on_cuda(on_the_gpu):
    """A budget that the memory model (with its margin) says fits micro-batches of 16 picks accum 4 at
    batch 64, and training at it stays within the budget (CUDA peak allocated, AdamW's moments included)."""
    model, ema, opt, batch = _step_parts("S", ddt_width=768)
    cuda = torch.device("cuda")
    kw = dict(path="slerp", loss="riemannian", radial_weight=0.1, precision="bf16")
    b0 = batch(0)
    rest, one, per_sample = memory_model(model, b0, device=cuda, **kw)
    budget = MEMORY_MARGIN * (rest + one + 15 * per_sample) / 2**30
    k = auto_accum_steps(model, b0, budget, device=cuda, **kw)
    healthy = torch.ones((), dtype=torch.bool, device=cuda)
    torch.cuda.reset_peak_memory_stats()
    for s in range(3):
        train_step(model, model, ema, opt, batch(s), healthy, accum_steps=k, device=cuda, **kw)
    peak = torch.cuda.max_memory_allocated() / 2**30
    print(f"budget {budget:.3f} GiB (per sample {per_sample / 2**20:.1f} MiB) -> accum_steps {k}; "
          f"peak {peak:.3f} GiB = {peak / budget:.1%} of the budget")
    assert k >= 4 and peak <= budget
