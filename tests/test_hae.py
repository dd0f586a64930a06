"""HAE / DINO-SAE: stem, TRMS2d, decoder, losses, discriminator, the four stages (tiny, CPU)."""
import math

import pytest
import torch
import torch.nn.functional as F

import lab  # noqa: F401  (before timm)
import timm
from lab import encoders
from lab.autoencoders.decoder import ConvDecoder, UpBlock, conv_decoder
from lab.autoencoders.disc import DinoDisc
from lab.autoencoders.hae import HAE
from lab.autoencoders.losses import (adaptive_weight, alignment_loss, hinge_d_loss, hinge_g_loss,
                                     recon_loss)
from lab.autoencoders.noise import token_rms
from lab.autoencoders.recon import noise_robustness
from lab.autoencoders.stages import train_stage
from lab.autoencoders.stem import TRMS2d, ConvStem
from lab.encoders import tokens_to_grid
from lab.trainutil import step_generators



def tiny_vit(depth=2, dim=64):
    torch.manual_seed(0)
    return timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=28, dynamic_img_size=True,
                             depth=depth, embed_dim=dim, num_heads=2, num_classes=0)


def tiny_hae(stem="conv", **kw):
    vit = tiny_vit()
    torch.manual_seed(1)
    dec = ConvDecoder(64, widths=(32, 16, 16, 8, 8))
    return HAE(vit, stem=stem, image_size=32, stem_channels=(8, 16, 32), decoder=dec, **kw)


