"""The four progressive HAE / DINO-SAE training stages, each one resumable call.

    stage 1: stem + decoder          L1 + LPIPS + lambda_cos * align(student, teacher)
    stage 2: stem + decoder          stage 1 + w_gan * lambda_adapt * hinge_G(D(x_hat)); D trains too
    stage 3: decoder only            L1 + LPIPS (+ GAN); the encoder is frozen
    stage 4: decoder only            as stage 3, decoding z + sigma * rms(z) * eps   (latent smoothing)

Latent noise convention (stage 4): the noise is relative to each token's RMS over channels,
    z_noisy = z + sigma * rms(z) * eps,   rms(z) = sqrt(mean_c z^2) per token (detached),
so sigma is in units of one channel's typical size whatever the encoder's token norm (DINO tokens
have norms of tens; a LayerNorm'd token without affine has rms 1 and then this is z + sigma * eps,
the RAE convention). sigma ~ U(0, tau) per sample ('uniform'), or sigma = tau * step / (steps - 1)
for the whole batch ('ramp': the noise grows over the stage).

Exact resume: every random draw of step k (batch indices, sigma, eps) comes from a generator seeded
by (seed, stage, k), so a run killed after a checkpoint at step k and resumed reproduces the run
that was never killed. Each stage checkpoints under out_dir/stage<k>/ (lab.trainutil layout); a
stage that starts without its own checkpoint takes the weights of the newest earlier stage found
under out_dir.
"""
import copy
import os

import torch
from tqdm.auto import tqdm

import lab  # noqa: F401
from lab import check_choice
from lab.infra import assets
from lab.trainutil import (autocast, check_finite, latest_checkpoint, load_checkpoint, pick_device,
                           requires_grad, save_checkpoint)
from lab.autoencoders.disc import DinoDisc
from lab.autoencoders.losses import adaptive_weight, hinge_d_loss, hinge_g_loss, recon_loss

STAGES = (1, 2, 3, 4)
NOISE_SCHEDULES = ("uniform", "ramp")


# ---------------------------------------------------------------- latent noise (stage 4)

def token_rms(z):
    """Per-token RMS over channels, [B, N, 1]."""
    return z.float().pow(2).mean(dim=-1, keepdim=True).sqrt()


def latent_noise(z, sigma, generator=None):
    """z + sigma * rms(z) * eps, sigma [B] (one per sample), eps ~ N(0, I) from `generator`."""
    eps = torch.randn(z.shape, generator=generator).to(z.device, z.dtype)
    scale = (sigma.to(z.device).view(-1, 1, 1) * token_rms(z).detach()).to(z.dtype)
    return z + scale * eps


def draw_sigma(n, tau, schedule="uniform", progress=0.0, generator=None):
    """[n] noise levels: U(0, tau) per sample ('uniform') or tau * progress for all ('ramp')."""
    if schedule == "uniform":
        return tau * torch.rand(n, generator=generator)
    if schedule == "ramp":
        return torch.full((n,), tau * float(progress))
    raise ValueError(f"noise_schedule={schedule!r}; allowed: {NOISE_SCHEDULES}")


# ---------------------------------------------------------------- data and checkpoints

def _images(data, idx):
    """Stack images data[i][0] (a Dataset of (image, label)) or rows of an image tensor."""
    if torch.is_tensor(data):
        return data[idx]
    return torch.stack([data[int(i)][0] for i in idx])


def _step_generator(seed, stage, step):
    return torch.Generator().manual_seed((int(seed) * 8 + stage) * 1_000_000_007 + step)


def _modules(ae, disc):
    mods = dict(ae.checkpoint_modules()) if hasattr(ae, "checkpoint_modules") else {"model": ae}
    if disc is not None:
        mods["disc"] = disc
    return mods


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


def _lpips(lpips_net, device):
    if lpips_net is None:
        return None
    net = assets.lpips_net(lpips_net) if isinstance(lpips_net, str) else lpips_net
    return assets.freeze(net.to(device))


# ---------------------------------------------------------------- one stage

