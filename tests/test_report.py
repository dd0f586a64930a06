"""lab.infra.report: tables from the latest done runs only, claims with verdicts, failed/stale apart.

The claim readers are tested on metrics built with the same f-strings the notebooks use to name
their keys, with hand-computed verdicts."""
import re
import subprocess
import sys

import pandas as pd
import pytest

from lab import runs
from lab.infra import report

SUPPORTED, NOT_SHOWN, REVERSED = report.SUPPORTED, report.NOT_SHOWN, report.CONTRADICTED


def _dead_pid():
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def mentions(text, run_id):
    """Whether `run_id` appears as a whole id (not as the prefix of `<id>-2`)."""
    return re.search(re.escape(run_id) + r"(?![-\w])", text) is not None


def claim(claim_id):
    return next(c for c in report.CLAIMS if c.id == claim_id)


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


# ----------------------------------------------------------------------------------------------
# Metrics named exactly as the notebooks name them (see each notebook's last cells)
# ----------------------------------------------------------------------------------------------

def swap_metrics(anchor_dir, anchor_radius, whole, key="lpips_alex"):  # 01
    m = {f"swap_{key}_anchor_dir": anchor_dir, f"swap_{key}_anchor_radius": anchor_radius,
         f"swap_{key}_whole_neighbour": whole}
    m[f"swap_asymmetry_{key}"] = anchor_radius / max(anchor_dir, 1e-12)
    return m


def share_metrics(linear, slerp, dip_mid, name="dino_affine_free"):  # 02: (start, end, max) per path
    m = {f"{name}_dip_mid": dip_mid}
    for path, (start, end, top) in (("linear", linear), ("shell", (0.2, 0.2, 0.3)), ("slerp", slerp)):
        m[f"{name}_share_{path}_start"], m[f"{name}_share_{path}_end"] = start, end
        m[f"{name}_share_{path}_max"] = top
    return m


def probe_metrics(acc):  # 03: {(who, pool): accuracy}
    return {f"acc_{who}_{pool}": a for (who, pool), a in acc.items()}


def fm_metrics(fd_config, fd_sampler, best):  # 05: {config: fd}, {(method, steps): fd}
    m = {f"fd_images_{c}": v for c, v in fd_config.items()}
    m.update({f"fd_tokens_{c}": v / 10 for c, v in fd_config.items()})
    m.update({f"fd_images_{meth}_{steps}": v for (meth, steps), v in fd_sampler.items()})
    m["fd_name"] = "FD-effnet"
    m["best_riemannian"] = best
    return m


def lambda_configs(fd_by_lambda):  # 05 names its configs riemannian_l{l:g}
    return {f"riemannian_l{lam:g}": v for lam, v in fd_by_lambda.items()}


def scale_metrics(lo, best, hi, best_scale, best_recon):  # 06
    return {"best_scale": best_scale, "fd_at_best": best, "fd_at_1": best + 1.0,
            "fd_at_min_scale": lo, "fd_at_max_scale": hi, "best_scale_reconstruction": best_recon,
            "radius": 8.0}


SIGMAS = [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]


def noise_metrics(noise_tau, psnr):  # 07: psnr(train_tau, sigma)
    m = {f"noise_psnr_tau{t:g}_sigma{s:g}": psnr(t, s) for t in (0.0, noise_tau) for s in SIGMAS}
    m["noise_tau"] = noise_tau
    return m


def ae_metrics(psnr_by_model):  # 07: model "HAE conv/cosine" -> psnr_conv_cosine
    return {f"psnr_{model.replace('HAE ', '').replace('/', '_')}": v for model, v in psnr_by_model.items()}


def width_metrics(token_dim, loss_by_width):  # 08
    return {**{f"loss_w{w}": v for w, v in loss_by_width.items()},
            **{f"floor_w{w}": max(token_dim - w, 0) / token_dim for w in loss_by_width},
            "token_dim": token_dim}


