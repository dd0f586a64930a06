"""lab.probes against the geometry they claim: exact norms, angles, swaps, dips, radial shares, PCA."""
import math

import matplotlib
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lab import figures
from lab import geometry as geo
from lab import probes
from stand_ins import Patchify, mse

matplotlib.use("Agg")


def cos(a, b):
    return F.cosine_similarity(a.double(), b.double(), dim=-1)


def gauss(*shape, seed=0):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed))


# ----------------------------------------------------------------------------- direction vs magnitude


def test_rescale_norms_exact_norms_same_directions():
    z = gauss(3, 5, 32) * torch.rand(3, 5, 1, generator=torch.Generator().manual_seed(1)) * 4
    out = probes.rescale_norms(z, [0.5, 1.0, 7.0])
    assert out.shape == (3, 3, 5, 32)
    for k, r in enumerate([0.5, 1.0, 7.0]):
        assert torch.allclose(out[k].norm(dim=-1), torch.full((3, 5), r), rtol=1e-5)
        assert torch.allclose(cos(out[k], z), torch.ones(3, 5, dtype=torch.float64), atol=1e-6)


def test_angular_noise_keeps_norms_and_gives_requested_angle():
    z = gauss(20, 50, 256) * 3  # 1000 tokens, C = 256
    scales = [0.05, 0.3, 1.0]
    out = probes.angular_noise(z, scales, generator=torch.Generator().manual_seed(2))
    for k, s in enumerate(scales):
        assert torch.allclose(out[k].norm(dim=-1), z.norm(dim=-1), rtol=1e-5)
        theta = geo.angle(z.double(), out[k].double())
        assert theta.pow(2).mean().sqrt().item() == pytest.approx(s, rel=0.01)  # RMS angle = s
        assert theta.mean().item() == pytest.approx(s, rel=0.02)  # mean ≈ s at C = 256


def test_component_swap_variants():
    za, zn = gauss(2, 6, 16, seed=3) * 2, gauss(2, 6, 16, seed=4) * 0.5
    v = probes.component_swap(za, zn)
    assert list(v) == list(probes.SWAP_VARIANTS)
    a_dir_n_rad, a_rad_n_dir, whole = (v[k] for k in probes.SWAP_VARIANTS)
    ones = torch.ones(2, 6, dtype=torch.float64)
    assert torch.allclose(a_dir_n_rad.norm(dim=-1), zn.norm(dim=-1), rtol=1e-5)
    assert torch.allclose(cos(a_dir_n_rad, za), ones, atol=1e-6)
    assert torch.allclose(a_rad_n_dir.norm(dim=-1), za.norm(dim=-1), rtol=1e-5)
    assert torch.allclose(cos(a_rad_n_dir, zn), ones, atol=1e-6)
    assert torch.equal(whole, zn)


def test_direction_magnitude_probe_long_form():
    g = torch.Generator().manual_seed(5)
    images = torch.rand(12, 3, 16, 16, generator=g)
    labels = torch.arange(12) % 3
    df = probes.direction_magnitude_probe(Patchify(), images, labels, n_anchors=6, norm_factors=(0.5, 1.0),
                                          angle_scales=(0.05, 0.5), distances={"mse": mse}, batch_size=4)
    assert set(df.columns) == {"probe", "variant", "param", "anchor", "metric", "value"}
    assert len(df) == 6 * (3 + 2 + 2)
    pairs = dict(probes.same_class_pairs(labels, 6, seed=0))
    assert all(labels[a] == labels[b] and a != b for a, b in pairs.items())
    # lossless AE: the whole-neighbour decode is the neighbour image itself
    whole = df[df["variant"] == "whole neighbour"].set_index("anchor")["value"]
    for a, b in pairs.items():
        assert whole[a] == pytest.approx(mse(images[a:a + 1], images[b:b + 1]).item(), rel=1e-5)
    ang = df[df["probe"] == "angular"].groupby("param")["value"].mean()
    assert ang[0.05] < ang[0.5]
    fig = probes.plot_direction_magnitude(df)
    assert len(fig.axes) == 3


# ----------------------------------------------------------------------------- radial share


