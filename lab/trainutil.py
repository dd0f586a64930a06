"""Small helpers every trainer in the lab shares: device, bf16 autocast, EMA, checkpoints, NaN guard, DDP.

Checkpoint layout (one folder per save, written to a temporary name then renamed, so a kill
mid-save never leaves a half-written checkpoint that `latest_checkpoint` would pick up):

    <ckpt_dir>/step_00001000/
        <name>.safetensors   weights of each module passed in `modules` (e.g. model.safetensors, ema.safetensors)
        state.pt             optimizer states, step, RNG states (torch, numpy, python, cuda), `extra`

`state.pt` holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`.
"""
import contextlib
import os
import random
import re
import shutil
from collections import OrderedDict

import numpy as np
import torch
import torch.distributed as dist
from safetensors.torch import load_model, save_model

_STEP_DIR = re.compile(r"^step_(\d+)$")


# ---------------------------------------------------------------------------------------------
# Device and precision
# ---------------------------------------------------------------------------------------------

def pick_device(device=None):
    """The device to train on: `device` if given, else CUDA when available, else CPU."""
    if device is not None:
        return torch.device(device)
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def autocast(device):
    """bf16 autocast on CUDA; a no-op context elsewhere (CPU runs stay in fp32)."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.autocast("cuda", dtype=torch.bfloat16)
    return contextlib.nullcontext()


def unwrap(model):
    """The plain module under DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model, torch.nn.parallel.DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


# ---------------------------------------------------------------------------------------------
# EMA and gradients (as in DiT's train.py)
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def update_ema(ema, model, decay=0.9999):
    """Step the EMA model towards the current model: ema = decay * ema + (1 - decay) * model."""
    ema_params = OrderedDict(ema.named_parameters())
    for name, param in unwrap(model).named_parameters():
        ema_params[name].lerp_(param.detach().to(ema_params[name].dtype), 1.0 - decay)


def requires_grad(model, flag=True):
    """Set requires_grad on every parameter of a model."""
    for p in model.parameters():
        p.requires_grad_(flag)


