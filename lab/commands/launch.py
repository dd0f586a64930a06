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
"""
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


def command(target, *args, nproc=None, **kw):
    """The torchrun command line: `python -m torch.distributed.run --standalone` with one rank per
    GPU (nproc, default every visible GPU, else 1), then the module (or .py script) and its flags."""
    nproc = nproc or torch.cuda.device_count() or 1
    run = [str(target)] if str(target).endswith(".py") else ["-m", str(target)]
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
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
