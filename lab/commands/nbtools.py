"""Execute a parameterized notebook through papermill into its run folder.

    from lab.commands import nbtools
    result = nbtools.execute("notebooks/05_flow_matching.ipynb", {"steps": 50})
    result["status"], result["dir"]          # 'done' | 'failed', runs/05_flow_matching/<id>

    python -m lab.commands.nbtools notebooks/05_flow_matching.ipynb -p steps 50 [--reuse] [--runs-dir D]
    lab run 05_flow_matching -p steps 50     # a name in notebooks/ (or a unique prefix, "05") works from any folder

`execute` checks the parameters against the notebook's parameters cell before a kernel starts
(ValueError naming the bad one), creates the run folder, and starts the kernel with $LAB_RUN_DIR
and $LAB_NOTEBOOK in its environment (set for that kernel only, see `runs.handoff`), where
`runs.start` takes the folder over; the notebook receives only its own parameters (papermill's
guess at them is wrong, see `_OwnParameters`). The executed notebook is saved inside the run folder. When the
execution raises, the kernel dies or times out, or the notebook ends without `run.done()`, the run
is marked `failed` with the error. With reuse=True a finished, intact run of the same parameters and the
same committed code (runs.find_done(code=True)) is returned and nothing executes; a second identical
request started meanwhile waits for the first (a lock per experiment and parameter hash) and then
reuses its run. A runs folder that cannot be written (read-only, disk full) is an OSError naming it;
the command prints it as its one-line JSON result. The kernel runs with the notebook's folder as
working directory and the repository on PYTHONPATH, so `import lab` works whether or not the
package is installed.
"""
import argparse
import contextlib
import json
import logging
import os
import re
import shutil
import sys
import time
from pathlib import Path

from lab import runs
from lab.infra import safe_files
from lab.infra.jsonio import jsonable
from lab.infra.params import parse_value, read_parameters, resolve


def _same_python(argv0):
    # jupyter_client swaps a bare 'python'/'python3' for the interpreter that starts the kernel
    names = {"python", f"python{sys.version_info[0]}", "python%d.%d" % sys.version_info[:2]}
    return argv0 in names or os.path.abspath(argv0) == os.path.abspath(sys.executable)


def kernel_name(kernel="python3"):
    """A kernel that runs this interpreter: `kernel` when it does, else one installed for it.

    The stock `python3` spec of ipykernel starts 'python', which jupyter_client replaces by the
    calling interpreter (the venv's). A `python3` spec elsewhere on the Jupyter path that names
    another interpreter is bypassed by installing `lab-<venv>` into this environment.
    """
    from jupyter_client.kernelspec import KernelSpecManager, NoSuchKernel
    ksm = KernelSpecManager()
    try:
        spec = ksm.get_kernel_spec(kernel)
    except NoSuchKernel:
        spec = None
    if spec is not None and (kernel != "python3" or _same_python(spec.argv[0])):
        return kernel
    if kernel != "python3":
        raise ValueError(f"no Jupyter kernel named {kernel!r}; available: "
                         f"{', '.join(sorted(ksm.find_kernel_specs()))}")
    name = "lab-" + "".join(c if c.isalnum() else "-" for c in Path(sys.prefix).name.lower())
    try:
        spec = ksm.get_kernel_spec(name)
        if _same_python(spec.argv[0]):
            return name
    except NoSuchKernel:
        pass
    from ipykernel.kernelspec import install
    install(kernel_name=name, prefix=sys.prefix, display_name=f"Python (lab, {sys.prefix})")
    return name


def _kernel_manager(env):
    """A kernel manager class whose kernels start with `env` added to this process's environment
    (for that kernel only: this process's environment is left alone)."""
    from jupyter_client import AsyncKernelManager

    class LabKernelManager(AsyncKernelManager):
        async def start_kernel(self, **kw):
            kw["env"] = {**kw.get("env", os.environ), **env}
            return await super().start_kernel(**kw)

    return LabKernelManager


def _ensure_importable():
    """Put the repository on PYTHONPATH for kernels and subprocesses started from here."""
    root = str(runs.repo_root())
    parts = [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]
    if root not in parts:
        os.environ["PYTHONPATH"] = os.pathsep.join([root] + parts)


def _result(run, seconds, reused=False, notebook=None):
    run.reload()
    return {"status": run.state, "dir": str(run.dir), "experiment": run.experiment,
            "run_id": run.id, "seconds": round(seconds, 3), "error": run.meta.get("error"),
            "reused": reused, "notebook": str(notebook) if notebook else None}


