"""Figures the notebooks share, in one style a paper can use.

`style()` is the lab's one figure style (seaborn 'paper' context, colour-blind palette, TrueType
fonts in PDFs so the text stays text); importing this module applies it. Every axis names its
quantity and unit. `Run.save_figure` writes each figure twice, PNG and vector PDF, with the run /
commit stamp below the axes, off the plotting area.

The paper-facing plots follow their counterparts: `plot_u_curve` HAE App C / Fig 7 (generation
quality against the decoding scale, a U with its sweet spot marked), `plot_radial_share` spherical
FM Fig 4 (radial share of the velocity target along t, per path), `plot_width` RAE §4.1 / Tab 3
(the loss a DiT of width d reaches on one latent of token dimension n, beside the (n − d)/n floor).
"""
import math
import re

import matplotlib.pyplot as plt
import torch

from lab import probes

STYLE_RC = {
    "axes.spines.top": False, "axes.spines.right": False, "axes.grid": True, "grid.alpha": 0.3,
    "legend.frameon": False, "figure.dpi": 100, "savefig.dpi": 150,
    "pdf.fonttype": 42, "ps.fonttype": 42,  # TrueType in vector files: text stays text
}


def style():
    """Apply the lab's figure style to matplotlib (called on import; call again after a reset)."""
    import seaborn as sns
    sns.set_theme(context="paper", style="ticks", palette="colorblind", font_scale=1.1, rc=STYLE_RC)


style()

T_LABEL = "t (0 = noise, 1 = data)"


