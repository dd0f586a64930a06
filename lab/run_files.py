"""Is a run folder still what its run wrote? The manifest run.done() leaves, and the check that the
report (through lab.commands.run_index) and `runs.find_done` make before trusting a folder.

A run folder is evidence only when every file they read parses as what the lab writes:
  - status.json, params.json and metrics.json are UTF-8 JSON objects (not cut short by a kill or a
    full disk, not a list or null); params.json is there (a claim would cite "parameters (none)");
  - status fields have their types (a text `finished_unix` would break the sorting);
  - metrics.csv is UTF-8; a finished run's tables/*.csv parse and have columns.
And a `done` run is done only when it still holds what it finished with:
  - manifest.json, written by run.done(), lists every file in the folder with its size and sha256,
    except status.json (it records the manifest's own sha256, `manifest_sha256`), the manifest,
    hidden files (temporary writes, the hand-off marker) and the executed notebook `*.ipynb` at the
    top, which papermill saves after the last cell;
  - the manifest's sha256 is status.json's, every listed file is there with that size and sha256,
    and no file was added since.
A status.json set to `done` by hand has no manifest, so it is never reused and never hides the real
finished runs of the same parameters. Hashes are remembered per (file, size, mtime, inode) in a
process, so the report and find_done read a file once however often they check it.
"""
import json
import os
from pathlib import Path

from lab.infra import cache
from lab.infra.jsonio import write_json

STATES = ("running", "done", "failed", "stale")
MANIFEST = "manifest.json"
_UNLISTED = {"status.json", MANIFEST}
_TEXT_FIELDS = ("status", "host", "started", "finished", "error", "commit", "device", "updated",
                "manifest_sha256")
_NUMBER_FIELDS = ("started_unix", "finished_unix", "seconds")
_hashes = {}  # (path, size, mtime_ns, inode) -> sha256


def sha256(path):
    """The file's sha256, read again only when its size, mtime or inode changed."""
    st = os.stat(path)
    key = (str(path), st.st_size, st.st_mtime_ns, st.st_ino)
    if key not in _hashes:
        _hashes[key] = cache.sha256(path)
    return _hashes[key]


def _walk(folder):
    """(relative path, is a symbolic link, is a regular file) of every entry below `folder` but
    hidden ones; links are reported, never followed."""
    for dirpath, dirnames, filenames in os.walk(folder):
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for name in sorted(dirnames + filenames):
            p = Path(dirpath) / name
            if not name.startswith("."):
                yield p.relative_to(folder).as_posix(), p.is_symlink(), p.is_file()


def files(folder, entries=None):
    """The run's own files, as sorted relative paths: what the manifest lists."""
    out = []
    for rel, link, regular in entries if entries is not None else _walk(folder):
        top = "/" not in rel
        if regular and not link and not (top and (rel in _UNLISTED or rel.endswith(".ipynb"))):
            out.append(rel)
    return sorted(out)


def write_manifest(folder):
    """Write manifest.json (size and sha256 of every file of the run); return its sha256."""
    folder = Path(folder)
    listing = {rel: {"size": (folder / rel).stat().st_size, "sha256": sha256(folder / rel)}
               for rel in files(folder)}
    write_json(folder / MANIFEST, {"files": listing})
    return sha256(folder / MANIFEST)


# ----------------------------------------------------------------------------------------------
# The check
# ----------------------------------------------------------------------------------------------

def _json_object(path, required):
    """(object, None) or (None, reason); ({}, None) for a missing optional file."""
    if not path.is_file():
        return (None, f"{path.name} is missing") if required else ({}, None)
    raw = path.read_bytes()
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as err:
        return None, f"{path.name} is not UTF-8 text ({err.reason} at byte {err.start})"
    except json.JSONDecodeError as err:
        return None, f"{path.name} is not valid JSON, probably cut short ({err.msg}, {len(raw)} bytes)"
    if not isinstance(obj, dict):
        return None, f"{path.name} holds {type(obj).__name__}, not a JSON object"
    return obj, None


def _status_problem(meta):
    for key in _TEXT_FIELDS:
        if meta.get(key) is not None and not isinstance(meta[key], str):
            return f"status.json field {key!r} is {type(meta[key]).__name__}, not text"
    for key in _NUMBER_FIELDS:
        v = meta.get(key)
        if v is not None and (isinstance(v, bool) or not isinstance(v, (int, float))):
            return f"status.json field {key!r} is {v!r}, not a number"
    if meta.get("status") is not None and meta["status"] not in STATES:
        return f"status.json status {meta['status']!r} is not one of {', '.join(STATES)}"
    return None


def _table_problem(path):
    import pandas as pd
    try:
        df = pd.read_csv(path)
    except UnicodeDecodeError:
        return f"tables/{path.name} is not UTF-8 text"
    except (pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        return f"tables/{path.name} does not parse as a table ({type(err).__name__}: {err})"
    if len(df.columns) == 0:
        return f"tables/{path.name} has no columns"
    return None


def manifest_problem(folder, meta):
    """None when a `done` run still holds exactly what it finished with, else what changed."""
    folder = Path(folder)
    if not (folder / MANIFEST).is_file():
        return (f"status.json says done but {MANIFEST} is missing: set to done by hand, or finished "
                "by code older than the manifest (re-run it)")
    manifest, why = _json_object(folder / MANIFEST, required=True)
    if why:
        return why
    if meta.get("manifest_sha256") != sha256(folder / MANIFEST):
        return f"{MANIFEST} changed since the run finished (its sha256 is not status.json's manifest_sha256)"
    listing = manifest.get("files")
    if not isinstance(listing, dict):
        return f"{MANIFEST} has no file list"
    entries = list(_walk(folder))
    links = [rel for rel, link, _ in entries if link]
    if links:  # never followed: a link may point at anyone's file (lab.commands.report_files)
        return f"{links[0]} is a symbolic link; a run writes regular files only"
    for rel, rec in sorted(listing.items()):
        path = folder / rel
        if not path.is_file():
            return f"{rel} is missing (the run wrote it; deleted since it finished)"
        size = path.stat().st_size
        if not isinstance(rec, dict) or size != rec.get("size") or sha256(path) != rec.get("sha256"):
            return f"{rel} changed since the run finished ({size} bytes, sha256 differs from {MANIFEST})"
    added = [rel for rel in files(folder, entries) if rel not in listing]
    if added:
        return f"{added[0]} was added after the run finished (not in {MANIFEST})"
    return None


def problem(folder):
    """None when the report and find_done may read this run folder, else the reason they may not."""
    folder = Path(folder)
    meta, why = _json_object(folder / "status.json", required=False)
    why = why or _status_problem(meta)
    if why:
        return why
    for name, required in (("params.json", True), ("metrics.json", False)):
        why = _json_object(folder / name, required)[1]
        if why:
            return why
    csv = folder / "metrics.csv"
    if csv.is_file():
        try:
            csv.read_bytes().decode("utf-8")
        except UnicodeDecodeError:
            return "metrics.csv is not UTF-8 text"
    if meta.get("status") == "done":
        why = manifest_problem(folder, meta)
        if why:
            return why
        for table in sorted((folder / "tables").glob("*.csv")):
            why = _table_problem(table)
            if why:
                return why
    return None
