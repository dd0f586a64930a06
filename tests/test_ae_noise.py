"""The three latent-noise conventions (lab.autoencoders.noise) against the papers' formulas."""
import inspect
import math

import lab  # noqa: F401  (the torchvision fix, before timm)
import pytest
import timm
import torch
import torch.nn.functional as F

from lab import zoo
from lab.autoencoders.decoder import ConvDecoder
from lab.autoencoders.gae import GAE
from lab.autoencoders.hae import HAE
from lab.autoencoders.noise import (dino_sae_sigma, dino_sae_smoothing, gae_dynamic_noise, rae_noise, rae_sigma,
                                    token_rms)
from lab.autoencoders.stages import train_stage


def loud_hae(scale=10.0):
    """A tiny HAE whose tokens have RMS `scale` (the teacher's final LayerNorm weight), like DINO's tens."""
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=28, dynamic_img_size=True,
                            depth=1, embed_dim=32, num_heads=2, num_classes=0)
    with torch.no_grad():
        vit.norm.weight.fill_(scale)
    torch.manual_seed(1)
    return HAE(vit, image_size=32, stem_channels=(8, 8, 16), decoder=ConvDecoder(32, widths=(16, 8, 8, 8, 8)))


def test_gae_default_c_sigma_is_the_papers_standard_deviation():
    """GAE App G trains with C_sigma = 0.2, a standard deviation (Tab 4: 0.05 / 0.1 / 0.2); it was 0.8."""
    assert inspect.signature(zoo.gae).parameters["noise_std"].default == 0.2
    assert inspect.signature(GAE).parameters["noise_std"].default == 0.2


def test_stage4_smoothing_is_absolute_by_default():
    """DINO-SAE Eq. 10: z + sigma * eps with sigma ~ U(0, tau) on the latent itself. With tokens of
    RMS 10 the decoder's input must deviate by sigma, not by 10 * sigma (the old RMS-scaled form)."""
    ae = loud_hae(10.0)
    g = torch.Generator().manual_seed(0)
    data = F.interpolate(torch.rand(8, 3, 4, 4, generator=g), size=32, mode="bilinear")
    clean, seen = [], []
    encode, forward = ae.encode, ae.decoder.forward
    ae.encode = lambda x: (clean.append(encode(x).detach().clone()), clean[-1])[1]
    ae.decoder.forward = lambda z, grid=None: (seen.append(z.detach().clone()), forward(z, grid))[1]
    train_stage(ae, data, 4, steps=2, batch_size=8, lpips_net=None, gan=False, noise_tau=0.8,
                noise_schedule="ramp", progress=False)
    assert clean[0].pow(2).mean().sqrt().item() == pytest.approx(10.0, rel=0.05)
    dev = (seen[1] - clean[1]).std().item()  # ramp over 2 steps: sigma = 0 then tau
    assert dev == pytest.approx(0.8, rel=0.05), dev
    assert torch.equal(seen[0], clean[0])


# ----------------------------------------------------------------------------- the formulas

def test_rae_sigma_distributions():
    g = torch.Generator().manual_seed(0)
    tau, n = 0.8, 200_000
    a = rae_sigma(n, tau, "abs_normal", generator=g)
    u = rae_sigma(n, tau, "uniform", generator=g)
    assert abs(a.mean().item() - tau * math.sqrt(2 / math.pi)) < 5e-3  # E|N(0, tau^2)|
    assert abs(a.pow(2).mean().item() - tau ** 2) < 5e-3
    assert abs(u.mean().item() - tau / 2) < 5e-3 and 0 <= u.min() and u.max() <= tau
    with pytest.raises(ValueError, match="noise="):
        rae_sigma(3, tau, "gauss")


def test_rae_noise_is_one_sigma_per_sample():
    z = torch.zeros(4000, 8, 16)
    noisy = rae_noise(z, 0.5, "uniform", torch.Generator().manual_seed(1))
    per_sample_std = noisy.flatten(1).std(1)  # ~= that sample's sigma (128 draws each)
    assert abs(per_sample_std.mean().item() - 0.25) < 0.01
    assert per_sample_std.max() < 0.5 * 1.3 and per_sample_std.min() < 0.05
    assert torch.equal(rae_noise(z, 0.0), z)


