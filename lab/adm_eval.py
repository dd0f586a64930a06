"""Evaluation as the papers do: ADM's .npz sample and reference batches, and the numbers of ADM's
evaluator (guided-diffusion `evaluations/evaluator.py`) on an Inception-v3 from the user's file.

Files (ADM's format): an .npz whose `arr_0` is uint8 images [N, H, W, 3]; a class-conditional sample
batch adds its labels as `arr_1` (ADM saves `np.savez(path, images, labels)`). A reference batch
such as VIRTUAL_imagenet256_labeled.npz also holds its statistics: `mu`, `sigma` (pool_3, 2048-d)
and `mu_s`, `sigma_s` (spatial, 2023-d). Batches are streamed from the zip, never loaded whole.

The numbers, as ADM computes them (formulas and facts from ADM; every line written here):
- FID: Fréchet distance between pool_3 statistics (lab.frechet, float64).
- sFID: the same on spatial features: the first 7 channels of TF's `mixed_6/conv`, 17x17, flattened
  in HWC order (7·17·17 = 2023). TF's mixed, mixed_1, mixed_2 are torchvision's Mixed_5b-5d and
  mixed_3 ... mixed_7 are Mixed_6a-6e, so mixed_6 is Mixed_6d (not 6e), and its `conv` is the 1x1
  branch after batch norm and ReLU: Mixed_6d.branch1x1's output.
- IS: exp(mean_x KL(p(y|x) || p(y))) with p(y|x) = softmax(pool_3 · Wᵀ) over the fc's classes (1008
  for the FID Inception), without the fc bias (ADM multiplies by the weight of softmax/logits/MatMul
  only), averaged over splits of 5000 samples (10 splits for 50 000).
- precision / recall: Kynkäänniemi et al. 2019, k = 3, on pool_3 (ADM's ManifoldEstimator), the
  reference batch as the real set: lab.metrics.precision_recall (float64 distances; ADM uses fp16
  distances with an fp32 fallback).

Only the FID Inception (pytorch-fid's port of the TF graph, pt_inception-2015-12-05-6726825d.pth) at
299 px gives numbers that compare with papers' tables, and even then ADM runs the TF graph itself,
whose bilinear resize differs from PyTorch's, so the last digits can differ. Every key of the result
names the weights file that produced the number; a `caveat` says when they do not compare.
"""
import contextlib
import zipfile
from pathlib import Path

import numpy as np
import torch

from lab import check_choice, evaluate, feature_nets, metrics
from lab.frechet import add_moments, empty_moments, frechet_distance, moments_mean_cov
from lab.infra.cache import atomic_write, sha256
from lab.trainutil import pick_device, step_seed

SPATIAL_CHANNELS = 7          # ADM keeps mixed_6/conv[..., :7]
IS_SPLIT = 5000               # ADM's compute_inception_score(split_size=5000)
PR_K = 3                      # ADM's ManifoldEstimator(nhood_sizes=(3,))
MIN_SIZE = 75                 # the smallest input torchvision's inception_v3 runs on
FID_SHA256_PREFIX = "6726825d"  # the hash in pytorch-fid's file name (torch.hub's naming convention)
METRICS = ("FID", "sFID", "IS", "precision", "recall")
REF_STATS = {"pool": ("mu", "sigma"), "spatial": ("mu_s", "sigma_s")}


def metric_key(metric, inception_name):
    """The result key of one number: the metric and the Inception weights file that produced it."""
    check_choice("metric", metric, METRICS)
    return f"{metric} (inception: {inception_name})"


# ----------------------------------------------------------------------------- sample batches

def to_uint8_nhwc(images01):
    """Float images [B, 3, H, W] in [0, 1] -> uint8 numpy [B, H, W, 3], rounded (ADM and RAE truncate,
    which turns some k/255 into k - 1; rounding gives back the uint8 an image was read from)."""
    x = torch.as_tensor(images01).detach().float().clamp(0, 1)
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"to_uint8_nhwc: expected float images [B, 3, H, W], got {tuple(x.shape)}")
    return (x * 255).round().to(torch.uint8).permute(0, 2, 3, 1).contiguous().cpu().numpy()


