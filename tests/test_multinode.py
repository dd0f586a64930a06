"""Multi-node training (issue 22, item 3): `python -m lab.train` under two torchrun launchers, one per
"node", that meet at a c10d rendezvous endpoint, trains the same weights as one process with the same
global batch; and the SLURM script that launches one torchrun per node with srun.

The two nodes are two launchers on localhost (gloo, one process each), which is what two machines do
apart from the network: each launcher knows only --nnodes, its --node-rank and the endpoint.
"""
import os
import socket
import subprocess
import sys

import pytest
import torch
from safetensors.torch import load_file, save_file

from lab import trainutil as tu
from lab.commands import launch
from lab.train import train_generator

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["--steps", "4", "--batch-size", "16", "--lr", "1e-3", "--ema-decay", "0.5", "--path", "slerp",
         "--loss", "riemannian", "--seed", "3", "--ckpt-every", "100", "--device", "cpu"]


def free_port():
    """A port the OS just handed out and took back (nothing else on this machine asks for it in between,
    or the launchers fail to bind and the test says so)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def toy_latents(M=32, N=4, C=8):
    g = torch.Generator().manual_seed(1)
    labels = torch.arange(M) % 2
    return 2 * torch.randn(2, N, C, generator=g)[labels] + 0.1 * torch.randn(M, N, C, generator=g), labels


def env():
    e = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""), OMP_NUM_THREADS="1")
    for k in ("WORLD_SIZE", "RANK", "LOCAL_RANK", "MASTER_ADDR", "MASTER_PORT"):
        e.pop(k, None)
    return e


def test_two_nodes_on_localhost_train_what_one_process_trains(tmp_path):
    lat, labels = toy_latents()
    file = str(tmp_path / "lat.safetensors")
    save_file({"latents": lat, "labels": labels}, file)
    out_dir = str(tmp_path / "two_nodes")
    endpoint = f"127.0.0.1:{free_port()}"
    nodes = []
    for node in (0, 1):
        cmd = launch.command("lab.train", "--latents", file, "--out-dir", out_dir, *TRAIN, nproc=1,
                             nnodes=2, node_rank=node, rdzv_endpoint=endpoint, rdzv_id="test-multinode")
        log = open(tmp_path / f"node{node}.log", "w")
        nodes.append((subprocess.Popen(cmd, env=env(), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT,
                                       start_new_session=True), log))
    try:
        codes = [p.wait(timeout=240) for p, _ in nodes]
    finally:
        for p, log in nodes:
            if p.poll() is None:
                os.killpg(p.pid, 9)  # the launcher and its rank
            log.close()
    logs = "\n".join((tmp_path / f"node{n}.log").read_text()[-2000:] for n in (0, 1))
    assert codes == [0, 0], logs
    assert "done: step 4" in logs
    ckpt = tu.latest_checkpoint(os.path.join(out_dir, "checkpoints"))
    single = train_generator(lat, labels, steps=4, batch_size=16, lr=1e-3, ema_decay=0.5, path="slerp",
                             loss="riemannian", seed=3, progress=False, device="cpu")
    for module in ("model", "ema"):
        weights = load_file(os.path.join(ckpt, f"{module}.safetensors"))
        ref = single[module].state_dict()
        assert weights and set(weights) <= set(ref)
        for name, w in weights.items():  # equal up to the order of the gradient sum over ranks
            torch.testing.assert_close(w, ref[name], rtol=1e-4, atol=1e-5, msg=f"{module}.{name}")


def test_the_multinode_command_names_the_rendezvous():
    cmd = launch.command("lab.train", "--steps", "4", nproc=8, nnodes=4, rdzv_endpoint="node-a:29400",
                         rdzv_id="job7")
    text = " ".join(cmd)
    assert "--standalone" not in cmd
    assert "--nnodes=4 --nproc_per_node=8 --rdzv-backend=c10d --rdzv-endpoint=node-a:29400 --rdzv-id=job7" in text
    assert text.endswith("-m lab.train --steps 4")
    single = launch.command("lab.train", nproc=2)
    assert "--standalone" in single and "--nproc_per_node=2" in single
    with pytest.raises(ValueError, match="rdzv_endpoint"):
        launch.command("lab.train", nproc=1, nnodes=2)


def test_the_slurm_script_runs_one_torchrun_per_node_at_the_first_nodes_endpoint(tmp_path):
    out = tmp_path / "train.sh"
    assert launch.main(["--slurm", str(out), "--nodes", "4", "--gpus-per-node", "8", "--port", "29555",
                        "--sbatch=--time=24:00:00", "lab.train", "--", "--latents", "/data/lat shard.safetensors",
                        "--out-dir", "runs/gen/xl", "--size", "XL"]) == 0
    text = out.read_text()
    lines = text.splitlines()
    assert lines[0] == "#!/bin/bash" and os.access(out, os.X_OK)
    for want in ("#SBATCH --nodes=4", "#SBATCH --ntasks-per-node=1", "#SBATCH --gres=gpu:8",
                 "#SBATCH --time=24:00:00", "set -euo pipefail"):
        assert want in lines, want
    assert 'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)' in lines
    (srun,) = [line for line in lines if line.startswith("srun ")]
    assert "--ntasks-per-node=1" in srun and "--kill-on-bad-exit=1" in srun
    assert f"{sys.executable} -m torch.distributed.run" in srun
    assert '--nnodes="$SLURM_NNODES" --nproc_per_node=8 --rdzv-backend=c10d' in srun
    assert '--rdzv-endpoint="$head:29555" --rdzv-id="$SLURM_JOB_ID"' in srun
    assert srun.endswith("-m lab.train --latents '/data/lat shard.safetensors' --out-dir runs/gen/xl --size XL")
    assert f"cd {ROOT}" in lines
    r = subprocess.run(["bash", "-n", str(out)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr


def test_the_slurm_flags_are_checked():
    with pytest.raises(SystemExit):
        launch.main(["--slurm", "x.sh", "--nodes", "0", "lab.train"])
