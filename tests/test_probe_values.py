"""Values (not only shapes or σ = 0) of the robustness and rescale probes, against closed forms.

A lossless patchify "autoencoder" makes every decoded error an explicit function of the latent change.
"""
import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lab import probes
from stand_ins import Patchify, mse


def test_noise_robustness_closed_form_beyond_sigma_zero():
    """Decoding z + σ ε with a linear lossless AE gives per-image MSE σ² mean(ε_i²) exactly (ε shared by
    every σ, drawn from the seed), PSNR 10 log10(1/MSE_i) averaged; the curve degrades monotonically."""
    from lab.autoencoders.recon import noise_robustness

    x = torch.rand(6, 3, 16, 16, generator=torch.Generator().manual_seed(0)) * 0.1 + 0.45
    sigmas = (0.0, 0.02, 0.05, 0.1)  # small enough that no decoded pixel is clamped to [0, 1]
    curve = noise_robustness(Patchify(), x, sigmas=sigmas, batch_size=4, seed=7, device="cpu")
    eps = torch.randn(6, 16, 48, generator=torch.Generator().manual_seed(7))
    per_image = eps.pow(2).flatten(1).mean(1).double()
    assert 0.55 + 0.1 * eps.abs().max() < 1
    assert [c["sigma"] for c in curve] == list(sigmas)
    assert curve[0]["mse"] == pytest.approx(0.0, abs=1e-12)
    for c in curve[1:]:
        s = c["sigma"]
        assert c["mse"] == pytest.approx(s ** 2 * per_image.mean().item(), rel=1e-5)
        assert c["psnr"] == pytest.approx((10 * torch.log10(1 / (s ** 2 * per_image))).mean().item(), rel=1e-5)
    assert all(a["mse"] < b["mse"] and a["psnr"] > b["psnr"] for a, b in zip(curve, curve[1:]))


def test_rescale_probe_values_closed_form():
    """Every token set to norm f·m (m = mean anchor token norm), direction kept: the decoded MSE of an
    anchor is mean_i (f m - |z_i|)² / C over its tokens, exactly."""
    g = torch.Generator().manual_seed(1)
    images = torch.rand(8, 3, 16, 16, generator=g) * 0.4 + 0.3  # decodes stay inside [0, 1]: no clamping
    labels = torch.arange(8) % 2
    factors = (0.5, 1.0, 1.2)
    df = probes.direction_magnitude_probe(Patchify(), images, labels, n_anchors=4, norm_factors=factors,
                                          distances={"mse": mse}, probes=("rescale",), batch_size=3)
    anchors = [a for a, _ in probes.same_class_pairs(labels, 4, seed=0)]
    z = Patchify().encode(images[anchors])
    norms = z.norm(dim=-1).double()
    m = norms.mean()
    for f in factors:
        got = df[df["param"] == f].set_index("anchor")["value"]
        expected = (f * m - norms).pow(2).mean(1) / 48
        for j, a in enumerate(anchors):
            assert got[a] == pytest.approx(expected[j].item(), rel=1e-4)
    means = df.groupby("param")["value"].mean()
    assert means[1.0] < means[0.5] and means[1.0] < means[1.2]  # the U around the mean norm


# ----------------------------------------------------------------------------- the radial-share tables, exactly


def test_norm_stats_table_exact():
    import math

    z = 3 * torch.randn(5, 6, 16, generator=torch.Generator().manual_seed(2)) + 1
    df = probes.norm_stats(z)
    assert list(df.columns) == ["preprocess", "C", "mean_norm", "std_norm", "cv", "shell", "mean_over_shell"]
    assert list(df["preprocess"]) == ["raw", "standardize", "sphere", "gaussian N(0, I)"]
    ref = torch.randn(z.shape, generator=torch.Generator().manual_seed(0))  # the default seed is 0
    for name, x in (("raw", z), ("gaussian N(0, I)", ref)):
        n = x.norm(dim=-1).flatten().double()
        row = df.set_index("preprocess").loc[name]
        assert row["C"] == 16 and row["shell"] == 4.0
        np.testing.assert_allclose([row["mean_norm"], row["std_norm"], row["cv"], row["mean_over_shell"]],
                                   [n.mean(), n.std(), n.std() / n.mean(), n.mean() / math.sqrt(16)], rtol=1e-6)
    with pytest.raises(ValueError, match="^preprocess="):
        probes.norm_stats(z, preprocess=("whiten",))