# ----------------------------------------------------------------------------------------------
# A runs folder with superseded, failed, stale and running runs
# ----------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scene(tmp_path_factory):
    root = tmp_path_factory.mktemp("runs")
    fm = "05_flow_matching"
    s = {"root": root}
    s["old"] = make_run(root, fm, {"steps": 10, "path": "slerp"},
                        {"fd_images_riemannian_l0": 10.0, "fd_images_euclidean": 20.0})
    s["new"] = make_run(root, fm, {"steps": 10, "path": "slerp"},
                        {"fd_images_riemannian_l0": 12.0, "fd_images_euclidean": 20.5,
                         "fd_images_riemannian_l0.1": 11.0, "fd_images_riemannian_l1": 15.0},
                        figure=True, table={"t": [0.0, 1.0], "loss": [1.0, 0.5]})
    s["other"] = make_run(root, fm, {"steps": 20, "path": "slerp"}, {"other": 1.0})
    s["failed"] = make_run(root, fm, {"steps": 10, "path": "slerp"},
                           {"fd_images_riemannian_l0": 999.0, "fd_images_euclidean": 999.0},
                           status="failed")
    s["stale"] = make_run(root, fm, {"steps": 30, "path": "slerp"},
                          {"fd_images_riemannian_l0": 888.0}, status="stale")
    s["radial"] = make_run(root, "02_radial_share", {"n": 4},
                           share_metrics((0.5, 0.45, 0.5), (0.0, 0.0, 0.0), 0.7))
    s["probe"] = make_run(root, "03_linear_probe", {"n": 4}, probe_metrics({
        ("teacher", "gap"): 0.9, ("student", "gap"): 0.6,
        ("teacher", "flatten"): 0.85, ("student", "flatten"): 0.7}))
    s["width"] = make_run(root, "08_width", {"n": 4}, {"loss_w8": 0.8})  # no token_dim
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
    assert csv["fd_images_riemannian_l0"].tolist()[0] == 12.0
    assert csv["fd_images_riemannian_l0.1"].tolist()[0] == 11.0
    # the figure is copied and captioned with run, commit, device and parameters
    fig = out / "figures" / scene["new"].id / "samples.png"
    assert fig.read_bytes() == (scene["new"].dir / "figures" / "samples.png").read_bytes()
    caption = [l for l in page.splitlines() if l.startswith("*samples: run")][0]
    assert scene["new"].id in caption and "commit `" in caption
    assert "device `cpu" in caption or "device `cuda" in caption
    assert "steps=10" in caption
    assert (out / "tables" / scene["new"].id / "curve.csv").exists()


def test_claims_index_has_verdicts_and_provenance(scene):
    readme = (scene["out"] / "README.md").read_text()
    claims = pd.read_csv(scene["out"] / "claims.csv").set_index("claim")
    assert list(claims.index) == [c.id for c in report.CLAIMS]
    new = scene["new"]
    # the latest done run that logs both keys: not `old` (superseded), `other` (lacks them), `failed`
    assert claims.loc["euclid_vs_riemann", "verdict"] == SUPPORTED  # 12 < 20.5 · 0.95
    assert ("fd_images_riemannian_l0 = 12 vs fd_images_euclidean = 20.5 (lower is better)"
            == claims.loc["euclid_vs_riemann", "what we measured"])
    assert claims.loc["euclid_vs_riemann", "run"] == f"05_flow_matching/{new.id}"
    assert claims.loc["lambda_sweep", "verdict"] == report.MEASURED
    assert claims.loc["lambda_sweep", "what we measured"] == "FD-effnet at λ = 0 / 0.1 / 1: 12 / 11 / 15"
    assert claims.loc["radial_share", "verdict"] == SUPPORTED
    assert claims.loc["probe_teacher_student", "verdict"] == REVERSED  # gap 0.3 > 0.10
    for cid, msg in [
            ("u_curve", "no finished run of 06_decoder_scale"),
            ("stem_vs_patch", "no finished run of 07_ae_ablations"),
            ("noise_tradeoff", "no finished run of 07_ae_ablations"),
            ("swap_asymmetry", "no finished run of 01_direction_magnitude"),  # only a running run
            ("width_check", "finished runs of 08_width do not log token_dim"),
            ("sampler", "finished runs of 05_flow_matching do not log best_riemannian")]:
        assert claims.loc[cid, "verdict"] == report.NO_RUN, cid
        assert claims.loc[cid, "what we measured"] == msg, cid
        assert pd.isna(claims.loc[cid, "run"]), cid
    assert (f"- `euclid_vs_riemann`: run `05_flow_matching/{new.id}`, commit "
            f"`{report.commit_text(new)}`, device `{new.meta['device']}`, parameters "
            "`steps=10, path='slerp'`") in readme
    assert "- `width_check`: finished runs of 08_width do not log token_dim" in readme
    assert scene["summary"]["claims"] == {SUPPORTED: 2, NOT_SHOWN: 0, REVERSED: 1,
                                          report.MEASURED: 1, report.NO_RUN: 7}
    assert ("Verdicts: 2 supported, 0 not shown at this scale, 1 reversed at this scale, "
            "1 measured (the paper states no direction), 7 no run yet.") in readme


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


