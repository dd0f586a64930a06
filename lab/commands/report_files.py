"""The report's files: what it reads from a run folder and what it may replace in its out folder.

Reading. A run folder is someone's disk: `figures/width.png -> /etc/shadow` must not put the
shadow file into reports/, which is committed to git. The report reads only regular files that
live inside the run folder: no symbolic link anywhere below the run folder, the resolved path
inside the resolved run folder, opened with O_NOFOLLOW so a link swapped in after the check is
not followed either. `run_problem` names the first file that fails, and the report lists that run
as unreadable instead of failing as a whole.

Writing. The report never deletes or replaces a file it did not write. It writes the new report
into a fresh hidden folder inside `out` (same filesystem, and `out` itself is never renamed, so
`--out .` or a mount point works), then moves in only its own files. `.report-manifest.json`
records each file it wrote with its sha256; on the next build it removes or replaces only files
that the manifest lists and that are unchanged since. A report from before the manifest is
recognised by the marker on its README.md files (`legacy_owned`). Anything else in `out` is the
user's: a clash with it refuses the build, naming the file.
"""
import json
import os
import shutil
import stat
import tempfile
from pathlib import Path, PurePosixPath

from lab.infra import cache
from lab.infra.jsonio import write_atomic

MANIFEST = ".report-manifest.json"
BUILDING = ".report-building-"  # prefix of the temporary folder a build writes into
KEEP = {".gitkeep", MANIFEST}   # what an otherwise empty out folder may hold without --force
_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)


class Refused(RuntimeError):
    """The build would have to delete or replace a file the report did not write."""


# ----------------------------------------------------------------------------------------------
# Reading regular files inside a folder
# ----------------------------------------------------------------------------------------------

def _parts(rel):
    """The parts of a relative path; None for an absolute one or one that climbs out with '..'."""
    p = PurePosixPath(rel)
    if p.is_absolute() or not p.parts or any(x in ("..", ".", "") for x in p.parts):
        return None
    return p.parts


def problem(root, rel):
    """None when root/rel is a regular file inside `root` reached through no link, else why not."""
    parts = _parts(rel)
    if parts is None:
        return f"{rel} is not a path inside the folder"
    p = Path(root)
    for i, part in enumerate(parts):
        p = p / part
        shown = "/".join(parts[:i + 1])
        try:
            mode = os.lstat(p).st_mode
        except FileNotFoundError:
            return f"{shown} is missing"
        except OSError as err:
            return f"{shown} cannot be read ({type(err).__name__}: {err.strerror})"
        if stat.S_ISLNK(mode):
            return f"{shown} is a symbolic link; the report copies only regular files inside the run folder"
        if i < len(parts) - 1 and not stat.S_ISDIR(mode):
            return f"{shown} is not a folder"
    if stat.S_ISDIR(mode):
        return f"{rel} is a folder, not a file"
    if not stat.S_ISREG(mode):
        return f"{rel} is not a regular file"
    if not p.resolve().is_relative_to(Path(root).resolve()):
        return f"{rel} resolves outside the run folder"
    if not os.access(p, os.R_OK):
        return f"{rel} cannot be read (permission denied)"
    return None


def read_inside(root, rel):
    """The bytes of root/rel, checked by `problem`; ValueError naming the file otherwise."""
    why = problem(root, rel)
    if why:
        raise ValueError(f"{Path(root) / rel}: {why}")
    fd = os.open(Path(root) / rel, os.O_RDONLY | _NOFOLLOW)  # a link swapped in since: ELOOP
    with os.fdopen(fd, "rb") as f:
        if not stat.S_ISREG(os.fstat(f.fileno()).st_mode):
            raise ValueError(f"{Path(root) / rel}: not a regular file")
        return f.read()


def copy_inside(root, rel, dest):
    """Copy root/rel (checked as in `read_inside`) to `dest`, mode 0644."""
    data = read_inside(root, rel)
    Path(dest).parent.mkdir(parents=True, exist_ok=True)
    Path(dest).write_bytes(data)
    os.chmod(dest, 0o644)


