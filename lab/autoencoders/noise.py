"""Latent noise while a decoder trains: the three papers' conventions side by side.

Each adds Gaussian noise to the latent the decoder sees, one noise scale sigma per sample, so the
decoder learns to decode the slightly-off latents a generator will hand it. They differ in how
sigma is drawn and in what unit it is measured:

    RAE      (§4.3, noise-augmented decoding)  z + sigma * eps,  sigma ~ |N(0, tau^2)|  (the RAE code: U(0, tau))
    GAE      (§3, Dynamic Noise Sampling)      z = mu + |sigma| * eps,  sigma ~ N(0, C_sigma)
    DINO-SAE (Eq. 10, stage 4)                 z + sigma * eps,  sigma ~ U(0, tau),  tau = 0.8

eps ~ N(0, I) everywhere. GAE's C_sigma is a standard deviation (its Tab 4 heads the column
"standard deviation C_sigma" and App G sets "the latent standard deviation C_sigma = 0.2"), so
GAE's draw is RAE's |N(0, tau^2)| with tau = C_sigma: the two papers write one formula.

Units. sigma is absolute: it is added to the latent as the decoder sees it. What one unit means
then depends on the latent: RAE's tokens are LayerNorm'd (unit variance over channels), GAE's are
RMS-normalised (unit RMS per channel), so there sigma is in units of one channel's typical size.
DINO-SAE applies Eq. 10 to raw DINO tokens, whose RMS is several units (DINOv2-S: about 2), so the
same tau perturbs them relatively less. `dino_sae_smoothing(..., relative=True)` offers the lab's
earlier form, sigma * rms(z) * eps per token, which keeps the relative size fixed whatever the
encoder; it is not the paper's. stages.train_stage (HAE stage 4) uses the paper's absolute form
unless given noise_relative=True, and no notebook passes it: what a notebook runs through lab.zoo
is Eq. 10 as written (lab.zoo.hae trains all four stages).

Every draw takes a torch.Generator and draws on that generator's device, so a training step's noise
is a function of its (seed, step) (lab.trainutil.step_generators) and a resumed run is exact.
"""
import torch

from lab import check_choice

RAE_KINDS = ("abs_normal", "uniform")
SCHEDULES = ("uniform", "ramp")


def _device(generator):
    return generator.device if generator is not None else None


def perturb(z, sigma, generator=None):
    """z + sigma_b * eps for z [B, ...] and one sigma per sample, sigma [B]; eps ~ N(0, I) from `generator`."""
    eps = torch.randn(z.shape, generator=generator, device=_device(generator)).to(z.device, z.dtype)
    return z + sigma.to(z.device, z.dtype).view(-1, *[1] * (z.dim() - 1)) * eps


def token_rms(z):
    """Per-token RMS over channels, [B, N, 1] (the scale of DINO-SAE's relative form)."""
    return z.float().pow(2).mean(dim=-1, keepdim=True).sqrt()


# ----------------------------------------------------------------------------- RAE

def rae_sigma(n, tau, kind="abs_normal", generator=None):
    """[n] noise scales: |N(0, tau^2)| ('abs_normal', the RAE paper) or U(0, tau) ('uniform', the RAE code)."""
    check_choice("noise", kind, RAE_KINDS)
    if kind == "abs_normal":
        return tau * torch.randn(n, generator=generator, device=_device(generator)).abs()
    return tau * torch.rand(n, generator=generator, device=_device(generator))


def rae_noise(z, tau, kind="abs_normal", generator=None):
    """RAE's noise-augmented decoding input z + sigma * eps, sigma ~ rae_sigma; z itself when tau == 0."""
    if tau == 0:
        return z
    return perturb(z, rae_sigma(z.shape[0], tau, kind, generator), generator)


# ----------------------------------------------------------------------------- GAE

def gae_dynamic_noise(mu, c_sigma, generator=None):
    """GAE's dynamic noise z = mu + |sigma| * eps, sigma ~ N(0, C_sigma) with C_sigma a standard deviation.

    E|sigma| = C_sigma sqrt(2 / pi) and E[(z - mu)^2] = C_sigma^2. mu itself when c_sigma == 0.
    """
    if c_sigma == 0:
        return mu
    sigma = c_sigma * torch.randn(mu.shape[0], generator=generator, device=_device(generator)).abs()
    return perturb(mu, sigma, generator)


# ----------------------------------------------------------------------------- DINO-SAE

def dino_sae_sigma(n, tau, schedule="uniform", progress=0.0, generator=None):
    """[n] noise scales: U(0, tau) per sample ('uniform', Eq. 10) or tau * progress for all ('ramp', the lab's
    variant that grows the noise over the stage; progress in [0, 1])."""
    check_choice("noise_schedule", schedule, SCHEDULES)
    if schedule == "uniform":
        return tau * torch.rand(n, generator=generator, device=_device(generator))
    return torch.full((n,), tau * float(progress))


def dino_sae_smoothing(z, sigma, generator=None, relative=False):
    """DINO-SAE Eq. 10 latent smoothing z + sigma * eps (sigma [B], from dino_sae_sigma).

    relative=True: z + sigma * rms(z) * eps per token (rms over channels, detached), the lab's earlier
    form, which is not the paper's (see the module docstring).
    """
    if not relative:
        return perturb(z, sigma, generator)
    eps = torch.randn(z.shape, generator=generator, device=_device(generator)).to(z.device, z.dtype)
    scale = sigma.to(z.device).view(-1, 1, 1) * token_rms(z).detach()
    return z + scale.to(z.dtype) * eps
