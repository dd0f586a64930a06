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


# ----------------------------------------------------------------------------- verification that scales (issue 22, item 2)

from lab.commands import verify as verify_cmd  # noqa: E402
from lab.infra import cache  # noqa: E402


class _Counted:
    """A file whose reads add to a shared byte count."""

    def __init__(self, f, count):
        self.f, self.count = f, count

    def read(self, n=-1):
        block = self.f.read(n)
        self.count[0] += len(block)
        return block

    def __getattr__(self, name):
        return getattr(self.f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.f.close()


def _count_reads(monkeypatch):
    """Count every byte lab.infra.cache reads through open()."""
    count = [0]
    monkeypatch.setattr(cache, "open", lambda *a, **k: _Counted(open(*a, **k), count), raising=False)
    return count


def _big_file(tmp_path, size=2 << 20):
    path = tmp_path / "big.bin"
    payload = torch.randint(0, 256, (size,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    cache.write_verified(path, lambda tmp: open(tmp, "wb").write(payload.numpy().tobytes()))
    return path


def _flip(path, offset):
    with open(path, "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0xFF]))


def _between_blocks(size):
    """An offset no fingerprint block covers: just after the middle block."""
    span = size - cache.HEAD_BYTES - cache.BLOCK_BYTES
    return cache.HEAD_BYTES + span * 7 // (cache.BLOCKS - 1) + cache.BLOCK_BYTES + 100


def test_a_large_file_is_opened_reading_only_its_header_and_blocks(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "FULL_HASH_BELOW", 1 << 20)  # the 2 MiB file counts as large
    monkeypatch.delenv("LAB_VERIFY_FULL", raising=False)
    path = _big_file(tmp_path)
    _flip(path, _between_blocks(path.stat().st_size))  # a byte in the middle, not in a sampled block
    count = _count_reads(monkeypatch)
    cache.verify_file(path)  # not read: the load does not see it
    assert 0 < count[0] <= cache.HEAD_BYTES + cache.BLOCKS * cache.BLOCK_BYTES
    with pytest.raises(cache.CorruptFile, match="sha256 mismatch"):
        cache.verify_file(path, full=True)  # the full check reads every byte and finds it
    assert count[0] > path.stat().st_size
    monkeypatch.setenv("LAB_VERIFY_FULL", "1")
    with pytest.raises(cache.CorruptFile, match="sha256 mismatch"):
        cache.verify_file(path)


def test_small_files_are_still_hashed_in_full(tmp_path, monkeypatch):
    monkeypatch.delenv("LAB_VERIFY_FULL", raising=False)
    path = _big_file(tmp_path)  # 2 MiB < FULL_HASH_BELOW (64 MiB)
    _flip(path, _between_blocks(path.stat().st_size))
    with pytest.raises(cache.CorruptFile, match="sha256 mismatch"):
        cache.verify_file(path)


@pytest.mark.parametrize("damage", ["grown", "cut", "header", "last block"])
def test_a_size_or_header_change_is_found_at_open(tmp_path, monkeypatch, damage):
    monkeypatch.setattr(cache, "FULL_HASH_BELOW", 1 << 20)
    monkeypatch.delenv("LAB_VERIFY_FULL", raising=False)
    path = _big_file(tmp_path)
    if damage == "grown":
        with open(path, "ab") as f:
            f.write(b"\0")
    elif damage == "cut":
        _truncate(path, 0.99)
    elif damage == "header":
        _flip(path, 10)
    else:
        _corrupt_tail(path, 1)
    count = _count_reads(monkeypatch)
    with pytest.raises(cache.CorruptFile, match="big.bin"):
        cache.verify_file(path)
    assert count[0] <= cache.HEAD_BYTES + cache.BLOCKS * cache.BLOCK_BYTES


def test_records_without_a_fingerprint_still_load_by_their_sha256(tmp_path, monkeypatch):
    monkeypatch.setattr(cache, "FULL_HASH_BELOW", 1 << 20)
    path = _big_file(tmp_path)
    rec = json.loads(cache.record_path(path).read_text())
    assert len(rec.pop("fingerprint")) == 64
    cache.record_path(path).write_text(json.dumps(rec))  # a record written before fingerprints
    assert cache.verify_file(path)["sha256"] == rec["sha256"]
    _flip(path, _between_blocks(path.stat().st_size))
    with pytest.raises(cache.CorruptFile, match="sha256 mismatch"):
        cache.verify_file(path)


def test_the_verify_command_names_and_sets_aside_a_bad_shard(tmp_path, capsys):
    ref, _, _ = _encode(tmp_path)
    folder = next(tmp_path.iterdir())
    _flip(folder / "shard_00001.safetensors", (folder / "shard_00001.safetensors").stat().st_size // 2)
    assert verify_cmd.main([str(tmp_path), "--keep"]) == 1
    assert (folder / "shard_00001.safetensors").exists()  # --keep only reports
    assert verify_cmd.main([str(tmp_path)]) == 1
    out = capsys.readouterr().out
    assert "BAD   " + str(folder / "shard_00001.safetensors") in out and "2 of 3 recorded files intact" in out
    assert any(p.name.startswith("shard_00001.safetensors.bad-") for p in folder.iterdir())
    z, _, count = _encode(tmp_path)
    assert count == 16 and torch.equal(z, ref)  # only the set-aside shard is encoded again
    assert verify_cmd.main([str(tmp_path)]) == 0
    assert verify_cmd.main([str(tmp_path / "nowhere")]) == 2


def test_cached_latents_verify_true_hashes_every_shard(tmp_path, monkeypatch):
    ref, _, _ = _encode(tmp_path)
    folder = next(tmp_path.iterdir())
    monkeypatch.setattr(cache, "FULL_HASH_BELOW", 0)  # every shard counts as large
    seen = []
    real = cache.verify_file
    monkeypatch.setattr(cache, "verify_file", lambda *a, **k: seen.append(k.get("full")) or real(*a, **k))
    _encode(tmp_path)
    _encode(tmp_path, verify=True)
    assert seen == [None] * 3 + [True] * 3
    assert folder.exists()
