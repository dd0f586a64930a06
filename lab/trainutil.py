"""Small helpers every trainer in the lab shares: device, bf16 autocast, EMA, checkpoints, NaN guard, DDP.

Checkpoint layout (one folder per save, written to a temporary name then renamed, so a kill
mid-save never leaves a half-written checkpoint that `latest_checkpoint` would pick up):

    <ckpt_dir>/step_00001000/
        <name>.safetensors   weights of each module passed in `modules` (e.g. model.safetensors, ema.safetensors)
        state.pt             optimizer states, step, RNG states (torch, numpy, python, cuda), `extra`
        checksums.json       size and sha256 of each file above, checked before every load

A checkpoint that fails its checksums is moved aside (`step_....bad-<time>-<pid>`) and the
previous one is used, so a file cut or overwritten after the save cannot load silently.

`state.pt` holds only tensors and plain Python values, so it loads with `torch.load(weights_only=True)`.
"""
import contextlib
import datetime
import errno
import faulthandler
import gc
import os
import random
import re
import shutil
import sys
import time
import traceback
from collections import OrderedDict

import numpy as np
import torch
import torch.distributed as dist
from safetensors import SafetensorError
from safetensors.torch import load_model, save_model

from lab.infra import cache, safe_files, sources

_STEP_DIR = re.compile(r"^step_(\d+)$")
_TEMP_DIR = re.compile(r"^\.(?:tmp|old)_step_\d+_(\d+)_\d+$")
CHECKSUMS = "checksums.json"  # {file: {size, sha256}} written with every checkpoint


# ---------------------------------------------------------------------------------------------
# Device and precision
# ---------------------------------------------------------------------------------------------

def pick_device(device=None):
    """The lab's one device rule: `device` if given, else $LAB_DEVICE if set, else CUDA when available, else CPU.

    Every place that picks a device (trainers, zoo, caches, evaluate, metrics, probes) calls this, so
    LAB_DEVICE=cpu keeps a whole notebook off a GPU, and a GPU node needs no setting at all.
    """
    device = device if device is not None else (os.environ.get("LAB_DEVICE") or None)
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
# Per-step seeds (exact resume)
# ---------------------------------------------------------------------------------------------

def step_seed(seed, step, stream=0):
    """One 63-bit seed per (seed, step, stream): every random draw of a training step starts here.

    A step's batch and noise then depend on (seed, step) alone, never on how many steps ran before
    in this process, so a resumed run replays the uninterrupted one. `stream` keeps apart runs that
    share a seed (the four HAE stages); stream 0 is the generator trainer's original formula.
    """
    return (int(seed) * 0x9E3779B97F4A7C15 + int(step) * 0xBF58476D1CE4E5B9
            + int(stream) * 0x94D049BB133111EB + 1) % (2**63 - 1)


def step_generators(seed, step, device, stream=0):
    """(CPU generator, generator on `device`), both seeded by step_seed: indices on the CPU, noise where it is used.

    On a CPU device the two are one generator, so a step's draws follow one another in one stream.
    """
    s = step_seed(seed, step, stream)
    cpu = torch.Generator().manual_seed(s)
    device = torch.device(device)
    return cpu, (cpu if device.type == "cpu" else torch.Generator(device).manual_seed(s))


# ---------------------------------------------------------------------------------------------
# EMA and gradients (as in DiT's train.py)
# ---------------------------------------------------------------------------------------------

@torch.no_grad()
def update_ema(ema, model, decay=0.9999):
    """Step the EMA model towards the current model: ema = decay * ema + (1 - decay) * model, as one
    foreach lerp (the per-parameter lerp_ of DiT's train.py, bit for bit, in a few kernels)."""
    ema_params = OrderedDict(ema.named_parameters())
    targets, sources = [], []
    for name, param in unwrap(model).named_parameters():
        targets.append(ema_params[name])
        sources.append(param.detach().to(ema_params[name].dtype))
    if targets:
        torch._foreach_lerp_(targets, sources, 1.0 - decay)  # a Python float: a tensor weight would sync


def requires_grad(model, flag=True):
    """Set requires_grad on every parameter of a model."""
    for p in model.parameters():
        p.requires_grad_(flag)


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


class CheckpointError(RuntimeError):
    """A checkpoint file failed its size/sha256 check or did not load; the message names it."""


def _unique_name(ckpt_dir, step, what):
    # pid first after the step, so a later save can tell whether the writer is still alive
    return os.path.join(ckpt_dir, f".{what}_step_{step:08d}_{os.getpid()}_{time.monotonic_ns()}")


def _clean_stale_temps(ckpt_dir):
    """Remove temp / aside folders whose writer process is gone (a save killed mid-way)."""
    for name in os.listdir(ckpt_dir):
        m = _TEMP_DIR.match(name)
        if m and not safe_files.pid_alive(m.group(1)):
            shutil.rmtree(os.path.join(ckpt_dir, name), ignore_errors=True)


