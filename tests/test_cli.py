"""The `lab` command (issue 20): every subcommand through the installed script, `--help` on each, and
`lab runs` / `lab show` on a small runs folder built here.

Each subprocess pays for `import lab` (which imports torch today), so the script is called once per
subcommand and where the installed entry point itself is under test; the listing, lookup and error
paths are tested in-process.
"""
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from lab import runs
from lab.commands import cli, runs_table

LAB = Path(sys.executable).parent / "lab"
needs_script = pytest.mark.skipif(not LAB.exists(), reason=f"{LAB} is not installed: run `make install` "
                                  "(pyproject.toml declares the `lab` console script)")

PARAMS = 'n = 1  # >= 1\nlr = 0.1  # > 0\npath = "slerp"  # one of: linear, slerp\n'


def lab(*args, env=None, timeout=300):
    return subprocess.run([str(LAB), *map(str, args)], capture_output=True, text=True, timeout=timeout,
                          env={**os.environ, **(env or {})})


def notebook(folder, name):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(PARAMS)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell("pass")]
    folder.mkdir(parents=True, exist_ok=True)
    nbformat.write(nb, folder / f"{name}.ipynb")
    return folder / f"{name}.ipynb"


def make_run(root, params, *, started, metrics=None, end="done", experiment="exp_a"):
    r = runs.create(experiment, params, runs_dir=root)
    r._write_status(started_unix=time.time() - 100 + started, commit="a" * 40, dirty=False)
    if metrics:
        r.log_metrics(metrics)
    if end == "done":
        r.log_table("curve", {"x": [0, 1, 2], "y": [1.0, 2.0, 3.0]})
        (r.dir / "figures").mkdir()
        (r.dir / "figures" / "curve.png").write_bytes(b"png")
        r.done()
    elif end == "failed":
        r.fail("asked to fail")
    return r.reload()


@pytest.fixture()
def lab_runs(tmp_path):
    """Three runs of exp_a (old done, newer failed, newest done with n=2) and one unreadable folder;
    `started` is seconds after a start 100 s ago."""
    root, nbs = tmp_path / "runs", tmp_path / "notebooks"
    notebook(nbs, "exp_a")
    old = make_run(root, {"n": 1, "lr": 0.1, "path": "slerp"}, started=10.0, metrics={"loss": 0.5, "acc": 0.9})
    failed = make_run(root, {"n": 1, "lr": 0.2, "path": "slerp"}, started=20.0, end="failed")
    new = make_run(root, {"n": 2, "lr": 0.1, "path": "slerp"}, started=30.0, metrics={"loss": 0.25})
    bad = root / "exp_a" / "zz-cut"
    bad.mkdir()
    (bad / "params.json").write_text('{"n": ')
    return root, nbs, {"old": old, "failed": failed, "new": new}


# ----------------------------------------------------------------------------------------------
# In-process: the listing and lookup logic
# ----------------------------------------------------------------------------------------------

def test_runs_newest_first_with_changed_params_headline_and_time(lab_runs):
    root, nbs, r = lab_runs
    found, unreadable = runs_table.collect(root, notebooks=nbs)
    assert [x["run"] for x in found] == [r["new"].id, r["failed"].id, r["old"].id]
    assert [x["state"] for x in found] == ["done", "failed", "done"]
    assert [x["params"] for x in found] == [{"n": 2}, {"lr": 0.2}, {}]  # only what differs from the notebook
    assert found[2]["metrics"] == {"loss": 0.5, "acc": 0.9} and found[2]["commit"] == "a" * 10
    assert found[0]["seconds"] == r["new"].meta["seconds"]
    assert [(u["run"], u["state"]) for u in unreadable] == [("zz-cut", "unreadable")]
    assert "params.json" in unreadable[0]["reason"]


def test_runs_without_a_notebook_shows_every_parameter(lab_runs):
    root, _, r = lab_runs
    found, _ = runs_table.collect(root, notebooks=root / "no-notebooks-here")
    assert found[-1]["params"] == {"n": 1, "lr": 0.1, "path": "slerp"}


def test_runs_state_and_where_filter_with_typed_values(lab_runs):
    root, nbs, r = lab_runs
    ids = lambda **kw: [x["run"] for x in runs_table.collect(root, notebooks=nbs, **kw)[0]]
    assert ids(state="failed") == [r["failed"].id]
    assert ids(where=["n=2"]) == [r["new"].id]
    assert ids(where=["lr=0.1"]) == [r["new"].id, r["old"].id]
    assert ids(where=["lr=0.1", "n=1"]) == [r["old"].id]
    assert ids(where=["path=slerp"], state="done") == [r["new"].id, r["old"].id]
    assert runs_table.collect(root, notebooks=nbs, state="done")[1] == []  # filtered: no unreadable rows


