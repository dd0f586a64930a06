"""Generator training end to end at tiny size, plus the shared training utilities (lab.trainutil)."""
import os
import random
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file

from lab import trainutil as tu
from lab.dit import dit
from lab.train import global_batch, train_generator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))



def toy_latents(M=32, N=4, C=8, seed=0):
    """Two classes of latents around two prototypes."""
    g = torch.Generator().manual_seed(seed)
    protos = 2 * torch.randn(2, N, C, generator=g)
    labels = torch.arange(M) % 2
    return protos[labels] + 0.1 * torch.randn(M, N, C, generator=g), labels


def _env():
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""),
               OMP_NUM_THREADS="1")
    env.pop("WORLD_SIZE", None)
    return env


# ---------------------------------------------------------------------------------------------
# trainutil
# ---------------------------------------------------------------------------------------------

def test_update_ema_formula_and_requires_grad():
    torch.manual_seed(0)
    model, ema = torch.nn.Linear(3, 2), torch.nn.Linear(3, 2)
    tu.requires_grad(ema, False)
    before = ema.weight.clone()
    tu.update_ema(ema, model, decay=0.9)
    torch.testing.assert_close(ema.weight, 0.9 * before + 0.1 * model.weight)
    assert not any(p.requires_grad for p in ema.parameters())


def test_autocast_is_noop_on_cpu_and_pick_device():
    with tu.autocast("cpu"):
        assert (torch.ones(2, 2) @ torch.ones(2, 2)).dtype == torch.float32
    assert tu.pick_device("cpu").type == "cpu"
    assert tu.pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    assert tu.ddp_setup("cpu") == (0, 1, torch.device("cpu")) and tu.is_main()


def test_checkpoint_roundtrip_rng_and_atomicity(tmp_path):
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2)
    model(torch.randn(8, 4)).sum().backward()
    opt.step()
    ckpt_dir = str(tmp_path / "ck")
    tu.save_checkpoint(ckpt_dir, 3, {"model": model}, {"opt": opt}, {"note": "x"})
    path = tu.save_checkpoint(ckpt_dir, 7, {"model": model}, {"opt": opt}, {"losses": torch.arange(3.0)})
    expect = (torch.rand(3), np.random.rand(3), random.random())  # the RNG draws right after saving
    os.makedirs(os.path.join(ckpt_dir, ".tmp_step_00000009_1"))  # a save killed midway: ignored
    os.makedirs(os.path.join(ckpt_dir, "step_00000011"))          # no state.pt: incomplete, ignored
    assert tu.latest_checkpoint(ckpt_dir) == path

    model2 = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 2))
    opt2 = torch.optim.AdamW(model2.parameters(), lr=1e-2)
    step, extra = tu.load_checkpoint(ckpt_dir, {"model": model2}, {"opt": opt2})
    assert step == 7 and torch.equal(extra["losses"], torch.arange(3.0))
    for a, b in zip(model.parameters(), model2.parameters()):
        assert torch.equal(a, b)
    s1, s2 = opt.state_dict()["state"][0], opt2.state_dict()["state"][0]
    assert torch.equal(s1["exp_avg_sq"], s2["exp_avg_sq"]) and float(s1["step"]) == float(s2["step"]) == 1
    got = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(got[0], expect[0]) and np.array_equal(got[1], expect[1]) and got[2] == expect[2]

    tu.save_checkpoint(ckpt_dir, 9, {"model": model}, {"opt": opt}, keep=2)
    assert [s for s, _ in tu._list_checkpoints(ckpt_dir)] == [7, 9]
    with pytest.raises(FileNotFoundError, match="ema"):
        tu.load_checkpoint(ckpt_dir, {"ema": model2})


def test_check_finite_message_and_on_fail():
    calls = []
    tu.check_finite(torch.tensor(1.0), 3, on_fail=lambda: calls.append(1))
    assert calls == []
    with pytest.raises(FloatingPointError, match="non-finite loss at step 12"):
        tu.NaNGuard(on_fail=lambda: calls.append(1) or "/some/ckpt")(torch.tensor(float("nan")), 12)
    assert calls == [1]


