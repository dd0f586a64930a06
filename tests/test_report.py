"""lab.commands.report: tables from the latest done runs only, claims with verdicts, failed/stale apart.

Metric keys come from lab.claims (the functions the notebooks call), never from hand copies; the
verdict rules themselves are tested in test_claims.py."""
import re
import subprocess
import sys

import pandas as pd
import pytest

from lab import claims as C
from lab import runs
from lab.commands import report
from stand_ins import seeded

SUPPORTED, NOT_SHOWN, REVERSED = report.SUPPORTED, report.NOT_SHOWN, report.CONTRADICTED


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def mentions(text, run_id):
    """Whether `run_id` appears as a whole id (not as the prefix of `<id>-2`)."""
    return re.search(re.escape(run_id) + r"(?![-\w])", text) is not None


def make_run(root, exp, params, metrics=None, status="done", figure=False, table=None, dirty=False):
    r = runs.create(exp, params, runs_dir=root)
    r._write_status(commit="f" * 40, dirty=dirty)  # the test's own tree must not decide the verdicts
    if metrics:
        r.log_metrics(metrics)
    if figure:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
        fig = Figure(figsize=(2, 2))
        FigureCanvasAgg(fig)
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


# ----------------------------------------------------------------------------------------------
# Metrics as the notebooks log them: keys from lab.claims, one value per seed
# ----------------------------------------------------------------------------------------------

# stand_ins.seeded: {key: value or [per-seed values]} -> {claims.seed_key(key, s): value}


def kid(config):
    return C.gen_key(C.KID, config, "paper")


def fm_vals(riem, eucl, l0=None, l1=None):
    vals = {kid(C.lambda_config(0.1)): riem, kid("euclidean"): eucl,
            C.gen_key("fd_images", "euclidean", "paper"): [100.0, 150.0, 200.0],
            C.gen_key("fd_images", C.lambda_config(0.1), "paper"): [147.0, 148.1, 226.0]}
    if l0 is not None:
        vals[kid(C.lambda_config(0.0))] = l0
        vals[kid(C.lambda_config(1.0))] = l1
    return {**seeded(vals), "shift_alpha": 1.0, "protocol_paper": "CFG 1.1 (HAE App. E), 50 Euler steps"}


def probe(teacher, student):
    return seeded({C.probe_key("teacher", "gap"): teacher, C.probe_key("student", "gap"): student,
                   C.probe_key("teacher", "flatten"): 0.8, C.probe_key("student", "flatten"): 0.7})


# ----------------------------------------------------------------------------------------------
# A runs folder with superseded, failed, stale and running runs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    fm = "05_flow_matching"
    s = {"root": root}
    s["old"] = make_run(root, fm, {"steps": 10, "path": "slerp"}, fm_vals(10.0, 20.0))
    s["new"] = make_run(root, fm, {"steps": 10, "path": "slerp"}, fm_vals([12.0, 12.5, 11.5], 20.5, l0=14.0, l1=15.0),
                        figure=True, table={"t": [0.0, 1.0], "loss": [1.0, 0.5]})
    s["other"] = make_run(root, fm, {"steps": 20, "path": "slerp"}, {"other": 1.0})
    s["failed"] = make_run(root, fm, {"steps": 10, "path": "slerp"}, fm_vals(999.0, 999.0), status="failed")
    s["stale"] = make_run(root, fm, {"steps": 30, "path": "slerp"}, fm_vals(888.0, 888.0), status="stale")
    s["radial"] = make_run(root, "02_radial_share", {"n": 4},
                           seeded({C.share_key(a, p, w): v for a in ("dino", "vae")
                                   for p, w, v in (("linear", "start", 0.5), ("linear", "end", 0.45),
                                                   ("slerp", "max", 0.0))}), dirty=True)
    s["probe"] = make_run(root, "03_linear_probe", {"n": 4}, probe(0.9, 0.6))
    s["ae"] = make_run(root, "07_ae_ablations", {"n": 4}, {C.cpu_key("ddt_head"): "needs a 384-wide head; lab run X",
                                                           "unrelated": 1.0})
    s["width"] = make_run(root, "08_width", {"n": 4}, seeded({C.width_key("loss", 8): 0.8}))  # no token_dim
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
    assert csv[C.seed_key(kid(C.lambda_config(0.1)), 1)].tolist()[0] == pytest.approx(12.5)
    assert csv[C.seed_key(kid(C.lambda_config(0.0)), 0)].tolist()[0] == pytest.approx(14.0)
    # the figure is copied and captioned with run, commit, device and parameters
    fig = out / "figures" / scene["new"].id / "samples.png"
    assert fig.read_bytes() == (scene["new"].dir / "figures" / "samples.png").read_bytes()
    caption = [l for l in page.splitlines() if l.startswith("*samples") and ": run `" in l][0]
    assert scene["new"].id in caption and "commit `" in caption
    assert "device `cpu" in caption or "device `cuda" in caption
    assert "steps=10" in caption
    assert (out / "tables" / scene["new"].id / "curve.csv").exists()