def save_checkpoint(ckpt_dir, step, modules, optimizers=None, extra=None, keep=None):
    """Write `<ckpt_dir>/step_<step>/` atomically and return its path.

    modules: {name: nn.Module} saved as safetensors; optimizers: {name: Optimizer} (or anything
    with state_dict(), e.g. a LR scheduler); extra: dict of tensors / plain values.
    keep: if an int, delete all but the newest `keep` checkpoints afterwards.

    The files are written into a folder with a name no other process uses, their size and sha256
    recorded in `checksums.json`, then the folder is renamed into place. Two processes saving the
    same step at once: each rename is atomic, so whichever lands last wins whole and the other's
    copy is removed; no temp folder outlives its writer.
    """
    os.makedirs(ckpt_dir, exist_ok=True)
    _clean_stale_temps(ckpt_dir)
    final = os.path.join(ckpt_dir, f"step_{step:08d}")
    tmp = _unique_name(ckpt_dir, step, "tmp")
    try:
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
        sums = {f: safe_files.record(os.path.join(tmp, f)) for f in sorted(os.listdir(tmp))}
        cache.write_json(os.path.join(tmp, CHECKSUMS), sums)
        _put_in_place(tmp, final, ckpt_dir, step)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    if keep is not None:
        for old_step, path in _list_checkpoints(ckpt_dir)[:-keep]:
            shutil.rmtree(path, ignore_errors=True)
    return final


def _put_in_place(tmp, final, ckpt_dir, step):
    """Rename tmp to final; if final exists (a re-save, or another process), replace it."""
    for _ in range(10):
        try:
            os.rename(tmp, final)  # atomic; fails if final is a non-empty folder
            return
        except OSError as err:
            if err.errno not in (errno.ENOTEMPTY, errno.EEXIST):
                raise
        aside = _unique_name(ckpt_dir, step, "old")
        try:
            os.rename(final, aside)
        except FileNotFoundError:  # another process moved it aside first: try again
            continue
        shutil.rmtree(aside, ignore_errors=True)
    # ten rounds lost to other writers of this very step: theirs is in place and whole, keep it


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


def checkpoint_problem(path):
    """None if every file of the checkpoint matches checksums.json, else what is wrong.

    Checkpoints written before checksums existed have no checksums.json; they pass here and are
    caught only if they fail to load.
    """
    sums_path = os.path.join(path, CHECKSUMS)
    if not os.path.isfile(sums_path):
        return None
    try:
        sums = cache.read_json(sums_path, "checkpoint checksums")
    except cache.CorruptFile as err:
        return str(err)
    for name, rec in sorted(sums.items()):
        bad = safe_files.problem(os.path.join(path, name), rec)
        if bad:
            return bad
    return None


def latest_checkpoint(ckpt_dir):
    """Path of the newest intact checkpoint under ckpt_dir, or None.

    A newest checkpoint that fails its checksums (a kill or a disk that cut or overwrote a file)
    is moved aside with a warning naming it, and the next older one is taken: a retry resumes
    from there instead of failing on the same file every time.
    """
    for step, path in reversed(_list_checkpoints(ckpt_dir)):
        bad = checkpoint_problem(path)
        if bad is None:
            return path
        safe_files.set_aside(path, f"checkpoint {path} is corrupt: {bad}", "fell back to the previous checkpoint")
    return None


def load_checkpoint(path, modules, optimizers=None, restore_rng=True, strict=True):
    """Load a checkpoint into `modules` / `optimizers` in place; return (step, extra). path: one checkpoint
    (`.../step_00001000`) or a folder of them: the newest intact one (see latest_checkpoint). Raises
    CheckpointError (a named checkpoint fails its checks), CheckpointShapeError, FileNotFoundError."""
    if os.path.isfile(os.path.join(path, "state.pt")):
        return _load_one(path, modules, optimizers, restore_rng, strict)
    while True:
        newest = latest_checkpoint(path)
        if newest is None:
            raise FileNotFoundError(f"no intact checkpoint (step_*/state.pt) under {path!r}")
        try:
            return _load_one(newest, modules, optimizers, restore_rng, strict)
        except CheckpointError as err:  # an old checkpoint without checksums that does not load
            safe_files.set_aside(newest, str(err), "fell back to the previous checkpoint")


class CheckpointShapeError(ValueError):
    """Not a CheckpointError: the checkpoint is intact, so it is never set aside."""


