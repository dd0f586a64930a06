"""Runs: every notebook execution writes one folder `runs/<experiment>/<run-id>/`.

The notebook convention (the same in JupyterLab and under papermill):

    # cell 1, tagged `parameters`: plain assignments of literals, one per line, each with a rule
    steps = 300             # >= 1
    data = "photos"         # one of: photos, fashion
    widths = [8, 16]        # non-empty list of >= 1; text after ';' is a note
    ckpt = None             # a None default takes any value

    # (papermill inserts its `injected-parameters` cell here)
    from lab import runs                                     # cell 2
    run = runs.start("05_flow_matching", globals())
    ...                                                      # compute, then record:
    run.log_metrics({"fd_riemannian": 12.3}); run.save_figure(fig, "samples")
    run.done()              # last cell: a run without done() is never `done`

Rules, in the comment on the assignment line (`# RULE` or `# RULE; note`; a comment that starts
with none of these forms is only a note):
    one of: a, b, c          the value is one of these (parsed like `-p` values)
    >= x   > x   <= x   < x  a number bound
    in [lo, hi]              a closed interval
    list                     any list; `non-empty list` at least one element
    list of RULE             every element keeps RULE (`non-empty list of one of: a, b`)
The default must keep its rule; a None default means "off" and passes. lab.infra.params parses
cell, rules and values for `start`, lab.commands.nbtools and lab.commands.batch alike.

`start` reads the parameters cell of `notebooks/<experiment>.ipynb` (or `notebook=`, the one
lab.commands.nbtools hands over, or the working directory's) and, before any compute, raises one
ValueError listing every unknown global (not a parameter, module, callable, underscored or
IPython name; with close matches), every value of the wrong type (an int does for a float) and
every value outside its rule or `choices={...}`, each naming the parameter, then the allowed
parameters with their defaults and rules. A second `start` in one kernel ignores later names.

A run folder holds params.json, status.json (running / done / failed, pid, host, git commit,
dirty flag and sha256 of the uncommitted edit, device, timings, error), metrics.json + .csv,
tables/*.csv, figures/*.png, the executed notebook, what the notebook puts under `run.path(name)`
and, from `done()` on, manifest.json (size and sha256 of each file: see lab.run_files). Files are
written atomically; folders (`<UTC time>-<params hash>`) are created exclusively, so two
executions never share one. The root is `runs/` or $LAB_RUNS_DIR. Only the kernel
lab.commands.nbtools hands a folder to (see `handoff`) takes an existing folder over; any other
execution (a saved notebook re-run with plain papermill, `-p _lab_run_dir`) gets a new folder,
and a `done` run is never written again.

A run ends `failed` when a cell raises (IPython hook; a later `run.done()` still wins), when the
kernel exits before `done()`, or when lab.commands.nbtools sees the execution fail; a `running`
run whose process is gone reads as `stale`. Reports take `done` runs only. `find_done` returns
the newest intact finished run of identical parameters (nbtools `reuse=True` and batch skip on it).
"""
import atexit
import contextlib
import hashlib
import io
import os
import re
import socket
import time
import traceback
import types
from pathlib import Path

from lab import run_files
from lab.infra import params as _params
from lab.infra import provenance
from lab.infra.jsonio import (canonical, jsonable, read_json, read_rows, write_atomic,  # noqa: F401
                              write_json, write_rows)
from lab.infra.params import read_parameters, resolve  # noqa: F401  (runs.read_parameters is API)
from lab.infra.provenance import repo_root

IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}
STATES = run_files.STATES
RUN_DIR_ENV = "LAB_RUN_DIR"      # set by lab.commands.nbtools for the kernel it starts
NOTEBOOK_ENV = "LAB_NOTEBOOK"    # the notebook file whose parameters cell that kernel checks
HANDOFF = ".handoff"             # present while a created folder waits for its kernel


def runs_root(runs_dir=None):
    """Where runs live: the argument, else $LAB_RUNS_DIR, else <repo>/runs."""
    return Path(runs_dir or os.environ.get("LAB_RUNS_DIR") or repo_root() / "runs")


def params_hash(params):
    return hashlib.sha1(canonical(params).encode()).hexdigest()[:8]


def _now():
    t = time.time()
    return t, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


def _as_dict(obj):
    return obj if isinstance(obj, dict) else {}


# ----------------------------------------------------------------------------------------------
# The run folder
# ----------------------------------------------------------------------------------------------

_NAME = re.compile(r"^[A-Za-z0-9_.\-]+$")


def _check_name(name, what):
    if not _NAME.match(name) or name.startswith("."):
        raise ValueError(f"{what} {name!r}: use letters, digits, '_', '-', '.' only")
    return name


