"""The four progressive HAE / DINO-SAE training stages, each one resumable call on the one loop (fit.fit).

    stage 1: stem + decoder          L1 + LPIPS + lambda_cos * align(student, teacher)
    stage 2: stem + decoder          stage 1 + w_gan * lambda_adapt * hinge_G(D(x_hat)); D trains too
    stage 3: decoder only            L1 + LPIPS (+ GAN); the encoder is frozen
    stage 4: decoder only            as stage 3, decoding z + sigma * eps   (latent smoothing, Eq. 10)

Stage 4 noise is DINO-SAE Eq. 10 on the latent itself (noise.dino_sae_smoothing): sigma ~ U(0, tau)
per sample ('uniform'), or sigma = tau * k / (steps - 1) for the whole batch at step k ('ramp': the
noise grows over the stage). noise_relative=True scales it by each token's RMS instead (the lab's
earlier form, not the paper's; DINOv2-S tokens have RMS about 2, so it doubles the noise at equal
tau). The default, used by every notebook, is the paper's absolute form.

train_stages runs the four in order (what lab.zoo.hae trains); train_stage runs one.

Exact resume: every random draw of step k (batch indices, sigma, eps) comes from generators seeded by
(seed, k, stream=stage), so a run killed after a checkpoint at step k and resumed reproduces the run
that was never killed. Each stage checkpoints under out_dir/stage<k>/ (lab.trainutil layout); a
stage that starts without its own checkpoint takes the weights of the newest earlier stage found
under out_dir, and writes its training curves to out_dir/tb/stage<k>/ (TensorBoard: one run per stage).
"""
import copy
import os

import torch

from lab import check_choice
from lab.autoencoders.disc import DinoDisc
from lab.autoencoders.fit import fit, images_at, load_lpips
from lab.autoencoders.losses import recon_loss
from lab.autoencoders.noise import SCHEDULES, dino_sae_sigma, dino_sae_smoothing
from lab.trainutil import latest_checkpoint, load_checkpoint, pick_device, requires_grad

STAGES = (1, 2, 3, 4)
LAMBDA_COS = 0.5  # DINO-SAE §4.1 (lambda_cos = 0.5) and HAE App. B.3 Tab. 9 (cosine similarity weight 0.5)
# DINO-SAE §4.1's learning rates, as multiples of stage 1's: 1e-5, 1e-4 (GAN), 1e-4, 5.4e-5 (noise).
STAGE_LR = (1.0, 10.0, 10.0, 5.4)
# DINO-SAE §4.1's betas: (0.9, 0.999) in stage 1, (0.5, 0.9) from the GAN stage on (kept in stages 3-4).
# Stage 1 keeps the lab's (0.9, 0.95) (the paper: 0.999), the setting its PSNR-vs-steps curve was measured at.
STAGE_BETAS = ((0.9, 0.95), (0.5, 0.9), (0.5, 0.9), (0.5, 0.9))


def _load_previous_stage(out_dir, stage, modules):
    """Weights of the newest checkpoint of an earlier stage (those modules it has); its path or None."""
    for prev in range(stage - 1, 0, -1):
        path = latest_checkpoint(os.path.join(out_dir, f"stage{prev}"))
        if path is None:
            continue
        have = {k: m for k, m in modules.items() if os.path.isfile(os.path.join(path, f"{k}.safetensors"))}
        load_checkpoint(path, have, restore_rng=False)
        return path
    return None


