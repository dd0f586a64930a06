"""Samplers for flow models on token-wise latents: integrate dx/dt = v(x, t, y) from t=0 (noise) to 1.

- `euler`:          x <- x + Δt·v                            (Euclidean; leaves the sphere)
- `euler_project`:  x <- to_sphere(x + Δt·tangent(v), R)    (DINO-SAE Alg 2 / HAE A.2: drop the radial
                    part of v, step off the sphere, project back)
- `expmap`:         x <- expmap(x, Δt·tangent(v))            (DINO-SAE Alg 1: Rodrigues rotation)

With a tangent velocity of angular speed ω, one Euler+projection step turns the point by
arctan(Δt·ω) while one exp-map step turns it by exactly Δt·ω. The radial part of v never changes
the turn: stepping with the raw v first (not in any paper) would, e.g. R = √32, Δt = 0.485,
tangent 8.9, radial -5 turns by 53.2° instead of Alg 2's 37.3° (exact exp map: 43.7°).

Classifier-free guidance: v = v_null + s·(v_cond - v_null) for t inside `cfg_interval`, using the
null class index `null_class` (the model's num_classes). At the end, generated latents can be
rescaled from the flow radius to a decoding radius (`decode_radius`: every token gets that norm).
"""
import torch
from tqdm.auto import tqdm

from lab import check_choice, flows
from lab import geometry as geo

METHODS = ("euler", "euler_project", "expmap")


def time_grid(steps, shift_alpha=1.0, device=None):
    """steps+1 times from 0 (noise) to 1 (data), flows.shift_time'd: toward noise if alpha > 1, data if < 1."""
    t = torch.linspace(0, 1, steps + 1, device=device, dtype=torch.float64)
    return flows.shift_time(t, shift_alpha).float()


def step(method, x, v, dt, radius=None):
    """One integration step of `method` from x with velocity v over dt (all per-token)."""
    if method == "euler":
        return x + dt * v
    check_choice("method", method, METHODS)
    _, tangent = geo.split_radial(v.float(), x.float())
    if method == "euler_project":
        return geo.to_sphere(x.float() + dt * tangent, radius).to(x.dtype)
    return geo.expmap(x.float(), dt * tangent).to(x.dtype)


def check_interval(cfg_interval):
    """cfg_interval = (lo, hi) with 0 <= lo <= hi <= 1: the times t where guidance applies (RAE: an interval)."""
    lo, hi = (float(v) for v in cfg_interval)
    if not 0.0 <= lo <= hi <= 1.0:
        raise ValueError(f"cfg_interval={tuple(cfg_interval)}; allowed: (lo, hi) with 0 <= lo <= hi <= 1 "
                         "(t = 0 noise, t = 1 data)")


def guided_velocity(model, x, t, y, cfg_scale=1.0, cfg_interval=(0.0, 1.0), null_class=None):
    """Model velocity with classifier-free guidance (one batched call for cond + null)."""
    tb = torch.full((x.shape[0],), float(t), device=x.device)
    lo, hi = cfg_interval
    if cfg_scale == 1.0 or null_class is None or not (lo <= float(t) <= hi):
        return model(x, tb, y).float()
    y_null = torch.full_like(y, null_class)
    v = model(torch.cat([x, x]), torch.cat([tb, tb]), torch.cat([y, y_null])).float()
    v_cond, v_null = v.chunk(2)
    return v_null + cfg_scale * (v_cond - v_null)


@torch.no_grad()
def sample(model, shape, y, *, method="euler", steps=50, cfg_scale=1.0, cfg_interval=(0.0, 1.0),
           null_class=None, shift=True, prior="gaussian", radius=None, decode_radius=None,
           generator=None, device=None, progress=False):
    """Generate latents of `shape` [B, N, C] for labels y [B].

    prior: 'gaussian' (Euclidean FM) or 'sphere' (radial projection of Gaussian noise, radius R =
    `radius` or sqrt(C)). cfg_interval (lo, hi): guidance only at grid times lo <= t <= hi (RAE's
    guidance interval; t = 0 noise). shift: True for alpha = max(1, sqrt(N·C/4096)), False for none, or alpha itself
    (flows.resolve_shift); the same setting the generator was trained with. decode_radius: if
    given, every generated token is rescaled to this norm before returning. device: default the
    model's device.
    """
    check_choice("method", method, METHODS)
    check_choice("prior", prior, ("gaussian", "sphere"))
    check_interval(cfg_interval)
    B, N, C = shape
    if device is None:
        device = next((p.device for p in model.parameters()), None) if hasattr(model, "parameters") else None
    x = flows.prior_for(prior, shape, radius, generator=generator, device=device)
    ts = time_grid(steps, flows.resolve_shift(shift, N, C), device=device)
    for i in tqdm(range(steps), disable=not progress, desc=f"sample/{method}"):
        v = guided_velocity(model, x, ts[i], y, cfg_scale, cfg_interval, null_class)
        x = step(method, x, v, float(ts[i + 1] - ts[i]), radius)
    if decode_radius is not None:
        x = geo.to_sphere(x, decode_radius)
    return x
