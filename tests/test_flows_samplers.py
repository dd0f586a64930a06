"""lab.flows and lab.samplers: paths, radial share, shift, losses, step geometry, CFG."""
import math

import pytest
import torch

import lab  # noqa: F401
from lab import flows, samplers
from lab import geometry as geo


def sphere(*shape, dtype=torch.float64):
    return geo.to_sphere(torch.randn(*shape, dtype=dtype))


@pytest.mark.parametrize("name", flows.PATHS)
def test_path_velocity_is_time_derivative(name):
    torch.manual_seed(1)
    x0 = torch.randn(3, 4, 16, dtype=torch.float64)
    x1 = torch.randn(3, 4, 16, dtype=torch.float64) * 2
    if name == "slerp":
        x0, x1 = geo.to_sphere(x0), geo.to_sphere(x1)
    t, h = torch.tensor([0.2, 0.5, 0.8]), 1e-4
    _, u = flows.path(name, x0, x1, t)
    xp, _ = flows.path(name, x0, x1, t + h)
    xm, _ = flows.path(name, x0, x1, t - h)
    torch.testing.assert_close(u, (xp - xm) / (2 * h), atol=2e-3, rtol=2e-3)
    xs, _ = flows.path(name, x0, x1, torch.zeros(3))
    xe, _ = flows.path(name, x0, x1, torch.ones(3))
    torch.testing.assert_close(xs, x0.float(), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(xe, x1.float(), atol=1e-4, rtol=1e-5)


def test_shell_radius_is_linear():
    x0, x1 = torch.randn(2, 3, 8), 3 * torch.randn(2, 3, 8)
    t = torch.tensor([0.25, 0.75])
    xt, _ = flows.path("shell", x0, x1, t)
    tt = t[:, None]
    torch.testing.assert_close(xt.norm(dim=-1), (1 - tt) * x0.norm(dim=-1) + tt * x1.norm(dim=-1))


def test_radial_share_linear_half_at_ends_slerp_zero():
    """Independent isotropic endpoints on one sphere in high dimension: linear ≈ 0.5 at both ends."""
    torch.manual_seed(0)
    C = 1024
    x0, x1 = sphere(64, 4, C), sphere(64, 4, C)
    for tv in (1e-3, 1 - 1e-3):
        t = torch.full((64,), tv)
        xt, u = flows.path("linear", x0, x1, t)
        share = flows.radial_share(u, xt).mean().item()
        assert abs(share - 0.5) < 0.02, (tv, share)
        xs, us = flows.path("slerp", x0, x1, t)
        assert flows.radial_share(us, xs).max().item() < 1e-6
    # the linear path's midpoint has no radial velocity: (x1 - x0) ⟂ (x0 + x1) on one sphere
    xt, u = flows.path("linear", x0, x1, torch.full((64,), 0.5))
    assert flows.radial_share(u, xt).max().item() < 1e-6


def test_shift_matches_paper_formula_on_noise_level():
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    alpha = flows.shift_alpha(256, 64)
    assert alpha == pytest.approx(2.0)
    s = 1 - t  # noise level, the papers' t
    paper = alpha * s / (1 + (alpha - 1) * s)
    torch.testing.assert_close(flows.shift_time(t, alpha), 1 - paper)
    assert (flows.shift_time(t[1:-1], alpha) < t[1:-1]).all()  # more time near noise


def test_time_sampling_ranges():
    g = torch.Generator().manual_seed(0)
    for kind in flows.TIME_DISTS:
        t = flows.sample_t(10000, kind, generator=g)
        assert t.min() > 0 and t.max() < 1 and abs(t.mean().item() - 0.5) < 0.02
    with pytest.raises(ValueError, match="time_dist"):
        flows.sample_t(3, "beta")


def test_sphere_prior_radius():
    z = flows.sphere_prior((4, 5, 36))
    torch.testing.assert_close(z.norm(dim=-1), torch.full((4, 5), 6.0))


def test_riemannian_loss_ignores_radial_part_unless_penalised():
    x = sphere(4, 3, 8).float()
    u_t = geo.split_radial(torch.randn(4, 3, 8), x)[1]
    radial = geo.split_radial(torch.randn(4, 3, 8), x)[0]
    pred = u_t + radial
    assert flows.fm_loss(pred, u_t, x, "riemannian", 0.0).item() < 1e-12
    expected = 0.1 * radial.pow(2).mean().item()
    assert flows.fm_loss(pred, u_t, x, "riemannian", 0.1).item() == pytest.approx(expected, rel=1e-5)
    assert flows.fm_loss(pred, u_t, x, "euclidean").item() == pytest.approx(radial.pow(2).mean().item(), rel=1e-5)
    with pytest.raises(ValueError, match="loss"):
        flows.fm_loss(pred, u_t, x, "cosine")


def _one_step_angle(method, omega, dt, C=16):
    x = sphere(1, 1, C).float()
    _, tan = geo.split_radial(torch.randn(1, 1, C), x)
    v = tan / tan.norm(dim=-1, keepdim=True) * math.sqrt(C) * omega  # angular speed omega
    return geo.angle(x, samplers.step(method, x, v, dt)).item()


@pytest.mark.parametrize("omega,dt", [(1.0, 0.1), (2.5, 0.2), (0.5, 0.5)])
def test_one_step_angles(omega, dt):
    """Euler+projection turns by arctan(Δt·ω); the exponential map turns by exactly Δt·ω."""
    assert _one_step_angle("euler_project", omega, dt) == pytest.approx(math.atan(dt * omega), rel=1e-5)
    assert _one_step_angle("expmap", omega, dt) == pytest.approx(dt * omega, rel=1e-5)


class GeodesicField(torch.nn.Module):
    """The exact conditional slerp velocity toward a fixed target: v(x, t) = logmap(x, target)/(1 - t)."""

    def __init__(self, target):
        super().__init__()
        self.target = target
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append(y.clone())
        return geo.logmap(x, self.target.expand_as(x)) / (1 - t).clamp_min(1e-3)[:, None, None]


def test_expmap_sampler_follows_geodesic_exactly_euler_project_lags():
    torch.manual_seed(0)
    target = sphere(1, 4, 16).float()
    errs = {}
    for method in ("expmap", "euler_project"):
        torch.manual_seed(3)
        out = samplers.sample(GeodesicField(target), (2, 4, 16), torch.zeros(2, dtype=torch.long),
                              method=method, steps=8, prior="sphere", shift=False)
        errs[method] = geo.angle(out, target.expand_as(out)).max().item()
        torch.testing.assert_close(out.norm(dim=-1), torch.full((2, 4), 4.0), atol=1e-4, rtol=1e-4)
    assert errs["expmap"] < 1e-3
    assert errs["euler_project"] > 10 * errs["expmap"]


def test_cfg_combination_interval_and_decode_radius():
    class Lin(torch.nn.Module):
        def forward(self, x, t, y):
            return torch.ones_like(x) * (y.float()[:, None, None] + 1)

    m = Lin()
    x, y = torch.zeros(2, 3, 4), torch.tensor([2, 2])
    v = samplers.guided_velocity(m, x, 0.5, y, cfg_scale=3.0, null_class=0)
    torch.testing.assert_close(v, torch.full_like(x, 1 + 3 * (3 - 1)))  # v_null + s(v_cond - v_null)
    v_out = samplers.guided_velocity(m, x, 0.9, y, cfg_scale=3.0, cfg_interval=(0.0, 0.5), null_class=0)
    torch.testing.assert_close(v_out, torch.full_like(x, 3.0))  # outside the interval: conditional only
    out = samplers.sample(m, (2, 3, 4), y, steps=2, decode_radius=7.0)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((2, 3), 7.0))
    with pytest.raises(ValueError, match="method"):
        samplers.sample(m, (2, 3, 4), y, method="heun")


