"""lab.geometry against float64 closed forms, identities and edge cases."""
import math

import pytest
import torch

import lab  # noqa: F401
from lab import geometry as geo

torch.manual_seed(0)


def rand_sphere(*shape, dtype=torch.float64, radius=None):
    return geo.to_sphere(torch.randn(*shape, dtype=dtype), radius)


def closed_form_slerp(x0, x1, t):
    """Textbook slerp and its velocity in float64, for generic (not tiny, not antipodal) angles."""
    r = x0.norm(dim=-1, keepdim=True)
    om = torch.arccos((x0 * x1).sum(-1, keepdim=True) / (r * x1.norm(dim=-1, keepdim=True)))
    x1r = x1 / x1.norm(dim=-1, keepdim=True) * r
    t = t.reshape(-1, *([1] * (x0.dim() - 1)))
    a, b = torch.sin((1 - t) * om) / torch.sin(om), torch.sin(t * om) / torch.sin(om)
    da, db = -om * torch.cos((1 - t) * om) / torch.sin(om), om * torch.cos(t * om) / torch.sin(om)
    return a * x0 + b * x1r, da * x0 + db * x1r


def test_to_sphere_radius_and_direction():
    x = torch.randn(5, 7, 16, dtype=torch.float64) * 3
    s = geo.to_sphere(x)
    torch.testing.assert_close(s.norm(dim=-1), torch.full((5, 7), 4.0, dtype=torch.float64))
    torch.testing.assert_close(geo.angle(s, x), torch.zeros(5, 7, dtype=torch.float64), atol=1e-7, rtol=0)
    assert torch.allclose(geo.to_sphere(x, radius=2.5).norm(dim=-1), torch.tensor(2.5, dtype=torch.float64))


def test_split_radial_is_orthogonal_decomposition():
    x, v = torch.randn(4, 6, 10, dtype=torch.float64), torch.randn(4, 6, 10, dtype=torch.float64)
    rad, tan = geo.split_radial(v, x)
    torch.testing.assert_close(rad + tan, v)
    assert (tan * x).sum(-1).abs().max() < 1e-12
    # radial is parallel to x: its component orthogonal to x vanishes
    _, rad_tan = geo.split_radial(rad, x)
    assert rad_tan.abs().max() < 1e-12


def test_angle_matches_arccos():
    x, y = rand_sphere(8, 5, 12), rand_sphere(8, 5, 12)
    ref = torch.arccos((x * y).sum(-1) / 12)
    torch.testing.assert_close(geo.angle(x, y), ref)


def test_slerp_and_velocity_match_closed_form():
    x0, x1 = rand_sphere(6, 4, 16), rand_sphere(6, 4, 16)
    t = torch.rand(6, dtype=torch.float64)
    ref_x, ref_v = closed_form_slerp(x0, x1, t)
    torch.testing.assert_close(geo.slerp(x0, x1, t), ref_x)
    torch.testing.assert_close(geo.slerp_velocity(x0, x1, t), ref_v)
    # endpoints
    torch.testing.assert_close(geo.slerp(x0, x1, torch.zeros(6, dtype=torch.float64)), x0)
    torch.testing.assert_close(geo.slerp(x0, x1, torch.ones(6, dtype=torch.float64)), x1)


def test_slerp_velocity_is_finite_difference_of_slerp():
    x0, x1 = rand_sphere(3, 2, 8), rand_sphere(3, 2, 8)
    t, h = torch.full((3,), 0.37, dtype=torch.float64), 1e-6
    fd = (geo.slerp(x0, x1, t + h) - geo.slerp(x0, x1, t - h)) / (2 * h)
    torch.testing.assert_close(geo.slerp_velocity(x0, x1, t), fd, atol=1e-8, rtol=1e-7)


def test_velocity_tangent_and_constant_speed():
    x0, x1 = rand_sphere(5, 3, 32), rand_sphere(5, 3, 32)
    speed = geo.angle(x0, x1) * math.sqrt(32)
    for tv in (0.0, 0.3, 0.9):
        t = torch.full((5,), tv, dtype=torch.float64)
        xt, vt = geo.slerp(x0, x1, t), geo.slerp_velocity(x0, x1, t)
        assert (xt * vt).sum(-1).abs().max() < 1e-9
        torch.testing.assert_close(vt.norm(dim=-1), speed)


def test_expmap_logmap_roundtrip_and_norms():
    x, y = rand_sphere(7, 9, 24, radius=3.0), rand_sphere(7, 9, 24, radius=3.0)
    v = geo.logmap(x, y)
    assert (v * x).sum(-1).abs().max() < 1e-10  # tangent
    torch.testing.assert_close(v.norm(dim=-1), 3.0 * geo.angle(x, y))  # length R·Ω
    torch.testing.assert_close(geo.expmap(x, v), y)
    # expmap of a tangent vector of length R·θ turns by θ
    _, tan = geo.split_radial(torch.randn_like(x), x)
    tan = tan / tan.norm(dim=-1, keepdim=True) * 3.0 * 0.4
    torch.testing.assert_close(geo.angle(x, geo.expmap(x, tan)), torch.full((7, 9), 0.4, dtype=torch.float64))


