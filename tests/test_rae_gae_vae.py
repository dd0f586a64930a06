"""RAE, GAE, KL-VAE / spherical VAE and their trainers, at tiny sizes on a random tiny ViT (CPU)."""
import math

import lab  # noqa: F401  (before timm)
import pytest
import timm
import torch

from lab.autoencoders.disc import DinoDisc
from lab.autoencoders.gae import GAE, SVDTeacher
from lab.autoencoders.rae import RAE
from lab.autoencoders.recon import noise_robustness, recon_metrics
from lab.autoencoders.trainers import finetune_spherical, train_gae, train_rae, train_vae
from lab.autoencoders.vae import KLVAE, SphericalVAE, kl_gaussian, wrap_vae
from lab.autoencoders.vit_decoder import patchify, unpatchify, vit_decoder
from lab.encoders import vit_tokens

TINY_DEC = dict(width=32, depth=1, heads=2)



def tiny_vit(seed=0):
    torch.manual_seed(seed)
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, num_classes=0, img_size=28,
                             dynamic_img_size=True, embed_dim=32, depth=2, num_heads=2)


def tiny_images(n=16, size=32, seed=0):
    g = torch.Generator().manual_seed(seed)
    # smooth random images: low-res noise upsampled, so a tiny decoder can learn something quickly
    return torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bilinear")


def tiny_rae(**kw):
    return RAE(tiny_vit(), image_size=32, **{**TINY_DEC, **kw})


def tiny_vae(latent_dim=4, seed=0):
    torch.manual_seed(seed)
    return KLVAE(image_size=32, latent_dim=latent_dim, widths=(8, 8, 16, 16, 32), decoder_widths=(32, 16, 16, 8, 8))


def tiny_gae(**kw):
    args = dict(image_size=32, patch_size=16, latent_dim=8, width=32, depth=1, heads=2, vfm=tiny_vit(), decoder_kw=TINY_DEC)
    return GAE(**{**args, **kw})


# ----------------------------------------------------------------------------- shapes and interface

def test_patchify_roundtrip_and_decoder_shape():
    x = torch.rand(2, 3, 24, 40)
    assert torch.equal(unpatchify(patchify(x, 8), (3, 5), 8), x)
    dec = vit_decoder("tiny", in_dim=12, patch_size=8, **TINY_DEC)
    assert dec(torch.randn(2, 15, 12), grid=(3, 5)).shape == (2, 3, 24, 40)


def test_shapes_of_all_autoencoders():
    x = tiny_images(2)
    for ae, c in ((tiny_rae(), 32), (tiny_gae(), 8), (tiny_vae(), 4)):
        z = ae.encode(x)
        assert z.shape == (2, 4, c) and ae.grid == (2, 2)
        y = ae.decode(z)
        assert y.shape == x.shape and y.min() >= 0 and y.max() <= 1


def test_rae_with_the_conv_decoder():
    ae = RAE(tiny_vit(), image_size=32, decoder="conv", widths=(32, 16, 8, 8, 8))
    assert ae.decode(ae.encode(tiny_images(2))).shape == (2, 3, 32, 32)
    with pytest.raises(ValueError, match="upsamples"):
        RAE(tiny_vit(), image_size=32, decoder="conv", widths=(32, 16, 8, 8))


def test_bad_parameters_name_allowed_values():
    with pytest.raises(ValueError, match="noise="):
        tiny_rae(noise="gauss")
    with pytest.raises(ValueError, match="align="):
        tiny_gae(align="middle")
    with pytest.raises(ValueError, match="latent_norm="):
        tiny_rae(latent_norm="token")


# ----------------------------------------------------------------------------- RAE latents and noise

def test_affine_free_tokens_are_standardised_per_token():
    vit = tiny_vit().eval()
    z = vit_tokens(vit, tiny_images(3), (2, 2), norm="affine_free").double()
    assert torch.allclose(z.mean(-1), torch.zeros(3, 4, dtype=z.dtype), atol=1e-5)
    assert torch.allclose(z.var(-1, unbiased=False), torch.ones(3, 4, dtype=z.dtype), atol=1e-3)