def test_linear_path_norm_dip_table_exact():
    z = 2 * torch.randn(4, 6, 16, generator=torch.Generator().manual_seed(3))
    df = probes.linear_path_norm_dip(z)
    assert list(df.columns) == ["t", "rel_nearest_mean", "rel_nearest_std", "rel_interp_mean"]
    assert df["t"].tolist() == pytest.approx([i / 20 for i in range(21)])
    for prior in ("gaussian", "sphere"):
        df = probes.linear_path_norm_dip(z, ts=[0.25, 0.5, 0.75], prior=prior).set_index("t")
        x0 = probes.flows.prior_for(prior, z.shape, generator=torch.Generator().manual_seed(0))
        n0, n1 = x0.norm(dim=-1), z.norm(dim=-1)
        for t in (0.25, 0.5, 0.75):
            nt = ((1 - t) * x0 + t * z).norm(dim=-1)
            near = (nt / (n0 if t < 0.5 else n1)).flatten()
            assert df.loc[t, "rel_nearest_mean"] == pytest.approx(near.mean().item(), rel=1e-6)
            assert df.loc[t, "rel_nearest_std"] == pytest.approx(near.std().item(), rel=1e-5)
            interp = (nt / ((1 - t) * n0 + t * n1)).mean().item()
            assert df.loc[t, "rel_interp_mean"] == pytest.approx(interp, rel=1e-6)
    with pytest.raises(ValueError, match="^prior="):
        probes.linear_path_norm_dip(z, prior="cube")


def test_radial_share_along_t_table_exact():
    z = 2 * torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(4)) + 0.5
    df = probes.radial_share_along_t(z)
    assert list(df.columns) == ["path", "t", "share_mean", "share_std"]
    assert df[df["path"] == "linear"]["t"].tolist() == pytest.approx(list(np.linspace(0.02, 0.98, 25)))
    for name in probes.flows.PATHS:
        x1 = probes.geo.to_sphere(z) if name == "slerp" else z
        x0 = probes.flows.prior_for(name, z.shape, generator=torch.Generator().manual_seed(0))
        x_t, u_t = probes.flows.path(name, x0, x1, torch.full((3,), 0.3))
        share = probes.flows.radial_share(u_t, x_t).double()
        d = probes.radial_share_along_t(z, paths=(name,), ts=[0.3]).iloc[0]
        assert d["share_mean"] == pytest.approx(share.mean().item(), rel=1e-6, abs=1e-12)
        assert d["share_std"] == pytest.approx(share.std().item(), rel=1e-5, abs=1e-12)
    one = probes.radial_share_along_t(z[:1], paths=("linear",), ts=[0.5]).iloc[0]
    assert one["share_std"] == 0.0
    with pytest.raises(ValueError, match="^path="):
        probes.radial_share_along_t(z, paths=("curved",))


def test_same_class_pairs_default_seed_and_error():
    labels = torch.tensor([0, 1, 0, 1, 0, 2])
    assert probes.same_class_pairs(labels, 3) == probes.same_class_pairs(labels, 3, seed=0)
    assert probes.same_class_pairs(labels, 3) != probes.same_class_pairs(labels, 3, seed=1)
    with pytest.raises(ValueError, match="^no class has two images"):
        probes.same_class_pairs(torch.arange(4), 2)


def test_angular_noise_rms_angle_in_low_dimension():
    """C = 4: the tangent step has C - 1 = 3 dimensions; with std s/√(C-1) each, the RMS angle is s."""
    z = 2 * torch.randn(200, 50, 4, generator=torch.Generator().manual_seed(5))
    out = probes.angular_noise(z, [0.05], generator=torch.Generator().manual_seed(6))[0]
    theta = probes.geo.angle(z.double(), out.double())
    assert theta.pow(2).mean().sqrt().item() == pytest.approx(0.05, rel=0.01)


def test_pca_rgb_default_grid_non_square_and_clip():
    g = torch.Generator().manual_seed(7)
    tokens = torch.randn(2, 12, 5, generator=g) * torch.tensor([5.0, 3.0, 2.0, 0.1, 0.1])
    rgb = probes.pca_rgb(tokens)  # 12 tokens: rows of round(√12) = 3, so a 3 x 4 grid
    assert rgb.shape == (2, 3, 3, 4)
    x = tokens.reshape(-1, 5).double()
    x = x - x.mean(0)
    flat = rgb.permute(0, 2, 3, 1).reshape(-1, 3).double()
    for k in range(3):
        assert flat[:, k].min() == 0 and flat[:, k].max() == 1
    clipped = probes.pca_rgb(tokens, clip=0.1).permute(0, 2, 3, 1).reshape(-1, 3).double()
    evals, evecs = torch.linalg.eigh(x.T @ x)
    v = evecs[:, evals.argsort(descending=True)[:3]]
    v = v * torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
    p = x @ v
    lo, hi = torch.quantile(p, 0.1, dim=0), torch.quantile(p, 0.9, dim=0)
    torch.testing.assert_close(clipped, ((p - lo) / (hi - lo)).clamp(0, 1), atol=1e-6, rtol=0)
    two = probes.pca_rgb(tokens[..., :2])  # fewer than 3 channels: the third colour is zero
    assert two.shape == (2, 3, 3, 4) and two[:, 2].abs().max() == 0 and two[:, :2].max() == 1


