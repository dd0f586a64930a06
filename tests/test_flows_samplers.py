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


def test_time_distributions_by_ks_test():
    """Range and mean cannot tell logit-normal from uniform; a Kolmogorov-Smirnov test can."""
    stats = pytest.importorskip("scipy.stats")
    g = torch.Generator().manual_seed(1)
    ln = flows.sample_t(20000, "logit_normal", generator=g, mean=0.3, std=0.7).double()
    un = flows.sample_t(20000, "uniform", generator=g).double()
    logit = torch.log(ln / (1 - ln)).numpy()
    assert stats.kstest(logit, "norm", args=(0.3, 0.7)).pvalue > 1e-3
    assert stats.kstest(un.numpy(), "uniform").pvalue > 1e-3
    assert stats.kstest(ln.numpy(), "uniform").pvalue < 1e-6  # the two are told apart
    # quantiles: P(t < 0.2) = Φ((logit 0.2 - 0.3)/0.7)
    p = stats.norm.cdf((math.log(0.2 / 0.8) - 0.3) / 0.7)
    assert (ln < 0.2).double().mean().item() == pytest.approx(p, abs=0.01)


def test_small_latents_shift_toward_data():
    """16 tokens x 32 channels: α = √(512/4096) = 0.354 < 1, so shifted times move toward data (t = 1):
    under logit-normal sampling P(t < 0.2) falls from 8.3% to 0.8%."""
    stats = pytest.importorskip("scipy.stats")
    alpha = flows.shift_alpha(16, 32)
    assert alpha == pytest.approx(math.sqrt(0.125))
    t = torch.linspace(0, 1, 11, dtype=torch.float64)
    shifted = flows.shift_time(t, alpha)
    assert (shifted[1:-1] > t[1:-1]).all() and shifted[0] == 0 and shifted[-1] == 1
    cut = 0.2 * alpha / (1 - 0.2 * (1 - alpha))  # t' < 0.2  <=>  t < cut
    assert stats.norm.cdf(math.log(0.2 / 0.8)) == pytest.approx(0.083, abs=0.001)
    assert stats.norm.cdf(math.log(cut / (1 - cut))) == pytest.approx(0.0077, abs=0.0005)
    g = torch.Generator().manual_seed(2)
    ts = flows.shift_time(flows.sample_t(50000, "logit_normal", generator=g), alpha)
    assert (ts < 0.2).float().mean().item() == pytest.approx(0.0077, abs=0.002)
    assert flows.resolve_shift(alpha, 16, 32) == alpha  # only asked for by number: True gives max(1, alpha)
    assert flows.resolve_shift(True, 16, 32) == 1.0 and flows.resolve_shift(False, 16, 32) == 1.0
    assert flows.resolve_shift(2.5, 16, 32) == 2.5
    with pytest.raises(ValueError, match="shift"):
        flows.resolve_shift(-1.0, 16, 32)


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


def test_euler_project_removes_radial_part_first():
    """DINO-SAE Alg 2 / HAE A.2 worked case: R = √32, Δt = 0.485, tangent speed 8.9, radial -5.

    Alg 2 drops the radial part, steps, projects: atan(Δt·8.9/R) = 37.3°. Stepping with the raw v and
    then projecting would turn by atan(4.32/(R - 2.43)) = 53.2°; the exact exp map turns 43.7°.
    """
    C, dt = 32, 0.485
    R = math.sqrt(C)
    x = torch.zeros(1, 1, C)
    x[..., 0] = R
    v = torch.zeros(1, 1, C)
    v[..., 1], v[..., 0] = 8.9, -5.0
    turn = {m: math.degrees(geo.angle(x, samplers.step(m, x, v, dt)).item()) for m in ("euler_project", "expmap")}
    assert turn["euler_project"] == pytest.approx(37.3, abs=0.05)
    assert turn["expmap"] == pytest.approx(43.7, abs=0.05)
    assert math.degrees(math.atan(dt * 8.9 / (R - dt * 5))) == pytest.approx(53.2, abs=0.05)  # the old form
    out = samplers.step("euler_project", x, v, dt)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((1, 1), R))


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


def _remaining_angle_euler_project(theta, ts):
    """Closed form for Euler+projection on the exact geodesic field: each step turns by atan(Δt·θ/(1-t))."""
    for t0, t1 in zip(ts[:-1], ts[1:]):
        theta = theta - math.atan((t1 - t0) * theta / (1 - t0))
    return theta


