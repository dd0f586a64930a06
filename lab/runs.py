"""Runs: every notebook execution writes one folder `runs/<experiment>/<run-id>/`.

The notebook convention (the same in JupyterLab and under papermill):

    # cell 1, tagged `parameters`: plain assignments of literals, one per line
    steps = 300
    data = "photos"         # one of: photos, fashion
    path = "slerp"          # one of: linear, slerp, shell
    lr = 1e-4
    ckpt = None             # a None default accepts any value

    # (papermill inserts its `injected-parameters` cell here)

    # cell 2
    from lab import runs
    run = runs.start("05_flow_matching", globals())

    # ... compute, then record:
    run.log_metrics({"fd_riemannian": 12.3})
    run.save_figure(fig, "samples")
    run.done()              # last cell: a run without done() is never `done`

The parameters cell of the notebook file `notebooks/<experiment>.ipynb` is the single source of
truth for the names, defaults and choices: `start` parses it with `ast` (an explicit
`notebook=` path, or the path `lab.infra.nbtools.execute` hands over, take precedence). Before any
compute `start` checks the notebook's globals against it:
- an unknown name (any global that is not a parameter, not a module, not callable, not
  underscored and not an IPython builtin) raises ValueError naming it, with close matches and the
  allowed parameters with their defaults;
- a value whose type differs from the default's (int is fine for a float, a None default takes
  anything) or that is not one of the declared choices (`# one of: a, b, c` on the assignment
  line, or `choices={"path": [...]}` passed to start) raises ValueError naming the parameter, the
  value and what is allowed.
Calling `start` again in the same kernel ignores names that appeared after the previous call.

A run folder holds params.json, status.json (running / done / failed, pid, host, git commit and
dirty flag, device, python, start time, timings, error), metrics.json + metrics.csv, tables/*.csv,
figures/*.png, the executed notebook (when run through `lab.infra.nbtools`) and whatever the notebook
puts under `run.path(name)` (checkpoints, samples). Every file is written atomically (temporary
file + os.replace); run ids are `<UTC time>-<params hash>` and folders are created exclusively, so
two executions at once never share a folder. The root is `runs/` in the repository, or
$LAB_RUNS_DIR.

How a run ends as `failed`: in JupyterLab an IPython post_run_cell hook marks it when a cell
raises (a later `run.done()` after fixing the cell still wins); a kernel that exits before
`done()` marks it at exit; under papermill `lab.infra.nbtools.execute` marks it from the execution
error; a `running` run whose process is gone (same host) reads as `stale`. Reports take `done`
runs only.

Reuse: `find_done(experiment, params)` returns the latest finished run with identical
parameters; `lab.infra.nbtools.execute(..., reuse=True)` (and `lab.infra.batch`, which resumes by default)
then skips the execution entirely. A notebook itself always computes.
"""
import ast
import atexit
import difflib
import hashlib
import io
import json
import os
import platform
import re
import socket
import subprocess
import sys
import time
import tokenize
import traceback
import types
from dataclasses import dataclass
from pathlib import Path

IPYTHON_NAMES = {"In", "Out", "exit", "quit", "get_ipython", "open"}
STATES = ("running", "done", "failed", "stale")


# ----------------------------------------------------------------------------------------------
# Paths and small helpers
# ----------------------------------------------------------------------------------------------

def repo_root():
    """The folder that holds the `lab` package (the repository when installed editable)."""
    return Path(__file__).resolve().parent.parent


def runs_root(runs_dir=None):
    """Where runs live: the argument, else $LAB_RUNS_DIR, else <repo>/runs."""
    return Path(runs_dir or os.environ.get("LAB_RUNS_DIR") or repo_root() / "runs")