def test_exact_for_identical_points():
    x = rand_sphere(4, 3, 16, dtype=torch.float32)
    assert torch.equal(geo.logmap(x, x), torch.zeros_like(x))
    assert torch.equal(geo.expmap(x, torch.zeros_like(x)), x)
    assert torch.equal(geo.slerp(x, x, torch.rand(4)), x)
    assert torch.equal(geo.angle(x, x), torch.zeros(4, 3))


def test_antipodal_is_defined():
    x = rand_sphere(4, 3, 16)
    v = geo.logmap(x, -x)
    torch.testing.assert_close(v.norm(dim=-1), torch.full((4, 3), 4 * math.pi, dtype=torch.float64))
    assert (v * x).sum(-1).abs().max() < 1e-9
    torch.testing.assert_close(geo.expmap(x, v), -x)
    mid = geo.slerp(x, -x, torch.full((4,), 0.5, dtype=torch.float64))
    torch.testing.assert_close(mid.norm(dim=-1), torch.full((4, 3), 4.0, dtype=torch.float64))
    torch.testing.assert_close(geo.angle(mid, x), torch.full((4, 3), math.pi / 2, dtype=torch.float64))


def _pairs(dtype):
    """Identical, nearly identical (1e-7 rad) and antipodal pairs, on spheres of radius sqrt(C)."""
    x = rand_sphere(3, 2, 16, dtype=torch.float64)
    _, tan = geo.split_radial(torch.randn_like(x), x)
    near = geo.expmap(x, tan / tan.norm(dim=-1, keepdim=True) * 4 * 1e-7)
    return {"identical": (x, x.clone()), "near": (x, near), "antipodal": (x, -x)}, dtype


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
@pytest.mark.parametrize("case", ["identical", "near", "antipodal"])
def test_no_nan_values_or_gradients(dtype, case):
    pairs, _ = _pairs(dtype)
    a, b = (p.to(dtype) for p in pairs[case])
    t = torch.full((3,), 0.3)
    fns = {
        "angle": lambda x, y: geo.angle(x, y),
        "logmap": lambda x, y: geo.logmap(x, y),
        "expmap": lambda x, y: geo.expmap(x, geo.logmap(x, y)),
        "slerp": lambda x, y: geo.slerp(x, y, t),
        "slerp_velocity": lambda x, y: geo.slerp_velocity(x, y, t),
        "split_radial": lambda x, y: geo.split_radial(y, x)[1],
        "to_sphere": lambda x, y: geo.to_sphere(x + y),
    }
    for name, fn in fns.items():
        x, y = a.clone().requires_grad_(), b.clone().requires_grad_()
        out = fn(x, y)
        assert out.dtype == dtype, name
        assert torch.isfinite(out.float()).all(), f"{name} value not finite for {case}/{dtype}"
        (out.float() * torch.linspace(-1, 1, out.numel()).reshape(out.shape)).sum().backward()
        for g in (x.grad, y.grad):
            assert g is not None and torch.isfinite(g.float()).all(), f"{name} grad not finite for {case}/{dtype}"


def test_gradient_of_logmap_near_identical_is_tangent_projection():
    """d logmap(x, y)/dy at y = x is the projection onto the tangent space (in float64)."""
    x = rand_sphere(1, 1, 6)[0, 0]
    jac = torch.autograd.functional.jacobian(lambda y: geo.logmap(x, y), x.clone())
    xh = x / x.norm()
    torch.testing.assert_close(jac, torch.eye(6, dtype=torch.float64) - torch.outer(xh, xh))


def test_bf16_in_fp32_math_out_bf16():
    x, y = rand_sphere(2, 4, 64, dtype=torch.float32), rand_sphere(2, 4, 64, dtype=torch.float32)
    t = torch.rand(2)
    out = geo.slerp(x.bfloat16(), y.bfloat16(), t)
    ref = geo.slerp(x.bfloat16().float(), y.bfloat16().float(), t).bfloat16()
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref)


@pytest.mark.parametrize("axis", [0, 1, 5])
def test_antipodal_fallback_on_coordinate_axes(axis):
    """The fallback tangent must stay tangent and unit even when x lies on a basis axis."""
    x = torch.zeros(1, 8, dtype=torch.float64)
    x[0, axis] = 3.0
    v = geo.logmap(x, -x)
    torch.testing.assert_close(v.norm(dim=-1), torch.tensor([3 * math.pi], dtype=torch.float64))
    assert (v * x).sum().abs() < 1e-12
    torch.testing.assert_close(geo.expmap(x, v), -x)


