"""probes.width_check and fm_eval_loss with their defaults, fast: what reaches the DiT, the training
call and the evaluation (the real 300-step fit is test_dit's slow test_narrow_dit_cannot_fit_one_latent)."""
import math

import pytest
import torch

from lab import flows, probes


def test_width_check_defaults_reach_model_training_and_eval(monkeypatch):
    built, trained, evals, rng = [], [], [], []
    real_dit = probes.dit

    def dit(*args, **kw):
        rng.append(torch.randn(3))  # the global generator, seeded by width_check
        built.append((args, kw))
        return real_dit(*args, **kw)

    def train(latents, labels, **kw):
        trained.append((latents.clone(), labels.clone(), kw))
        return {"model": kw["model"], "losses": [float(i) for i in range(25)]}

    def evaluate(model, x1, y, **kw):
        evals.append((model, x1.clone(), y, kw))
        return 0.25 * len(evals)

    monkeypatch.setattr(probes, "dit", dit)
    monkeypatch.setattr(probes, "train_generator", train)
    monkeypatch.setattr(probes, "fm_eval_loss", evaluate)
    rows = probes.width_check()

    x1 = torch.randn(4, 32, generator=torch.Generator().manual_seed(0))  # tokens = 4, n = 32, seed 0
    torch.manual_seed(0)
    assert torch.equal(rng[0], torch.randn(3))
    assert built == [(("tiny",), dict(in_dim=32, num_tokens=4, width=d, depth=2, heads=2, num_classes=1, pos="sincos",
                                     allow_narrow=True)) for d in (8, 32)]  # notebook 08 opts in by name
    for (latents, labels, kw), (model, x1_eval, y, ekw) in zip(trained, evals):
        assert torch.equal(latents, x1[None]) and labels.tolist() == [0] and labels.dtype == torch.long
        model_kw = kw.pop("model")
        assert kw == dict(path="linear", loss="euclidean", time_dist="uniform", shift=False, label_dropout=0.0,
                          steps=600, batch_size=128, lr=2e-3, ema_decay=0.0, seed=0, progress=True, device=None,
                          precision="fp32")
        assert model is model_kw and torch.equal(x1_eval, x1) and y == 0 and ekw == {"samples": 4096}
    assert [(r["width"], r["n"], r["loss"]) for r in rows] == [(8, 32, 0.25), (32, 32, 0.5)]
    assert [r["floor"] for r in rows] == [probes.width_floor(x1, 8), 0.0]
    assert [r["floor_isotropic"] for r in rows] == [24 / 32, 0.0]
    assert [r["train_loss_end"] for r in rows] == [sum(range(5, 25)) / 20] * 2  # the last 20 steps
    assert [r["params"] for r in rows] == [e[0].num_params() for e in evals]

    seen = []
    monkeypatch.setattr(probes, "train_generator",
                        lambda *a, **kw: seen.append(kw) or {"model": kw["model"], "losses": []})
    (row,) = probes.width_check(n=6, widths=(8,), tokens=2, depth=1, heads=1, seed=3, eval_samples=8, device="cpu",
                                progress=False, steps=7, batch_size=5, lr=0.5)
    assert math.isnan(row["train_loss_end"]) and row["floor"] == 0.0 and row["floor_isotropic"] == 0.0
    assert evals[-1][3] == {"samples": 8}
    assert {k: seen[0][k] for k in ("device", "progress", "steps", "batch_size", "lr", "seed")} == dict(
        device="cpu", progress=False, steps=7, batch_size=5, lr=0.5, seed=3)


class TimesX(torch.nn.Module):
    """v = t · x_t + y: its loss depends on the noise, the times and the label."""
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))

    def forward(self, x_t, t, y):
        return t[:, None, None] * x_t + y[:, None, None]


def test_fm_eval_loss_defaults_closed_form():
    """Default: 4096 draws in batches of 1024 from seed 1234, uniform t, linear path, mean (v - u)²."""
    x1 = torch.randn(3, 5, generator=torch.Generator().manual_seed(1))
    g = torch.Generator().manual_seed(1234)
    total = 0.0
    for _ in range(4):
        x0 = torch.randn(1024, 3, 5, generator=g)
        t = torch.rand(1024, generator=g)
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
        total += ((t[:, None, None] * x_t + 2 - (x1 - x0)).double().pow(2).mean().item())
    got = probes.fm_eval_loss(TimesX(), x1, 2)
    assert got == pytest.approx(total / 4, rel=1e-6)
    # a last partial batch is weighted by its size: 3 draws = one batch of 2 and one of 1
    g = torch.Generator().manual_seed(7)
    parts = []
    for n in (2, 1):
        x0 = torch.randn(n, 3, 5, generator=g)
        t = flows.sample_t(n, "logit_normal", generator=g)
        x_t = (1 - t[:, None, None]) * x0 + t[:, None, None] * x1
        parts.append(n * (t[:, None, None] * x_t - (x1 - x0)).double().pow(2).mean().item())
    got = probes.fm_eval_loss(TimesX(), x1, 0, samples=3, seed=7, batch=2, time_dist="logit_normal")
    assert got == pytest.approx(sum(parts) / 3, rel=1e-6)