def write_atomic(path, data):
    """Write text or bytes so that a reader sees the old file or the new one, never a half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{time.monotonic_ns()}.tmp")
    with open(tmp, "wb") as f:
        f.write(data.encode() if isinstance(data, str) else data)
    os.replace(tmp, path)


def read_json(path, default=None):
    try:
        return json.loads(Path(path).read_text())
    except (FileNotFoundError, json.JSONDecodeError):
        return default


def write_json(path, obj):
    write_atomic(path, json.dumps(jsonable(obj), indent=1, allow_nan=True) + "\n")


def jsonable(v):
    """Plain JSON types from numpy / torch scalars and arrays, tuples and paths."""
    if isinstance(v, dict):
        return {str(k): jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [jsonable(x) for x in v]
    if isinstance(v, Path):
        return str(v)
    if hasattr(v, "tolist") and not isinstance(v, (str, bytes)):  # numpy, torch
        return jsonable(v.tolist())
    if hasattr(v, "item") and not isinstance(v, (str, bytes, int, float, bool)):
        return v.item()
    return v


def canonical(params):
    """The form in which two parameter sets compare equal (sorted keys, tuples as lists)."""
    return json.dumps(jsonable(params), sort_keys=True, separators=(",", ":"))


def params_hash(params):
    return hashlib.sha1(canonical(params).encode()).hexdigest()[:8]


def _now():
    t = time.time()
    return t, time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


# ----------------------------------------------------------------------------------------------
# The parameters cell
# ----------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Param:
    name: str
    default: object
    choices: tuple = None

    def describe(self):
        s = f"{self.name} = {self.default!r}"
        return s + (f"  # one of: {', '.join(map(str, self.choices))}" if self.choices else "")


def _choice_values(text, default):
    values = []
    for raw in (s.strip() for s in text.split(",")):
        if not raw:
            continue
        try:
            v = ast.literal_eval(raw)
        except (ValueError, SyntaxError):
            v = raw
        if isinstance(default, str) and not isinstance(v, str):
            v = raw
        values.append(v)
    return tuple(values)


def parse_parameters(source, where="parameters cell"):
    """{name: Param} from the source of a parameters cell (plain literal assignments only)."""
    try:
        tree = ast.parse(source)
    except SyntaxError as e:
        raise ValueError(f"{where}: syntax error on line {e.lineno}: {e.msg}") from None
    comments = {}
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.COMMENT:
            comments[tok.start[0]] = tok.string
    params = {}
    for node in tree.body:
        if isinstance(node, ast.Assign) and len(node.targets) == 1 \
                and isinstance(node.targets[0], ast.Name):
            name, value = node.targets[0].id, node.value
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) \
                and node.value is not None:
            name, value = node.target.id, node.value
        else:
            raise ValueError(f"{where}, line {node.lineno}: the parameters cell takes plain "
                             "assignments `name = value` only")
        try:
            default = ast.literal_eval(value)
        except ValueError:
            raise ValueError(f"{where}, line {node.lineno}: the default of `{name}` must be a "
                             f"literal (number, string, bool, None, list, tuple, dict)") from None
        comment = comments.get(node.end_lineno) or comments.get(node.lineno) or ""
        m = re.match(r"#\s*one of\s*:\s*(.+)$", comment.strip(), re.IGNORECASE)
        choices = _choice_values(m.group(1), default) if m else None
        if choices and default not in choices:
            raise ValueError(f"{where}: default {default!r} of `{name}` is not one of its "
                             f"choices {list(choices)}")
        params[name] = Param(name, default, choices)
    return params


def read_parameters(notebook):
    """{name: Param} from the cell tagged `parameters` of a notebook file."""
    nb = json.loads(Path(notebook).read_text())
    for cell in nb.get("cells", []):
        if cell.get("cell_type") == "code" and "parameters" in cell.get("metadata", {}).get("tags", []):
            src = cell["source"]
            return parse_parameters("".join(src) if isinstance(src, list) else src,
                                    where=f"{notebook}: parameters cell")
    raise ValueError(f"{notebook}: no code cell tagged `parameters` (add the tag to the first cell)")


def _type_error(p, value):
    """(message or None, normalised value): int widens to float, tuples and lists are alike."""
    d = p.default
    if d is None:
        ok = True
    elif isinstance(d, bool):
        ok, want = isinstance(value, bool), "bool"
    elif isinstance(d, int):
        ok, want = isinstance(value, int) and not isinstance(value, bool), "int"
    elif isinstance(d, float):
        ok, want = isinstance(value, (int, float)) and not isinstance(value, bool), "float (or int)"
        value = float(value) if ok else value
    elif isinstance(d, (list, tuple)):
        ok, want = isinstance(value, (list, tuple)), "list"
        value = type(d)(value) if ok else value
    else:
        ok, want = isinstance(value, type(d)), type(d).__name__
    if not ok:
        return (f"parameter `{p.name}` = {value!r} has type {type(value).__name__}: expected "
                f"{want} (default {d!r})"), value
    if p.choices and value not in p.choices:
        return (f"parameter `{p.name}` = {value!r} is not allowed: one of "
                f"{', '.join(map(repr, p.choices))}"), value
    return None, value


def validate(experiment, declared, values, *, fill_defaults=True):
    """Check `values` against the declared parameters; return the full, normalised dict.

    Raises one ValueError listing every unknown name (with close matches) and every ill-typed
    or disallowed value, followed by the allowed parameters with their defaults.
    """
    problems = []
    for name in values:
        if name not in declared:
            close = difflib.get_close_matches(name, list(declared), n=3, cutoff=0.5)
            hint = f" (did you mean {', '.join(f'`{c}`' for c in close)}?)" if close else ""
            problems.append(f"unknown parameter `{name}`{hint}")
    params = {}
    for name, p in declared.items():
        if name not in values:
            if not fill_defaults:
                problems.append(f"parameter `{name}` is not defined: run the parameters cell first")
            params[name] = p.default
            continue
        msg, params[name] = _type_error(p, values[name])
        if msg:
            problems.append(msg)
    if problems:
        allowed = "\n".join("  " + p.describe() for p in declared.values()) or "  (none)"
        hint = ("\n(the saved parameters cell of the notebook declares the parameters: save the "
                "notebook after adding one)") if any(n not in declared for n in values) else ""
        raise ValueError(f"{experiment}: " + "; ".join(problems)
                         + f"\nallowed parameters (default):\n{allowed}{hint}")
    return params


def with_choices(declared, choices):
    """Declared parameters with extra / overriding choice lists {name: [values]}."""
    out = dict(declared)
    for name, values in (choices or {}).items():
        if name not in declared:
            raise ValueError(f"choices given for `{name}`, which is not a parameter")
        out[name] = Param(name, declared[name].default, tuple(values))
        if declared[name].default not in out[name].choices:
            raise ValueError(f"default {declared[name].default!r} of `{name}` is not one of "
                             f"{list(values)}")
    return out


# ----------------------------------------------------------------------------------------------
# Provenance: git, device, process
# ----------------------------------------------------------------------------------------------

def git_state(root=None):
    """(commit or None, dirty flag or None) of the repository holding `lab`."""
    root = str(root or repo_root())
    try:
        commit = subprocess.run(["git", "-C", root, "rev-parse", "HEAD"], capture_output=True,
                                text=True, timeout=20).stdout.strip() or None
        status = subprocess.run(["git", "-C", root, "status", "--porcelain"], capture_output=True,
                                text=True, timeout=20)
        dirty = bool(status.stdout.strip()) if status.returncode == 0 else None
    except (OSError, subprocess.SubprocessError):
        return None, None
    return commit, dirty


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


def _proc_info(pid):
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
    info = _proc_info(pid)
    if info is None:
        return True
    state, start = info
    return state not in ("Z", "X") and (proc_start is None or start == proc_start)


def _process_fields():
    info = _proc_info(os.getpid())
    return {"host": socket.gethostname(), "pid": os.getpid(),
            "proc_start": info[1] if info else None, "python": sys.executable}


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
        self.params = read_json(self.dir / "params.json", {})
        self.meta = read_json(self.dir / "status.json", {})
        self._history = self._read_history()

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
                and not pid_alive(self.meta.get("pid"), self.meta.get("proc_start")):
            return "stale"
        return self.status

    @property
    def metrics(self):
        return read_json(self.dir / "metrics.json", {})

    def load_metrics(self):
        return self.metrics

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
        metrics = jsonable(dict(metrics))
        summary = self.metrics
        summary.update(metrics)
        write_json(self.dir / "metrics.json", summary)
        self._history.append({"step": "" if step is None else step, **metrics})
        self._write_history()
        return summary

    def _read_history(self):
        import csv
        try:
            with open(self.dir / "metrics.csv", newline="") as f:
                return list(csv.DictReader(f))
        except FileNotFoundError:
            return []

    def _write_history(self):
        import csv
        cols = []
        for row in self._history:
            cols += [k for k in row if k not in cols]
        buf = io.StringIO()
        w = csv.DictWriter(buf, fieldnames=cols, lineterminator="\n")
        w.writeheader()
        for row in self._history:
            w.writerow({k: json.dumps(v) if isinstance(v, (list, dict)) else v
                        for k, v in row.items()})
        write_atomic(self.dir / "metrics.csv", buf.getvalue())

    def log_table(self, name, table):
        """Save a table (DataFrame, dict of columns or list of rows) as tables/<name>.csv."""
        import pandas as pd
        df = table if isinstance(table, pd.DataFrame) else pd.DataFrame(table)
        _check_name(name, "table name")
        write_atomic(self.dir / "tables" / f"{name}.csv", df.to_csv(index=False))
        return self.dir / "tables" / f"{name}.csv"

    def caption(self):
        commit = (self.meta.get("commit") or "no-commit")[:10]
        dirty = "+dirty" if self.meta.get("dirty") else ""
        return f"{self.experiment}/{self.id} · commit {commit}{dirty} · {self.meta.get('device', '?')}"

    def save_figure(self, fig, name, dpi=120, stamp=True):
        """Save a matplotlib figure as figures/<name>.png, stamped with run, commit and device."""
        _check_name(name, "figure name")
        text = fig.text(0.995, 0.003, self.caption(), ha="right", va="bottom", fontsize=6,
                        color="0.45") if stamp else None
        buf = io.BytesIO()
        try:
            fig.savefig(buf, format="png", dpi=dpi, bbox_inches="tight")
        finally:
            if text is not None:
                text.remove()  # the stamp belongs to the file, not to the figure shown inline
        path = self.dir / "figures" / f"{name}.png"
        write_atomic(path, buf.getvalue())
        self._write_status(figures=sorted(set(self.meta.get("figures", [])) | {name}))
        return path

    class _Timer:
        def __init__(self, run, name):
            self.run, self.name = run, name

        def __enter__(self):
            self.t0 = time.perf_counter()

        def __exit__(self, *exc):
            timings = dict(self.run.meta.get("timings", {}))
            timings[self.name] = round(timings.get(self.name, 0.0) + time.perf_counter() - self.t0, 3)
            self.run._write_status(timings=timings)

    def timed(self, name):
        """`with run.timed("train"): ...` adds the block's seconds to status.json timings."""
        return Run._Timer(self, name)

    def done(self):
        """Mark the run finished; the last cell of every notebook calls this."""
        t, iso = _now()
        self._write_status(status="done", finished=iso, finished_unix=t, error=None,
                           seconds=round(t - self.meta.get("started_unix", t), 3))
        _open_runs.discard(self)
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
        try:
            run_dir.mkdir()  # atomic and exclusive: a concurrent start takes the next suffix
            break
        except FileExistsError:
            continue
    write_json(run_dir / "params.json", params)
    commit, dirty = git_state()
    run = Run(run_dir)
    run._write_status(status="running", experiment=experiment, run_id=run.id,
                      started=iso, started_unix=t, commit=commit, dirty=dirty,
                      device=device_description(),
                      cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                      notebook=str(notebook) if notebook else None, **_process_fields())
    return run


