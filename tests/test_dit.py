"""DiT: shapes, adaLN-zero init, positions, dtype flow under autocast, CFG, presets, width theorem."""
import math

import pytest
import torch

from lab.dit import DiT, SIZES, default_heads, dit, sincos_2d
from lab.probes import width_check, width_floor



def _randomize(model, seed=0):
    """Give the zero-initialised layers random weights so the output depends on everything."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(0.2 * torch.randn(p.shape, generator=g))
    return model


def test_shapes_and_zero_init():
    torch.manual_seed(0)
    m = dit("tiny", in_dim=8, num_tokens=16, num_classes=10)
    x, t, y = torch.randn(3, 16, 8), torch.rand(3), torch.tensor([0, 9, 10])  # 10 = null class
    out = m(x, t, y)
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.count_nonzero(out) == 0  # adaLN-zero + zero output layer: the model starts at v = 0
    (out - torch.randn_like(out)).pow(2).sum().backward()  # ...but the output layer gets a gradient
    assert m.final.linear.weight.grad.abs().sum() > 0
    assert m.y_embed.num_embeddings == 11


def test_ddt_head_shapes_and_params():
    torch.manual_seed(0)
    base = dit("tiny", in_dim=8, num_tokens=16, num_classes=10)
    m = dit("tiny", in_dim=8, num_tokens=16, num_classes=10, ddt_width=128, ddt_depth=2)
    assert len(m.ddt_blocks) == 2 and m.ddt_blocks[0].attn.qkv.in_features == 128
    assert m.num_params() > base.num_params()
    _randomize(m)
    x = torch.randn(2, 16, 8)
    out = m(x, torch.rand(2), torch.tensor([1, 2]))
    assert out.shape == x.shape and torch.isfinite(out).all()
    # the head sees x_t directly: changing x_t changes the output even with the base output fixed
    assert not torch.allclose(m(x + 1, torch.zeros(2), torch.tensor([1, 2])),
                              m(x, torch.zeros(2), torch.tensor([1, 2])))


def test_conditioning_and_positions_matter():
    torch.manual_seed(0)
    for pos in ("sincos", "learned"):
        m = _randomize(DiT(8, 16, width=32, depth=2, heads=4, num_classes=5, pos=pos))
        x, t, y = torch.randn(2, 16, 8), torch.full((2,), 0.5), torch.tensor([1, 1])
        base = m(x, t, y)
        assert not torch.allclose(m(x, t, torch.tensor([2, 2])), base, atol=1e-4)  # class
        assert not torch.allclose(m(x, torch.full((2,), 0.6), y), base, atol=1e-4)  # time
        perm = torch.randperm(16)
        # attention + MLP are permutation-equivariant; only the positions break that symmetry
        assert not torch.allclose(m(x[:, perm], t, y), base[:, perm], atol=1e-4)


def test_sincos_2d_closed_form():
    dim, grid = 16, (3, 5)
    emb = sincos_2d(dim, grid)
    assert emb.shape == (15, dim)
    i, j, k = 2, 4, 1  # token (row 2, col 4), frequency index 1 of 4
    omega = 1.0 / 10000 ** (k / 4)
    tok = i * grid[1] + j
    assert emb[tok, k] == pytest.approx(math.sin(i * omega), abs=1e-6)       # rows: first half
    assert emb[tok, 4 + k] == pytest.approx(math.cos(i * omega), abs=1e-6)
    assert emb[tok, 8 + k] == pytest.approx(math.sin(j * omega), abs=1e-6)   # columns: second half
    assert torch.cdist(emb, emb).add(torch.eye(15)).min() > 0.1  # all positions distinct


def test_grid_and_argument_errors():
    m = DiT(4, 6, width=32, depth=1, heads=4, num_classes=2)  # 6 is not square: a (1, 6) row
    assert m.grid == (1, 6)
    assert DiT(4, 6, width=32, depth=1, heads=4, num_classes=2, grid=(2, 3)).grid == (2, 3)
    with pytest.raises(ValueError, match="grid"):
        DiT(4, 6, width=32, depth=1, heads=4, num_classes=2, grid=(2, 2))
    with pytest.raises(ValueError, match="pos"):
        DiT(4, 4, width=32, depth=1, heads=4, num_classes=2, pos="rope")
    with pytest.raises(ValueError, match="heads"):
        DiT(4, 4, width=30, depth=1, heads=4, num_classes=2)
    with pytest.raises(ValueError, match="size"):
        dit("XXL", in_dim=4, num_tokens=4)
    with pytest.raises(ValueError, match="tokens"):
        m(torch.randn(1, 5, 4), torch.rand(1), torch.zeros(1, dtype=torch.long))


def test_bf16_autocast_dtype_flow():
    torch.manual_seed(0)
    m = _randomize(dit("tiny", in_dim=8, num_tokens=16, num_classes=3, qk_norm=True))
    x, t, y = torch.randn(2, 16, 8), torch.rand(2), torch.tensor([0, 3])
    ref = m(x, t, y)
    with torch.autocast("cpu", dtype=torch.bfloat16):  # QK-norm weights are fp32: SDPA must still get one dtype
        out = m(x, t, y)
    assert out.dtype == torch.float32  # the output follows the input's dtype
    assert (out - ref).abs().max() < 0.05 * ref.abs().max()
    assert m(x.bfloat16(), t, y).dtype == torch.bfloat16


def test_ddt_head_is_raes_form():
    """RAE §5: v = H(x_t | z_t, t). The head's token input is x_t alone; the base output z_t only
    conditions it, per token. With the head's adaLN zeroed the output is linear(norm(ddt_x(x_t))):
    no class, time or base output in it (the old form added the base output to the head input)."""
    torch.manual_seed(0)
    m = _randomize(dit("tiny", in_dim=8, num_tokens=16, num_classes=10, ddt_width=32, ddt_depth=2))
    x, t, y = torch.randn(2, 16, 8), torch.rand(2), torch.tensor([1, 2])
    conds = []
    hook = m.ddt_blocks[0].adaLN.register_forward_hook(lambda mod, inp, out: conds.append(inp[0]))
    full = m(x, t, y)
    hook.remove()
    assert conds[0].shape == (2, 16, 32)  # one condition per token
    assert not torch.allclose(conds[0][:, 0], conds[0][:, 1])  # ...that differs between tokens
    assert not torch.allclose(m(x, t, torch.tensor([3, 4])), full, atol=1e-4)  # y reaches the head via z_t
    with torch.no_grad():
        for block in list(m.ddt_blocks) + [m.final]:
            block.adaLN[-1].weight.zero_()
            block.adaLN[-1].bias.zero_()
    h = m.ddt_x(x)
    expected = m.final.linear(h * torch.rsqrt(h.pow(2).mean(-1, keepdim=True) + 1e-6))
    torch.testing.assert_close(m(x, t, y), expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(m(x, torch.rand(2), torch.tensor([5, 6])), expected, rtol=1e-5, atol=1e-5)


def test_heads_default_to_head_dim_at_most_128():
    assert default_heads(1152) == 9 and default_heads(2048) == 16 and default_heads(64) == 1
    assert default_heads(384, at_least=6) == 6 and default_heads(1000) == 8  # 1000/8 = 125
    with torch.device("meta"):
        wide = dit("tiny", in_dim=8, num_tokens=16, width=1152, ddt_width=2048)
        given = dit("tiny", in_dim=8, num_tokens=16, width=1152, heads=4)
        xl = dit("XL", in_dim=8, num_tokens=16)
    assert wide.blocks[0].attn.heads == 9 and wide.ddt_blocks[0].attn.heads == 16
    assert given.blocks[0].attn.heads == 4  # an explicit count is kept
    assert xl.blocks[0].attn.heads == 16  # presets keep theirs (head_dim 72)
    for m in (wide, xl):
        for blk in list(m.blocks) + list(getattr(m, "ddt_blocks", [])):
            assert blk.attn.qkv.in_features // blk.attn.heads <= 128


def test_presets_param_counts():
    """Parameter counts on the meta device (nothing allocated). DiT-XL/2 has 675M parameters."""
    with torch.device("meta"):
        counts = {s: dit(s, in_dim=16, num_tokens=256).num_params() for s in SIZES}
        wide = dit("S", in_dim=16, num_tokens=256, width=512, depth=4, heads=8)
    assert counts["tiny"] < counts["S"] < counts["B"] < counts["L"] < counts["XL"]
    assert 0.66e9 < counts["XL"] < 0.69e9 and 0.45e9 < counts["L"] < 0.47e9 and 0.12e9 < counts["B"] < 0.14e9
    assert wide.width == 512 and len(wide.blocks) == 4


# ---------------------------------------------------------------------------------------------
# Width theorem (RAE): a model whose output layer has rank d < n cannot fit one latent
# ---------------------------------------------------------------------------------------------

def test_width_floor_formula_monte_carlo():
    """An oracle that knows u exactly but must output b + (vector in S) has residual ||P⊥(u - b)||^2.

    With S = the top-d eigenvectors of the token covariance of x1 and b = the token mean, its
    Monte-Carlo loss matches width_floor; a random S does worse.
    """
    g = torch.Generator().manual_seed(0)
    n, d, tokens = 12, 4, 16  # tokens - 1 > d, so the data term is not zero
    x1 = torch.randn(tokens, n, generator=g, dtype=torch.float64) * torch.linspace(0.2, 2, n, dtype=torch.float64)
    xc = x1 - x1.mean(0)
    _, vecs = torch.linalg.eigh(xc.T @ xc / tokens)
    x0 = torch.randn(20000, tokens, n, generator=g, dtype=torch.float64)
    u = x1 - x0

    def oracle_loss(basis):
        P = torch.eye(n, dtype=torch.float64) - basis @ basis.T  # projector onto S⊥
        return ((u - x1.mean(0)) @ P).pow(2).mean().item()

    floor = width_floor(x1, d)
    assert floor > (n - d) / n + 0.05  # the data term is present
    assert oracle_loss(vecs[:, -d:]) == pytest.approx(floor, rel=0.01)
    random_basis, _ = torch.linalg.qr(torch.randn(n, d, generator=g, dtype=torch.float64))
    assert oracle_loss(random_basis) > floor
    assert width_floor(x1[:3], d) == pytest.approx((n - d) / n)  # 3 tokens: spread fits in S
    assert width_floor(x1, n) == 0.0


def test_width_check_rows_closed_form_at_init():
    """Untrained (lr = 0: the zero-initialised output layer predicts v = 0), the eval loss is
    E(x1 - x0)² per element = 1 + mean(x1²); floors and the mean of the last training losses are wired through."""
    rows = width_check(n=8, widths=(4, 8), tokens=2, depth=1, heads=2, steps=3, batch_size=16, lr=0.0, seed=3,
                       progress=False, eval_samples=2048)
    x1 = torch.randn(2, 8, generator=torch.Generator().manual_seed(3))
    assert [r["width"] for r in rows] == [4, 8] and all(r["n"] == 8 for r in rows)
    assert [r["floor"] for r in rows] == [width_floor(x1, 4), 0.0]
    assert [r["floor_isotropic"] for r in rows] == [0.5, 0.0]
    assert [r["params"] for r in rows] == [DiT(8, 2, width=d, depth=1, heads=2, num_classes=1).num_params()
                                           for d in (4, 8)]
    for r in rows:
        assert r["loss"] == pytest.approx(1 + x1.pow(2).mean().item(), rel=0.05)
        assert r["train_loss_end"] == pytest.approx(r["loss"], rel=0.3)  # 3 steps of 16 draws each


def test_narrow_dit_cannot_fit_one_latent():
    """RAE's width theorem at tiny size: n = 32 token dim, widths 8 and 32, one latent of 4 tokens.

    The narrow model's loss can never go below (n - d)/n = 0.75 (a hard bound; the eval uses 4096
    fresh noise draws) and stays near it; the model as wide as the tokens fits far below it.
    """
    torch.manual_seed(0)
    narrow, wide = width_check(n=32, widths=(8, 32), tokens=4, depth=2, heads=2, steps=300,
                               batch_size=64, lr=3e-3, seed=0, progress=False)
    assert narrow["floor"] == pytest.approx(24 / 32) and wide["floor"] == 0.0
    assert narrow["floor"] - 0.02 < narrow["loss"] < narrow["floor"] + 0.15, narrow
    assert wide["loss"] < 0.3, wide
    assert wide["loss"] < narrow["loss"] - 0.5
