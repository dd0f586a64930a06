"""Flow matching on token-wise latents: paths, prior, time sampling, losses, diagnostics.

Time convention (see lab.geometry): t = 0 is noise x0, t = 1 is data x1. A path gives the point
x_t and the target velocity u_t = d x_t / dt; the network regresses u_t from (x_t, t, y).

- `linear`: Euclidean FM (rectified flow), x_t = (1-t) x0 + t x1, u_t = x1 - x0.
- `slerp`:  Riemannian FM on the product of spheres S^{C-1}_R: the geodesic from x0 to x1, whose
            velocity is tangent (radial share exactly 0). Both endpoints should lie on the sphere.
- `shell`:  direction by slerp, radius linearly: x_t = r_t · slerp(x̂0, x̂1, t), r_t = (1-t)|x0| + t|x1|.

All path math runs in fp32 (lab.geometry), whatever the autocast dtype of the network.
"""
import math

import torch

from lab import check_choice
from lab import geometry as geo

PATHS = ("linear", "slerp", "shell")
LOSSES = ("euclidean", "riemannian")
TIME_DISTS = ("uniform", "logit_normal")


# ----------------------------------------------------------------------------- paths


def path(name, x0, x1, t):
    """(x_t, u_t) of path `name` between noise x0 and data x1 at per-sample times t [B]."""
    check_choice("path", name, PATHS)
    x0, x1 = x0.float(), x1.float()
    if name == "linear":
        tt = geo._time(t, x0)
        return (1 - tt) * x0 + tt * x1, x1 - x0
    if name == "slerp":
        return geo.slerp_with_velocity(x0, x1, t)
    # shell: unit-direction slerp, linearly interpolated radius
    r0, r1 = x0.norm(dim=-1, keepdim=True), x1.norm(dim=-1, keepdim=True)
    d0, d1 = x0 / r0.clamp_min(1e-12), x1 / r1.clamp_min(1e-12)
    tt = geo._time(t, x0)
    rt = (1 - tt) * r0 + tt * r1
    dt, ddt = geo.slerp_with_velocity(d0, d1, t)
    return rt * dt, (r1 - r0) * dt + rt * ddt


# ----------------------------------------------------------------------------- prior and time


def sphere_prior(shape, radius=None, generator=None, device=None):
    """Radial projection of Gaussian noise onto the sphere of `radius` (default sqrt(C)) per token."""
    z = torch.randn(shape, generator=generator, device=device)
    return geo.to_sphere(z, radius)


def gaussian_prior(shape, generator=None, device=None):
    return torch.randn(shape, generator=generator, device=device)


def sample_t(n, kind="logit_normal", generator=None, device=None, mean=0.0, std=1.0):
    """Training times in (0, 1): uniform, or logit-normal sigmoid(N(mean, std^2)) (SD3)."""
    check_choice("time_dist", kind, TIME_DISTS)
    if kind == "uniform":
        return torch.rand(n, generator=generator, device=device)
    return torch.sigmoid(mean + std * torch.randn(n, generator=generator, device=device))


def shift_alpha(num_tokens, channels, base=4096):
    """Dimension-dependent shift alpha = sqrt(N·C / 4096) (RAE / SD3 resolution shift).

    alpha > 1 (large latents, e.g. 256 x 768) moves training and sampling times toward noise;
    alpha < 1 (small latents: 16 tokens x 32 channels gives sqrt(512/4096) = 0.354) moves them
    toward *data*, so the noise end is trained less (logit-normal: P(t < 0.2) 8% -> 0.8%).
    """
    return math.sqrt(num_tokens * channels / base)


def resolve_shift(shift, num_tokens, channels):
    """The alpha a `shift` setting means: True -> max(1, shift_alpha(N, C)), False/None -> 1, a number -> itself.

    True applies the RAE shift only where it moves time toward noise (alpha > 1, the regime of RAE
    Tab. 4's claim); on small latents (16 x 32: 0.354) it leaves time alone. Only an explicit number
    below 1 moves time toward data.
    """
    if shift is True:
        return max(1.0, shift_alpha(num_tokens, channels))
    if shift is False or shift is None:
        return 1.0
    alpha = float(shift)
    if not alpha > 0:
        raise ValueError(f"shift={shift!r}; allowed: True, False or a positive alpha")
    return alpha


def shift_time(t, alpha):
    """Shifted times t' = t / (alpha - (alpha-1) t): toward noise when alpha > 1, toward data when alpha < 1.

    The papers write t' = α t / (1 + (α-1) t) with t the *noise level*. In our convention the noise
    level is 1 - t, so the same map reads t' = t / (α - (α-1) t). Endpoints stay fixed.
    """
    return t / (alpha - (alpha - 1) * t)


# ----------------------------------------------------------------------------- loss and diagnostics


def fm_loss(pred, u_t, x_t, kind="euclidean", radial_weight=0.0):
    """Flow-matching loss, mean over elements.

    euclidean:  |pred - u_t|^2.
    riemannian: |tangent(pred) - u_t|^2 + λ |radial(pred)|^2, with tangent/radial at x_t. u_t is
                tangent for the slerp path; λ = radial_weight (0, 0.1, 1 in the paper's ablation).
    """
    check_choice("loss", kind, LOSSES)
    pred = pred.float()
    if kind == "euclidean":
        return (pred - u_t).pow(2).mean()
    radial, tangent = geo.split_radial(pred, x_t)
    loss = (tangent - u_t).pow(2).mean()
    if radial_weight:
        loss = loss + radial_weight * radial.pow(2).mean()
    return loss


def radial_share(u, x):
    """|radial part of u at x|^2 / |u|^2 per sample (summed over tokens and channels): shape [B]."""
    radial, _ = geo.split_radial(u.float(), x.float())
    dims = tuple(range(1, u.dim()))
    return radial.pow(2).sum(dims) / u.float().pow(2).sum(dims).clamp_min(1e-30)


def prior_for(kind, shape, radius=None, generator=None, device=None):
    """The matching prior: 'sphere' (or path 'slerp') -> sphere_prior; 'gaussian' (or 'linear'/'shell') -> Gaussian.

    The one place the prior is chosen: the trainer, the sampler and the probes all call it.
    """
    check_choice("prior", kind, ("gaussian", "sphere") + PATHS)
    if kind in ("sphere", "slerp"):
        return sphere_prior(shape, radius, generator, device)
    return gaussian_prior(shape, generator, device)