class _OwnParameters(logging.Filter):
    """Within the `with` block, drop papermill's warnings about the notebook's own parameters.

    papermill guesses a notebook's parameters with a regex that gives up on every line holding a
    second '=' (`seeds = 3  # >= 1`: "Unable to parse line"), then calls the values it injects
    "unknown" ("Passed unknown parameter: seeds"), on every run. lab.infra.params has read the
    real cell; a name the notebook does not declare is still warned about.
    """

    LOGGERS = ("papermill", "papermill.translators")  # execute.py and the regex's own logger

    def __init__(self, notebook):
        super().__init__()
        try:
            self.names = set(read_parameters(notebook))
        except ValueError:  # a broken cell (check=False): the kernel says what is wrong
            self.names = set()

    def filter(self, record):
        msg = record.getMessage()
        if msg.startswith("Passed unknown parameter: "):
            return msg.split(": ", 1)[1] not in self.names
        line = re.match(r"Unable to parse line \d+ '(\w+)\s*[:=]", msg)
        return not (line and line.group(1) in self.names)

    def __enter__(self):
        for name in self.LOGGERS:
            logging.getLogger(name).addFilter(self)
        return self

    def __exit__(self, *exc):
        for name in self.LOGGERS:
            logging.getLogger(name).removeFilter(self)


def _reuse_lock(experiment, params, runs_dir):
    """The lock two identical --reuse requests share (per experiment and parameter hash, the way
    lab.zoo locks a recipe): the second waits for the first, then finds its run done."""
    path = runs.runs_root(runs_dir) / experiment / ".locks" / f"{runs.params_hash(params)}.lock"
    return safe_files.file_lock(path, what=f"{experiment} with these parameters",
                                log=lambda m: print(m, file=sys.stderr))  # stdout is the JSON result


def _unwritable(err, runs_dir):
    """The OSError of a runs folder that cannot be written, saying which and what to do."""
    where = f" ({err.filename})" if err.filename else ""
    return OSError(err.errno, f"cannot write a run folder under {runs.runs_root(runs_dir)}: "
                   f"{err.strerror or err}{where}; free disk space or make it writable, or give "
                   "another folder with --runs-dir (or $LAB_RUNS_DIR)")


def listed(folder=None):
    """The notebooks of `folder` (default <repo>/notebooks) sorted by name, hidden files left out."""
    folder = Path(folder or runs.repo_root() / "notebooks")
    return sorted(p for p in folder.glob("*.ipynb") if not p.name.startswith("."))


def named(name, known):
    """[name] when `known` holds it, else every known name that starts with it (`05` -> 05_flow_matching)."""
    return [name] if name in known else [k for k in known if k.startswith(name)]


def find_notebook(name):
    """The notebook `name` names: a path to a file, else a name in <repo>/notebooks with or without
    `.ipynb`, or a unique prefix of one ("07"), so `lab run 07_ae_ablations` works from any folder."""
    if Path(name).is_file():
        return Path(name).resolve()
    folder = runs.repo_root() / "notebooks"
    for path in (runs.repo_root() / name, folder / name, folder / f"{name}.ipynb"):
        if path.is_file():
            return path.resolve()
    known = [p.stem for p in listed(folder)]
    hits = named(Path(name).stem, known)
    if len(hits) == 1:
        return (folder / f"{hits[0]}.ipynb").resolve()
    said = f"it matches {', '.join(hits)}" if hits else f"not a file, nor one of {folder}: {', '.join(known)}"
    raise ValueError(f"no notebook `{name}`: {said}")


def execute(notebook_path, params=None, runs_dir=None, out_path=None, kernel="python3", *,
            reuse=False, timeout=None, check=True, log_output=False):
    """Run a notebook with `params` overriding its parameters cell; return a result dict.

    Result: status ('done' | 'failed'), dir, experiment, run_id, seconds, error, reused, notebook.
    runs_dir: root of the runs (default $LAB_RUNS_DIR or <repo>/runs); out_path: an extra copy
    of the executed notebook; timeout: seconds per cell; check=False leaves the parameter check
    to the kernel alone (tests use it).
    """
    notebook = find_notebook(notebook_path)
    params = dict(params or {})
    experiment = notebook.stem
    if check:
        full = resolve(notebook, params)  # ValueError here, before any kernel starts
        params = {k: full[k] for k in params}  # normalised (ints widened to float, ...)
    else:
        full = params
    if not reuse:
        return _run(notebook, params, full, runs_dir, out_path, kernel, timeout, log_output)
    with contextlib.ExitStack() as held:
        try:
            held.enter_context(_reuse_lock(experiment, full, runs_dir))
        except OSError as err:
            raise _unwritable(err, runs_dir) from err
        prev = runs.find_done(experiment, full, runs_dir, code=True)
        if prev is not None:
            return _result(prev, 0.0, reused=True, notebook=prev.dir / notebook.name)
        return _run(notebook, params, full, runs_dir, out_path, kernel, timeout, log_output)


