"""DiT / LightningDiT-style diffusion transformer on token latents [B, N, C], with an optional DDT head.

- Tokens in: a linear map C -> width (the latents are already tokens; no patchify here).
- Conditioning c = t_embed(t) + y_embed(y), injected by adaLN-zero (DiT, Peebles & Xie 2023):
  each block predicts shift/scale/gate from c, the gates start at zero so every block starts as
  the identity. Time t in [0, 1] (t = 0 noise, t = 1 data) is scaled by 1000 before the usual
  sinusoidal embedding. Class index `num_classes` is the null class used for CFG.
- LightningDiT choices: RMSNorm, SwiGLU MLP, optional QK-norm (RMSNorm on q and k per head).
- Positions: fixed 2-D sin-cos on a token grid (sqrt(N) x sqrt(N), or `grid=(h, w)`) or learned.
- DDT head (DiT^DH, RAE §5 and App F): z_t = M(x_t | t, y), v_t = H(x_t | z_t, t). A wide shallow
  head (ddt_width, ddt_depth=2 blocks) takes x_t itself as its token input (linear C -> ddt_width,
  no position embedding reapplied) and is conditioned *per token* by adaLN on the base output z_t
  (linear width -> ddt_width) plus its own time embedding. The head, not the base, then sets the
  width that must match the token dimension (see lab.probes.width_check).
- Heads: when not given, the smallest count with head_dim <= 128 (flash-attention kernels take
  head_dim up to 128; above it SDPA falls back to a slow kernel).
- The last linear layer is zero-initialised: the model predicts 0 at step 0.
- Activation checkpointing (`checkpoint=True`, or set `model.checkpoint`): in training, each block
  keeps only its input and recomputes its activations in the backward pass (about one extra
  forward, for activations of one block instead of all of them). Same gradients.
"""
import math

import torch
import torch.nn as nn
import torch.nn.functional as F
from torch.utils.checkpoint import checkpoint as recompute


# ---------------------------------------------------------------------------------------------
# Embeddings
# ---------------------------------------------------------------------------------------------