def equal_labels(n, num_classes, seed=0):
    """RAE's 'equal' label sampling: each class n / num_classes times, in a random order fixed by seed
    (arange(C).repeat_interleave(n / C) permuted by torch.randperm(n) from a Generator seeded `seed`)."""
    if num_classes < 1 or n < 1 or n % num_classes:
        raise ValueError(f"equal_labels: n={n} must be a positive multiple of num_classes={num_classes} "
                         f"(every class equally often); e.g. n={max(1, n // max(num_classes, 1)) * max(num_classes, 1)}")
    pool = torch.arange(num_classes).repeat_interleave(n // num_classes)
    return pool[torch.randperm(n, generator=torch.Generator().manual_seed(seed))]


def _check_images(shape, dtype, what):
    if dtype != np.uint8 or len(shape) != 4 or shape[-1] != 3:
        raise ValueError(f"{what}: expected uint8 images [N, H, W, 3] (ADM's arr_0), got {dtype} {tuple(shape)}; "
                         "float images [B, 3, H, W] in [0, 1] go through to_uint8_nhwc first")


def _check_target(path, overwrite):
    path = Path(path)
    if path.suffix != ".npz":
        raise ValueError(f"{path}: the file name must end in .npz (np.savez would append it otherwise)")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} exists and is kept; choose another path or pass overwrite=True")
    return path


def _write_npz(path, arrays, overwrite):
    """np.savez of arrays (positional -> arr_0, arr_1, ...; named as given) written atomically; an
    existing file is never replaced unless overwrite."""
    path = _check_target(path, overwrite)

    def write(tmp):
        with open(tmp, "wb") as f:  # a file object, so numpy appends no .npz to the temporary name
            np.savez(f, *arrays.get("positional", ()), **arrays.get("named", {}))
    return atomic_write(path, write)


def save_samples_npz(path, images_uint8_nhwc, labels=None, overwrite=False):
    """Write an ADM sample batch: uint8 images [N, H, W, 3] as arr_0, int64 labels [N] as arr_1 if given."""
    images = np.asarray(torch.as_tensor(images_uint8_nhwc).cpu())
    _check_images(images.shape, images.dtype, f"save_samples_npz({path})")
    arrays = [images]
    if labels is not None:
        labels = np.asarray(torch.as_tensor(labels).cpu()).astype(np.int64)
        if labels.shape != (len(images),):
            raise ValueError(f"save_samples_npz({path}): labels must be [N] = [{len(images)}], got {labels.shape}")
        arrays.append(labels)
    return _write_npz(path, {"positional": arrays}, overwrite)


def export_samples(path, gen, ae, n, shape, num_classes, seed=0, batch_size=256, overwrite=False, **sample_kw):
    """Sample n latents of per-sample `shape` from a class-conditional generator with RAE's 'equal'
    labels, decode them with `ae` and write an ADM sample batch (arr_0 images, arr_1 labels).

    Chunks of batch_size are sampled and decoded one at a time (only the uint8 images are kept);
    chunk k draws its noise from seed step_seed(seed, k). sample_kw go to evaluate.generate (method,
    steps, prior, cfg_scale, decode_radius, shift, device)."""
    _check_target(path, overwrite)  # before any sampling, not after it
    labels = equal_labels(n, num_classes, seed)
    images = None
    for k, i in enumerate(range(0, n, batch_size)):
        y = labels[i:i + batch_size]
        z, _ = evaluate.generate(gen, len(y), shape, labels=y, num_classes=num_classes, seed=step_seed(seed, k),
                                 batch_size=batch_size, **sample_kw)
        chunk = to_uint8_nhwc(evaluate.decode_batched(ae, z, batch_size))
        if images is None:
            images = np.empty((n, *chunk.shape[1:]), np.uint8)
        images[i:i + len(y)] = chunk
    return save_samples_npz(path, images, labels, overwrite)