def _run(notebook, params, full, runs_dir, out_path, kernel, timeout, log_output):
    """Create the run folder and execute the notebook into it (no reuse)."""
    import papermill as pm
    from papermill.exceptions import PapermillExecutionError

    try:
        run = runs.create(notebook.stem, full, runs_dir=runs_dir, notebook=notebook)
    except OSError as err:
        raise _unwritable(err, runs_dir) from err
    executed = run.dir / notebook.name
    manager = _kernel_manager(runs.handoff(run, notebook))
    _ensure_importable()
    # progress bars in a batch kernel: one line every 10 s, not one notebook output per update
    os.environ.setdefault("TQDM_MININTERVAL", "10")
    os.environ.setdefault("LAB_PROGRESS", "text")  # text bars, not widgets nobody renders (lab.infra.progress)
    t0 = time.perf_counter()
    error = None
    name = kernel_name(kernel)
    # ipykernel's warning about unencrypted local TCP would be printed once per run
    quiet = ["--IPKernelApp.log_level=ERROR"] if kernel == "python3" else []
    try:
        # tuples would reach the kernel as text: send lists (a tuple parameter accepts a list)
        with _OwnParameters(notebook):
            pm.execute_notebook(str(notebook), str(executed), parameters=jsonable(params),
                                kernel_name=name, progress_bar=False, log_output=log_output,
                                cwd=str(notebook.parent), execution_timeout=timeout,
                                extra_arguments=quiet, kernel_manager_class=manager)
    except PapermillExecutionError as e:
        error = f"{e.ename}: {e.evalue} (cell {e.exec_count})"
    except KeyboardInterrupt:
        runs.Run(run.dir).fail("interrupted (KeyboardInterrupt)")
        raise
    except Exception as e:  # dead kernel, cell timeout, kernel that never started
        error = f"{type(e).__name__}: {e}"
    seconds = time.perf_counter() - t0

    (run.dir / runs.HANDOFF).unlink(missing_ok=True)  # a kernel that never took it over
    run.reload()
    if error and run.status != "failed":
        run.fail(error)
    elif not error and run.status == "running":
        run.fail("the notebook ended without calling run.done()")
    if out_path and executed.exists():
        Path(out_path).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(executed, out_path)
    return _result(run, seconds, notebook=executed)


# ----------------------------------------------------------------------------------------------
# CLI: one notebook, one run (lab.commands.batch starts one of these per GPU)
# ----------------------------------------------------------------------------------------------

def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lab.commands.nbtools", description=__doc__.split("\n")[0])
    ap.add_argument("notebook", help="a path, or a name in notebooks/ with or without .ipynb, or a unique prefix (07)")
    ap.add_argument("-p", "--param", nargs=2, action="append", default=[],
                    metavar=("NAME", "VALUE"), help="override a parameter (repeatable)")
    ap.add_argument("--params-json", default=None, help="overrides as one JSON object")
    ap.add_argument("--runs-dir", default=None)
    ap.add_argument("--kernel", default="python3")
    ap.add_argument("--reuse", action="store_true", help="return a finished run of the same parameters and code")
    ap.add_argument("--timeout", type=float, default=None, help="seconds per cell")
    args = ap.parse_args(argv)
    try:
        args.notebook = find_notebook(args.notebook)
        declared = read_parameters(args.notebook)
        params = json.loads(args.params_json) if args.params_json else {}
        for name, raw in args.param:
            default = declared[name].default if name in declared else None
            params[name] = parse_value(raw, default)
        res = execute(args.notebook, params, runs_dir=args.runs_dir, kernel=args.kernel,
                      reuse=args.reuse, timeout=args.timeout)
    except (ValueError, OSError) as e:  # bad input, a runs folder that cannot be written
        res = {"status": "failed", "dir": None, "error": str(e), "seconds": 0.0, "reused": False}
    print(json.dumps(res))
    return 0 if res["status"] == "done" else 1


if __name__ == "__main__":
    sys.exit(main())