def slug(text):
    """'LPIPS (alex)' -> 'lpips_alex': a metric-key-safe name."""
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def show_image(ax, img, title=None):
    """An image [3, H, W] in [0, 1] on ax, without ticks or frame."""
    ax.imshow(img.detach().float().clamp(0, 1).permute(1, 2, 0).cpu().numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for side in ax.spines.values():
        side.set_visible(False)
    ax.grid(False)
    if title:
        ax.set_title(title, fontsize=8)


_show = show_image


def class_mosaic(images, labels, num_classes, n=6, pad=2):
    """One image [3, rows·(H+pad), n·(W+pad)] holding n samples of each class, one row per class
    (class c in row c; a class with fewer than n samples leaves its row's tail blank)."""
    _, c, h, w = images.shape
    out = torch.ones(c, num_classes * (h + pad), n * (w + pad))
    for k in range(num_classes):
        for j, img in enumerate(images[labels == k][:n]):
            out[:, k * (h + pad):k * (h + pad) + h, j * (w + pad):j * (w + pad) + w] = img.float().clamp(0, 1)
    return out


def class_gallery(panels, num_classes, n=6, class_names=None):
    """Side-by-side panels (name -> (images, labels)), each one row per class with n samples of it."""
    fig, axes = plt.subplots(1, len(panels), figsize=(0.55 * n * len(panels) + 0.6, 0.6 * num_classes + 0.6),
                             squeeze=False)
    for ax, (name, (imgs, labels)) in zip(axes[0], panels.items()):
        show_image(ax, class_mosaic(imgs, labels, num_classes, n), name)
    if class_names:
        h = class_mosaic(*next(iter(panels.values())), num_classes, n).shape[1] / num_classes
        axes[0, 0].set_yticks([(k + 0.5) * h for k in range(num_classes)], class_names, fontsize=7)
    fig.tight_layout()
    return fig


def plot_agreement(df, real, ceiling, chance):
    """Class agreement per generator configuration, with and without CFG (bars at the seed mean,
    one dot per seed), beside the classifier's accuracy on real held-out images, the same images
    through the autoencoder (the decoder's ceiling) and chance."""
    fig, ax = plt.subplots(figsize=(7, 0.5 * df["config"].nunique() + 1.6))
    configs = list(dict.fromkeys(df["config"]))
    for i, (guided, d) in enumerate(df.groupby("guidance", sort=False)):
        mean = d.groupby("config", sort=False)["class_agreement"].mean().reindex(configs)
        y = [configs.index(c) + 0.2 * (1 - 2 * i) for c in configs]
        ax.barh(y, mean.values, height=0.38, color=f"C{i}", label=guided)
        ax.plot(d["class_agreement"], [configs.index(c) + 0.2 * (1 - 2 * i) for c in d["config"]], "k.", ms=4)
    ax.set_yticks(range(len(configs)), configs)
    for x, name, ls in ((real, "real held-out images", "-"), (ceiling, "decoder ceiling", "--"),
                        (chance, "chance", ":")):
        ax.axvline(x, color="0.3", ls=ls, lw=1, label=f"{name} {x:.2f}")
    ax.set_xlim(0, 1)
    ax.set_xlabel("class agreement (fraction labelled as the requested class)")
    ax.legend(fontsize=7, loc="lower right")
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
            show_image(axes[r, c], imgs[r], name.replace(" + ", "\n+ ") if r == 0 else None)
    fig.tight_layout()
    return fig


def plot_quality(quality, samplers_df):
    """FD per generator configuration (bars) and FD against sampler steps per method."""
    fd = quality["fd_name"].iloc[0]
    fig, axes = plt.subplots(1, 2, figsize=(11, 3.6))
    axes[0].barh(quality["config"], quality["fd_images"])
    axes[0].set_xlabel(f"{fd} of decoded samples vs held-out images (lower is better)")
    for method, d in samplers_df.groupby("method", sort=False):
        axes[1].plot(d["steps"], d["fd_images"], "o-", label=method)
    axes[1].set_xscale("log")
    axes[1].set_xlabel("sampler steps (function evaluations)")
    axes[1].set_ylabel(f"{fd} (lower is better)")
    axes[1].set_title(f"samplers on {samplers_df['config'].iloc[0]}", fontsize=9)
    axes[1].legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_u_curve(df):
    """HAE Fig 7: generation quality against the decoding scale, with its sweet spot marked.

    df: scale (× the data's mean token norm), fd_generated, psnr_reconstruction and, when
    present, decode_radius (the absolute token norm at decoding, HAE's x axis). Left: FD of
    decoded samples; right: what the same rescale does to real latents (reconstruction PSNR).
    """
    absolute = "decode_radius" in df
    x = df["decode_radius"] if absolute else df["scale"]
    xlabel = "token norm at decoding ‖z‖ (latent units)" if absolute else "token norm at decoding / data norm"
    fig, axes = plt.subplots(1, 2, figsize=(9, 3.4))
    ax = axes[0]
    ax.plot(x, df["fd_generated"], "o-", color="C0")
    best = df["fd_generated"].idxmin()
    ax.plot(x[best], df["fd_generated"][best], "*", ms=14, color="C3",
            label=f"best: {df['fd_generated'][best]:.1f} at {x[best]:.3g}")
    ax.set_xlabel(xlabel)
    ax.set_ylabel("FD-effnet of generated samples\n(lower is better)")
    axes[1].plot(x, df["psnr_reconstruction"], "s-", color="C1")
    axes[1].set_xlabel(xlabel)
    axes[1].set_ylabel("PSNR of rescaled real latents (dB)")
    data_norm = (df["decode_radius"] / df["scale"]).iloc[0] if absolute else 1.0
    for a in axes:
        a.axvline(data_norm, color="0.5", ls=":", label="data norm")
    if absolute:  # HAE plots the absolute scale; a top axis gives the factor of the data norm
        for a in axes:
            a.secondary_xaxis("top", functions=(lambda v: v / data_norm, lambda v: v * data_norm)) \
                .set_xlabel("× data norm", fontsize=8)
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_norm_dip(dip, ax=None):
    """The norm dip of the linear path x_t = (1-t)·x0 + t·x1: |x_t| against its endpoints' norms.

    dip: probes.linear_path_norm_dip's table. For orthogonal endpoints of equal norm the midpoint
    sits at 1/√2 of it (dotted line).
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.6, 3.2))
    ax.plot(dip["t"], dip["rel_nearest_mean"], marker="o", label="‖x_t‖ / ‖nearest endpoint‖")
    ax.plot(dip["t"], dip["rel_interp_mean"], marker=".", label="‖x_t‖ / interpolated norm")
    ax.axhline(1 / math.sqrt(2), ls=":", c="0.5", label="1/√2")
    ax.set_xlim(0, 1)
    ax.set_xlabel(T_LABEL)
    ax.set_ylabel("relative token norm (ratio)")
    ax.set_title("linear-path norm dip", fontsize=9)
    ax.legend(fontsize=8)
    if len(fig.axes) == 1:
        fig.tight_layout()
    return fig


def plot_radial(dip, share, title=None):
    """The norm dip of the linear path and the radial share along t (spherical FM Fig 4), side by side."""
    fig, axes = plt.subplots(1, 2, figsize=(9.4, 3.3))
    plot_norm_dip(dip, ax=axes[0])
    plot_radial_share(share, ax=axes[1], **({"title": title} if title else {}))
    fig.tight_layout()
    return fig


def plot_radial_share(share, ax=None, title="radial share of the velocity target"):
    """Spherical FM Fig 4: |radial(u_t)|² / |u_t|² along t per path (mean ± std over samples).

    share: probes.radial_share_along_t's table (path, t, share_mean, share_std).
    """
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.6, 3.2))
    for name, d in share.groupby("path", sort=False):
        line, = ax.plot(d["t"], d["share_mean"], marker=".", label=name)
        ax.fill_between(d["t"], (d["share_mean"] - d["share_std"]).clip(0, 1),
                        (d["share_mean"] + d["share_std"]).clip(0, 1), color=line.get_color(), alpha=0.2, lw=0)
    ax.axhline(0.5, color="0.5", ls=":", label="½ (isotropic endpoints)")
    ax.set_ylim(-0.02, 1.02)
    ax.set_xlim(0, 1)
    ax.set_xlabel(T_LABEL)
    ax.set_ylabel("radial share ‖u_radial‖² / ‖u‖²")
    ax.set_title(title, fontsize=9)
    ax.legend(fontsize=8)
    if len(fig.axes) == 1:
        fig.tight_layout()
    return fig


def plot_norm_histogram(norms, gauss_norms, dim, ax=None, label="latent tokens"):
    """Token norms of an autoencoder against N(0, I) tokens of the same dimension (the shell √C)."""
    fig, ax = (ax.figure, ax) if ax is not None else plt.subplots(figsize=(4.6, 3.2))
    norms, gauss_norms = torch.as_tensor(norms).float(), torch.as_tensor(gauss_norms).float()
    cv = (norms.std() / norms.mean()).item() if len(norms) > 1 else 0.0
    lo = min(norms.min().item(), gauss_norms.min().item())
    hi = max(norms.max().item(), gauss_norms.max().item())
    bins = torch.linspace(lo, hi + 1e-6 * max(hi, 1.0), 50).numpy()
    ax.hist(norms.numpy(), bins=bins, density=True, alpha=0.6, label=f"{label} (CV {cv:.3f})")
    ax.hist(gauss_norms.numpy(), bins=bins, density=True, alpha=0.4, label=f"N(0, I), C = {dim}")
    ax.axvline(math.sqrt(dim), color="k", ls="--", lw=1, label=f"shell √C = {math.sqrt(dim):.2f}")
    ax.set_xlabel("token norm ‖z‖ (latent units)")
    ax.set_ylabel("density (per unit norm)")
    ax.set_title("token norms vs the Gaussian shell", fontsize=9)
    ax.legend(fontsize=7)
    return fig


def plot_width(df, token_dim=None):
    """RAE §4.1 / Tab 3: the loss a DiT of width d reaches on one latent, beside the (n − d)/n floor.

    df: width, loss and floor (and n) per width, as probes.width_check returns. Each point is
    labelled with its loss, so the figure reads like the paper's table of overfitting losses.
    """
    n = int(token_dim if token_dim is not None else df["n"].iloc[0])
    fig, ax = plt.subplots(figsize=(5, 3.4))
    ax.plot(df["width"], df["loss"], "o-", label="trained DiT, final loss")
    ax.plot(df["width"], df["floor"], "k--", lw=1, label="floor (n − d)/n for d < n")
    for w_, l_ in zip(df["width"], df["loss"]):
        ax.annotate(f"{l_:.3f}", (w_, l_), textcoords="offset points", xytext=(0, 6), ha="center", fontsize=7)
    ax.axvline(n, color="0.5", ls=":", label=f"token dimension n = {n}")
    ax.set_xscale("log", base=2)
    ax.axvspan(min(df["width"].min(), n) / 1.3, n, color="0.92", zorder=0, label="d < n: cannot fit")
    ax.set_xticks(list(df["width"]), [str(int(v)) for v in df["width"]])
    ax.minorticks_off()
    ax.set_xlabel("DiT width d (channels)")
    ax.set_ylabel("FM loss / Var(u) on the one latent")
    ax.legend(fontsize=8)
    fig.tight_layout()
    return fig


def plot_ablations(hae_df, noise_df, gae_df):
    """Stem / alignment PSNR, the latent-noise robustness curves, and the GAE paradigms."""
    fig, axes = plt.subplots(1, 3, figsize=(14, 3.6))
    axes[0].barh(hae_df["model"], hae_df["psnr"])
    axes[0].set_xlabel("PSNR (dB), held-out")
    for tau, d in noise_df.groupby("train_tau"):
        axes[1].plot(d["sigma"], d["psnr"], "o-", label=f"trained with τ={tau:g}")
    axes[1].set_xlabel("σ of latent noise at decoding (latent units)")
    axes[1].set_ylabel("PSNR (dB)")
    axes[1].legend(fontsize=8)
    x = range(len(gae_df))
    axes[2].bar([i - 0.2 for i in x], gae_df["psnr"], width=0.4, label="PSNR (dB)")
    ax2 = axes[2].twinx()
    # the Flatten probe is the gae_alignment claim's primary metric (GAE Tab 1 reports Flatten)
    pool = "flatten" if "probe_flatten" in gae_df else "gap"
    ax2.bar([i + 0.2 for i in x], gae_df[f"probe_{pool}"], width=0.4, color="C1", label=f"probe acc ({pool})")
    ax2.grid(False)
    regs = gae_df["latent_reg"] if "latent_reg" in gae_df else ["norm"] * len(gae_df)
    names = [a if r == "norm" else f"{a} + {r.upper()}" for a, r in zip(gae_df["align"], regs)]
    axes[2].set_xticks(list(x), names)
    axes[2].set_title("GAE alignment paradigm", fontsize=9)
    axes[2].set_ylabel("PSNR (dB)")
    ax2.set_ylabel(f"linear-probe accuracy ({pool.capitalize() if pool == 'flatten' else 'GAP'}, fraction)", color="C1")
    fig.tight_layout()
    return fig
