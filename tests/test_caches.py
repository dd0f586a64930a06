"""Caches under concurrency, kills and corruption (issue 9, cases 2, 3 and 8): checkpoints, the
zoo's train-or-load, the latent cache. Processes are forked on tiny models."""
import json
import multiprocessing as mp
import os
import time
import warnings

import pytest
import torch
from safetensors.torch import load_file

from lab import data, trainutil as tu
from lab import latent_cache as latents
from lab.infra.safe_files import CorruptFileWarning

CTX = mp.get_context("fork")


def _linear(seed):
    torch.manual_seed(seed)
    return torch.nn.Linear(6, 5)


def _corrupt_tail(path, n=8):
    """Overwrite the last n bytes in place: same size, different content."""
    with open(path, "r+b") as f:
        f.seek(-n, os.SEEK_END)
        tail = f.read(n)
        f.seek(-n, os.SEEK_END)
        f.write(bytes((b ^ 0x5A) for b in tail))


def _truncate(path, keep=0.5):
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(int(size * keep))


# ----------------------------------------------------------------------------- checkpoints

def _save_many(ckpt_dir, seed, barrier, rounds, errors):
    torch.set_num_threads(1)
    model = _linear(seed)
    try:
        barrier.wait()
        for i in range(rounds):  # both hammer the same three steps: re-saves racing each other
            tu.save_checkpoint(ckpt_dir, i % 3, {"model": model}, keep=None)
    except BaseException as err:  # noqa: BLE001 (reported to the parent)
        errors.put(f"{type(err).__name__}: {err}")
        barrier.abort()


def _run_two(target, args_per_process, errors):
    """Start one process per args tuple, wait for all (120 s each), return (processes, errors they queued)."""
    procs = [CTX.Process(target=target, args=args) for args in args_per_process]
    for p in procs:
        p.start()
    for p in procs:
        p.join(120)
    found = []
    while not errors.empty():
        found.append(errors.get())
    return procs, found


