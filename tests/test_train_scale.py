"""Training at scale (issue 10) on a CPU: gradient accumulation equals the large batch, the memory
budget picks the accumulation, activation checkpointing keeps the gradients, the foreach EMA is
the per-parameter formula, the NaN guard checked at log intervals still stops at the first bad
step with the state before it, and token FD in torch equals the float64 numpy reference."""
import os

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from lab import evaluate, metrics
from lab import trainutil as tu
from lab.dit import dit
from lab.train import MEMORY_MARGIN, auto_accum_steps, global_batch, memory_model, step_bytes, train_generator

from test_train import NaNAt, toy_latents


def _double_dit(seed=0):
    torch.manual_seed(seed)
    return dit("tiny", in_dim=8, num_tokens=4, num_classes=2).double()


@pytest.mark.parametrize("path,loss", [("linear", "euclidean"), ("slerp", "riemannian")])
def test_accumulation_equals_the_large_batch(path, loss):
    """3 steps of batch 16 as 1, 2 and 4 micro-batches (float64 weights): the same weights to 1e-5."""
    lat, labels = toy_latents()
    kw = dict(path=path, loss=loss, radial_weight=0.1, steps=3, batch_size=16, lr=1e-3, ema_decay=0.5,
              seed=3, progress=False, device="cpu", precision="fp32")
    runs = {k: train_generator(lat, labels, model=_double_dit(), accum_steps=k, **kw) for k in (1, 2, 4)}
    for k in (2, 4):
        np.testing.assert_allclose(runs[k]["losses"], runs[1]["losses"], rtol=1e-6)
        for name in ("model", "ema"):
            for (n, a), b in zip(runs[k][name].state_dict().items(), runs[1][name].state_dict().values()):
                torch.testing.assert_close(a, b, rtol=0, atol=1e-5, msg=f"accum {k}: {name}.{n}")
    moved = max((a - b).abs().max() for a, b in zip(runs[1]["model"].parameters(), _double_dit().parameters()))
    assert moved > 1e-4  # the steps did move the weights, so the comparison means something


def test_accum_steps_must_divide_the_batch():
    lat, labels = toy_latents()
    with pytest.raises(ValueError, match="divisible by accum_steps=3"):
        train_generator(lat, labels, steps=1, batch_size=8, accum_steps=3, progress=False, device="cpu")