def timestep_embedding(t, dim, max_period=10000):
    """Sinusoidal embedding of (already scaled) times t [B] -> [B, dim], computed in fp32."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, dtype=torch.float32, device=t.device) / half)
    args = t.float()[:, None] * freqs[None]
    emb = torch.cat([torch.cos(args), torch.sin(args)], dim=-1)
    if dim % 2:
        emb = torch.cat([emb, torch.zeros_like(emb[:, :1])], dim=-1)
    return emb


def sincos_2d(dim, grid, device=None, dtype=torch.float32):
    """[h*w, dim] fixed 2-D sin-cos position table (MAE): half the channels for rows, half for columns.

    Each half is [sin(p·ω_k), cos(p·ω_k)] with ω_k = 10000^(-k/(dim/4)), k < dim/4. The lab's one copy.
    """
    if dim % 4:
        raise ValueError(f"2-D sin-cos positions need width divisible by 4, got width={dim}; use pos='learned'")
    h, w = grid
    omega = 1.0 / 10000 ** (torch.arange(dim // 4, device=device, dtype=torch.float64) / (dim // 4))
    rows, cols = torch.meshgrid(torch.arange(h, device=device, dtype=torch.float64),
                                torch.arange(w, device=device, dtype=torch.float64), indexing="ij")
    out = []
    for pos in (rows.reshape(-1), cols.reshape(-1)):
        angles = pos[:, None] * omega[None]
        out += [angles.sin(), angles.cos()]
    return torch.cat(out, 1).to(dtype)


def default_heads(width, at_least=1, max_head_dim=128):
    """The smallest head count >= at_least that divides width with head_dim <= max_head_dim."""
    h = max(at_least, -(-width // max_head_dim))
    while width % h:
        h += 1
    return h


def default_grid(num_tokens):
    """Square grid when N is a perfect square, else a single row (1, N)."""
    s = math.isqrt(num_tokens)
    return (s, s) if s * s == num_tokens else (1, num_tokens)


class TimestepEmbedder(nn.Module):
    """t in [0, 1] -> vector of size `dim` (sinusoid of 1000 t, then a 2-layer MLP)."""

    def __init__(self, dim, freq_dim=256, scale=1000.0):
        super().__init__()
        self.freq_dim, self.scale = freq_dim, scale
        self.mlp = nn.Sequential(nn.Linear(freq_dim, dim), nn.SiLU(), nn.Linear(dim, dim))

    def forward(self, t):
        emb = timestep_embedding(t * self.scale, self.freq_dim)
        return self.mlp(emb.to(self.mlp[0].weight.dtype))


# ---------------------------------------------------------------------------------------------
# Blocks
# ---------------------------------------------------------------------------------------------

def _per_token(a):
    """A conditioning vector [B, D] broadcast over tokens; per-token conditioning [B, N, D] as is."""
    return a.unsqueeze(1) if a.dim() == 2 else a


def modulate(x, shift, scale):
    return x * (1 + _per_token(scale)) + _per_token(shift)


class Attention(nn.Module):
    def __init__(self, dim, heads, qk_norm=True):
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.q_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()
        self.k_norm = nn.RMSNorm(dim // heads, eps=1e-6) if qk_norm else nn.Identity()

    def forward(self, x):
        B, N, C = x.shape
        q, k, v = self.qkv(x).view(B, N, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        # norm in fp32 or wider (the weights' dtype), then back to the dtype SDPA gets for v under autocast
        wide = torch.promote_types(q.dtype, torch.float32)
        q, k = self.q_norm(q.to(wide)).to(v.dtype), self.k_norm(k.to(wide)).to(v.dtype)
        x = F.scaled_dot_product_attention(q, k, v)
        return self.proj(x.transpose(1, 2).reshape(B, N, C))


class SwiGLU(nn.Module):
    """silu(x W1) * (x W2) W3; hidden = 2/3 * mlp_ratio * dim keeps the parameter count of a GELU MLP."""

    def __init__(self, dim, mlp_ratio=4.0):
        super().__init__()
        hidden = int(2 * mlp_ratio * dim / 3)
        self.w12 = nn.Linear(dim, 2 * hidden)
        self.w3 = nn.Linear(hidden, dim)

    def forward(self, x):
        a, b = self.w12(x).chunk(2, dim=-1)
        return self.w3(F.silu(a) * b)


class Block(nn.Module):
    """Transformer block with adaLN-zero: x += gate * f(modulate(norm(x), shift, scale)).

    c is [B, cond_dim] (one condition per sample) or [B, N, cond_dim] (per token, the DDT head).
    """

    def __init__(self, dim, heads, cond_dim, mlp_ratio=4.0, qk_norm=True):
        super().__init__()
        self.norm1 = nn.RMSNorm(dim, eps=1e-6, elementwise_affine=False)
        self.attn = Attention(dim, heads, qk_norm)
        self.norm2 = nn.RMSNorm(dim, eps=1e-6, elementwise_affine=False)
        self.mlp = SwiGLU(dim, mlp_ratio)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 6 * dim))

    def forward(self, x, c):
        shift1, scale1, gate1, shift2, scale2, gate2 = self.adaLN(c).chunk(6, dim=-1)
        x = x + _per_token(gate1) * self.attn(modulate(self.norm1(x), shift1, scale1))
        x = x + _per_token(gate2) * self.mlp(modulate(self.norm2(x), shift2, scale2))
        return x


class FinalLayer(nn.Module):
    def __init__(self, dim, out_dim, cond_dim):
        super().__init__()
        self.norm = nn.RMSNorm(dim, eps=1e-6, elementwise_affine=False)
        self.adaLN = nn.Sequential(nn.SiLU(), nn.Linear(cond_dim, 2 * dim))
        self.linear = nn.Linear(dim, out_dim)

    def forward(self, x, c):
        shift, scale = self.adaLN(c).chunk(2, dim=-1)
        return self.linear(modulate(self.norm(x), shift, scale))


# ---------------------------------------------------------------------------------------------
# The model
# ---------------------------------------------------------------------------------------------

class DiT(nn.Module):
    """forward(x [B,N,C], t [B] in [0,1], y [B] long or None) -> velocity [B,N,C] (dtype of x)."""

    def __init__(self, in_dim, num_tokens, width=384, depth=12, heads=None, num_classes=1000,
                 qk_norm=True, pos="sincos", grid=None, ddt_width=None, ddt_depth=2, ddt_heads=None,
                 mlp_ratio=4.0, time_scale=1000.0, checkpoint=False):
        super().__init__()
        if pos not in ("sincos", "learned"):
            raise ValueError(f"pos must be 'sincos' or 'learned', got {pos!r}")
        heads = heads or default_heads(width)
        if width % heads:
            raise ValueError(f"width={width} must be divisible by heads={heads}")
        grid = tuple(grid) if grid is not None else default_grid(num_tokens)
        if grid[0] * grid[1] != num_tokens:
            raise ValueError(f"grid={grid} has {grid[0] * grid[1]} cells but num_tokens={num_tokens}")
        self.in_dim, self.num_tokens, self.grid = in_dim, num_tokens, grid
        self.width, self.depth, self.num_classes = width, depth, num_classes
        self.pos_kind, self.checkpoint = pos, checkpoint

        self.x_embed = nn.Linear(in_dim, width)
        self.t_embed = TimestepEmbedder(width, scale=time_scale)
        self.y_embed = nn.Embedding(num_classes + 1, width)  # last row: null class for CFG
        self._add_pos("pos", width)
        self.blocks = nn.ModuleList([Block(width, heads, width, mlp_ratio, qk_norm) for _ in range(depth)])

        self.ddt_width = ddt_width
        if ddt_width is None:
            self.final = FinalLayer(width, in_dim, width)
        else:
            ddt_heads = ddt_heads or default_heads(ddt_width, at_least=heads)
            if ddt_width % ddt_heads:
                raise ValueError(f"ddt_width={ddt_width} must be divisible by ddt_heads={ddt_heads}")
            self.base_norm = nn.RMSNorm(width, eps=1e-6, elementwise_affine=False)
            self.ddt_x = nn.Linear(in_dim, ddt_width)    # x_t -> head tokens
            self.ddt_s = nn.Linear(width, ddt_width)     # base output z_t -> per-token condition
            self.ddt_t = TimestepEmbedder(ddt_width, scale=time_scale)
            self.ddt_blocks = nn.ModuleList([Block(ddt_width, ddt_heads, ddt_width, mlp_ratio, qk_norm)
                                             for _ in range(ddt_depth)])
            self.final = FinalLayer(ddt_width, in_dim, ddt_width)
        self.initialize_weights()

    def _add_pos(self, name, dim):
        if self.pos_kind == "sincos":
            self.register_buffer(name, sincos_2d(dim, self.grid)[None], persistent=False)
        else:
            self.register_parameter(name, nn.Parameter(torch.zeros(1, self.num_tokens, dim)))

    def initialize_weights(self):
        """DiT init: xavier linears, N(0, 0.02) embeddings, zero adaLN and zero output layer."""
        def basic(m):
            if isinstance(m, nn.Linear):
                nn.init.xavier_uniform_(m.weight)
                nn.init.zeros_(m.bias)
        self.apply(basic)
        nn.init.normal_(self.y_embed.weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        if self.pos_kind == "learned":
            nn.init.trunc_normal_(self.pos, std=0.02)
        if self.ddt_width is not None:
            nn.init.normal_(self.ddt_t.mlp[0].weight, std=0.02)
            nn.init.normal_(self.ddt_t.mlp[2].weight, std=0.02)
        for block in list(self.blocks) + list(getattr(self, "ddt_blocks", [])):
            nn.init.zeros_(block.adaLN[-1].weight)
            nn.init.zeros_(block.adaLN[-1].bias)
        nn.init.zeros_(self.final.adaLN[-1].weight)
        nn.init.zeros_(self.final.adaLN[-1].bias)
        nn.init.zeros_(self.final.linear.weight)
        nn.init.zeros_(self.final.linear.bias)

    def forward(self, x, t, y=None):
        B, N, C = x.shape
        if (N, C) != (self.num_tokens, self.in_dim):
            raise ValueError(f"expected tokens [B, {self.num_tokens}, {self.in_dim}], got {list(x.shape)}")
        in_dtype = x.dtype
        if not torch.is_autocast_enabled(x.device.type):
            x = x.to(self.x_embed.weight.dtype)
        t = torch.as_tensor(t, device=x.device).reshape(-1).expand(B)
        if y is None:
            y = torch.full((B,), self.num_classes, device=x.device, dtype=torch.long)
        c = self.t_embed(t) + self.y_embed(y)

        h = self.x_embed(x) + self.pos
        for block in self.blocks:
            h = self._run(block, h, c)
        if self.ddt_width is not None:  # RAE: v = H(x_t | z_t, t), conditioned per token on z_t
            c = self.ddt_s(self.base_norm(h)) + self.ddt_t(t).unsqueeze(1)
            h = self.ddt_x(x)
            for block in self.ddt_blocks:
                h = self._run(block, h, c)
        return self.final(h, c).to(in_dtype)

    def _run(self, block, h, c):
        if self.checkpoint and self.training and torch.is_grad_enabled():
            return recompute(block, h, c, use_reentrant=False)  # non-reentrant: works under autocast and compile
        return block(h, c)

    def num_params(self):
        return sum(p.numel() for p in self.parameters())


# ---------------------------------------------------------------------------------------------
# Size presets: (width, depth, heads)
# ---------------------------------------------------------------------------------------------

SIZES = {
    "tiny": dict(width=64, depth=2, heads=4),     # CPU tests and smoke runs
    "S": dict(width=384, depth=12, heads=6),
    "B": dict(width=768, depth=12, heads=12),
    "L": dict(width=1024, depth=24, heads=16),
    "XL": dict(width=1152, depth=28, heads=16),
}


def check_width(in_dim, width, ddt_width=None, allow_narrow=False):
    """Refuse a DiT whose output width is below the token dimension C, unless `allow_narrow`.

    RAE §4.1 / Thm. 1: a model of width d < C cannot fit even one latent (the loss stays at a floor
    of about (C - d) / C; notebook 08 measures it). With the DDT head the head's width is the one
    that matters, so width < C is fine when ddt_width >= C (RAE §5).
    """
    if allow_narrow or width >= in_dim or (ddt_width is not None and ddt_width >= in_dim):
        return
    head = "" if ddt_width is None else f" and ddt_width={ddt_width}"
    raise ValueError(f"DiT width={width} < token dimension C={in_dim}{head}: by RAE §4.1 Thm. 1 it cannot fit even one "
                     f"latent. Use a wider model (width >= {in_dim}) or the DDT head with ddt_width >= {in_dim} "
                     "(RAE §5), or pass allow_narrow=True for an experiment about exactly that (notebook 08)")


def dit(size, *, in_dim, num_tokens, allow_narrow=False, **kw):
    """A DiT preset; any keyword (width, depth, heads, ddt_width, num_classes, ...) overrides it.

    A width given without heads gets default_heads(width) (head_dim <= 128), not the preset's count.
    Refuses width < in_dim without ddt_width >= in_dim (check_width) unless allow_narrow=True.
    Example: dit('S', in_dim=8, num_tokens=16, num_classes=10, ddt_width=1024).
    """
    if size not in SIZES:
        raise ValueError(f"size must be one of {list(SIZES)}, got {size!r}")
    preset = dict(SIZES[size])
    if "width" in kw and "heads" not in kw:
        preset.pop("heads")
    args = {**preset, **kw}
    check_width(in_dim, args["width"], args.get("ddt_width"), allow_narrow)
    return DiT(in_dim, num_tokens, **args)