def test_gae_dynamic_noise_c_sigma_is_a_standard_deviation():
    """sigma ~ N(0, C_sigma), C_sigma a standard deviation: E[(z - mu)^2] = C_sigma^2, E|sigma| = C_sigma sqrt(2/pi)."""
    mu, c_sigma = torch.zeros(20000, 4, 16), 0.2
    z = gae_dynamic_noise(mu, c_sigma, torch.Generator().manual_seed(2))
    assert z.pow(2).mean().item() == pytest.approx(c_sigma ** 2, rel=0.03)
    assert z.flatten(1).std(1).mean().item() == pytest.approx(c_sigma * math.sqrt(2 / math.pi), rel=0.03)
    assert torch.equal(gae_dynamic_noise(mu, 0.0), mu)
    # one formula with RAE's |N(0, tau^2)| at tau = C_sigma: the same generator state gives the same latent
    same = rae_noise(mu, c_sigma, "abs_normal", torch.Generator().manual_seed(2))
    assert torch.equal(z, same)
    # the GAE module's augmentation is this function at its noise_std
    ae = GAE(image_size=32, latent_dim=8, width=32, depth=1, heads=2, vfm=None, teacher=None, align="pre",
             decoder_kw=dict(width=32, depth=1, heads=2))
    assert torch.equal(ae.add_noise(mu[:4], torch.Generator().manual_seed(3)),
                       gae_dynamic_noise(mu[:4], 0.2, torch.Generator().manual_seed(3)))


def test_dino_sae_sigma_draws():
    g = torch.Generator().manual_seed(0)
    s = dino_sae_sigma(4000, 0.8, "uniform", generator=g)
    assert s.min() >= 0 and s.max() <= 0.8
    assert s.mean().item() == pytest.approx(0.4, abs=0.02) and s.min() < 0.01 and s.max() > 0.79
    assert torch.equal(dino_sae_sigma(3, 0.8, "ramp", progress=0.25), torch.full((3,), 0.2))
    with pytest.raises(ValueError, match="noise_schedule"):
        dino_sae_sigma(3, 0.8, "cosine")


def test_dino_sae_smoothing_absolute_and_relative():
    """Eq. 10 adds sigma * eps whatever the token size; relative=True adds sigma * rms(z) * eps."""
    g = torch.Generator().manual_seed(0)
    z = torch.randn(2, 64, 384) * torch.tensor([20.0, 0.1]).view(2, 1, 1)  # DINO-like norms, and tiny ones
    sigma = torch.tensor([0.5, 0.5])
    absolute = dino_sae_smoothing(z, sigma, g) - z
    assert absolute[0].std().item() == pytest.approx(0.5, rel=0.03)
    assert absolute[1].std().item() == pytest.approx(0.5, rel=0.03)
    rel = (dino_sae_smoothing(z, sigma, g, relative=True) - z) / token_rms(z)
    assert rel[0].std().item() == pytest.approx(0.5, rel=0.03)
    assert rel[1].std().item() == pytest.approx(0.5, rel=0.03)
    assert torch.equal(dino_sae_smoothing(z, torch.zeros(2), g), z)


def test_noise_follows_the_generator_alone():
    """Two generators in one state give one latent: a step's noise is a function of its seed."""
    z = torch.randn(3, 4, 8)
    for fn in (lambda g: rae_noise(z, 0.8, "abs_normal", g), lambda g: gae_dynamic_noise(z, 0.2, g),
               lambda g: dino_sae_smoothing(z, dino_sae_sigma(3, 0.8, generator=g), g)):
        a = fn(torch.Generator().manual_seed(5))
        torch.manual_seed(99)
        assert torch.equal(a, fn(torch.Generator().manual_seed(5)))
