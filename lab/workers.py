"""Training several small models at once in one-thread worker processes (lab.zoo.parallel).

Why: the models of the embedded default are small, and a second thread in one process buys little
(a width-96 DiT step: 18.1 steps/s at 2 threads, 14.7 at 1; a four-stage HAE 1.93 vs 1.09 stage-1
steps/s), so on the 2-core machine two one-thread processes train two of them 1.4-1.6x faster than
one after the other. A model trained in a worker differs from one trained at two threads only by
float rounding (the thread count changes the order of sums), like the same run on another machine.

Workers die with their parent: a kill -9 of the notebook kernel used to leave them training on,
then blocked forever on a pipe (issue 21). Linux sends them SIGTERM when the parent dies (prctl
PR_SET_PDEATHSIG), and a watchdog thread exits when the parent pid changes (other systems, or
a parent thread that ended). Nothing is lost that a rerun needs: the trainers checkpoint as they
go, so the recipe resumes from its last checkpoint. The resource tracker exits once they are gone.
"""
import concurrent.futures as cf
import ctypes
import multiprocessing as mp
import os
import signal
import sys
import threading
import time

import torch
from tqdm.auto import tqdm


def cpus():
    """Cores this process may use: $LAB_CPUS (make reproduce gives each of its lanes a share), else all."""
    return max(1, int(os.environ.get("LAB_CPUS") or os.cpu_count() or 1))


def default_workers(n_calls):
    """$LAB_ZOO_WORKERS, else 1 on a GPU (one model fills it) and min(cpus(), n_calls) on a CPU."""
    env = os.environ.get("LAB_ZOO_WORKERS")
    if env:
        return max(1, int(env))
    from lab.trainutil import pick_device
    if pick_device().type != "cpu":
        return 1
    return max(1, min(cpus(), n_calls))


def _die_with_parent(parent, every=1.0):
    """SIGTERM from the kernel when the parent dies (Linux), and a watchdog on the parent pid."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)

    def watch():
        while os.getppid() == parent:  # a dead parent's children are adopted by another process
            time.sleep(every)
        os._exit(1)
    threading.Thread(target=watch, daemon=True, name="parent-watchdog").start()


def _init(threads, log_path, parent):
    """A worker's output goes to a log file: the notebook shows one progress bar for all of them."""
    _die_with_parent(parent)
    torch.set_num_threads(threads)
    fd = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(fd, 1)
    os.dup2(fd, 2)


def _call(fn, kwargs):
    fn(**kwargs)


def train_in_workers(calls, workers, log_dir):
    """Call fn(**kwargs) for each (fn, kwargs) in `workers` spawned processes of cpus() // workers threads
    each, discarding the results (the functions save what they train). A failed call raises here,
    naming the function, its non-tensor arguments and the log (`log_dir`/<pid>.log)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    log = log_dir / f"{os.getpid()}.log"
    threads = max(1, cpus() // workers)
    with cf.ProcessPoolExecutor(workers, mp_context=mp.get_context("spawn"), initializer=_init,
                                initargs=(threads, str(log), os.getpid())) as pool:
        futures = {pool.submit(_call, fn, kw): (fn, kw) for fn, kw in calls}
        with tqdm(total=len(calls), desc=f"{len(calls)} models in {workers} processes") as bar:
            for fut in cf.as_completed(futures):
                try:
                    fut.result()
                except Exception as err:
                    fn, kw = futures[fut]
                    shown = {k: v for k, v in kw.items() if not torch.is_tensor(v)}
                    raise RuntimeError(f"zoo.{fn.__name__}({shown}) failed in a worker process "
                                       f"({type(err).__name__}: {err}); its output is in {log}") from err
                bar.update(1)
