"""Training curves: TensorBoard event files in a run's folder, and W&B offline when asked.

Every trainer opens one writer per training call, `curves(log_dir, start)`, and hands it the numbers it
already has on the host (so logging adds no device sync):

    log = curves(os.path.join(out_dir, "tb"), start)   # a no-op writer when out_dir is None
    log.scalars(step, {"loss": 0.12, "lr": 1e-4})      # tags as given
    log.images(step, "recon", grid)                    # [n, 3, H, W] in [0, 1]
    log.close()

`tensorboard --logdir runs/` then shows every run side by side.

Resume: a resumed run writes a new event file into the same folder with purge_step = start + 1, the
first step it logs again. TensorBoard's reader drops every event of an older file at or after that
step, so the steps a killed run logged after its last checkpoint (and that the resumed run repeats)
show once, and the curve is one line equal to the trainer's history. (One subfolder per session
would show the repeated steps twice, as two runs.) The reader takes the files in name order, and a
name starts with the second it was opened, so a writer opened within the second of an older file in
its folder waits for the next second.

DDP: only rank 0 writes; the other ranks get the no-op writer.

W&B: LAB_WANDB=offline (and the wandb package installed) also logs the same scalars and images to
an offline W&B run under <log_dir>/wandb (`wandb sync` uploads it later). Unset, wandb is never
imported.
"""
import glob
import os
import time

import torch

WANDB_ENV = "LAB_WANDB"
WANDB_MODES = ("", "off", "offline")


def _wandb_mode():
    """LAB_WANDB's value: '' (off, the default) or 'offline'; anything else is an error naming the variable."""
    mode = os.environ.get(WANDB_ENV, "").strip().lower()
    if mode not in WANDB_MODES:
        raise ValueError(f"{WANDB_ENV}={mode!r}: use 'offline' to log to an offline W&B run, or unset it")
    return "offline" if mode == "offline" else ""


def _rank0():
    dist = torch.distributed
    return not (dist.is_available() and dist.is_initialized()) or dist.get_rank() == 0


def _wait_for_a_new_second(log_dir):
    """Event files sort by the second they were opened: make this one sort after every older one."""
    stamps = [int(os.path.basename(f).split(".")[3]) for f in glob.glob(os.path.join(log_dir, "events.out.tfevents.*"))
              if os.path.basename(f).split(".")[3].isdigit()]
    give_up = time.time() + 1.1  # at most a second: a file stamped later (another clock) is not waited for
    while stamps and int(time.time()) <= max(stamps) and time.time() < give_up:
        time.sleep(0.05)


class Curves:
    """A SummaryWriter (and, when asked, an offline W&B run) in log_dir; every method is a no-op without one."""

    def __init__(self, log_dir=None, start=0):
        self.log_dir, self.tb, self.wandb = log_dir, None, None
        if log_dir is None or not _rank0():
            return
        mode = _wandb_mode()  # bad LAB_WANDB fails before any file is written
        from torch.utils.tensorboard import SummaryWriter  # slow import: only when a run logs
        os.makedirs(log_dir, exist_ok=True)
        _wait_for_a_new_second(log_dir)
        self.tb = SummaryWriter(log_dir, purge_step=start + 1)
        if mode:
            self.wandb = _wandb_run(log_dir, mode)

    def scalars(self, step, values):
        """Scalars {tag: number} at `step`; NaN entries (a loss term that has not started) are skipped."""
        if self.tb is None:
            return
        values = {k: float(v) for k, v in values.items() if float(v) == float(v)}
        for tag, v in values.items():
            self.tb.add_scalar(tag, v, step)
        if self.wandb is not None:
            self.wandb.log(values, step=step)

    def images(self, step, tag, images, nrow=None):
        """A grid of images [n, 3, H, W] in [0, 1] (nrow per row, default all in one row) at `step`."""
        if self.tb is None:
            return
        from torchvision.utils import make_grid
        grid = make_grid(images.detach().float().clamp(0, 1).cpu(), nrow=nrow or len(images), padding=1)
        self.tb.add_image(tag, grid, step)
        if self.wandb is not None:
            import wandb
            self.wandb.log({tag: wandb.Image(grid.permute(1, 2, 0).numpy())}, step=step)

    def close(self):
        if self.tb is not None:
            self.tb.close()
        if self.wandb is not None:
            self.wandb.finish()
        self.tb = self.wandb = None


def _wandb_run(log_dir, mode):
    try:
        import wandb
    except ImportError:
        raise ImportError(f"{WANDB_ENV}={mode} needs the wandb package: pip install wandb, or unset {WANDB_ENV}") from None
    return wandb.init(mode=mode, dir=log_dir, project="latent-geometry-lab", name=log_dir)


def curves(log_dir=None, start=0):
    """The writer of a training call that starts after `start` steps (None: writes nothing)."""
    return Curves(log_dir, start)