def train_stage(ae, data, stage=1, *, steps=500, batch_size=16, lr=2e-4, betas=(0.9, 0.95),
                lambda_cos=1.0, w_l1=1.0, w_lpips=1.0, lpips_net="alex",
                gan=None, disc=None, w_gan=0.5, disc_lr=None, disc_warmup=100,
                noise_tau=0.8, noise_schedule="uniform", grad_clip=1.0,
                out_dir=None, resume=True, ckpt_every=100, keep=2, seed=0, device=None, progress=True):
    """Train one stage of `ae` (an HAE) on `data` (Dataset of (image in [0, 1], label) or a tensor).

    steps: the stage's total step count (a resumed run continues up to it). lambda_cos weighs the
    alignment loss (stages 1-2; skipped for the patch baseline, whose student is the teacher).
    gan: use the hinge GAN (default: stages 2-4). disc: a DinoDisc to train (default: a new one
    on ae.teacher; pass the same object to later stages). disc_warmup: steps of discriminator-only
    training before the adversarial term reaches the decoder. w_gan multiplies the VQGAN adaptive
    weight. noise_tau / noise_schedule: stage 4 latent noise (see the module docstring).
    Returns the history: {name: [value per step]} with step, loss, l1, lpips, align, g, d,
    adaptive_w, sigma (entries that a stage does not compute are absent).
    """
    check_choice("stage", stage, STAGES)
    check_choice("noise_schedule", noise_schedule, NOISE_SCHEDULES)
    gan = stage >= 2 if gan is None else gan
    device = pick_device(device)
    ae.to(device).train()
    if gan and disc is None:
        disc = DinoDisc(ae.teacher)
    if disc is not None:
        disc.to(device).train()
    lp = _lpips(lpips_net, device)
    align_on = stage <= 2 and lambda_cos > 0 and getattr(ae, "stem", None) is not None

    # what trains in this stage
    requires_grad(ae, False)
    enc_params = ae.encoder_parameters() if stage <= 2 else []
    params = enc_params + list(ae.decoder.parameters())
    for p in params:
        p.requires_grad_(True)
    opt = torch.optim.AdamW(params, lr=lr, betas=betas, weight_decay=0.0)
    optimizers = {"opt": opt}
    if gan:
        opt_d = torch.optim.AdamW(disc.heads.parameters(), lr=disc_lr or lr, betas=(0.5, 0.9), weight_decay=0.0)
        optimizers["opt_d"] = opt_d

    # resume: own checkpoint first, else the weights an earlier stage left
    modules = _modules(ae, disc if gan else None)
    ckpt_dir = os.path.join(out_dir, f"stage{stage}") if out_dir else None
    start, history = 0, {}
    if ckpt_dir and resume:
        path = latest_checkpoint(ckpt_dir)
        if path is not None:
            start, extra = load_checkpoint(path, modules, optimizers)
            history = {k: list(v) for k, v in extra.get("history", {}).items()}
        else:
            _load_previous_stage(out_dir, stage, modules)

    def save(step):
        if ckpt_dir:
            save_checkpoint(ckpt_dir, step, modules, optimizers, extra={"history": history}, keep=keep)

    def log(**vals):
        for k, v in vals.items():
            history.setdefault(k, []).append(float(v))

    bar = tqdm(range(start, steps), initial=start, total=steps, desc=f"HAE stage {stage}", disable=not progress)
    for step in bar:
        g = _step_generator(seed, stage, step)
        x = _images(data, torch.randint(len(data), (batch_size,), generator=g)).to(device)
        grid = ae.token_grid(*x.shape[-2:]) if hasattr(ae, "token_grid") else None
        vals = {"step": step}
        with autocast(device):
            if stage <= 2:
                z = ae.encode(x)
            else:
                with torch.no_grad():
                    z = ae.encode(x)
            if stage == 4:
                sigma = draw_sigma(len(x), noise_tau, noise_schedule, step / max(steps - 1, 1), g)
                z = latent_noise(z, sigma, g)
                vals["sigma"] = sigma.mean()
            x_hat = ae.decoder(z, grid).float()
            rec, parts = recon_loss(x_hat, x, lp, w_l1, w_lpips)
            vals.update(parts)
            loss = rec
            if align_on:
                a = ae.alignment_loss(z, ae.teacher_features(x))
                loss = loss + lambda_cos * a
                vals["align"] = a.detach()
            if gan and step >= disc_warmup:
                requires_grad(disc.heads, False)
                g_loss = hinge_g_loss(disc(x_hat))
                w = adaptive_weight(rec, g_loss, ae.decoder.last_layer)
                loss = loss + w_gan * w * g_loss
                vals.update(g=g_loss.detach(), adaptive_w=w)
            elif gan:  # warm-up: NaN keeps every history list aligned with 'step' (a gap in plots)
                vals.update(g=float("nan"), adaptive_w=float("nan"))
        check_finite(loss, step)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        if grad_clip:
            torch.nn.utils.clip_grad_norm_(params, grad_clip)
        opt.step()

        if gan:  # discriminator step on the same batch
            requires_grad(disc.heads, True)
            with autocast(device):
                d_loss = hinge_d_loss(disc(x), disc(x_hat.detach()))
            check_finite(d_loss, step, what="discriminator loss")
            opt_d.zero_grad(set_to_none=True)
            d_loss.backward()
            opt_d.step()
            vals["d"] = d_loss.detach()

        log(loss=loss.detach(), **vals)
        if (step + 1) % 10 == 0 or step + 1 == steps:
            bar.set_postfix({k: f"{history[k][-1]:.4f}" for k in ("loss", "l1", "lpips", "align") if k in history})
        if (step + 1) % ckpt_every == 0 or step + 1 == steps:
            save(step + 1)
    return history