def test_channel_latent_norm_standardises_the_data():
    ae, x = tiny_rae(latent_norm="channel"), tiny_images(16)
    ae.fit_latent_stats(x)
    z = ae.encode(x).double().flatten(0, 1)
    assert torch.allclose(z.mean(0), torch.zeros(32, dtype=z.dtype), atol=1e-5)
    assert torch.allclose(z.std(0, unbiased=False), torch.ones(32, dtype=z.dtype), atol=1e-4)


# ----------------------------------------------------------------------------- GAE geometry and teachers

def test_gae_tokens_have_norm_sqrt_d_exactly():
    ae = tiny_gae(latent_dim=16)
    z = ae.encode(tiny_images(3)).double()
    assert torch.allclose(z.norm(dim=-1), torch.full(z.shape[:2], 4.0, dtype=z.dtype), rtol=1e-6)


def test_svd_teacher_reconstructs_a_rank_d_input_exactly():
    g = torch.Generator().manual_seed(0)
    d, c = 5, 24
    f = (torch.randn(300, d, generator=g, dtype=torch.float64) @ torch.randn(d, c, generator=g, dtype=torch.float64)
         + torch.randn(c, generator=g, dtype=torch.float64))  # rank d plus an offset
    t = SVDTeacher(c, d).double().fit(f)
    assert torch.allclose(t.up(t(f)), f, atol=1e-9)
    # full-rank input: the residual is the discarded singular values (Eckart-Young)
    f2 = torch.randn(300, c, generator=g, dtype=torch.float64)
    t2 = SVDTeacher(c, d).double().fit(f2)
    s = torch.linalg.svdvals(f2 - f2.mean(0))
    assert torch.allclose((t2.up(t2(f2)) - f2).pow(2).sum(), s[d:].pow(2).sum(), rtol=1e-9)


def test_gae_latent_alignment_is_one_minus_cos():  # as pre / post (equal weights: tests/test_gae_arms.py)
    ae = tiny_gae()
    mu, target = torch.nn.functional.normalize(torch.randn(2, 4, 8), dim=-1), torch.randn(2, 4, 8)
    mu, target = mu * math.sqrt(8), torch.nn.functional.normalize(target, dim=-1) * math.sqrt(8)
    cos = torch.nn.functional.cosine_similarity(mu, target, dim=-1)
    assert torch.allclose(ae.alignment_loss(mu, None, target), (1 - cos).mean(), atol=1e-6)


# ----------------------------------------------------------------------------- VAE, KL, sphere

def test_kl_closed_form():
    mean = torch.tensor([0.0, 1.0, -0.5, 2.0], dtype=torch.float64)
    logvar = torch.tensor([0.0, 0.0, math.log(0.25), math.log(3.0)], dtype=torch.float64)
    ref = torch.distributions.kl_divergence(torch.distributions.Normal(mean, (0.5 * logvar).exp()),
                                            torch.distributions.Normal(0.0, 1.0))
    assert torch.allclose(kl_gaussian(mean, logvar), ref, atol=1e-12)
    assert kl_gaussian(mean, logvar)[0] == 0 and abs(kl_gaussian(mean, logvar)[1] - 0.5) < 1e-12
    big = kl_gaussian(torch.full((3,), 1e3), torch.full((3,), -30.0))
    assert torch.isfinite(big).all()


def test_spherical_projection_radius_and_direction():
    vae = tiny_vae(9)
    svae = SphericalVAE(vae)
    x = tiny_images(2)
    z, m = svae.encode(x), vae.encode(x).detach()
    assert torch.allclose(z.norm(dim=-1), torch.full(z.shape[:2], 3.0), rtol=1e-5)
    assert torch.allclose(torch.nn.functional.cosine_similarity(z, m, dim=-1), torch.ones(z.shape[:2]), atol=1e-5)
    trainable = {n for n, p in svae.named_parameters() if p.requires_grad}
    assert trainable and all(n.startswith("vae.decoder.") for n in trainable)