def stage_parameters(ae, stage):
    """What trains in `stage`: stem (+ blocks) and decoder in stages 1-2, the decoder alone in 3-4.

    Everything else is switched to requires_grad=False, so a frozen encoder costs no gradients.
    """
    requires_grad(ae, False)
    params = (ae.encoder_parameters() if stage <= 2 else []) + list(ae.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    return params


def train_stage(ae, data, stage=1, *, steps=500, batch_size=16, lr=2e-4, betas=(0.9, 0.95),
                lambda_cos=LAMBDA_COS, teacher_tokens=None, w_l1=1.0, w_lpips=1.0, lpips_net="alex",
                gan=None, disc=None, w_gan=0.5, disc_lr=None, disc_warmup=100,
                noise_tau=0.8, noise_schedule="uniform", noise_relative=False, grad_clip=1.0,
                out_dir=None, resume=True, ckpt_every=100, keep=2, seed=0, device=None, progress=True):
    """Train one stage of `ae` (an HAE) on `data` (Dataset of (image in [0, 1], label) or a tensor).

    steps: the stage's total step count (a resumed run continues up to it). lambda_cos weighs the
    alignment loss (stages 1-2; skipped for the patch baseline, whose student is the teacher).
    teacher_tokens: ae.teacher_features of every image of `data`, in order ([M, N, C]), computed once
    (the teacher is frozen, so every visit of an image gets the same tokens; a step's batch is
    looked up by index, the same values the per-batch forward gives); None: a teacher pass per batch.
    gan: use the hinge GAN (default: stages 2-4). disc: a DinoDisc to train (default: a new one
    on ae.teacher; pass the same object to later stages). disc_warmup: steps of discriminator-only
    training before the adversarial term reaches the decoder. w_gan multiplies the VQGAN adaptive
    weight. noise_tau / noise_schedule / noise_relative: stage 4 latent noise (module docstring).
    Returns the history (fit.fit): step, loss, l1, lpips, align, g, gan_w, d, sigma (a part that a
    stage does not compute is absent).
    """
    check_choice("stage", stage, STAGES)
    check_choice("noise_schedule", noise_schedule, SCHEDULES)
    gan = stage >= 2 if gan is None else gan
    device = pick_device(device)
    ae.to(device).train()
    if gan and disc is None:
        disc = DinoDisc(ae.teacher)
    lp = load_lpips(lpips_net, device)
    align_on = stage <= 2 and lambda_cos > 0 and getattr(ae, "stem", None) is not None
    params = stage_parameters(ae, stage)

    # resume: own checkpoint first (fit), else the weights an earlier stage left
    ckpt_dir = os.path.join(out_dir, f"stage{stage}") if out_dir else None
    modules = dict(ae.checkpoint_modules(), **({"disc": disc} if gan else {}))
    if ckpt_dir and resume and latest_checkpoint(ckpt_dir) is None:
        _load_previous_stage(out_dir, stage, modules)

    def step(idx, gen, k):
        x = images_at(data, idx).to(device)
        grid = ae.token_grid(*x.shape[-2:])
        parts = {}
        if stage <= 2:
            z = ae.encode(x)
        else:
            with torch.no_grad():
                z = ae.encode(x)
        if stage == 4:
            sigma = dino_sae_sigma(len(x), noise_tau, noise_schedule, k / max(steps - 1, 1), gen)
            z = dino_sae_smoothing(z, sigma, gen, relative=noise_relative)
            parts["sigma"] = sigma.mean()
        x_hat = ae.decoder(z, grid).float()
        rec, rec_parts = recon_loss(x_hat, x, lp, w_l1, w_lpips)
        parts.update(rec_parts)
        loss = rec
        if align_on:
            target = ae.teacher_features(x) if teacher_tokens is None else teacher_tokens[idx].to(device)
            a = ae.alignment_loss(z, target)
            loss = loss + lambda_cos * a
            parts["align"] = a.detach()
        return dict(loss=loss, rec=rec, parts=parts, x=x, x_hat=x_hat)

    return fit(step, params, len(data), steps=steps, batch_size=batch_size, lr=lr, modules=ae.checkpoint_modules(),
               ckpt_dir=ckpt_dir, resume=resume, seed=seed, stream=stage, device=device, betas=betas,
               grad_clip=grad_clip, ckpt_every=ckpt_every, keep=keep, disc=disc if gan else None,
               gan_weight=w_gan, gan_start=disc_warmup, disc_lr=disc_lr, last_layer=ae.decoder.last_layer,
               desc=f"HAE stage {stage}", progress=progress,
               log_dir=os.path.join(out_dir, "tb", f"stage{stage}") if out_dir else None)


def train_stages(ae, data, steps=(100, 20, 20, 20), *, lr=5e-4, lr_scale=STAGE_LR, betas=STAGE_BETAS,
                 out_dir=None, disc=None, noise_tau=0.8, seed=0, progress=True, **kw):
    """Stages 1 -> 2 -> 3 -> 4 in order (DINO-SAE §3.2), steps[k - 1] steps each (0 skips a stage); {stage: history}.

    Stage k trains at lr * lr_scale[k - 1] with betas[k - 1]: by default DINO-SAE §4.1's ratios
    (1 : 10 : 10 : 5.4) and betas, so `lr` is stage 1's rate. Each stage resumes from its own
    checkpoint under out_dir/stage<k>/ (a finished stage only reloads its weights), so a run killed
    in stage 3 picks up there. One discriminator serves stages 2-4 (it is stored in their
    checkpoints): the first stage that uses it trains it alone for half its steps (HAE B.4's
    discriminator warm-up), later stages use it from their first step. Stage 4 draws
    sigma ~ U(0, noise_tau) per sample (DINO-SAE Eq. 10, tau = 0.8). Other keywords (teacher_tokens,
    lambda_cos, ...) go to train_stage.
    """
    if len(steps) != len(STAGES) or any(int(n) < 0 for n in steps):
        raise ValueError(f"steps={steps!r}: one step count >= 0 per stage {STAGES}")
    if len(lr_scale) != len(STAGES) or len(betas) != len(STAGES):
        raise ValueError(f"lr_scale={lr_scale!r}, betas={betas!r}: one entry per stage {STAGES}")
    hist, warmed = {}, False
    for stage, n in zip(STAGES, steps):
        if n == 0:
            continue
        if stage >= 2 and disc is None:
            disc = DinoDisc(ae.teacher)
        hist[stage] = train_stage(ae, data, stage, steps=int(n), lr=lr * lr_scale[stage - 1],
                                  betas=tuple(betas[stage - 1]), disc=disc if stage >= 2 else None,
                                  disc_warmup=0 if warmed else int(n) // 2, noise_tau=noise_tau, out_dir=out_dir,
                                  seed=seed, progress=progress, **kw)
        warmed = warmed or stage >= 2
    return hist


def at_stage(ae, out_dir, stage):
    """A copy of `ae` (eval mode) with the weights its run under out_dir had at the end of `stage`:
    how notebook 07 judges stem_vs_patch at stage 1 (HAE Tab. 5) on the same run it shows after stage 4."""
    path = latest_checkpoint(os.path.join(out_dir, f"stage{stage}"))
    if path is None:
        raise FileNotFoundError(f"no stage{stage} checkpoint under {out_dir}: stage={stage} did not run there")
    out = copy.deepcopy(ae)
    load_checkpoint(path, out.checkpoint_modules(), restore_rng=False)
    return out.eval()
