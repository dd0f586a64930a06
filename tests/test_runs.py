"""lab.runs and lab.commands.nbtools: the parameter contract, run folders, failure marking, papermill.

Three notebooks go through a real papermill kernel (a good run, a failing cell, bad parameters);
everything else runs in-process.
"""
import json
import multiprocessing as mp
import os
import subprocess
import sys
import threading

import nbformat
import pytest

from lab import runs
from lab.infra import params, provenance
from lab.commands import nbtools

PARAMS_CELL = '''steps = 3
lr = 0.1
path = "slerp"  # one of: linear, slerp, shell
fail = False
ckpt = None
'''

BODY = '''open("computed.marker", "w").write("x")
assert not fail, "asked to fail at step %d" % steps
from matplotlib.figure import Figure
fig = Figure(figsize=(2, 2))
fig.subplots().plot([0, steps])
run.save_figure(fig, "curve")
run.log_metrics({"loss": 1.0 / steps, "kernel_python": sys.executable})
run.log_table("curve", {"x": [0, 1], "y": [0.0, float(steps)]})
'''


def make_notebook(folder, name="demo", params=PARAMS_CELL, body=BODY, done=True):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(params)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell,
                nbformat.v4.new_code_cell(f'import sys\nfrom lab import runs\n'
                                          f'run = runs.start("{name}", globals())'),
                nbformat.v4.new_code_cell(body)]
    if done:
        nb.cells.append(nbformat.v4.new_code_cell("run.done()"))
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3",
                                 "language": "python"}
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def namespace(**overrides):
    ns = {"steps": 3, "lr": 0.1, "path": "slerp", "fail": False, "ckpt": None,
          "runs": runs, "json": json, "helper": lambda: 1, "_private": 5, "In": [], "Out": {}}
    ns.update(overrides)
    return ns


@pytest.fixture
def nb(tmp_path):
    return make_notebook(tmp_path)


# ----------------------------------------------------------------------------------------------
# The parameters cell
# ----------------------------------------------------------------------------------------------

def test_parse_parameters_reads_defaults_and_choices():
    declared = params.parse_parameters(PARAMS_CELL + 'size: int = 64\nmode = "a"  # One of: a, b\n')
    assert list(declared) == ["steps", "lr", "path", "fail", "ckpt", "size", "mode"]
    assert declared["steps"].default == 3 and declared["lr"].default == 0.1
    assert declared["path"].choices == ("linear", "slerp", "shell")
    assert declared["mode"].choices == ("a", "b") and declared["size"].default == 64
    assert declared["ckpt"].default is None and declared["steps"].choices is None


@pytest.mark.parametrize("source, needle", [
    ("steps = 2 ** 8\n", "must be a literal"),
    ("import os\n", "plain assignments"),
    ("a = b = 1\n", "plain assignments"),
    ('path = "euclid"  # one of: linear, slerp\n', "not one of its choices"),
])
def test_parse_parameters_rejects_non_literal_cells(source, needle):
    with pytest.raises(ValueError, match=needle):
        params.parse_parameters(source)


def test_start_rejects_unknown_parameter_with_suggestion_and_allowed_list(nb, tmp_path):
    with pytest.raises(ValueError) as e:
        runs.start("demo", namespace(stpes=10), notebook=nb, runs_dir=tmp_path / "r")
    msg = str(e.value)
    assert "unknown parameter `stpes`" in msg and "did you mean `steps`" in msg
    for line in ("steps = 3", "lr = 0.1", "path = 'slerp'  # one of: linear, slerp, shell",
                 "ckpt = None"):
        assert line in msg
    assert not (tmp_path / "r").exists()  # nothing created before the check passes


@pytest.mark.parametrize("name, value, needle", [
    ("steps", "300", "`steps` = '300' has type str: expected int (default 3)"),
    ("steps", True, "`steps` = True has type bool: expected int"),
    ("steps", 2.5, "expected int"),
    ("fail", 1, "expected bool"),
    ("lr", "fast", "expected float (or int)"),
    ("path", "slurp", "`path` = 'slurp' is not allowed: one of 'linear', 'slerp', 'shell'"),
])
def test_start_rejects_ill_typed_values(nb, tmp_path, name, value, needle):
    with pytest.raises(ValueError) as e:
        runs.start("demo", namespace(**{name: value}), notebook=nb, runs_dir=tmp_path)
    assert needle in str(e.value)
    assert list(tmp_path.glob("demo/*")) == []