def test_wrap_vae_hook():
    inner = tiny_vae()
    w = wrap_vae(inner, lambda m, x: m.encoder(x)[:, :4], lambda m, z: m.decoder(z.flatten(2).transpose(1, 2), (2, 2)))
    x = tiny_images(2)
    z = w.encode(x)
    assert z.shape == (2, 4, 4) and w.grid == (2, 2)
    assert torch.allclose(w.decode(z), inner.decode(inner.encode(x)), atol=1e-6)
    assert set(w.decoder_modules()) == {"decoder"}
    with pytest.raises(ValueError, match="decoder submodule"):
        wrap_vae(inner, None, None, decoder="post_quant_conv")


# ----------------------------------------------------------------------------- training

def _drop(hist, n):
    return sum(hist["loss"][:n]) / n, sum(hist["loss"][-n:]) / n


def test_training_lowers_the_loss():
    x = tiny_images(16)
    first, last = _drop(train_rae(tiny_rae(), x, steps=25, batch_size=8, lr=3e-3, noise_tau=0.1), 5)
    assert last < 0.7 * first
    first, last = _drop(train_gae(tiny_gae(), x, steps=25, batch_size=8, lr=3e-3), 5)
    assert last < 0.7 * first
    vae = tiny_vae()  # seeded: the KL-VAE plateaus near 0.18 within 10 steps, a fixed start keeps the margin fixed
    first, last = _drop(train_vae(vae, x, steps=25, batch_size=8, lr=3e-3), 5)
    assert last < 0.8 * first
    first, last = _drop(finetune_spherical(SphericalVAE(vae), x, steps=15, batch_size=8, lr=3e-3), 4)
    assert last < first


def test_gan_fine_tune_runs_both_players():
    svae = SphericalVAE(tiny_vae())
    hist = finetune_spherical(svae, tiny_images(8), steps=3, batch_size=4, lr=1e-3, gan_weight=0.5,
                              disc=DinoDisc(tiny_vit(1), hidden=8), gan_start=1, disc_start=1)
    assert len(hist["d"]) == len(hist["g"]) == len(hist["loss"]) == 3 and math.isnan(hist["d"][0])
    assert all(math.isfinite(v) for k in ("g", "d", "gan_w") for v in hist[k][1:])


def test_learned_teacher_trains_and_freezes():
    ae = tiny_gae(teacher="learned")
    hist = train_gae(ae, tiny_images(16), steps=2, batch_size=4, teacher_steps=40, teacher_lr=3e-3)
    assert hist["teacher"][-1] < hist["teacher"][0]
    assert ae.teacher_ready() and not any(p.requires_grad for p in ae.teacher.parameters())


def _spherical():
    return SphericalVAE(tiny_vae())


def _finetune_gan(svae, x, **kw):
    torch.manual_seed(7)  # the same discriminator initialisation in every process
    return finetune_spherical(svae, x, gan_weight=0.5, disc=DinoDisc(tiny_vit(1), hidden=8), gan_start=2, **kw)


@pytest.mark.parametrize("make, train", [(tiny_rae, train_rae), (tiny_gae, train_gae), (tiny_vae, train_vae),
                                         (_spherical, finetune_spherical), (_spherical, _finetune_gan)],
                         ids=["rae", "gae", "vae", "spherical", "spherical_gan"])
