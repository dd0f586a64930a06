"""lab.commands.batch (grid parsing, GPU slots, resume, SLURM script) and lab.commands.reproduce, with fake executors."""
import os
import threading
import time

import nbformat
import pytest

from lab import runs
from lab.commands import batch, reproduce

PARAMS = 'path = "linear"  # one of: linear, slerp\nlam = 0.0\nsteps = 10\nfast = False\ntag = "a"\n'


def make_notebook(folder, name="05_sweep"):
    nb = nbformat.v4.new_notebook()
    cell = nbformat.v4.new_code_cell(PARAMS)
    cell.metadata["tags"] = ["parameters"]
    nb.cells = [cell, nbformat.v4.new_code_cell(f'from lab import runs\nrun = runs.start("{name}", globals())')]
    path = folder / f"{name}.ipynb"
    nbformat.write(nb, path)
    return path


class FakeExecutor:
    """Records calls; writes a real `done` run (or a failed one) without starting a kernel."""

    def __init__(self, fail_when=None):
        self.calls, self.active, self.max_active = [], {}, {}
        self.fail_when = fail_when or (lambda p: False)
        self.lock = threading.Lock()

    def __call__(self, notebook, params, *, gpu, runs_dir, reuse, kernel):
        with self.lock:
            self.calls.append((dict(params), gpu))
            self.active[gpu] = self.active.get(gpu, 0) + 1
            self.max_active[gpu] = max(self.max_active.get(gpu, 0), self.active[gpu])
        time.sleep(0.02)
        full = runs.resolve(notebook, params)
        run = runs.create(notebook.stem, full, runs_dir=runs_dir)
        run.fail("boom") if self.fail_when(params) else run.done()
        with self.lock:
            self.active[gpu] -= 1
        return {"status": run.status, "dir": str(run.dir), "error": run.meta.get("error")}


# parse_value lives in lab.infra.params and is tested in tests/test_params.py


def test_grid_is_typed_by_the_notebook_and_cartesian(tmp_path):
    declared = runs.read_parameters(make_notebook(tmp_path))
    grid = batch.parse_grid(["path=linear,slerp", "lam=0,0.1,1", "tag=1", "fast=true"], declared)
    assert grid == {"path": ["linear", "slerp"], "lam": [0.0, 0.1, 1.0], "tag": ["1"], "fast": [True]}
    assert all(type(v) is float for v in grid["lam"])
    points = batch.grid_points(grid)
    assert len(points) == 6 and points[0] == {"path": "linear", "lam": 0.0, "tag": "1", "fast": True}
    assert [p["lam"] for p in points[:3]] == [0.0, 0.1, 1.0]  # the last key varies fastest
    for bad in (["lam"], ["=1"], ["lam=1", "lam=2"]):
        with pytest.raises(ValueError):
            batch.parse_grid(bad, declared)


def test_sweep_uses_each_gpu_for_one_run_at_a_time_and_resumes(tmp_path):
    nb = make_notebook(tmp_path)
    grid = {"path": ["linear", "slerp"], "lam": [0.0, 0.1, 1.0]}
    fake = FakeExecutor(fail_when=lambda p: p == {"path": "slerp", "lam": 1.0})
    results = batch.sweep(nb, grid, gpus=["0", "1"], runs_dir=tmp_path / "runs", executor=fake)
    assert len(fake.calls) == 6 and {g for _, g in fake.calls} <= {"0", "1"}
    assert max(fake.max_active.values()) == 1  # never two runs on one GPU
    assert [r["status"] for r in results] == ["done"] * 5 + ["failed"]
    assert [r["params"] for r in results] == batch.grid_points(grid)  # results in grid order

    again = FakeExecutor()
    results = batch.sweep(nb, grid, gpus=["0", "1"], runs_dir=tmp_path / "runs", executor=again)
    assert [p for p, _ in again.calls] == [{"path": "slerp", "lam": 1.0}]  # only the failed point
    assert sum(bool(r.get("reused")) for r in results) == 5
    assert all(r["status"] == "done" for r in results)

    third = FakeExecutor()
    batch.sweep(nb, grid, gpus=["0"], runs_dir=tmp_path / "runs", executor=third, resume=False)
    assert len(third.calls) == 6
    one = FakeExecutor()
    res = batch.sweep(nb, grid, gpus=[None], runs_dir=tmp_path / "other", executor=one, index=4)
    assert [p for p, _ in one.calls] == [{"path": "slerp", "lam": 0.1}] and len(res) == 1


def test_sweep_checks_every_point_before_running(tmp_path):
    nb = make_notebook(tmp_path)
    fake = FakeExecutor()
    with pytest.raises(ValueError, match="unknown parameter `lamda`.*did you mean `lam`"):
        batch.sweep(nb, {"lamda": [0.0]}, gpus=["0"], runs_dir=tmp_path, executor=fake)
    with pytest.raises(ValueError, match="`path` = 'euclid' is not allowed"):
        batch.sweep(nb, {"lam": [0.0], "path": ["slerp", "euclid"]}, gpus=["0"],
                    runs_dir=tmp_path, executor=fake)
    with pytest.raises(ValueError, match="the grid has 1 points"):
        batch.sweep(nb, {"lam": [0.0]}, gpus=["0"], runs_dir=tmp_path, executor=fake, index=3)
    assert fake.calls == []


