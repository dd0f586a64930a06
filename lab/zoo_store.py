"""The zoo's store: a recipe folder's lock, its done.json record and the checks on loading it.

Moved out of lab.zoo (which imports every name back) to keep that module short; nothing here knows
any recipe.
"""
import hashlib
import os
from pathlib import Path

import torch

from lab import runs, trainutil
from lab.infra import cache, safe_files


def _digest(*tensors):
    return hashlib.sha1(b"".join(t.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()
                                 for t in tensors)).hexdigest()


def lock(folder):
    """The recipe's inter-process lock: two notebooks (or a two-point lab.commands.batch sweep) asking
    for one recipe at once: the first trains, the second waits here, then loads the same weights."""
    folder.mkdir(parents=True, exist_ok=True)
    return safe_files.file_lock(folder / ".lock", what=f"zoo recipe {folder.name}")


def _finished(folder):
    """True when done.json parses and the final checkpoints it names pass their checksums.

    A cut done.json or a corrupt final checkpoint is moved aside (named in a warning) and the
    recipe counts as unfinished: training resumes from the last intact checkpoint and, being
    bit-identical on resume, rebuilds the same weights."""
    done = folder / "done.json"
    if not done.is_file():
        return False
    try:
        info = cache.read_json(done, "zoo record")
    except cache.CorruptFile as err:
        safe_files.set_aside(done, str(err), "the recipe is finished again from its checkpoints")
        return False
    for rel in (info.get("checkpoints") or {}).values():
        bad = trainutil.checkpoint_problem(folder / rel) if (folder / rel).is_dir() else f"{folder / rel} is missing"
        if bad:
            if (folder / rel).is_dir():
                safe_files.set_aside(folder / rel, f"final zoo checkpoint {folder / rel} is corrupt: {bad}",
                                     "the recipe trains again from its last intact checkpoint")
            os.replace(done, done.with_name(f"done.json.stale-{os.getpid()}"))
            return False
    return True


def _final_checkpoints(folder):
    """{checkpoint folder: its newest step folder}, relative to the recipe folder, for done.json."""
    parents = sorted({p.parent for p in folder.rglob("step_*") if p.is_dir()})
    newest = {p: trainutil.latest_checkpoint(str(p)) for p in parents}
    return {str(p.relative_to(folder)): str(Path(c).relative_to(folder)) for p, c in newest.items() if c}


def _mark_finished(folder, recipe, history=None, **extra):
    info = dict(recipe=recipe, **extra)
    if history and history.get("loss"):
        info.update(final_loss=float(history["loss"][-1]), steps=len(history["loss"]))
    info["checkpoints"] = _final_checkpoints(folder)
    runs.write_json(folder / "done.json", info)


def _load(folder, modules, sub="checkpoints"):
    trainutil.load_checkpoint(str(folder / sub), modules, restore_rng=False)
