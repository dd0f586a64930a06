"""How well an autoencoder reconstructs, clean and from noised latents: the lab's one evaluator.

Any autoencoder with encode(images) -> [B, N, C] and decode(tokens) -> images in [0, 1] works (HAE,
RAE, GAE, the VAEs). Encoding is batched by fit.precompute, decoding by lab.evaluate.decode; the
scores are lab.metrics' (PSNR per image then mean, SSIM, LPIPS).

noise_robustness is the decoder-robustness curve of GAE Fig. 4 / RAE Tab 5: decode z + sigma * eps
for several sigma, with one eps ~ N(0, I) drawn once and shared by every sigma (common random
numbers: the curve's differences are not sampling noise). sigma is absolute, as in the papers'
training noise (lab.autoencoders.noise); relative=True multiplies it by each token's RMS.
"""
import torch

from lab import evaluate, metrics, trainutil
from lab.autoencoders.fit import as_tensor, precompute
from lab.autoencoders.noise import token_rms


def reconstruct(ae, images, batch_size=64, device=None):
    """decode(encode(x)) of every image, batched, in eval mode: [M, 3, H, W] on the CPU in [0, 1]."""
    device = trainutil.pick_device(device)
    ae.to(device).eval()
    z = precompute(ae.encode, images, batch_size, device)
    return evaluate.decode(ae, z.to(device), batch_size)


def recon_metrics(ae, images, batch_size=64, lpips=True, device=None):
    """{'psnr', 'ssim', 'lpips'} of the reconstructions of `images` (a tensor [M, 3, H, W] in [0, 1]).

    lpips=False leaves the LPIPS network out (it needs its weights; see lab.metrics.lpips).
    """
    x = as_tensor(images)
    rec = reconstruct(ae, x, batch_size, device)
    out = dict(psnr=metrics.psnr(rec, x), ssim=metrics.ssim(rec, x))
    if lpips:
        out["lpips"] = metrics.lpips(rec, x)["value"]
    return out


@torch.no_grad()
def noise_robustness(ae, data, sigmas=(0.0, 0.2, 0.4, 0.6, 0.8, 1.0), limit=256, batch_size=64, seed=0,
                     relative=False, device=None):
    """Reconstruction error decoding z + sigma * eps (module docstring), one row per sigma.

    Returns [{'sigma', 'mse', 'psnr'}] on the first `limit` images of `data` (MSE per pixel, PSNR in
    dB per image then mean).
    """
    device = trainutil.pick_device(device)
    ae.to(device).eval()
    x = as_tensor(data, limit=limit)
    z = precompute(ae.encode, x, batch_size, device).float()
    eps = torch.randn(z.shape, generator=torch.Generator().manual_seed(seed))
    if relative:
        eps = eps * token_rms(z)
    curve = []
    for sigma in sigmas:
        rec = evaluate.decode(ae, (z + sigma * eps).to(device), batch_size)
        mse = (rec.double() - x.double()).pow(2).flatten(1).mean(1)
        curve.append(dict(sigma=float(sigma), mse=mse.mean().item(), psnr=metrics.psnr(rec, x)))
    return curve
