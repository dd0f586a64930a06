"""ViT decoder: latent tokens [B, N, C] -> pixels, as in RAE (an MAE-style decoder).

tokens -> linear to the decoder width -> + fixed 2-D sin-cos positions -> transformer blocks
-> LayerNorm -> linear to one patch of pixels per token -> unpatchify.

The decoder predicts images in [0, 1] space without a squashing nonlinearity (a sigmoid/tanh
slows training near the ends of the range); autoencoders clamp in `decode`, losses see the raw
prediction. The position table is computed for whatever grid arrives, so one decoder serves
any resolution; the grid is passed explicitly or taken as square.
"""
import torch.nn as nn
from timm.models.vision_transformer import Block

from lab.dit import sincos_2d
from lab.encoders import square_grid


def patchify(images, p):
    """[B, c, h*p, w*p] -> [B, h*w, p*p*c] (row-major tokens, pixels ordered (py, px, c))."""
    b, c, H, W = images.shape
    x = images.reshape(b, c, H // p, p, W // p, p)
    return x.permute(0, 2, 4, 3, 5, 1).reshape(b, (H // p) * (W // p), p * p * c)


def unpatchify(x, grid, p, c=3):
    """[B, h*w, p*p*c] -> [B, c, h*p, w*p]; inverse of patchify."""
    (h, w), b = grid, x.shape[0]
    x = x.reshape(b, h, w, p, p, c).permute(0, 5, 1, 3, 2, 4)
    return x.reshape(b, c, h * p, w * p)


class ViTDecoder(nn.Module):
    """Tokens [B, N, in_dim] -> images [B, 3, h*p, w*p] (raw, ~[0, 1])."""

    def __init__(self, in_dim, patch_size=16, width=192, depth=4, heads=3, mlp_ratio=4.0, out_chans=3):
        super().__init__()
        self.in_dim, self.patch_size, self.width, self.out_chans = in_dim, patch_size, width, out_chans
        self.embed = nn.Linear(in_dim, width)
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.head = nn.Linear(width, patch_size * patch_size * out_chans)
        # start from a mid-grey image: the first steps then learn content, not the mean level
        nn.init.zeros_(self.head.weight)
        nn.init.constant_(self.head.bias, 0.5)

    @property
    def last_layer(self):
        """The weight the adaptive GAN weight is measured at."""
        return self.head.weight

    def forward(self, z, grid=None):
        grid = square_grid(z.shape[1], grid)
        x = self.embed(z) + sincos_2d(self.width, grid, z.device, z.dtype)
        for block in self.blocks:
            x = block(x)
        return unpatchify(self.head(self.norm(x)), grid, self.patch_size, self.out_chans)


# widths/depths/heads of the decoder presets; 'XL' is RAE's ViT-XL decoder, 'tiny' the CPU default
PRESETS = {
    "tiny": dict(width=192, depth=4, heads=3),
    "S": dict(width=384, depth=12, heads=6),
    "B": dict(width=768, depth=12, heads=12),
    "L": dict(width=1024, depth=24, heads=16),
    "XL": dict(width=1152, depth=28, heads=16),
}


def vit_decoder(size="tiny", in_dim=384, patch_size=16, **kw):
    """A ViTDecoder preset: size in 'tiny', 'S', 'B', 'L', 'XL'; keyword arguments override it."""
    if size not in PRESETS:
        raise ValueError(f"vit_decoder size={size!r}; allowed: {sorted(PRESETS)}")
    return ViTDecoder(in_dim, patch_size, **{**PRESETS[size], **kw})
