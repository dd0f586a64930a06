"""Figures the notebooks share: sample galleries, swap gallery, quality and U-curve plots, ablations."""
import re

import matplotlib.pyplot as plt
import torch

from lab import probes


def slug(text):
    """'LPIPS (alex)' -> 'lpips_alex': a metric-key-safe name."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def _show(ax, img, title=None):
    ax.imshow(img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    ax.axis("off")
    if title:
        ax.set_title(title, fontsize=8)


def gallery(rows, reference=None, n=8):
    """One row of n images per entry of `rows` (name -> images [B,3,H,W]); `reference` on top."""
    items = ([("data", reference)] if reference is not None else []) + list(rows.items())
    fig, axes = plt.subplots(len(items), n, figsize=(1.2 * n, 1.3 * len(items)), squeeze=False)
    for r, (name, imgs) in enumerate(items):
        for c in range(n):
            _show(axes[r, c], imgs[c] if c < len(imgs) else torch.zeros_like(imgs[0]))
        axes[r, 0].set_title(name, fontsize=8, loc="left")
    fig.tight_layout()
    return fig


@torch.no_grad()
def swap_gallery(ae, images, labels, n=6, seed=0):
    """Anchor, neighbour, and the decodes of the three component swaps, for n same-class pairs."""
    pairs = probes.same_class_pairs(labels, n, seed)
    ia, ib = [a for a, _ in pairs], [b for _, b in pairs]
    za, zb = ae.encode(images[ia]), ae.encode(images[ib])
    cols = {"anchor": ae.decode(za), "neighbour": images[ib]}
    cols.update({k: ae.decode(v) for k, v in probes.component_swap(za, zb).items()})
    fig, axes = plt.subplots(len(ia), len(cols), figsize=(1.6 * len(cols), 1.6 * len(ia)), squeeze=False)
    for c, (name, imgs) in enumerate(cols.items()):
        for r in range(len(ia)):
            _show(axes[r, c], imgs[r], name.replace(" + ", "\n+ ") if r == 0 else None)
    fig.tight_layout()
    return fig


def plot_quality(quality, samplers_df):
    """FD per generator configuration (bars) and FD against sampler steps per method."""
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].barh(quality["config"], quality["fd_images"])
    axes[0].set_xlabel(quality["fd_name"].iloc[0] + " (decoded vs held-out, lower is better)")
    for method, d in samplers_df.groupby("method", sort=False):
        axes[1].plot(d["steps"], d["fd_images"], "o-", label=method)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("sampler steps")
    axes[1].set_ylabel(quality["fd_name"].iloc[0])
    axes[1].set_title(f"samplers on {samplers_df['config'].iloc[0]}", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_u_curve(df):
    """Generation quality and reconstruction PSNR against the decode-time rescale factor."""
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(df["scale"], df["fd_generated"], "o-", color="C0", label="generated: FD-effnet")
    ax.set_xlabel("token norm at decoding / data norm")
    ax.set_ylabel("FD-effnet (lower is better)", color="C0")
    ax2 = ax.twinx()
    ax2.plot(df["scale"], df["psnr_reconstruction"], "s--", color="C1", label="real latents: PSNR")
    ax2.set_ylabel("reconstruction PSNR (dB)", color="C1")
    ax.axvline(1.0, color="gray", ls=":")
    fig.tight_layout()
    return fig


def plot_ablations(hae_df, noise_df, gae_df):
    """Stem / alignment PSNR, the latent-noise robustness curves, and the GAE paradigms."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    axes[0].barh(hae_df["model"], hae_df["psnr"])
    axes[0].set_xlabel("PSNR (dB), held-out")
    for tau, d in noise_df.groupby("train_tau"):
        axes[1].plot(d["sigma"], d["psnr"], "o-", label=f"trained with τ={tau:g}")
    axes[1].set_xlabel("σ of latent noise at decoding")
    axes[1].set_ylabel("PSNR (dB)")
    axes[1].legend(fontsize=8)
    x = range(len(gae_df))
    axes[2].bar([i - 0.2 for i in x], gae_df["psnr"], width=0.4, label="PSNR (dB)")
    ax2 = axes[2].twinx()
    ax2.bar([i + 0.2 for i in x], gae_df["probe_gap"], width=0.4, color="C1", label="probe acc (GAP)")
    axes[2].set_xticks(list(x), gae_df["align"])
    axes[2].set_title("GAE alignment paradigm", fontsize=9)
    axes[2].set_ylabel("PSNR (dB)")
    ax2.set_ylabel("probe accuracy", color="C1")
    fig.tight_layout()
    return fig