def test_start_lists_every_problem_at_once(nb, tmp_path):
    with pytest.raises(ValueError) as e:
        runs.start("demo", namespace(stpes=1, steps="x", path="no"), notebook=nb, runs_dir=tmp_path)
    msg = str(e.value)
    assert "`stpes`" in msg and "`steps` = 'x'" in msg and "`path` = 'no'" in msg


def test_start_widens_int_to_float_and_none_default_takes_anything(nb, tmp_path):
    run = runs.start("demo", namespace(lr=1, ckpt="/some/path.pt"), notebook=nb, runs_dir=tmp_path)
    assert run.params == {"steps": 3, "lr": 1.0, "path": "slerp", "fail": False,
                          "ckpt": "/some/path.pt"}
    assert isinstance(run.params["lr"], float)
    assert json.loads((run.dir / "params.json").read_text()) == run.params
    run.done()


def test_choices_argument_overrides_comment(nb, tmp_path):
    with pytest.raises(ValueError, match="not allowed: one of 'slerp', 'shell'"):
        runs.start("demo", namespace(path="linear"), notebook=nb, runs_dir=tmp_path,
                   choices={"path": ["slerp", "shell"]})
    with pytest.raises(ValueError, match="not a parameter"):
        runs.start("demo", namespace(), notebook=nb, runs_dir=tmp_path, choices={"nope": [1]})


def test_second_start_ignores_names_created_after_the_first(nb, tmp_path):
    ns = namespace()
    ns["run"] = runs.start("demo", ns, notebook=nb, runs_dir=tmp_path)
    ns["losses"] = [1.0, 0.5]  # a later cell's result, not a parameter
    again = runs.start("demo", ns, notebook=nb, runs_dir=tmp_path)
    assert again.dir != ns["run"].dir
    fresh = namespace(losses=[1.0])  # in a fresh kernel the same name is an unknown parameter
    with pytest.raises(ValueError, match="unknown parameter `losses`"):
        runs.start("demo", fresh, notebook=nb, runs_dir=tmp_path)
    ns["run"].done(), again.done()


# ----------------------------------------------------------------------------------------------
# The run folder
# ----------------------------------------------------------------------------------------------

def test_run_folder_records_everything(nb, tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "envroot"))
    run = runs.start("demo", namespace(steps=5), notebook=nb)
    assert run.dir.parent == tmp_path / "envroot" / "demo"
    assert run.id.endswith(runs.params_hash(run.params))
    meta = json.loads((run.dir / "status.json").read_text())
    assert meta["status"] == "running" and meta["pid"] > 0 and meta["host"]
    assert meta["device"].startswith(("cpu: ", "cuda: ")) and "started" in meta
    assert "commit" in meta and "dirty" in meta and meta["python"] == sys.executable

    run.log_metrics({"loss": 0.5, "acc": 0.25}, step=1)
    import numpy as np
    run.log_metrics({"loss": np.float32(0.25), "curve": np.arange(3)}, step=2)
    assert run.metrics == {"loss": 0.25, "acc": 0.25, "curve": [0, 1, 2]}
    rows = (run.dir / "metrics.csv").read_text().splitlines()
    assert rows == ["step,loss,acc,curve", "1,0.5,0.25,", '2,0.25,,"[0, 1, 2]"']
    run.log_table("per_t", {"t": [0.0, 0.5], "share": [0.5, 0.0]})
    assert run.table("per_t")["share"].tolist() == [0.5, 0.0]

    from matplotlib.figure import Figure
    fig = Figure(figsize=(2, 2))
    fig.subplots().plot([0, 1])
    png = run.save_figure(fig, "line")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and fig.texts == []  # stamp not left on
    ckpt = run.path("ckpt/last.pt")
    assert ckpt.parent.is_dir() and ckpt.parent.parent == run.dir
    with pytest.raises(ValueError):
        run.path("../escape")
    with run.timed("train"):
        pass
    run.done()
    meta = runs.Run(run.dir).meta
    assert meta["status"] == "done" and meta["seconds"] >= 0 and meta["figures"] == ["line"]
    assert "train" in meta["timings"]
    assert not list(run.dir.rglob("*.tmp"))  # atomic writes leave no temporaries


