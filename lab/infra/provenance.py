"""Provenance of a run: which code (git commit and the exact uncommitted edit), on which device,
in which process.

`code_state()` records the commit and, when the code differs from it, a sha256 over
`git diff HEAD -- lab notebooks` (staged and unstaged edits of tracked files) plus the path and
bytes of every untracked file there. A notebook counts by its code only (`_notebook_code`): the
tagged parameters cell, outputs, execution counts and metadata are left out, so a parameter edited
in JupyterLab (which autosaves the .ipynb) and an executed copy do not make a run dirty; the
parameters a run used are in its params.json. Only lab/ and notebooks/ count as code: they are what a
notebook computes with. Edits elsewhere (the reports/ that `make reproduce` rewrites, README prose,
tests) change no result, so they neither mark a run dirty nor stop a rerun from reusing it. Equal hashes on one commit mean the same code; a run whose
record has no commit, an unknown state or a diff hash cannot be tied to a commit on main, so
`code_is_clean` says no and why (the report gives no verdict from such a run).

Process identity comes from /proc: (pid, start time in clock ticks), so a reused pid is not
taken for the process that started a run.
"""
import hashlib
import json
import os
import platform
import socket
import subprocess
import sys
from pathlib import Path

CODE_FOLDERS = ("lab", "notebooks")  # untracked files here are part of the code a run ran


def repo_root():
    """The folder that holds the `lab` package (the repository when installed editable)."""
    return Path(__file__).resolve().parents[2]


# ----------------------------------------------------------------------------------------------
# Code: git commit and a hash of the uncommitted edit
# ----------------------------------------------------------------------------------------------

def _git(root, *args):
    out = subprocess.run(["git", "-C", str(root), *args], capture_output=True, timeout=30)
    if out.returncode != 0:
        raise OSError(out.stderr.decode(errors="replace").strip())
    return out.stdout


def _notebook_code(data):
    """The bytes of a notebook that are code: each cell's type and source, the tagged `parameters`
    cell marked but without its source. Not JSON (a stub, a broken save): the bytes themselves."""
    try:
        cells = json.loads(data)["cells"]
        code = [["parameters", None] if "parameters" in c.get("metadata", {}).get("tags", ())
                else [c["cell_type"], "".join(c["source"])] for c in cells]
    except (ValueError, KeyError, TypeError, AttributeError):
        return data
    return json.dumps(code).encode()


def _read(root, rel, commit=None):
    """A file's bytes in the working tree, or at `commit`; None where it is absent."""
    try:
        if commit:
            return _git(root, "show", f"{commit}:{os.fsdecode(rel)}")
        return (Path(root) / os.fsdecode(rel)).read_bytes()
    except OSError:
        return None


def diff_hash(root):
    """sha256 of `git diff HEAD` plus untracked files, both under CODE_FOLDERS; None when clean.
    An edited notebook counts by _notebook_code, so only edits to its code cells count."""
    changed = [p for p in _git(root, "diff", "HEAD", "--name-only", "--no-renames", "-z", "--",
                               *CODE_FOLDERS).split(b"\0") if p]
    notebooks, edits = [], []
    for rel in changed:
        if rel.endswith(b".ipynb"):
            old, new = _read(root, rel, "HEAD"), _read(root, rel)
            if old is None or new is None or _notebook_code(old) != _notebook_code(new):
                notebooks.append((rel, new))
        else:
            edits.append(os.fsdecode(rel))
    diff = _git(root, "diff", "HEAD", "--binary", "--no-ext-diff", "--no-textconv", "--no-color", "--",
                *edits) if edits else b""
    untracked = [p for p in _git(root, "ls-files", "--others", "--exclude-standard", "-z", "--",
                                 *CODE_FOLDERS).split(b"\0") if p]
    if not diff and not notebooks and not untracked:
        return None
    h = hashlib.sha256(diff)
    for rel, new in sorted(notebooks, key=lambda x: x[0]):
        h.update(b"\0notebook\0" + rel + b"\0" + (b"deleted" if new is None else _notebook_code(new)))
    for rel in sorted(untracked):
        h.update(b"\0untracked\0" + rel + b"\0")
        data = _read(root, rel)  # removed or unreadable meanwhile: its name still counts
        if data is not None:
            h.update(_notebook_code(data) if rel.endswith(b".ipynb") else data)
    return h.hexdigest()