class Halve(torch.nn.Module):
    """encode = x / 2 (flattened), a fixed linear 'encoder' whose features are known."""

    def encode(self, x):
        return x.flatten(1)[:, None, :] / 2


def test_encode_dataset_and_linear_probe_features_wiring():
    g = torch.Generator().manual_seed(8)
    images = torch.rand(40, 3, 4, 4, generator=g)
    y = torch.arange(40) % 2
    images[:, 0] += y.view(-1, 1, 1) * 0.8
    ds = torch.utils.data.TensorDataset(images, y)
    f, labels = probes.encode_dataset(Halve(), ds, batch_size=7, n=30)
    assert torch.equal(labels, y[:30]) and torch.allclose(f, images[:30].flatten(1)[:, None] / 2)
    f2, _ = probes.encode_dataset(lambda x: x.flatten(1)[:, None] * 3, ds)  # a plain callable
    assert torch.allclose(f2, images.flatten(1)[:, None] * 3)
    df = probes.linear_probe_features(Halve(), ds, pools=("flatten",), test_fraction=0.25, batch_size=5)
    assert list(df.columns) == ["encoder", "pool", "method", "accuracy", "n_train", "n_test", "dim"]
    row = df.iloc[0]
    assert (row["encoder"], row["pool"], row["method"], row["n_train"], row["n_test"], row["dim"]) == \
        ("Halve", "flatten", "logreg", 30, 10, 48)
    perm = torch.randperm(40, generator=torch.Generator().manual_seed(0))
    f = images.flatten(1)[:, None] / 2
    expected = probes.metrics.linear_probe(f[perm[10:]], y[perm[10:]], f[perm[:10]], y[perm[:10]], pool="flatten",
                                           method="logreg", seed=0)
    assert row["accuracy"] == expected
    test_ds = torch.utils.data.TensorDataset(images[:12], y[:12])
    df = probes.linear_probe_features(Halve(), ds, test_dataset=test_ds, pools=("gap",), method="sgd", n=20,
                                      name="half")
    assert (df.iloc[0]["encoder"], df.iloc[0]["method"], df.iloc[0]["n_train"], df.iloc[0]["n_test"]) == \
        ("half", "sgd", 20, 12)


def test_direction_magnitude_probe_labels_defaults_and_angular_values():
    g = torch.Generator().manual_seed(9)
    images = torch.rand(66, 3, 16, 16, generator=g) * 0.4 + 0.3
    labels = torch.arange(66) % 3
    df = probes.direction_magnitude_probe(Patchify(), images, labels, distances={"mse": mse}, angle_scales=(0.05, 0.2))
    assert df["anchor"].nunique() == 32  # the default n_anchors
    assert set(df["metric"]) == {"mse"}
    kinds = df.groupby(["probe", "variant"]).size().to_dict()
    assert kinds == {("swap", v): 32 for v in probes.SWAP_VARIANTS} | {("rescale", "fixed norm"): 32 * 6,
                                                                       ("angular", "angular noise"): 32 * 2}
    anchors = [a for a, _ in probes.same_class_pairs(labels, 32, seed=0)]
    za = Patchify().encode(images[anchors])
    zs = probes.angular_noise(za, (0.05, 0.2), generator=torch.Generator().manual_seed(0))  # the seed's generator
    for s, z in zip((0.05, 0.2), zs):
        got = df[(df["probe"] == "angular") & (df["param"] == s)].set_index("anchor")["value"]
        expected = mse(Patchify().decode(za), Patchify().decode(z).clamp(0, 1))
        assert [got[a] for a in anchors] == pytest.approx(expected.tolist(), rel=1e-5)
    with pytest.raises(ValueError, match="^probe="):
        probes.direction_magnitude_probe(Patchify(), images, labels, probes=("shear",))


def test_standardize_channels_per_channel():
    g = torch.Generator().manual_seed(10)
    z = torch.randn(6, 5, 4, generator=g) * torch.tensor([0.01, 0.1, 3.0, 7.0]) + torch.tensor([1.0, -2.0, 0.0, 5.0])
    s = probes.standardize_channels(z).reshape(-1, 4)
    torch.testing.assert_close(s.mean(0), torch.zeros(4), atol=1e-5, rtol=0)
    torch.testing.assert_close(s.std(0), torch.ones(4), atol=1e-5, rtol=0)