def test_training_step_loss_is_differentiable_and_zero_for_oracle():
    """The trainer's step (lab.train): for one data point on the slerp path the oracle field has zero loss."""
    from lab.train import fm_step_loss, global_batch

    cpu = torch.device("cpu")
    target = sphere(1, 4, 16).float()
    batch = dict(batch_size=8, seed=0, time_dist="logit_normal", shift=True, label_dropout=0.0,
                 num_classes=1, device=cpu)
    x1, y, x0, t = global_batch(target.expand(8, 4, 16).contiguous(), torch.zeros(8, dtype=torch.long), 0,
                                path="slerp", **batch)
    loss = fm_step_loss(GeodesicField(target), x1, y, x0, t, path="slerp", loss="riemannian", radial_weight=0.0,
                        device=cpu)
    assert loss.item() < 1e-8
    lin = torch.nn.Linear(16, 16)
    x1, y, x0, t = global_batch(torch.randn(8, 4, 16), torch.zeros(8, dtype=torch.long), 0, path="linear", **batch)
    fm_step_loss(lambda x, t, y: lin(x), x1, y, x0, t, path="linear", loss="euclidean", radial_weight=0.0,
                 device=cpu).backward()
    assert torch.isfinite(lin.weight.grad).all() and lin.weight.grad.abs().sum() > 0