class Run:
    """One run folder. Open an existing one with Run(path); make new ones with start/create."""

    def __init__(self, path):
        self.dir = Path(path)
        self.experiment = self.dir.parent.name
        self.id = self.dir.name
        self.params = _as_dict(read_json(self.dir / "params.json", {}))
        self.meta = _as_dict(read_json(self.dir / "status.json", {}))
        self._history = read_rows(self.dir / "metrics.csv")

    def __repr__(self):
        return f"Run({str(self.dir)!r}, {self.state})"

    # -- reading -----------------------------------------------------------------------------
    @property
    def status(self):
        """The recorded status: running, done or failed."""
        return self.meta.get("status", "failed")

    @property
    def state(self):
        """The status as a report sees it: `running` runs whose process is gone are `stale`."""
        if not self.meta:
            return "stale"  # created but never recorded (the folder's first write failed)
        if self.status == "running" and self.meta.get("host") == socket.gethostname() \
                and not provenance.pid_alive(self.meta.get("pid"), self.meta.get("proc_start")):
            return "stale"
        return self.status

    @property
    def metrics(self):
        return _as_dict(read_json(self.dir / "metrics.json", {}))

    def code_is_clean(self):
        """(True, "commit …") when the run ran committed code, else (False, why)."""
        return provenance.code_is_clean(self.meta)

    def table(self, name):
        import pandas as pd
        return pd.read_csv(self.dir / "tables" / f"{name}.csv")

    def tables(self):
        return sorted(p.stem for p in (self.dir / "tables").glob("*.csv"))

    def figures(self):
        return sorted((self.dir / "figures").glob("*.png"))

    def reload(self):
        self.__init__(self.dir)
        return self

    # -- writing -----------------------------------------------------------------------------
    def _write_status(self, **fields):
        self.meta.update(fields)
        self.meta["updated"] = _now()[1]
        write_json(self.dir / "status.json", self.meta)

    def _refuse_if_done(self):
        """Results go into a run only while it is not `done` (read from disk: another process
        may have finished it)."""
        if _as_dict(read_json(self.dir / "status.json", {})).get("status") == "done":
            raise ValueError(f"run {self.experiment}/{self.id} is done: a finished run is never "
                             "written again; start a new run (runs.start) for new results")

    def path(self, name):
        """A path inside the run folder for a checkpoint or artifact; parent folders are made."""
        rel = Path(name)
        if rel.is_absolute() or ".." in rel.parts:
            raise ValueError(f"run.path({name!r}): give a relative path inside the run folder")
        p = self.dir / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        return p

    def log_metrics(self, metrics, step=None):
        """Merge scalars (or lists) into metrics.json and append one row to metrics.csv."""
        self._refuse_if_done()
        metrics = jsonable(dict(metrics))
        summary = self.metrics
        summary.update(metrics)
        write_json(self.dir / "metrics.json", summary)
        self._history.append({"step": "" if step is None else step, **metrics})
        write_rows(self.dir / "metrics.csv", self._history)
        return summary

    def log_table(self, name, table):
        """Save a table (DataFrame, dict of columns or list of rows) as tables/<name>.csv."""
        import pandas as pd
        self._refuse_if_done()
        df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
        _check_name(name, "table name")
        write_atomic(self.dir / "tables" / f"{name}.csv", df.to_csv(index=False))
        return self.dir / "tables" / f"{name}.csv"

    def caption(self):
        commit = (self.meta.get("commit") or "no-commit")[:10]
        h = self.meta.get("diff_sha256")
        dirty = ("+dirty" + (f":{h[:8]}" if h else "")) if self.meta.get("dirty") else ""
        return f"{self.experiment}/{self.id} · commit {commit}{dirty} · {self.meta.get('device', '?')}"

    def save_figure(self, fig, name, dpi=120, stamp=True):
        """Save figures/<name>.png and its vector twin <name>.pdf, stamped (run, commit, device)
        below the lowest axes so the stamp never covers data (bbox 'tight' grows the page for it)."""
        self._refuse_if_done()
        _check_name(name, "figure name")
        text = None
        if stamp:
            lowest = min([0.0] + [fig.transFigure.inverted().transform((0, a.get_tightbbox().y0))[1]
                                  for a in fig.axes if a.get_visible()])
            text = fig.text(0.995, lowest - 0.01, self.caption(), ha="right", va="top", fontsize=6, color="0.45")
        buf, vector = io.BytesIO(), io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
            fig.savefig(vector, format="pdf", bbox_inches="tight")
        finally:
            if text is not None:
                text.remove()  # the stamp belongs to the file, not to the figure shown inline
        path = self.dir / "figures" / f"{name}.png"
        write_atomic(path.with_suffix(".pdf"), vector.getvalue())
        write_atomic(path, buf.getvalue())
        self._write_status(figures=sorted(set(self.meta.get("figures", [])) | {name}))
        return path

    @contextlib.contextmanager
    def timed(self, name):
        """`with run.timed("train"): ...` adds the block's seconds to status.json timings."""
        t0 = time.perf_counter()
        try:
            yield
        finally:
            timings = dict(self.meta.get("timings", {}))
            timings[name] = round(timings.get(name, 0.0) + time.perf_counter() - t0, 3)
            self._write_status(timings=timings)

    def done(self):
        """Mark the run finished (after listing its files in manifest.json); the last cell of
        every notebook calls this (again: no-op)."""
        _open_runs.discard(self)
        if _as_dict(read_json(self.dir / "status.json", {})).get("status") == "done":
            return self.reload()
        manifest = run_files.write_manifest(self.dir)
        t, iso = _now()
        self._write_status(status="done", finished=iso, finished_unix=t, error=None,
                           seconds=round(t - self.meta.get("started_unix", t), 3), manifest_sha256=manifest)
        print(f"run done: {self.dir} ({self.meta['seconds']:.1f} s)")
        return self

    def fail(self, err):
        """Mark the run failed with an exception (its traceback is kept) or a message."""
        if isinstance(err, BaseException):
            text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            summary = f"{type(err).__name__}: {err}"
        else:
            text = summary = str(err)
        t, iso = _now()
        errors = list(self.meta.get("errors", [])) + [summary]
        self._write_status(status="failed", finished=iso, finished_unix=t,
                           seconds=round(t - self.meta.get("started_unix", t), 3),
                           error=summary.splitlines()[0] if summary else "failed",
                           traceback=text, errors=errors)
        return self


