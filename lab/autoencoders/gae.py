"""GAE: a ViT autoencoder with RMS-normalised latent tokens, dynamic noise and a compact VFM teacher.

Liu, Wang, Sun 2026, "Geometric Autoencoder for Diffusion Models".
- Encoder: patch embed -> ViT blocks -> LayerNorm (the high-dim features h, 'pre' alignment)
  -> linear to d -> RMS-normalise each token: mu = sqrt(d) * y / |y|, so |mu| = sqrt(d) and each
  channel has unit RMS (the latent is the product of N spheres of radius sqrt(d)). No KL term.
- Dynamic noise while training (noise.gae_dynamic_noise): z = mu + |sigma| * eps, sigma ~ N(0, C_sigma),
  one sigma per sample, eps ~ N(0, I). C_sigma (`noise_std`) is a standard deviation: GAE's Tab 4
  heads it "standard deviation C_sigma" (0.05 / 0.1 / 0.2) and App G trains with 0.2, the default
  here. With unit-RMS channels sigma is in channel units, as for RAE's sigma.
- Semantic teacher E_sp: VFM tokens f [B, N, C] -> compact codes [B, N, d], either
    'svd':     top-d right singular vectors of the centred VFM tokens (fit on data),
               E_sp(f) = (f - m) V_d, with the exact up-projection c V_d^T + m;
    'learned': a downsampler (attention block + patch conv) trained to reconstruct f from its
               code through an up-projection under 1 - cos, then frozen.
- Alignment paradigm (a parameter), every arm the same form and weight, 1 - cos (GAE Tab 1 compares
  the arms at one lambda_sp):
    'latent': 1 - cos(mu, to_sphere(E_sp(f))) at the bottleneck; with mu on the radius-sqrt(d) sphere
              this is GAE Eq. 2, |mu - E_sp|^2, divided by 2d (the lab once used / d: twice the weight);
    'pre':    1 - cos(W_pre h, f): the high-dim encoder features against the VFM (REPA-style);
    'post':   1 - cos(W_post mu, f): the latent projected back up against the VFM.
- Latent regulariser (`latent_reg`, GAE Tab 7): 'norm' is the RMS normalisation above with dynamic
  noise; 'kl' replaces both by a vanilla VAE bottleneck: a diagonal Gaussian posterior
  N(m, diag(exp(logvar))), the decoder reads a draw m + exp(logvar / 2) eps, and the trainer adds
  kl_weight * KL(q || N(0, I)) per latent entry (GAE §5.4.3: KL weight 0.1). encode() gives m.
The VFM sees the image resized so its token grid equals the latent grid (times `vfm_factor`,
which the learned downsampler's patch conv then reduces).
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from timm.models.vision_transformer import Block

from lab import check_choice
from lab.autoencoders.noise import gae_dynamic_noise
from lab.autoencoders.vae import kl_gaussian
from lab.autoencoders.vit_decoder import patchify, vit_decoder
from lab.dit import sincos_2d
from lab.encoders import encoder_width, load_encoder, vit_tokens
from lab.geometry import to_sphere

TEACHERS = (None, "svd", "learned")
ALIGNS = ("latent", "pre", "post")
LATENT_REGS = ("norm", "kl")


# ----------------------------------------------------------------------------- teachers

class SVDTeacher(nn.Module):
    """E_sp(f) = (f - m) V_d with V_d the top-d right singular vectors of centred VFM tokens."""

    def __init__(self, vfm_dim, d):
        super().__init__()
        self.register_buffer("mean", torch.zeros(vfm_dim))
        self.register_buffer("basis", torch.zeros(vfm_dim, d))
        self.register_buffer("singular_values", torch.zeros(d))
        self.register_buffer("fitted", torch.tensor(False))

    @torch.no_grad()
    def fit(self, feats):
        """feats: [M, C] (or [B, N, C]) VFM tokens; SVD in float64."""
        f = feats.reshape(-1, feats.shape[-1]).double()
        d = self.basis.shape[1]
        if f.shape[0] < d:
            raise ValueError(f"SVD teacher needs at least d={d} tokens, got {f.shape[0]}")
        m = f.mean(0)
        _, s, vh = torch.linalg.svd(f - m, full_matrices=False)
        self.mean.copy_(m)
        self.basis.copy_(vh[:d].T)
        self.singular_values.copy_(s[:d])
        self.fitted.fill_(True)
        return self

    def forward(self, f):
        return (f - self.mean.to(f.dtype)) @ self.basis.to(f.dtype)

    def up(self, c):
        """The exact up-projection back to VFM space: c V_d^T + m."""
        return c @ self.basis.T.to(c.dtype) + self.mean.to(c.dtype)


class LearnedTeacher(nn.Module):
    """Downsampler (attention block + patch conv to d) with an up-projection used only to train it."""

    def __init__(self, vfm_dim, d, factor=1, heads=None):
        super().__init__()
        heads = heads or math.gcd(vfm_dim, max(1, vfm_dim // 64))  # 64-dim heads: 6 for ViT-S
        self.factor = factor
        self.attn = Block(vfm_dim, heads, qkv_bias=True)
        self.down = nn.Conv2d(vfm_dim, d, factor, stride=factor)   # patch conv: factor x factor tokens -> 1
        self.up_conv = nn.ConvTranspose2d(d, vfm_dim, factor, stride=factor)
        self.up_block = Block(vfm_dim, heads, qkv_bias=True)
        self.register_buffer("fitted", torch.tensor(False))
        self.requires_grad_(False)  # fixed inside the GAE; trainers.train_learned_teacher unfreezes it to fit

    def forward(self, f, grid):
        """f: [B, N, C] on a grid `grid` * factor -> codes [B, N', d] on `grid`."""
        h, w = grid[0] * self.factor, grid[1] * self.factor
        x = self.attn(f).transpose(1, 2).reshape(f.shape[0], -1, h, w)
        return self.down(x).flatten(2).transpose(1, 2)

    def up(self, c, grid):
        x = c.transpose(1, 2).reshape(c.shape[0], -1, *grid)
        return self.up_block(self.up_conv(x).flatten(2).transpose(1, 2))

    def loss(self, f, grid):
        """Cosine feature reconstruction 1 - cos(up(down(f)), f), mean over tokens."""
        return (1 - F.cosine_similarity(self.up(self(f, grid), grid), f, dim=-1)).mean()


# ----------------------------------------------------------------------------- the autoencoder

class GAEEncoder(nn.Module):
    """images in [0, 1] -> (h [B, N, width], mu [B, N, d]) with |mu_token| = sqrt(d) ('norm'), or the
    posterior mean ('kl')."""

    def __init__(self, patch_size=16, latent_dim=32, width=192, depth=4, heads=3, latent_reg="norm"):
        super().__init__()
        check_choice("latent_reg", latent_reg, LATENT_REGS)
        self.patch_size, self.latent_reg = patch_size, latent_reg
        self.patch_embed = nn.Linear(3 * patch_size * patch_size, width)
        self.blocks = nn.ModuleList(Block(width, heads, qkv_bias=True) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.to_latent = nn.Linear(width, latent_dim * (2 if latent_reg == "kl" else 1))  # 'kl': mean, logvar

    def features(self, images01):
        """High-dim encoder features h [B, N, width] (the 'pre' alignment point)."""
        h, w = images01.shape[-2] // self.patch_size, images01.shape[-1] // self.patch_size
        x = self.patch_embed(patchify(2 * images01 - 1, self.patch_size))
        x = x + sincos_2d(x.shape[-1], (h, w), x.device, x.dtype)
        for block in self.blocks:
            x = block(x)
        return self.norm(x)

    def latent(self, h):
        """mu = sqrt(d) * y / |y| per token: the RMS normalisation that replaces the KL term ('kl': the mean)."""
        return self.posterior(h)[0] if self.latent_reg == "kl" else to_sphere(self.to_latent(h))

    def posterior(self, h):
        """'kl' only: (mean, logvar) [B, N, d] of the diagonal Gaussian posterior."""
        if self.latent_reg != "kl":
            raise RuntimeError("posterior() needs latent_reg='kl'; the 'norm' latent is deterministic")
        mean, logvar = self.to_latent(h).chunk(2, dim=-1)
        return mean, logvar.clamp(-30.0, 20.0)  # as KLVAE.encode_dist: keeps exp() finite

    def forward(self, images01):
        h = self.features(images01)
        return h, self.latent(h)


class GAE(nn.Module):
    """ViT encoder -> RMS-normalised d-dim tokens -> ViT decoder. encode -> [B, N, d] with |token| = sqrt(d)."""

    def __init__(self, image_size=64, patch_size=16, latent_dim=32, width=192, depth=4, heads=3,
                 decoder_size="tiny", vfm="dinov2_s_imgfocus", teacher="svd", align="latent",
                 noise_std=0.2, vfm_factor=1, decoder_kw=None, latent_reg="norm"):
        super().__init__()
        check_choice("teacher", teacher, TEACHERS)
        check_choice("align", align, ALIGNS)
        if image_size % patch_size:
            raise ValueError(f"image_size={image_size} must be a multiple of patch_size={patch_size}")
        if vfm is not None and align == "latent" and teacher is None:
            raise ValueError("align='latent' needs a compact teacher: teacher='svd' or 'learned'")
        g = image_size // patch_size
        self.grid, self.image_size, self.patch_size = (g, g), image_size, patch_size
        self.latent_dim, self.noise_std, self.align, self.teacher_kind = latent_dim, float(noise_std), align, teacher
        self.latent_reg = latent_reg
        self.encoder = GAEEncoder(patch_size, latent_dim, width, depth, heads, latent_reg)
        self.decoder = vit_decoder(decoder_size, in_dim=latent_dim, patch_size=patch_size, **(decoder_kw or {}))
        # frozen VFM, its compact teacher, and the heads of the 'pre' / 'post' paradigms
        self.vfm = None if vfm is None else load_encoder(vfm, (g * vfm_factor, g * vfm_factor))
        self.vfm_factor = vfm_factor
        self.teacher, self.align_head = None, None
        if teacher == "svd" and vfm_factor != 1:
            raise ValueError("teacher='svd' maps VFM tokens one to one: it needs vfm_factor=1 "
                             "(the learned downsampler's patch conv handles vfm_factor > 1)")
        if self.vfm is not None:
            c = encoder_width(self.vfm)
            if align == "latent":  # the compact teacher is the target of the 'latent' paradigm only
                self.teacher = SVDTeacher(c, latent_dim) if teacher == "svd" else LearnedTeacher(c, latent_dim, vfm_factor)
            if align == "pre":
                self.align_head = nn.Linear(width, c)
            elif align == "post":
                self.align_head = nn.Linear(latent_dim, c)

    def train(self, mode=True):
        super().train(mode)
        if self.vfm is not None:
            self.vfm.eval()
        return self

    def checkpoint_modules(self):
        """{name: module} a checkpoint stores: all but the frozen VFM."""
        mods = dict(encoder=self.encoder, decoder=self.decoder, teacher=self.teacher, align_head=self.align_head)
        return {k: m for k, m in mods.items() if m is not None}

    def trainable_parameters(self):
        """Encoder, decoder and the alignment head; the VFM and the (fitted) teacher stay fixed."""
        mods = [self.encoder, self.decoder] + ([self.align_head] if self.align_head is not None else [])
        return [p for m in mods for p in m.parameters()]

    # -- encoder
    def encode(self, images01):
        """mu [B, N, d] on the product of spheres of radius sqrt(d) (no noise); 'kl': the posterior mean."""
        return self.encoder(images01)[1]

    def add_noise(self, mu, generator=None):
        """GAE's dynamic noise with C_sigma = self.noise_std (a standard deviation)."""
        return gae_dynamic_noise(mu, self.noise_std, generator)

    def sample_latent(self, h, mu, generator=None):
        """(the decoder's training input, the latent regulariser): 'norm' -> (dynamic noise on mu, None);
        'kl' -> (a posterior draw mean + exp(logvar / 2) eps, KL(q || N(0, I)) averaged over entries)."""
        if self.latent_reg == "norm":
            return self.add_noise(mu, generator), None
        mean, logvar = self.encoder.posterior(h)
        eps = torch.randn(mean.shape, generator=generator, dtype=mean.dtype,
                          device=mean.device if generator is None else generator.device).to(mean.device)
        wide = torch.promote_types(mean.dtype, torch.float32)  # the KL in fp32 at least (bf16 training)
        return mean + (0.5 * logvar).exp() * eps, kl_gaussian(mean.to(wide), logvar.to(wide)).mean()

    def decode_raw(self, z):
        return self.decoder(z, self.grid)

    def decode(self, z):
        return self.decode_raw(z).clamp(0, 1)

    # -- teacher and alignment
    @torch.no_grad()
    def vfm_features(self, images01):
        """Frozen VFM tokens on the latent grid (times vfm_factor), timm's final norm kept."""
        if self.vfm is None:
            raise RuntimeError("this GAE was built with vfm=None: it has no teacher")
        g = (self.grid[0] * self.vfm_factor, self.grid[1] * self.vfm_factor)
        return vit_tokens(self.vfm, images01, g, norm="model")

    def teacher_ready(self):
        return self.teacher is None or bool(self.teacher.fitted)

    @torch.no_grad()
    def compact(self, f):
        """E_sp(f): VFM tokens -> [B, N, d] codes (before the projection to the sphere)."""
        if self.teacher is None:
            raise RuntimeError("this GAE has no compact teacher (teacher=None)")
        if not self.teacher_ready():
            raise RuntimeError(f"the '{self.teacher_kind}' teacher is not fitted: trainers.train_gae fits it, "
                               "or call trainers.fit_teacher(ae, images)")
        return self.teacher(f) if self.teacher_kind == "svd" else self.teacher(f, self.grid)

    @torch.no_grad()
    def teacher_features(self, images01):
        """The alignment target: to_sphere(E_sp(f_vfm(x))) for 'latent', the VFM tokens otherwise."""
        return self.targets_from(self.vfm_features(images01))

    @torch.no_grad()
    def targets_from(self, f):
        """teacher_features from VFM tokens f = vfm_features(x) already computed: one pass of the
        frozen VFM serves both the teacher fit and the targets (trainers.train_gae)."""
        return to_sphere(self.compact(f)) if self.align == "latent" else f

    def alignment_loss(self, mu, h, target):
        """The semantic preservation loss of the chosen paradigm; target = teacher_features(images)."""
        # one form for every arm (equal weights): 1 - cos; on the sphere the latent arm is |mu - t|^2 / (2d)
        pred = mu if self.align == "latent" else self.align_head(h if self.align == "pre" else mu)
        return (1 - F.cosine_similarity(pred, target, dim=-1)).mean()
