"""Stand-ins several test files share: a lossless linear autoencoder, per-image MSE, seeded and recon metrics."""
import torch
import torch.nn.functional as F

from lab import claims


class Patchify(torch.nn.Module):
    """Lossless and linear: 4x4 pixel patches as tokens (16x16 image -> 16 tokens of 48), no clamp."""
    grid = (4, 4)

    def encode(self, x):
        return F.pixel_unshuffle(x, 4).flatten(2).transpose(1, 2)

    def decode(self, z):
        return F.pixel_shuffle(z.transpose(1, 2).reshape(len(z), 48, 4, 4), 4)


class PooledConv(torch.nn.Module):
    """A stand-in for Inception's pool3: a fixed random 1×1 convolution to `dim` channels and global
    pooling, [B, dim, 1, 1]. Records each batch's size in `.seen`."""

    def __init__(self, dim, seed):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, dim, 1)
        torch.nn.init.normal_(self.conv.weight, generator=torch.Generator().manual_seed(seed))
        self.seen = []

    def forward(self, x):
        self.seen.append(len(x))
        return self.conv(x).mean((2, 3), keepdim=True)


def mse(a, b):
    return (a - b).pow(2).flatten(1).mean(1)


def seeded(values, seeds=(0, 1, 2), spread=1e-9):
    """{key: value or [per-seed values]} -> metrics as the notebooks log them (seed_key per seed).
    A single value becomes per-seed values with a negligible spread, distinct per key, so that paired
    differences are not all identical (lab.power gives identical seeds no interval)."""
    m = {}
    for i, (key, v) in enumerate(values.items()):
        vs = v if isinstance(v, (list, tuple)) else [v + spread * (i + 1) * (k - 1) for k in range(len(seeds))]
        for s, x in zip(seeds, vs):
            m[claims.seed_key(key, s)] = x
    return m


def recon(ours, base, deltas, stage=None):
    """Reconstruction metrics where `ours` differs from `base` by the given amounts (positive = ours higher)."""
    vals = {}
    for metric, d in zip(("psnr", "ssim", "lpips"), deltas):
        vals[claims.recon_key(metric, base, stage)] = 0.5
        vals[claims.recon_key(metric, ours, stage)] = 0.5 + d
    return vals