def code_state(root=None):
    """{"commit", "dirty", "diff_sha256"} of the repository holding `lab`.

    commit None: not a git checkout (or no commit yet); dirty None: state unknown.
    """
    root = root or repo_root()
    try:
        commit = _git(root, "rev-parse", "HEAD").decode().strip() or None
    except (OSError, subprocess.SubprocessError):
        return {"commit": None, "dirty": None, "diff_sha256": None}
    try:
        h = diff_hash(root)
    except (OSError, subprocess.SubprocessError):
        return {"commit": commit, "dirty": None, "diff_sha256": None}
    return {"commit": commit, "dirty": h is not None, "diff_sha256": h}


def code_tree(commit, root=None):
    """The git tree ids of CODE_FOLDERS at `commit`, joined: equal for two commits that differ only
    outside lab/ and notebooks/ (a commit of regenerated reports, say). None when git cannot say."""
    root = root or repo_root()
    try:
        return " ".join(_git(root, "rev-parse", f"{commit}:{folder}").decode().strip() for folder in CODE_FOLDERS)
    except (OSError, subprocess.SubprocessError):
        return None


def same_code(status, root=None):
    """True when a run's status.json ties it to a clean commit whose lab/ and notebooks/ equal the
    current ones, with no edit in them now: its results are what this code would compute again."""
    now = code_state(root)
    if not now["commit"] or now["dirty"] is not False or not code_is_clean(status)[0]:
        return False
    mine = code_tree(now["commit"], root)
    return mine is not None and code_tree(status["commit"], root) == mine


def code_is_clean(status):
    """(True, "commit <10 hex>") when a run's status.json ties it to a commit with no
    uncommitted edit, else (False, why). The report uses it to withhold verdicts."""
    status = status if isinstance(status, dict) else {}
    commit, dirty = status.get("commit"), status.get("dirty")
    if not commit:
        return False, "no git commit recorded (not run from a git checkout)"
    if dirty is None:
        return False, f"commit {commit[:10]}, but whether the tree was clean is unknown"
    if dirty:
        h = status.get("diff_sha256")
        edit = f"uncommitted edit sha256 {h[:12]}" if h else "an uncommitted edit"
        return False, f"dirty tree: commit {commit[:10]} plus {edit}"
    return True, f"commit {commit[:10]}"


# ----------------------------------------------------------------------------------------------
# Device and process
# ----------------------------------------------------------------------------------------------

def cpu_model():
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def device_description():
    """'cuda: <name> x<count>' where torch sees a GPU, else 'cpu: <model> (<n> cores)'."""
    try:
        import torch
        if torch.cuda.is_available():
            n = torch.cuda.device_count()
            return f"cuda: {torch.cuda.get_device_name(0)} x{n}"
    except Exception:  # a broken torch must not stop the run record
        pass
    return f"cpu: {cpu_model()} ({os.cpu_count()} cores)"


def proc_info(pid):
    """(state letter, start time in clock ticks) from /proc, or None where unavailable."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = stat[stat.rindex(")") + 2:].split()  # the command name may hold spaces
    return fields[0], int(fields[19])


def pid_alive(pid, proc_start=None):
    """Whether process `pid` still runs (and is the same process, where its start is known)."""
    try:
        os.kill(int(pid), 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except (TypeError, ValueError, OverflowError):
        return False
    info = proc_info(pid)
    if info is None:
        return True
    state, start = info
    return state not in ("Z", "X") and (proc_start is None or start == proc_start)


def process_fields():
    """What status.json records about the process writing a run, and where it runs."""
    info = proc_info(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "proc_start": info[1] if info else None, "python": sys.executable,
            "device": device_description(),
            "cuda_visible_devices": os.environ.get("CUDA_VISIBLE_DEVICES")}