def _create_in_child(root, q):
    q.put(str(runs.create("demo", {"steps": 3}, runs_dir=root).dir))


def test_concurrent_starts_never_share_a_folder(tmp_path):
    made = []
    threads = [threading.Thread(target=lambda: made.append(
        runs.create("demo", {"steps": 3}, runs_dir=tmp_path).dir)) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_create_in_child, args=(tmp_path, q)) for _ in range(4)]
    for p in procs:
        p.start()
    for p in procs:
        p.join()
    made += [q.get() for _ in procs]
    assert len({str(d) for d in made}) == 12
    for d in made:  # each folder has its own complete record
        assert runs.Run(d).params == {"steps": 3} and runs.Run(d).status == "running"


def test_dead_process_reads_as_stale_and_find_done_matches_params(tmp_path):
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    stale = runs.create("demo", {"steps": 1}, runs_dir=tmp_path)
    stale._write_status(pid=child.pid, proc_start=None)
    assert runs.Run(stale.dir).state == "stale"
    alive = runs.create("demo", {"steps": 1}, runs_dir=tmp_path)
    assert alive.state == "running"  # this process is alive
    other = runs.create("demo", {"steps": 1}, runs_dir=tmp_path)
    other._write_status(host="elsewhere", pid=child.pid)
    assert other.state == "running"  # another host's pid cannot be checked from here

    assert runs.find_done("demo", {"steps": 1}, tmp_path) is None
    done = runs.create("demo", {"steps": 1}, runs_dir=tmp_path).done()
    runs.create("demo", {"steps": 2}, runs_dir=tmp_path).done()
    assert runs.find_done("demo", {"steps": 1}, tmp_path).dir == done.dir
    assert runs.find_done("demo", {"steps": 9}, tmp_path) is None


def test_ipython_hook_marks_failed_and_done_still_wins(nb, tmp_path):
    from IPython.core.interactiveshell import InteractiveShell
    shell = InteractiveShell.instance()
    try:
        shell.user_ns.update(steps=4, lr=0.1, path="linear", fail=False, ckpt=None)
        shell.run_cell(f"from lab import runs\nrun = runs.start('demo', globals(), "
                       f"notebook={str(nb)!r}, runs_dir={str(tmp_path)!r})")
        run = shell.user_ns["run"]
        assert run.params["path"] == "linear" and run.status == "running"
        shell.run_cell("1 / 0")
        meta = runs.Run(run.dir).meta
        assert meta["status"] == "failed" and meta["error"] == "ZeroDivisionError: division by zero"
        assert "1 / 0" in meta["traceback"]
        shell.run_cell("run.done()")  # the user fixed things and finished interactively
        assert runs.Run(run.dir).status == "done"
    finally:
        shell.events.unregister("post_run_cell", runs._post_run_cell)
        InteractiveShell.clear_instance()


# ----------------------------------------------------------------------------------------------
# Through papermill (real kernels)
# ----------------------------------------------------------------------------------------------

def test_nbtools_checks_parameters_before_any_kernel(nb, tmp_path):
    with pytest.raises(ValueError, match="unknown parameter `stpes`.*did you mean `steps`"):
        nbtools.execute(nb, {"stpes": 4}, runs_dir=tmp_path)
    with pytest.raises(ValueError, match="`path` = 'slurp' is not allowed"):
        nbtools.execute(nb, {"path": "slurp"}, runs_dir=tmp_path)
    assert not (tmp_path / "demo").exists()
    assert nbtools.main([str(nb), "-p", "stpes", "4", "--runs-dir", str(tmp_path)]) == 1


def test_a_notebook_is_found_by_its_name_as_the_reports_print_it(tmp_path):
    # reports and notebooks print GPU commands as `lab run 07_ae_ablations -p ...`, run from anywhere
    folder = runs.repo_root() / "notebooks"
    full = folder / "07_ae_ablations.ipynb"
    for name in ("07_ae_ablations", "07_ae_ablations.ipynb", "07", str(full), "notebooks/07_ae_ablations.ipynb"):
        assert nbtools.find_notebook(name) == full.resolve(), name
    with pytest.raises(ValueError, match=r"no notebook `0`: it matches .*00_explorer.*01_direction_magnitude"):
        nbtools.find_notebook("0")  # ambiguous prefix: the choices are named
    with pytest.raises(ValueError, match=r"no notebook `nope`: .*notebooks.*05_flow_matching"):
        nbtools.find_notebook("nope")
    mine = tmp_path / "07_ae_ablations.ipynb"  # a file the user names by path wins over the repo's
    mine.write_text("{}")
    assert nbtools.find_notebook(str(mine)) == mine.resolve()
    out = nbtools.main(["nope", "--runs-dir", str(tmp_path)])
    assert out == 1


