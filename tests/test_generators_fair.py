"""Issue 23, generator side: no DiT narrower than its tokens, no shift toward data by default,
guidance only inside cfg_interval, KID against its closed form."""
import math

import pytest
import torch

import lab  # noqa: F401
from lab import evaluate, flows, metrics, samplers
from lab.dit import dit
from lab.train import global_batch, train_generator


def _latents(n_tokens, channels, m=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(m, n_tokens, channels, generator=g), torch.arange(m) % 2


# ----------------------------------------------------------------------------- width >= token dimension

TINY = dict(steps=1, batch_size=4, progress=False, lr=1e-3)


def test_a_dit_narrower_than_its_tokens_is_refused_naming_rae_thm1_and_the_ways_out():
    lat, y = _latents(4, 32)
    with pytest.raises(ValueError, match=r"width=8 < token dimension C=32.*RAE.*Thm\. 1.*width >= 32.*ddt_width >= 32"):
        train_generator(lat, y, model_kw=dict(width=8, depth=1, heads=2), **TINY)
    with pytest.raises(ValueError, match="allow_narrow"):
        dit("tiny", in_dim=32, num_tokens=4, width=8, heads=2)


def test_the_ddt_head_at_the_token_width_or_the_opt_in_is_accepted():
    lat, y = _latents(4, 32)
    out = train_generator(lat, y, model_kw=dict(width=8, depth=1, heads=2, ddt_width=32), **TINY)
    assert out["model"].ddt_width == 32
    out = train_generator(lat, y, model_kw=dict(width=8, depth=1, heads=2), allow_narrow=True, **TINY)
    assert out["model"].width == 8
    with pytest.raises(ValueError, match="ddt_width=16"):  # a head narrower than C does not help
        dit("tiny", in_dim=32, num_tokens=4, width=8, heads=2, ddt_width=16)


# ----------------------------------------------------------------------------- time shift

def test_default_shift_never_moves_time_toward_data():
    """16 x 32 tokens: the RAE alpha sqrt(512/4096) = 0.354 < 1, so the default trains unshifted (alpha 1)."""
    assert flows.resolve_shift(True, 16, 32) == 1.0
    assert flows.resolve_shift(True, 16, 384) == pytest.approx(math.sqrt(16 * 384 / 4096))  # 1.2247
    assert flows.resolve_shift(0.354, 16, 32) == 0.354  # a number still forces alpha
    lat, y = _latents(16, 32)
    kw = dict(batch_size=8, seed=3, path="linear", time_dist="logit_normal", label_dropout=0.0, num_classes=2,
              device=torch.device("cpu"))
    t_default = global_batch(lat, y, 0, shift=True, **kw)[3]
    t_plain = global_batch(lat, y, 0, shift=False, **kw)[3]
    torch.testing.assert_close(t_default, t_plain, rtol=0, atol=0)
    lat384, y384 = _latents(16, 384)
    t384 = global_batch(lat384, y384, 0, shift=True, **kw)[3]
    plain384 = global_batch(lat384, y384, 0, shift=False, **kw)[3]
    torch.testing.assert_close(t384, flows.shift_time(plain384, math.sqrt(1.5)))
    assert (t384 < plain384).all()  # toward noise


def test_the_trainer_reports_the_alpha_it_used():
    lat, y = _latents(16, 32)
    assert train_generator(lat, y, model_kw=dict(width=32, depth=1), **TINY)["shift_alpha"] == 1.0
    assert train_generator(lat, y, model_kw=dict(width=32, depth=1), shift=0.5, **TINY)["shift_alpha"] == 0.5


# ----------------------------------------------------------------------------- guidance interval

class Probe(torch.nn.Module):
    """Velocity = 1 for the asked class, 0 for the null class: guidance s multiplies it by s."""

    num_classes = 2

    def forward(self, x, t, y):
        return (y < self.num_classes).float()[:, None, None].expand_as(x).clone()


def test_cfg_interval_guides_only_inside_it():
    """Euler on v_null = 0, v_cond = 1: x(1) - x(0) = sum of dt * (s inside the interval, 1 outside)."""
    x0 = torch.zeros(2, 1, 1)
    g = lambda: torch.Generator().manual_seed(0)  # noqa: E731
    full = samplers.sample(Probe(), (2, 1, 1), torch.tensor([0, 1]), steps=10, cfg_scale=3.0, null_class=2,
                           shift=False, generator=g())
    part = samplers.sample(Probe(), (2, 1, 1), torch.tensor([0, 1]), steps=10, cfg_scale=3.0, null_class=2,
                           cfg_interval=(0.5, 1.0), shift=False, generator=g())
    start = flows.prior_for("gaussian", (2, 1, 1), generator=g())
    torch.testing.assert_close(full - start, x0 + 3.0)
    torch.testing.assert_close(part - start, x0 + 0.5 * 1 + 0.5 * 3.0)  # t = 0..0.4 unguided, 0.5..0.9 guided
    z, _ = evaluate.generate(Probe(), 2, (1, 1), steps=10, cfg_scale=3.0, cfg_interval=(0.5, 1.0), shift=False,
                             num_classes=2)
    torch.testing.assert_close(z - flows.prior_for("gaussian", (2, 1, 1), generator=g()), x0 + 2.0)
    with pytest.raises(ValueError, match="cfg_interval"):
        samplers.sample(Probe(), (2, 1, 1), torch.tensor([0, 1]), steps=2, cfg_interval=(0.8, 0.2))


# ----------------------------------------------------------------------------- KID

def _kid_direct(x, y):
    """Unbiased MMD^2 with k(a, b) = (a.b / d + 1)^3, float64, by loops over pairs."""
    x, y = x.double(), y.double()
    d = x.shape[1]
    k = lambda a, b: (a @ b / d + 1) ** 3  # noqa: E731
    m, n = len(x), len(y)
    kxx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    kyy = sum(k(y[i], y[j]) for i in range(n) for j in range(n) if i != j) / (n * (n - 1))
    kxy = sum(k(x[i], y[j]) for i in range(m) for j in range(n)) / (m * n)
    return float(kxx + kyy - 2 * kxy)


def test_kid_equals_the_direct_unbiased_formula_when_the_subset_is_the_whole_set():
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(6, 5, generator=g), torch.randn(6, 5, generator=g) + 0.5
    out = metrics.kid(x, y, subsets=3, subset_size=100)  # clipped to min(m, n) = 6, as clean-fid does
    assert (out["n_real"], out["n_fake"], out["subset_size"], out["subsets"]) == (6, 6, 6, 3)
    assert out["value"] == pytest.approx(_kid_direct(x, y), rel=1e-10) and out["std"] == pytest.approx(0, abs=1e-12)
    assert out["network"] == "unknown"


def test_kid_is_unbiased_near_zero_for_one_distribution_and_mean_over_subsets():
    g = torch.Generator().manual_seed(2)
    a, b = torch.randn(400, 8, generator=g), torch.randn(400, 8, generator=g)
    same = metrics.kid(a, b, subsets=20, subset_size=100)["value"]
    moved = metrics.kid(a, b + 1.0, subsets=20, subset_size=100)["value"]
    assert abs(same) < 0.05 and moved > 10 * abs(same) + 0.1
    assert metrics.kid(a, b, subsets=5, subset_size=50)["std"] >= 0
    with pytest.raises(ValueError, match="subset_size"):
        metrics.kid(a[:3], b, subsets=2, subset_size=1)


def test_kid_matches_torchmetrics_if_installed():
    tm = pytest.importorskip("torchmetrics.image.kid")
    g = torch.Generator().manual_seed(3)
    x, y = torch.randn(50, 6, generator=g), torch.randn(50, 6, generator=g) + 0.3
    ours = metrics.kid(x, y, subsets=1, subset_size=50)["value"]
    theirs = tm.poly_mmd(x.double(), y.double(), degree=3, gamma=None, coef=1.0)
    assert ours == pytest.approx(float(theirs), rel=1e-6)


# ----------------------------------------------------------------------------- notebooks 05 and 06

def _code(stem):
    import json
    from pathlib import Path
    nb = Path(__file__).resolve().parents[1] / "notebooks" / f"{stem}.ipynb"
    cells = [c for c in json.loads(nb.read_text())["cells"] if c["cell_type"] == "code"]
    return "".join(cells[0]["source"]), "".join("".join(c["source"]) for c in cells[1:])


def test_notebook_05_has_no_noshift_arm_and_logs_its_alpha_and_protocols():
    params, code = _code("05_flow_matching")
    assert 'configs["noshift"]' not in code and "shift=False" not in code
    assert "cfg_interval = [0.0, 1.0]" in params and "paper_cfg_scale = 1.0" in params and "paper_steps = 50" in params
    for key in ('"shift_alpha"', '"protocol_paper"', '"protocol_cfg4"', '"cpu_scale.shift"'):
        assert key in code, key


def test_notebook_06_gives_wide_tokens_a_ddt_head_and_defaults_to_the_gae_arm():
    params, code = _code("06_decoder_scale")
    assert 'autoencoders = ["gae"]' in params and "hae_steps" not in params and "cfg_interval" in params
    assert "ddt_width=ddt_width" in code and '"cpu_scale.u_curve"' in code and "kid_generated" in code
