"""lab.metrics against closed forms and reference implementations (skimage, scipy)."""
import math

import numpy as np
import pytest
import torch

import lab  # noqa: F401
from lab import metrics


def smooth_images(b, h, w, seed):
    """Random images with some spatial structure (blurred noise), float64 in [0, 1]."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(b, 3, h // 4, w // 4, generator=g, dtype=torch.float64)
    x = torch.nn.functional.interpolate(x, size=(h, w), mode="bilinear", align_corners=False)
    return (x + 0.05 * torch.rand(b, 3, h, w, generator=g, dtype=torch.float64)).clamp(0, 1)


# ----------------------------------------------------------------------------- PSNR / SSIM


def test_psnr_constant_offset_closed_form():
    x = smooth_images(3, 16, 16, 0) * 0.8
    offsets = torch.tensor([0.1, 0.01, 0.05], dtype=torch.float64)
    y = x + offsets.view(3, 1, 1, 1)
    expected = 10 * torch.log10(1 / offsets ** 2)  # 20, 40, 26.02 dB
    assert torch.allclose(metrics.psnr(x, y, per_image=True), expected, atol=1e-9)
    assert metrics.psnr(x, y) == pytest.approx(expected.mean().item(), abs=1e-9)  # per image, then mean
    assert metrics.psnr(x, x) == pytest.approx(100.0)  # floored MSE, not inf


def test_ssim_matches_skimage():
    from skimage.metrics import structural_similarity
    x = smooth_images(2, 40, 48, 1)
    y = (x + 0.1 * torch.randn(x.shape, generator=torch.Generator().manual_seed(2), dtype=torch.float64)).clamp(0, 1)
    ours = metrics.ssim(x, y, per_image=True)
    for i in range(2):
        ref = structural_similarity(x[i].numpy(), y[i].numpy(), channel_axis=0, gaussian_weights=True, sigma=1.5,
                                    use_sample_covariance=False, data_range=1.0)
        assert ours[i].item() == pytest.approx(ref, abs=1e-10)
    assert 0.2 < ours.mean() < 0.99
    assert metrics.ssim(x, x) == pytest.approx(1.0, abs=1e-12)
    with pytest.raises(ValueError, match="win_size"):
        metrics.ssim(x[..., :8, :8], y[..., :8, :8])


# ----------------------------------------------------------------------------- Fréchet distance


def random_rotation(d, seed):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(d, d)))
    return q


def test_frechet_closed_form_commuting_covariances():
    rng = np.random.default_rng(0)
    d = 20
    a, b = rng.uniform(0.1, 3, d), rng.uniform(0.1, 3, d)
    a[:3] = 0.0  # singular covariance: still exact
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(mu1, np.diag(a), mu2, np.diag(b)) == pytest.approx(exact, rel=1e-10)
    q = random_rotation(d, 1)  # same eigenbasis, not axis-aligned
    s1, s2 = q @ np.diag(a) @ q.T, q @ np.diag(b) @ q.T
    # zero eigenvalues come back as ±1e-16 after rotation: clipped at the rank tolerance
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-10)
    a[:3] = 0.5
    s1 = q @ np.diag(a) @ q.T
    exact = ((mu1 - mu2) ** 2).sum() + ((np.sqrt(a) - np.sqrt(b)) ** 2).sum()
    assert metrics.frechet_distance(mu1, s1, mu2, s2) == pytest.approx(exact, rel=1e-10)


def test_frechet_identity_symmetry_and_scipy_sqrtm():
    import scipy.linalg
    rng = np.random.default_rng(3)
    d = 16
    m1, m2 = rng.normal(size=(d, d)), rng.normal(size=(d, d))
    s1, s2 = m1 @ m1.T / d, m2 @ m2.T / d  # generic, non-commuting
    mu1, mu2 = rng.normal(size=d), rng.normal(size=d)
    assert abs(metrics.frechet_distance(mu1, s1, mu1, s1)) < 1e-10
    d12 = metrics.frechet_distance(mu1, s1, mu2, s2)
    assert d12 == pytest.approx(metrics.frechet_distance(mu2, s2, mu1, s1), rel=1e-10)
    covmean = scipy.linalg.sqrtm(s1 @ s2).real
    ref = ((mu1 - mu2) ** 2).sum() + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean)
    assert d12 == pytest.approx(ref, rel=1e-8)


def test_fd_from_features_rank_deficient_and_named():
    g = torch.Generator().manual_seed(0)
    fa = torch.randn(10, 64, generator=g)  # n < d: singular covariances
    out = metrics.fd_from_features(fa, fa.clone(), name="FD-test", network="none")
    assert abs(out["value"]) < 1e-8 and math.isfinite(out["value"])
    assert (out["name"], out["network"], out["n_a"], out["n_b"], out["dim"]) == ("FD-test", "none", 10, 10, 64)
    # Two large samples of N(0, I) and N(m, 4I) in d = 4: ≈ |m|² + d·(2 - 1)²
    fa = torch.randn(20000, 4, generator=g, dtype=torch.float64)
    fb = 1.0 + 2 * torch.randn(20000, 4, generator=g, dtype=torch.float64)
    assert metrics.fd_from_features(fa, fb)["value"] == pytest.approx(4 + 4, rel=0.03)


def test_fd_names_and_parameter_errors():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match="inception_path"):
        metrics.fd(x, x, features="inception")
    with pytest.raises(ValueError, match="'effnet'"):
        metrics.fd(x, x, features="clip")
    assert metrics.FD_NAMES == {"effnet": "FD-effnet", "dino": "FD-dino", "inception": "FID"}


# ----------------------------------------------------------------------------- precision / recall


def test_precision_recall_identical_and_disjoint():
    g = torch.Generator().manual_seed(0)
    r = torch.randn(200, 8, generator=g)
    same = metrics.precision_recall(r, r.clone(), k=3)
    assert same["precision"] == 1.0 and same["recall"] == 1.0
    far = metrics.precision_recall(r, r + 100.0, k=3)
    assert far["precision"] == 0.0 and far["recall"] == 0.0
    # fakes collapsed to one mode: high precision, low recall
    collapsed = metrics.precision_recall(r, 0.05 * torch.randn(200, 8, generator=g), k=3)
    assert collapsed["precision"] > 0.9 and collapsed["recall"] < 0.2


# ----------------------------------------------------------------------------- linear probe


def layout_tokens(n, seed):
    """Class ±1 written as +m on token 0 and -m on token 1: separable flattened, invisible after GAP."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    m = torch.randn(6, generator=torch.Generator().manual_seed(99))
    s = (2 * y - 1).float().view(n, 1)
    x = 0.3 * torch.randn(n, 4, 6, generator=g)
    x[:, 0] += s * m
    x[:, 1] -= s * m
    return x, y


