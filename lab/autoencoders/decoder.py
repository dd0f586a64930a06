"""DC-AE-style convolutional decoder: tokens [B, N, C] -> images [B, 3, H, W].

Tokens are laid back on their grid, then each resolution level runs residual blocks (RMS norm,
SiLU, 3x3 convs) and doubles the resolution with a pixel-shuffle up block whose shortcut is
DC-AE's non-parametric "channel-duplicating" upsample: repeat every channel so that the count is
out * 4, then pixel_shuffle(2). The shortcut carries the signal up without learned weights, so the
learned branch only has to add a residual (DC-AE, Chen et al. 2024, Sec. 3.1).

Output convention: forward() returns a *linear* output that is trained towards images in [0, 1]
(no sigmoid, which would flatten gradients near black and white); decode() clamps it to [0, 1].
Train on forward(), show and measure decode().
"""
import torch.nn as nn
import torch.nn.functional as F

from lab.autoencoders.stem import TRMS2d
from lab.encoders import tokens_to_grid


class ResBlock(nn.Module):
    """x + conv(SiLU(norm(conv(SiLU(norm(x)))))); the second conv starts at zero (identity block)."""

    def __init__(self, ch):
        super().__init__()
        self.norm1, self.conv1 = TRMS2d(ch, spatial=False), nn.Conv2d(ch, ch, 3, padding=1)
        self.norm2, self.conv2 = TRMS2d(ch, spatial=False), nn.Conv2d(ch, ch, 3, padding=1)
        nn.init.zeros_(self.conv2.weight)
        nn.init.zeros_(self.conv2.bias)

    def forward(self, x):
        h = self.conv1(F.silu(self.norm1(x)))
        return x + self.conv2(F.silu(self.norm2(h)))


class UpBlock(nn.Module):
    """2x up: pixel_shuffle(conv(x)) + pixel_shuffle(repeat_interleave(x)) (DC-AE residual up)."""

    def __init__(self, c_in, c_out):
        super().__init__()
        if (4 * c_out) % c_in:
            raise ValueError(f"UpBlock needs 4*c_out divisible by c_in, got c_in={c_in}, c_out={c_out}")
        self.repeats = 4 * c_out // c_in
        self.conv = nn.Conv2d(c_in, 4 * c_out, 3, padding=1)

    def forward(self, x):
        shortcut = F.pixel_shuffle(x.repeat_interleave(self.repeats, dim=1), 2)
        return F.pixel_shuffle(self.conv(x), 2) + shortcut


class ConvDecoder(nn.Module):
    """Tokens [B, N, in_dim] on an (h, w) grid -> images [B, 3, h * 2^k, w * 2^k], k = len(widths) - 1.

    widths[i] is the channel count at resolution level i (level 0 = the token grid); depth residual
    blocks per level. The default (5 levels, 16x up) is CPU-sized: a 4x4 grid decodes to 64 px.
    """

    def __init__(self, in_dim=384, widths=(256, 128, 64, 32, 16), depth=1):
        super().__init__()
        self.in_dim, self.up = in_dim, 2 ** (len(widths) - 1)
        self.proj_in = nn.Conv2d(in_dim, widths[0], 3, padding=1)
        levels = []
        for i, ch in enumerate(widths):
            blocks = [ResBlock(ch) for _ in range(depth)]
            if i + 1 < len(widths):
                blocks.append(UpBlock(ch, widths[i + 1]))
            levels.append(nn.Sequential(*blocks))
        self.levels = nn.Sequential(*levels)
        self.norm_out = TRMS2d(widths[-1], spatial=False)
        self.proj_out = nn.Conv2d(widths[-1], 3, 3, padding=1)

    @property
    def last_layer(self):
        """The weight the adaptive GAN weight is measured at."""
        return self.proj_out.weight

    def forward(self, z, grid=None):
        """Linear output (unclamped) for training; target range [0, 1]."""
        x = self.proj_in(tokens_to_grid(z, grid))
        x = self.levels(x)
        return self.proj_out(F.silu(self.norm_out(x))) + 0.5  # start around mid-grey

    def decode(self, z, grid=None):
        """Images in [0, 1]."""
        return self.forward(z, grid).clamp(0, 1)


def conv_decoder(size="tiny", in_dim=384, **kw):
    """Presets: 'tiny' (CPU default, ~4M params) and 'base' (GPU, wider, 2 blocks per level)."""
    presets = {
        "tiny": dict(widths=(256, 128, 64, 32, 16), depth=1),
        "base": dict(widths=(512, 512, 256, 128, 64), depth=2),
    }
    if size not in presets:
        raise ValueError(f"size={size!r}; allowed: {tuple(presets)}")
    return ConvDecoder(in_dim=in_dim, **{**presets[size], **kw})
