"""Runs that cannot be faked or raced (issue 21, items 4, 7, 9, 11).

- run.done() writes manifest.json (size + sha256 of every file the run wrote); a `done` run
  whose manifest is missing or does not match is unreadable with the reason, never reused, and
  never hides the real finished runs of the same parameters.
- find_done returns the newest of two finished runs (the report's latest_done rule).
- two identical `nbtools --reuse` requests started together compute once.
- a runs folder that cannot be written gives nbtools' one-line JSON result, not a traceback.
- papermill's "Passed unknown parameter" is not printed for the notebook's own parameters.

No kernel starts here: papermill's engine is replaced by a stand-in that does what a notebook
does (log metrics, run.done()) in this process.
"""
import errno
import json
import multiprocessing as mp
import time
from pathlib import Path

import nbformat
import pytest
from papermill.engines import papermill_engines

from lab import run_files, runs
from lab.commands import nbtools, run_index
from lab.infra import provenance

EXP = "integ"
PARAMS_CELL = '''steps = 3               # >= 1
widths = [8, 16]        # non-empty list of >= 2; text after ';' is a note
path = "slerp"          # one of: linear, slerp
'''


def make_notebook(folder, name=EXP):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(PARAMS_CELL)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(f'from lab import runs\nrun = runs.start("{name}", globals())'),
                nbformat.v4.new_code_cell("run.log_metrics({'loss': 1.0})\nrun.done()")]
    nb.metadata["kernelspec"] = {"name": "python3", "display_name": "Python 3", "language": "python"}
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


def finished(root, params=None, score=1.0, table=True):
    r = runs.create(EXP, params or {"steps": 3}, runs_dir=root)
    r.log_metrics({"score": score})
    if table:
        r.log_table("curve", {"a": [1, 2]})
    return r.done()


def write(path, text):
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    Path(path).write_text(text)


# ----------------------------------------------------------------------------------------------
# Item 4: the manifest
# ----------------------------------------------------------------------------------------------

def test_done_writes_a_manifest_of_every_file_it_wrote(tmp_path):
    r = finished(tmp_path)
    manifest = json.loads((r.dir / run_files.MANIFEST).read_text())
    assert sorted(manifest["files"]) == ["metrics.csv", "metrics.json", "params.json", "tables/curve.csv"]
    rec = manifest["files"]["tables/curve.csv"]
    assert rec["size"] == (r.dir / "tables/curve.csv").stat().st_size and len(rec["sha256"]) == 64
    assert r.meta["manifest_sha256"] == run_files.sha256(r.dir / run_files.MANIFEST)
    assert run_files.problem(r.dir) is None
    # papermill saves the executed notebook after done(): it is not evidence and not listed
    write(r.dir / f"{EXP}.ipynb", "{}")
    assert run_files.problem(r.dir) is None
    good, bad = run_index.read(tmp_path)
    assert [g.id for g in good] == [r.id] and bad == []


def _hand_edited(r):
    """What issue 21 found: a folder whose status.json was set to done by hand."""
    r._write_status(status="done", finished_unix=time.time() + 100)


def _linked(r):
    outside = r.dir.parent.parent / "outside.csv"
    outside.write_text("a\n1\n2\n")  # the same bytes: only the link gives it away
    (r.dir / "tables/curve.csv").unlink()
    (r.dir / "tables/curve.csv").symlink_to(outside)


TAMPER = {  # damage done to the newer finished run -> words its reason must contain
    "table_linked": (_linked, "tables/curve.csv is a symbolic link"),
    "hand_edited_done": (_hand_edited, "manifest.json is missing"),
    "table_changed": (lambda r: write(r.dir / "tables/curve.csv", "a\n9\n"), "tables/curve.csv changed"),
    "metrics_deleted": (lambda r: (r.dir / "metrics.json").unlink(), "metrics.json is missing"),
    "table_added": (lambda r: write(r.dir / "tables/extra.csv", "a\n1\n"), "tables/extra.csv was added"),
    "params_changed": (lambda r: write(r.dir / "params.json", '{"steps": 3, "x": 1}'), "params.json changed"),
    "manifest_edited": (lambda r: write(r.dir / "manifest.json", '{"files": {}}'), "manifest.json changed"),
    "manifest_cut": (lambda r: write(r.dir / "manifest.json", '{"fi'), "manifest.json"),
}


