"""GAE arms as the paper (issue 23 items 1 and 7): equal alignment weights, and the KL arm of GAE Tab 7.

Tiny sizes on a random tiny ViT (CPU), as tests/test_rae_gae_vae.py.
"""
import math

import lab  # noqa: F401  (before timm)
import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from lab.autoencoders.gae import GAE
from lab.autoencoders.trainers import train_gae
from lab.autoencoders.vae import kl_gaussian
from test_rae_gae_vae import TINY_DEC, tiny_images, tiny_vit


def tiny_gae(**kw):
    args = dict(image_size=32, patch_size=16, latent_dim=8, width=32, depth=1, heads=2, vfm=tiny_vit(),
                decoder_kw=TINY_DEC)
    return GAE(**{**args, **kw})


def _on_sphere(x):
    return F.normalize(x, dim=-1) * math.sqrt(x.shape[-1])


def test_the_three_alignment_arms_weigh_identical_features_equally():
    """GAE Tab 1 compares pre / post / latent at one lambda_sp: the same features must give the same loss.

    With the heads made the identity, every arm sees the same prediction and the same target, so the
    losses must be equal (the latent arm used |mu - t|^2 / d = 2 (1 - cos): twice the others' weight).
    """
    g = torch.Generator().manual_seed(0)
    mu, target = _on_sphere(torch.randn(2, 4, 8, generator=g)), _on_sphere(torch.randn(2, 4, 8, generator=g))
    cos = F.cosine_similarity(mu, target, dim=-1)
    losses = {}
    for align in ("latent", "pre", "post"):
        ae = tiny_gae(align=align)
        if ae.align_head is not None:
            ae.align_head = nn.Identity()  # identical features: h = mu = the prediction
        losses[align] = ae.alignment_loss(mu, mu, target)
    for align, loss in losses.items():
        assert torch.allclose(loss, (1 - cos).mean(), atol=1e-6), (align, loss, (1 - cos).mean())


def test_latent_arm_equals_the_papers_mse_on_the_sphere_up_to_its_constant():
    """GAE Eq. 2 is |mu - E_sp|^2; on the radius-sqrt(d) sphere that is 2 d (1 - cos): our loss is Eq. 2 / (2 d)."""
    g = torch.Generator().manual_seed(1)
    mu, target = _on_sphere(torch.randn(3, 5, 8, generator=g)), _on_sphere(torch.randn(3, 5, 8, generator=g))
    mse = (mu - target).pow(2).sum(-1).mean()
    assert torch.allclose(tiny_gae().alignment_loss(mu, None, target), mse / (2 * 8), atol=1e-6)


# ----------------------------------------------------------------------------- the KL arm (GAE Tab 7)

def test_latent_reg_is_checked_by_name():
    with pytest.raises(ValueError, match="latent_reg.*norm.*kl"):
        tiny_gae(latent_reg="vmf")


def test_kl_arm_tokens_are_not_rms_normalised_and_norm_arm_tokens_are():
    x = tiny_images(3)
    z_norm = tiny_gae().encode(x).double()
    assert torch.allclose(z_norm.norm(dim=-1), torch.full(z_norm.shape[:2], math.sqrt(8), dtype=z_norm.dtype))
    ae = tiny_gae(latent_reg="kl")
    z = ae.encode(x)
    assert z.shape == z_norm.shape
    assert (z.norm(dim=-1) - math.sqrt(8)).abs().max() > 0.1  # free norm: the posterior mean as it is
    mean, logvar = ae.encoder.posterior(ae.encoder.features(x))
    assert torch.equal(z, mean) and logvar.shape == mean.shape


def test_kl_arm_regulariser_is_the_closed_form_kl_and_matches_monte_carlo():
    """The KL arm's regulariser = mean over latent entries of KL(N(m, s^2) || N(0, 1)), checked against
    a float64 Monte-Carlo estimate E_q[log q - log p] and against the closed form."""
    ae = tiny_gae(latent_reg="kl").double()
    x = tiny_images(2).double()
    h = ae.encoder.features(x)
    mean, logvar = ae.encoder.posterior(h)
    z, reg = ae.sample_latent(h, ae.encoder.latent(h), torch.Generator().manual_seed(0))
    assert torch.allclose(reg, kl_gaussian(mean, logvar).mean(), rtol=1e-12)
    # Monte Carlo in float64: 20000 draws per entry
    g = torch.Generator().manual_seed(3)
    std = (0.5 * logvar).exp()
    s = mean + std * torch.randn((20000,) + mean.shape, generator=g, dtype=torch.float64)
    log_q = torch.distributions.Normal(mean, std).log_prob(s)
    log_p = torch.distributions.Normal(0.0, 1.0).log_prob(s)
    mc = (log_q - log_p).mean()
    assert abs(mc.item() - reg.item()) < 0.02 * max(1.0, reg.item())
    # the decoder's input is a posterior draw around the mean (not the mean itself, not on the sphere)
    assert z.shape == mean.shape and not torch.equal(z, mean)


def test_norm_arm_regulariser_is_none_and_its_noise_is_the_dynamic_noise():
    ae = tiny_gae()
    h, mu = ae.encoder(tiny_images(2))
    z, reg = ae.sample_latent(h, mu, torch.Generator().manual_seed(0))
    assert reg is None and torch.equal(z, ae.add_noise(mu, torch.Generator().manual_seed(0)))


def test_kl_arm_trains_reconstruction_and_logs_its_kl():
    x = tiny_images(16)
    hist = train_gae(tiny_gae(latent_reg="kl"), x, steps=25, batch_size=8, lr=3e-3, kl_weight=0.1)
    rec = hist["l1"]  # the reconstruction part (l1_weight 1, no LPIPS)
    first, last = sum(rec[:5]) / 5, sum(rec[-5:]) / 5
    assert last < 0.9 * first  # measured 0.177 -> 0.149: the posterior draw (std ~1 at init) slows it vs 'norm'
    assert "kl" in hist and len(hist["kl"]) == 25 and all(k >= 0 for k in hist["kl"])


def test_kl_weight_reaches_the_loss():
    """loss = rec + align_weight * align + kl_weight * kl, step by step."""
    x = tiny_images(8)
    hist = train_gae(tiny_gae(latent_reg="kl"), x, steps=3, batch_size=8, lr=1e-3, kl_weight=0.5)
    for loss, rec, kl, al in zip(hist["loss"], hist["l1"], hist["kl"], hist["align"]):
        assert abs(loss - (rec + al + 0.5 * kl)) < 1e-4