def run_reads(run):
    """The paths inside a run folder the report reads: its records, figures (+ PDF twins), tables."""
    rels = ["params.json", "status.json", "metrics.json", "metrics.csv", "figures", "tables"]
    for sub, pattern in (("figures", "*.png"), ("figures", "*.pdf"), ("tables", "*.csv")):
        if not os.path.islink(run.dir / sub):  # a linked folder is reported as such, never listed
            rels += [f"{sub}/{p.name}" for p in sorted((run.dir / sub).glob(pattern))]
    return rels


def run_problem(run):
    """None when every file the report reads from this run is a regular file inside it, else why."""
    for rel in run_reads(run):
        if not os.path.lexists(run.dir / rel):
            continue  # optional files; run_index already requires the ones a run must have
        if rel in ("figures", "tables"):
            if os.path.islink(run.dir / rel):
                return f"{rel} is a symbolic link; the report copies only regular files inside the run folder"
            continue
        why = problem(run.dir, rel)
        if why:
            return why
    return None


# ----------------------------------------------------------------------------------------------
# What the report owns in its out folder
# ----------------------------------------------------------------------------------------------

def _files(folder):
    """Relative POSIX paths of the regular files under `folder` (links are not followed)."""
    found = []
    for dirpath, dirnames, filenames in os.walk(folder):
        for name in filenames:
            p = Path(dirpath) / name
            if not p.is_symlink() and p.is_file():
                found.append(p.relative_to(folder).as_posix())
    return sorted(found)


def _marked(path, markers):
    return path.is_file() and not path.is_symlink() and path.read_text(errors="replace").startswith(markers)


def legacy_owned(out, markers):
    """The files a report from before the manifest wrote: README.md, claims.csv, and in each
    <experiment>/ whose README.md carries the marker, its README.md, runs.csv, figures/, tables/."""
    if not _marked(out / "README.md", markers):
        return []
    rels = ["README.md"] + (["claims.csv"] if problem(out, "claims.csv") is None else [])
    for d in sorted(p for p in out.iterdir() if p.is_dir() and not p.is_symlink() and not p.name.startswith(".")):
        if not _marked(d / "README.md", markers):
            continue
        rels += [f"{d.name}/{n}" for n in ("README.md", "runs.csv") if problem(d, n) is None]
        rels += [f"{d.name}/{sub}/{f}" for sub in ("figures", "tables")
                 if (d / sub).is_dir() and not (d / sub).is_symlink() for f in _files(d / sub)]
    return rels


def _read_manifest(out):
    """{relative path: [sha256 the report may find there]}, None when there is no manifest."""
    path = out / MANIFEST
    if not os.path.lexists(path):
        return None
    fix = "restore it from git or move it away and rebuild with --force"
    try:
        m = json.loads(read_inside(out, MANIFEST))
        entries = {rel: [sha] for rel, sha in m["files"].items()}
        for rel, sha in m.get("incoming", {}).items():  # a build stopped while moving its files in
            entries.setdefault(rel, []).append(sha)
    except (ValueError, KeyError, TypeError, AttributeError) as err:
        raise Refused(f"{path} is not a manifest this report wrote ({type(err).__name__}: {err}); {fix}")
    bad = [rel for rel in entries if _parts(rel) is None or rel == MANIFEST]
    if bad:
        raise Refused(f"{path} names {bad[0]!r}, which is not a file inside {out}; {fix}")
    return entries


def owned(out, markers):
    """(files the report may remove or replace: {relative path: sha256 now}, changed: paths the
    manifest lists that no longer hold what the report wrote)."""
    listed = _read_manifest(out)
    if listed is None:
        return {rel: cache.sha256(out / rel) for rel in legacy_owned(out, markers)}, set()
    mine, changed = {}, set()
    for rel, shas in sorted(listed.items()):
        if not os.path.lexists(out / rel):
            continue
        sha = cache.sha256(out / rel) if problem(out, rel) is None else None
        if sha in shas:
            mine[rel] = sha
        else:
            changed.add(rel)
    return mine, changed


