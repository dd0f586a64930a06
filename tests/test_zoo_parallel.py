"""zoo.parallel: recipes trained in worker processes are the recipes a plain call trains."""
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