# ---------------------------------------------------------------------------------------------
# train_generator
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path,loss", [("linear", "euclidean"), ("slerp", "riemannian")])
def test_loss_falls(path, loss):
    lat, labels = toy_latents()
    out = train_generator(lat, labels, path=path, loss=loss, radial_weight=0.1, steps=100,
                          batch_size=32, lr=2e-3, progress=False)
    L = out["losses"]
    assert len(L) == 100 and all(np.isfinite(L))
    first, last = np.mean(L[:10]), np.mean(L[-10:])
    assert last < 0.6 * first, (first, last)
    # the EMA (decay 0.9999) has barely moved from the initial weights; the model has
    assert not torch.equal(out["model"].final.linear.weight, out["ema"].final.linear.weight)


def test_global_batch_is_a_function_of_seed_and_step():
    lat, labels = toy_latents()
    kw = dict(batch_size=8, seed=3, path="slerp", time_dist="logit_normal", shift=True,
              label_dropout=0.5, num_classes=2, device=torch.device("cpu"))
    a, b, c = global_batch(lat, labels, 5, **kw), global_batch(lat, labels, 5, **kw), global_batch(lat, labels, 6, **kw)
    assert all(torch.equal(u, v) for u, v in zip(a, b))
    assert not torch.equal(a[2], c[2])
    x1 = a[0]
    torch.testing.assert_close(x1.norm(dim=-1), torch.full(x1.shape[:2], 8 ** 0.5))  # slerp: data on the sphere
    assert (a[1] == 2).any() and (a[1] < 2).any()  # some labels dropped to the null class


def _assert_same_state(a, b, exact=True):
    for (na, pa), (nb, pb) in zip(a.state_dict().items(), b.state_dict().items()):
        assert na == nb
        if exact:
            assert torch.equal(pa, pb), na
        else:
            torch.testing.assert_close(pa, pb, rtol=1e-4, atol=1e-5, msg=na)


def test_resume_equals_uninterrupted(tmp_path):
    lat, labels = toy_latents()
    kw = dict(path="slerp", loss="riemannian", radial_weight=0.1, batch_size=16, lr=2e-3,
              ema_decay=0.9, label_dropout=0.2, seed=1, progress=False)
    straight = train_generator(lat, labels, steps=12, **kw)
    out_dir = str(tmp_path / "run")
    first = train_generator(lat, labels, steps=5, ckpt_every=5, out_dir=out_dir, **kw)  # "killed" after step 5
    assert first["step"] == 5 and first["ckpt"].endswith("step_00000005")
    resumed = train_generator(lat, labels, steps=12, ckpt_every=5, out_dir=out_dir, **kw)
    assert resumed["losses"] == straight["losses"]  # bit for bit, every step
    _assert_same_state(resumed["model"], straight["model"])
    _assert_same_state(resumed["ema"], straight["ema"])
    assert sorted(os.listdir(os.path.join(out_dir, "checkpoints"))) == ["step_00000005", "step_00000010", "step_00000012"]


def test_sigkill_then_resume_matches(tmp_path):
    """A real kill: the CLI is SIGKILLed once its first checkpoint exists, then relaunched."""
    lat, labels = toy_latents()
    file = str(tmp_path / "lat.safetensors")
    save_file({"latents": lat, "labels": labels}, file)
    out_dir = str(tmp_path / "run")
    steps = 100
    cmd = [sys.executable, "-m", "lab.train", "--latents", file, "--out-dir", out_dir, "--steps", str(steps),
           "--batch-size", "8", "--lr", "1e-3", "--ckpt-every", "5", "--seed", "2", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t0 = time.time()
    while tu.latest_checkpoint(os.path.join(out_dir, "checkpoints")) is None and proc.poll() is None:
        assert time.time() - t0 < 120, "no checkpoint appeared"
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    killed_at = int(os.path.basename(tu.latest_checkpoint(os.path.join(out_dir, "checkpoints")))[5:])
    assert killed_at < steps  # it really was killed midway
    subprocess.run(cmd, env=_env(), cwd=ROOT, check=True, capture_output=True)
    ckpt = tu.latest_checkpoint(os.path.join(out_dir, "checkpoints"))
    assert ckpt.endswith(f"step_{steps:08d}")
    straight = train_generator(lat, labels, steps=steps, batch_size=8, lr=1e-3, seed=2, progress=False)
    weights = load_file(os.path.join(ckpt, "model.safetensors"))
    for name, p in straight["model"].state_dict().items():
        if name in weights:
            assert torch.equal(weights[name], p), (name, killed_at)
    state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=True)
    assert state["extra"]["losses"].tolist() == straight["losses"]