@pytest.mark.parametrize("damage", sorted(TAMPER))
def test_a_tampered_done_run_is_unreadable_never_reused_and_hides_nothing(tmp_path, damage):
    older = finished(tmp_path, score=1.0)
    hurt, words = TAMPER[damage]
    if damage == "hand_edited_done":
        newer = runs.create(EXP, {"steps": 3}, runs_dir=tmp_path)  # no metrics, tables, figures
    else:
        newer = finished(tmp_path, score=2.0)
    hurt(newer)
    why = run_files.problem(newer.dir)
    assert why is not None and words in why, why
    good, bad = run_index.read(tmp_path)
    assert [g.id for g in good] == [older.id]
    assert [(b.id, b.reason) for b in bad] == [(newer.id, why)]
    assert runs.find_done(EXP, {"steps": 3}, tmp_path).dir == older.dir  # not hidden by the bad one


def test_a_run_finished_before_manifests_says_to_rerun(tmp_path):
    r = finished(tmp_path)
    (r.dir / "manifest.json").unlink()
    why = run_files.problem(r.dir)
    assert "manifest.json is missing" in why and "re-run" in why


def test_checks_are_cheap_on_a_second_read(tmp_path, monkeypatch):
    r = finished(tmp_path)
    assert run_files.problem(r.dir) is None
    hashed = []
    monkeypatch.setattr(run_files.cache, "sha256", lambda p: hashed.append(p) or "x")
    assert run_files.problem(r.dir) is None and hashed == []  # unchanged files are not read again
    write(r.dir / "tables/curve.csv", "a\n7\n")  # a changed file is hashed again
    assert "changed" in run_files.problem(r.dir)


# ----------------------------------------------------------------------------------------------
# nbtools with a stand-in for the kernel
# ----------------------------------------------------------------------------------------------

def stand_in_kernel(monkeypatch, calls=None, seconds=0.0, score=1.0):
    """papermill's engine replaced: the 'notebook' logs a metric and finishes its run."""
    def engine(engine_name, nb, *, output_path, **kw):
        if calls is not None:
            with open(calls, "a") as f:
                f.write("computed\n")
        time.sleep(seconds)
        run = runs.Run(Path(output_path).parent)
        run.log_metrics({"score": score})
        run.done()
        return nb
    monkeypatch.setattr(papermill_engines, "execute_notebook_with_engine", engine)
    monkeypatch.setattr(nbtools, "kernel_name", lambda kernel="python3": kernel)
    monkeypatch.setattr(provenance, "same_code", lambda status, root=None: True)


def test_nbtools_reuse_never_returns_a_hand_edited_done_run(tmp_path, monkeypatch):
    stand_in_kernel(monkeypatch)
    nb = make_notebook(tmp_path)
    root = tmp_path / "runs"
    full = runs.resolve(nb, {"steps": 4})
    fake = runs.create(EXP, full, runs_dir=root)
    _hand_edited(fake)
    res = nbtools.execute(nb, {"steps": 4}, runs_dir=root, reuse=True)
    assert res["status"] == "done" and not res["reused"] and res["dir"] != str(fake.dir)
    again = nbtools.execute(nb, {"steps": 4}, runs_dir=root, reuse=True)
    assert again["reused"] and again["dir"] == res["dir"]


def test_papermill_does_not_warn_about_the_notebooks_own_parameters(tmp_path, monkeypatch, caplog, capfd):
    """papermill's regex skips every line with a second '=' (`steps = 3  # >= 1`) and then calls
    the values it was given unknown; lab.infra.params has checked them against the real cell."""
    stand_in_kernel(monkeypatch)
    caplog.set_level("INFO", logger="papermill")
    nb = make_notebook(tmp_path)
    res = nbtools.execute(nb, {"steps": 4, "widths": [4], "path": "linear"}, runs_dir=tmp_path / "runs")
    assert res["status"] == "done", res["error"]
    said = [r.getMessage() for r in caplog.records] + capfd.readouterr().err.splitlines()
    assert not [m for m in said if "unknown parameter" in m or "Unable to parse line" in m], said
    injected = nbformat.read(res["notebook"], 4).cells[1]
    assert "injected-parameters" in injected.metadata.tags and "steps = 4" in injected.source