def check_out(out, markers, force):
    """Refuse an --out that is not a folder, or one holding files of someone else's and neither a
    manifest nor a marked README.md (unless force); returns `owned(out, markers)`."""
    if os.path.lexists(out) and not out.is_dir():
        raise Refused(f"--out {out} is a file, not a folder; name a folder for the report")
    if not out.exists():
        return {}, set()
    mine, changed = owned(out, markers)
    if mine or changed or os.path.lexists(out / MANIFEST) or force:
        return mine, changed
    foreign = sorted(p.name for p in out.iterdir() if p.name not in KEEP and not p.name.startswith(BUILDING))
    if foreign:
        name = "README.md" if "README.md" in foreign else foreign[0]
        raise Refused(f"refusing to write into {out}: it holds {name}, which lab.commands.report did not "
                      "write, and no report manifest; pass --force to write the report beside its files "
                      "(nothing there is deleted or replaced), or choose another --out")
    return mine, changed


# ----------------------------------------------------------------------------------------------
# Moving a new build in
# ----------------------------------------------------------------------------------------------

def leftovers(out):
    """Building folders a killed build left in `out` (named, never deleted: we cannot prove whose)."""
    return sorted(p for p in out.glob(BUILDING + "*")) if out.is_dir() else []


def building_folder(out):
    """A fresh temporary folder inside `out` to write the new report into."""
    out.mkdir(parents=True, exist_ok=True)
    return Path(tempfile.mkdtemp(prefix=BUILDING, dir=out))


def _clash(out, rel, mine, changed):
    """Why root/rel cannot be written (a file or folder the report does not own is there), or None."""
    parts = PurePosixPath(rel).parts
    for i in range(1, len(parts) + 1):
        sub = "/".join(parts[:i])
        p = out / sub
        if not os.path.lexists(p) or sub in mine or (i < len(parts) and p.is_dir() and not p.is_symlink()):
            continue
        if sub in changed:
            return (f"refusing to replace {p}: it changed since lab.commands.report wrote it (its sha256 "
                    f"differs from {out / MANIFEST}); move your version elsewhere or restore it, then rebuild")
        return (f"refusing to replace {p}: lab.commands.report did not write it; move it elsewhere "
                "or choose another --out")
    return None


def _remove(out, rel):
    """Remove a file the report owns, then the folders that leaves empty (never a non-empty one)."""
    (out / rel).unlink()
    parent = (out / rel).parent
    while parent != out:
        try:
            parent.rmdir()
        except OSError:
            return
        parent = parent.parent


def _write_manifest(out, files, incoming=None):
    m = {"about": "files lab.commands.report wrote here, with their sha256; a rebuild replaces or "
                  "removes only these, and only while unchanged", "files": files}
    if incoming is not None:
        m["incoming"] = incoming
    write_atomic(out / MANIFEST, json.dumps(m, indent=1, sort_keys=True) + "\n")


def move_in(tmp, out, mine, changed):
    """Move every file of the build in `tmp` into `out`: replace the owned files it rewrites,
    remove the owned files it no longer writes, touch nothing else. Refuses before any change."""
    new = {rel: cache.sha256(tmp / rel) for rel in _files(tmp)}
    for rel in new:
        why = _clash(out, rel, mine, changed)
        if why:
            raise Refused(why)
    _write_manifest(out, mine, incoming=new)  # a build killed from here on leaves a manifest that knows both
    for rel in sorted(set(mine) - set(new)):
        _remove(out, rel)
    for rel in new:
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp / rel, out / rel)
    _write_manifest(out, new)
    shutil.rmtree(tmp)  # our own fresh folder, emptied of files above
