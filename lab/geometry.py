"""Geometry of token-wise latents on a product of hyperspheres.

A latent image is `[B, N, C]`: N tokens, each a point in R^C. The last dimension is the ambient
dimension of one sphere S^{C-1}_R, so the image lives on the product of N spheres. Every function
here acts on the last dimension and broadcasts over the others.

Time convention for the whole package: **t = 0 is noise, t = 1 is data.** Paths run from a
prior sample x0 (t = 0) to a data latent x1 (t = 1); `t` has shape `[B]` and broadcasts per
sample over tokens and channels.

Numerics. All math runs in float32 (float64 if the input is float64) whatever the input dtype,
and the result is cast back: bf16 in, fp32 sin/cos/arccos, bf16 out. Angles use the
`2·atan2(|x̂-ŷ|, |x̂+ŷ|)` form, accurate at tiny angles and at antipodes, where `arccos` of a
dot product is not. Norms of vectors that can be exactly zero go through `_safe_norm`, whose
gradient is finite at zero, so no NaN leaks through a `torch.where` branch. At an exact antipode
the geodesic is not unique; `logmap` then picks a fixed tangent direction (`_fallback_tangent`).
"""
import math

import torch

# ----------------------------------------------------------------------------- helpers


def _compute_dtype(x):
    return torch.float64 if x.dtype == torch.float64 else torch.float32


def _dot(a, b):
    return (a * b).sum(-1, keepdim=True)


def _safe_norm(x):
    """|x| over the last dim, with a finite (zero) gradient where x == 0."""
    sq = _dot(x, x)
    nonzero = sq > 0
    return torch.where(nonzero, torch.sqrt(torch.where(nonzero, sq, torch.ones_like(sq))), torch.zeros_like(sq))


def _unit(x):
    n = _safe_norm(x)
    return x / torch.where(n > 0, n, torch.ones_like(n))


def _sinc(x):
    """sin(x)/x, smooth through 0 (torch.sinc is the normalised sin(pi x)/(pi x))."""
    return torch.sinc(x / math.pi)


def _fallback_tangent(xh):
    """A fixed unit tangent at unit xh (used only at exact antipodes): e0 projected, or e1 if xh ≈ ±e0.

    Elementwise only (no argmin/scatter, no data-dependent branch), so it stays cheap on the hot path.
    """
    a, b = xh[..., :1], xh[..., 1:2]
    f0 = -a * xh
    f0[..., 0] += 1  # e0 - (e0·xh) xh
    f1 = -b * xh
    f1[..., 1] += 1  # e1 - (e1·xh) xh
    return _unit(torch.where(a.abs() < 0.9, f0, f1))


def _time(t, x):
    """Broadcast per-sample times [B] (or a scalar) against x [B, ...]."""
    t = torch.as_tensor(t, dtype=x.dtype, device=x.device)
    return t.reshape(t.shape + (1,) * (x.dim() - t.dim())) if t.dim() > 0 else t


# ----------------------------------------------------------------------------- public API


def to_sphere(x, radius=None):
    """Project every token radially onto the sphere of `radius` (default sqrt(C))."""
    cd = _compute_dtype(x)
    xf = x.to(cd)
    r = math.sqrt(x.shape[-1]) if radius is None else radius
    return (_unit(xf) * r).to(x.dtype)


def split_radial(v, x):
    """Split v at base point x into (radial, tangent) parts: v = radial + tangent."""
    cd = _compute_dtype(v)
    vf, xh = v.to(cd), _unit(x.to(cd))
    radial = _dot(vf, xh) * xh
    return radial.to(v.dtype), (vf - radial).to(v.dtype)


def _angle_f(xh, yh):
    return 2 * torch.atan2(_safe_norm(xh - yh), _safe_norm(xh + yh))