def test_two_processes_saving_the_same_step_at_once(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    rounds, barrier, errors = 60, CTX.Barrier(2, timeout=60), CTX.Queue()
    procs, found = _run_two(_save_many, [(ckpt_dir, seed, barrier, rounds, errors) for seed in (1, 2)], errors)
    assert not found, found
    assert all(p.exitcode == 0 for p in procs)
    names = sorted(os.listdir(ckpt_dir))
    assert names == [f"step_{s:08d}" for s in range(3)], names  # no temp or aside folder left
    for s in range(3):  # each step holds one whole checkpoint, from one of the two writers
        path = os.path.join(ckpt_dir, f"step_{s:08d}")
        w = load_file(os.path.join(path, "model.safetensors"))["weight"]
        assert any(torch.equal(w, _linear(seed).weight.detach()) for seed in (1, 2))
        assert tu.checkpoint_problem(path) is None


def test_stale_temp_folders_of_dead_writers_are_cleaned(tmp_path):
    ckpt_dir = tmp_path / "ckpt"
    dead = CTX.Process(target=lambda: None)
    dead.start()
    dead.join()
    stale = ckpt_dir / f".tmp_step_00000003_{dead.pid}_0"
    stale.mkdir(parents=True)
    (stale / "state.pt").write_bytes(b"half")
    tu.save_checkpoint(str(ckpt_dir), 4, {"model": _linear(0)})
    assert sorted(os.listdir(ckpt_dir)) == ["step_00000004"]


def _three_checkpoints(ckpt_dir):
    model = _linear(0)
    for step in (1, 2, 3):
        with torch.no_grad():
            model.weight.add_(1.0)
        tu.save_checkpoint(ckpt_dir, step, {"model": model}, extra={"mark": step})
    return model


@pytest.mark.parametrize("damage", ["truncate_state", "truncate_weights", "tail_of_weights", "tail_of_state"])
def test_a_damaged_newest_checkpoint_falls_back_to_the_older_one(tmp_path, damage):
    ckpt_dir = str(tmp_path / "ckpt")
    _three_checkpoints(ckpt_dir)
    newest = os.path.join(ckpt_dir, "step_00000003")
    file = os.path.join(newest, "state.pt" if damage.endswith("state") else "model.safetensors")
    (_truncate if damage.startswith("truncate") else _corrupt_tail)(file)
    model = _linear(5)
    with pytest.warns(CorruptFileWarning, match="step_00000003"):
        step, extra = tu.load_checkpoint(ckpt_dir, {"model": model})
    assert step == 2 and extra["mark"] == 2
    torch.testing.assert_close(model.weight, _linear(0).weight + 2.0)
    assert tu.latest_checkpoint(ckpt_dir).endswith("step_00000002")  # the bad one is out of the way
    assert any(n.startswith("step_00000003.bad-") for n in os.listdir(ckpt_dir))
    step, _ = tu.load_checkpoint(ckpt_dir, {"model": model})  # every later retry loads at once
    assert step == 2


def test_a_damaged_checkpoint_named_explicitly_is_an_error_naming_the_file(tmp_path):
    ckpt_dir = str(tmp_path / "ckpt")
    _three_checkpoints(ckpt_dir)
    path = os.path.join(ckpt_dir, "step_00000002")
    _corrupt_tail(os.path.join(path, "model.safetensors"))
    with pytest.raises(tu.CheckpointError, match=r"step_00000002.*model\.safetensors"):
        tu.load_checkpoint(path, {"model": _linear(0)})


# ----------------------------------------------------------------------------- zoo train-or-load

def _toy_latents():
    g = torch.Generator().manual_seed(0)
    return torch.randn(16, 4, 8, generator=g), torch.arange(16) % 2


def _zoo_generator(runs_dir, log, out, delay):
    """A child process: zoo.generator on toy latents, counting trainings in `log`."""
    torch.set_num_threads(1)
    os.environ["LAB_RUNS_DIR"] = runs_dir
    import lab.train
    from lab import zoo
    real = lab.train.train_generator

    def counted(*a, **kw):
        with open(log, "a") as f:
            f.write(f"{os.getpid()}\n")
        time.sleep(delay)  # widen the window in which a second caller would also train
        return real(*a, **kw)

    lab.train.train_generator = counted
    if hasattr(zoo, "train_generator"):
        zoo.train_generator = counted
    lat, lab_ = _toy_latents()
    ema = zoo.generator(lat, lab_, steps=4, batch_size=8, size="tiny", latents_key={"toy": 1}, progress=False)
    torch.save({k: v.clone() for k, v in ema.state_dict().items()}, out)


def _run_children(tmp_path, n=2, delay=1.0):
    log = str(tmp_path / "trainings.log")
    outs = [str(tmp_path / f"ema{i}.pt") for i in range(n)]
    procs = [CTX.Process(target=_zoo_generator, args=(str(tmp_path / "runs"), log, o, delay)) for o in outs]
    for p in procs:
        p.start()
    for p in procs:
        p.join(240)
    assert all(p.exitcode == 0 for p in procs), [p.exitcode for p in procs]
    trained = open(log).read().split() if os.path.exists(log) else []
    return trained, [torch.load(o, weights_only=True) for o in outs]


def test_two_processes_calling_one_zoo_recipe_train_it_once(tmp_path):
    trained, (a, b) = _run_children(tmp_path)
    assert len(trained) == 1, f"{len(trained)} trainings of one recipe"
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_corrupt_final_zoo_checkpoint_is_moved_aside_and_rebuilt(tmp_path, monkeypatch):
    trained, (first,) = _run_children(tmp_path, n=1, delay=0.0)
    assert len(trained) == 1
    zoo_dir = tmp_path / "runs" / "_zoo"
    (folder,) = [p for p in zoo_dir.iterdir() if p.name.startswith("gen-")]
    final = sorted((folder / "checkpoints").glob("step_*"))[-1]
    _corrupt_tail(final / "ema.safetensors")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptFileWarning)
        trained, (again,) = _run_children(tmp_path, n=1, delay=0.0)
    assert len(trained) == 2  # trained again (resuming from the older intact checkpoint)
    assert all(torch.equal(first[k], again[k]) for k in first)  # to the same weights
    assert any(".bad-" in p.name for p in (folder / "checkpoints").iterdir())


# ----------------------------------------------------------------------------- latent cache

class Quadrants:
    """Deterministic toy encoder: mean colour of the four image quadrants; counts images."""

    def __init__(self):
        self.count = 0

    def __call__(self, x):
        self.count += len(x)
        h = x.shape[-1] // 2
        q = [x[..., :h, :h], x[..., :h, h:], x[..., h:, :h], x[..., h:, h:]]
        return torch.stack([t.mean((2, 3)) for t in q], 1)