def test_visible_gpus_follow_cuda_visible_devices(monkeypatch):
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "2,3")
    assert batch.visible_gpus() == ["2", "3"]
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    assert batch.visible_gpus() == [None]


def test_slurm_script(tmp_path):
    nb = make_notebook(tmp_path)
    out = tmp_path / "sweep.sh"
    code = batch.main([str(nb), "--grid", "path=linear,slerp", "lam=0,0.1,1", "--slurm", str(out),
                       "--sbatch=--time=24:00:00", "--max-parallel", "4",
                       "--runs-dir", str(tmp_path / "r")])
    text = out.read_text()
    assert code == 0 and text.startswith("#!/bin/bash\n")
    assert "#SBATCH --array=0-5%4\n" in text and "#SBATCH --gres=gpu:1\n" in text
    assert "#SBATCH --time=24:00:00\n" in text and f"#SBATCH --job-name=lab-05_sweep" in text
    assert "# grid point 5: path='slerp' lam=1.0" in text
    assert f"export LAB_RUNS_DIR={tmp_path / 'r'}" in text
    last = text.strip().splitlines()[-1]
    assert "-m lab.commands.batch" in last and str(nb) in last
    assert "--grid path=linear,slerp lam=0,0.1,1" in last
    assert last.endswith('--index "$SLURM_ARRAY_TASK_ID"')
    assert out.stat().st_mode & 0o111


def test_sweep_finds_a_notebook_by_its_name(tmp_path):
    out = tmp_path / "sweep.sh"
    assert batch.main(["05", "--grid", "seeds=1,2", "--slurm", str(out)]) == 0
    full = runs.repo_root() / "notebooks" / "05_flow_matching.ipynb"
    assert str(full) in out.read_text().strip().splitlines()[-1]


def test_reproduce_runs_all_in_order_and_continues_past_failures(tmp_path, monkeypatch, capsys):
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("02_b", "01_a", "03_c"):
        make_notebook(folder, name)
    seen = []

    def fake_execute(nb, params, runs_dir=None, kernel="python3", reuse=False):
        seen.append(nb.stem)
        if nb.stem == "02_b":
            return {"status": "failed", "dir": "runs/02_b/x", "error": "ValueError: broken\nmore"}
        return {"status": "done", "dir": f"runs/{nb.stem}/x", "error": None}

    monkeypatch.setattr(reproduce.nbtools, "execute", fake_execute)
    code = reproduce.main(["--notebooks", str(folder), "--jobs", "1"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1 and seen == ["01_a", "02_b", "03_c"]
    assert out[0].startswith("[1/3] 01_a") and " done " in out[0]
    assert out[1].startswith("[2/3] 02_b") and " failed " in out[1]
    assert out[2] == "    error: ValueError: broken"
    assert out[-1].startswith("total ") and out[-1].endswith("2 done, 1 failed: 02_b")
    seen.clear()
    assert reproduce.main(["--notebooks", str(folder), "--only", "01,03", "--jobs", "1"]) == 0
    assert seen == ["01_a", "03_c"]
    assert reproduce.main(["--notebooks", str(folder), "--only", "09"]) == 2


def test_reproduce_lanes_run_two_at_once_longest_first_with_a_share_of_the_cores(tmp_path, monkeypatch, capsys):
    """--jobs 2: two notebooks at a time in subprocesses, the long ones started first, each told its
    share of the cores; a failure is reported and the rest still run; one line per notebook."""
    folder = tmp_path / "notebooks"
    folder.mkdir()
    for name in ("00_x", "03_y", "05_big", "07_big2", "08_z"):
        make_notebook(folder, name)
    started, running, peak, envs, lock = [], [0], [0], [], threading.Lock()

    def fake_executor(nb, params, *, gpu, runs_dir, reuse, kernel="python3", env=None):
        with lock:
            started.append(nb.stem)
            running[0] += 1
            peak[0] = max(peak[0], running[0])
            envs.append(env)
        time.sleep(0.05)
        with lock:
            running[0] -= 1
        if nb.stem == "03_y":
            return {"status": "failed", "dir": None, "error": "RuntimeError: boom"}
        return {"status": "done", "dir": f"runs/{nb.stem}/x", "error": None, "reused": reuse}

    monkeypatch.setattr(reproduce.batch, "subprocess_executor", fake_executor)
    monkeypatch.delenv("LAB_CPUS", raising=False)
    monkeypatch.setattr(os, "cpu_count", lambda: 2)
    code = reproduce.main(["--notebooks", str(folder), "--jobs", "2", "--reuse"])
    out = capsys.readouterr().out.splitlines()
    assert code == 1 and peak[0] == 2
    # 03 trains the shared HAE the others wait for (reproduce.FIRST), then the longest
    longest = ["03_y"] + sorted(["05_big", "07_big2"], key=lambda stem: -reproduce.MINUTES[stem[:2]])
    assert started[:3] == longest and sorted(started) == ["00_x", "03_y", "05_big", "07_big2", "08_z"]
    assert all(e == {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "LAB_CPUS": "1"} for e in envs)
    lines = [line for line in out if line.startswith("[")]
    assert len(lines) == 5 and [line[:5] for line in lines] == [f"[{i}/5]" for i in range(1, 6)]
    assert any("03_y" in line and " failed " in line for line in lines)
    assert "    error: RuntimeError: boom" in out
    assert out[-1].endswith("4 done, 1 failed: 03_y")
    assert reproduce.main(["--notebooks", str(folder), "--jobs", "0"]) == 2