def angle(x, y):
    """Angle between the directions of x and y, in [0, pi], shape [..., 1] dropped to [...]."""
    cd = _compute_dtype(x)
    return _angle_f(_unit(x.to(cd)), _unit(y.to(cd))).squeeze(-1).to(x.dtype)


def _logmap_f(xf, yf):
    """logmap in compute dtype: tangent vector at x, length |x|·angle, pointing toward y."""
    r = _safe_norm(xf)
    xh, yh = _unit(xf), _unit(yf)
    d = yh - xh
    w = d - _dot(d, xh) * xh  # tangent part of yh; |w| = sin(angle); d-form avoids cancellation
    om = _angle_f(xh, yh)
    # Branch A (angle < pi/2): w·angle/sin(angle) = w/sinc(angle), exact Jacobian near 0.
    small = om < math.pi / 2
    om_a = torch.where(small, om, torch.zeros_like(om))
    near_zero = w / _sinc(om_a)
    # Branch B (angle >= pi/2): angle · unit(w); at the antipode w vanishes, use a fixed tangent.
    wn = _safe_norm(w)
    tiny = wn < 8 * torch.finfo(xf.dtype).eps
    u = torch.where(tiny, _fallback_tangent(xh), w / torch.where(tiny, torch.ones_like(wn), wn))
    far = om * u
    return r * torch.where(small, near_zero, far)


def _expmap_f(xf, vf):
    r = _safe_norm(xf)
    vt = vf - _dot(vf, _unit(xf)) * _unit(xf)  # keep only the tangent part
    th = _safe_norm(vt) / torch.where(r > 0, r, torch.ones_like(r))
    return torch.cos(th) * xf + _sinc(th) * vt


def logmap(x, y):
    """Riemannian log on the sphere of radius |x|: the tangent v at x with expmap(x, v) = y's direction."""
    cd = _compute_dtype(x)
    return _logmap_f(x.to(cd), y.to(cd)).to(x.dtype)


def expmap(x, v):
    """Riemannian exp on the sphere of radius |x|: follow the great circle from x along tangent v.

    Rodrigues form: cos(θ)·x + sin(θ)·R·v/|v| with θ = |v|/R, written with sinc so v = 0 is exact.
    The radial part of v, if any, is dropped.
    """
    cd = _compute_dtype(x)
    return _expmap_f(x.to(cd), v.to(cd)).to(x.dtype)


def _slerp_f(x0f, x1f, tt):
    """(γ(t), γ'(t)) of the geodesic from x0 toward x1, in compute dtype, from one logmap.

    With L = logmap(x0, x1), Ω = |L|/R and θ = tΩ:  γ = cos θ·x0 + t·sinc(θ)·L  (= expmap(x0, tL)),
    γ' = -Ω sin θ·x0 + cos θ·L.
    """
    lg = _logmap_f(x0f, x1f)
    r = _safe_norm(x0f)
    om = _safe_norm(lg) / torch.where(r > 0, r, torch.ones_like(r))
    th = tt * om
    cos = torch.cos(th)
    return cos * x0f + tt * _sinc(th) * lg, -om * torch.sin(th) * x0f + cos * lg


def slerp(x0, x1, t):
    """Geodesic from x0 (t=0) to the direction of x1 (t=1) on the sphere of radius |x0|."""
    return slerp_with_velocity(x0, x1, t)[0]


def slerp_velocity(x0, x1, t):
    """d/dt slerp(x0, x1, t): constant speed |x0|·angle, tangent to the sphere at slerp(x0, x1, t)."""
    return slerp_with_velocity(x0, x1, t)[1]


def slerp_with_velocity(x0, x1, t):
    """(slerp(x0, x1, t), slerp_velocity(x0, x1, t)) sharing one logmap: what a training step needs."""
    cd = _compute_dtype(x0)
    x0f, x1f = x0.to(cd), x1.to(cd)
    xt, ut = _slerp_f(x0f, x1f, _time(t, x0f))
    return xt.to(x0.dtype), ut.to(x0.dtype)