def test_runs_where_default_applies_when_params_lack_the_name(tmp_path):
    root, nbs = tmp_path / "runs", tmp_path / "nb"
    notebook(nbs, "exp_a")
    r = make_run(root, {"n": 3}, started=1.0)  # an older run that recorded only n
    assert [x["run"] for x in runs_table.collect(root, where=["lr=0.1"], notebooks=nbs)[0]] == [r.id]
    assert runs_table.collect(root, where=["lr=0.5"], notebooks=nbs)[0] == []


@pytest.mark.parametrize("where, words", [(["lrr=0.1"], ["lrr", "did you mean lr"]),
                                          (["n"], ["--where 'n'", "NAME=VALUE"])])
def test_runs_where_errors_name_the_problem(lab_runs, where, words):
    root, nbs, _ = lab_runs
    with pytest.raises(ValueError) as err:
        runs_table.collect(root, where=where, notebooks=nbs)
    assert all(w in str(err.value) for w in words), str(err.value)


def test_runs_experiment_by_prefix_and_unknown_experiment(lab_runs):
    root, nbs, r = lab_runs
    make_run(root, {"n": 1}, started=50.0, experiment="other")
    assert {x["experiment"] for x in runs_table.collect(root, "exp", notebooks=nbs)[0]} == {"exp_a"}
    with pytest.raises(ValueError, match="did you mean exp_a"):
        runs_table.collect(root, "exp_b", notebooks=nbs)


def test_headline_reads_the_claim_keys_as_seed_means_first():
    m = {"other": 7.0, "kid_images_euclidean_paper_seed0": 10.0, "kid_images_euclidean_paper_seed1": 14.0,
         "kid_images_riemannian_l0.1_paper_seed0": 3.0, "curve": [1, 2], "flag": True, "a": 1, "b": 2}
    assert runs_table.headline("05_flow_matching", m) == {
        "kid_images_riemannian_l0.1_paper": 3.0, "kid_images_euclidean_paper": 12.0, "other": 7.0, "a": 1}
    assert runs_table.headline("no_claims", {"x": "text", "y": 2.5}) == {"y": 2.5}


def test_runs_main_prints_the_table_then_the_unreadable(lab_runs, capsys):
    root, nbs, r = lab_runs
    assert runs_table.runs_main(["--runs-dir", str(root), "--notebooks", str(nbs)]) == 0
    out = capsys.readouterr().out
    head, tail = out.split("Unreadable runs")
    lines = head.strip().splitlines()
    assert lines[0].split() == ["experiment", "run", "state", "commit", "changed", "headline", "time"]
    assert r["new"].id in lines[1] and "n=2" in lines[1] and "loss=0.25" in lines[1] and " s" in lines[1]
    assert r["old"].id in lines[3] and "acc=0.9" in lines[3]
    assert "exp_a/zz-cut: params.json" in tail


def test_find_a_run_by_id_prefix_experiment_and_path(lab_runs):
    root, _, r = lab_runs
    new = r["new"]
    assert runs_table.find(new.id, root) == new.dir
    assert runs_table.find(f"exp_a/{new.id}", root) == new.dir
    assert runs_table.find(str(new.dir), root) == new.dir
    assert runs_table.find("zz", root) == root / "exp_a" / "zz-cut"  # a unique start of an id
    with pytest.raises(ValueError, match="ambiguous"):
        runs_table.find(new.id[:4], root)


def test_find_an_unknown_run_lists_close_matches(lab_runs):
    root, _, r = lab_runs
    typo = r["new"].id[:-1] + "x"
    with pytest.raises(ValueError) as err:
        runs_table.find(typo, root)
    assert "no run" in str(err.value) and r["new"].id in str(err.value) and "lab runs" in str(err.value)


def test_show_prints_params_status_metrics_tables_figures(lab_runs, capsys):
    root, nbs, r = lab_runs
    assert runs_table.show_main([r["new"].id, "--runs-dir", str(root), "--notebooks", str(nbs)]) == 0
    out = capsys.readouterr().out
    assert f"exp_a/{r['new'].id}" in out and "state     done" in out and "commit aaaaaaaaaa" in out
    assert "  * n = 2" in out and "    lr = 0.1" in out  # * marks what differs from the default
    assert "loss  0.25" in out and "curve  3 rows x 2 columns" in out
    assert str(r["new"].dir / "figures" / "curve.png") in out


def test_show_a_failed_run_gives_its_error_and_an_unreadable_one_its_reason(lab_runs, capsys):
    root, nbs, r = lab_runs
    assert runs_table.show_main([r["failed"].id, "--runs-dir", str(root), "--notebooks", str(nbs)]) == 0
    assert "error     asked to fail" in capsys.readouterr().out
    assert runs_table.show_main(["zz-cut", "--runs-dir", str(root)]) == 1
    assert "unreadable: params.json" in capsys.readouterr().err