class NaNAt(torch.nn.Module):
    """A tiny DiT whose output turns NaN on the `at`-th call (0-based)."""

    def __init__(self, at):
        super().__init__()
        self.net = dit("tiny", in_dim=8, num_tokens=4, num_classes=2)
        self.at, self.calls = at, 0

    def forward(self, x, t, y):
        out = self.net(x, t, y)
        self.calls += 1
        return out * float("nan") if self.calls - 1 == self.at else out


def test_nan_guard_stops_with_step_and_saves(tmp_path):
    lat, labels = toy_latents()
    out_dir = str(tmp_path / "run")
    torch.manual_seed(0)
    with pytest.raises(FloatingPointError, match="non-finite loss at step 7") as err:
        train_generator(lat, labels, model=NaNAt(7), steps=20, batch_size=8, ckpt_every=100,
                        out_dir=out_dir, progress=False)
    ckpt = tu.latest_checkpoint(os.path.join(out_dir, "checkpoints"))
    assert ckpt is not None and ckpt.endswith("step_00000007") and ckpt in str(err.value)
    step, extra = tu.load_checkpoint(ckpt, {"model": NaNAt(-1)})
    weights = load_file(os.path.join(ckpt, "model.safetensors"))
    assert step == 7 and len(extra["losses"]) == 7
    assert all(torch.isfinite(w).all() for w in weights.values())


STUCK_AT_EXIT = """
import runpy, sys, time


class Stuck:  # stands in for ~ProcessGroupGloo waiting on the GIL during interpreter teardown
    def __del__(self):
        time.sleep(240)


STUCK = Stuck()  # a module global: its destructor runs only when the interpreter tears down
sys.argv[0] = "lab.train"
runpy.run_module("lab.train", run_name="__main__")
"""


def test_torchrun_exit_never_waits_on_a_destructor(tmp_path):
    """Issue 9 case 9: a rank once hung for 300 s in ~ProcessGroupGloo after training was done.
    After a torchrun training the ranks exit without interpreter teardown, so a destructor that
    never returns (simulated here) cannot keep them alive."""
    lat, labels = toy_latents()
    file = str(tmp_path / "lat.safetensors")
    save_file({"latents": lat, "labels": labels}, file)
    script = tmp_path / "stuck_at_exit.py"
    script.write_text(STUCK_AT_EXIT)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(script),
           "--latents", file, "--out-dir", str(tmp_path / "ddp"), "--steps", "2", "--batch-size", "8",
           "--ckpt-every", "100", "--device", "cpu"]
    proc = subprocess.Popen(cmd, env=_env(), cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=120)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # torchrun and both ranks
        out, _ = proc.communicate()
        pytest.fail("a torchrun rank did not exit after training: its exit waited on a destructor\n" + out[-2000:])
    assert proc.returncode == 0, out[-3000:]
    assert "done: step 2" in out