def count_params(model, trainable_only=False):
    """Number of parameters (optionally only those with requires_grad)."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)


# ---------------------------------------------------------------------------------------------
# Checkpoints
# ---------------------------------------------------------------------------------------------

def _rng_state():
    np_name, np_keys, np_pos, np_has_gauss, np_gauss = np.random.get_state()
    state = {
        "torch": torch.get_rng_state(),
        # numpy's state holds an ndarray, which weights_only loading refuses: store it as a tensor
        "numpy": {"name": np_name, "keys": torch.from_numpy(np_keys.astype(np.int64)),
                  "pos": int(np_pos), "has_gauss": int(np_has_gauss), "gauss": float(np_gauss)},
        "python": random.getstate(),
    }
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def _set_rng_state(state):
    torch.set_rng_state(state["torch"])
    s = state["numpy"]
    np.random.set_state((s["name"], s["keys"].numpy().astype(np.uint32), s["pos"], s["has_gauss"], s["gauss"]))
    version, internal, gauss_next = state["python"]
    random.setstate((version, tuple(internal), gauss_next))
    if "cuda" in state and torch.cuda.is_available() and len(state["cuda"]) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(state["cuda"])


def save_checkpoint(ckpt_dir, step, modules, optimizers=None, extra=None, keep=None):
    """Write `<ckpt_dir>/step_<step>/` atomically and return its path.

    modules: {name: nn.Module} saved as safetensors; optimizers: {name: Optimizer} (or anything
    with state_dict(), e.g. a LR scheduler); extra: dict of tensors / plain values.
    keep: if an int, delete all but the newest `keep` checkpoints afterwards.
    """
    os.makedirs(ckpt_dir, exist_ok=True)
    final = os.path.join(ckpt_dir, f"step_{step:08d}")
    tmp = os.path.join(ckpt_dir, f".tmp_step_{step:08d}_{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    for name, module in modules.items():
        save_model(unwrap(module), os.path.join(tmp, f"{name}.safetensors"))  # handles shared tensors
    state = {
        "step": int(step),
        "optimizers": {name: opt.state_dict() for name, opt in (optimizers or {}).items()},
        "rng": _rng_state(),
        "extra": dict(extra or {}),
    }
    torch.save(state, os.path.join(tmp, "state.pt"))
    if os.path.exists(final):  # re-saving the same step: move the old one aside first
        old = final + f".old_{os.getpid()}"
        os.replace(final, old)
        os.replace(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.replace(tmp, final)
    if keep is not None:
        for old_step, path in _list_checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
    return final


def _list_checkpoints(ckpt_dir):
    """[(step, path)] of complete checkpoints under ckpt_dir, oldest first."""
    if not os.path.isdir(ckpt_dir):
        return []
    found = []
    for name in os.listdir(ckpt_dir):
        m = _STEP_DIR.match(name)
        path = os.path.join(ckpt_dir, name)
        if m and os.path.isfile(os.path.join(path, "state.pt")):
            found.append((int(m.group(1)), path))
    return sorted(found)


def latest_checkpoint(ckpt_dir):
    """Path of the newest complete checkpoint under ckpt_dir, or None."""
    found = _list_checkpoints(ckpt_dir)
    return found[-1][1] if found else None


def load_checkpoint(path, modules, optimizers=None, restore_rng=True, strict=True):
    """Load a checkpoint into `modules` / `optimizers` in place; return (step, extra).

    path: one checkpoint folder (`.../step_00001000`) or a folder of them (the newest is taken).
    Modules listed here but missing from the checkpoint raise FileNotFoundError.
    """
    if not os.path.isfile(os.path.join(path, "state.pt")):
        newest = latest_checkpoint(path)
        if newest is None:
            raise FileNotFoundError(f"no checkpoint (step_*/state.pt) under {path!r}")
        path = newest
    for name, module in modules.items():
        file = os.path.join(path, f"{name}.safetensors")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"checkpoint {path!r} has no weights for module {name!r}")
        target = unwrap(module)
        device = next(iter(target.state_dict().values()), torch.empty(0)).device
        load_model(target, file, strict=strict, device=str(device))
    state = torch.load(os.path.join(path, "state.pt"), map_location="cpu", weights_only=True)
    for name, opt in (optimizers or {}).items():
        if name not in state["optimizers"]:
            raise KeyError(f"checkpoint {path!r} has no state for optimizer {name!r}; "
                           f"it has {sorted(state['optimizers'])}")
        opt.load_state_dict(state["optimizers"][name])  # moves state to each param's device
    if restore_rng:
        _set_rng_state(state["rng"])
    return state["step"], state["extra"]


# ---------------------------------------------------------------------------------------------
# NaN guard
# ---------------------------------------------------------------------------------------------

def check_finite(value, step, on_fail=None, what="loss"):
    """Raise FloatingPointError naming the step if `value` is NaN/Inf; call on_fail() first (e.g. save)."""
    v = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
    if bool(torch.isfinite(v).all()):
        return
    saved = on_fail() if on_fail is not None else None
    where = f"; state saved to {saved}" if isinstance(saved, str) else ""
    raise FloatingPointError(f"non-finite {what} at step {step}: {v.flatten()[:4].tolist()}{where}. "
                             "Lower the learning rate, check the data for NaN/Inf, or resume from an earlier checkpoint.")


class NaNGuard:
    """Callable guard: guard(loss, step) raises after on_fail() when the loss is not finite."""

    def __init__(self, on_fail=None):
        self.on_fail = on_fail

    def __call__(self, value, step, what="loss"):
        check_finite(value, step, self.on_fail, what)


# ---------------------------------------------------------------------------------------------
# Distributed data parallel (launched by torchrun)
# ---------------------------------------------------------------------------------------------

_WE_INITIALIZED = False


def ddp_setup(device=None):
    """(rank, world, device) from torchrun's environment; (0, 1, pick_device()) without it.

    Initializes the process group (nccl on CUDA, gloo on CPU) unless one already exists.
    """
    global _WE_INITIALIZED
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
    elif int(os.environ.get("WORLD_SIZE", "1")) > 1:
        use_cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
        _WE_INITIALIZED = True
        rank, world = dist.get_rank(), dist.get_world_size()
    else:
        return 0, 1, pick_device(device)
    if torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda"):
        local = int(os.environ.get("LOCAL_RANK", rank % torch.cuda.device_count()))
        torch.cuda.set_device(local)
        return rank, world, torch.device("cuda", local)
    return rank, world, torch.device("cpu")


def ddp_cleanup():
    """Destroy the process group if ddp_setup created it."""
    global _WE_INITIALIZED
    if _WE_INITIALIZED and dist.is_initialized():
        dist.destroy_process_group()
    _WE_INITIALIZED = False


def is_main():
    """True on rank 0 (or when not distributed)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier():
    """dist.barrier() when distributed, else nothing."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