def test_papermill_still_warns_about_a_name_the_notebook_does_not_declare(tmp_path, monkeypatch, caplog):
    stand_in_kernel(monkeypatch)
    caplog.set_level("WARNING", logger="papermill")
    nb = make_notebook(tmp_path)
    nbtools.execute(nb, {"steps": 4, "nope": 1}, runs_dir=tmp_path / "runs", check=False)
    assert [r.getMessage() for r in caplog.records if "unknown parameter" in r.getMessage()] == \
        ["Passed unknown parameter: nope"]


def _reuse_in_child(nb, root, q):
    q.put(nbtools.execute(nb, {"steps": 5}, runs_dir=root, reuse=True))


def test_two_identical_reuse_requests_started_together_compute_once(tmp_path, monkeypatch):
    calls = tmp_path / "calls.txt"
    stand_in_kernel(monkeypatch, calls=calls, seconds=1.0)
    nb, root = make_notebook(tmp_path), tmp_path / "runs"
    ctx = mp.get_context("fork")
    q = ctx.Queue()
    procs = [ctx.Process(target=_reuse_in_child, args=(nb, root, q)) for _ in range(2)]
    for p in procs:
        p.start()
    results = [q.get(timeout=60) for _ in procs]
    for p in procs:
        p.join(timeout=60)
    assert calls.read_text().splitlines() == ["computed"]
    assert sorted(r["reused"] for r in results) == [False, True]
    assert {r["dir"] for r in results} == {results[0]["dir"]} and {r["status"] for r in results} == {"done"}


@pytest.mark.parametrize("code, reuse", [(errno.EROFS, []), (errno.ENOSPC, []), (errno.EROFS, ["--reuse"])])
def test_an_unwritable_runs_folder_gives_the_one_line_result(tmp_path, monkeypatch, capsys, code, reuse):
    stand_in_kernel(monkeypatch)
    nb, root = make_notebook(tmp_path), tmp_path / "runs"
    real_mkdir = Path.mkdir

    def mkdir(self, *a, **kw):
        if str(self).startswith(str(root)):
            raise OSError(code, "simulated", str(self))
        return real_mkdir(self, *a, **kw)
    monkeypatch.setattr(Path, "mkdir", mkdir)
    rc = nbtools.main([str(nb), "-p", "steps", "4", "--runs-dir", str(root)] + reuse)
    lines = capsys.readouterr().out.strip().splitlines()
    assert rc == 1 and len(lines) == 1
    res = json.loads(lines[0])
    assert res["status"] == "failed" and res["dir"] is None
    assert str(root) in res["error"] and "--runs-dir" in res["error"] and "simulated" in res["error"]


def test_a_full_disk_while_writing_the_run_gives_the_one_line_result(tmp_path, monkeypatch, capsys):
    stand_in_kernel(monkeypatch)
    nb, root = make_notebook(tmp_path), tmp_path / "runs"

    def full(path, obj):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))
    monkeypatch.setattr(runs, "write_json", full)
    rc = nbtools.main([str(nb), "--runs-dir", str(root), "--reuse"])
    res = json.loads(capsys.readouterr().out.strip())
    assert rc == 1 and res["status"] == "failed" and "No space left" in res["error"]


# ----------------------------------------------------------------------------------------------
# Item 11: the newest finished run
# ----------------------------------------------------------------------------------------------

def test_find_done_returns_the_newest_of_two_finished_runs(tmp_path):
    from lab.commands import report
    first = finished(tmp_path, score=1.0)
    second = finished(tmp_path, score=2.0)
    assert runs.find_done(EXP, {"steps": 3}, tmp_path).dir == second.dir
    assert report.latest_done(run_index.read(tmp_path)[0])[EXP][0].dir == second.dir
    # the order is by finish time, not by folder name or start: the first run finishing last wins
    first._write_status(finished_unix=second.meta["finished_unix"] + 5)  # status.json is not hashed
    assert runs.find_done(EXP, {"steps": 3}, tmp_path).dir == first.dir
    assert report.latest_done(run_index.read(tmp_path)[0])[EXP][0].dir == first.dir
