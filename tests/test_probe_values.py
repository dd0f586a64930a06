"""Values (not only shapes or σ = 0) of the robustness and rescale probes, against closed forms.

A lossless patchify "autoencoder" makes every decoded error an explicit function of the latent change.
"""
import pytest
import torch
import torch.nn.functional as F

import lab  # noqa: F401
from lab import probes


class Patchify(torch.nn.Module):
    """Lossless and linear: 4x4 pixel patches as tokens (16x16 image -> 16 tokens of 48), no clamp."""
    grid = (4, 4)

    def encode(self, x):
        return F.pixel_unshuffle(x, 4).flatten(2).transpose(1, 2)

    def decode(self, z):
        return F.pixel_shuffle(z.transpose(1, 2).reshape(len(z), 48, 4, 4), 4)


def mse(a, b):
    return (a - b).pow(2).flatten(1).mean(1)


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