def smooth_images(n=8, size=32, seed=0):
    """Low-frequency colour images (learnable in a few steps, unlike white noise)."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(n, 3, 4, 4, generator=g)
    return F.interpolate(coarse, size=(size, size), mode="bilinear", align_corners=False)


# ---------------------------------------------------------------- stem and TRMS2d

@pytest.mark.parametrize("kernel", [3, 4])
def test_stem_shapes_and_grid(kernel):
    stem = ConvStem(width=24, channels=(4, 8, 16), kernel=kernel)
    x = torch.rand(2, 3, 64, 48)
    assert stem.features(x).shape == (2, 24, 4, 3)          # 16x down
    assert stem(x).shape == (2, 12, 24)                     # row-major tokens
    assert torch.equal(stem(x), stem.features(x).flatten(2).transpose(1, 2))
    assert stem.grid(64, 48) == (4, 3)
    # three normalised stages, last one bare conv
    assert [type(m).__name__ for m in stem.stages] == ["Sequential"] * 3 + ["Conv2d"]
    assert isinstance(stem.stages[0][1], TRMS2d) and stem.stages[0][1].spatial


def test_stem_rejects_bad_arguments():
    with pytest.raises(ValueError, match="kernel"):
        ConvStem(kernel=5)
    with pytest.raises(ValueError, match="divisible"):
        ConvStem(width=8, channels=(4, 4, 4)).features(torch.rand(1, 3, 40, 40))


def test_trms2d_matches_formula_and_normalises():
    torch.manual_seed(0)
    x = torch.randn(3, 5, 6, 7, dtype=torch.float64) * 4 + 1
    norm = TRMS2d(5, eps=0.0).double()
    with torch.no_grad():
        norm.weight.copy_(torch.arange(1.0, 6.0))
    ref = x / x.pow(2).mean(dim=(1, 2, 3), keepdim=True).sqrt() * torch.arange(1.0, 6.0).view(1, 5, 1, 1)
    assert torch.allclose(norm(x), ref.double())
    # unit weight: mean square over (C, H, W) is 1 and the map is scale invariant
    unit = TRMS2d(5, eps=0.0).double()
    y = unit(x)
    assert torch.allclose(y.pow(2).mean(dim=(1, 2, 3)), torch.ones(3, dtype=torch.float64))
    assert torch.allclose(unit(7.5 * x), y)
    # spatial=False: one RMS per pixel over channels (DC-AE's RMSNorm2d)
    pix = TRMS2d(5, eps=0.0, spatial=False).double()
    assert torch.allclose(pix(x).pow(2).mean(dim=1), torch.ones(3, 6, 7, dtype=torch.float64))


# ---------------------------------------------------------------- decoder

def test_decoder_shapes_range_and_grid():
    dec = ConvDecoder(in_dim=32, widths=(32, 16, 8))  # 4x up
    z = torch.randn(2, 16, 32)
    assert dec(z).shape == (2, 3, 16, 16)
    assert dec(torch.randn(2, 16, 32), grid=(2, 8)).shape == (2, 3, 8, 32)
    out = dec.decode(10 * z)
    assert out.min() >= 0 and out.max() <= 1
    assert dec.last_layer is dec.proj_out.weight
    assert conv_decoder("tiny", in_dim=384)(torch.randn(1, 16, 384)).shape == (1, 3, 64, 64)
    with pytest.raises(ValueError, match="square"):
        tokens_to_grid(torch.randn(1, 12, 4))
    with pytest.raises(ValueError, match="size"):
        conv_decoder("huge")


def test_upblock_shortcut_is_nearest_upsampling():
    """With the learned branch at zero, the channel-duplicating shortcut of a c -> c up block is
    exactly nearest-neighbour 2x upsampling; for c -> c/2 each output channel tiles two inputs."""
    up = UpBlock(6, 6)
    torch.nn.init.zeros_(up.conv.weight)
    torch.nn.init.zeros_(up.conv.bias)
    x = torch.randn(2, 6, 3, 5)
    assert torch.equal(up(x), F.interpolate(x, scale_factor=2, mode="nearest"))
    up2 = UpBlock(8, 4)  # repeats = 2: output channel j holds input channels 2j, 2j+1 in its 2x2 cells
    torch.nn.init.zeros_(up2.conv.weight)
    torch.nn.init.zeros_(up2.conv.bias)
    x = torch.randn(1, 8, 2, 2)
    y = up2(x)
    assert torch.equal(y[0, 1, 0::2, 0::2], x[0, 2]) and torch.equal(y[0, 1, 1::2, 1::2], x[0, 3])
    with pytest.raises(ValueError, match="divisible"):
        UpBlock(12, 5)


# ---------------------------------------------------------------- losses

def test_alignment_cosine_vs_mse_known_vectors():
    zs = torch.tensor([[[1.0, 0.0], [1.0, 0.0], [1.0, 0.0]]])
    zt = torch.tensor([[[2.0, 0.0], [0.0, 3.0], [-1.0, 0.0]]])
    # cos = 1, 0, -1 -> 1 - cos = 0, 1, 2 -> mean 1
    assert alignment_loss(zs, zt, "cosine").item() == pytest.approx(1.0)
    # squared errors: (1 + 0) + (1 + 9) + (4 + 0) over 6 entries
    assert alignment_loss(zs, zt, "mse").item() == pytest.approx(15 / 6)
    # cosine ignores magnitude, MSE does not
    assert alignment_loss(5 * zs[:, :1], zt[:, :1], "cosine").item() == pytest.approx(0.0, abs=1e-7)
    assert alignment_loss(5 * zs[:, :1], zt[:, :1], "mse").item() == pytest.approx(9 / 2)
    with pytest.raises(ValueError, match="allowed"):
        alignment_loss(zs, zt, "l1")


def test_recon_loss_parts_and_lpips_range():
    x, x_hat = torch.zeros(2, 3, 4, 4), torch.full((2, 3, 4, 4), 0.25)
    total, parts = recon_loss(x_hat, x)
    assert total.item() == pytest.approx(0.25) and set(parts) == {"l1"}
    # a stand-in "LPIPS" = mean |a - b| shows the [0, 1] -> [-1, 1] conversion (factor 2)
    fake = lambda a, b: (a - b).abs().mean(dim=(1, 2, 3))  # noqa: E731
    total, parts = recon_loss(x_hat, x, fake, w_l1=2.0, w_lpips=3.0)
    assert parts["lpips"].item() == pytest.approx(0.5)
    assert total.item() == pytest.approx(2 * 0.25 + 3 * 0.5)


def test_hinge_losses_closed_form():
    real, fake = torch.tensor([2.0, 0.5]), torch.tensor([-2.0, 0.5])
    # 0.5 * (mean(relu(1 - real)) + mean(relu(1 + fake))) = 0.5 * (0.25 + 0.75)
    assert hinge_d_loss(real, fake).item() == pytest.approx(0.5)
    assert hinge_g_loss(fake).item() == pytest.approx(0.75)


def test_adaptive_weight_closed_case():
    """rec = a * sum(W), g = b * sum(W): gradients a * 1 and b * 1, so the weight is
    |a| sqrt(n) / (|b| sqrt(n) + eps); clamped at max."""
    W = torch.randn(4, 5, requires_grad=True)
    n = W.numel()
    a, b = 3.0, -0.5
    w = adaptive_weight(a * W.sum(), b * W.sum(), W)
    assert w.item() == pytest.approx(a * math.sqrt(n) / (abs(b) * math.sqrt(n) + 1e-4), rel=1e-6)
    assert not w.requires_grad
    assert adaptive_weight(a * W.sum(), 1e-9 * W.sum(), W, max=10.0).item() == pytest.approx(10.0)
    # a quadratic: grad of 0.5 * ||W||^2 is W itself
    w2 = adaptive_weight(0.5 * W.pow(2).sum(), 2 * W.sum(), W)
    assert w2.item() == pytest.approx(W.norm().item() / (2 * math.sqrt(n) + 1e-4), rel=1e-5)


# ---------------------------------------------------------------- HAE and discriminator

def test_hae_grids_teacher_and_patch_baseline():
    ae = tiny_hae()
    x = smooth_images(2, 32)
    z, zt = ae.encode(x), ae.teacher_features(x)
    assert ae.grid == (2, 2) and z.shape == zt.shape == (2, 4, 64)
    # the teacher sees the image resized to grid * patch = 28 px
    x28 = F.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False, antialias=True)
    assert torch.allclose(zt, encoders.patch_tokens(ae.teacher, x28), atol=1e-6)
    assert ae.decode(z).shape == x.shape and ae(x).shape == x.shape
    # stage-1 trainables: the stem only on the encoder side; blocks stay the teacher's
    stem_ids = {id(p) for p in ae.stem.parameters()}
    assert {id(p) for p in ae.encoder_parameters()} == stem_ids
    assert all(not p.requires_grad for p in ae.teacher.parameters())
    # gradients reach the stem through the frozen blocks
    ae.alignment_loss(ae.encode(x), zt).backward()
    assert ae.stem.stages[0][0].weight.grad.abs().sum() > 0
    # baseline: the student is the frozen teacher
    base = tiny_hae(stem="patch")
    assert base.stem is None and base.encoder_parameters() == []
    assert torch.equal(base.encode(x), base.teacher_features(x))
    # train_blocks: a separate trainable copy, the teacher untouched
    tb = tiny_hae(train_blocks=True)
    assert tb.blocks is not tb.teacher.blocks and all(p.requires_grad for p in tb.blocks.parameters())
    assert len(tb.encoder_parameters()) > len(list(tb.stem.parameters()))
    for bad, match in [(dict(stem="pixel"), "stem"), (dict(align="l2"), "align")]:
        with pytest.raises(ValueError, match=match):
            tiny_hae(**bad)


def test_dino_disc_heads_only_and_gradient_to_images():
    vit = tiny_vit(depth=4)
    d = DinoDisc(vit, layers=[1, 3], hidden=16)
    x = smooth_images(2, 32).requires_grad_(True)
    logits = d(x)  # 32 px -> 42 px (3x3 tokens of 14) at 2 depths
    assert logits.shape == (2, 2 * 9)
    logits.sum().backward()
    assert x.grad.abs().sum() > 0
    assert all(k.startswith("heads.") for k in d.state_dict())
    assert DinoDisc(tiny_vit(depth=12, dim=32)).layers == [2, 5, 8, 11]
    with pytest.raises(ValueError, match="outside"):
        DinoDisc(vit, layers=[4])


# ---------------------------------------------------------------- stages

def test_stage1_loss_goes_down_and_teacher_stays_frozen():
    ae = tiny_hae()
    teacher_before = {k: v.clone() for k, v in ae.teacher.state_dict().items()}
    stem_before = ae.stem.stages[0][0].weight.detach().clone()
    data = smooth_images(8, 32)
    h = train_stage(ae, data, 1, steps=20, batch_size=4, lr=2e-3, lpips_net=None, progress=False)
    assert len(h["loss"]) == 20 and h["step"] == list(range(1, 21))
    first, last = sum(h["loss"][:4]) / 4, sum(h["loss"][-4:]) / 4
    assert last < 0.8 * first, (first, last)
    assert sum(h["align"][-4:]) < sum(h["align"][:4])
    assert all(torch.equal(v, ae.teacher.state_dict()[k]) for k, v in teacher_before.items())
    assert not torch.equal(stem_before, ae.stem.stages[0][0].weight)


def test_stage_resume_reproduces_uninterrupted_run(tmp_path):
    """Stage 2 (alignment + GAN + discriminator + adaptive weight): 6 steps in one go equals
    3 steps, a 'kill', and a resume to 6 from the step-3 checkpoint; weights and history exactly."""
    data = smooth_images(8, 32)
    kw = dict(steps=6, batch_size=3, lr=1e-3, lpips_net=None, disc_warmup=2, ckpt_every=3, progress=False)

    full = tiny_hae()
    d_full = DinoDisc(full.teacher, hidden=8)
    h_full = train_stage(full, data, 2, disc=d_full, out_dir=str(tmp_path / "a"), **kw)

    part = tiny_hae()
    train_stage(part, data, 2, disc=DinoDisc(part.teacher, hidden=8), out_dir=str(tmp_path / "b"),
                **{**kw, "steps": 3})
    fresh = tiny_hae()  # a new process: fresh objects, everything comes from the checkpoint
    torch.manual_seed(123)  # a disturbed global RNG must not matter
    d_fresh = DinoDisc(fresh.teacher, hidden=8)
    h_res = train_stage(fresh, data, 2, disc=d_fresh, out_dir=str(tmp_path / "b"), **kw)

    assert h_res["step"] == list(range(1, 7))
    for k in h_full:
        assert torch.allclose(torch.tensor(h_full[k]), torch.tensor(h_res[k]), equal_nan=True, rtol=0, atol=0), k
    for (k, v), v2 in zip(full.state_dict().items(), fresh.state_dict().values()):
        assert torch.equal(v, v2), k
    for (k, v), v2 in zip(d_full.state_dict().items(), d_fresh.state_dict().values()):
        assert torch.equal(v, v2), k
    # warm-up: the adversarial term is absent (NaN) for 2 steps, then a finite adaptive weight
    assert all(math.isnan(w) for w in h_full["gan_w"][:2])
    assert all(math.isfinite(w) and w >= 0 for w in h_full["gan_w"][2:])
    assert all(math.isfinite(d) for d in h_full["d"])  # the discriminator trains through the warm-up


def test_later_stage_starts_from_earlier_stage_weights(tmp_path):
    data = smooth_images(8, 32)
    ae = tiny_hae()
    train_stage(ae, data, 1, steps=2, batch_size=2, lpips_net=None, out_dir=str(tmp_path), progress=False)
    other = tiny_hae()
    stem_before = other.stem.stages[0][0].weight.detach().clone()
    h = train_stage(other, data, 3, steps=1, batch_size=2, lpips_net=None, gan=False,
                    out_dir=str(tmp_path), progress=False)
    assert torch.equal(other.stem.stages[0][0].weight, ae.stem.stages[0][0].weight)  # loaded, then frozen
    assert not torch.equal(other.stem.stages[0][0].weight, stem_before)
    assert "align" not in h


def test_stage4_noise_reaches_the_decoder():
    """Ramp schedule over 3 steps: sigma = 0, 0.4, 0.8; the decoder's input deviates from the
    clean encoding by sigma * eps (absolute, DINO-SAE Eq. 10; noise_relative=True: sigma * rms(z) * eps),
    and the encoder does not train."""
    data = smooth_images(8, 32)
    for relative in (False, True):
        ae = tiny_hae()
        with torch.no_grad():
            ae.teacher.norm.weight.mul_(3.0)  # token RMS about 3: the two forms differ threefold
        seen = []
        forward = ae.decoder.forward
        ae.decoder.forward = lambda z, grid=None: (seen.append(z.detach().clone()), forward(z, grid))[1]
        stem_before = ae.stem.stages[0][0].weight.detach().clone()
        h = train_stage(ae, data, 4, steps=3, batch_size=8, lpips_net=None, gan=False, noise_tau=0.8,
                        noise_schedule="ramp", noise_relative=relative, seed=5, progress=False)
        assert h["sigma"] == pytest.approx([0.0, 0.4, 0.8])
        for step, sigma in enumerate([0.0, 0.4, 0.8]):
            idx = torch.randint(len(data), (8,), generator=step_generators(5, step, "cpu", stream=4)[0])
            with torch.no_grad():
                clean = ae.encode(data[idx])
            unit = token_rms(clean) if relative else 1.0
            dev = ((seen[step] - clean) / unit).std().item()
            assert dev == pytest.approx(sigma, abs=0.06), (relative, step, dev)
        assert torch.equal(stem_before, ae.stem.stages[0][0].weight)
    # a noisy decode is worse than a clean one for the same decoder
    curve = noise_robustness(ae, data, sigmas=(0.0, 0.8), relative=True)
    assert curve[1]["psnr"] < curve[0]["psnr"]


def test_bad_stage_is_refused():
    with pytest.raises(ValueError, match="stage"):
        train_stage(tiny_hae(), smooth_images(2, 32), 5, steps=1, lpips_net=None, progress=False)
