"""The lab's user cache folder: inter-process locks, atomic writes, files verified on every load.

Everything the lab fetches or converts lives in `cache_dir()` ($LAB_CACHE or
~/.cache/latent-geometry-lab). Two rules keep it from ever serving a bad file:

  - every write is atomic (a unique temporary name, then os.replace), so a reader or a killed
    writer never leaves half a file under the real name;
  - every file is written with a record of its size, sha256 and fingerprint and checked against it
    on every load. A file that fails names itself (`CorruptFile`); callers that can rebuild it move
    it aside (`move_aside`, kept as <name>.bad-<time> for inspection) and build it again.

What a load reads: a file under FULL_HASH_BELOW bytes is hashed in full; a larger one is checked by
size and `fingerprint` (its first 64 KiB plus 16 blocks of 4 KiB at fixed offsets), so opening a
470 GiB latent cache reads about 130 KiB per shard, not 470 GiB. A full check of every byte is
`verify_file(..., full=True)`, LAB_VERIFY_FULL=1, or `python -m lab.commands.verify FOLDER`.
Records written before fingerprints existed (sha256 only) are checked by the full sha256.

The generic pair `write_verified` / `verify_file` serves any cache (zoo checkpoints, latent
shards); `converted` is the converted-weights store built on them.
"""
import contextlib
import hashlib
import json
import os
import threading
import time
from pathlib import Path

from safetensors.torch import load_file, save_file

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock (fetch from one process at a time)
    fcntl = None

FETCH_COMMAND = "python -m lab.commands.weights fetch"


class AssetError(RuntimeError):
    """An asset is missing, cannot be fetched, or fails its checksum; the message says the fix."""


class CorruptFile(AssetError):
    """A cache file that is unreadable or differs from the size / sha256 recorded when it was written."""

    def __init__(self, path, reason, fix=None):
        self.path, self.reason = Path(path), reason
        super().__init__(f"{reason}\n  file: {path}" + (f"\n{fix}" if fix else ""))


def cache_dir():
    """The one user cache folder: $LAB_CACHE or ~/.cache/latent-geometry-lab (created)."""
    root = Path(os.environ.get("LAB_CACHE") or Path.home() / ".cache" / "latent-geometry-lab")
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


FULL_HASH_BELOW = 64 << 20  # files smaller than this are hashed in full on every load
HEAD_BYTES, BLOCKS, BLOCK_BYTES = 64 << 10, 16, 4 << 10  # what a fingerprint reads


