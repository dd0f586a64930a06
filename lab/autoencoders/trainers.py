"""RAE, GAE, the KL-VAE and its spherical fine-tune: each a step function on the one loop (fit.fit).

Each trainer is one call a notebook makes: train_rae / train_gae / train_vae / finetune_spherical
(ae, data, steps, batch_size, lr, out_dir, resume, ...) -> history dict. Checkpoints go to
`<out_dir>/checkpoints` (ae.checkpoint_modules(): frozen encoders left out), training curves to
`<out_dir>/tb` (TensorBoard, fit.py's docstring); what trains is
ae.trainable_parameters(). Extra keywords go to fit.fit (betas, grad_clip, ckpt_every, disc, ...).

Frozen parts are computed once: with `cache=True` (default) the frozen encoder's tokens (RAE,
spherical VAE) or the VFM teacher targets (GAE) of every image are precomputed, which is exact
because the data has no random augmentation (photos/fashion crops are fixed per index).

`data`: a tensor [M, 3, H, W] in [0, 1], or a dataset of (image, label) pairs (lab.data).
"""
import os

import torch

from lab import check_choice, trainutil
from lab.autoencoders.fit import as_tensor, default_disc, fit, images_at, load_lpips, precompute
from lab.autoencoders.losses import recon_loss
from lab.autoencoders.noise import RAE_KINDS
from lab.autoencoders.vae import kl_gaussian


def _fit_ae(ae, step, n_data, out_dir, last_layer=None, **kw):
    """fit() on ae's trainable parameters, checkpointing its checkpoint modules; ae in train mode, then eval.

    Training curves go to <out_dir>/tb (unless the caller names another log_dir).
    """
    ae.train()
    kw.setdefault("log_dir", os.path.join(out_dir, "tb") if out_dir else None)
    hist = fit(step, ae.trainable_parameters(), n_data, modules=ae.checkpoint_modules(),
               ckpt_dir=os.path.join(out_dir, "checkpoints") if out_dir else None, last_layer=last_layer, **kw)
    ae.eval()
    return hist


def _last_layer(ae):
    """The decoder's last weight (where the adaptive GAN weight is measured), or None."""
    for owner in (ae, getattr(ae, "vae", None)):
        dec = getattr(owner, "decoder", None)
        if dec is not None and hasattr(dec, "last_layer"):
            return dec.last_layer
    return None


# ----------------------------------------------------------------------------- RAE

def train_rae(ae, data, steps=2000, batch_size=32, lr=2e-4, out_dir=None, resume=True, noise_tau=None,
              noise=None, l1_weight=1.0, lpips_weight=0.0, cache=True, tokens=None, seed=0, device=None, **fit_kw):
    """Train an RAE decoder on frozen-encoder tokens with noise-augmented decoding (noise.rae_noise).

    noise_tau / noise override ae.noise_tau / ae.noise ('abs_normal' | 'uniform'). Latent
    statistics (latent_norm='channel') are fitted on `data` first. Loss: l1 * L1 + lpips * LPIPS
    (RAE also uses a GAN: disc=fit.default_disc(64)). tokens: ae.teacher_features of every image of
    `data`, if already computed (e.g. shared between runs); else computed when cache.
    """
    if noise_tau is not None:
        ae.noise_tau = float(noise_tau)
    if noise is not None:
        check_choice("noise", noise, RAE_KINDS)
        ae.noise = noise
    device = trainutil.pick_device(device)
    ae.to(device)
    images = as_tensor(data)
    if tokens is None and cache:
        tokens = precompute(ae.teacher_features, images, device=device, desc="encode (frozen)")
    if ae.latent_norm == "channel" and not bool(ae.stats.fitted):
        ae.fit_latent_stats(images, tokens=tokens)
    lpips_net = load_lpips("alex" if lpips_weight > 0 else None, device)

    def step(idx, gen, k):
        x = images_at(images, idx).to(device)
        z = ae.normalize(tokens[idx].to(device)) if tokens is not None else ae.encode(x)
        x_hat = ae.decode_raw(ae.add_noise(z, gen))
        loss, parts = recon_loss(x_hat, x, lpips_net, w_l1=l1_weight, w_lpips=lpips_weight)
        return dict(loss=loss, rec=loss, parts=parts, x=x, x_hat=x_hat)

    return _fit_ae(ae, step, len(images), out_dir, _last_layer(ae), steps=steps, batch_size=batch_size, lr=lr,
                   resume=resume, seed=seed, device=device, desc=f"RAE tau={ae.noise_tau:g}", **fit_kw)


