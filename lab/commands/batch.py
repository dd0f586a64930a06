"""A papermill sweep over a parameter grid: one run per visible GPU at a time, resumable.

    python -m lab.commands.batch notebooks/05_flow_matching.ipynb \
        --grid path=linear,slerp radial_weight=0,0.1,1 steps=400000 --gpus 0,1,2,3
    python -m lab.commands.batch notebooks/05_flow_matching.ipynb --grid ... --slurm sweep.sh

Every grid point is one `python -m lab.commands.nbtools` subprocess with CUDA_VISIBLE_DEVICES set to its
GPU, so each run sees one device. Points whose identical-parameter run is already `done` are
skipped (--no-resume runs them again), so an interrupted sweep continues where it stopped.
--slurm writes a job-array script instead of running: task i runs grid point i
(`--index $SLURM_ARRAY_TASK_ID`), resumable in the same way.

Values are parsed against the notebook's defaults by `lab.infra.params.parse_value` (a str
parameter keeps the text, a float parameter takes `1` as 1.0, `true/false` are bools, `none` is
None, otherwise int, then float, then text) and checked against the parameters cell's types and
rules before any point runs. Values cannot contain commas.
"""
import argparse
import itertools
import json
import os
import queue
import shlex
import subprocess
import sys
import threading
import time
from pathlib import Path

from lab import runs
from lab.commands.nbtools import find_notebook
from lab.infra.jsonio import write_atomic
from lab.infra.params import NO_DEFAULT, parse_value, read_parameters, validate

def parse_grid(items, declared=None):
    """["key=v1,v2", ...] -> {key: [values]} (insertion order kept), typed by `declared`."""
    grid = {}
    for item in items:
        key, sep, values = item.partition("=")
        key = key.strip()
        if not sep or not key or not values:
            raise ValueError(f"grid item {item!r}: write key=value1,value2,...")
        if key in grid:
            raise ValueError(f"grid key {key!r} given twice")
        default = declared[key].default if declared and key in declared else NO_DEFAULT
        grid[key] = [parse_value(v, default) for v in values.split(",")]
    return grid


def grid_points(grid):
    """The cartesian product as a list of dicts; the first key varies slowest."""
    keys = list(grid)
    return [dict(zip(keys, combo)) for combo in itertools.product(*(grid[k] for k in keys))]


def visible_gpus():
    """GPU ids from CUDA_VISIBLE_DEVICES, else from nvidia-smi; [None] (one slot, CPU) if none."""
    env = os.environ.get("CUDA_VISIBLE_DEVICES")
    if env is not None:
        ids = [g.strip() for g in env.split(",") if g.strip() and g.strip() != "-1"]
        return ids or [None]
    try:
        out = subprocess.run(["nvidia-smi", "-L"], capture_output=True, text=True, timeout=20)
        ids = [str(i) for i, line in enumerate(out.stdout.splitlines()) if line.startswith("GPU")]
        return ids or [None]
    except (OSError, subprocess.SubprocessError):
        return [None]


def subprocess_executor(notebook, params, *, gpu, runs_dir, reuse, kernel="python3", env=None):
    """Run one grid point as `python -m lab.commands.nbtools` with CUDA_VISIBLE_DEVICES=gpu (and `env` added)."""
    env = dict(os.environ, **(env or {}))
    root = str(runs.repo_root())
    env["PYTHONPATH"] = os.pathsep.join([root] + [p for p in env.get("PYTHONPATH", "").split(
        os.pathsep) if p and p != root])
    if gpu is not None:
        env["CUDA_VISIBLE_DEVICES"] = str(gpu)
    cmd = [sys.executable, "-m", "lab.commands.nbtools", str(notebook), "--params-json",
           json.dumps(params), "--kernel", kernel]
    if runs_dir:
        cmd += ["--runs-dir", str(runs_dir)]
    if reuse:
        cmd += ["--reuse"]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
    for line in reversed(proc.stdout.strip().splitlines()):
        try:
            return json.loads(line)
        except json.JSONDecodeError:
            continue
    tail = (proc.stderr or proc.stdout).strip()[-2000:]
    return {"status": "failed", "dir": None, "error": f"lab.commands.nbtools exited {proc.returncode}: {tail}"}