# ---------------------------------------------------------------- evaluation

def psnr(x_hat, x):
    """Per-image PSNR in dB for images in [0, 1], [B]."""
    mse = (x_hat.float() - x.float()).pow(2).flatten(1).mean(1)
    return 10 * torch.log10(1.0 / mse.clamp_min(1e-10))


@torch.no_grad()
def evaluate_recon(ae, data, n=None, batch_size=32, noise_sigma=0.0, seed=0, device=None, progress=True):
    """Mean PSNR (dB) of decode(encode(x)) over the first n items of `data` (all if None).

    noise_sigma > 0 decodes z + noise_sigma * rms(z) * eps instead (the robustness curve).
    """
    device = pick_device(device)
    ae.to(device).eval()
    n = len(data) if n is None else min(n, len(data))
    g = torch.Generator().manual_seed(seed)
    scores = []
    for i in tqdm(range(0, n, batch_size), desc="PSNR", disable=not progress):
        x = _images(data, torch.arange(i, min(i + batch_size, n))).to(device)
        with autocast(device):
            z = ae.encode(x)
            if noise_sigma > 0:
                z = latent_noise(z, torch.full((len(x),), float(noise_sigma)), g)
            x_hat = ae.decode(z, ae.token_grid(*x.shape[-2:]) if hasattr(ae, "token_grid") else None)
        scores.append(psnr(x_hat, x))
    return torch.cat(scores).mean().item()


# ---------------------------------------------------------------- the stem ablation

