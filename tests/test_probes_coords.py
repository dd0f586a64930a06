"""Radial share in the flow's training coordinates (issue 23 item 7; Spherical FM §3.2 / Tab 1 / Fig 4).

The paper measures token norms and the radial share "in the flow-training coordinates, after any fixed
tokenizer preprocessing such as ... channel standardization". Raw DINO / HAE tokens sit at about
2 sqrt(C); against N(0, I) noise the noise-end share of the linear path is then C / (C + |x1|^2) ~ 1/5,
a property of the radius ratio, not of the geometry the claim is about.
"""
import math

import pytest
import torch

from lab import probes


def shell_tokens(n, tokens, c, radius=1.0, seed=11):  # not the probes' prior seed 0: x1 = x0 otherwise
    """Tokens uniform on the sphere of radius `radius` * sqrt(c) (isotropic: unit variance per channel)."""
    z = torch.randn(n, tokens, c, generator=torch.Generator().manual_seed(seed))
    return radius * math.sqrt(c) * torch.nn.functional.normalize(z, dim=-1)


def _noise_end(shares, coords):
    lin = shares[(shares.coords == coords) & (shares.path == "linear")]
    return lin.sort_values("t").share_mean.iloc[0]


def test_noise_end_share_is_half_in_training_coords_and_one_fifth_raw_at_twice_the_shell():
    c = 256
    z = shell_tokens(16, 8, c, radius=2.0)  # raw radius 2 sqrt(C), as raw DINO tokens
    _, _, shares = probes.radial_tables(z, ts=[0.0, 0.5, 1.0])
    # t = 0: x_t = x0, u = x1 - x0, share = (u . x0)^2 / (|u|^2 |x0|^2) -> C / (C + |x1|^2)
    assert _noise_end(shares, "raw") == pytest.approx(1 / (1 + 2.0 ** 2), abs=0.02)
    assert _noise_end(shares, "training") == pytest.approx(0.5, abs=0.03)  # the sanity case


def test_training_coords_remove_a_channel_shift_and_scale():
    c = 256
    g = torch.Generator().manual_seed(1)
    scale, shift = 0.5 + torch.rand(c, generator=g), torch.randn(c, generator=g)
    z = shell_tokens(16, 8, c) * scale + 3 * shift  # raw norm far from sqrt(C)
    stats, dips, shares = probes.radial_tables(z, ts=[0.0, 0.5])
    assert _noise_end(shares, "training") == pytest.approx(0.5, abs=0.03)
    assert _noise_end(shares, "raw") < 0.15
    row = stats[(stats.coords == "training") & (stats.preprocess == "raw")].iloc[0]
    assert row.mean_over_shell == pytest.approx(1.0, abs=0.02)


def test_flow_coords_are_per_channel_standardised_or_raw_and_checked_by_name():
    z = 3 * torch.randn(4, 5, 6, generator=torch.Generator().manual_seed(2)) + 7
    t = probes.flow_coords(z, "training").reshape(-1, 6).double()
    assert torch.allclose(t.mean(0), torch.zeros(6, dtype=t.dtype), atol=1e-5)
    assert torch.allclose(t.std(0), torch.ones(6, dtype=t.dtype), atol=1e-5)
    assert torch.equal(probes.flow_coords(z, "raw"), z)
    with pytest.raises(ValueError, match="coords.*training.*raw"):
        probes.flow_coords(z, "whitened")


def test_radial_tables_carry_coords_training_first_and_equal_the_probes_on_those_tokens():
    z = 2 * torch.randn(3, 4, 8, generator=torch.Generator().manual_seed(4)) + 0.5
    stats, dips, shares = probes.radial_tables(z, ts=[0.3, 0.7], seed=5)
    for df in (stats, dips, shares):
        assert list(df.coords.unique()) == ["training", "raw"]
    for coords in ("training", "raw"):
        zc = probes.flow_coords(z, coords)
        want = probes.radial_share_along_t(zc, ts=[0.3, 0.7], seed=5)
        got = shares[shares.coords == coords].drop(columns="coords").reset_index(drop=True)
        assert got.equals(want)
        want = probes.linear_path_norm_dip(zc, ts=[0.3, 0.7], seed=5)
        assert dips[dips.coords == coords].drop(columns="coords").reset_index(drop=True).equals(want)
        want = probes.norm_stats(zc, seed=5)
        assert stats[stats.coords == coords].drop(columns="coords").reset_index(drop=True).equals(want)
    with pytest.raises(ValueError, match="coords"):
        probes.radial_tables(z, coords=("raw", "pixel"))
