"""Run every notebook in notebooks/ on its defaults, in order, one progress line each.

    python -m lab.infra.reproduce [--only 01,05] [--runs-dir DIR] [--reuse]

Each notebook goes through `lab.infra.nbtools.execute` (its own run folder, executed notebook inside);
a failure is reported and the next notebook still runs; the exit code is 1 if any failed.
`make reproduce` runs this and then `python -m lab.infra.report`.
"""
import argparse
import sys
import time
from pathlib import Path

from lab import runs
from lab.infra import nbtools


def notebooks(folder=None, only=None):
    """The notebooks of `folder` (default <repo>/notebooks) sorted by name; `only` filters by
    name prefix ("01", "05_flow") and every prefix must match something."""
    folder = Path(folder or runs.repo_root() / "notebooks")
    found = sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))
    if not only:
        return found
    picked = [p for p in found if any(p.stem.startswith(o) for o in only)]
    unmatched = [o for o in only if not any(p.stem.startswith(o) for p in found)]
    if unmatched:
        raise ValueError(f"--only {','.join(unmatched)}: no such notebook in {folder}; have "
                         f"{', '.join(p.stem for p in found) or 'none'}")
    return picked


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lab.infra.reproduce", description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help="comma-separated name prefixes, e.g. 01,05")
    ap.add_argument("--runs-dir", default=None, help="default $LAB_RUNS_DIR or runs/")
    ap.add_argument("--notebooks", default=None, help="folder of notebooks (default notebooks/)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep finished runs of the same parameters and the same committed code")
    ap.add_argument("--kernel", default="python3")
    args = ap.parse_args(argv)
    only = [o.strip() for o in args.only.split(",") if o.strip()] if args.only else None
    try:
        todo = notebooks(args.notebooks, only)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not todo:
        print("no notebooks to run", file=sys.stderr)
        return 2
    width = max(len(p.stem) for p in todo)
    t_all = time.perf_counter()
    failed = []
    for i, nb in enumerate(todo, 1):
        print(f"[{i}/{len(todo)}] {nb.stem:<{width}} ", end="", flush=True)
        t0 = time.perf_counter()
        try:
            res = nbtools.execute(nb, {}, runs_dir=args.runs_dir, kernel=args.kernel,
                                  reuse=args.reuse)
        except Exception as e:  # a broken notebook file must not stop the others
            res = {"status": "failed", "dir": None, "error": f"{type(e).__name__}: {e}"}
        seconds = time.perf_counter() - t0
        note = " (reused)" if res.get("reused") else ""
        print(f"{res['status']:<6} {seconds:7.1f} s  {res.get('dir') or ''}{note}", flush=True)
        if res["status"] != "done":
            failed.append(nb.stem)
            print(f"    error: {(res.get('error') or 'unknown').splitlines()[0][:300]}", flush=True)
    total = time.perf_counter() - t_all
    print(f"total {total:.1f} s ({total / 60:.1f} min): {len(todo) - len(failed)} done, "
          f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
