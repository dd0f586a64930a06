"""Hierarchical convolutional stem (HAE / DINO-SAE "HCPE") that replaces a ViT's patch embedding.

A ViT patch embedding maps each 14x14 (or 16x16) patch to a token with a single linear layer; the
stem instead halves the resolution four times (3 -> 64 -> 128 -> 256 -> width), so fine texture is
mixed into the tokens gradually. 16x downsampling: a 64 px image gives a 4x4 token grid.
"""
import torch
import torch.nn as nn


class TRMS2d(nn.Module):
    """RMS norm of a feature map with a learnable per-channel scale.

    spatial=True (the stem, as the design specifies): one RMS per sample over channels and space,
        y = x / sqrt(mean_{c,h,w} x^2 + eps) * g_c.
    spatial=False (DC-AE's RMSNorm2d, used by the decoder): one RMS per pixel over channels,
        y = x / sqrt(mean_c x^2 + eps) * g_c.
    Computed in fp32 so that bf16 autocast cannot underflow the mean of squares.
    """

    def __init__(self, channels, eps=1e-6, spatial=True):
        super().__init__()
        self.eps, self.spatial = eps, spatial
        self.weight = nn.Parameter(torch.ones(channels))

    def forward(self, x):
        dims = (1, 2, 3) if self.spatial else (1,)
        xf = x.float()
        y = xf * torch.rsqrt(xf.pow(2).mean(dim=dims, keepdim=True) + self.eps)
        return (y * self.weight.float().view(1, -1, 1, 1)).to(x.dtype)


class ConvStem(nn.Module):
    """4 stride-2 convs 3 -> channels[0] -> channels[1] -> channels[2] -> width.

    Each of the first three stages is conv + TRMS2d + SiLU; the last is a bare conv, so the tokens
    it hands to the ViT are not squashed (the ViT's own pre-norms take over from there).
    kernel=3 (padding 1) or kernel=4 (padding 1): both halve an even size exactly.
    """

    def __init__(self, width=384, channels=(64, 128, 256), kernel=3):
        super().__init__()
        if kernel not in (3, 4):
            raise ValueError(f"kernel={kernel!r}; allowed: 3 or 4")
        if len(channels) != 3:
            raise ValueError(f"channels={channels!r}; need 3 hidden widths (4 stages in all)")
        chans = (3, *channels, width)
        stages = []
        for i in range(4):
            conv = nn.Conv2d(chans[i], chans[i + 1], kernel, stride=2, padding=1)
            last = i == 3
            stages.append(conv if last else nn.Sequential(conv, TRMS2d(chans[i + 1]), nn.SiLU()))
        self.stages = nn.Sequential(*stages)
        self.width, self.down = width, 16

    def grid(self, height, width):
        """Token grid (h, w) for an input of this size."""
        return height // self.down, width // self.down

    def features(self, x):
        """[B, 3, H, W] (normalised pixels) -> feature map [B, width, H/16, W/16]."""
        if x.shape[-2] % self.down or x.shape[-1] % self.down:
            raise ValueError(f"image size {tuple(x.shape[-2:])} must be divisible by {self.down}")
        return self.stages(x)

    def forward(self, x):
        """[B, 3, H, W] -> tokens [B, N, width], N = (H/16)(W/16), row-major like a ViT."""
        return self.features(x).flatten(2).transpose(1, 2)