def test_kernel_name_uses_this_interpreter():
    from jupyter_client.kernelspec import KernelSpecManager
    name = nbtools.kernel_name("python3")
    argv0 = KernelSpecManager().get_kernel_spec(name).argv[0]
    assert nbtools._same_python(argv0)


def test_papermill_good_run_is_done_with_everything(nb, tmp_path, caplog, monkeypatch):
    caplog.set_level("WARNING", logger="papermill")
    res = nbtools.execute(nb, {"steps": 7, "lr": 1}, runs_dir=tmp_path)
    assert res["status"] == "done", res["error"]
    # the run folder reaches the kernel through its environment: papermill has nothing to warn
    assert not [r for r in caplog.records if "unknown parameter" in r.getMessage()]
    assert not (runs.Run(res["dir"]).dir / runs.HANDOFF).exists()
    run = runs.Run(res["dir"])
    assert run.params == {"steps": 7, "lr": 1.0, "path": "slerp", "fail": False, "ckpt": None}
    assert run.metrics["loss"] == pytest.approx(1 / 7)
    assert run.metrics["kernel_python"] == sys.executable  # the venv's kernel, not another python
    assert [p.name for p in run.figures()] == ["curve.png"] and run.tables() == ["curve"]
    executed = nbformat.read(run.dir / "demo.ipynb", 4)
    injected = [c for c in executed.cells if "injected-parameters" in c.metadata.get("tags", [])]
    assert "steps = 7" in injected[0].source and "_lab_" not in injected[0].source
    assert run.meta["pid"] != os.getpid()  # the kernel took the folder over
    # an identical request on the same code reuses the finished run without executing anything
    monkeypatch.setattr(provenance, "same_code", lambda status, root=None: True)
    again = nbtools.execute(nb, {"steps": 7, "lr": 1.0}, runs_dir=tmp_path, reuse=True)
    assert again["reused"] and again["dir"] == res["dir"] and again["status"] == "done"
    monkeypatch.setattr(provenance, "same_code", lambda status, root=None: False)  # other code: no reuse
    assert runs.find_done("demo", run.params, tmp_path, code=True) is None
    assert runs.find_done("demo", run.params, tmp_path).dir == run.dir


def test_papermill_failing_cell_marks_run_failed(nb, tmp_path):
    out = tmp_path / "copy" / "executed.ipynb"
    res = nbtools.execute(nb, {"fail": True, "steps": 2}, runs_dir=tmp_path, out_path=out)
    assert res["status"] == "failed"
    assert res["error"] == "AssertionError: asked to fail at step 2"
    meta = runs.Run(res["dir"]).meta
    assert "assert not fail" in meta["traceback"] and meta["finished"]
    executed = nbformat.read(out, 4)  # the executed notebook keeps the traceback
    assert any(o.get("ename") == "AssertionError" for c in executed.cells
               for o in c.get("outputs", []))
    assert (runs.Run(res["dir"]).dir / "demo.ipynb").exists()


def test_papermill_bad_parameters_fail_in_kernel_before_compute(nb, tmp_path):
    # check=False hands the names straight to the kernel, as `papermill -p` would
    res = nbtools.execute(nb, {"stpes": 4, "lr": "fast"}, runs_dir=tmp_path, check=False)
    assert res["status"] == "failed"
    assert "unknown parameter `stpes`" in res["error"]
    tb = runs.Run(res["dir"]).meta["traceback"]
    assert "did you mean `steps`" in tb and "`lr` = 'fast' has type str" in tb
    assert "steps = 3" in tb  # the allowed parameters with their defaults
    assert not (nb.parent / "computed.marker").exists()  # the compute cell never ran


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _plain_papermill(source, out, cwd, parameters=None):
    """What a user does by hand: `papermill source out -p ...`, no lab.commands.nbtools involved."""
    import papermill as pm
    pm.execute_notebook(str(source), str(out), parameters=parameters or {}, cwd=str(cwd),
                        kernel_name=nbtools.kernel_name("python3"), progress_bar=False)