# ----------------------------------------------------------------------------- GAE

def train_learned_teacher(teacher, feats, grid, steps=300, batch_size=64, lr=1e-3, seed=0, device=None):
    """Fit GAE's learned downsampler on VFM tokens feats [M, N, C] by cosine reconstruction, then freeze it.

    Returns its loss per step.
    """
    device = trainutil.pick_device(device)
    teacher.to(device).train().requires_grad_(True)

    def step(idx, gen, k):
        loss = teacher.loss(feats[idx].to(device), grid)
        return dict(loss=loss, rec=loss)

    hist = fit(step, teacher.parameters(), len(feats), steps=steps, batch_size=batch_size, lr=lr, seed=seed,
               device=device, weight_decay=0.01, grad_clip=0.0, desc="GAE teacher")
    teacher.eval().requires_grad_(False)
    teacher.fitted.fill_(True)
    return hist["loss"]


def fit_teacher(ae, images, steps=300, lr=1e-3, seed=0, device=None, feats=None):
    """Fit the GAE's compact teacher on the VFM tokens of `images` (SVD, or the learned downsampler
    for `steps`); returns the learned teacher's losses ([] for SVD). feats: those tokens
    (ae.vfm_features of every image), if already computed."""
    if feats is None:
        feats = precompute(ae.vfm_features, images, device=device, desc="VFM tokens")
    if ae.teacher_kind == "svd":
        ae.teacher.fit(feats)
        return []
    return train_learned_teacher(ae.teacher, feats, ae.grid, steps, lr=lr, seed=seed, device=device)