def compare_stems(steps=400, batch_size=16, size=64, n_train=2048, n_eval=256, lr=2e-4, lambda_cos=1.0,
                  teacher="dinov2_s_imgfocus", stems=("conv", "patch"), seed=0, out_dir=None, progress=True):
    """Stage 1 of the conv-stem HAE and of the patch-embedding baseline at the same budget on
    `photos` crops; PSNR on held-out crops (another crop seed of the same photos).

    Returns {stem: {'psnr': dB, 'history': ..., 'model': the HAE, 'align': mean alignment loss of
    the last 50 steps (conv only)}}.
    """
    from lab import data as labdata
    train_x, _ = labdata.tensors(labdata.photos(n_train, size, seed=seed))
    eval_x, _ = labdata.tensors(labdata.photos(n_eval, size, seed=seed + 1000))
    vit = assets.vit(teacher, img_size=size // 16 * 14) if teacher == assets.DINO_NAME else assets.vit(teacher)
    from lab.autoencoders.hae import HAE
    out = {}
    for stem in stems:
        torch.manual_seed(seed)  # same seed for every stem
        ae = HAE(vit, stem=stem, image_size=size)
        h = train_stage(ae, train_x, 1, steps=steps, batch_size=batch_size, lr=lr, lambda_cos=lambda_cos,
                        seed=seed, out_dir=os.path.join(out_dir, stem) if out_dir else None, progress=progress)
        res = {"psnr": evaluate_recon(ae, eval_x, progress=False), "history": h, "model": ae}
        if "align" in h:
            res["align"] = sum(h["align"][-50:]) / len(h["align"][-50:])
        out[stem] = res
    return out


def noise_ablation(ae, data, eval_data, steps=150, sigmas=(0.0, 0.2, 0.4, 0.8), noise_tau=0.8,
                   noise_schedule="uniform", out_dir=None, progress=True, **kw):
    """Latent noise off vs on: from the same weights, fine-tune the decoder `steps` steps as stage 3
    (clean latents) and as stage 4 (z + sigma * rms(z) * eps), then PSNR when decoding latents
    noised at each of `sigmas` (the robustness curve of GAE Fig. 4 / RAE Table 5).

    Returns {'sigmas': [...], 'off': [dB per sigma], 'on': [dB per sigma]}. kw go to train_stage.
    """
    out = {"sigmas": list(sigmas)}
    for name, stage in (("off", 3), ("on", 4)):
        model = copy.deepcopy(ae)
        train_stage(model, data, stage, steps=steps, noise_tau=noise_tau, noise_schedule=noise_schedule,
                    out_dir=os.path.join(out_dir, name) if out_dir else None, progress=progress, **kw)
        out[name] = [evaluate_recon(model, eval_data, noise_sigma=s, progress=False) for s in sigmas]
    return out


if __name__ == "__main__":
    import argparse
    ap = argparse.ArgumentParser(description="HAE stage 1: conv stem vs patch embedding (PSNR on held-out crops)")
    ap.add_argument("--steps", type=int, default=400)
    ap.add_argument("--batch-size", type=int, default=16)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--lr", type=float, default=2e-4)
    ap.add_argument("--lambda-cos", type=float, default=1.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--threads", type=int, default=None, help="torch CPU threads (1 is fastest on a busy machine)")
    ap.add_argument("--out-dir", default=None)
    ap.add_argument("--noise-steps", type=int, default=0,
                    help="then latent noise off vs on: decoder fine-tuning steps from the conv-stem stage 1")
    ap.add_argument("--no-gan", action="store_true", help="noise ablation without the GAN (CPU budget)")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    res = compare_stems(steps=args.steps, batch_size=args.batch_size, size=args.size, lr=args.lr,
                        lambda_cos=args.lambda_cos, seed=args.seed, out_dir=args.out_dir)
    for stem, r in res.items():
        h = r["history"]
        extra = f"  align(1-cos, last 50) {r['align']:.3f}" if "align" in r else ""
        print(f"stem={stem:5s}  PSNR {r['psnr']:.2f} dB  final L1 {sum(h['l1'][-50:]) / len(h['l1'][-50:]):.4f}"
              f"  LPIPS {sum(h['lpips'][-50:]) / len(h['lpips'][-50:]):.4f}{extra}")
    if args.noise_steps and "conv" in res:
        from lab import data as labdata
        train_x, _ = labdata.tensors(labdata.photos(2048, args.size, seed=args.seed))
        eval_x, _ = labdata.tensors(labdata.photos(256, args.size, seed=args.seed + 1000))
        nz = noise_ablation(res["conv"]["model"], train_x, eval_x, steps=args.noise_steps, lr=args.lr,
                            batch_size=args.batch_size, gan=not args.no_gan, seed=args.seed,
                            out_dir=os.path.join(args.out_dir, "noise") if args.out_dir else None)
        print("decode z + sigma*rms(z)*eps, PSNR dB:  sigma " + "  ".join(f"{s:5.2f}" for s in nz["sigmas"]))
        for name in ("off", "on"):
            print(f"  decoder trained with latent noise {name:3s}:  " + "  ".join(f"{v:5.2f}" for v in nz[name]))
