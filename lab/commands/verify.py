"""Check every recorded cache file under a folder byte for byte, and set aside the ones that fail.

    python -m lab.commands.verify runs/_latents            # every latent shard
    python -m lab.commands.verify ~/.cache/latent-geometry-lab/weights --keep

A load checks a large file by size and fingerprint only (lab.infra.cache.FULL_HASH_BELOW); this
reads every byte of every file that has a record (<file>.record.json, or a weights manifest
<name>.json naming its file and sha256) and compares its sha256. A file that fails is named and
moved aside to <name>.bad-<time> (never deleted; --keep only reports), so the next load rebuilds
it. Exit status: 0 all intact, 1 some failed, 2 a path that does not exist.
"""
import argparse
import json
import sys
from pathlib import Path

from lab.infra import cache


def records(root):
    """(file, record path) for every record under `root` (a folder, or one recorded file)."""
    root = Path(root)
    if root.is_file():
        rec = cache.record_path(root)
        return [(root, rec if rec.exists() else root.with_suffix(".json"))]
    found = []
    for rec in sorted(root.rglob("*.json")):
        if rec.stat().st_size > 1 << 20:  # a record is a few hundred bytes; skip big result files
            continue
        try:
            info = json.loads(rec.read_text(encoding="utf-8"))
        except (UnicodeDecodeError, json.JSONDecodeError, OSError):
            continue  # not ours to judge: run metadata, notebooks' outputs
        if isinstance(info, dict) and isinstance(info.get("sha256"), str) and isinstance(info.get("file"), str):
            found.append((rec.with_name(info["file"]), rec))
    return found


def verify(root, keep=False, log=print):
    """Fully verify every recorded file under `root`; returns (how many were checked, [(file, reason)
    of those that failed]). Each failure is moved aside unless keep=True."""
    bad = []
    found = records(root)
    for i, (path, rec) in enumerate(found, 1):
        try:
            cache.verify_file(path, rec, what=str(path), full=True)
            log(f"[{i}/{len(found)}] ok    {path}")
        except cache.CorruptFile as err:
            where = ""
            if path.exists() and not keep:
                where = f"; moved aside to {cache.move_aside(path)}, the next load rebuilds it"
            log(f"[{i}/{len(found)}] BAD   {path}: {err.reason}{where}")
            bad.append((path, err.reason))
    return len(found), bad


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lab.commands.verify", description=__doc__.split("\n")[0])
    ap.add_argument("paths", nargs="+", metavar="PATH", help="a cache folder (searched recursively) or one file")
    ap.add_argument("--keep", action="store_true", help="only report: leave failing files where they are")
    ap.add_argument("-q", "--quiet", action="store_true", help="print only the failures and the summary")
    args = ap.parse_args(argv)
    missing = [p for p in args.paths if not Path(p).exists()]
    if missing:
        print(f"error: no such file or folder: {', '.join(missing)} (pass a cache folder such as "
              f"runs/_latents or {cache.cache_dir() / 'weights'})", file=sys.stderr)
        return 2
    bad, n = [], 0
    for p in args.paths:
        checked, failed = verify(p, args.keep, log=(lambda line: "BAD" in line and print(line)) if args.quiet else print)
        n, bad = n + checked, bad + failed
    print(f"{n - len(bad)} of {n} recorded files intact" + (f", {len(bad)} failed" if bad else ""))
    if n == 0:
        print(f"note: no recorded files (<file>.record.json or a weights manifest) under {', '.join(args.paths)}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