# ----------------------------------------------------------------------------------------------
# Every claim reads what the notebooks log
# ----------------------------------------------------------------------------------------------

NOTEBOOK_LIKE = {
    "01_direction_magnitude": swap_metrics(0.1, 0.4, 0.45),
    "02_radial_share": {**share_metrics((0.5, 0.46, 0.5), (0.0, 0.0, 0.0), 0.71),
                        **share_metrics((0.4, 0.4, 0.4), (0.0, 0.0, 0.0), 0.9, name="gae")},
    "03_linear_probe": probe_metrics({("teacher", "gap"): 0.82, ("student", "gap"): 0.80,
                                      ("teacher", "flatten"): 0.85, ("student", "flatten"): 0.84,
                                      ("pixels", "flatten"): 0.75}),
    "05_flow_matching": fm_metrics({"euclidean": 40.0, **lambda_configs({0.0: 30.0, 0.1: 28.0, 1.0: 33.0})},
                                   {(meth, k): fd for meth, fds in (("euler", (50.0, 40.0, 31.0)),
                                                                    ("euler_project", (45.0, 38.0, 30.0)),
                                                                    ("expmap", (47.0, 36.0, 28.0)))
                                    for k, fd in zip((4, 8, 25), fds)}, best="riemannian_l0.1"),
    "06_decoder_scale": scale_metrics(30.0, 8.0, 25.0, 1.1, 1.0),
    "07_ae_ablations": {**ae_metrics({"HAE conv/cosine": 24.0, "HAE patch/cosine": 22.5,
                                      "HAE conv/mse": 23.9}),
                        **noise_metrics(0.8, lambda t, s: 30.0 - 15.0 * s if t == 0 else 29.5 - 7.5 * s)},
    "08_width": width_metrics(384, {64: 0.84, 128: 0.67, 384: 0.02, 512: 0.01}),
}
NOTEBOOK_VERDICTS = {
    "swap_asymmetry": SUPPORTED,          # 0.4 / 0.1 = 4 >= 1.5
    "radial_share": SUPPORTED,            # slerp 0, linear ends 0.5 / 0.46 >= 0.3
    "probe_teacher_student": SUPPORTED,   # gap 0.02 <= 0.03
    "stem_vs_patch": SUPPORTED,           # 24 - 22.5 = 1.5 dB > 0.3
    "cosine_vs_mse": NOT_SHOWN,           # 24 - 23.9 = 0.1 dB within 0.3
    "euclid_vs_riemann": SUPPORTED,       # 30 < 40 · 0.95
    "lambda_sweep": report.MEASURED,
    "sampler": NOT_SHOWN,                 # 4 steps: expmap 47 vs min(50, 45) = 45: within 5 %
    "u_curve": SUPPORTED,                 # 8 < 30 and 8 < 25
    "noise_tradeoff": SUPPORTED,          # σ=1: 29.5 - 7.5 = 22 > 30 - 15 = 15 + 0.3
    "width_check": SUPPORTED,             # narrow at their floors, wide below 1 - 128/384
}