def test_show_an_unknown_run_exits_2_naming_close_matches(lab_runs, capsys):
    root, _, r = lab_runs
    with pytest.raises(SystemExit) as stop:
        runs_table.show_main([r["new"].id[:-1] + "x", "--runs-dir", str(root)])
    err = capsys.readouterr().err
    assert stop.value.code == 2 and "no run" in err and "close matches: " in err and r["new"].id in err


def test_jupyter_refuses_a_missing_notebooks_folder(tmp_path, capsys):
    with pytest.raises(SystemExit) as stop:
        cli.main(["jupyter", "--notebooks", str(tmp_path / "missing")])
    assert stop.value.code == 2 and "--notebooks" in capsys.readouterr().err


def test_cli_main_passes_exit_codes_and_turns_bad_input_into_an_error(lab_runs, tmp_path, capsys):
    root, _, _ = lab_runs
    assert cli.main(["show", "zz-cut", "--runs-dir", str(root)]) == 1  # the module's own exit code
    assert cli.main(["sweep", str(notebook(tmp_path / "nb", "exp_a")), "--grid", "n"]) == 2
    assert "lab sweep: error: grid item 'n'" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        cli.main(["runz"])
    assert stop.value.code == 2 and "invalid choice: 'runz'" in capsys.readouterr().err
    assert cli.main([]) == 2 and "commands:" in capsys.readouterr().out


# ----------------------------------------------------------------------------------------------
# Through the installed script
# ----------------------------------------------------------------------------------------------

@needs_script
def test_lab_help_lists_every_subcommand_with_one_line():
    res = lab("--help")
    assert res.returncode == 0, res.stderr
    listed = [line.split()[0] for line in res.stdout.split("commands:")[1].strip().splitlines()[:len(cli.COMMANDS)]]
    assert listed == list(cli.COMMANDS) == ["run", "sweep", "reproduce", "report", "weights", "bench", "train",
                                            "jupyter", "launch", "verify", "adm-eval", "runs", "show"]
    assert "python -m lab" in res.stdout


HELP_WORDS = {  # a word of each module's own help: the arguments reached the module that does the job
    "run": "--reuse", "sweep": "--slurm", "reproduce": "--jobs", "report": "--force",
    "weights": "fetch,check,where,info", "bench": "--sizes", "train": "--latents", "jupyter": "jupyter lab",
    "runs": "--where", "show": "EXPERIMENT/RUN-ID", "launch": "--slurm", "verify": "--keep", "adm-eval": "--inception",
}


@needs_script
@pytest.mark.parametrize("command", sorted(HELP_WORDS))
def test_lab_subcommand_help(command):
    res = lab(command, "--help")
    assert res.returncode == 0, res.stderr[-2000:]
    assert res.stdout.startswith("usage:") and HELP_WORDS[command] in res.stdout, res.stdout


@needs_script
def test_lab_runs_json_state_where_and_show_through_the_script(lab_runs):
    root, nbs, r = lab_runs
    res = lab("runs", "exp_a", "--state", "done", "--where", "lr=0.1", "--json", "--notebooks", nbs,
              env={"LAB_RUNS_DIR": str(root)})
    assert res.returncode == 0, res.stderr
    records = json.loads(res.stdout)
    assert [(x["run"], x["params"], x["metrics"]) for x in records] == [
        (r["new"].id, {"n": 2}, {"loss": 0.25}), (r["old"].id, {}, {"loss": 0.5, "acc": 0.9})]

    res = lab("show", r["old"].id[:-2], "--json", "--runs-dir", root, "--notebooks", nbs)
    shown = json.loads(res.stdout)
    assert (shown["run"], shown["state"], shown["tables"]) == (r["old"].id, "done", {"curve": [3, 2]})


@needs_script
def test_python_m_lab_is_the_same_command(lab_runs):
    root, nbs, r = lab_runs
    res = subprocess.run([sys.executable, "-m", "lab", "runs", "--json", "--runs-dir", str(root),
                          "--notebooks", str(nbs)], capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    assert [x["run"] for x in json.loads(res.stdout)][:3] == [r["new"].id, r["failed"].id, r["old"].id]


@needs_script
def test_lab_run_refuses_a_bad_parameter_before_any_kernel(tmp_path):
    res = lab("run", notebook(tmp_path / "nb", "exp_a"), "-p", "stepz", "3", "--runs-dir", tmp_path / "runs")
    assert res.returncode == 1
    assert json.loads(res.stdout.strip().splitlines()[-1])["error"].startswith("exp_a: unknown parameter `stepz`")
    assert not (tmp_path / "runs").exists()  # refused before a run folder or a kernel


@needs_script
def test_lab_weights_where_prints_the_cache(tmp_path):
    res = lab("weights", "where", env={"LAB_CACHE": str(tmp_path / "cache")})
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == str(tmp_path / "cache")


@needs_script
def test_lab_jupyter_starts_the_environments_jupyterlab():
    res = lab("jupyter", "--version")  # handed to `jupyter lab`: prints JupyterLab's version, starts nothing
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip()[0].isdigit()