def fingerprint(path):
    """sha256 of the size, the first HEAD_BYTES (a safetensors header and more) and BLOCKS blocks of
    BLOCK_BYTES at offsets spread evenly up to the end. Catches a cut, a grown, a swapped or a
    rewritten file and a damaged header; a single flipped byte between the blocks needs `sha256`."""
    size = Path(path).stat().st_size
    h = hashlib.sha256(str(size).encode())
    with open(path, "rb") as f:
        h.update(f.read(HEAD_BYTES))
        if size > HEAD_BYTES:
            span = size - HEAD_BYTES - BLOCK_BYTES
            for i in range(BLOCKS):
                f.seek(HEAD_BYTES + max(span, 0) * i // (BLOCKS - 1))
                h.update(f.read(BLOCK_BYTES))
    return h.hexdigest()


def full_check_wanted(size, full=None):
    """Whether a load hashes every byte: `full` if given, else LAB_VERIFY_FULL=1, else size < FULL_HASH_BELOW."""
    if full is not None:
        return bool(full)
    if os.environ.get("LAB_VERIFY_FULL", "").strip() not in ("", "0"):
        return True
    return size < FULL_HASH_BELOW


def verify_sha256(path, expected, what=None, fix=None):
    """Raise CorruptFile unless the file's sha256 is `expected`."""
    got = sha256(path)
    if got != expected:
        raise CorruptFile(path, f"sha256 mismatch for {what or Path(path).name}:\n  expected {expected}\n"
                                f"  got      {got}", fix or (
            f"The file is corrupt or not the one this lab was written for. "
            f"Delete it and run `{FETCH_COMMAND}` to fetch and convert it again."))
    return got


@contextlib.contextmanager
def cache_lock(name, log=print):
    """Hold an exclusive lock shared by every process using this cache (flock on
    cache_dir()/locks/<name>.lock; the OS drops it if the holder dies, so a crash never leaves the
    cache locked). Two pytest processes or notebook kernels fetching one asset at once: the
    second waits here, then finds the asset in the cache."""
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(exist_ok=True)
    with open(path, "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"waiting for another process working on {name} ({path})")
                fcntl.flock(f, fcntl.LOCK_EX)
        yield path  # closing the file releases the lock


# ----------------------------------------------------------------------------- atomic, recorded files

def atomic_write(path, write):
    """Call write(tmp_path) on a unique temporary name beside `path`, then rename it into place.
    Readers see the old file or the whole new one; a failed write leaves nothing behind."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return path


def write_json(path, obj):
    """Atomic JSON write (a killed process never leaves half a file)."""
    return atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(obj, indent=2)))


def read_json(path, what=None, fix=None):
    """A JSON object from `path`; CorruptFile naming the file if it is truncated, not UTF-8 or not
    an object (the raw JSONDecodeError names no file)."""
    try:
        obj = json.loads(Path(path).read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise CorruptFile(path, f"{what or Path(path).name} is unreadable ({err.__class__.__name__}: {err})",
                          fix) from err
    if not isinstance(obj, dict):
        raise CorruptFile(path, f"{what or Path(path).name} holds a {type(obj).__name__}, not a JSON object", fix)
    return obj


def record_path(path):
    """Where `write_verified` keeps a file's record by default: <file>.record.json."""
    return Path(path).with_name(Path(path).name + ".record.json")


def write_verified(path, write, record=None, **meta):
    """Write `path` atomically with write(tmp_path), then its record {file, size, sha256, fingerprint, **meta}
    (atomically, at `record` or <file>.record.json); size and hash are taken from the temporary
    file before it is renamed. Returns the record. Two processes that may write the same file
    hold a `cache_lock` around this (file and record are two renames)."""
    path, taken = Path(path), {}

    def write_and_hash(tmp):
        write(tmp)
        taken.update(size=Path(tmp).stat().st_size, sha256=sha256(tmp), fingerprint=fingerprint(tmp))
    atomic_write(path, write_and_hash)
    info = dict(meta, file=path.name, **taken, created=time.strftime("%Y-%m-%d %H:%M:%S"))
    write_json(record or record_path(path), info)
    return info


def verify_file(path, record=None, what=None, fix=None, full=None):
    """Check `path` against its record and return the record: the size, then the sha256 of every byte
    when `full_check_wanted` (small files, full=True, LAB_VERIFY_FULL=1) or the record has no
    fingerprint (an older record), else the fingerprint only. CorruptFile names the file (or its
    record) and the reason when anything is off."""
    path, record = Path(path), Path(record or record_path(path))
    what = what or path.name
    if not record.exists():
        raise CorruptFile(record, f"{what} has no record of its size and sha256", fix)
    info = read_json(record, f"the record of {what}", fix)
    if not isinstance(info.get("sha256"), str):
        raise CorruptFile(record, f"the record of {what} has no sha256", fix)
    if not path.exists():
        raise CorruptFile(path, f"{what} is missing (its record exists)", fix)
    size = path.stat().st_size
    if "size" in info and size != info["size"]:
        raise CorruptFile(path, f"{what} is {size} bytes, {info['size']} were written (truncated or "
                                f"overwritten)", fix)
    if full_check_wanted(size, full) or not isinstance(info.get("fingerprint"), str):
        verify_sha256(path, info["sha256"], what, fix)
    elif fingerprint(path) != info["fingerprint"]:
        raise CorruptFile(path, f"{what} differs from the file that was written (its header or sampled "
                                f"blocks changed; size {size} bytes as recorded)", fix)
    return info


def move_aside(path):
    """Rename a bad file to <name>.bad-<time> (kept for inspection, never loaded again)."""
    path = Path(path)
    target = path.with_name(f"{path.name}.bad-{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}")
    os.replace(path, target)
    return target


# ----------------------------------------------------------------------------- converted weights

def weights_path(name):
    return cache_dir() / "weights" / f"{name}.safetensors"


def manifest_path(name):
    return weights_path(name).with_suffix(".json")


def save_converted(state_dict, name, meta):
    """Save safetensors + a manifest recording the source, the size and the converted sha256."""
    tensors = {k: v.contiguous() for k, v in state_dict.items()}
    write_verified(weights_path(name), lambda tmp: save_file(tensors, str(tmp)), manifest_path(name), **meta)
    return weights_path(name)


def manifest(name):
    """The manifest written at conversion time (source, size, sha256s, check results), or None."""
    p = manifest_path(name)
    return read_json(p, f"the manifest of '{name}'", _rebuild_fix(name)) if p.exists() else None


def _rebuild_fix(name):
    return (f"Delete {weights_path(name).name} and {manifest_path(name).name} in {weights_path(name).parent} "
            f"and run `{FETCH_COMMAND}` to convert it again.")


def check_converted(name):
    """None when the converted weights are intact, 'missing' when absent, else the CorruptFile."""
    path, man = weights_path(name), manifest_path(name)
    if not path.exists() and not man.exists():
        return "missing"
    try:
        verify_file(path, man, f"converted weights '{name}'", _rebuild_fix(name))
    except CorruptFile as err:
        return err
    return None


def converted(name, convert, log=print):
    """The converted state dict `name`, verified against its manifest (size + sha256). Missing:
    convert(log=log) builds it. Corrupt (truncated, overwritten, a bad manifest): the bad files
    are named, moved aside and converted again. The lock is taken only when something is wrong,
    so loading an intact asset never writes to the cache."""
    if check_converted(name) is not None:
        with cache_lock(f"weights-{name}", log):
            problem = check_converted(name)  # another process may have converted it while we waited
            if isinstance(problem, CorruptFile):
                moved = [str(move_aside(p)) for p in (weights_path(name), manifest_path(name)) if p.exists()]
                log(f"{problem.reason} ({problem.path}); moved aside: {', '.join(moved)}; converting again")
            if problem is not None:
                convert(log=log)
                verify_file(weights_path(name), manifest_path(name), f"converted weights '{name}'",
                            _rebuild_fix(name))
    return load_file(str(weights_path(name)))