def test_every_claim_reads_the_keys_the_notebooks_log(tmp_path):
    for exp, m in NOTEBOOK_LIKE.items():
        make_run(tmp_path, exp, {"seed": 0}, m)
    latest = report.latest_done(runs.list_runs(tmp_path))
    got = {c.id: report.evaluate(c, latest) for c in report.CLAIMS}
    assert set(got) == set(NOTEBOOK_VERDICTS)
    for cid, row in got.items():
        assert not row["measured"].startswith(("unreadable", "no ", "finished runs")), (cid, row["measured"])
        assert row["verdict"] == NOTEBOOK_VERDICTS[cid], (cid, row["measured"])
    assert got["sampler"]["measured"] == "FD-effnet at 4 steps: Euler 50, Euler+projection 45, exp map 47"
    assert got["noise_tradeoff"]["measured"] == ("PSNR on clean latents: trained without noise 30, with "
                                                 "τ=0.8 29.5 dB; at σ=1: 15 vs 22 dB")


# ----------------------------------------------------------------------------------------------
# Readers, one by one, on hand-computed numbers
# ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("ours, base, lower, margin, relative, verdict", [
    (10.0, 20.0, True, 0.05, True, SUPPORTED),
    (19.5, 20.0, True, 0.05, True, NOT_SHOWN),  # 2.5 % better: inside the margin
    (25.0, 20.0, True, 0.05, True, REVERSED),
    (30.0, 29.5, False, 0.3, False, SUPPORTED),  # PSNR +0.5 dB
    (30.0, 29.9, False, 0.3, False, NOT_SHOWN),
    (29.0, 30.0, False, 0.3, False, REVERSED),  # PSNR −1 dB
    (float("nan"), 20.0, True, 0.0, False, NOT_SHOWN),
])
def test_versus_margins(ours, base, lower, margin, relative, verdict):
    text, got = report.versus("a", "b", lower=lower, margin=margin, relative=relative)(
        {"a": ours, "b": base})
    assert got == verdict and "a = " in text and "b = " in text


@pytest.mark.parametrize("anchor_dir, anchor_radius, verdict", [
    (0.1, 0.4, SUPPORTED),     # ratio 4
    (0.25, 0.375, SUPPORTED),  # ratio exactly 1.5
    (0.2, 0.25, NOT_SHOWN),    # ratio 1.25
    (0.4, 0.1, REVERSED),      # ratio 0.25: the radius moves the decode more
    (0.0, 0.3, SUPPORTED),     # the radius alone changes nothing
])
def test_read_swap(anchor_dir, anchor_radius, verdict):
    text, got = report.read_swap(swap_metrics(anchor_dir, anchor_radius, 0.45))
    assert got == verdict
    assert f"anchor direction + neighbour radius {anchor_dir:.4g}" in text and "whole neighbour 0.45" in text
    if anchor_dir == 0.1:
        assert text.endswith("(ratio 4)")


@pytest.mark.parametrize("linear, slerp_max, verdict", [
    ((0.5, 0.48), 0.0, SUPPORTED),
    ((0.5, 0.48), 5e-5, SUPPORTED),    # float noise on a tangent target
    ((0.2, 0.5), 0.0, NOT_SHOWN),      # slerp tangent, but the linear path is hardly radial
    ((0.5, 0.48), 0.01, NOT_SHOWN),    # slerp not quite tangent, still below linear
    ((0.5, 0.48), 0.5, REVERSED),      # slerp as radial as the linear path
])
def test_read_radial_share(linear, slerp_max, verdict):
    text, got = report.read_radial_share(share_metrics((*linear, 0.5), (0.0, 0.0, slerp_max), 0.71))
    assert got == verdict
    assert (f"linear-path radial share {linear[0]:.4g} near noise, {linear[1]:.4g} near data, "
            f"slerp max {slerp_max:.4g}, midpoint norm dip 0.71") in text
    assert "raw tokens" not in text  # the raw-token numbers appear only when logged


