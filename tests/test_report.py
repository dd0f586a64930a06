"""lab.report: tables from the latest done runs only, claims with verdicts, failed/stale apart."""
import re
import subprocess
import sys

import pandas as pd
import pytest

from lab import report, runs


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def mentions(text, run_id):
    """Whether `run_id` appears as a whole id (not as the prefix of `<id>-2`)."""
    return re.search(re.escape(run_id) + r"(?![-\w])", text) is not None


def make_run(root, exp, params, metrics=None, status="done", figure=False, table=None):
    r = runs.create(exp, params, runs_dir=root)
    if metrics:
        r.log_metrics(metrics)
    if figure:
        from matplotlib.figure import Figure
        fig = Figure(figsize=(2, 2))
        fig.subplots().plot([0, 1])
        r.save_figure(fig, "samples")
    if table:
        r.log_table("curve", table)
    if status == "done":
        r.done()
    elif status == "failed":
        r.fail(RuntimeError("CUDA out of memory | at step 7"))
    elif status == "stale":
        r._write_status(pid=_dead_pid(), proc_start=None)
    return r


@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    fm = "05_flow_matching"
    s = {"root": root}
    s["old"] = make_run(root, fm, {"steps": 10, "path": "slerp"},
                        {"fd_riemannian": 10.0, "fd_euclidean": 20.0})
    s["new"] = make_run(root, fm, {"steps": 10, "path": "slerp"},
                        {"fd_riemannian": 12.0, "fd_euclidean": 20.5}, figure=True,
                        table={"t": [0.0, 1.0], "loss": [1.0, 0.5]})
    s["other"] = make_run(root, fm, {"steps": 20, "path": "slerp"}, {"other": 1.0})
    s["failed"] = make_run(root, fm, {"steps": 10, "path": "slerp"},
                           {"fd_riemannian": 999.0, "fd_euclidean": 999.0}, status="failed")
    s["stale"] = make_run(root, fm, {"steps": 30, "path": "slerp"}, {"fd_riemannian": 888.0},
                          status="stale")
    s["radial"] = make_run(root, "02_radial_share", {"n": 4},
                           {"radial_share_linear": 0.5, "radial_share_slerp": 0.0})
    s["probe"] = make_run(root, "03_linear_probe", {"n": 4},
                          {"probe_acc_teacher": 0.9, "probe_acc_student": 0.6})
    s["width"] = make_run(root, "08_width", {"n": 4}, {"width_loss_narrow": 0.8})
    s["alive"] = make_run(root, "01_direction_magnitude", {"n": 4}, status="running")
    out = tmp_path_factory.mktemp("out") / "reports"
    s["summary"] = report.build(root, out)
    s["out"] = out
    return s


def test_experiment_table_holds_latest_done_run_per_parameter_set(scene):
    out = scene["out"] / "05_flow_matching"
    page = (out / "README.md").read_text()
    for key in ("new", "other"):
        assert mentions(page, scene[key].id)
    for key in ("old", "failed", "stale"):  # superseded, failed and stale runs feed no table
        assert not mentions(page, scene[key].id)
    assert "999" not in page and "888" not in page
    assert "Parameters common to all rows: `path='slerp'`" in page
    csv = pd.read_csv(out / "runs.csv")
    assert csv["run"].tolist() == [scene["new"].id, scene["other"].id]
    assert csv["param.steps"].tolist() == [10, 20]
    assert csv["fd_riemannian"].tolist()[0] == 12.0
    # the figure is copied and captioned with run, commit, device and parameters
    fig = out / "figures" / scene["new"].id / "samples.png"
    assert fig.read_bytes() == (scene["new"].dir / "figures" / "samples.png").read_bytes()
    caption = [l for l in page.splitlines() if l.startswith("*samples: run")][0]
    assert scene["new"].id in caption and "commit `" in caption and "device `cpu" in caption \
        or "device `cuda" in caption
    assert "steps=10" in caption
    assert (out / "tables" / scene["new"].id / "curve.csv").exists()


def test_claims_index_has_verdicts_and_provenance(scene):
    readme = (scene["out"] / "README.md").read_text()
    claims = pd.read_csv(scene["out"] / "claims.csv").set_index("claim")
    assert list(claims.index) == [c.id for c in report.CLAIMS]
    assert claims.loc["euclid_vs_riemann", "verdict"] == report.SUPPORTED
    assert "fd_riemannian = 12" in claims.loc["euclid_vs_riemann", "what we measured"]
    assert claims.loc["euclid_vs_riemann", "run"] == f"05_flow_matching/{scene['new'].id}"
    assert claims.loc["radial_share", "verdict"] == report.SUPPORTED
    assert claims.loc["probe_teacher_student", "verdict"] == report.CONTRADICTED
    assert claims.loc["u_curve", "verdict"] == report.NO_RUN
    assert claims.loc["u_curve", "what we measured"] == "no finished run of 06_decoder_scale"
    assert claims.loc["width_check", "verdict"] == report.NO_RUN
    assert "do not log width_floor, width_loss_wide" in claims.loc["width_check", "what we measured"]
    assert claims.loc["swap_asymmetry", "verdict"] == report.NO_RUN  # only a running run
    new = scene["new"]
    assert (f"- `euclid_vs_riemann`: run `05_flow_matching/{new.id}`, commit "
            f"`{report.commit_text(new)}`, device `{new.meta['device']}`, parameters "
            "`steps=10, path='slerp'`") in readme
    assert scene["summary"]["claims"][report.SUPPORTED] == 2