def resolve(notebook, overrides=None, choices=None):
    """The full, checked parameter dict of `notebook` with `overrides` applied."""
    notebook = Path(notebook)
    declared = with_choices(read_parameters(notebook), choices)
    return validate(notebook.stem, declared, dict(overrides or {}))


# ----------------------------------------------------------------------------------------------
# start(): the one call a notebook makes
# ----------------------------------------------------------------------------------------------

_open_runs = set()
_current = None


def _find_notebook(experiment, namespace, notebook):
    if notebook:
        return Path(notebook)
    if namespace.get("_lab_notebook"):
        return Path(namespace["_lab_notebook"])
    candidate = repo_root() / "notebooks" / f"{experiment}.ipynb"
    if candidate.exists():
        return candidate
    session = os.environ.get("JPY_SESSION_NAME", "")  # JupyterLab's path of the open notebook
    if session.endswith(f"{experiment}.ipynb") and Path(session).exists():
        return Path(session)
    raise ValueError(f"cannot find the notebook of experiment {experiment!r} to read its "
                     f"parameters cell (looked for {candidate}); pass notebook=<path> to start")


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
    Raises ValueError (before any compute) for unknown, ill-typed or disallowed parameters.
    """
    global _current
    nb_path = _find_notebook(experiment, namespace, notebook)
    declared = with_choices(read_parameters(nb_path), choices)
    previous = namespace.get("_lab_names_at_start")
    ignore = set(namespace) - set(previous) - set(declared) if previous is not None else set()
    values = dict(_candidates(namespace, ignore))
    params = validate(experiment, declared, values, fill_defaults=False)
    namespace["_lab_names_at_start"] = frozenset(namespace)

    if namespace.get("_lab_run_dir"):  # lab.infra.nbtools made the folder; the kernel takes it over
        run = Run(namespace["_lab_run_dir"])
        if run.experiment != experiment:
            raise ValueError(f"runs.start({experiment!r}) in notebook {nb_path.name}: the "
                             f"experiment name must be the notebook's name ({run.experiment!r})")
        write_json(run.dir / "params.json", params)
        run.params = params
        run._write_status(device=device_description(),
                          cuda_visible_devices=os.environ.get("CUDA_VISIBLE_DEVICES"),
                          **_process_fields())
    else:
        run = create(experiment, params, runs_dir=runs_dir or namespace.get("_lab_runs_dir"),
                     notebook=nb_path)
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
    try:
        run.fail(err)
    except OSError:
        pass  # the run folder is gone: nothing left to mark


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
        try:
            run.reload()
            if run.status == "running" and run.meta.get("pid") == os.getpid():
                run.fail("the process exited before run.done() was called")
        except OSError:
            pass


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
    return sorted(out, key=lambda r: (r.experiment, r.meta.get("started_unix", 0), r.id))


def find_done(experiment, params, runs_dir=None):
    """The latest `done` run of `experiment` whose parameters equal `params`, or None."""
    key = canonical(params)
    hits = [r for r in list_runs(runs_dir, experiment)
            if r.status == "done" and canonical(r.params) == key]
    return max(hits, key=lambda r: (r.meta.get("finished_unix", 0), r.id)) if hits else None