def test_read_radial_share_adds_raw_tokens_when_logged():
    m = share_metrics((0.5, 0.48, 0.5), (0.0, 0.0, 0.0), 0.71)
    m.update(share_metrics((0.17, 0.8, 0.8), (0.0, 0.0, 0.0), 0.56, name="dino"))
    m["dino_norm_mean_over_shell_raw"] = 2.02
    text, got = report.read_radial_share(m)
    assert got == SUPPORTED and "mean norm 2.02·√C" in text and "0.17 near noise, 0.8 near data" in text


@pytest.mark.parametrize("teacher, student, verdict", [
    (0.85, 0.84, SUPPORTED),  # gap 0.01
    (0.90, 0.85, NOT_SHOWN),  # gap 0.05
    (0.90, 0.75, REVERSED),   # gap 0.15
])
def test_read_probe(teacher, student, verdict):
    acc = {("teacher", "gap"): teacher, ("student", "gap"): student,
           ("teacher", "flatten"): 0.8, ("student", "flatten"): 0.7, ("pixels", "flatten"): 0.6}
    text, got = report.read_probe(probe_metrics(acc))
    assert got == verdict
    assert f"GAP: teacher {teacher:.4g}, student {student:.4g} (gap {teacher - student:.4g})" in text
    assert "flatten: teacher 0.8, student 0.7; pixels 0.6" in text
    del acc[("pixels", "flatten")]  # the pixel baseline is optional
    assert report.read_probe(probe_metrics(acc)) == (text.replace("pixels 0.6", "pixels nan"), verdict)


@pytest.mark.parametrize("fd", [{0.0: 10.0, 0.1: 9.0, 1.0: 14.0}, {0.0: 10.0, 0.1: 13.0, 1.0: 8.0}])
def test_read_lambda_only_reports(fd):
    text, got = report.read_lambda(fm_metrics(lambda_configs(fd), {}, best="riemannian_l0"))
    assert got == report.MEASURED  # the paper states no direction: no verdict either way
    assert text == "FD-effnet at λ = 0 / 0.1 / 1: " + " / ".join(f"{v:.4g}" for v in fd.values())


def sampler_sweep(at4, at25=(20.0, 20.0, 30.0)):
    """(euler, euler_project, expmap) FDs at 4 and 25 steps, plus 8 steps in between."""
    fds = {}
    for k, trio in ((4, at4), (8, (35.0, 35.0, 35.0)), (25, at25)):
        fds.update({(meth, k): v for meth, v in zip(("euler", "euler_project", "expmap"), trio)})
    return fm_metrics({}, fds, best="riemannian_l0.1")


@pytest.mark.parametrize("at4, verdict", [
    ((30.0, 25.0, 20.0), SUPPORTED),  # 20 < 0.95 · 25 = 23.75
    ((30.0, 25.0, 24.5), NOT_SHOWN),  # within 5 % of 25
    ((20.0, 25.0, 30.0), REVERSED),   # 30 > 1.05 · 20 = 21
])
def test_read_sampler_reads_the_fewest_steps(at4, verdict):
    text, got = report.read_sampler(sampler_sweep(at4))  # 25 steps would read reversed every time
    assert got == verdict
    e, p, x = (f"{v:.4g}" for v in at4)
    assert text == f"FD-effnet at 4 steps: Euler {e}, Euler+projection {p}, exp map {x}"
    assert report.read_sampler({"best_riemannian": "riemannian_l0"}) == ("no sampler sweep logged", NOT_SHOWN)


@pytest.mark.parametrize("lo, best, hi, verdict", [
    (30.0, 8.0, 25.0, SUPPORTED),  # best at an interior scale
    (8.0, 8.0, 25.0, NOT_SHOWN),   # best at the smallest scale: monotone, not U-shaped
    (30.0, 8.0, 8.0, NOT_SHOWN),   # best at the largest scale
    (30.0, 8.0, 8.05, NOT_SHOWN),  # interior minimum, but the large end within 1%: no U
])
def test_read_u_curve(lo, best, hi, verdict):
    text, got = report.read_u_curve(scale_metrics(lo, best, hi, 1.1, 1.0))
    assert got == verdict
    assert text == (f"FD-effnet {lo:.4g} at the smallest scale, best {best:.4g} at scale 1.1, {hi:.4g} "
                    "at the largest; reconstruction PSNR peaks at scale 1")