@pytest.mark.parametrize("method", ["logreg", "sgd"])
def test_linear_probe_flatten_vs_gap(method):
    xtr, ytr = layout_tokens(400, 0)
    xte, yte = layout_tokens(200, 1)
    kw = dict(method=method, epochs=30)
    assert metrics.linear_probe(xtr, ytr, xte, yte, pool="flatten", **kw) > 0.97
    assert metrics.linear_probe(xtr, ytr, xte, yte, pool="gap", **kw) < 0.7  # chance level: 0.5
    with pytest.raises(ValueError, match="method"):
        metrics.linear_probe(xtr, ytr, xte, yte, method="svm")


# ----------------------------------------------------------------------------- real networks (lab cache)


@pytest.mark.real_nets
def test_effnet_fd_named_and_zero_on_identical_sets():
    x = smooth_images(3, 64, 64, 5).float()
    f = metrics.effnet_features(x, size=64)
    assert f.shape == (3, 1280) and torch.isfinite(f).all()
    out = metrics.fd_from_features(f, f, metrics.FD_NAMES["effnet"], metrics.NETWORKS["effnet"])
    assert out["name"] == "FD-effnet" and "EfficientNet-Lite0" in out["network"] and abs(out["value"]) < 1e-6


@pytest.mark.real_nets
def test_lpips_orders_distortions():
    x = smooth_images(2, 64, 64, 6).float()
    blur = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    other = smooth_images(2, 64, 64, 7).float()
    assert metrics.lpips_distance(x, x).abs().max() < 1e-6
    assert (metrics.lpips_distance(x, blur) < metrics.lpips_distance(x, other)).all()


def _skimage_pair():
    """chelsea and astronaut (bundled with scikit-image), area-resized to 64 px.

    x = (chelsea, astronaut), y = (astronaut, chelsea mirrored)."""
    from skimage import data

    def load(img):
        x = torch.from_numpy(np.asarray(img)).permute(2, 0, 1)[None].double() / 255
        return torch.nn.functional.interpolate(x, size=(64, 64), mode="area").float()

    a, b = load(data.chelsea()), load(data.astronaut())
    return torch.cat([a, b]), torch.cat([b, a.flip(-1)])


# Reference LPIPS values, computed once (lab.metrics.lpips_distance on the converted lpips 0.1.4
# checkpoint, CPU fp32) on _skimage_pair: (x vs y, x vs 3x3 box blur of x).
LPIPS_REF = {"alex": ([0.43207496, 0.41446444], [0.22657150, 0.18969826]),
             "vgg": ([0.65902394, 0.69168735], [0.25036144, 0.17523536])}


@pytest.mark.real_nets
@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_pinned_to_reference_values(net):
    x, y = _skimage_pair()
    blur = torch.nn.functional.avg_pool2d(x, 3, 1, 1)
    pair, blurred = LPIPS_REF[net]
    torch.testing.assert_close(metrics.lpips_distance(x, y, net), torch.tensor(pair), atol=1e-4, rtol=0)
    torch.testing.assert_close(metrics.lpips_distance(x, blur, net), torch.tensor(blurred), atol=1e-4, rtol=0)


@pytest.mark.real_nets
def test_lpips_reference_catches_a_wrong_first_convolution():
    """A BGR-swapped or spatially transposed first convolution still orders distortions, but moves the values."""
    import copy

    from lab import feature_nets
    x, y = _skimage_pair()
    net = feature_nets.lpips_net("alex")
    conv = next(m for m in net.modules() if isinstance(m, torch.nn.Conv2d))
    ref = torch.tensor(LPIPS_REF["alex"][0])
    for broken in (lambda w: w.flip(1), lambda w: w.transpose(2, 3)):
        bad = copy.deepcopy(net)
        first = next(m for m in bad.modules() if isinstance(m, torch.nn.Conv2d))
        with torch.no_grad():
            first.weight.copy_(broken(conv.weight))
            value = bad(x * 2 - 1, y * 2 - 1).flatten()
        assert (value - ref).abs().max() > 1e-3, value


@pytest.mark.real_nets
def test_dino_features_and_distance():
    x = smooth_images(2, 56, 56, 8).float()
    f = metrics.dino_features(x, pool="both", size=56)
    assert f.shape == (2, 768) and torch.isfinite(f).all()
    d_same = metrics.dino_distance(x, x, size=56)
    d_other = metrics.dino_distance(x, x.flip(0), size=56)
    assert d_same.abs().max() < 1e-5 and (d_other > 0.01).all()
