"""Generation quality: sample latents from a generator, decode them, compare with real data.

Two views of the same samples, so a reader can tell a generator problem from a decoder one:
- `FD-tokens`: Fréchet distance between generated and real latent *tokens* (each token a sample
  in R^C), no network involved;
- `FD-effnet`: Fréchet distance between decoded samples and real images on EfficientNet-Lite0
  features (lab.metrics). Never called FID. Both are biased at small n: compare at equal n only.
On the same EfficientNet features: `kid_images` (KID, unbiased at small n) and improved precision /
recall (k = 3), so guidance collapsing samples onto prototypes shows as recall falling.
"""
import torch

from lab import class_agreement, metrics, samplers
from lab import geometry as geo

# Notebook 05 compares class agreement with and without CFG on the same generator and seed: the
# unguided samples draw their noise from seed + NOCFG_SEED_OFFSET, so the two agreements come from
# independent draws (the same noise under two guidance scales would correlate the two estimates).
NOCFG_SEED_OFFSET = 10_000
KID_SUBSETS, KID_SUBSET_SIZE, PR_K = 10, 1000, 3  # clean-fid's KID subsets; Kynkäänniemi et al.'s k


def nocfg_seed(seed):
    """The noise seed of the samples drawn without guidance for configuration seed `seed`."""
    return int(seed) + NOCFG_SEED_OFFSET


def _device_of(module, device=None):
    """`device` if given, else where the module's parameters live (CPU for a parameterless module)."""
    if device is not None:
        return torch.device(device)
    params = module.parameters() if hasattr(module, "parameters") else iter(())
    return next((p.device for p in params), torch.device("cpu"))


@torch.no_grad()
def generate(gen, n, shape, *, method="euler", steps=50, prior="gaussian", cfg_scale=1.0, cfg_interval=(0.0, 1.0),
             labels=None, num_classes=None, decode_radius=None, shift=True, batch_size=256, seed=0, device=None):
    """n latents of per-sample `shape` (N, C) on the CPU; labels cycle through the classes unless given.

    Sampled on the generator's device (or `device`); shift as in samplers.sample: use the setting the
    generator was trained with; cfg_interval as there (guidance only inside it). All noise comes from
    one torch.Generator seeded `seed`.
    """
    num_classes = num_classes or getattr(gen, "num_classes", 1)
    if labels is None:
        labels = torch.arange(n) % num_classes
    device = _device_of(gen, device)
    g = torch.Generator(device=device).manual_seed(seed)
    out = []
    for s in range(0, n, batch_size):
        y = labels[s:s + batch_size].to(device)
        out.append(samplers.sample(gen, (len(y), *shape), y, method=method, steps=steps, prior=prior,
                                   cfg_scale=cfg_scale, cfg_interval=cfg_interval, null_class=num_classes,
                                   decode_radius=decode_radius, shift=shift, generator=g, device=device).cpu())
    return torch.cat(out), labels


@torch.no_grad()
def decode_batched(ae, z, batch_size=128, device=None):
    """ae.decode of latents z in batches on the decoder's device: images in [0, 1], fp32, on the CPU.

    The one batched decode of the lab (probes, notebooks and `quality` call it).
    """
    device = _device_of(ae, device)
    return torch.cat([ae.decode(z[i:i + batch_size].to(device)).float().clamp(0, 1).cpu()
                      for i in range(0, len(z), batch_size)])


decode = decode_batched  # the name notebooks 06 and 07 use


def token_fd(real, fake, device=None):
    """Fréchet distance between token clouds [M, N, C] -> tokens as samples in R^C.

    Mean and covariance are running float64 moments in torch on `device` (default: the lab's device,
    pick_device, so the GPU when there is one, wherever the latents are), a chunk of tokens at a
    time: the M·N tokens never become one float64 array. Only the C x C formula runs in numpy.
    """
    return metrics.frechet_distance(*metrics.mean_cov(real, device), *metrics.mean_cov(fake, device))


def norm_summary(z):
    """Mean and coefficient of variation of per-token norms."""
    n = z.float().norm(dim=-1)
    return dict(norm_mean=float(n.mean()), norm_cv=float(n.std() / n.mean()))


def quality(ae, fake_latents, real_latents, real_feats, *, decode_radius=None, features="effnet", feature_size=224,
            classifier=None, requested=None):
    """FD-tokens against real latents, FD, KID (kid_images) and precision / recall (k = PR_K) on `features`
    of decoded samples against real images, norm stats, and (with a classifier) class agreement.

    real_feats: features of the real images at `feature_size` px, computed once by the caller since
    every configuration compares against the same set. classifier / requested: a
    lab.class_agreement classifier on the same features and the class each sample was asked for;
    the samples' features are computed once and serve both the FD and the agreement.
    """
    z = fake_latents if decode_radius is None else geo.to_sphere(fake_latents, decode_radius)
    images = decode_batched(ae, z)
    fake_feats = metrics.extract_features(images, features, size=feature_size)
    fd = metrics.fd_from_features(real_feats, fake_feats, metrics.FD_NAMES[features], metrics.NETWORKS[features])
    out = dict(fd_tokens=token_fd(real_latents, fake_latents), fd_images=fd["value"], fd_name=fd["name"],
               fd_network=fd["network"], n=len(fake_latents),
               kid_images=metrics.kid(real_feats, fake_feats, KID_SUBSETS, KID_SUBSET_SIZE)["value"])
    pr = metrics.precision_recall(real_feats, fake_feats, k=PR_K)
    out.update(precision=pr["precision"], recall=pr["recall"])
    out.update(norm_summary(fake_latents))
    if classifier is not None:
        out["class_agreement"] = class_agreement.agreement(classifier, fake_feats, requested)
    return out, images


def sample_quality(gen, ae, n, real_latents, real_feats, *, method, steps, prior, cfg_scale=1.0,
                   cfg_interval=(0.0, 1.0), seed=0, feature_size=224, classifier=None):
    """Sample n latents from `gen` (classes cycling; guidance cfg_scale inside cfg_interval), decode them
    and score them: `quality` with the class agreement against the requested classes when a classifier
    is given. Returns (quality dict, decoded images, requested labels)."""
    fake, asked = generate(gen, n, real_latents.shape[1:], method=method, steps=steps, prior=prior,
                           cfg_scale=cfg_scale, cfg_interval=cfg_interval, shift=getattr(gen, "shift", True),
                           seed=seed)
    q, images = quality(ae, fake, real_latents, real_feats, feature_size=feature_size, classifier=classifier,
                        requested=asked)
    return q, images, asked
