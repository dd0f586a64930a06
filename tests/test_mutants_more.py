"""Tests that kill the surviving mutants of geometry and evaluate (tests/mutation_run.py) that change a
value: closed forms and identities, each named after the behaviour it pins. The survivors that no test
can tell from the original are in tests/mutation_equivalents.md."""
import inspect
import math

import numpy as np
import pytest
import torch

import lab  # noqa: F401
from lab import evaluate, metrics
from lab import geometry as geo
from stand_ins import Patchify

# ----------------------------------------------------------------------------- geometry


def test_compute_dtype_is_float32_unless_float64():
    """The documented numerics: float32 math for every narrower dtype, float64 only for float64 input
    (float64 everywhere would run ~30-60x slower on a GPU)."""
    for dt in (torch.bfloat16, torch.float16, torch.float32):
        assert geo._compute_dtype(torch.zeros(1, dtype=dt)) == torch.float32
    assert geo._compute_dtype(torch.zeros(1, dtype=torch.float64)) == torch.float64


def test_expmap_drops_the_radial_part_of_v():
    g = torch.Generator().manual_seed(5)
    x = geo.to_sphere(torch.randn(4, 3, 8, dtype=torch.float64, generator=g))
    _, v = geo.split_radial(torch.randn(4, 3, 8, dtype=torch.float64, generator=g), x)  # tangent at x
    r = math.sqrt(8)
    th = v.norm(dim=-1, keepdim=True) / r
    closed = torch.cos(th) * x + r * torch.sin(th) * v / v.norm(dim=-1, keepdim=True)  # Rodrigues
    torch.testing.assert_close(geo.expmap(x, v), closed)
    c = torch.linspace(-2, 3, 4, dtype=torch.float64)[:, None, None]
    torch.testing.assert_close(geo.expmap(x, v + c * x), closed)  # a radial part changes nothing
    torch.testing.assert_close(geo.expmap(x, c * x), x)           # a purely radial v stays at x


def test_logmap_trusts_the_tangent_at_the_antipode_cutoff():
    """Near the antipode logmap follows w (the tangent part of y) while |w| >= 8 eps, and only below
    that the fixed fallback tangent (e0 at x = e1). Built so that |w| is exactly k·eps in float64."""
    eps = torch.finfo(torch.float64).eps
    x = torch.tensor([0.0, 1.0, 0.0], dtype=torch.float64)  # e1: the fallback tangent is +e0
    for k, sign in ((8, -1.0), (16, -1.0), (4, 1.0)):
        y = torch.tensor([-k * eps, -1.0, 0.0], dtype=torch.float64)  # |y| rounds to 1: w = (-k eps, 0, 0)
        om = 2 * math.atan2(math.hypot(k * eps, 2.0), k * eps)  # pi - k eps
        expected = torch.tensor([sign * om, 0.0, 0.0], dtype=torch.float64)
        torch.testing.assert_close(geo.logmap(x, y), expected, rtol=0, atol=1e-12)


def test_angle_of_bf16_inputs_is_computed_in_float32():
    g = torch.Generator().manual_seed(6)
    x = torch.randn(6, 16, generator=g).to(torch.bfloat16)
    y = torch.randn(6, 16, generator=g).to(torch.bfloat16)
    assert torch.equal(geo.angle(x, x), torch.zeros(6, dtype=torch.bfloat16))  # both sides unit-normed alike
    assert torch.equal(geo.angle(x, y), geo.angle(x.float(), y.float()).to(torch.bfloat16))
    assert torch.equal(geo.angle(y, x), geo.angle(y.float(), x.float()).to(torch.bfloat16))


# ----------------------------------------------------------------------------- evaluate


class Still:
    """A zero-velocity generator: every sampler returns its prior; records each call's times and labels."""

    def __init__(self, num_classes, **shift):
        self.num_classes = num_classes
        self.__dict__.update(shift)  # `shift` set only when given: getattr(gen, "shift", True) must default
        self.calls = []

    def __call__(self, x, t, y):
        self.calls.append((float(t[0]), y.tolist()))
        return torch.zeros_like(x)


class Zeros:
    """A stand-in classifier that labels every sample class 0 and keeps the features it was shown."""

    def predict(self, feats):
        self.seen = np.asarray(feats)
        return np.zeros(len(feats), dtype=int)


def stats_features(sizes):
    """A stand-in feature extractor (per-channel mean and std) that records the resolution it was asked for."""
    def extract(images01, kind="effnet", size=224, **_):
        assert kind in metrics.FD_NAMES, kind
        sizes.append(size)
        return torch.cat([images01.mean((2, 3)), images01.std((2, 3))], 1).double()
    return extract