def test_failed_and_stale_runs_are_listed_apart(scene):
    readme = (scene["out"] / "README.md").read_text()
    failed_part = readme.split("## Failed and stale runs")[1].split("## Still running")[0]
    claims_part = readme.split("## Failed and stale runs")[0]
    for key, state in (("failed", "failed"), ("stale", "stale")):
        line = [l for l in failed_part.splitlines() if mentions(l, scene[key].id)][0]
        assert f"| {state} " in line
        assert not mentions(claims_part, scene[key].id)
    assert "CUDA out of memory \\| at step 7" in failed_part  # a pipe cannot break the table
    assert scene["alive"].id in readme.split("## Still running")[1]
    assert scene["summary"]["failed_or_stale"] == 2


def test_build_is_deterministic(scene, tmp_path):
    report.build(scene["root"], tmp_path / "again")
    a = sorted(p.relative_to(scene["out"]) for p in scene["out"].rglob("*"))
    b = sorted(p.relative_to(tmp_path / "again") for p in (tmp_path / "again").rglob("*"))
    assert a == b
    for rel in a:
        if (scene["out"] / rel).is_file():
            assert (scene["out"] / rel).read_bytes() == (tmp_path / "again" / rel).read_bytes(), rel


def test_build_refuses_a_folder_it_did_not_write(scene, tmp_path):
    out = tmp_path / "reports"
    out.mkdir()
    (out / "README.md").write_text("# my notes\n")
    with pytest.raises(RuntimeError, match="refusing to replace"):
        report.build(scene["root"], out)
    assert report.main(["--runs", str(scene["root"]), "--out", str(out)]) == 2
    assert (out / "README.md").read_text() == "# my notes\n"
    assert report.main(["--runs", str(scene["root"]), "--out", str(out), "--force"]) == 0
    assert (out / "README.md").read_text().startswith(report.MARKER)
    report.build(scene["root"], out)  # our own output is replaced without --force


def test_empty_runs_folder_gives_no_run_yet_everywhere(tmp_path):
    s = report.build(tmp_path / "none", tmp_path / "out")
    assert s["claims"][report.NO_RUN] == len(report.CLAIMS)
    assert "No finished runs yet." in (tmp_path / "out" / "README.md").read_text()


@pytest.mark.parametrize("ours, base, lower, margin, relative, verdict", [
    (10.0, 20.0, True, 0.05, True, report.SUPPORTED),
    (19.5, 20.0, True, 0.05, True, report.NOT_SHOWN),  # 2.5 % better: inside the margin
    (25.0, 20.0, True, 0.05, True, report.CONTRADICTED),
    (30.0, 29.5, False, 0.3, False, report.SUPPORTED),  # PSNR +0.5 dB
    (30.0, 29.9, False, 0.3, False, report.NOT_SHOWN),
    (float("nan"), 20.0, True, 0.0, False, report.NOT_SHOWN),
])
def test_versus_margins(ours, base, lower, margin, relative, verdict):
    text, got = report.versus("a", "b", lower=lower, margin=margin, relative=relative)(
        {"a": ours, "b": base})
    assert got == verdict and "a = " in text and "b = " in text


def test_readers_of_shaped_claims():
    u = {"u_scales": [0.5, 1.0, 2.0], "u_fd": [30.0, 10.0, 25.0]}
    assert report.read_u_curve(u)[1] == report.SUPPORTED
    assert "best 10 at 1" in report.read_u_curve(u)[0]
    assert report.read_u_curve({"u_scales": [0.5, 1, 2], "u_fd": [5.0, 10, 25]})[1] == report.NOT_SHOWN
    floor = {"width_floor": 0.5, "width_loss_wide": 0.01}
    assert report.read_width({**floor, "width_loss_narrow": 0.5})[1] == report.SUPPORTED
    assert report.read_width({**floor, "width_loss_narrow": 0.1})[1] == report.CONTRADICTED
    assert report.read_swap({"swap_direction_lpips": 0.4, "swap_radius_lpips": 0.1})[1] == report.SUPPORTED
    assert report.read_swap({"swap_direction_lpips": 0.1, "swap_radius_lpips": 0.4})[1] == report.CONTRADICTED
    lam = {"fd_lambda_0": 10.0, "fd_lambda_0.1": 9.0, "fd_lambda_1": 14.0}
    assert report.read_lambda(lam)[1] == report.SUPPORTED
    assert report.read_lambda({**lam, "fd_lambda_0.1": 13.0})[1] == report.CONTRADICTED


def test_unreadable_metrics_do_not_break_the_report(tmp_path):
    make_run(tmp_path, "02_radial_share", {"n": 1},
             {"radial_share_linear": "oops", "radial_share_slerp": 0.0})
    latest = report.latest_done(runs.list_runs(tmp_path))
    row = report.evaluate(report.CLAIMS[1], latest)
    assert row["verdict"] == report.NOT_SHOWN and row["measured"].startswith("unreadable metrics")
    claim = report.Claim("x", "p", "t", "02_radial_share", ("radial_share_slerp",),
                         lambda m: ("ok", report.SUPPORTED), where={"n": 2})
    assert report.evaluate(claim, latest)["verdict"] == report.NO_RUN