def test_memory_budget_picks_the_fewest_micro_batches_that_fit():
    lat, labels = toy_latents()
    model = dit("tiny", in_dim=8, num_tokens=4, num_classes=2)
    cpu = torch.device("cpu")
    kw = dict(path="slerp", loss="riemannian", radial_weight=0.1, precision="fp32")
    batch = global_batch(lat, labels, 0, batch_size=16, seed=0, path="slerp", time_dist="uniform", shift=False,
                         label_dropout=0.0, num_classes=2, device=cpu)
    rest, one, per_sample = memory_model(model, batch, device=cpu, **kw)
    assert rest == 4 * 4 * model.num_params() and one == step_bytes(model, [v[:1] for v in batch], device=cpu, **kw)
    assert per_sample > 0 and one > 4 * model.num_params()  # activations on top of the fp32 gradients
    gib = 2**30
    for k in (1, 2, 4, 8, 16):  # a budget that just holds a micro-batch of 16 / k samples picks k
        need = MEMORY_MARGIN * (rest + one + (16 // k - 1) * per_sample)
        assert auto_accum_steps(model, batch, need / gib, device=cpu, **kw) == k
        if k < 16:  # a byte less: twice as many micro-batches
            assert auto_accum_steps(model, batch, (need - 1) / gib, device=cpu, **kw) == 2 * k
    with pytest.raises(ValueError, match="memory_budget_gb"):
        auto_accum_steps(model, batch, (MEMORY_MARGIN * (rest + one) - 1) / gib, device=cpu, **kw)
    # through the trainer: the chosen accumulation trains like the large batch
    budget = MEMORY_MARGIN * (rest + one + 3 * per_sample) / gib  # micro-batches of 4: accum 4
    tkw = dict(path="slerp", loss="riemannian", radial_weight=0.1, steps=2, batch_size=16, seed=0,
               time_dist="uniform", shift=False, progress=False, device="cpu", precision="fp32")
    auto = train_generator(lat, labels, memory_budget_gb=budget, **tkw)  # the same tiny DiT as `model`
    big = train_generator(lat, labels, **tkw)
    assert auto["accum_steps"] == 4 and big["accum_steps"] == 1
    np.testing.assert_allclose(auto["losses"], big["losses"], rtol=1e-5)
    assert not all(torch.equal(a, b) for a, b in zip(auto["model"].parameters(), big["model"].parameters()))


@pytest.mark.parametrize("ddt_width", [None, 32])
def test_activation_checkpointing_gives_the_same_gradients(ddt_width):
    torch.manual_seed(0)
    plain = dit("tiny", in_dim=8, num_tokens=4, num_classes=2, ddt_width=ddt_width).double()
    for p in plain.parameters():  # adaLN-zero starts every block as the identity: perturb to test them
        p.data += 0.05 * torch.randn_like(p)
    ckpt = dit("tiny", in_dim=8, num_tokens=4, num_classes=2, ddt_width=ddt_width, checkpoint=True).double()
    ckpt.load_state_dict(plain.state_dict())
    x, t, y = torch.randn(5, 4, 8, dtype=torch.float64), torch.rand(5), torch.randint(3, (5,))
    for m in (plain, ckpt):
        m(x, t, y).square().mean().backward()
    for (name, a), b in zip(plain.named_parameters(), ckpt.parameters()):
        assert a.grad is not None and a.grad.abs().max() > 0, name
        torch.testing.assert_close(a.grad, b.grad, rtol=1e-12, atol=1e-14, msg=name)
    with torch.no_grad():  # no grad, eval: checkpointing off, the same outputs
        torch.testing.assert_close(plain.eval()(x, t, y), ckpt.eval()(x, t, y), rtol=0, atol=0)


def test_trainer_checkpoint_option_reaches_the_model():
    lat, labels = toy_latents()
    kw = dict(steps=3, batch_size=8, seed=1, progress=False, device="cpu")
    on, off = train_generator(lat, labels, checkpoint=True, **kw), train_generator(lat, labels, **kw)
    assert on["model"].checkpoint and not off["model"].checkpoint
    np.testing.assert_allclose(on["losses"], off["losses"], rtol=1e-6)
    with pytest.raises(ValueError, match="checkpoint"):
        train_generator(lat, labels, model=torch.nn.Linear(8, 8), checkpoint=True, **kw)


def test_foreach_ema_is_the_per_parameter_formula():
    torch.manual_seed(0)
    model = dit("tiny", in_dim=8, num_tokens=4, num_classes=2)
    ema = dit("tiny", in_dim=8, num_tokens=4, num_classes=2)
    for p in list(model.parameters()) + list(ema.parameters()):
        p.data.normal_()
    for decay in (0.9999, 0.5, 0.0):
        expect = {n: p.detach().clone().lerp_(dict(model.named_parameters())[n].detach(), 1.0 - decay)
                  for n, p in ema.named_parameters()}  # the old loop, one lerp_ per parameter
        tu.update_ema(ema, model, decay)
        assert all(torch.equal(p, expect[n]) for n, p in ema.named_parameters()), decay


def test_nan_guard_at_log_intervals_saves_the_state_before_the_bad_step(tmp_path):
    """The loss is read every 5 steps; the NaN at step 7 is found after step 9. Steps 7..9 are skipped on
    the device, so the checkpoint named step 7 holds the weights and AdamW state of 7 clean steps."""
    lat, labels = toy_latents()
    out_dir = str(tmp_path / "run")
    kw = dict(steps=20, batch_size=8, lr=1e-3, ema_decay=0.9, progress=False, device="cpu")
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match=r"non-finite loss at step 7 \(found at the check after step 9; "
                                                 r"checked every 5 steps\)") as err:
        train_generator(lat, labels, model=NaNAt(7), ckpt_every=100, out_dir=out_dir, log_every=5, **kw)
    ckpt = tu.latest_checkpoint(os.path.join(out_dir, "checkpoints"))
    assert ckpt.endswith("step_00000007") and ckpt in str(err.value)
    torch.manual_seed(0)
    clean = train_generator(lat, labels, model=NaNAt(-1), **{**kw, "steps": 7})
    state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=True)
    assert state["extra"]["losses"].tolist() == clean["losses"]
    weights = load_file(os.path.join(ckpt, "model.safetensors"))
    for key, value in clean["model"].state_dict().items():
        assert torch.equal(weights[key], value), key
    for i, moments in state["optimizers"]["opt"]["state"].items():
        assert float(moments["step"]) == 7  # the skipped steps were not counted
        assert torch.isfinite(moments["exp_avg"]).all() and torch.isfinite(moments["exp_avg_sq"]).all()
    assert all(torch.isfinite(w).all() for w in load_file(os.path.join(ckpt, "ema.safetensors")).values())


def test_losses_are_read_at_log_intervals_and_match_every_step():
    lat, labels = toy_latents()
    kw = dict(steps=13, batch_size=8, seed=2, progress=False, device="cpu")
    every = train_generator(lat, labels, log_every=1, **kw)
    sparse = train_generator(lat, labels, log_every=5, **kw)
    assert len(sparse["losses"]) == 13 and sparse["losses"] == every["losses"]


def test_token_fd_in_torch_equals_the_numpy_reference():
    g = torch.Generator().manual_seed(0)
    real = torch.randn(40, 16, 8, generator=g) * torch.linspace(0.5, 2, 8) + 3
    fake = torch.randn(30, 16, 8, generator=g) @ (torch.eye(8) + 0.3 * torch.randn(8, 8, generator=g)) + 2.5
    r, f = (x.reshape(-1, 8).double().numpy() for x in (real, fake))
    reference = metrics.frechet_distance(r.mean(0), np.cov(r, rowvar=False), f.mean(0), np.cov(f, rowvar=False))
    for x, y in ((real, fake), (real.to(torch.bfloat16), fake.to(torch.bfloat16))):
        r, f = (z.reshape(-1, 8).double().numpy() for z in (x, y))
        ref = metrics.frechet_distance(r.mean(0), np.cov(r, rowvar=False), f.mean(0), np.cov(f, rowvar=False))
        assert evaluate.token_fd(x, y, device="cpu") == pytest.approx(ref, rel=1e-6, abs=1e-9)
    assert reference > 1  # far apart: the comparison is not between two zeros


def test_cli_takes_the_scale_options(tmp_path, capsys):
    from safetensors.torch import save_file

    from lab.train import main
    lat, labels = toy_latents()
    file = str(tmp_path / "lat.safetensors")
    save_file({"latents": lat, "labels": labels}, file)
    main(["--latents", file, "--out-dir", str(tmp_path / "run"), "--steps", "2", "--batch-size", "8",
          "--accum-steps", "2", "--checkpoint", "--device", "cpu"])
    out = capsys.readouterr().out
    assert "done: step 2" in out and "accum_steps 2" in out