def _load_one(path, modules, optimizers, restore_rng, strict):
    bad = checkpoint_problem(path)
    if bad:
        raise CheckpointError(f"checkpoint {path} is corrupt: {bad}. Delete that folder (training "
                              "resumes from the previous checkpoint) or load another one.")
    for name, module in modules.items():
        file = os.path.join(path, f"{name}.safetensors")
        if not os.path.isfile(file):
            raise FileNotFoundError(f"checkpoint {path!r} has no weights for module {name!r}")
        try:
            shape = sources.shape_mismatch(file, (target := unwrap(module)).state_dict())
            if shape:  # a resume into an --out-dir trained with another --width: say how to start fresh
                raise CheckpointShapeError(
                    f"{os.path.dirname(os.path.abspath(path))} holds a checkpoint of another shape: {name}.{shape[0]} "
                    f"is {shape[1]} there, {shape[2]} in this model. Resume with the settings it was trained with, or "
                    "start fresh: give another --out-dir, or move that folder's step_* folders away.")
            device = str(next(iter(target.state_dict().values()), torch.empty(0)).device)
            load_model(target, file, strict=strict, device=device)
        except (OSError, SafetensorError) as err:
            raise CheckpointError(f"checkpoint file {file} does not load ({err})") from err
    try:
        state = sources.load_torch_file(os.path.join(path, "state.pt"), "checkpoint file")
    except cache.CorruptFile as err:
        raise CheckpointError(str(err)) from err
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

def check_finite(value, step, on_fail=None, what="loss", found=""):
    """Raise FloatingPointError naming the step if `value` is NaN/Inf; call on_fail() first (e.g. save).
    found: how the step was found, put after it in the message, e.g. "(found at the check after step 49)"."""
    v = value.detach().float() if torch.is_tensor(value) else torch.tensor(float(value))
    if bool(torch.isfinite(v).all()):
        return
    saved = on_fail() if on_fail is not None else None
    where = f"; state saved to {saved}" if isinstance(saved, str) else ""
    found = f" {found}" if found else ""
    raise FloatingPointError(f"non-finite {what} at step {step}{found}: {v.flatten()[:4].tolist()}{where}. "
                             "Lower the learning rate, check the data for NaN/Inf, or resume from an earlier checkpoint.")


class NaNGuard:
    """Callable guard: guard(loss, step) raises after on_fail() when the loss is not finite."""

    def __init__(self, on_fail=None):
        self.on_fail = on_fail

    def __call__(self, value, step, what="loss", found=""):
        check_finite(value, step, self.on_fail, what, found)


# ---------------------------------------------------------------------------------------------
# Distributed data parallel (launched by torchrun)
# ---------------------------------------------------------------------------------------------

_WE_INITIALIZED = False


def ddp_setup(device=None):
    """(rank, world, device) from torchrun's environment; (0, 1, pick_device()) without it.

    Initializes the process group (nccl on CUDA, gloo on CPU) unless one already exists.
    """
    global _WE_INITIALIZED
    device = device or os.environ.get("LAB_DEVICE") or None  # the one device rule, under torchrun too
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


TEARDOWN_TIMEOUT_S = 120  # the longest a rank may spend tearing down before it is ended


def ddp_cleanup(timeout_s=TEARDOWN_TIMEOUT_S):
    """Destroy the process group if ddp_setup created it, in an order that cannot deadlock.

    A barrier with a timeout (no rank still talks), gc (dropped wrappers let go of the group),
    then destroy_process_group under a faulthandler watchdog: past timeout_s every thread's stack
    is printed and the process exits (code 1) instead of hanging. DDP keeps a C++ reference to
    the group, so gloo's threads may outlive this call: torchrun entry points end with exit_process.
    """
    global _WE_INITIALIZED
    if _WE_INITIALIZED and dist.is_initialized():
        faulthandler.dump_traceback_later(timeout_s, exit=True)
        try:
            try:
                if dist.get_backend() == "gloo":
                    dist.monitored_barrier(timeout=datetime.timedelta(seconds=timeout_s / 2))
                else:
                    dist.barrier()
            except RuntimeError as err:  # another rank failed or left: tear down anyway
                print(f"ddp_cleanup: barrier failed ({err}); destroying the process group anyway",
                      file=sys.stderr)
            gc.collect()
            dist.destroy_process_group()
        finally:
            faulthandler.cancel_dump_traceback_later()
    _WE_INITIALIZED = False


def exit_process(main, *args, **kwargs):
    """Run main(*args, **kwargs), flush the output, and end the process with os._exit (code 0,
    SystemExit's code, or 1 after printing the traceback).

    For torchrun entry points: gloo's threads can outlive the process group, and their destructor,
    run during interpreter teardown, may wait forever for the GIL (a rank once hung 300 s that
    way after training was done). os._exit skips that teardown.
    """
    code = 0
    try:
        main(*args, **kwargs)
    except SystemExit as err:
        code = err.code if isinstance(err.code, int) else (0 if err.code is None else 1)
        if not isinstance(err.code, (int, type(None))):
            print(err.code, file=sys.stderr)
    except BaseException:  # noqa: BLE001 (reported, then the process ends)
        traceback.print_exc()
        code = 1
    finally:
        for stream in (sys.stdout, sys.stderr):
            with contextlib.suppress(Exception):
                stream.flush()
    os._exit(code)


def is_main():
    """True on rank 0 (or when not distributed)."""
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def barrier():
    """dist.barrier() when distributed, else nothing."""
    if dist.is_available() and dist.is_initialized():
        dist.barrier()
