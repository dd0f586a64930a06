"""Every notebook runs top to bottom through papermill at a smoke size, its run ends `done`, and every
claim it feeds (lab.claims) finds its keys and values that pass cheap invariants.

The smoke parameters shrink data, steps and sweeps; the code path is the one `make reproduce` runs.
Runs and the shared models go to a temporary LAB_RUNS_DIR, never into the repository's runs/.
A renamed metric key fails here (the claim would read "no run yet"), and so do values that break
what holds by construction at any size: slerp's radial share is 0, standardised DINO tokens give
0.5, the U-curve moves with the decode radius, the logged swap medians are the table's.
"""
import json
import math
import os
from pathlib import Path

import pandas as pd
import pytest

from lab import claims, runs
from lab.commands import nbtools

SHARED_HAE_STEPS = "2,1,1,1"
NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))

SMOKE = {
    "00_explorer": dict(n_train=64, ae_steps=4, n_images=16, image=2, dino_size=56),  # nb 01's smoke RAE: trained once
    "01_direction_magnitude": dict(n_train=64, ae_steps=4, n_eval=48, n_anchors=6, norm_factors=[0.5, 1.0], dino_size=56,
                                   angle_scales=[0.1], seeds=2),
    "02_radial_share": dict(n=32, n_train=64, gae_steps=3, vae_steps=3, finetune_steps=2, seeds=2),
    "03_linear_probe": dict(probe_train=60, probe_test=40, seeds=2),
    "04_pca_maps": dict(n_images=2),
    "05_flow_matching": dict(n_train=64, ae_steps=3, gen_steps=4, batch_size=16, width=32, depth=1,
                             sampler_steps=[2], sample_steps=2, n_samples=24, n_cfg4=12, paper_steps=3, feature_size=32, n_classifier=64, seeds=2),
    "06_decoder_scale": dict(n_train=64, ae_steps=3, gen_steps=4, batch_size=16, width=32, depth=1,
                             sample_steps=2, scales=[0.5, 1.0, 2.0], n_samples=24, feature_size=32, n_classifier=64,
                             seeds=2),
    "07_ae_ablations": dict(n_train=32, n_eval=24, hae_arm_steps=2, rae_steps=3, sigmas=[0.0, 0.5], gae_steps=3,
                            gae_aligns=["pre", "post", "latent"], probe_train=60, probe_test=40, gen_steps=4, n_gen=24,
                            sample_steps=2, feature_size=32, seeds=2),
    "08_width": dict(widths=[4, 8], token_dim=8, steps=20, batch_size=32, seeds=2),
}


def test_every_notebook_has_smoke_parameters():
    assert {p.stem for p in NOTEBOOKS} == set(SMOKE)
    for nb in NOTEBOOKS:
        declared = runs.read_parameters(nb)
        assert set(SMOKE[nb.stem]) <= set(declared), nb.stem
        cells = json.loads(nb.read_text())["cells"]
        assert not any(c.get("outputs") for c in cells if c["cell_type"] == "code"), f"{nb.name} has outputs"


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_runs_at_smoke_size(nb, tmp_path_factory, monkeypatch):
    root = tmp_path_factory.getbasetemp() / "smoke_runs"  # shared: the zoo's models are reused across notebooks
    monkeypatch.setenv("LAB_RUNS_DIR", str(root))
    monkeypatch.setenv("LAB_HAE_STEPS", SHARED_HAE_STEPS)  # the one shared HAE (lab.zoo.hae), at smoke size
    res = nbtools.execute(nb, SMOKE[nb.stem], runs_dir=str(root), check=False)
    assert res["status"] == "done", res.get("error")
    run_dir = Path(res["dir"])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics, "the notebook logged no metrics"
    assert list((run_dir / "figures").glob("*.png")), "the notebook saved no figure"
    assert (run_dir / f"{nb.stem}.ipynb").is_file()
    check_claims(nb.stem, metrics)
    INVARIANTS.get(nb.stem, lambda m, d: None)(metrics, run_dir)


def check_claims(stem, m):
    """Every claim this notebook feeds reads its keys: a verdict or `not shown`, never `no run yet`."""
    fed = [c for c in claims.CLAIMS if c.notebook == stem and c.id not in NOT_YET.get(stem, ())]
    for c in fed:
        tests, verdict, note = claims.judge(c, m)
        assert verdict != claims.NO_RUN, (c.id, note)
        if verdict == claims.NOT_CPU and not tests:  # logged cpu_scale.<claim>: nothing measured to show
            assert note, c.id
            continue
        assert tests and all(t.seeds for t in tests), (c.id, note)
        assert all(math.isfinite(v) for t in tests for v in t.values), (c.id, [t.text() for t in tests])
    seeds = SMOKE[stem].get("seeds")
    if seeds and fed:  # every configuration ran once per seed, paired by seed
        assert {s for c in fed for t in claims.judge(c, m)[0] for s in t.seeds} == set(range(seeds)), stem


# claims whose notebook does not produce their numbers yet (the report says "no run yet" for them)
NOT_YET = {}