@pytest.mark.parametrize("slope_on, verdict", [
    (7.5, SUPPORTED),  # σ=1: 29.5 − 7.5 = 22 > 15 + 0.3
    (14.5, NOT_SHOWN),  # 15.0 vs 15: no difference
    (16.0, REVERSED),   # 13.5 < 15 − 0.3
])
def test_read_noise_compares_at_the_largest_sigma(slope_on, verdict):
    m = noise_metrics(0.8, lambda t, s: 30.0 - 15.0 * s if t == 0 else 29.5 - slope_on * s)
    text, got = report.read_noise(m)
    assert got == verdict
    assert text == (f"PSNR on clean latents: trained without noise 30, with τ=0.8 29.5 dB; "
                    f"at σ=1: 15 vs {29.5 - slope_on:.4g} dB")


def test_read_noise_finds_keys_for_any_tau_the_notebook_formats():
    m = noise_metrics(0.12345, lambda t, s: 30.0 - 15.0 * s if t == 0 else 29.0 - 5.0 * s)
    text, got = report.read_noise(m)  # the notebook writes tau0.12345 ({:g}), not tau0.1235
    assert got == SUPPORTED and "τ=0.12345 29 dB" in text and "at σ=1: 15 vs 24 dB" in text


@pytest.mark.parametrize("losses, verdict", [
    # n = 16; floors (n − d)/n: d=8 0.5, d=12 0.25, d=16 0, d=32 0
    ({8: 0.5, 12: 0.24, 16: 0.01, 32: 0.005}, SUPPORTED),  # narrow ≥ 0.9 · floor, wide < 0.25
    ({8: 0.3, 12: 0.24, 16: 0.01, 32: 0.005}, REVERSED),   # d=8 fits below 0.9 · 0.5 = 0.45
    ({8: 0.5, 12: 0.24, 16: 0.30, 32: 0.005}, NOT_SHOWN),  # d=16 does not get below 0.25
])
def test_read_width(losses, verdict):
    text, got = report.read_width(width_metrics(16, losses))
    assert got == verdict
    assert text.startswith("n=16; d=8: loss ") and "d=12: loss 0.24 (floor 0.25)" in text
    assert text.index("d=8:") < text.index("d=12:") < text.index("d=32:")  # numeric, not string order


def test_read_width_needs_both_sides_of_the_token_dim():
    text, got = report.read_width(width_metrics(16, {4: 0.75, 8: 0.5}))
    assert got == NOT_SHOWN and text == "need widths on both sides of the token dimension 16"


# ----------------------------------------------------------------------------------------------
# Bad or filtered metrics
# ----------------------------------------------------------------------------------------------

def test_unreadable_metrics_do_not_break_the_report(tmp_path):
    bad = share_metrics((0.5, 0.5, 0.5), (0.0, 0.0, 0.0), 0.7)
    bad["dino_affine_free_share_linear_start"] = "oops"
    make_run(tmp_path, "02_radial_share", {"n": 1}, bad)
    latest = report.latest_done(runs.list_runs(tmp_path))
    row = report.evaluate(claim("radial_share"), latest)
    assert row["verdict"] == NOT_SHOWN and row["measured"].startswith("unreadable metrics (ValueError")
    only_n2 = report.Claim("x", "p", "t", "02_radial_share", ("dino_affine_free_share_slerp_max",),
                           lambda m: ("ok", SUPPORTED), where={"n": 2})
    row = report.evaluate(only_n2, latest)
    assert row["verdict"] == report.NO_RUN and row["run"] is None
    assert row["measured"] == "no finished run of 02_radial_share with {'n': 2}"
    row = report.evaluate(report.Claim("y", "p", "t", "02_radial_share", ("dino_affine_free_share_slerp_max",),
                                       lambda m: ("ok", SUPPORTED), where={"n": 1}), latest)
    assert row["verdict"] == SUPPORTED and row["run"].params == {"n": 1}