def create(experiment, params, *, runs_dir=None, notebook=None):
    """Make a new, exclusively created run folder with params.json and a `running` status."""
    _check_name(experiment, "experiment")
    parent = runs_root(runs_dir) / experiment
    parent.mkdir(parents=True, exist_ok=True)
    t, iso = _now()
    stem = time.strftime("%Y%m%d-%H%M%S", time.gmtime(t)) + "-" + params_hash(params)
    for k in range(1, 10_000):
        run_dir = parent / (stem if k == 1 else f"{stem}-{k}")
        with contextlib.suppress(FileExistsError):  # a concurrent start takes the next suffix
            run_dir.mkdir()  # atomic and exclusive
            break
    write_json(run_dir / "params.json", params)
    run = Run(run_dir)
    run._write_status(status="running", experiment=experiment, run_id=run.id,
                      started=iso, started_unix=t, **provenance.code_state(),
                      notebook=str(notebook) if notebook else None, **provenance.process_fields())
    return run


def handoff(run, notebook):
    """Let one kernel take `run` over: returns the environment to start that kernel with.

    A `.handoff` marker goes into the folder and $LAB_RUN_DIR names it; `start` in the kernel
    deletes the marker (atomic, so exactly one kernel can), only while the run is `running`,
    and pops the variable so a second `start` or a child process gets a new folder.
    $LAB_RUN_DIR naming a finished or taken run is refused.
    """
    write_atomic(run.dir / HANDOFF, "")
    return {RUN_DIR_ENV: str(run.dir), NOTEBOOK_ENV: str(notebook)}


def _take_over(run_dir, experiment, params):
    """The kernel's side of `handoff`: the folder becomes this process's run, at most once."""
    run = Run(run_dir)
    if run.experiment != experiment:
        raise ValueError(f"runs.start({experiment!r}): ${RUN_DIR_ENV} names a run of "
                         f"{run.experiment!r}; the experiment name must be the notebook's name")
    if run.status != "running":
        raise ValueError(f"${RUN_DIR_ENV}={run_dir} names a run that is {run.status}: a finished "
                         f"run is never written again. Unset {RUN_DIR_ENV} to start a new run "
                         "(lab.commands.nbtools sets it only for the kernels it starts)")
    try:
        (run.dir / HANDOFF).unlink()  # atomic: exactly one kernel takes a folder over
    except FileNotFoundError:
        raise ValueError(f"${RUN_DIR_ENV}={run_dir}: that run is not waiting for a kernel "
                         f"(another kernel took it over); unset {RUN_DIR_ENV} to start a new "
                         "run") from None
    write_json(run.dir / "params.json", params)
    run.params = params
    run._write_status(**provenance.code_state(), **provenance.process_fields())
    return run


# ----------------------------------------------------------------------------------------------
# start(): the one call a notebook makes
# ----------------------------------------------------------------------------------------------

_open_runs = set()
_current = None