def swap_medians_are_the_tables(m, run_dir):
    d = pd.read_csv(run_dir / "tables" / "distances.csv")
    d = d[d.probe == "swap"]
    names = dict(zip(("anchor dir + neighbour radius", "anchor radius + neighbour dir", "whole neighbour"),
                     claims.SWAP_VARIANTS))
    for (s, metric, variant), v in d.groupby(["seed", "metric", "variant"])["value"].median().items():
        assert m[claims.seed_key(claims.swap_key(metric, names[variant]), s)] == pytest.approx(v), (s, metric, variant)
    assert all(m[claims.seed_key(claims.swap_key(d, "whole"), s)] > 0 for d in ("lpips", "dino") for s in (0, 1))


def radial_shares_hold_by_construction(m, run_dir):
    for name in ("dino", "dino_affine_free", "gae", "vae", "sphvae", "hae"):
        for s in (0, 1):
            assert m[claims.seed_key(claims.share_key(name, "slerp", "max"), s)] <= claims.SLERP_TOL, name
            for where in ("start", "end"):
                assert 0 <= m[claims.seed_key(claims.share_key(name, "linear", where), s)] <= 1, name
    for where in ("start", "end"):  # standardised tokens (norm √C) against a Gaussian prior: 0.5, in both coordinates
        for coords in ("training", "raw"):
            key = claims.share_key("dino_affine_free", "linear", where, coords=coords)
            assert m[claims.seed_key(key, 0)] == pytest.approx(0.5, abs=0.08), coords
    # every seed reads the one shared HAE (zoo.hae's defaults at the smoke stage lengths): no HAE per seed
    steps = [int(k) for k in SHARED_HAE_STEPS.split(",")]
    haes = [json.loads(d.read_text())["recipe"] for d in (run_dir.parents[1] / "_zoo").glob("hae-*/done.json")]
    assert len([r for r in haes if r["data"] == "photos" and r["stem"] == "conv" and r["align"] == "cosine"
                and r["stage_steps"] == steps]) == 1


def accuracies_are_fractions(m, run_dir):
    for who in ("teacher", "student", "pixels"):
        for pool in ("gap", "flatten"):
            for s in (0, 1):
                assert 0 <= m[claims.seed_key(claims.probe_key(who, pool), s)] <= 1, (who, pool)
    # each seed probes its own block of images: one shared HAE and one fixed split gave identical seeds
    df = pd.read_csv(run_dir / "tables" / "linear_probe.csv")
    blocks = df.groupby("seed")[["train_offset", "test_offset"]].first()
    assert blocks.train_offset.is_unique and blocks.test_offset.is_unique
    teacher = [[m[claims.seed_key(claims.probe_key("teacher", pool), s)] for s in (0, 1)] for pool in ("gap", "flatten")]
    assert any(a != b for a, b in teacher), teacher


def pca_at_the_trained_grid(m, run_dir):
    assert m["grid"] == SMOKE["04_pca_maps"].get("size", 64) // 16
    assert -1 <= m["token_cos"] <= 1


def spherical_samples_stay_on_the_sphere(m, run_dir):
    for s in (0, 1):
        for lam in (0.0, 0.1, 1.0):  # exp-map samples of a slerp generator keep every token's norm
            assert m[claims.seed_key(f"norm_cv_{claims.lambda_config(lam)}", s)] < 1e-3
        assert m[claims.seed_key("norm_cv_euclidean", s)] > 1e-3  # Euler on a linear path does not


def u_curve_moves_with_the_decode_radius(m, run_dir):
    u = pd.read_csv(run_dir / "tables" / "u_curve.csv")
    for (name, s), g in u.groupby(["latents", "seed"]):
        assert g.fd_generated.max() - g.fd_generated.min() > 1e-3 * g.fd_generated.max(), (name, s)
        assert g.psnr_reconstruction.max() - g.psnr_reconstruction.min() > 1e-3, (name, s)
        best = g.fd_generated.iloc[1:-1].min()
        assert m[claims.seed_key(claims.u_key(name, "fd_best_interior"), s)] == pytest.approx(best)


def floors_are_closed_form(m, run_dir):
    n = SMOKE["08_width"]["token_dim"]
    for w in SMOKE["08_width"]["widths"]:
        for s in (0, 1):
            assert m[claims.seed_key(claims.width_key("floor", w), s)] == pytest.approx(max(n - w, 0) / n)
            assert m[claims.seed_key(claims.width_key("loss", w), s)] >= 0


INVARIANTS = {"01_direction_magnitude": swap_medians_are_the_tables, "02_radial_share": radial_shares_hold_by_construction,
              "03_linear_probe": accuracies_are_fractions, "04_pca_maps": pca_at_the_trained_grid,
              "05_flow_matching": spherical_samples_stay_on_the_sphere,
              "06_decoder_scale": u_curve_moves_with_the_decode_radius, "08_width": floors_are_closed_form}


@pytest.mark.parametrize("nb", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_cells_hold_no_functions_and_no_imports_in_loops(nb):
    for cell in json.loads(nb.read_text())["cells"]:
        if cell["cell_type"] != "code":
            continue
        lines = "".join(cell["source"]).splitlines()
        assert not any(l.lstrip().startswith(("def ", "class ", "lambda")) for l in lines), nb.stem
        assert not any(l.startswith((" ", "\t")) and l.lstrip().startswith(("import ", "from ")) for l in lines), nb.stem