def test_norm_stats_shell_and_sphere():
    z = gauss(20, 16, 128) * 5 + 2
    df = probes.norm_stats(z).set_index("preprocess")
    C = 128
    assert df.loc["sphere", "mean_norm"] == pytest.approx(math.sqrt(C), rel=1e-6)
    assert df.loc["sphere", "cv"] < 1e-6
    ref = df.loc["gaussian N(0, I)"]
    assert ref["mean_over_shell"] == pytest.approx(1.0, abs=0.01)
    assert ref["cv"] == pytest.approx(1 / math.sqrt(2 * C), rel=0.1)
    assert df.loc["standardize", "mean_over_shell"] == pytest.approx(1.0, abs=0.02)
    assert df.loc["raw", "mean_over_shell"] > 4


def test_linear_path_norm_dip_independent_gaussians():
    z = gauss(8, 64, 1024, seed=6)
    df = probes.linear_path_norm_dip(z, ts=[0.0, 0.25, 0.5, 1.0]).set_index("t")
    assert df.loc[0.5, "rel_nearest_mean"] == pytest.approx(1 / math.sqrt(2), rel=0.01)
    assert df.loc[0.25, "rel_nearest_mean"] == pytest.approx(math.sqrt(0.75 ** 2 + 0.25 ** 2), rel=0.01)
    assert df.loc[0.0, "rel_nearest_mean"] == pytest.approx(1.0, abs=1e-6)
    assert df.loc[1.0, "rel_nearest_mean"] == pytest.approx(1.0, abs=1e-6)


def test_radial_share_linear_ends_half_slerp_zero():
    z = gauss(8, 16, 256, seed=7)  # isotropic data at the Gaussian shell
    df = probes.radial_share_along_t(z, ts=[0.01, 0.5, 0.99])
    lin = df[df["path"] == "linear"].set_index("t")["share_mean"]
    assert lin[0.01] == pytest.approx(0.5, abs=0.05) and lin[0.99] == pytest.approx(0.5, abs=0.05)
    assert lin[0.5] < 0.01  # |x1|² = |x0|²: u ⊥ x_t at the midpoint
    assert df[df["path"] == "slerp"]["share_mean"].max() < 1e-8
    assert df[df["path"] == "shell"]["share_mean"].max() < 0.05  # only radius changes are radial
    fig = figures.plot_radial(probes.linear_path_norm_dip(z[:2], ts=[0, 0.5, 1]), df)
    assert len(fig.axes) == 2


# ----------------------------------------------------------------------------- probing and PCA


def test_linear_probe_features_flatten_and_gap():
    g = torch.Generator().manual_seed(8)
    y = torch.arange(80) % 2
    images = torch.rand(80, 3, 16, 16, generator=g) * 0.5 + y.view(-1, 1, 1, 1) * 0.5  # class = brightness
    ds = torch.utils.data.TensorDataset(images, y)
    df = probes.linear_probe_features(Patchify(), ds, name="patchify")
    assert list(df["pool"]) == ["flatten", "gap"] and list(df["dim"]) == [16 * 48, 48]
    assert (df["accuracy"] > 0.95).all() and (df["n_test"] == 20).all()


def test_pca_rgb_in_range_and_matches_sklearn():
    from sklearn.decomposition import PCA
    g = torch.Generator().manual_seed(9)
    basis = torch.randn(3, 24, generator=g) * torch.tensor([5.0, 3.0, 2.0]).view(3, 1)
    tokens = torch.randn(4, 30, 3, generator=g) @ basis + 0.1 * torch.randn(4, 30, 24, generator=g)
    rgb = probes.pca_rgb(tokens, grid=(5, 6))
    assert rgb.shape == (4, 3, 5, 6) and rgb.min() >= 0 and rgb.max() <= 1
    ref = PCA(3).fit_transform(tokens.reshape(-1, 24).double().numpy())
    ref = (ref - ref.min(0)) / (ref.max(0) - ref.min(0))
    ours = rgb.permute(0, 2, 3, 1).reshape(-1, 3).double().numpy()
    for k in range(3):  # same up to the sign of each component (flip = 1 - x after min-max)
        assert min(np.abs(ours[:, k] - ref[:, k]).max(), np.abs(ours[:, k] - (1 - ref[:, k])).max()) < 1e-5
    with pytest.raises(ValueError, match="grid"):
        probes.pca_rgb(tokens, grid=(4, 4))
    fig = probes.pca_figure(torch.rand(4, 3, 20, 24), tokens, tokens[..., :12], grid=(5, 6), n=2)
    assert len(fig.axes) == 6