def shifted_grid(steps, alpha):
    t = torch.linspace(0, 1, steps + 1, dtype=torch.float64)[:-1]
    return (t / (alpha - (alpha - 1) * t)).tolist()


@pytest.mark.parametrize("case", ["explicit", "defaults"])
def test_sample_quality_is_quality_of_the_seeded_prior_with_every_setting_passed_on(monkeypatch, case):
    sizes = []
    monkeypatch.setattr(metrics, "extract_features", stats_features(sizes))
    ae, n, k = Patchify(), 6, 3
    real_images = torch.rand(10, 3, 16, 16, generator=torch.Generator().manual_seed(7))
    real, real_feats = ae.encode(real_images), stats_features([])(real_images)
    clf = Zeros()
    if case == "explicit":  # no `shift` attribute: the sampler's default, alpha = max(1, sqrt(N·C / 4096)) = 1 here
        gen, alpha, seed, size, null = Still(k), max(1.0, math.sqrt(16 * 48 / 4096)), 5, 64, True
        q, images, asked = evaluate.sample_quality(gen, ae, n, real, real_feats, method="euler", steps=3,
                                                   prior="sphere", cfg_scale=2.0, seed=5, feature_size=64,
                                                   classifier=clf)
        steps = 3
    else:  # the generator's own shift; default cfg_scale 1 (no null-class call), seed 0, 224 px
        gen, alpha, seed, size, null = Still(k, shift=2.0), 2.0, 0, 224, False
        q, images, asked = evaluate.sample_quality(gen, ae, n, real, real_feats, method="euler_project", steps=2,
                                                   prior="gaussian", classifier=clf)
        steps = 2
    # the sphere prior, or Gaussian noise projected by euler_project: the same seeded points
    fake = geo.to_sphere(torch.randn(n, 16, 48, generator=torch.Generator().manual_seed(seed)))
    assert asked.tolist() == [0, 1, 2, 0, 1, 2]
    assert [t for t, _ in gen.calls] == pytest.approx(shifted_grid(steps, alpha), abs=1e-6)
    want_labels = [0, 1, 2, 0, 1, 2] + ([k] * n if null else [])  # CFG batches the null class after the labels
    assert all(y == want_labels for _, y in gen.calls)
    torch.testing.assert_close(images, ae.decode(fake).clamp(0, 1), atol=1e-5, rtol=1e-5)
    assert sizes == [size]
    assert q["n"] == n and q["fd_name"] == "FD-effnet"
    assert q["fd_tokens"] == pytest.approx(evaluate.token_fd(real, fake), rel=1e-5)
    want_fd = metrics.fd_from_features(real_feats, stats_features([])(ae.decode(fake).clamp(0, 1)))["value"]
    assert q["fd_images"] == pytest.approx(want_fd, rel=1e-5)
    assert q["norm_mean"] == pytest.approx(math.sqrt(48), rel=1e-5)  # sphere prior / projected: radius sqrt(C)
    assert q["class_agreement"] == pytest.approx(2 / 6)  # class 0 was asked for 2 of the 6 samples
    np.testing.assert_allclose(clf.seen, stats_features([])(images).numpy())  # the FD's own features


def test_quality_default_feature_size_is_the_feature_networks_default(monkeypatch):
    default = inspect.signature(metrics.extract_features).parameters["size"].default
    sizes = []
    monkeypatch.setattr(metrics, "extract_features", stats_features(sizes))
    ae = Patchify()
    x = torch.rand(4, 3, 16, 16, generator=torch.Generator().manual_seed(8))
    evaluate.quality(ae, ae.encode(x), ae.encode(x), stats_features([])(x))
    evaluate.quality(ae, ae.encode(x), ae.encode(x), stats_features([])(x), feature_size=48)
    assert sizes == [default, 48] and default == 224


def test_token_fd_keeps_the_callers_device_for_both_sets(monkeypatch):
    """An explicit device wins over $LAB_DEVICE for the real and the generated tokens alike."""
    monkeypatch.setenv("LAB_DEVICE", "meta")
    g = torch.Generator().manual_seed(9)
    real = torch.randn(20, 4, 3, generator=g, dtype=torch.float64)
    m = torch.tensor([1.0, -2.0, 0.5], dtype=torch.float64)
    assert evaluate.token_fd(real, real + m, device="cpu") == pytest.approx(5.25, rel=1e-9)  # |m|^2