def _find_notebook(experiment, notebook):
    if notebook:
        return Path(notebook)
    if os.environ.get(NOTEBOOK_ENV):
        return Path(os.environ[NOTEBOOK_ENV])
    candidates = [repo_root() / "notebooks" / f"{experiment}.ipynb",
                  Path.cwd() / f"{experiment}.ipynb"]
    session = os.environ.get("JPY_SESSION_NAME", "")  # JupyterLab's path of the open notebook
    if session.endswith(f"{experiment}.ipynb"):
        candidates.append(Path(session))
    for candidate in candidates:
        if candidate.exists():
            return candidate
    raise ValueError(f"cannot find the notebook of experiment {experiment!r} to read its "
                     f"parameters cell (looked for {candidates[0]} and {candidates[1]}); pass "
                     "notebook=<path> to start")


def _candidates(namespace, ignore):
    for name, value in namespace.items():
        if name.startswith("_") or name in IPYTHON_NAMES or name in ignore:
            continue
        if isinstance(value, (types.ModuleType, Run)) or callable(value):
            continue
        yield name, value


def start(experiment, namespace, *, notebook=None, choices=None, runs_dir=None):
    """Check the notebook's parameters, create its run folder and return the Run.

    experiment: the notebook's name without .ipynb; namespace: the notebook's globals().
    Raises ValueError (before any compute) for unknown, ill-typed or out-of-rule parameters.
    """
    global _current
    nb_path = _find_notebook(experiment, notebook)
    declared = _params.with_choices(read_parameters(nb_path), choices)
    previous = namespace.get("_lab_names_at_start")
    ignore = set(namespace) - set(previous) - set(declared) if previous is not None else set()
    values = dict(_candidates(namespace, ignore))
    checked = _params.validate(experiment, declared, values, fill_defaults=False)
    namespace["_lab_names_at_start"] = frozenset(namespace)

    handed = os.environ.pop(RUN_DIR_ENV, None)  # popped: a second start or a child gets a new run
    os.environ.pop(NOTEBOOK_ENV, None)
    if handed:
        run = _take_over(handed, experiment, checked)
    else:
        run = create(experiment, checked, runs_dir=runs_dir, notebook=nb_path)
    _current = run
    _open_runs.add(run)
    _install_ipython_hook()
    print(f"run {run.experiment}/{run.id} -> {run.dir}")
    return run


def _post_run_cell(result):
    """IPython hook: a cell that raised marks the current run failed (a later done() wins)."""
    run = _current
    err = getattr(result, "error_in_exec", None) or getattr(result, "error_before_exec", None)
    if run is None or err is None or run.status != "running":
        return
    with contextlib.suppress(OSError):  # the run folder is gone: nothing left to mark
        run.fail(err)


def _install_ipython_hook():
    try:
        from IPython import get_ipython
    except ImportError:
        return
    ip = get_ipython()
    if ip is None:
        return
    if _post_run_cell not in ip.events.callbacks.get("post_run_cell", []):
        ip.events.register("post_run_cell", _post_run_cell)


@atexit.register
def _mark_unfinished():
    """A process that exits with a run still `running` (no done()) leaves it failed."""
    for run in list(_open_runs):
        with contextlib.suppress(OSError):  # the run folder is gone (or the disk is full)
            run.reload()
            if run.status == "running" and run.meta.get("pid") == os.getpid():
                run.fail("the process exited before run.done() was called")


# ----------------------------------------------------------------------------------------------
# Finding runs
# ----------------------------------------------------------------------------------------------

def list_runs(runs_dir=None, experiment=None):
    """Every run folder under the root (or one experiment), oldest first.

    Folders starting with '.' or '_' are not experiments (runs/_zoo holds the shared models).
    """
    root = runs_root(runs_dir)
    parents = [root / experiment] if experiment else sorted(
        p for p in root.glob("*") if p.is_dir() and not p.name.startswith((".", "_")))
    out = []
    for parent in parents:
        for d in sorted(parent.glob("*")):
            if d.is_dir() and not d.name.startswith("."):
                out.append(Run(d))
    return sorted(out, key=lambda r: (r.experiment, r.meta.get("started_unix") or 0, r.id))


def find_done(experiment, params, runs_dir=None, code=False):
    """The newest (finish time, then id: report.latest_done's order) intact `done` run of
    `experiment` whose parameters equal `params`, or None; lab.run_files.problem says intact.
    code=True: only a run of the same code, a clean commit whose lab/ and notebooks/ equal the
    current clean tree's (provenance.same_code); a dirty tree reuses nothing."""
    key = canonical(params)
    hits = [r for r in list_runs(runs_dir, experiment)
            if r.status == "done" and canonical(r.params) == key and run_files.problem(r.dir) is None
            and (not code or provenance.same_code(r.meta))]
    return max(hits, key=lambda r: (r.meta.get("finished_unix") or 0, r.id)) if hits else None
