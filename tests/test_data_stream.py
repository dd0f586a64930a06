"""Data that streams (issue 10): uint8 images, DataLoader paths equal to the in-memory ones,
ranks that partition an epoch, bf16 / fp16 latent caches, memory-mapped shards, torchrun from
a notebook."""
import subprocess
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lab import data, trainutil
from lab.commands import launch
from lab import latent_cache as latents

torch.set_num_threads(2)


# ----------------------------------------------------------------------------- uint8 images

@pytest.mark.parametrize("make", [lambda u8: data.digits(size=16, n=12, uint8=u8),
                                  lambda u8: data.photos(n=6, size=24, uint8=u8)])
def test_uint8_images_become_the_float_images_exactly(make):
    x8, y8 = data.tensors(make(True))
    x, y = data.tensors(make(False))
    assert x8.dtype == torch.uint8 and x.dtype == torch.float32 and torch.equal(y8, y)
    assert x8.untyped_storage().nbytes() * 4 == x.untyped_storage().nbytes()
    back = data.to_float(x8)
    assert back.dtype == torch.float32 and torch.equal(back, x)  # bit for bit, not allclose
    assert torch.equal(data.to_float(x), x)  # float images pass through


def test_uint8_imagefolder_round_trip(tmp_path):
    from PIL import Image
    arr = (torch.rand(3, 40, 50, 3, generator=torch.Generator().manual_seed(0)) * 255).byte().numpy()
    (tmp_path / "a").mkdir()
    for k in range(3):
        Image.fromarray(arr[k]).save(tmp_path / "a" / f"{k}.png")
    x8, x = data.tensors(data.imagefolder(tmp_path, 32, uint8=True))[0], data.tensors(data.imagefolder(tmp_path, 32))[0]
    assert torch.equal(data.to_float(x8), x)


# ----------------------------------------------------------------------------- loaders

def _indexed(n=40, size=8, uint8=False):
    """digits whose label is the item's index, to see which items a loader hands out."""
    ds = data.digits(size=size, n=n, uint8=uint8)
    ds.targets = list(range(n))
    return ds


@pytest.mark.parametrize("workers", [0, 2])
def test_step_loader_yields_the_in_memory_batches_of_the_trainers(workers):
    ds = _indexed(uint8=True)
    x, _ = data.tensors(_indexed())  # the in-memory path: float images, indexed per step
    seed, stream, steps = 3, 1, 6
    got = list(data.step_loader(ds, 8, seed, steps, stream=stream, num_workers=workers))
    assert len(got) == steps
    for k, (xb, yb) in enumerate(got):
        g_idx, _ = trainutil.step_generators(seed, k, "cpu", stream)  # lab.autoencoders.fit's draw
        idx = torch.randint(len(x), (8,), generator=g_idx)
        assert torch.equal(yb, idx) and torch.equal(data.to_float(xb), x[idx])
    resumed = list(data.step_loader(ds, 8, seed, steps, start=4, stream=stream, num_workers=workers))
    assert all(torch.equal(a[0], b[0]) for a, b in zip(resumed, got[4:])) and len(resumed) == 2


def test_step_loader_ranks_get_their_rows_of_the_generators_global_batch():
    from lab.train import global_batch
    z = torch.randn(40, 4, 8)
    ds = torch.utils.data.TensorDataset(z, torch.arange(40))
    kw = dict(batch_size=8, seed=5, path="linear", time_dist="uniform", shift=False, label_dropout=0.0,
              num_classes=40, device="cpu")
    for rank in (0, 1):
        for k, (zb, _) in enumerate(data.step_loader(ds, 8, 5, 3, rank=rank, world=2)):
            x1, *_ = global_batch(z, torch.arange(40), k, rows=slice(4 * rank, 4 * rank + 4), **kw)
            assert torch.equal(zb, x1)


@pytest.mark.parametrize("workers", [0, 2])
def test_loader_world_one_is_the_in_memory_shuffle(workers):
    ds = _indexed(uint8=True)
    x, _ = data.tensors(_indexed())
    stream = data.loader(ds, 8, seed=7, num_workers=workers, device="cpu")
    for epoch in range(2):
        perm = torch.randperm(len(x), generator=torch.Generator().manual_seed(7 + epoch))
        batches = list(stream)
        assert len(batches) == 5
        for j, (xb, yb) in enumerate(batches):
            assert torch.equal(yb, perm[8 * j:8 * j + 8]) and torch.equal(data.to_float(xb), x[yb])


def test_two_simulated_ranks_partition_each_epoch():
    ds = _indexed()
    ranks = [data.loader(ds, 8, seed=1, rank=r, world=2, num_workers=0) for r in (0, 1)]
    for epoch in range(2):
        batches = [list(stream) for stream in ranks]  # one pass over a loader is one epoch
        assert all(len(y) == 4 for b in batches for _, y in b)  # each rank loads half of every global batch
        seen = torch.cat([y for b in batches for _, y in b])
        assert sorted(seen.tolist()) == list(range(40))  # disjoint, and the whole epoch
    assert all(stream.epoch == 2 for stream in ranks)
    with pytest.raises(ValueError, match="global batch"):
        data.loader(ds, 7, rank=0, world=2)


# ----------------------------------------------------------------------------- latent cache

def _encode(x):
    return torch.stack([x.mean((2, 3)), x.std((2, 3))], 1) * 3.3  # [B, 2, 3], values bf16 must round


def _cache(root, **kw):
    ds = data.digits(size=8, n=40, uint8=kw.pop("uint8", False))
    return latents.cached_latents(_encode, ds, dict(enc="moments", n=40), batch_size=8, cache_root=root,
                                  shard_size=16, progress=False, **kw)


