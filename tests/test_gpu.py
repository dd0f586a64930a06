"""GPU tests: marked `gpu`, skipped without CUDA, deselected by plain `pytest`; run them with `pytest -m gpu`.

They check what a CPU cannot: every notebook runs at smoke size on CUDA (no LAB_DEVICE, so
pick_device picks the GPU), the generator trains in bf16 and in fp32 there, and every matmul,
convolution and attention of training, sampling and Fréchet features runs on the GPU (a tensor that
stayed on the CPU would either raise a device error or silently run there; the recorder sees both).
None of these has run on a GPU yet.
"""
import math

import pytest
import torch
from torch.utils import _pytree as pytree
from torch.utils._python_dispatch import TorchDispatchMode

from lab import evaluate, metrics
from lab.train import train_generator

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


@pytest.fixture
def on_the_gpu(monkeypatch):
    monkeypatch.delenv("LAB_DEVICE", raising=False)
    assert metrics.pick_device().type == "cuda"


def _notebooks():
    from test_notebooks import NOTEBOOKS
    return NOTEBOOKS


@pytest.mark.parametrize("nb", _notebooks(), ids=[p.stem for p in _notebooks()])
def test_notebook_runs_at_smoke_size_on_cuda(nb, tmp_path_factory, monkeypatch, on_the_gpu):
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