@contextlib.contextmanager
def _npy_member(path, key):
    """The open .npy stream of one array of an .npz, positioned after its header, with (shape, dtype)."""
    try:
        z = zipfile.ZipFile(path)
    except (zipfile.BadZipFile, OSError) as e:
        raise ValueError(f"{path} is not a readable .npz ({e}); a cut file has to be written again") from None
    with z:
        names = [n[:-4] for n in z.namelist() if n.endswith(".npy")]
        if key not in names:
            raise ValueError(f"{path}: no array {key!r} (it has {names}); ADM batches keep images in arr_0")
        with z.open(key + ".npy") as f:
            version = np.lib.format.read_magic(f)
            read = {(1, 0): np.lib.format.read_array_header_1_0, (2, 0): np.lib.format.read_array_header_2_0}
            if version not in read:
                raise ValueError(f"{path}: {key} is a .npy of version {version}; rewrite it with np.savez")
            shape, fortran, dtype = read[version](f)
            if fortran:
                raise ValueError(f"{path}: {key} is stored in Fortran order; rewrite it with np.savez(np.ascontiguousarray(...))")
            yield f, shape, dtype


def npz_image_shape(path):
    """The shape [N, H, W, 3] of an ADM batch's arr_0, read from its header (checked uint8 NHWC)."""
    with _npy_member(path, "arr_0") as (_, shape, dtype):
        _check_images(shape, dtype, f"{path} arr_0")
        return shape


def iter_npz_images(path, batch_size=64):
    """uint8 batches [b, H, W, 3] of an ADM batch's arr_0, read from the zip in order, never whole."""
    npz_image_shape(path)
    with _npy_member(path, "arr_0") as (f, shape, dtype):
        row = int(np.prod(shape[1:])) * dtype.itemsize
        for i in range(0, shape[0], batch_size):
            b = min(batch_size, shape[0] - i)
            data = f.read(b * row)
            if len(data) != b * row:
                raise ValueError(f"{path}: arr_0 ends after {i + len(data) // row} of {shape[0]} images (cut file?)")
            yield np.frombuffer(data, dtype).reshape(b, *shape[1:])


# ----------------------------------------------------------------------------- Inception outputs

def load_inception(path, size=299, device=None):
    """The user's Inception-v3 (lab.feature_nets.inception_fid) on the metrics device. size: the input
    resolution; the papers' numbers need 299, a smaller one (>= 75) is for fast tests only."""
    if not isinstance(size, int) or size < MIN_SIZE:
        raise ValueError(f"size={size!r}: Inception-v3 needs an int >= {MIN_SIZE} (299 for comparable numbers)")
    return feature_nets.inception_fid(path, size=size).to(pick_device(device))


@contextlib.contextmanager
def _exact_fp32():
    """No TF32 in convolutions or matmuls (cuDNN allows it by default): ADM's features are fp32."""
    before = torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False
    try:
        with torch.inference_mode():
            yield
    finally:
        torch.backends.cudnn.allow_tf32, torch.backends.cuda.matmul.allow_tf32 = before


