"""lab.evaluate: generation, batched decoding, token FD and the decode radius, against closed forms."""
import math

import pytest
import torch
import torch.nn.functional as F

import lab  # noqa: F401
from lab import evaluate, metrics
from lab import geometry as geo


class Toward(torch.nn.Module):
    """The exact linear-path field toward one target per class: Euler lands on it on any grid."""

    def __init__(self, targets):
        super().__init__()
        self.targets = targets  # [K, N, C]
        self.num_classes = len(targets)
        self.times = []

    def forward(self, x, t, y):
        self.times.append(float(t[0]))
        return (self.targets[y.clamp_max(self.num_classes - 1)] - x) / (1 - t)[:, None, None]


class Patchify:
    """Lossless stand-in autoencoder: 4x4 pixel patches as tokens (16x16 image -> 16 tokens of 48)."""

    def __init__(self):
        self.calls = []

    def encode(self, x):
        return F.pixel_unshuffle(x, 4).flatten(2).transpose(1, 2)

    def decode(self, z):
        self.calls.append(len(z))
        return F.pixel_shuffle(z.transpose(1, 2).reshape(len(z), 48, 4, 4), 4)


def test_generate_lands_on_targets_labels_cycle_and_seeded():
    targets = torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(0))
    gen = Toward(targets)
    z, labels = evaluate.generate(gen, 7, (4, 8), steps=5, batch_size=3, seed=1)
    assert z.shape == (7, 4, 8) and z.device.type == "cpu"
    assert labels.tolist() == [0, 1, 2, 0, 1, 2, 0]
    torch.testing.assert_close(z, targets[labels], atol=1e-5, rtol=1e-5)
    z2, _ = evaluate.generate(gen, 2, (4, 8), steps=5, labels=torch.tensor([2, 2]))
    torch.testing.assert_close(z2, targets[[2, 2]], atol=1e-5, rtol=1e-5)


