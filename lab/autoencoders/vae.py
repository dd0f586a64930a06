"""Gaussian (KL) VAEs and their spherical projection.

- KLVAE: a small conv VAE the lab trains itself. The encoder maps an image to per-token
  Gaussians q(z|x) = N(mean, diag(exp(logvar))) on a [B, N, d] token grid (f16: 64 px -> 4x4);
  the decoder is the DC-AE-style conv decoder. Loss: reconstruction + kl_weight * KL(q || N(0, I)).
- wrap_vae: a hook giving any pretrained VAE a user brings (diffusers, taming, own code) the lab's
  interface, from two small functions.
- SphericalVAE ("Aligning Latent Geometry for Spherical Flow Matching"): every token of the frozen
  encoder's mean is projected radially onto the sphere of radius sqrt(d),
      z = sqrt(d) * mean / |mean|,
  and only the decoder (plus an optional discriminator) is fine-tuned to decode those points,
  with L1 + LPIPS (+ GAN) and no KL (see trainers.finetune_spherical).
"""
import torch
import torch.nn as nn
import torch.nn.functional as F

from lab.autoencoders.decoder import ResBlock, conv_decoder
from lab.autoencoders.stem import TRMS2d
from lab.encoders import grid_to_tokens, tokens_to_grid
from lab.geometry import to_sphere


def kl_gaussian(mean, logvar):
    """Elementwise KL(N(mean, exp(logvar)) || N(0, 1)) = 0.5 (mean^2 + exp(logvar) - 1 - logvar)."""
    return 0.5 * (mean.pow(2) + logvar.exp() - 1.0 - logvar)


# ----------------------------------------------------------------------------- the lab's KL-VAE

class ConvEncoder(nn.Module):
    """images in [0, 1] -> [B, out_dim, H / 2^k, W / 2^k], k = len(widths) - 1 (mirror of ConvDecoder)."""

    def __init__(self, out_dim, widths=(16, 32, 64, 128, 256), depth=1):
        super().__init__()
        self.down = 2 ** (len(widths) - 1)
        self.proj_in = nn.Conv2d(3, widths[0], 3, padding=1)
        levels = []
        for i, ch in enumerate(widths):
            blocks = [ResBlock(ch) for _ in range(depth)]
            if i + 1 < len(widths):
                blocks.append(nn.Conv2d(ch, widths[i + 1], 3, stride=2, padding=1))
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.norm_out = TRMS2d(widths[-1], spatial=False)
        self.proj_out = nn.Conv2d(widths[-1], out_dim, 3, padding=1)

    def forward(self, images01):
        x = self.levels(self.proj_in(2 * images01 - 1))
        return self.proj_out(F.silu(self.norm_out(x)))


class KLVAE(nn.Module):
    """Conv KL-VAE. encode -> posterior mean tokens [B, N, d]; encode_dist -> (mean, logvar)."""

    def __init__(self, image_size=64, latent_dim=32, widths=(16, 32, 64, 128, 256), depth=1, decoder_size="tiny",
                 decoder_widths=None):
        super().__init__()
        self.latent_dim, self.image_size = latent_dim, image_size
        self.encoder = ConvEncoder(2 * latent_dim, widths, depth)
        dec_kw = {} if decoder_widths is None else dict(widths=tuple(decoder_widths))
        self.decoder = conv_decoder(decoder_size, in_dim=latent_dim, **dec_kw)
        if self.decoder.up != self.encoder.down:
            raise ValueError(f"encoder downsamples {self.encoder.down}x but the '{decoder_size}' decoder "
                             f"upsamples {self.decoder.up}x: give widths with {self.decoder.up.bit_length()} entries")
        if image_size % self.encoder.down:
            raise ValueError(f"image_size={image_size} must be a multiple of {self.encoder.down}")
        g = image_size // self.encoder.down
        self.grid = (g, g)

    def encode_dist(self, images01):
        tokens, _ = grid_to_tokens(self.encoder(images01))
        mean, logvar = tokens.chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)  # as LDM's DiagonalGaussian: keeps exp() finite

    def encode(self, images01):
        return self.encode_dist(images01)[0]

    def sample(self, mean, logvar, generator=None):
        """Reparameterised draw mean + exp(logvar / 2) * eps."""
        eps = torch.randn(mean.shape, device=mean.device, dtype=mean.dtype, generator=generator)
        return mean + (0.5 * logvar).exp() * eps

    def decode_raw(self, z):
        return self.decoder(z, self.grid)

    def decode(self, z):
        return self.decode_raw(z).clamp(0, 1)

    def decoder_modules(self):
        """What a decoder-only fine-tune trains."""
        return {"decoder": self.decoder}

    def checkpoint_modules(self):
        return {"vae": self}

    def trainable_parameters(self):
        return list(self.parameters())