def train_gae(ae, data, steps=2000, batch_size=32, lr=2e-4, out_dir=None, resume=True, noise_std=None,
              align_weight=1.0, l1_weight=1.0, lpips_weight=0.0, teacher_steps=300, teacher_lr=1e-3,
              cache=True, vfm_feats=None, kl_weight=0.1, seed=0, device=None, **fit_kw):
    """Train a GAE: reconstruction of the dynamically-noised latent + align_weight * semantic loss.

    latent_reg='kl' GAEs (GAE Tab 7) decode a posterior draw instead and add kl_weight * KL per latent
    entry (GAE §5.4.3 trains its KL arm with weight 0.1; the per-entry mean matches train_vae's).

    noise_std overrides ae.noise_std (GAE's C_sigma, a standard deviation). The compact teacher is
    fitted first if it is not yet (fit_teacher), then frozen. Returns the history (with 'teacher'
    losses for a learned teacher). vfm_feats: ae.vfm_features of every image of `data`, if already
    computed (zoo shares them between the GAEs of one data set); with cache, else computed here
    once, for both the teacher fit and the alignment targets.
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
    aligned = ae.vfm is not None and align_weight > 0
    fit_now = ae.teacher is not None and not ae.teacher_ready()
    if vfm_feats is None and cache and (aligned or fit_now):
        vfm_feats = precompute(ae.vfm_features, images, device=device, desc="VFM tokens")
    if fit_now:
        teacher_losses = fit_teacher(ae, images, teacher_steps, teacher_lr, seed, device, feats=vfm_feats)
    targets = None
    if aligned and vfm_feats is not None:
        targets = torch.cat([ae.targets_from(f.to(device)).cpu() for f in vfm_feats.split(64)])
    lpips_net = load_lpips("alex" if lpips_weight > 0 else None, device)

    def step(idx, gen, k):
        x = images_at(images, idx).to(device)
        h, mu = ae.encoder(x)
        z, kl = ae.sample_latent(h, mu, gen)
        x_hat = ae.decode_raw(z)
        rec, parts = recon_loss(x_hat, x, lpips_net, w_l1=l1_weight, w_lpips=lpips_weight)
        loss = rec
        if kl is not None:
            loss = loss + kl_weight * kl
            parts["kl"] = kl.detach()
        if aligned:
            target = targets[idx].to(device) if targets is not None else ae.teacher_features(x)
            align = ae.alignment_loss(mu, h, target)
            loss = loss + align_weight * align
            parts["align"] = align.detach()
        return dict(loss=loss, rec=rec, parts=parts, x=x, x_hat=x_hat)

    hist = _fit_ae(ae, step, len(images), out_dir, _last_layer(ae), steps=steps, batch_size=batch_size, lr=lr,
                   resume=resume, seed=seed, device=device, desc=f"GAE d={ae.latent_dim}", **fit_kw)
    if teacher_losses:
        hist["teacher"] = teacher_losses
    return hist


# ----------------------------------------------------------------------------- KL-VAE and its spherical fine-tune

def train_vae(vae, data, steps=2000, batch_size=32, lr=2e-4, out_dir=None, resume=True, kl_weight=1e-3,
              l1_weight=1.0, lpips_weight=0.0, seed=0, device=None, **fit_kw):
    """Train the KL-VAE: L1 (+ LPIPS) of a reparameterised sample's decoding + kl_weight * KL per latent entry."""
    device = trainutil.pick_device(device)
    vae.to(device)
    images = as_tensor(data)
    lpips_net = load_lpips("alex" if lpips_weight > 0 else None, device)

    def step(idx, gen, k):
        x = images_at(images, idx).to(device)
        mean, logvar = vae.encode_dist(x)
        x_hat = vae.decode_raw(vae.sample(mean, logvar, gen))
        rec, parts = recon_loss(x_hat, x, lpips_net, w_l1=l1_weight, w_lpips=lpips_weight)
        kl = kl_gaussian(mean.float(), logvar.float()).mean()
        parts["kl"] = kl.detach()
        return dict(loss=rec + kl_weight * kl, rec=rec, parts=parts, x=x, x_hat=x_hat)

    return _fit_ae(vae, step, len(images), out_dir, _last_layer(vae), steps=steps, batch_size=batch_size, lr=lr,
                   resume=resume, seed=seed, device=device, desc="KL-VAE", **fit_kw)


def finetune_spherical(svae, data, steps=1000, batch_size=32, lr=1e-4, out_dir=None, resume=True,
                       l1_weight=1.0, lpips_weight=0.0, gan_weight=0.0, disc=None, cache=True, seed=0,
                       device=None, **fit_kw):
    """Fine-tune the decoder of a SphericalVAE on its projected latents: L1 + LPIPS (+ GAN), no KL.

    gan_weight > 0 turns the GAN on with `disc` (default: fit.default_disc, frozen DINO features)
    and the adaptive weight.
    """
    device = trainutil.pick_device(device)
    svae.to(device)
    images = as_tensor(data)
    tokens = precompute(svae.encode, images, device=device, desc="encode (frozen)") if cache else None
    if gan_weight > 0 and disc is None:
        disc = default_disc(images_at(images, torch.arange(1)).shape[-1])
    lpips_net = load_lpips("alex" if lpips_weight > 0 else None, device)

    def step(idx, gen, k):
        x = images_at(images, idx).to(device)
        z = tokens[idx].to(device) if tokens is not None else svae.encode(x)
        x_hat = svae.decode_raw(z)
        loss, parts = recon_loss(x_hat, x, lpips_net, w_l1=l1_weight, w_lpips=lpips_weight)
        return dict(loss=loss, rec=loss, parts=parts, x=x, x_hat=x_hat)

    return _fit_ae(svae, step, len(images), out_dir, _last_layer(svae), steps=steps, batch_size=batch_size, lr=lr,
                   resume=resume, seed=seed, device=device, disc=disc if gan_weight > 0 else None,
                   gan_weight=gan_weight, desc="spherical fine-tune", **fit_kw)