def test_resume_reproduces_the_uninterrupted_run(tmp_path, make, train):
    """6 steps in one go equal 3 steps, a 'kill', and a resume to 6 from the step-3 checkpoint."""
    x = tiny_images(16)
    straight = make()
    h1 = train(straight, x, steps=6, batch_size=4, lr=1e-3, out_dir=str(tmp_path / "a"))
    part = make()
    out = str(tmp_path / "b")
    train(part, x, steps=3, batch_size=4, lr=1e-3, out_dir=out, ckpt_every=3)
    resumed = make()  # a fresh process: new model, state from the checkpoint only
    torch.manual_seed(123)  # a disturbed global RNG must not matter
    h2 = train(resumed, x, steps=6, batch_size=4, lr=1e-3, out_dir=out, ckpt_every=3)
    assert h2["step"] == list(range(1, 7))
    for k in h1:
        assert h1[k] == pytest.approx(h2[k], rel=1e-5, nan_ok=True), k
    for (n, a), b in zip(straight.state_dict().items(), resumed.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_noise_robustness_curve_and_recon_metrics():
    ae, x = tiny_rae(), tiny_images(8)
    curve = noise_robustness(ae, x, sigmas=(0.0, 1.0, 3.0), batch_size=3)
    rec = ae.decode(ae.encode(x))
    direct = (rec - x).pow(2).mean().item()
    assert [c["sigma"] for c in curve] == [0.0, 1.0, 3.0]
    assert curve[0]["mse"] == pytest.approx(direct, rel=1e-5)
    # PSNR per image, then the mean: 10 log10(1 / mse_i)
    per_image = 10 * torch.log10(1 / (rec - x).pow(2).flatten(1).mean(1).double())
    assert curve[0]["psnr"] == pytest.approx(per_image.mean().item(), rel=1e-5)
    m = recon_metrics(ae, x, batch_size=3, lpips=False)
    assert m["psnr"] == pytest.approx(curve[0]["psnr"], rel=1e-6) and 0 < m["ssim"] <= 1


def _counting(vit):
    """Wrap a ViT's forward_features so the test can count the images it has seen."""
    seen, inner = [0], vit.forward_features

    def forward_features(x, *a, **kw):
        seen[0] += len(x)
        return inner(x, *a, **kw)
    vit.forward_features = forward_features
    return seen


@pytest.mark.parametrize("align", ["latent", "post"])
def test_gae_reads_one_pass_of_the_vfm_for_teacher_and_targets(align):
    """Issue 11 budget: the teacher fit and the alignment targets read one pass of the frozen VFM
    (it was two), and VFM tokens handed in (zoo shares them between GAEs) train the same weights
    without a pass at all."""
    x = tiny_images(16)
    torch.manual_seed(0)
    own = tiny_gae(align=align)
    seen = _counting(own.vfm)
    h_own = train_gae(own, x, steps=3, batch_size=4, lr=1e-3)
    assert seen[0] == len(x)                       # one pass over the 16 images
    torch.manual_seed(0)
    shared = tiny_gae(align=align)
    feats = torch.cat([shared.vfm_features(x[i:i + 5]) for i in range(0, len(x), 5)])
    seen = _counting(shared.vfm)
    h_shared = train_gae(shared, x, steps=3, batch_size=4, lr=1e-3, vfm_feats=feats)
    assert seen[0] == 0
    assert h_own["loss"] == pytest.approx(h_shared["loss"], rel=1e-6)
    for (n, a), b in zip(own.state_dict().items(), shared.state_dict().values()):
        assert torch.allclose(a, b, atol=1e-6), n


def test_zoo_encodes_a_training_set_once_for_every_gae_and_rae(tmp_path, monkeypatch):
    """The GAEs of one data set (every alignment, every seed) share one pass of the frozen DINO,
    saved under runs/_zoo/vfm-*; an RAE's standardised tokens are another entry, shared by its
    noise arms. A second process finds the file and computes nothing."""
    from lab import zoo
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    passes = []
    real = zoo.precompute
    monkeypatch.setattr(zoo, "precompute", lambda fn, x, **kw: passes.append(len(x)) or real(fn, x, **kw))
    small = dict(data="digits", n=8, size=32, steps=1, batch_size=4)
    gaes = [zoo.gae(align=a, seed=s, **small) for a, s in (("latent", 0), ("post", 0), ("latent", 1))]
    assert passes == [8] and len(list(tmp_path.glob("_zoo/vfm-*/vfm.npy"))) == 1
    zoo.rae(noise_tau=0.0, **small)
    zoo.rae(noise_tau=0.8, **small)
    assert passes == [8, 8] and len(list(tmp_path.glob("_zoo/vfm-*/vfm.npy"))) == 2
    x = zoo.images("digits", n=8, size=32)[0]
    with torch.no_grad():
        expect = gaes[0].vfm_features(x)
    key = zoo._vfm_key("dinov2_s_imgfocus", gaes[0].grid, "model", "digits", 8, 32, None)
    assert torch.allclose(zoo.vfm_tokens(gaes[1], gaes[1].vfm_features, key, x), expect, atol=1e-5) and passes == [8, 8]