@pytest.mark.parametrize("name", ["angle", "logmap", "expmap", "split_radial", "to_sphere"])
def test_every_public_function_computes_bf16_in_fp32(name):
    """bf16 in, fp32 math, bf16 out: equal to the fp32 result on the same (bf16-rounded) inputs, rounded once."""
    g = torch.Generator().manual_seed(3)
    x = geo.to_sphere(torch.randn(64, 256, generator=g), 3.3).bfloat16()  # not a power of 2: x/|x| rounds in bf16
    y = (x.float() + 0.01 * torch.randn(64, 256, generator=g)).bfloat16()  # close points: bf16 math loses them
    fns = {"angle": lambda a, b: geo.angle(a, b), "logmap": lambda a, b: geo.logmap(a, b),
           "expmap": lambda a, b: geo.expmap(a, b), "split_radial": lambda a, b: geo.split_radial(b, a)[0],
           "to_sphere": lambda a, b: geo.to_sphere(b, 3.3)}
    out, ref = fns[name](x, y), fns[name](x.float(), y.float()).bfloat16()
    assert out.dtype == torch.bfloat16 and torch.equal(out, ref), name


def test_split_radial_parts_keep_the_input_dtype():
    x, v = torch.randn(3, 8).bfloat16(), torch.randn(3, 8).bfloat16()
    rad, tan = geo.split_radial(v, x)
    assert rad.dtype == tan.dtype == torch.bfloat16


def test_small_radius_and_zero_vectors():
    """Radius below 1 (the angle is |v|/R, not |v|) and the zero vector (no division by zero)."""
    R = 0.3
    x = rand_sphere(5, 8, radius=R)
    _, tan = geo.split_radial(torch.randn(5, 8, dtype=torch.float64), x)
    v = tan / tan.norm(dim=-1, keepdim=True) * 0.2  # angle 0.2 / 0.3
    out = geo.expmap(x, v)
    torch.testing.assert_close(geo.angle(x, out), torch.full((5,), 0.2 / R, dtype=torch.float64))
    y = geo.expmap(x, 1.3 * v)
    torch.testing.assert_close(geo.slerp(x, y, torch.full((5,), 0.5, dtype=torch.float64)), geo.expmap(x, 0.65 * v))
    torch.testing.assert_close(geo.slerp_velocity(x, y, torch.zeros(5, dtype=torch.float64)), 1.3 * v)
    zero = torch.zeros(2, 8, dtype=torch.float64)  # a degenerate sphere: finite, never 0/0
    assert torch.isfinite(geo.expmap(zero, torch.randn(2, 8, dtype=torch.float64))).all()
    assert torch.isfinite(geo.slerp_velocity(zero, torch.randn(2, 8, dtype=torch.float64), torch.rand(2))).all()


def test_python_float_time_in_float64():
    """A float t is taken at the dtype of the points: float64 paths are exact to 1e-12."""
    x0, x1 = rand_sphere(4, 16), rand_sphere(4, 16)
    total = geo.angle(x0, x1)
    torch.testing.assert_close(geo.angle(x0, geo.slerp(x0, x1, 0.3)), 0.3 * total, atol=1e-13, rtol=1e-13)


def test_antipodal_fallback_near_the_first_axis_is_tangent():
    """|x̂_0| >= 0.9 uses the e1 fallback: it must be tangent too when x̂ has an e1 component."""
    x = torch.zeros(3, 8, dtype=torch.float64)
    x[:, 0], x[:, 1], x[:, 2] = 0.95, torch.tensor([0.3, -0.2, 0.0], dtype=torch.float64), 0.1
    x = geo.to_sphere(x, 2.0)
    v = geo.logmap(x, -x)
    torch.testing.assert_close(v.norm(dim=-1), torch.full((3,), 2 * math.pi, dtype=torch.float64))
    assert (v * x).sum(-1).abs().max() < 1e-12
    torch.testing.assert_close(geo.expmap(x, v), -x)


def test_expmap_drops_the_radial_part():
    x = rand_sphere(4, 3, 8)
    rad, tan = geo.split_radial(torch.randn(4, 3, 8, dtype=torch.float64), x)
    torch.testing.assert_close(geo.expmap(x, tan + 5 * rad), geo.expmap(x, tan))


def test_times_follow_the_points_device():
    """Per-sample times on the CPU broadcast against points elsewhere (the meta device stands in for CUDA)."""
    x0, x1 = torch.randn(2, 3, 8, device="meta"), torch.randn(2, 3, 8, device="meta")
    xt, ut = geo.slerp_with_velocity(x0, x1, torch.tensor([0.25, 0.5]))
    assert xt.device.type == ut.device.type == "meta" and xt.shape == (2, 3, 8)