def test_plain_papermill_of_a_finished_runs_notebook_makes_a_new_run(nb, tmp_path, monkeypatch):
    """Issue 9 case 1: the executed notebook saved in a done run, edited and run again with plain
    papermill, used to rewrite that run (params.json, tables) and leave it `done`."""
    from papermill.exceptions import PapermillExecutionError
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "runs"))
    res = nbtools.execute(nb, {"steps": 7}, runs_dir=tmp_path / "runs")
    assert res["status"] == "done", res["error"]
    done = runs.Run(res["dir"])
    before = _files(done.dir)
    book = nbformat.read(done.dir / "demo.ipynb", 4)
    book.cells[0].source = book.cells[0].source.replace("fail = False", "fail = True")
    edited = tmp_path / "edited.ipynb"
    nbformat.write(book, edited)
    with pytest.raises(PapermillExecutionError, match="asked to fail"):
        _plain_papermill(edited, tmp_path / "out.ipynb", nb.parent)
    assert _files(done.dir) == before and runs.Run(done.dir).status == "done"
    new = [r for r in runs.list_runs(tmp_path / "runs", "demo") if r.dir != done.dir]
    assert len(new) == 1 and new[0].status == "failed" and new[0].params["fail"] is True


def test_passing_an_old_run_folder_as_a_parameter_makes_a_new_run(nb, tmp_path, monkeypatch):
    """`papermill -p _lab_run_dir <a done run>` used to take the finished run over."""
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path / "runs"))
    done = runs.create("demo", {"steps": 3, "lr": 0.1, "path": "slerp", "fail": False,
                                "ckpt": None}, runs_dir=tmp_path / "runs").done()
    before = _files(done.dir)
    _plain_papermill(nb, tmp_path / "out.ipynb", nb.parent,
                     {"_lab_run_dir": str(done.dir), "steps": 5})
    assert _files(done.dir) == before
    new = [r for r in runs.list_runs(tmp_path / "runs", "demo") if r.dir != done.dir]
    assert len(new) == 1 and new[0].status == "done" and new[0].params["steps"] == 5


def test_lab_run_dir_is_taken_over_once_and_never_when_finished(nb, tmp_path, monkeypatch):
    ns = namespace()
    waiting = runs.create("demo", runs.resolve(nb), runs_dir=tmp_path)
    env = runs.handoff(waiting, nb)
    monkeypatch.setenv("LAB_RUN_DIR", env["LAB_RUN_DIR"])
    taken = runs.start("demo", ns, notebook=nb)
    assert taken.dir == waiting.dir and "LAB_RUN_DIR" not in os.environ
    taken.done()
    monkeypatch.setenv("LAB_RUN_DIR", str(waiting.dir))  # a second kernel with the same folder
    with pytest.raises(ValueError, match="is done: a finished run is never written again"):
        runs.start("demo", namespace(), notebook=nb)
    assert runs.Run(waiting.dir).status == "done"


def test_a_finished_run_refuses_writes(tmp_path):
    run = runs.create("demo", {"steps": 1}, runs_dir=tmp_path).done()
    again = runs.Run(run.dir)
    for write in (lambda: again.log_metrics({"loss": 1.0}), lambda: again.log_table("t", {"a": [1]})):
        with pytest.raises(ValueError, match="finished run is never written again"):
            write()
    assert again.metrics == {} and again.tables() == []