def test_torchrun_gloo_two_processes_match_one(tmp_path):
    """torchrun, 2 CPU processes (gloo), global batch 16 split 8 + 8 == 1 process with batch 16."""
    lat, labels = toy_latents()
    file = str(tmp_path / "lat.safetensors")
    save_file({"latents": lat, "labels": labels}, file)
    out_dir = str(tmp_path / "ddp")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "lab.train", "--latents", file, "--out-dir", out_dir, "--steps", "6", "--batch-size", "16",
           "--lr", "1e-3", "--ema-decay", "0.5", "--path", "slerp", "--loss", "riemannian", "--seed", "4",
           "--ckpt-every", "100", "--device", "cpu"]
    res = subprocess.run(cmd, env=_env(), cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    ckpt = tu.latest_checkpoint(os.path.join(out_dir, "checkpoints"))
    single = train_generator(lat, labels, steps=6, batch_size=16, lr=1e-3, ema_decay=0.5, path="slerp",
                             loss="riemannian", seed=4, progress=False)
    for module in ("model", "ema"):
        weights = load_file(os.path.join(ckpt, f"{module}.safetensors"))
        ref = single[module].state_dict()
        assert weights and set(weights) <= set(ref)
        for name, w in weights.items():
            torch.testing.assert_close(w, ref[name], rtol=1e-4, atol=1e-5, msg=f"{module}.{name}")
    state = torch.load(os.path.join(ckpt, "state.pt"), weights_only=True)
    np.testing.assert_allclose(state["extra"]["losses"].numpy(), single["losses"], rtol=1e-4)


# ---------------------------------------------------------------------------------------------
# precision (HAE A.1 / App D: Riemannian FM in fp32)
# ---------------------------------------------------------------------------------------------

def test_default_precision_follows_the_paper():
    from lab.train import default_precision
    assert default_precision("cpu", "linear", "euclidean") == "fp32"
    assert default_precision("cuda", "slerp", "riemannian") == "fp32"  # the spherical path: fp32
    assert default_precision("cuda", "slerp", "euclidean") == "fp32"
    assert default_precision("cuda", "linear", "riemannian") == "fp32"
    assert default_precision("cuda", "linear", "euclidean") == "bf16"


class DtypeProbe(torch.nn.Module):
    """Records whether autocast is on and the dtype a linear layer computes in."""

    def __init__(self):
        super().__init__()
        self.lin = torch.nn.Linear(8, 8)
        self.seen = []

    def forward(self, x, t, y):
        out = self.lin(x)
        self.seen.append((torch.is_autocast_enabled("cpu"), out.dtype))
        return out


@pytest.mark.parametrize("precision,expected", [("fp32", (False, torch.float32)),
                                                ("bf16", (True, torch.bfloat16)),
                                                (None, (False, torch.float32))])
def test_precision_reaches_the_step(precision, expected):
    lat, labels = toy_latents()
    probe = DtypeProbe()
    out = train_generator(lat, labels, model=probe, steps=2, batch_size=8, progress=False, device="cpu",
                          precision=precision)
    assert probe.seen == [expected, expected] and all(np.isfinite(out["losses"]))
    with pytest.raises(ValueError, match="precision"):
        train_generator(lat, labels, model=DtypeProbe(), steps=1, batch_size=8, progress=False, precision="fp16")


def test_model_autocast_dtype_and_choice():
    import warnings

    from lab.train import model_autocast
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "CUDA is not available": the context still records its dtype
        assert model_autocast("cuda", "bf16").fast_dtype == torch.bfloat16  # CUDA's own default is fp16
    assert model_autocast("cpu", "bf16").fast_dtype == torch.bfloat16
    with pytest.raises(ValueError, match="^precision="):
        model_autocast("cpu", "fp16")


def test_step_precision_default_sees_path_and_loss(monkeypatch):
    import lab.train as tr
    seen = []
    monkeypatch.setattr(tr, "default_precision", lambda *a: seen.append(a) or "fp32")
    x1, y, x0, t = global_batch(*toy_latents(), 0, batch_size=4, seed=0, path="slerp", time_dist="uniform",
                                shift=False, label_dropout=0.0, num_classes=2, device=torch.device("cpu"))
    tr.fm_step_loss(lambda x, t, y: x, x1, y, x0, t, path="slerp", loss="riemannian", radial_weight=0.0,
                    device=torch.device("cpu"))
    assert seen == [(torch.device("cpu"), "slerp", "riemannian")]


def test_global_batch_dtypes():
    """Latents of any float dtype train in fp32; labels of any int dtype become long (embedding indices)."""
    lat, labels = toy_latents()
    kw = dict(batch_size=4, seed=0, path="linear", time_dist="uniform", shift=False, label_dropout=0.0,
              num_classes=2, device=torch.device("cpu"))
    for lat_dtype in (torch.float64, torch.bfloat16):
        x1, y, x0, t = global_batch(lat.to(lat_dtype), labels.int(), 0, **kw)
        assert x1.dtype == x0.dtype == t.dtype == torch.float32 and y.dtype == torch.long
