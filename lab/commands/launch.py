"""torchrun from a notebook cell: one generator trained on all GPUs of this node (DDP).

    from lab.commands import launch
    launch.torchrun("lab.train", nproc=8, latents=files, out_dir="runs/gen/xl", size="XL",
                    path="slerp", loss="riemannian", radial_weight=0.1, steps=400000, batch_size=256)

Keyword arguments become the target's flags: out_dir= -> --out-dir VALUE, True -> a bare --flag, a
list -> several values, None and False are left out. The ranks' output streams into the cell. A
failed run raises CalledProcessError after torchrun has stopped every rank; interrupting the cell
stops torchrun, which stops its ranks. The notebook's kernel keeps whatever GPU memory it holds, so
free it (or train before loading models) when a recipe needs the whole GPU. The ranks run in the
caller's working folder (relative paths mean what they mean in the cell), with this repository on
PYTHONPATH so that `-m lab.train` imports this checkout.

Several nodes: every node runs the same torchrun command with nnodes=N and one rendezvous endpoint
(host:port of the first node), e.g. command("lab.train", ..., nnodes=2, rdzv_endpoint="node-a:29400").
On SLURM, `python -m lab.commands.launch --slurm train.sh --nodes 4 --gpus-per-node 8 lab.train --
--latents ...` writes an sbatch script that starts one torchrun per node with srun, at the first
node's endpoint; `sbatch train.sh` submits it.
"""
import argparse
import shlex
import os
import signal
import subprocess
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]


def flags(**kw):
    """Command-line flags of keyword arguments (out_dir='x' -> ['--out-dir', 'x'])."""
    out = []
    for name, value in kw.items():
        flag = "--" + name.replace("_", "-")
        if value is None or value is False:
            continue
        if value is True:
            out.append(flag)
        elif isinstance(value, (list, tuple)):
            out += [flag, *map(str, value)]
        else:
            out += [flag, str(value)]
    return out


def command(target, *args, nproc=None, nnodes=1, node_rank=None, rdzv_endpoint=None, rdzv_id="lab", **kw):
    """The torchrun command line: `python -m torch.distributed.run --standalone` with one rank per
    GPU (nproc, default every visible GPU, else 1), then the module (or .py script) and its flags.
    nnodes > 1: instead of --standalone, a c10d rendezvous at rdzv_endpoint (host:port of one node,
    the same on every node) under rdzv_id; node_rank, if given, is passed on (c10d assigns ranks)."""
    nproc = nproc or torch.cuda.device_count() or 1
    run = [str(target)] if str(target).endswith(".py") else ["-m", str(target)]
    if nnodes > 1 and not rdzv_endpoint:
        raise ValueError(f"nnodes={nnodes} needs rdzv_endpoint='host:port' of one node (the same on every node)")
    where = (["--standalone"] if nnodes == 1 else
             [f"--nnodes={nnodes}"] + ([f"--node-rank={node_rank}"] if node_rank is not None else []))
    rdzv = [] if nnodes == 1 else ["--rdzv-backend=c10d", f"--rdzv-endpoint={rdzv_endpoint}", f"--rdzv-id={rdzv_id}"]
    return [sys.executable, "-m", "torch.distributed.run", *where, f"--nproc_per_node={nproc}", *rdzv,
            *run, *map(str, args), *flags(**kw)]


def torchrun(target, *args, nproc=None, env=None, log=print, **kw):
    """Run `target` under torchrun on this node and wait; returns the command it ran.

    env: extra environment variables for the ranks (LAB_DEVICE, CUDA_VISIBLE_DEVICES, ...).
    """
    cmd = command(target, *args, nproc=nproc, **kw)
    full_env = dict(os.environ, **{k: str(v) for k, v in (env or {}).items()})
    full_env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), full_env.get("PYTHONPATH")]))
    log("$ " + " ".join(cmd))
    proc = subprocess.Popen(cmd, env=full_env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True, bufsize=1)
    try:
        for line in proc.stdout:
            log(line.rstrip("\n"))
        rc = proc.wait()
    except KeyboardInterrupt:  # the cell was interrupted: torchrun passes the signal on to its ranks
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()
        raise
    if rc:
        raise subprocess.CalledProcessError(rc, cmd)
    return cmd


