"""Run every notebook in notebooks/ on its defaults, one progress line each as it finishes.

    python -m lab.commands.reproduce [--only 01,05] [--runs-dir DIR] [--reuse] [--jobs N]

Each notebook goes through `lab.commands.nbtools.execute` (its own run folder, executed notebook inside);
a failure is reported and the next notebook still runs; the exit code is 1 if any failed.
`make reproduce` runs this and then `python -m lab.commands.report`.

--jobs N (default: 2 on a CPU-only machine with 2+ cores, else 1) runs N notebooks at once, each in
its own process with an equal share of the cores (OMP_NUM_THREADS and LAB_CPUS), longest first.
Why: on the 2-core machine the probes and metrics of a notebook barely use a second thread (notebook
03: 134 s at 2 threads, 133 s at 1), so two notebooks side by side finish sooner than one after the
other. Notebooks that share a trained model wait for it on the zoo's lock; none trains it twice.
"""
import argparse
import sys
import threading
import time
from pathlib import Path

from lab import runs
from lab.commands import batch, nbtools
from lab.workers import cpus

# minutes each notebook takes in its one-thread lane on the 2-core machine (estimates for issue 23's
# defaults from unit costs; 03 includes training the shared HAE): the lanes take the longest first, so
# the big ones start together and the short ones fill in at the end
MINUTES = {"05": 32.0, "07": 30.0, "03": 18.5, "06": 5.0, "02": 4.6, "01": 3.7, "08": 1.3, "00": 0.3, "04": 0.2}
# 03 trains the shared HAE (lab.zoo.hae) that 02, 04 and the explorer wait for on the zoo's lock:
# it starts first, so that no lane idles on that lock
FIRST = ("03",)


def notebooks(folder=None, only=None):
    """The notebooks of `folder` (default <repo>/notebooks) sorted by name; `only` filters by
    name prefix ("01", "05_flow") and every prefix must match something."""
    folder = Path(folder or runs.repo_root() / "notebooks")
    found = nbtools.listed(folder)
    if not only:
        return found
    picked = [p for p in found if any(p.stem.startswith(o) for o in only)]
    unmatched = [o for o in only if not any(p.stem.startswith(o) for p in found)]
    if unmatched:
        raise ValueError(f"--only {','.join(unmatched)}: no such notebook in {folder}; have "
                         f"{', '.join(p.stem for p in found) or 'none'}")
    return picked


def run_in_order(todo, *, runs_dir=None, reuse=False, kernel="python3"):
    """Run `todo` one after the other in this process; print one line per notebook; return the failed stems."""
    width, failed = max(len(p.stem) for p in todo), []
    for i, nb in enumerate(todo, 1):
        print(_head(i, len(todo), nb, width), end="", flush=True)  # which notebook is running, while it runs
        t0 = time.perf_counter()
        res = _guarded(lambda: nbtools.execute(nb, {}, runs_dir=runs_dir, kernel=kernel, reuse=reuse))
        print(_tail(res, time.perf_counter() - t0), flush=True)
        if res["status"] != "done":
            failed.append(nb.stem)
    return failed


def _guarded(run_one):
    """run_one()'s result dict, or a failed one: a broken notebook file must not stop the others."""
    try:
        return run_one()
    except Exception as e:
        return {"status": "failed", "dir": None, "error": f"{type(e).__name__}: {e}"}


def default_jobs():
    """2 where the lab runs on the CPU (trainutil.pick_device) with at least 2 cores, else 1."""
    from lab.trainutil import pick_device
    if pick_device().type != "cpu" or cpus() < 2:
        return 1
    return 2


def longest_first(todo):
    return sorted(todo, key=lambda p: (p.stem[:2] not in FIRST, -MINUTES.get(p.stem[:2], 5)))


def _head(i, n, nb, width):
    return f"[{i}/{n}] {nb.stem:<{width}} "


def _tail(res, seconds):
    note = " (reused)" if res.get("reused") else ""
    out = f"{res['status']:<6} {seconds:7.1f} s  {res.get('dir') or ''}{note}"
    if res["status"] != "done":
        out += f"\n    error: {(res.get('error') or 'unknown').splitlines()[0][:300]}"
    return out


def run_lanes(todo, jobs, *, runs_dir=None, reuse=False, kernel="python3"):
    """Run `todo` in `jobs` lanes (subprocesses, cores shared equally), longest first; print one line per
    notebook as it finishes; return the stems that failed."""
    share = max(1, cpus() // jobs)
    env = {"OMP_NUM_THREADS": str(share), "MKL_NUM_THREADS": str(share), "LAB_CPUS": str(share)}
    queue, failed, lock = longest_first(todo), [], threading.Lock()
    width, done = max(len(p.stem) for p in todo), [0]

    def lane():
        while True:
            with lock:
                if not queue:
                    return
                nb = queue.pop(0)
            t0 = time.perf_counter()
            res = _guarded(lambda: batch.subprocess_executor(nb, {}, gpu=None, runs_dir=runs_dir, reuse=reuse,
                                                             kernel=kernel, env=env))
            with lock:
                done[0] += 1
                print(_head(done[0], len(todo), nb, width) + _tail(res, time.perf_counter() - t0), flush=True)
                if res["status"] != "done":
                    failed.append(nb.stem)

    threads = [threading.Thread(target=lane) for _ in range(min(jobs, len(todo)))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return failed


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lab.commands.reproduce", description=__doc__.split("\n")[0])
    ap.add_argument("--only", default=None, help="comma-separated name prefixes, e.g. 01,05")
    ap.add_argument("--runs-dir", default=None, help="default $LAB_RUNS_DIR or runs/")
    ap.add_argument("--notebooks", default=None, help="folder of notebooks (default notebooks/)")
    ap.add_argument("--reuse", action="store_true",
                    help="keep finished runs of the same parameters and the same committed code")
    ap.add_argument("--kernel", default="python3")
    ap.add_argument("--jobs", type=int, default=None,
                    help="notebooks at once, each with an equal share of the cores (default: 2 on a CPU-only "
                         "machine with 2+ cores, else 1)")
    args = ap.parse_args(argv)
    if args.jobs is not None and args.jobs < 1:
        print(f"error: --jobs must be >= 1, got {args.jobs}", file=sys.stderr)
        return 2
    only = [o.strip() for o in args.only.split(",") if o.strip()] if args.only else None
    try:
        todo = notebooks(args.notebooks, only)
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    if not todo:
        print("no notebooks to run", file=sys.stderr)
        return 2
    jobs = default_jobs() if args.jobs is None else args.jobs
    t_all = time.perf_counter()
    if jobs > 1 and len(todo) > 1:
        failed = run_lanes(todo, jobs, runs_dir=args.runs_dir, reuse=args.reuse, kernel=args.kernel)
    else:
        failed = run_in_order(todo, runs_dir=args.runs_dir, reuse=args.reuse, kernel=args.kernel)
    total = time.perf_counter() - t_all
    print(f"total {total:.1f} s ({total / 60:.1f} min): {len(todo) - len(failed)} done, "
          f"{len(failed)} failed{': ' + ', '.join(failed) if failed else ''}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