def inception_outputs(model, images_uint8_nhwc):
    """{'pool' [B, 2048], 'spatial' [B, 7·h·w] (2023 at 299 px), 'logits' [B, classes]} in fp32 on the
    model's device, for uint8 images [B, H, W, 3]. spatial: Mixed_6d.branch1x1 (TF mixed_6/conv), NHWC,
    channels [:7], flattened as ADM flattens the TF tensor; logits: pool · fcᵀ without the bias (ADM)."""
    dev = next(model.parameters()).device
    grabbed = []
    hook = model.net.Mixed_6d.branch1x1.register_forward_hook(lambda m, i, out: grabbed.append(out))
    try:
        with _exact_fp32():  # torch.tensor copies: streamed batches are read-only
            x = torch.tensor(np.asarray(images_uint8_nhwc)).to(dev).permute(0, 3, 1, 2).float() / 255
            pool = model(x).float()
            spatial = grabbed[-1].permute(0, 2, 3, 1)[..., :SPATIAL_CHANNELS].reshape(len(x), -1).float()
            logits = pool @ model.net.fc.weight.float().T
    finally:
        hook.remove()
    return {"pool": pool, "spatial": spatial, "logits": logits}


def npz_activations(model, path, batch_size=64):
    """Stream an ADM batch through the network: running float64 moments of pool and spatial features
    (lab.frechet), pool features [N, 2048] on the device (for precision/recall) and logits on the CPU."""
    moments, pools, logits = {}, [], []
    for batch in iter_npz_images(path, batch_size):
        out = inception_outputs(model, batch)
        for kind in REF_STATS:
            m = moments.setdefault(kind, empty_moments(out[kind].shape[1], out[kind].device))
            add_moments(m, out[kind])
        pools.append(out["pool"])
        logits.append(out["logits"].cpu())
    return {"moments": moments, "pool": torch.cat(pools), "logits": torch.cat(logits)}


# ----------------------------------------------------------------------------- reference batches

def read_reference(path, model=None, activations=None, batch_size=64):
    """A reference batch's statistics {'mu', 'sigma', 'mu_s', 'sigma_s'} (float64) and where they came
    from ('stored' in the file, as in ADM's batches, or 'computed from arr_0' with `model`, or from
    `activations` = npz_activations(model, path) when the caller has them already)."""
    with np.load(path) as f:
        stored = {k: f[k].astype(np.float64) for pair in REF_STATS.values() for k in pair if k in f.files}
    out = {}
    for kind, (mu, sigma) in REF_STATS.items():
        if mu in stored and sigma in stored:
            out[mu], out[sigma], out[f"{kind} statistics"] = stored[mu], stored[sigma], "stored"
            continue
        if activations is None:
            if model is None:
                raise ValueError(f"{path} holds no {mu}/{sigma}: pass model= (load_inception) to compute them from arr_0")
            activations = npz_activations(model, path, batch_size)
        out[mu], out[sigma] = moments_mean_cov(activations["moments"][kind])
        out[f"{kind} statistics"] = "computed from arr_0"
    return out


def save_reference_npz(path, images_uint8_nhwc, model, batch_size=64, overwrite=False):
    """Write a reference batch in ADM's layout: arr_0 (the images) with mu, sigma, mu_s, sigma_s
    computed on `model`, so later evaluations read the statistics instead of recomputing them."""
    images = np.asarray(torch.as_tensor(images_uint8_nhwc).cpu())
    _check_images(images.shape, images.dtype, f"save_reference_npz({path})")
    moments = {}
    for i in range(0, len(images), batch_size):
        out = inception_outputs(model, images[i:i + batch_size])
        for kind in REF_STATS:
            add_moments(moments.setdefault(kind, empty_moments(out[kind].shape[1], out[kind].device)), out[kind])
    named = {"arr_0": images}
    for kind, (mu, sigma) in REF_STATS.items():
        named[mu], named[sigma] = moments_mean_cov(moments[kind])
    return _write_npz(path, {"named": named}, overwrite)


# ----------------------------------------------------------------------------- the numbers

def inception_score(logits, split_size=IS_SPLIT):
    """ADM's Inception Score in float64: per split of `split_size` samples exp(mean_x KL(p(y|x) || p(y)))
    with p(y) the split's mean prediction, then the mean over splits."""
    logp = torch.log_softmax(torch.as_tensor(logits).double(), dim=1)
    scores = []
    for i in range(0, len(logp), split_size):
        part = logp[i:i + split_size]
        log_py = torch.logsumexp(part, 0) - np.log(len(part))  # log of the mean of p(y|x) over x
        scores.append((part.exp() * (part - log_py)).sum(1).mean().exp().item())
    return float(np.mean(scores))