def slurm_script(target, args, *, nodes, gpus_per_node, port=29400, sbatch=(), python=None):
    """An sbatch script: `nodes` nodes, one srun task per node, each a torchrun of `gpus_per_node`
    ranks meeting at a c10d rendezvous on the first node of the allocation (port `port`)."""
    run = [str(target)] if str(target).endswith(".py") else ["-m", str(target)]
    lines = ["#!/bin/bash",
             f"#SBATCH --job-name=lab-{Path(str(target)).stem.replace('.', '-')}",
             f"#SBATCH --nodes={nodes}",
             "#SBATCH --ntasks-per-node=1",
             f"#SBATCH --gres=gpu:{gpus_per_node}",
             "#SBATCH --output=slurm-%x-%j.out"]
    lines += [f"#SBATCH {opt}" for opt in sbatch]
    lines += ["set -euo pipefail", f"cd {shlex.quote(str(REPO))}",
              f"export PYTHONPATH={shlex.quote(str(REPO))}${{PYTHONPATH:+:$PYTHONPATH}}",
              "# the rendezvous runs on the first node; every torchrun finds it there",
              'head=$(scontrol show hostnames "$SLURM_JOB_NODELIST" | head -n 1)',
              f'echo "nodes: $SLURM_JOB_NODELIST; rendezvous at $head:{port}"',
              "srun --nodes=\"$SLURM_NNODES\" --ntasks-per-node=1 --kill-on-bad-exit=1 "
              + shlex.quote(python or sys.executable) + " -m torch.distributed.run "
              + f'--nnodes="$SLURM_NNODES" --nproc_per_node={gpus_per_node} --rdzv-backend=c10d '
              + f'--rdzv-endpoint="$head:{port}" --rdzv-id="$SLURM_JOB_ID" '
              + " ".join(shlex.quote(a) for a in [*run, *map(str, args)]), ""]
    return "\n".join(lines)


def _positive(text):
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, got {value}")
    return value


def main(argv=None):
    ap = argparse.ArgumentParser(prog="python -m lab.commands.launch",
                                 description="Write an sbatch script that trains on several nodes (one torchrun per node).",
                                 epilog="example: python -m lab.commands.launch --slurm train.sh --nodes 4 "
                                        "--gpus-per-node 8 lab.train -- --latents lat.safetensors --out-dir runs/gen/xl")
    ap.add_argument("--slurm", required=True, metavar="OUT.sh", help="where to write the sbatch script")
    ap.add_argument("--nodes", type=_positive, required=True)
    ap.add_argument("--gpus-per-node", type=_positive, default=8)
    ap.add_argument("--port", type=int, default=29400, help="rendezvous port on the first node")
    ap.add_argument("--sbatch", action="append", default=[], metavar="OPT",
                    help="extra #SBATCH line, e.g. --sbatch=--time=24:00:00 --sbatch=--partition=gpu")
    ap.add_argument("target", help="the module (lab.train) or .py script each rank runs")
    ap.add_argument("args", nargs=argparse.REMAINDER, help="after --: the target's own flags")
    a = ap.parse_args(argv)
    args = a.args[1:] if a.args[:1] == ["--"] else a.args
    text = slurm_script(a.target, args, nodes=a.nodes, gpus_per_node=a.gpus_per_node, port=a.port, sbatch=a.sbatch)
    out = Path(a.slurm)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    tmp.write_text(text)
    tmp.chmod(0o755)
    tmp.replace(out)
    print(f"wrote {out}: {a.nodes} nodes x {a.gpus_per_node} GPUs; submit with: sbatch {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