# ----------------------------------------------------------------------------- any pretrained VAE

class WrappedVAE(nn.Module):
    """A user's VAE behind the lab interface (see wrap_vae)."""

    def __init__(self, module, encode_fn, decode_fn, decoder="decoder", grid=None):
        super().__init__()
        self.module, self.encode_fn, self.decode_fn = module, encode_fn, decode_fn
        self.grid = tuple(grid) if grid is not None else None
        names = [decoder] if isinstance(decoder, str) else list(decoder or [])
        missing = [n for n in names if not _has(module, n)]
        if missing:
            raise ValueError(f"wrap_vae: decoder submodule(s) {missing} not found in {type(module).__name__}; "
                             "pass decoder=[names of the submodules a decoder fine-tune should train]")
        self._decoder_names = names

    def encode(self, images01):
        z = self.encode_fn(self.module, images01)
        if z.dim() == 4:
            z, self.grid = grid_to_tokens(z)
        elif self.grid is None:
            raise ValueError("encode_fn returned tokens [B, N, C]: pass grid=(h, w) to wrap_vae")
        return z

    def decode_raw(self, z):
        if self.grid is None:
            raise RuntimeError("the token grid is unknown: encode once, or pass grid=(h, w) to wrap_vae")
        return self.decode_fn(self.module, tokens_to_grid(z, self.grid))

    def decode(self, z):
        return self.decode_raw(z).clamp(0, 1)

    def decoder_modules(self):
        return {n.replace(".", "_"): self.module.get_submodule(n) for n in self._decoder_names}

    def checkpoint_modules(self):
        return {"vae": self.module}


def _has(module, name):
    try:
        module.get_submodule(name)
        return True
    except AttributeError:
        return False


def wrap_vae(module, encode_fn, decode_fn, decoder="decoder", grid=None):
    """Give a pretrained VAE the lab interface.

    encode_fn(module, images01 [B, 3, H, W]) -> posterior mean, [B, C, h, w] maps (or [B, N, C]
        tokens with grid=(h, w));  decode_fn(module, maps [B, C, h, w]) -> images in [0, 1] (unclamped).
    decoder: name(s) of the submodule(s) a decoder-only fine-tune trains (diffusers' AutoencoderKL:
        ['decoder', 'post_quant_conv']).
    Example (diffusers): wrap_vae(vae, lambda m, x: m.encode(2 * x - 1).latent_dist.mean,
                                  lambda m, z: (m.decode(z).sample + 1) / 2, ['decoder', 'post_quant_conv'])
    """
    return WrappedVAE(module, encode_fn, decode_fn, decoder, grid)


# ----------------------------------------------------------------------------- spherical projection

class SphericalVAE(nn.Module):
    """encode = sqrt(d) * mean / |mean| per token (frozen encoder); decode = the VAE's decoder (fine-tuned)."""

    def __init__(self, vae, radius=None):
        super().__init__()
        self.vae, self.radius = vae, radius
        self.latent_dim = getattr(vae, "latent_dim", None)
        for p in vae.parameters():
            p.requires_grad_(False)
        for m in vae.decoder_modules().values():
            for p in m.parameters():
                p.requires_grad_(True)

    @property
    def grid(self):
        return self.vae.grid

    @torch.no_grad()
    def encode(self, images01):
        """Posterior means of the frozen encoder, projected token-wise to radius sqrt(d) (or `radius`)."""
        return to_sphere(self.vae.encode(images01), self.radius)

    @torch.no_grad()
    def teacher_features(self, images01):
        """The unprojected Gaussian-VAE means (the latent before the projection)."""
        return self.vae.encode(images01)

    def decode_raw(self, z):
        return self.vae.decode_raw(z)

    def decode(self, z):
        return self.decode_raw(z).clamp(0, 1)

    def train(self, mode=True):
        super().train(mode)
        self.vae.eval()  # the frozen encoder (and any norm statistics) stay in eval mode ...
        for m in self.vae.decoder_modules().values():
            m.train(mode)  # ... while the decoder being fine-tuned follows `mode`
        return self

    def checkpoint_modules(self):
        return dict(self.vae.decoder_modules())

    def trainable_parameters(self):
        return [p for m in self.vae.decoder_modules().values() for p in m.parameters()]
