"""Discriminator on frozen DINO features (StyleGAN-T / DINO-SAE "DINO-Disc" style), hinge loss.

The frozen ViT turns an image into tokens at a few depths; a small spectral-normalised head per
depth scores every token. Only the heads train. Gradients still flow through the frozen ViT into
the image, which is what the generator (decoder) step needs.

The backbone is *not* registered as a submodule: it is usually the HAE teacher, already owned and
moved by the autoencoder, and a checkpoint of the discriminator should hold only its heads.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F

from lab import encoders

SN = nn.utils.parametrizations.spectral_norm


class TokenHead(nn.Module):
    """Per-token logits from [B, N, C] tokens: 1x1 conv, 3-tap conv over the token row, 1x1 conv."""

    def __init__(self, dim, hidden=128):
        super().__init__()
        self.net = nn.Sequential(
            SN(nn.Conv1d(dim, hidden, 1)), nn.LeakyReLU(0.2),
            SN(nn.Conv1d(hidden, hidden, 3, padding=1)), nn.LeakyReLU(0.2),
            SN(nn.Conv1d(hidden, 1, 1)),
        )

    def forward(self, tokens):
        return self.net(tokens.transpose(1, 2)).flatten(1)  # [B, N]


class DinoDisc(nn.Module):
    """D(images01) -> logits [B, L * N] from L frozen ViT depths.

    vit: the frozen timm ViT (e.g. ae.teacher). layers: block indices, default 4 evenly spaced
    (2, 5, 8, 11 for depth 12). size: images are resized to this (h, w) first; default = H and W
    rounded up to a multiple of the patch (64 px -> 70 px, 5x5 tokens for patch 14).
    """

    def __init__(self, vit, layers=None, hidden=128, size=None):
        super().__init__()
        depth = len(vit.blocks)
        if layers is None:
            n = min(4, depth)
            layers = [round((i + 1) * depth / n) - 1 for i in range(n)]
        bad = [i for i in layers if not 0 <= i < depth]
        if bad:
            raise ValueError(f"layers={layers}: indices {bad} outside the ViT's {depth} blocks")
        self._vit = (encoders.freeze(vit),)  # a tuple: not a registered submodule (see module doc)
        self.layers, self.size = list(layers), size
        self.heads = nn.ModuleList(TokenHead(vit.embed_dim, hidden) for _ in layers)

    @property
    def vit(self):
        return self._vit[0]

    def _resize(self, x):
        ph, pw = encoders.patch_size(self.vit)
        H, W = x.shape[-2:]
        h, w = self.size if self.size is not None else (math.ceil(H / ph) * ph, math.ceil(W / pw) * pw)
        if (h, w) != (H, W):
            x = F.interpolate(x, size=(h, w), mode="bilinear", align_corners=False, antialias=(h < H))
        return x

    def features(self, images01):
        """Frozen-ViT tokens at self.layers: list of [B, N, C] (gradients flow to the images)."""
        x = encoders.normalize(self._resize(images01), self.vit)
        return self.vit.forward_intermediates(x, indices=self.layers, output_fmt="NLC",
                                              intermediates_only=True)

    def forward(self, images01):
        feats = self.features(images01)
        return torch.cat([head(f) for head, f in zip(self.heads, feats)], dim=1)