@pytest.mark.parametrize("shift", [False, 0.5, 3.0])
def test_sampler_end_point_pinned_on_both_sides(shift):
    """The end error of euler_project equals its closed form (so it is bounded above and below);
    a sampler that integrates backwards (or ignores the shifted grid) lands far from it."""
    torch.manual_seed(0)
    target = sphere(1, 4, 16).float()
    field = GeodesicField(target)
    g = torch.Generator().manual_seed(4)
    x0 = flows.sphere_prior((2, 4, 16), generator=torch.Generator().manual_seed(4))
    out = samplers.sample(field, (2, 4, 16), torch.zeros(2, dtype=torch.long), method="euler_project",
                          steps=6, prior="sphere", shift=shift, generator=g)
    ts = samplers.time_grid(6, flows.resolve_shift(shift, 4, 16)).double().tolist()
    start = geo.angle(x0.double(), target.double().expand_as(x0))
    expected = torch.tensor([[_remaining_angle_euler_project(a, ts) for a in row] for row in start.tolist()])
    err = geo.angle(out.double(), target.double().expand_as(out))
    torch.testing.assert_close(err, expected.double(), atol=2e-4, rtol=1e-3)
    assert (err < 0.5 * start).all()  # it moved toward the target, not away


def test_euler_lands_on_the_target_of_a_linear_field():
    """v = (x1 - x)/(1 - t) is the exact linear-path field: Euler ends exactly at x1 on any grid."""
    target = torch.randn(1, 4, 8)

    class Toward(torch.nn.Module):
        def forward(self, x, t, y):
            return (target - x) / (1 - t)[:, None, None]

    for shift in (False, True, 0.3):
        out = samplers.sample(Toward(), (3, 4, 8), torch.zeros(3, dtype=torch.long), steps=5, shift=shift)
        torch.testing.assert_close(out, target.expand_as(out), atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("shift", [True, False, 0.354, 4.0])
def test_sampler_time_grid_uses_the_shift(shift):
    """The times the model is called at are shift_time(linspace) with the resolved alpha."""
    seen = []

    class Record(torch.nn.Module):
        def forward(self, x, t, y):
            seen.append(float(t[0]))
            return torch.zeros_like(x)

    samplers.sample(Record(), (1, 16, 32), torch.zeros(1, dtype=torch.long), steps=8, shift=shift)
    alpha = flows.resolve_shift(shift, 16, 32)
    grid = torch.linspace(0, 1, 9, dtype=torch.float64)
    expected = (grid / (alpha - (alpha - 1) * grid))[:-1]
    assert seen == pytest.approx(expected.tolist(), abs=1e-6)
    torch.testing.assert_close(samplers.time_grid(8, alpha), flows.shift_time(grid, alpha).float())


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


def test_trainer_times_follow_shift_and_time_dist():
    """global_batch's t is shift_time(sample_t(...)) from the step's generator: by closed form."""
    from lab.train import global_batch, step_seed

    cpu = torch.device("cpu")
    lat = torch.randn(4, 16, 32)
    kw = dict(batch_size=4096, seed=5, path="linear", label_dropout=0.0, num_classes=1, device=cpu)
    for dist in flows.TIME_DISTS:
        t_plain = global_batch(lat, torch.zeros(4, dtype=torch.long), 3, time_dist=dist, shift=False, **kw)[3]
        g = torch.Generator().manual_seed(step_seed(5, 3))
        flows.prior_for("linear", (4096, 16, 32), generator=g)
        torch.testing.assert_close(t_plain, flows.sample_t(4096, dist, generator=g))
        for shift in (True, 0.25, 3.0):
            t = global_batch(lat, torch.zeros(4, dtype=torch.long), 3, time_dist=dist, shift=shift, **kw)[3]
            alpha = flows.resolve_shift(shift, 16, 32)
            torch.testing.assert_close(t, t_plain / (alpha - (alpha - 1) * t_plain))


def test_radial_weight_reaches_the_trainers_loss():
    """A model whose output is c·x_t (purely radial, |x_t|² = C per token on the slerp path): the
    Riemannian loss of step 0 is mean|u_t|² + λ c², so the difference between λ and 0 is λ c²."""
    from lab.train import train_generator

    class Radial(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.c = torch.nn.Parameter(torch.tensor(2.0))

        def forward(self, x, t, y):
            return self.c * x

    lat = torch.randn(8, 4, 16)
    first = {}
    for lam in (0.0, 0.1, 1.0):
        out = train_generator(lat, model=Radial(), path="slerp", loss="riemannian", radial_weight=lam, steps=1,
                              batch_size=8, progress=False, device="cpu")
        first[lam] = out["losses"][0]
    assert first[0.1] - first[0.0] == pytest.approx(0.1 * 4.0, rel=1e-4)
    assert first[1.0] - first[0.0] == pytest.approx(1.0 * 4.0, rel=1e-4)


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


# ----------------------------------------------------------------------------- settings reach the tensors


def test_priors_and_times_follow_generator_device_and_radius():
    """Seeded draws equal torch's own draws from that generator; device and radius are passed on
    (the meta device shows where a tensor would live without allocating it)."""
    seed = lambda: torch.Generator().manual_seed(11)  # noqa: E731
    torch.testing.assert_close(flows.gaussian_prior((2, 3, 4), generator=seed()),
                               torch.randn((2, 3, 4), generator=seed()))
    torch.testing.assert_close(flows.prior_for("linear", (2, 3, 4), generator=seed()),
                               torch.randn((2, 3, 4), generator=seed()))
    torch.testing.assert_close(flows.prior_for("sphere", (2, 3, 4), radius=2.5, generator=seed()),
                               geo.to_sphere(torch.randn((2, 3, 4), generator=seed()), 2.5))
    torch.testing.assert_close(flows.sphere_prior((2, 3, 4), 0.5).norm(dim=-1), torch.full((2, 3), 0.5))
    torch.testing.assert_close(flows.sample_t(7, "uniform", generator=seed()), torch.rand(7, generator=seed()))
    torch.testing.assert_close(flows.sample_t(7, generator=seed()),  # the default is logit-normal
                               torch.sigmoid(torch.randn(7, generator=seed())))
    for draw in (lambda: flows.gaussian_prior((2, 3), device="meta"),
                 lambda: flows.sphere_prior((2, 3), device="meta"),
                 lambda: flows.prior_for("slerp", (2, 3), device="meta"),
                 lambda: flows.prior_for("gaussian", (2, 3), device="meta"),
                 lambda: flows.sample_t(3, "uniform", device="meta"),
                 lambda: flows.sample_t(3, "logit_normal", device="meta")):
        assert draw().device.type == "meta"


@pytest.mark.parametrize("fn,name", [(lambda: flows.path("curved", *torch.zeros(2, 1, 1, 2), torch.zeros(1)), "path"),
                                     (lambda: flows.prior_for("cube", (1, 2)), "prior"),
                                     (lambda: flows.sample_t(3, "beta"), "time_dist"),
                                     (lambda: flows.fm_loss(*torch.zeros(3, 1, 2), "cosine"), "loss")])
def test_choice_errors_name_the_parameter(fn, name):
    with pytest.raises(ValueError, match=f"^{name}="):
        fn()


def test_fm_loss_closed_forms_and_defaults():
    g = torch.Generator().manual_seed(6)
    x = geo.to_sphere(torch.randn(4, 3, 8, generator=g))
    pred, u = torch.randn(4, 3, 8, generator=g), geo.split_radial(torch.randn(4, 3, 8, generator=g), x)[1]
    radial, tangent = geo.split_radial(pred, x)
    assert flows.fm_loss(pred, u, x).item() == pytest.approx((pred - u).pow(2).mean().item(), rel=1e-6)  # euclidean
    assert flows.fm_loss(pred, u, x, "riemannian").item() == pytest.approx((tangent - u).pow(2).mean().item(), rel=1e-6)
    assert flows.fm_loss(pred, u, x, "riemannian", 0.3).item() == pytest.approx(
        (tangent - u).pow(2).mean().item() + 0.3 * radial.pow(2).mean().item(), rel=1e-6)


def test_slerp_path_stays_on_the_first_sphere_shell_path_does_not():
    """slerp runs on the sphere of |x0| to x1's direction; the shell path ends at x1 itself (also for
    norms below 1)."""
    g = torch.Generator().manual_seed(8)
    x0, x1 = 0.2 * geo.to_sphere(torch.randn(3, 2, 8, generator=g)), 0.05 * torch.randn(3, 2, 8, generator=g)
    end, _ = flows.path("slerp", x0, x1, torch.ones(3))
    torch.testing.assert_close(end.norm(dim=-1), x0.norm(dim=-1))
    torch.testing.assert_close(geo.angle(end, x1), torch.zeros(3, 2), atol=1e-3, rtol=0)
    mid, _ = flows.path("shell", x0, x1, torch.full((3,), 0.5))
    torch.testing.assert_close(mid.norm(dim=-1), 0.5 * (x0.norm(dim=-1) + x1.norm(dim=-1)))
    torch.testing.assert_close(geo.angle(mid, x0), 0.5 * geo.angle(x0, x1), atol=1e-5, rtol=1e-5)


def test_radial_share_per_sample_and_small_velocities():
    x = geo.to_sphere(torch.randn(3, 2, 8))
    radial = geo.split_radial(torch.randn(3, 2, 8), x)[0]
    tangent = geo.split_radial(torch.randn(3, 2, 8), x)[1]
    tangent = tangent / tangent.norm(dim=-1, keepdim=True) * radial.norm(dim=-1, keepdim=True)  # equal norms
    u = torch.stack([radial[0], tangent[1], radial[2] + tangent[2]]) * 1e-3  # shares 1, 0, 1/2; |u| << 1
    torch.testing.assert_close(flows.radial_share(u, x), torch.tensor([1.0, 0.0, 0.5]), atol=1e-5, rtol=0)


def test_resolve_shift_rejects_non_positive_alpha():
    for bad in (0.0, -2.0):
        with pytest.raises(ValueError, match="shift"):
            flows.resolve_shift(bad, 16, 32)


class Recorder(torch.nn.Module):
    """v = (y + 1)·1, recording the batch size, the times and their device of every call."""

    def __init__(self):
        super().__init__()
        self.calls = []

    def forward(self, x, t, y):
        self.calls.append((len(x), t.tolist() if t.device.type != "meta" else None, t.device.type))
        return torch.ones_like(x) * (y.float()[:, None, None] + 1)


def test_guidance_defaults_boundaries_and_batching():
    x, y = torch.zeros(3, 2, 4), torch.tensor([2, 2, 2])
    m = Recorder()
    torch.testing.assert_close(samplers.guided_velocity(m, x, 0.5, y, null_class=0), torch.full_like(x, 3.0))
    v = samplers.guided_velocity(m, x, 0.5, y, cfg_scale=1.0, null_class=0)
    torch.testing.assert_close(v, torch.full_like(x, 3.0))
    assert [c[0] for c in m.calls] == [3, 3]  # scale 1: one conditional call, no null batch
    m.calls.clear()
    for t in (0.25, 0.75):  # the interval's ends are inside it
        v = samplers.guided_velocity(m, x, t, y, cfg_scale=2.0, cfg_interval=(0.25, 0.75), null_class=0)
        torch.testing.assert_close(v, torch.full_like(x, 1 + 2 * (3 - 1)))
    assert m.calls == [(6, [0.25] * 6, "cpu"), (6, [0.75] * 6, "cpu")]
    samplers.guided_velocity(m, x.to("meta"), 0.5, y.to("meta"), cfg_scale=2.0, null_class=0)
    samplers.guided_velocity(m, x.to("meta"), 0.5, y.to("meta"))
    assert [c[2] for c in m.calls[-2:]] == ["meta", "meta"]


def test_step_radius_dtype_and_choice():
    x = geo.to_sphere(torch.randn(2, 3, 8), 2.0).bfloat16()
    v = torch.randn(2, 3, 8).bfloat16()
    for method in samplers.METHODS:
        assert samplers.step(method, x, v, 0.1, radius=2.0).dtype == torch.bfloat16
    out = samplers.step("euler_project", x.float(), v.float(), 0.1, radius=2.0)
    torch.testing.assert_close(out.norm(dim=-1), torch.full((2, 3), 2.0))
    with pytest.raises(ValueError, match="^method="):
        samplers.step("heun", x, v, 0.1)


def test_time_grid_default_dtype_and_device():
    assert torch.equal(samplers.time_grid(4), torch.linspace(0, 1, 5))
    grid = torch.linspace(0, 1, 51, dtype=torch.float64)
    shifted = grid / (0.354 - (0.354 - 1) * grid)
    assert torch.equal(samplers.time_grid(50, 0.354), shifted.float())  # computed in fp64, rounded once
    assert samplers.time_grid(4, 2.0, device="meta").device.type == "meta"