def sweep(notebook, grid, *, gpus=None, runs_dir=None, resume=True, executor=None,
          kernel="python3", index=None):
    """Run every grid point of `notebook`; returns one result dict per point, in grid order.

    grid: {name: [values]}; gpus: list of device ids (None: the visible ones; an entry None
    leaves CUDA_VISIBLE_DEVICES alone); resume: skip points with a finished identical run;
    executor(notebook, params, gpu=, runs_dir=, reuse=, kernel=) -> result dict (tests pass a
    fake); index: run only grid point `index` (what a SLURM array task does).
    """
    from tqdm.auto import tqdm
    notebook = Path(notebook)
    declared = read_parameters(notebook)
    points = grid_points(grid)
    for p in points:
        validate(notebook.stem, declared, p)  # every point is checked before any runs
    todo = list(enumerate(points))
    if index is not None:
        if not 0 <= index < len(points):
            raise ValueError(f"--index {index}: the grid has {len(points)} points (0..{len(points) - 1})")
        todo = [todo[index]]
    executor = executor or subprocess_executor
    results = {}
    pending = queue.Queue()
    for i, p in todo:
        prev = runs.find_done(notebook.stem, validate(notebook.stem, declared, p),
                              runs_dir) if resume else None
        if prev is not None:
            results[i] = {"status": "done", "dir": str(prev.dir), "reused": True, "seconds": 0.0,
                          "error": None, "params": p}
        else:
            pending.put((i, p))
    n_run = pending.qsize()
    bar = tqdm(total=len(todo), desc=notebook.stem, initial=len(todo) - n_run)
    for i in sorted(results):
        tqdm.write(f"[{i}] skip   {_fmt(points[i])}: done in {results[i]['dir']}")
    lock = threading.Lock()

    def worker(gpu):
        while True:
            try:
                i, p = pending.get_nowait()
            except queue.Empty:
                return
            t0 = time.perf_counter()
            try:
                res = executor(notebook, p, gpu=gpu, runs_dir=runs_dir, reuse=resume, kernel=kernel)
            except Exception as e:  # one broken point must not stop the sweep
                res = {"status": "failed", "dir": None, "error": f"{type(e).__name__}: {e}"}
            res = {**res, "params": p, "gpu": gpu, "seconds": time.perf_counter() - t0}
            with lock:
                results[i] = res
                where = res.get("dir") or res.get("error", "")
                tqdm.write(f"[{i}] {res['status']:<6} {res['seconds']:7.1f} s  gpu={gpu}  "
                           f"{_fmt(p)}  {where}")
                bar.update(1)

    slots = list(gpus) if gpus else visible_gpus()
    threads = [threading.Thread(target=worker, args=(g,), daemon=True) for g in slots[:max(n_run, 1)]]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    bar.close()
    return [results[i] for i, _ in todo]


def _fmt(params):
    return " ".join(f"{k}={v!r}" for k, v in params.items())


def slurm_script(notebook, grid_items, n_points, *, runs_dir=None, sbatch=(), max_parallel=None,
                 python=None, points=None):
    """A SLURM job-array script whose task i runs grid point i on one GPU."""
    notebook = Path(notebook).resolve()
    root = runs.repo_root()
    array = f"0-{n_points - 1}" + (f"%{max_parallel}" if max_parallel else "")
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=lab-{notebook.stem}",
             f"#SBATCH --array={array}",
             "#SBATCH --gres=gpu:1",
             "#SBATCH --output=slurm-%x-%A_%a.out"]
    lines += [f"#SBATCH {opt}" for opt in sbatch]
    lines += [f"# grid point {i}: {_fmt(p)}" for i, p in enumerate(points or [])]
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(root))}",
              f"export PYTHONPATH={shlex.quote(str(root))}${{PYTHONPATH:+:$PYTHONPATH}}"]
    if runs_dir:
        lines += [f"export LAB_RUNS_DIR={shlex.quote(str(Path(runs_dir).resolve()))}"]
    cmd = [python or sys.executable, "-m", "lab.commands.batch", str(notebook), "--grid", *grid_items]
    lines += [" ".join(shlex.quote(c) for c in cmd) + ' --index "$SLURM_ARRAY_TASK_ID"', ""]
    return "\n".join(lines)


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lab.commands.batch", description=__doc__.split("\n")[0])
    ap.add_argument("notebook", help="a path, or a name in notebooks/ (05_flow_matching, 05)")
    ap.add_argument("--grid", nargs="+", default=[], metavar="KEY=V1,V2",
                    help="parameter values to sweep (a single value fixes a parameter)")
    ap.add_argument("--gpus", default=None, help="comma-separated GPU ids (default: all visible)")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--no-resume", action="store_true", help="run points that are already done")
    ap.add_argument("--kernel", default="python3")
    ap.add_argument("--index", type=int, default=None, help="run only this grid point")
    ap.add_argument("--slurm", default=None, metavar="OUT.sh", help="write a job-array script")
    ap.add_argument("--sbatch", action="append", default=[], metavar="OPT",
                    help="extra #SBATCH line for --slurm, e.g. --sbatch=--time=24:00:00")
    ap.add_argument("--max-parallel", type=int, default=None, help="array %%limit for --slurm")
    args = ap.parse_args(argv)

    args.notebook = find_notebook(args.notebook)  # a path, or a name in notebooks/ ("05_flow_matching", "05")
    declared = read_parameters(args.notebook)
    grid = parse_grid(args.grid, declared)
    points = grid_points(grid)
    for p in points:
        validate(Path(args.notebook).stem, declared, p)
    if args.slurm:
        text = slurm_script(args.notebook, args.grid, len(points), runs_dir=args.runs_dir,
                            sbatch=args.sbatch, max_parallel=args.max_parallel, points=points)
        write_atomic(args.slurm, text)
        os.chmod(args.slurm, 0o755)
        print(f"wrote {args.slurm}: {len(points)} array tasks; submit with: sbatch {args.slurm}")
        return 0
    gpus = [g.strip() for g in args.gpus.split(",")] if args.gpus else None
    t0 = time.perf_counter()
    results = sweep(args.notebook, grid, gpus=gpus, runs_dir=args.runs_dir,
                    resume=not args.no_resume, kernel=args.kernel, index=args.index)
    failed = [r for r in results if r["status"] != "done"]
    print(f"{len(results) - len(failed)} done, {len(failed)} failed, "
          f"{time.perf_counter() - t0:.1f} s")
    return 1 if failed else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except ValueError as e:
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