def comparability_caveat(model, sha256, size):
    """None when the network is the FID Inception at 299 px, else why the numbers do not compare with
    papers' tables."""
    if not model.fid_standard:
        return ("these weights are not the TF FID Inception (1008 classes, pt_inception-2015-12-05): the "
                "numbers do not compare with papers' tables, only with each other")
    if size != 299:
        return f"images were resized to {size} px, not 299: the numbers do not compare with papers' tables"
    if not sha256.startswith(FID_SHA256_PREFIX):
        return (f"a 1008-class Inception whose sha256 does not start with {FID_SHA256_PREFIX} (the hash in "
                "pt_inception-2015-12-05-6726825d.pth's name): if it is not that file, the numbers do not "
                "compare with papers' tables")
    return None


def _check_dims(ref, moments, ref_npz, size):
    for kind, (mu, _) in REF_STATS.items():
        if ref[mu].shape != moments[kind]["sum"].shape:
            raise ValueError(f"{ref_npz}: stored {mu} has {ref[mu].shape[0]} dims, this network gives "
                             f"{moments[kind]['sum'].shape[0]} at {size} px (ADM's are 2048 and 2023 at 299)")


def evaluate_npz(sample_npz, ref_npz, inception_path, batch_size=64, device=None, size=299):
    """FID, sFID, IS, precision and recall of an ADM sample batch against an ADM reference batch,
    computed as ADM's evaluator does, on the Inception-v3 in `inception_path`.

    Keys name what produced each number (metric_key: 'FID (inception: <file name>)', ...), plus the
    sizes, where the reference statistics came from, the weights' sha256 and, when the numbers do
    not compare with papers' tables, a 'caveat'."""
    name = Path(inception_path).name
    model = load_inception(inception_path, size, device)
    for p in (sample_npz, ref_npz):  # a wrong file fails before any compute
        if npz_image_shape(p)[0] <= PR_K:
            raise ValueError(f"{p}: {npz_image_shape(p)[0]} images; precision/recall need more than k={PR_K} "
                             "(the papers use 50 000 samples against 10 000 reference images)")
    ref_acts = npz_activations(model, ref_npz, batch_size)
    ref = read_reference(ref_npz, activations=ref_acts)
    _check_dims(ref, ref_acts["moments"], ref_npz, size)
    acts = npz_activations(model, sample_npz, batch_size)
    stats = {}
    for kind, (mu, sigma) in REF_STATS.items():
        stats[mu], stats[sigma] = moments_mean_cov(acts["moments"][kind])
    pr = metrics.precision_recall(ref_acts["pool"], acts["pool"], k=PR_K, network=model.lab_label)
    sha = sha256(inception_path)
    out = {metric_key("FID", name): frechet_distance(stats["mu"], stats["sigma"], ref["mu"], ref["sigma"]),
           metric_key("sFID", name): frechet_distance(stats["mu_s"], stats["sigma_s"], ref["mu_s"], ref["sigma_s"]),
           metric_key("IS", name): inception_score(acts["logits"]),
           metric_key("precision", name): pr["precision"],
           metric_key("recall", name): pr["recall"],
           "samples": str(sample_npz), "n_samples": len(acts["pool"]),
           "reference": str(ref_npz), "n_reference": len(ref_acts["pool"]),
           "reference statistics": {k: ref[f"{k} statistics"] for k in REF_STATS},
           "inception": f"{model.lab_label}, {name}", "inception sha256": sha, "input size": size}
    caveat = comparability_caveat(model, sha, size)
    if caveat:
        out["caveat"] = caveat
    return out
