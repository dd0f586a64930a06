"""zoo.parallel: recipes trained in worker processes are the recipes a plain call trains."""
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from lab import trainutil, zoo
from lab import workers

TINY = dict(steps=6, batch_size=8, lr=1e-3, size="tiny", model_kw=dict(width=16, depth=1), progress=False)


def _latents():
    g = torch.Generator().manual_seed(0)
    z = torch.randn(32, 4, 8, generator=g)
    return z / z.norm(dim=-1, keepdim=True) * 8 ** 0.5, torch.arange(32) % 3


def _calls(z, y):
    key = dict(kind="test", n=32)
    return [(zoo.generator, dict(latents=z, labels=y, path=p, loss=l, latents_key=key, seed=s, **TINY))
            for p, l in (("linear", "euclidean"), ("slerp", "riemannian")) for s in (0, 1)]


def test_workers_train_what_one_process_trains(tmp_path, monkeypatch):
    """Two one-thread workers give bit-identical weights to the same calls made one after the other
    at one thread here, and the results come back in the order of the calls."""
    z, y = _latents()
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "seq"))
        seq = zoo.parallel(_calls(z, y), workers=1)
    finally:
        torch.set_num_threads(threads)
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "par"))
    par = zoo.parallel(_calls(z, y), workers=2)
    assert len(par) == 4 and [g.recipe["seed"] for g in par] == [0, 1, 0, 1]
    assert [g.recipe["path"] for g in par] == ["linear", "linear", "slerp", "slerp"]
    for a, b in zip(seq, par):
        assert a.recipe == b.recipe
        for (k, va), vb in zip(a.state_dict().items(), b.state_dict().values()):
            assert torch.equal(va, vb), k
    first = [next(iter(g.state_dict().values())) for g in par[:2]]
    assert not torch.equal(*first)  # seeds 0 and 1 are different models, not one loaded twice
    assert (tmp_path / "par" / "_zoo" / "_workers").is_dir()  # the workers' output went to a log


def test_a_later_plain_call_loads_the_workers_weights(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    z, y = _latents()
    calls = _calls(z, y)[:2]
    par = zoo.parallel(calls, workers=2)
    before = {p.name for p in (tmp_path / "_zoo").iterdir()}
    again = zoo.generator(**calls[1][1])
    assert {p.name for p in (tmp_path / "_zoo").iterdir()} == before  # nothing trained again
    for va, vb in zip(par[1].state_dict().values(), again.state_dict().values()):
        assert torch.equal(va, vb)


def test_unknown_function_is_refused():
    with pytest.raises(ValueError, match="zoo.parallel trains one of generator, hae"):
        zoo.parallel([("images", {})])


def test_a_failed_worker_names_the_recipe_and_its_log(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    z, y = _latents()
    bad = dict(_calls(z, y)[0][1], path="geodesic")  # not a path: train_generator refuses it
    with pytest.raises(RuntimeError, match=r"zoo.generator\(.*'path': 'geodesic'.*failed in a worker process.*_workers"):
        zoo.parallel([(zoo.generator, bad), (zoo.generator, _calls(z, y)[1][1])], workers=2)


def test_default_workers(monkeypatch):
    monkeypatch.setenv("LAB_ZOO_WORKERS", "3")
    assert workers.default_workers(10) == 3
    monkeypatch.delenv("LAB_ZOO_WORKERS")
    monkeypatch.setenv("LAB_DEVICE", "cpu")
    monkeypatch.setattr(workers.os, "cpu_count", lambda: 2)
    assert workers.default_workers(15) == 2 and workers.default_workers(1) == 1
    monkeypatch.setattr(trainutil, "pick_device", lambda d=None: torch.device("cuda"))
    assert workers.default_workers(15) == 1


SLOW_PARENT = '''
import os, sys, time
from pathlib import Path
from lab.workers import train_in_workers

def slow(out):
    Path(out, str(os.getpid())).write_text("")
    time.sleep(600)  # a model that trains for ten minutes

if __name__ == "__main__":
    out = sys.argv[1]
    train_in_workers([(slow, dict(out=out)), (slow, dict(out=out))], 2, Path(out) / "logs")
'''


def _children(pid):
    """Pids whose parent is `pid` (from /proc: the workers and the multiprocessing resource tracker)."""
    kids = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            kids.append(int(stat.parent.name))
    return kids


def _alive(pid):
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"  # a zombie has exited: only its exit status waits for its reaper


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_workers_die_with_their_parent(tmp_path):
    """Issue 21 item 5: after kill -9 of the notebook, its workers (and the resource tracker) used
    to train on and then block forever on a pipe. Now none of them outlives the parent by 30 s."""
    script = tmp_path / "parent.py"
    script.write_text(SLOW_PARENT)
    root = Path(__file__).resolve().parents[1]
    env = dict(os.environ, PYTHONPATH=str(root), LAB_CPUS="2")
    parent = subprocess.Popen([sys.executable, str(script), str(tmp_path)], cwd=root, env=env)
    try:
        deadline = time.time() + 180  # two spawned workers import torch on a busy machine
        while len([p for p in tmp_path.iterdir() if p.name.isdigit()]) < 2:
            assert parent.poll() is None and time.time() < deadline, "the workers did not start"
            time.sleep(0.5)
        workers_ = [int(p.name) for p in tmp_path.iterdir() if p.name.isdigit()]
        kids = set(_children(parent.pid)) | set(workers_)
        assert set(workers_) <= kids
    finally:
        parent.kill()
        parent.wait()
    deadline = time.time() + 30
    while any(_alive(p) for p in kids) and time.time() < deadline:
        time.sleep(0.5)
    left = [p for p in kids if _alive(p)]
    for p in left:  # leave no stray process behind a failing test
        os.kill(p, signal.SIGKILL)
    assert not left, f"processes outlived their killed parent by 30 s: {left}"