def test_claims_index_has_verdicts_and_provenance(scene):
    readme = (scene["out"] / "README.md").read_text()
    claims = pd.read_csv(scene["out"] / "claims.csv").set_index("claim")
    assert list(claims.index) == [c.id for c in C.CLAIMS]
    new = scene["new"]
    ours = report.OURS
    # the latest done run that logs the keys: not `old` (superseded), `other` (lacks them), `failed`
    row = claims.loc["euclid_vs_riemann"]
    assert row["verdict"] == SUPPORTED and row["run"] == f"05_flow_matching/{new.id}"
    assert row["paper"] == "HAE, Tab. 4" and row["paper's number"] == "gFID 15.95 (Euclidean) vs 2.65 (Riemannian)"
    assert row[ours].startswith("KID: euclidean − riemannian λ=0.1: mean 8.5, seeds [8.5, 8, 9], 95% CI [7.26, 9.74] "
                                "(±1.24 at 3 seeds) → supported; also: FD-effnet ")
    assert row[ours].endswith("regime: time shift α = 1; sampling: CFG 1.1 (HAE App. E), 50 Euler steps")
    assert row["primary metric"] == C.BY_ID["euclid_vs_riemann"].primary and "KID" in row["primary metric"]
    assert row["seeds"] == "3 (0, 1, 2)"
    assert claims.loc["lambda_sweep", "verdict"] == SUPPORTED  # λ=0: +2 / +1.5 / +2.5, CI [0.76, 3.24]
    assert claims.loc["lambda_sweep", "paper"] == "HAE, Tab. 6"
    assert claims.loc["probe_teacher_student", "verdict"] == REVERSED  # gap 0.3 > 0.03
    # a run from a dirty tree shows its numbers and no verdict, and says why
    assert claims.loc["radial_share", "verdict"] == report.DIRTY
    assert "dirty tree: commit" in claims.loc["radial_share", ours]
    assert "dino linear share at the noise end − 0.35: mean 0.15" in claims.loc["radial_share", ours]
    for cid, msg in [
            ("u_curve", "no finished run of 06_decoder_scale"),
            ("stem_vs_patch", "finished runs of 07_ae_ablations: not logged: psnr_conv_cosine_stage1, "
                              "psnr_patch_cosine_stage1"),
            ("noise_tradeoff", "finished runs of 07_ae_ablations: not logged: noise_kid_images_clean_trained, "
                               "noise_kid_images_noise_trained"),
            ("swap_asymmetry", "no finished run of 01_direction_magnitude"),  # only a running run
            ("width_check", "finished runs of 08_width: not logged: token_dim"),
            ("sampler", "finished runs of 05_flow_matching: not logged: kid_images_sampler_euler_project, "
                        "kid_images_sampler_expmap")]:
        assert claims.loc[cid, "verdict"] == report.NO_RUN, cid
        assert claims.loc[cid, ours] == msg, cid
        assert pd.isna(claims.loc[cid, "run"]), cid
    assert claims.loc["ddt_head", "verdict"] == report.NOT_CPU  # the run said why and how
    assert claims.loc["ddt_head", ours] == "needs a 384-wide head; lab run X"
    assert claims.loc["ddt_head", "run"] == f"07_ae_ablations/{scene['ae'].id}"
    assert (f"  Ours: run `05_flow_matching/{new.id}`, commit `{report.commit_text(new)}`, device "
            f"`{new.meta['device']}`, parameters `steps=10, path='slerp'`") in readme
    assert "- `lambda_sweep` (HAE: Hyperspherical Autoencoder (../shared/papers/000_*), Tab. 6)" in readme
    assert "(text lost: the λ symbols" in readme
    assert f"the rows read 0.0, 1.0, 0.1). Primary metric: {C.BY_ID['lambda_sweep'].primary}." in readme
    assert "  Ours: finished runs of 08_width: not logged: token_dim" in readme
    n = scene["summary"]["claims"]
    assert (n[SUPPORTED], n[REVERSED], n[report.DIRTY], n[report.NOT_CPU], n[report.NOT_MEASURED]) == (2, 1, 1, 1, 0)
    assert n[report.NO_RUN] == len(C.CLAIMS) - 5
    assert f"Verdicts: 2 supported, 0 not shown at this scale, 1 reversed at this scale, " in readme


def test_dirty_reason():
    class R:
        meta = {"commit": "abcdef1234567", "dirty": False}
    assert report.dirty_reason(R) == ""
    R.meta = {"commit": "abcdef1234567", "dirty": True, "diff_sha256": "0123456789abcdef"}
    assert report.dirty_reason(R) == "dirty tree: commit abcdef1234 plus uncommitted edit sha256 0123456789ab"
    R.meta = {"commit": "abcdef1234567"}
    assert "whether the tree was clean is unknown" in report.dirty_reason(R)
    R.meta = {"commit": None, "dirty": False}
    assert "no git commit recorded" in report.dirty_reason(R)


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
    with pytest.raises(RuntimeError, match="refusing to write into .*README.md.*--force"):
        report.build(scene["root"], out)
    assert report.main(["--runs", str(scene["root"]), "--out", str(out)]) == 2
    assert (out / "README.md").read_text() == "# my notes\n"
    # --force writes beside a user's files, never over them: their README.md stays
    assert report.main(["--runs", str(scene["root"]), "--out", str(out), "--force"]) == 2
    assert (out / "README.md").read_text() == "# my notes\n"
    (out / "README.md").unlink()
    assert report.main(["--runs", str(scene["root"]), "--out", str(out)]) == 0
    assert (out / "README.md").read_text().startswith(report.MARKER)
    report.build(scene["root"], out)  # our own output is replaced without --force


