"""What the zoo, the checkpoints and the latent cache add to lab.infra.cache's atomic, recorded
files: a lock on any folder, a size+sha256 check that says what is wrong instead of raising, and
setting a corrupt file aside with a warning that names it.

- `file_lock(path)`: an exclusive lock shared by every process on this machine (flock; the OS
  drops it when the holder dies, so a kill never leaves work locked). The second caller waits,
  then finds the work done. Re-entrant within a process.
- `record(path)` / `problem(path, rec)`: size + sha256 noted when a file is written and checked
  when it is read, so an overwritten tail or a swapped file is caught instead of loaded.
- `set_aside(path, reason)`: rename a corrupt file or folder with lab.infra.cache.move_aside
  (never deleted: it may be evidence) and warn, naming it and what happens next.
"""
import contextlib
import os
import threading
import warnings
from pathlib import Path

import numpy as np

from lab.infra import cache

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock, single-process use still works
    fcntl = None

_HELD = {}  # lock path -> depth: a process re-entering a lock it holds must not wait on itself
_HELD_GUARD = threading.Lock()


class CorruptFileWarning(UserWarning):
    """A cached file failed its size/sha256 check (or did not parse) and was set aside."""


@contextlib.contextmanager
def file_lock(path, what=None, log=print):
    """Hold the inter-process lock `path` (a file, created if missing) for the `with` block.

    Re-entrant within one process: flock on a second descriptor of the same file would wait on
    ourselves forever.
    """
    path = str(Path(path).resolve())
    with _HELD_GUARD:
        depth = _HELD.get(path, 0)
        _HELD[path] = depth + 1
    try:
        if depth:
            yield path
            return
        Path(path).parent.mkdir(parents=True, exist_ok=True)
        with open(path, "a") as f:
            if fcntl is not None:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    if log:
                        log(f"waiting for another process working on {what or path} (lock {path})")
                    fcntl.flock(f, fcntl.LOCK_EX)
            yield path  # closing the file releases the lock
    finally:
        with _HELD_GUARD:
            _HELD[path] -= 1
            if not _HELD[path]:
                del _HELD[path]


def record(path):
    """{'size', 'sha256'} of a file, to store beside it at write time."""
    return {"size": os.path.getsize(path), "sha256": cache.sha256(path)}


def problem(path, rec):
    """None if the file matches its record (size first, then sha256), else what is wrong."""
    if not os.path.isfile(path):
        return f"{path} is missing"
    if not isinstance(rec, dict) or "size" not in rec or "sha256" not in rec:
        return f"{path} has no size/sha256 record"
    size = os.path.getsize(path)
    if size != rec["size"]:
        return f"{path} has {size} bytes, {rec['size']} were written (truncated or overwritten)"
    got = cache.sha256(path)
    if got != rec["sha256"]:
        return f"{path} has sha256 {got[:12]}…, {rec['sha256'][:12]}… was written (overwritten or swapped)"
    return None


def set_aside(path, reason, next_step="it is rebuilt"):
    """Move a corrupt file or folder out of the cache's way and warn naming it; the new path, or
    None when another process set it aside first."""
    try:
        aside = cache.move_aside(path)
    except FileNotFoundError:
        return None
    warnings.warn(f"{reason}; moved it aside to {aside} and {next_step}", CorruptFileWarning, stacklevel=3)
    return aside


def npy_once(path, compute, what):
    """The array at `path` when it matches its record, else compute() (a numpy array) written there
    with its size and sha256 (cache.write_verified); a cut or overwritten file is set aside first.
    The caller holds a lock when two processes may ask for one path."""
    path = Path(path)
    if path.is_file():
        try:
            cache.verify_file(path, what=what)
            return np.load(path)
        except (cache.CorruptFile, ValueError, OSError) as err:  # a cut file: say so, then rebuild it
            set_aside(path, f"unreadable ({err})")
    arr = compute()

    def write(tmp):
        with open(tmp, "wb") as f:
            np.save(f, arr)
    cache.write_verified(path, write)
    return arr


def pid_alive(pid):
    """True if a process with this id exists on this machine (a stale temp file's writer is gone)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except (PermissionError, ValueError, OverflowError):
        return True
    return True