def test_generate_seed_decode_radius_and_shift_reach_the_sampler():
    gen = Toward(torch.randn(1, 16, 32))
    zero = lambda x, t, y: torch.zeros_like(x)  # noqa: E731  (the sample is the prior itself)
    a, _ = evaluate.generate(zero, 4, (16, 32), steps=2, seed=3, num_classes=1)
    b, _ = evaluate.generate(zero, 4, (16, 32), steps=2, seed=3, num_classes=1)
    c, _ = evaluate.generate(zero, 4, (16, 32), steps=2, seed=4, num_classes=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(a, torch.randn(4, 16, 32, generator=torch.Generator().manual_seed(3)))
    s, _ = evaluate.generate(zero, 4, (16, 32), steps=2, prior="sphere", decode_radius=2.5, num_classes=1)
    torch.testing.assert_close(s.norm(dim=-1), torch.full((4, 16), 2.5))
    for shift, alpha in ((False, 1.0), (True, 1.0), (0.354, 0.354), (2.0, 2.0)):  # True: max(1, 0.354)
        gen.times.clear()
        evaluate.generate(gen, 1, (16, 32), steps=4, shift=shift)
        grid = torch.linspace(0, 1, 5, dtype=torch.float64)[:-1]
        assert gen.times == pytest.approx((grid / (alpha - (alpha - 1) * grid)).tolist(), abs=1e-6)


def test_decode_batched_equals_one_decode_and_clamps():
    ae = Patchify()
    z = 2 * torch.randn(10, 16, 48, generator=torch.Generator().manual_seed(1))
    out = evaluate.decode_batched(ae, z, batch_size=4)
    assert ae.calls == [4, 4, 2]
    torch.testing.assert_close(out, ae.decode(z).clamp(0, 1))
    assert out.dtype == torch.float32 and out.min() == 0 and out.max() == 1
    assert evaluate.decode is evaluate.decode_batched


def test_token_fd_closed_forms():
    g = torch.Generator().manual_seed(2)
    real = torch.randn(50, 8, 6, generator=g, dtype=torch.float64)
    m = torch.tensor([1.0, -2.0, 0.5, 0.0, 0.0, 3.0], dtype=torch.float64)
    # a shifted copy: same covariance, so FD = |m|^2 exactly
    assert evaluate.token_fd(real, real + m) == pytest.approx(m.pow(2).sum().item(), rel=1e-8)
    # a scaled copy around the mean: FD = (s - 1)^2 tr(Σ), Σ the token covariance
    mu = real.reshape(-1, 6).mean(0)
    flat = real.reshape(-1, 6)
    cov_trace = torch.cov(flat.T).trace().item()
    assert evaluate.token_fd(real, mu + 3 * (real - mu)) == pytest.approx(4 * cov_trace, rel=1e-8)
    assert abs(evaluate.token_fd(real, real)) < 1e-8
    # tokens are the samples: permuting tokens across images changes nothing
    perm = real.reshape(-1, 6)[torch.randperm(400, generator=g)].reshape(50, 8, 6)
    assert evaluate.token_fd(real, perm) == pytest.approx(0.0, abs=1e-8)


def test_norm_summary():
    z = torch.ones(2, 3, 4)
    z[1] *= 3  # norms 2 (three tokens) and 6 (three tokens)
    out = evaluate.norm_summary(z)
    assert out["norm_mean"] == pytest.approx(4.0)
    assert out["norm_cv"] == pytest.approx(torch.tensor([2.0] * 3 + [6.0] * 3).std().item() / 4.0)


def _channel_means(images, kind, **kw):
    """A cheap stand-in feature extractor: per-channel means and stds of the images (kind must be named)."""
    assert kind in metrics.FD_NAMES, kind
    return torch.cat([images.mean((2, 3)), images.std((2, 3))], 1).double()


@pytest.mark.parametrize("decode_radius", [None, 4.0])
def test_quality_decodes_at_the_decode_radius(monkeypatch, decode_radius):
    monkeypatch.setattr(metrics, "extract_features", _channel_means)
    ae = Patchify()
    g = torch.Generator().manual_seed(3)
    real_images = torch.rand(12, 3, 16, 16, generator=g)
    real = ae.encode(real_images)
    fake = 0.5 * ae.encode(torch.rand(12, 3, 16, 16, generator=g))
    out, images = evaluate.quality(ae, fake, real, _channel_means(real_images, "effnet"), decode_radius=decode_radius)
    z = fake if decode_radius is None else geo.to_sphere(fake, decode_radius)
    torch.testing.assert_close(images, ae.decode(z).clamp(0, 1))
    real_feats = _channel_means(real_images, "effnet")
    expected_fd = metrics.fd_from_features(real_feats, _channel_means(images, "effnet"))["value"]
    assert out["fd_images"] == pytest.approx(expected_fd, rel=1e-9)
    assert out["fd_tokens"] == pytest.approx(evaluate.token_fd(real, fake), rel=1e-12)  # before rescaling
    assert out["fd_name"] == "FD-effnet" and out["n"] == 12 and out["fd_network"] == metrics.NETWORKS["effnet"]
    dino, _ = evaluate.quality(ae, fake, real, real_feats, decode_radius=decode_radius, features="dino")
    assert dino["fd_name"] == "FD-dino" and dino["fd_network"] == metrics.NETWORKS["dino"]
    assert out["norm_mean"] == pytest.approx(fake.norm(dim=-1).mean().item(), rel=1e-6)
    if decode_radius is not None:  # the rescale reached the decoder
        none, _ = evaluate.quality(ae, fake, real, _channel_means(real_images, "effnet"))
        assert none["fd_images"] != pytest.approx(out["fd_images"], rel=1e-3)


def test_device_of_module_default_and_override():
    assert evaluate._device_of(torch.nn.Linear(2, 2, device="meta")).type == "meta"
    assert evaluate._device_of(Patchify()) == torch.device("cpu")  # no parameters: the CPU
    assert evaluate._device_of(torch.nn.Linear(2, 2), "meta") == torch.device("meta")


def test_unguided_samples_draw_other_noise_than_guided_ones_each_reproducibly():
    # issue 21 item 12: notebook 05's CFG and no-CFG agreements must not share a noise draw
    zero = lambda x, t, y: torch.zeros_like(x)  # noqa: E731  (the samples are the prior draws)
    s = 3
    assert evaluate.nocfg_seed(s) == s + evaluate.NOCFG_SEED_OFFSET != s
    guided, _ = evaluate.generate(zero, 4, (16, 32), steps=2, seed=s, num_classes=1)
    free, _ = evaluate.generate(zero, 4, (16, 32), steps=2, seed=evaluate.nocfg_seed(s), num_classes=1)
    again, _ = evaluate.generate(zero, 4, (16, 32), steps=2, seed=evaluate.nocfg_seed(s), num_classes=1)
    assert torch.equal(free, again)
    assert not torch.allclose(guided, free)
    # no seed of a notebook's range (seed, seed + seeds) lands on another seed's unguided draw
    assert all(evaluate.nocfg_seed(a) != b for a in range(100) for b in range(100))


def test_notebook_05_takes_the_unguided_seed_from_lab_evaluate():
    import json
    from pathlib import Path
    nb = Path(__file__).resolve().parents[1] / "notebooks" / "05_flow_matching.ipynb"
    code = "".join("".join(c["source"]) for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code")
    assert "evaluate.nocfg_seed(s)" in code and "10_000" not in code