def test_empty_runs_folder_gives_no_run_yet_everywhere(tmp_path):
    s = report.build(tmp_path / "none", tmp_path / "out")
    assert s["claims"][report.NOT_CPU] == 0  # every claim has a CPU recipe today
    assert s["claims"][report.NO_RUN] + s["claims"][report.NOT_MEASURED] == len(C.CLAIMS)
    assert "No finished runs yet." in (tmp_path / "out" / "README.md").read_text()




# ----------------------------------------------------------------------------------------------
# Bad or filtered metrics
# ----------------------------------------------------------------------------------------------

def test_unreadable_metrics_do_not_break_the_report(tmp_path):
    bad = probe(0.9, 0.88)
    bad[C.seed_key(C.probe_key("student", "gap"), 1)] = "oops"
    make_run(tmp_path, "03_linear_probe", {"n": 1}, bad)
    latest = report.latest_done(runs.list_runs(tmp_path))
    row = report.evaluate(C.BY_ID["probe_teacher_student"], latest)
    assert row["verdict"] == NOT_SHOWN and row["note"].startswith("unreadable metrics (ValueError")
    only_n2 = C.Claim("x", C.HAE, "Tab. 1", "s", "n", "03_linear_probe", (), C.rule_probe, params={"n": 2})
    row = report.evaluate(only_n2, latest)
    assert row["verdict"] == report.NO_RUN and row["run"] is None
    assert row["note"] == "no finished run of 03_linear_probe with {'n': 2}"
    only_n1 = C.Claim("y", C.HAE, "Tab. 1", "s", "n", "03_linear_probe", (), C.rule_probe, params={"n": 1})
    assert report.evaluate(only_n1, latest)["run"].params == {"n": 1}


def test_an_older_run_that_logs_the_keys_is_used_when_the_newest_does_not(tmp_path):
    good = make_run(tmp_path, "03_linear_probe", {"n": 1}, probe(0.9, 0.89))
    make_run(tmp_path, "03_linear_probe", {"n": 2}, {"unrelated": 1.0})
    row = report.evaluate(C.BY_ID["probe_teacher_student"], report.latest_done(runs.list_runs(tmp_path)))
    assert row["run"].id == good.id and row["verdict"] == SUPPORTED


@pytest.mark.parametrize("module", ["lab.report", "lab.infra.report", "lab.commands.report"])
def test_a_report_written_before_the_move_is_ours_to_replace(tmp_path, module):
    """Reports written as lab.report and as lab.infra.report (today's committed reports/) have no manifest."""
    from lab.commands import report_files
    out = tmp_path / "reports"
    out.mkdir()
    (out / "README.md").write_text(f"<!-- generated by `python -m {module}` from runs/; edit lab/report.py, "
                                   "not this file -->\n# Results\n")
    assert report_files.legacy_owned(out, report.OUR_MARKERS) == ["README.md"]
    (out / "README.md").write_text("# someone's own notes\n")
    assert report_files.legacy_owned(out, report.OUR_MARKERS) == []


def test_a_not_shown_row_says_its_power_and_a_gpu_only_claim_its_command(tmp_path):
    make_run(tmp_path, "05_flow_matching", {"n": 1}, fm_vals([0.05, 0.04, 0.06], 0.05))
    gpu = C.Claim("big", C.RAE, "Tab. 9", "s", "n", "", (),
                  gpu_only="needs 256 px on a GPU; lab run 05_flow_matching -p image_size 256")
    report.build(tmp_path, tmp_path / "out", claims=[C.BY_ID["euclid_vs_riemann"], gpu])
    df = pd.read_csv(tmp_path / "out" / "claims.csv").set_index("claim")
    row = df.loc["euclid_vs_riemann"]
    assert row["verdict"] == NOT_SHOWN and "(±0.0248 at 3 seeds) → not shown at this scale" in row[report.OURS]
    assert ("the paper's effect (gFID 15.95 → 2.65: -83% of our baseline 0.05 = 0.0417) was detectable at 3 seeds"
            in row[report.OURS])
    assert df.loc["big", "verdict"] == report.NOT_CPU and df.loc["big", report.OURS] == gpu.gpu_only
    intro = (tmp_path / "out" / "README.md").read_text().split("## Claims")[0]
    assert "primary metric" in intro and "minimum detectable effect" in intro and report.NOT_CPU in intro
