"""Fréchet distance between Gaussians fitted to feature sets, and running moments that make it shardable.

Moments are {'n', 'sum', 'outer'} (count, sum, sum of outer products) in float64 on one device
(trainutil.pick_device). They add: the moments of a union of shards are the sum of the shards'
moments (an all_reduce under torchrun), so FD over shards equals FD over the whole set, and no
whole feature set is ever held. lab.metrics re-exports every public name here.
"""
import numpy as np
import torch
import torch.distributed as dist

from lab.trainutil import pick_device


def feature_stats(feats):
    """(mean, covariance) of features [n, d] in float64 numpy (covariance with 1/(n-1))."""
    f = np.asarray(torch.as_tensor(feats).detach().cpu().double().reshape(len(feats), -1))
    if len(f) < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {len(f)}")
    return f.mean(0), np.cov(f, rowvar=False).reshape(f.shape[1], f.shape[1])


def _clip_eigs(w):
    """Eigenvalues below the rank tolerance max|w|·d·eps are roundoff: set them to 0 before sqrt
    (sqrt(1e-16) = 1e-8 per null direction would otherwise add up in rank-deficient covariances)."""
    tol = np.abs(w).max(initial=0.0) * len(w) * np.finfo(np.float64).eps
    return np.where(w > tol, w, 0.0)


def _sqrt_psd(s):
    """Symmetric PSD square root by eigendecomposition, roundoff eigenvalues clipped to 0."""
    w, v = np.linalg.eigh((s + s.T) / 2)
    return (v * np.sqrt(_clip_eigs(w))) @ v.T


def frechet_distance(mu1, s1, mu2, s2, eps=0.0):
    """Fréchet distance between N(mu1, s1) and N(mu2, s2), in float64:

        d² = |mu1 - mu2|² + tr(s1) + tr(s2) - 2 tr((s1 s2)^{1/2}).

    tr((s1 s2)^{1/2}) is computed as tr((√s1 s2 √s1)^{1/2}): the same eigenvalues (s1 s2 is similar
    to √s1 s2 √s1), but the latter is symmetric PSD, so eigh gives real, non-negative eigenvalues
    and no complex sqrtm residue to discard; a singular s1 or s2 (n < d) is fine. eps > 0 adds
    eps·I to both covariances first (the pytorch-fid fallback, for comparison).
    """
    mu1, mu2 = np.asarray(mu1, np.float64).ravel(), np.asarray(mu2, np.float64).ravel()
    s1, s2 = np.atleast_2d(np.asarray(s1, np.float64)), np.atleast_2d(np.asarray(s2, np.float64))
    if mu1.shape != mu2.shape or s1.shape != s2.shape or s1.shape != (len(mu1), len(mu1)):
        raise ValueError(f"shape mismatch: mu1 {mu1.shape}, mu2 {mu2.shape}, s1 {s1.shape}, s2 {s2.shape}")
    if eps:
        s1, s2 = s1 + eps * np.eye(len(mu1)), s2 + eps * np.eye(len(mu1))
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    tr_covmean = np.sqrt(_clip_eigs(w)).sum()
    diff = mu1 - mu2
    return float(diff @ diff + np.trace(s1) + np.trace(s2) - 2 * tr_covmean)


def fd_from_features(feats_a, feats_b, name="FD", network="unknown"):
    """Fréchet distance between two feature sets [n, d]: a dict with value, name, network, n."""
    mu1, s1 = feature_stats(feats_a)
    mu2, s2 = feature_stats(feats_b)
    return {"name": name, "value": frechet_distance(mu1, s1, mu2, s2), "network": network,
            "n_a": len(feats_a), "n_b": len(feats_b), "dim": len(mu1)}


# Running moments. cov = (outer - n·mu·muᵀ) / (n - 1) is np.cov's 1/(n-1) covariance; its relative
# roundoff is about 1e-16·(|mean|/std)², negligible for feature networks and latent tokens.


def empty_moments(dim, device=None):
    """Zero moments for d-dim features, on the metrics device (pick_device)."""
    z = dict(dtype=torch.float64, device=pick_device(device))
    return {"n": torch.zeros((), **z), "sum": torch.zeros(dim, **z), "outer": torch.zeros(dim, dim, **z)}


def add_moments(m, feats):
    """Add feature rows [n, d] (any dtype or device) into moments m, in place; returns m."""
    f = torch.as_tensor(feats).detach().reshape(len(feats), -1).to(m["sum"].device, torch.float64)
    m["n"] += len(f)
    m["sum"] += f.sum(0)
    m["outer"] += f.T @ f
    return m


def merge_moments(*ms):
    """The moments of the union of the sets the moments ms came from (their key-wise sum)."""
    return {k: sum(m[k] for m in ms) for k in ms[0]}


def all_reduce_moments(m):
    """Sum moments over the ranks of torch.distributed (in place); a no-op outside torchrun."""
    if dist.is_available() and dist.is_initialized():
        for v in m.values():
            dist.all_reduce(v)
    return m


def moments_mean_cov(m):
    """(mean, covariance with 1/(n-1)) of running moments, float64 numpy, like feature_stats."""
    n = m["n"].item()
    if n < 2:
        raise ValueError(f"need at least 2 feature vectors for a covariance, got {n:.0f}")
    mu = m["sum"] / n
    cov = (m["outer"] - n * torch.outer(mu, mu)) / (n - 1)
    return mu.cpu().numpy(), cov.cpu().numpy()


def mean_cov(x, device=None, chunk=65536):
    """(mean, covariance) of the rows of x [..., d] in float64 on the device, `chunk` rows at a time.

    For token FD: tokens [M, N, C] as M·N samples in R^C never become one float64 numpy array;
    frechet_distance(*mean_cov(real), *mean_cov(fake)) is the token Fréchet distance.
    """
    rows = torch.as_tensor(x).reshape(-1, x.shape[-1])
    m = empty_moments(rows.shape[1], device)
    for i in range(0, len(rows), chunk):
        add_moments(m, rows[i:i + chunk])
    return moments_mean_cov(m)


def fd_from_moments(ma, mb, name="FD", network="unknown"):
    """Fréchet distance between two sets given their running moments: the fd_from_features dict."""
    mu1, s1 = moments_mean_cov(ma)
    mu2, s2 = moments_mean_cov(mb)
    return {"name": name, "value": frechet_distance(mu1, s1, mu2, s2), "network": network,
            "n_a": int(ma["n"].item()), "n_b": int(mb["n"].item()), "dim": len(mu1)}