def test_half_precision_caches_are_the_float32_latents_cast(tmp_path):
    z32, y = _cache(tmp_path)
    assert z32.dtype == torch.float32
    assert torch.equal(z32, _encode(data.tensors(data.digits(size=8, n=40))[0]))  # fp32: exact
    for name, dtype in (("bf16", torch.bfloat16), ("fp16", torch.float16)):
        z, y2 = _cache(tmp_path, dtype=name)
        assert z.dtype == dtype and torch.equal(z, z32.to(dtype)) and torch.equal(y, y2)
        assert not torch.equal(z.float(), z32)  # it did round
    folders = sorted(p.name for p in tmp_path.iterdir())
    assert len(folders) == 3 and sum("_dtype=bfloat16" in f for f in folders) == 1
    z8, _ = _cache(tmp_path, uint8=True, dtype="fp32")  # uint8 images: floats made before encoding
    assert torch.equal(z8, z32)
    with pytest.raises(ValueError, match="fp32, bf16, fp16"):
        _cache(tmp_path, dtype="int8")


def test_float32_cache_folder_and_the_global_rng_are_unchanged(tmp_path):
    ds = data.digits(size=8, n=40)
    folder, _ = latents.key_dir(dict(enc="moments", n=40), 40, tmp_path)
    torch.manual_seed(0)
    _cache(tmp_path)
    after = torch.rand(3)
    torch.manual_seed(0)
    assert torch.equal(torch.rand(3), after)  # encoding draws nothing from the notebook's RNG
    assert [p.name for p in tmp_path.iterdir()] == [folder.name] and len(ds) == 40
    assert latents._dtype(None, "cuda") is torch.bfloat16 and latents._dtype(None, None) is torch.float32


def test_mapped_latents_gather_rows_like_the_tensor(tmp_path):
    z, y = _cache(tmp_path, dtype="bf16")
    m, y2 = _cache(tmp_path, dtype="bf16", mapped=True)
    assert isinstance(m, latents.MappedLatents) and len(m.parts) == 3 and torch.equal(y, y2)
    assert m.shape == z.shape and m.dim() == 3 and m.dtype == torch.bfloat16 and len(m) == 40
    idx = torch.tensor([39, 0, 16, 15, 16, 33, 2])  # across shards, repeated, out of order
    assert torch.equal(m[idx], z[idx]) and torch.equal(m[3:35:4], z[3:35:4]) and torch.equal(m[-1], z[-1])
    assert torch.equal(torch.cat(m.parts), z)
    with pytest.raises(IndexError):
        m[[40]]


def _mapped_file(ptr):
    """The file whose memory mapping holds address ptr (from /proc/self/maps), or None."""
    for line in Path("/proc/self/maps").read_text().splitlines():
        fields = line.split(maxsplit=5)
        lo, hi = (int(a, 16) for a in fields[0].split("-"))
        if lo <= ptr < hi:
            return fields[5] if len(fields) == 6 else None
    return None


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/self/maps")
def test_mapped_latents_are_views_of_the_shard_files(tmp_path):
    """Each shard is a view of its mapped file (nothing copied, so a node's ranks share the pages);
    only the gathered rows are new memory."""
    m, _ = _cache(tmp_path, dtype="bf16", mapped=True)
    folder = next(tmp_path.iterdir())
    for s, part in enumerate(m.parts):
        assert _mapped_file(part.data_ptr()) == str(folder / f"shard_{s:05d}.safetensors")
    in_a_file = lambda t: (_mapped_file(t.data_ptr()) or "").endswith(".safetensors")
    assert not in_a_file(m[[0, 20]])  # the gathered rows: process memory
    z, _ = _cache(tmp_path, dtype="bf16")
    assert not in_a_file(z)  # mapped=False: one tensor in memory, as before


# ----------------------------------------------------------------------------- torchrun from a notebook

def test_torchrun_command_line():
    cmd = launch.command("lab.train", nproc=4, latents=["a.st", "b.st"], out_dir="runs/x", size="XL",
                         no_shift=True, precision=None, steps=10)
    assert cmd[1:] == ["-m", "torch.distributed.run", "--standalone", "--nproc_per_node=4", "-m", "lab.train",
                       "--latents", "a.st", "b.st", "--out-dir", "runs/x", "--size", "XL", "--no-shift",
                       "--steps", "10"]
    assert launch.command("train.py", nproc=1)[-1] == "train.py"


def test_torchrun_trains_one_generator_on_two_gloo_ranks(tmp_path):
    save_file({"latents": torch.randn(32, 4, 8), "labels": torch.arange(32) % 3}, str(tmp_path / "z.safetensors"))
    lines = []
    launch.torchrun("lab.train", nproc=2, env={"LAB_DEVICE": "cpu", "OMP_NUM_THREADS": "1"}, log=lines.append,
                    latents=[tmp_path / "z.safetensors"], out_dir=tmp_path / "out", size="tiny", steps=2,
                    batch_size=8, ckpt_every=2, device="cpu")
    assert any("done: step 2" in line for line in lines)
    assert (tmp_path / "out" / "checkpoints" / "step_00000002").is_dir()
    (tmp_path / "fail.py").write_text("import sys; sys.exit(3)\n")
    with pytest.raises(subprocess.CalledProcessError):  # a failed rank fails the cell
        launch.torchrun(tmp_path / "fail.py", nproc=1, log=lambda _: None)


def test_the_generator_trains_alike_on_mapped_latents(tmp_path):
    from lab.train import train_generator
    z, y = _cache(tmp_path)
    m, _ = _cache(tmp_path, mapped=True)
    run = lambda lat: train_generator(lat, y, steps=3, batch_size=8, progress=False, device="cpu")["losses"]
    assert run(m) == run(z)
