"""Training from disk in constant host memory (issue 22, item 1): the zoo's trainers read a data set
that does not fit in fit.PRELOAD_BYTES batch by batch, generation_data encodes the training images
from the data set, `lab.train` maps its latents files, and peak RSS does not grow with the data."""
import json
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import save_file

from lab import zoo
from lab.autoencoders import fit
from lab.autoencoders.trainers import train_vae
from lab.autoencoders.vae import KLVAE

torch.set_num_threads(2)


def test_train_images_are_the_in_memory_images_while_they_fit(monkeypatch):
    x, _ = zoo.images("photos", n=6, size=24)
    held = zoo.train_images("photos", 6, 24)
    assert torch.is_tensor(held) and torch.equal(held, x)  # bit for bit: the embedded runs do not move
    monkeypatch.setattr(fit, "PRELOAD_BYTES", 0)
    streamed = zoo.train_images("photos", 6, 24)
    assert not torch.is_tensor(streamed) and len(streamed) == 6
    assert torch.equal(torch.stack([streamed[i][0] for i in range(6)]), x)


def test_dataset_is_cut_to_n():
    assert len(zoo.dataset("fashion", n=5, size=16)) == 5
    assert len(zoo.dataset("photos", n=3, size=16, split="test")) == 3


class _Encoder(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)

    def encode(self, x):
        return self.conv(x).flatten(2).transpose(1, 2)


def test_encode_from_the_data_set_equals_encode_from_its_tensors(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    torch.manual_seed(0)
    ae = _Encoder()
    ds = zoo.dataset("photos", n=10, size=16)
    x, y = zoo.images("photos", n=10, size=16)
    z_ds, y_ds = zoo.encode(ae, ds, None, dict(data="photos", how="dataset"), batch_size=4)
    z_x, y_x = zoo.encode(ae, x, y, dict(data="photos", how="tensor"), batch_size=4)
    assert z_ds.shape == (10, 4, 4) and torch.equal(z_ds, z_x) and torch.equal(y_ds, y_x)


def test_an_autoencoder_trains_alike_from_a_streamed_data_set(monkeypatch):
    """The fit loop on a data set read item by item gives the losses of the in-memory tensor, bit for bit."""
    x, _ = zoo.images("photos", n=8, size=32)
    ds = zoo.dataset("photos", n=8, size=32)

    def losses(data):
        torch.manual_seed(0)
        vae = KLVAE(image_size=32, latent_dim=4, decoder_widths=(16, 8, 8, 8, 8))
        return train_vae(vae, data, steps=3, batch_size=4, lr=1e-3, progress=False)["loss"]
    held = losses(x)
    monkeypatch.setattr(fit, "PRELOAD_BYTES", 0)  # the ImageNet-scale path: never one tensor
    assert not torch.is_tensor(fit.as_tensor(ds))
    assert losses(ds) == held


# ----------------------------------------------------------------------------- peak RSS, 1x vs 8x data

CHILD = r"""
import json, sys
import torch
torch.set_num_threads(1)
from lab import zoo
from lab.autoencoders import fit
kind, where, stream = sys.argv[1], sys.argv[2], sys.argv[3] == "stream"
if kind == "nothing":
    pass
elif kind == "images":
    from lab.autoencoders.trainers import train_vae
    from lab.autoencoders.vae import KLVAE
    if stream:
        fit.PRELOAD_BYTES = 0
    n = int(sys.argv[4])
    data = zoo.train_images("imagefolder", n, 128, root=where)
    vae = KLVAE(image_size=128, latent_dim=4, decoder_widths=(16, 8, 8, 8, 8))
    train_vae(vae, data, steps=4, batch_size=4, lr=1e-3, progress=False)
else:
    from lab.latent_cache import mapped_latents
    from lab.train import train_generator
    latents, labels = mapped_latents([where])
    if not stream:
        latents = torch.cat(latents.parts)  # the old lab.train: every file read into memory
    train_generator(latents, labels, size="tiny", model_kw=dict(width=64, depth=1, heads=2), steps=4,
                    batch_size=8, progress=False, allow_narrow=True)
# VmHWM is this process's own peak, reset at exec. ru_maxrss is not: Linux carries the parent's peak
# over at exec, so under a large pytest process every reading was the parent's (CI: 1790 = 1790 = 1790).
hwm = next(line for line in open("/proc/self/status") if line.startswith("VmHWM:"))
print(json.dumps(int(hwm.split()[1]) / 1024))  # MiB
"""


def _peak_mib(*args):
    out = subprocess.run([sys.executable, "-c", CHILD, *map(str, args)], capture_output=True, text=True,
                         timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def test_peak_rss_is_the_childs_own_not_its_parents():
    """The measurement itself: a child that does nothing reads the same peak whether or not this process
    has just grown by 1 GiB (it did not, with ru_maxrss: CI's readings were all the parent's peak)."""
    alone = _peak_mib("nothing", "-", "-")
    ballast = torch.ones(256 * 2**20)  # 1 GiB, touched
    beside = _peak_mib("nothing", "-", "-")
    del ballast
    assert abs(beside - alone) < 100, (alone, beside)


def _image_folder(root, n_per_class):
    rng = np.random.default_rng(0)
    for split in ("train", "val"):
        for c in ("a", "b"):
            (root / split / c).mkdir(parents=True)
            for i in range(n_per_class if split == "train" else 2):
                base = rng.integers(0, 255, (8, 8, 3), dtype=np.uint8)  # smooth: quick to write and read
                Image.fromarray(base).resize((128, 128), Image.BILINEAR).save(root / split / c / f"{i}.jpg")
    return root


def test_peak_rss_does_not_grow_with_the_image_folder(tmp_path):
    """1x = 256, 8x = 2048 images of 128 px (50 vs 400 MiB as float32 tensors). Streamed, peak RSS stays
    within 20%; the in-memory control at 8x shows the test can see the growth."""
    small = _image_folder(tmp_path / "small", 128)
    large = _image_folder(tmp_path / "large", 1024)
    one, eight = _peak_mib("images", small, "stream", 256), _peak_mib("images", large, "stream", 2048)
    held = _peak_mib("images", large, "memory", 2048)
    print(f"image folder peak RSS (MiB): 1x {one:.0f}, 8x {eight:.0f}, 8x held in memory {held:.0f}")
    assert eight < 1.2 * one
    assert held > one + 300  # the float32 tensor of 2048 images is 400 MiB


def test_peak_rss_does_not_grow_with_the_mapped_latents(tmp_path):
    """1x = 96 MiB, 8x = 768 MiB of fp32 latents [M, 16, 384] on disk, trained through lab.train's
    mapped_latents; the control reads the 8x file into memory as lab.train used to."""
    files = {}
    for name, m in (("one", 4096), ("eight", 8 * 4096)):
        files[name] = tmp_path / f"{name}.safetensors"
        save_file({"latents": torch.randn(m, 16, 384), "labels": torch.arange(m) % 10}, str(files[name]))
    one, eight = _peak_mib("latents", files["one"], "stream"), _peak_mib("latents", files["eight"], "stream")
    held = _peak_mib("latents", files["eight"], "memory")
    print(f"latents peak RSS (MiB): 1x {one:.0f}, 8x {eight:.0f}, 8x held in memory {held:.0f}")
    assert eight < 1.2 * one
    assert held > one + 600
