"""The metric keys of lab.claims: each key a notebook logs is spelled once, by a function here.

lab.record calls these on a notebook's tables; lab.claims reads the same keys. Split out of
lab/claims.py to keep each module short; lab.claims re-exports every name.
"""
import re

from lab.power import seed_key

KID = "kid_images"  # KID on EfficientNet features (Bińkowski et al. 2018): unbiased at small n

# ----------------------------------------------------------------------------------------------
# Keys: the notebooks name every metric a claim reads with these functions
# ----------------------------------------------------------------------------------------------

SWAP_VARIANTS = ("anchor_dir", "anchor_radius", "whole")  # probes.SWAP_VARIANTS, in that order
COORDS = ("training", "raw")


def per_seed(metrics, seed):
    """{key: value} -> {seed_key(key, seed): value}, ready for run.log_metrics."""
    return {seed_key(k, seed): v for k, v in metrics.items()}


def cpu_key(claim_id):  # a run that logs it: `not measured at CPU scale`, with the logged reason
    return f"cpu_scale.{claim_id}"


def distance_tag(metric):
    """'LPIPS-alex' -> 'lpips', 'DINO-cos (...)' -> 'dino': the two distances of the swap probe."""
    low = metric.lower()
    return "lpips" if low.startswith("lpips") else "dino" if low.startswith("dino") else re.sub(r"\W+", "_", low)


def swap_key(distance, variant):  # 01
    return f"swap_{distance_tag(distance)}_{variant}"


def share_key(latents, path, where, coords="training"):  # 02: where in start | end | max
    """Training coordinates (the flow's standardised tokens) are the primary; raw tokens keep the
    old spelling, which old runs logged from raw tokens."""
    if coords not in COORDS:
        raise ValueError(f"share_key: coords={coords!r}; allowed: {COORDS}")
    return f"{latents}_{'train_' if coords == 'training' else ''}share_{path}_{where}"


def probe_key(who, pool):  # 03: who in teacher | student | pixels; pool in gap | flatten
    return f"acc_{who}_{pool}"


def recon_key(metric, model, stage=None):  # 07: psnr | ssim | lpips of conv_cosine | patch_cosine | conv_mse
    """stage None: after all stages; stage 1: the stage HAE Tab. 5 reports."""
    return f"{metric}_{model}" if stage is None else f"{metric}_{model}_stage{int(stage)}"


def gen_key(metric, config, protocol):  # 05: metric kid_images | fd_images | fd_tokens | precision | recall |
    return f"{metric}_{config}_{protocol}"  # class_agreement; protocol paper | cfg4


def lambda_config(lam):  # 05's name of the Riemannian generator trained with radial weight λ
    return f"riemannian_l{lam:g}"


def sampler_key(metric, method):  # 05: `metric` of the λ = 0.1 generator sampled with `method`
    return f"{metric}_sampler_{method}"


def u_key(latents, which):  # 06: which in {kid,fd}_{low,high,best_interior}
    return f"u_{latents}_{which}"


def noise_key(metric, arm):  # 07: psnr_clean | psnr_noisy | fd_images | kid_images; arm clean_ | noise_trained
    return f"noise_{metric}_{arm}"


def gae_key(align, metric, reg="norm"):  # 07: align pre | post | latent; reg norm | kl (GAE Tab. 7)
    return f"gae_{align}_{metric}" if reg == "norm" else f"gae_{reg}_{align}_{metric}"


def ddt_key(metric, arm):  # 07: arm plain | ddt
    return f"ddt_{metric}_{arm}"


def shift_key(metric, arm):  # 07: arm shift | noshift; metric kid_images | fd_images | alpha
    return f"shift_{metric}_{arm}"


def width_key(what, width):  # 08: what in loss | floor
    return f"{what}_w{int(width)}"
