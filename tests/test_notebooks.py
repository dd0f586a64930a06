"""Every notebook runs top to bottom through papermill at a smoke size, and its run ends `done`.

The smoke parameters shrink data, steps and sweeps; the code path is the one `make reproduce` runs.
Runs and the shared models go to a temporary LAB_RUNS_DIR, never into the repository's runs/.
"""
import json
import os
from pathlib import Path

import pytest

from lab import runs
from lab.infra import nbtools

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("[0-9][0-9]_*.ipynb"))

SMOKE = {
    "01_direction_magnitude": dict(n_train=64, ae_steps=4, n_eval=48, n_anchors=6, norm_factors=[0.5, 1.0], dino_size=56,
                                   angle_scales=[0.1]),
    "02_radial_share": dict(n=32, n_train=64, gae_steps=3, vae_steps=3, finetune_steps=2),
    "03_linear_probe": dict(n_train=32, hae_steps=2, probe_train=60, probe_test=40),
    "04_pca_maps": dict(n_train=32, hae_steps=2, pca_size=64, n_images=2),
    "05_flow_matching": dict(n_train=64, ae_steps=3, gen_steps=4, batch_size=16, width=32, depth=1,
                             radial_weights=[0.0], sampler_steps=[2], sample_steps=2, n_samples=24),
    "06_decoder_scale": dict(n_train=64, ae_steps=3, gen_steps=4, batch_size=16, width=32, depth=1,
                             sample_steps=2, scales=[0.5, 1.0], n_samples=24),
    "07_ae_ablations": dict(n_train=32, n_eval=24, hae_steps=2, rae_steps=3, sigmas=[0.0, 0.5], gae_steps=3,
                            gae_aligns=["latent"], probe_train=60, probe_test=40),
    "08_width": dict(widths=[4, 8], token_dim=8, steps=20, batch_size=32),
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
    res = nbtools.execute(nb, SMOKE[nb.stem], runs_dir=str(root), check=False)
    assert res["status"] == "done", res.get("error")
    run_dir = Path(res["dir"])
    assert json.loads((run_dir / "status.json").read_text())["status"] == "done"
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics, "the notebook logged no metrics"
    assert list((run_dir / "figures").glob("*.png")), "the notebook saved no figure"
    assert (run_dir / f"{nb.stem}.ipynb").is_file()