KEY = dict(encoder="quadrants", data="digits", res=8, n=48)


def _encode(root, enc=None, **kw):
    enc = enc or Quadrants()
    z, y = latents.cached_latents(enc, data.digits(size=8, n=48), KEY, batch_size=8, cache_root=root,
                                  shard_size=16, progress=False, **kw)
    return z, y, enc.count


def test_key_json_is_written_once(tmp_path):
    _encode(tmp_path)
    meta = next(tmp_path.iterdir()) / "key.json"
    before = os.stat(meta)
    time.sleep(0.01)
    _, _, count = _encode(tmp_path)
    after = os.stat(meta)
    assert count == 0 and (after.st_ino, after.st_mtime_ns) == (before.st_ino, before.st_mtime_ns)


def _read_cache(root, calls, errors):
    torch.set_num_threads(1)
    ds = data.digits(size=8, n=48)
    for _ in range(calls):
        try:
            latents.cached_latents(Quadrants(), ds, KEY, batch_size=8, cache_root=root, shard_size=16,
                                   progress=False)
        except Exception as err:  # noqa: BLE001
            errors.put(f"{type(err).__name__}: {err}")


def test_two_processes_reading_cached_latents_at_once(tmp_path):
    _encode(tmp_path)
    errors = CTX.Queue()
    procs, found = _run_two(_read_cache, [(tmp_path, 150, errors)] * 2, errors)
    assert not found, f"{len(found)} failed reads, first: {found[0]}"


@pytest.mark.parametrize("content", [b"", b'{"key": {"enc', b"\xff\xfe not json"])
def test_a_cut_key_json_is_named_and_rebuilt(tmp_path, content):
    ref, _, _ = _encode(tmp_path / "ref")
    _encode(tmp_path / "c")
    folder = next((tmp_path / "c").iterdir())
    (folder / "key.json").write_bytes(content)
    with pytest.warns(CorruptFileWarning, match="key.json"):
        z, _, count = _encode(tmp_path / "c")
    assert torch.equal(z, ref) and count == 48
    z, _, count = _encode(tmp_path / "c")  # and the cache works again
    assert torch.equal(z, ref) and count == 0


def test_an_overwritten_shard_is_named_moved_aside_and_re_encoded(tmp_path):
    ref, _, _ = _encode(tmp_path)
    folder = next(tmp_path.iterdir())
    _corrupt_tail(folder / "shard_00001.safetensors")
    with pytest.warns(CorruptFileWarning, match="shard_00001"):
        z, _, count = _encode(tmp_path)
    assert count == 16 and torch.equal(z, ref)
    assert any(p.name.startswith("shard_00001.safetensors.bad-") for p in folder.iterdir())


def test_swapped_shards_are_caught(tmp_path):
    ref, _, _ = _encode(tmp_path)
    folder = next(tmp_path.iterdir())
    a, b = folder / "shard_00000.safetensors", folder / "shard_00002.safetensors"
    os.replace(a, folder / "x")
    os.replace(b, a)
    os.replace(folder / "x", b)
    with pytest.warns(CorruptFileWarning):
        z, _, count = _encode(tmp_path)
    assert count == 32 and torch.equal(z, ref)
    _, _, count = _encode(tmp_path)
    assert count == 0


def test_latent_shard_records_are_size_and_sha256(tmp_path):
    _encode(tmp_path)
    folder = next(tmp_path.iterdir())
    rec = json.loads((folder / "shard_00000.safetensors.record.json").read_text())
    shard = folder / "shard_00000.safetensors"
    assert rec["size"] == shard.stat().st_size and len(rec["sha256"]) == 64


def test_a_cut_zoo_done_json_is_set_aside_and_the_recipe_finished_again(tmp_path):
    _, (first,) = _run_children(tmp_path, n=1, delay=0.0)
    (folder,) = [p for p in (tmp_path / "runs" / "_zoo").iterdir() if p.name.startswith("gen-")]
    done = folder / "done.json"
    done.write_text(done.read_text()[:20])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", CorruptFileWarning)
        trained, (again,) = _run_children(tmp_path, n=1, delay=0.0)
    assert all(torch.equal(first[k], again[k]) for k in first)  # resumed at the final checkpoint
    assert json.loads(done.read_text())["recipe"]["kind"] == "generator"
    assert any(p.name.startswith("done.json.bad-") for p in folder.iterdir())