def test_status_records_commit_and_a_diff_hash_when_dirty(tmp_path):
    """Issue 8 item 4: a run records the exact code: commit, plus a hash of the diff if dirty."""
    from lab.infra import provenance
    repo = tmp_path / "repo"
    (repo / "lab").mkdir(parents=True)
    git = ["git", "-C", str(repo), "-c", "user.name=t", "-c", "user.email=t@t"]
    subprocess.run(["git", "init", "-q", str(repo)], check=True)
    (repo / "lab" / "a.py").write_text("x = 1\n")
    subprocess.run(git + ["add", "."], check=True)
    subprocess.run(git + ["commit", "-qm", "c"], check=True)
    clean = provenance.code_state(repo)
    assert clean["dirty"] is False and clean["diff_sha256"] is None and len(clean["commit"]) == 40
    assert provenance.code_is_clean(clean) == (True, f"commit {clean['commit'][:10]}")
    (repo / "lab" / "a.py").write_text("x = 2\n")
    one = provenance.code_state(repo)
    (repo / "lab" / "a.py").write_text("x = 3\n")
    two = provenance.code_state(repo)
    assert one["dirty"] and one["commit"] == clean["commit"] and len(one["diff_sha256"]) == 64
    assert one["diff_sha256"] != two["diff_sha256"]  # the hash names the exact edit
    (repo / "lab" / "a.py").write_text("x = 2\n")
    assert provenance.code_state(repo) == one
    (repo / "notebooks").mkdir()
    (repo / "notebooks" / "new.ipynb").write_text("{}")  # untracked files count too
    assert provenance.code_state(repo)["diff_sha256"] != one["diff_sha256"]
    ok, why = provenance.code_is_clean(one)
    assert not ok and "dirty" in why and one["diff_sha256"][:12] in why
    assert provenance.code_is_clean({"commit": None, "dirty": None})[0] is False
    assert provenance.code_is_clean({})[0] is False
    run = runs.create("demo", {"steps": 1}, runs_dir=tmp_path / "runs")
    assert {"commit", "dirty", "diff_sha256"} <= set(run.meta)
    assert run.code_is_clean() == provenance.code_is_clean(run.meta)


def test_underscore_folders_are_not_experiments(tmp_path):
    """runs/_zoo holds shared models and latents, never runs: listing skips it."""
    (tmp_path / "_zoo" / "rae-0123456789").mkdir(parents=True)
    (tmp_path / ".cache" / "x").mkdir(parents=True)
    assert runs.list_runs(str(tmp_path)) == []


def _repo(root, *files):
    """A git repository at `root` with `files` (each holding "1") in one commit; returns its git()."""
    def git(*args):
        return subprocess.run(["git", "-C", str(root), *args], check=True, capture_output=True,
                              text=True).stdout.strip()
    git("init", "-q")
    git("config", "user.email", "t@t")
    git("config", "user.name", "t")
    for rel in files:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("1\n")
    git("add", ".")
    git("commit", "-qm", "code")
    return git


def test_same_code_reuses_only_clean_runs_of_the_same_lab_and_notebooks(tmp_path):
    git = _repo(tmp_path, "lab/a.py", "notebooks/n.ipynb", "reports/README.md")
    ran = {"commit": git("rev-parse", "HEAD"), "dirty": False}
    assert provenance.same_code(ran, tmp_path)
    (tmp_path / "reports/README.md").write_text("regenerated\n")
    git("commit", "-qam", "reports only")
    assert provenance.same_code(ran, tmp_path)            # the code folders did not change
    assert not provenance.same_code(dict(ran, dirty=True), tmp_path)
    (tmp_path / "lab/a.py").write_text("2\n")
    assert not provenance.same_code(ran, tmp_path)        # an uncommitted edit now
    git("commit", "-qam", "code changed")
    assert not provenance.same_code(ran, tmp_path)
    assert provenance.same_code({"commit": git("rev-parse", "HEAD"), "dirty": False}, tmp_path)


def test_a_rewritten_reports_folder_does_not_stop_reuse(tmp_path):
    """Issue 11 rerun: `make reproduce` rewrites the tracked reports/ and leaves the tree dirty
    there; the code (lab/, notebooks/) is unchanged, so the second run must reuse the first's runs
    and a run made now must still count as clean code. An edit under lab/ or notebooks/ (tracked
    or untracked) still stops both."""
    _repo(tmp_path, "lab/a.py", "notebooks/n.ipynb", "reports/README.md", "README.md")
    ran = provenance.code_state(tmp_path)
    (tmp_path / "reports/README.md").write_text("regenerated\n")
    (tmp_path / "reports/new.png").write_bytes(b"png")
    (tmp_path / "README.md").write_text("edited prose\n")
    now = provenance.code_state(tmp_path)
    assert now == ran and now["dirty"] is False            # only the code folders count
    assert provenance.same_code(ran, tmp_path)
    (tmp_path / "notebooks/extra.py").write_text("x = 1\n")  # untracked code
    assert provenance.code_state(tmp_path)["dirty"] and not provenance.same_code(ran, tmp_path)
    (tmp_path / "notebooks/extra.py").unlink()
    (tmp_path / "lab/a.py").write_text("2\n")
    assert provenance.code_state(tmp_path)["dirty"] and not provenance.same_code(ran, tmp_path)
