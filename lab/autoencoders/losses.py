"""Autoencoder losses: reconstruction (L1 + LPIPS), feature alignment, hinge GAN, adaptive weight.

Images are in [0, 1] everywhere in the lab; LPIPS wants [-1, 1], so the conversion happens here
and nowhere else. Every function returns plain scalars (0-dim tensors) that a training step sums.
"""
import torch
import torch.nn.functional as F

ALIGN_KINDS = ("cosine", "mse", "mse_matched")


# ---------------------------------------------------------------- reconstruction

def recon_loss(x_hat, x, lpips_net=None, w_l1=1.0, w_lpips=1.0):
    """w_l1 * |x_hat - x|_1 + w_lpips * LPIPS(x_hat, x) on images in [0, 1] -> (total, parts).

    parts holds detached floats-as-tensors ('l1', and 'lpips' when a network is given) for logging.
    """
    l1 = (x_hat - x).abs().mean()
    total = w_l1 * l1
    parts = {"l1": l1.detach()}
    if lpips_net is not None and w_lpips > 0:
        lp = lpips_net(2 * x_hat - 1, 2 * x - 1).mean()  # LPIPS expects [-1, 1]
        total = total + w_lpips * lp
        parts["lpips"] = lp.detach()
    return total, parts


# ---------------------------------------------------------------- alignment

def alignment_loss(z_student, z_teacher, kind="cosine"):
    """Token-wise alignment of student to teacher features [B, N, C].

    cosine:      mean over tokens of 1 - cos(s, t): matches directions, leaves norms free (DINO-SAE).
    mse:         mean over all entries of (s - t)^2: matches directions and magnitudes.
    mse_matched: the MSE at the cosine loss's effective weight (matched_mse below), so that an
                 ablation of cosine vs MSE compares what is matched, not how hard it is pushed.
    """
    if kind == "cosine":
        cos = F.cosine_similarity(z_student.float(), z_teacher.float(), dim=-1, eps=1e-8)
        return (1 - cos).mean()
    if kind == "mse":
        return (z_student.float() - z_teacher.float()).pow(2).mean()
    if kind == "mse_matched":
        return matched_mse(z_student, z_teacher)
    raise ValueError(f"alignment kind={kind!r}; allowed: {ALIGN_KINDS}")


def matched_mse(z_student, z_teacher):
    """mean over tokens of |s - t|^2 / (2 R^2), R^2 = the teacher's mean squared token norm (detached).

    Why this scale. Per token, with |s| = |t| = R and angle theta between them,
        |s - t|^2 = 2 R^2 (1 - cos theta),   so   |s - t|^2 / (2 R^2) = 1 - cos theta:
    the loss equals the cosine loss whenever the norms agree and adds only a penalty on the norm.
    Gradients w.r.t. one student token (N tokens averaged):
        cosine loss:    |grad| = sin(theta) / (N |s|)
        matched MSE:    |grad| = |s - t| / (N R^2) = 2 sin(theta / 2) / (N R)
        plain MSE:      |grad| = 2 |s - t| / (N C) = 4 R sin(theta / 2) / (N C)
    so matched / cosine = 1 / cos(theta / 2) (1 at small angles, sqrt(2) at 90 degrees), while
    plain / cosine = 2 R^2 / (C cos(theta / 2)): about 8 for DINOv2-S tokens (R about 40, C = 384),
    the step-size confound of comparing cosine with a plain MSE at equal weight.
    """
    s, t = z_student.float(), z_teacher.float()
    r2 = t.detach().pow(2).sum(dim=-1).mean()
    return ((s - t).pow(2).sum(dim=-1) / (2 * r2)).mean()


# ---------------------------------------------------------------- adversarial (hinge)

def hinge_d_loss(logits_real, logits_fake):
    """Discriminator hinge loss 0.5 * (E[relu(1 - D(x))] + E[relu(1 + D(x_hat))]) (VQGAN)."""
    return 0.5 * (F.relu(1 - logits_real).mean() + F.relu(1 + logits_fake).mean())


def hinge_g_loss(logits_fake):
    """Generator side of the hinge GAN: -E[D(x_hat)]."""
    return -logits_fake.mean()


def adaptive_weight(rec_loss, g_loss, last_layer, max=1e4, eps=1e-4):
    """VQGAN adaptive weight ||grad_W rec|| / (||grad_W g|| + eps) at the decoder's last layer W.

    Balances the GAN gradient against the reconstruction gradient where both reach the pixels.
    Clamped to [0, max] and detached: it is a weight, not a path for gradients.
    """
    g_rec = torch.autograd.grad(rec_loss, last_layer, retain_graph=True)[0]
    g_gan = torch.autograd.grad(g_loss, last_layer, retain_graph=True)[0]
    w = g_rec.norm() / (g_gan.norm() + eps)
    return torch.clamp(w, 0.0, max).detach()
