"""Encode a data set once and cache the latents on disk, so probes and generators never re-encode.

Layout: <cache_root>/<readable key>-<hash>/key.json + shard_00000.safetensors (+ its
.record.json), ... Each shard holds `latents` [S, N, C] (float32, or bf16 / fp16 with `dtype`) and
`labels` [S] int64 for a contiguous range of items; its record (lab.infra.cache.write_verified)
holds its size and sha256. A half-precision cache holds exactly the float32 latents cast to it.

Memory: safetensors maps a shard file rather than reading it, so with mapped=True nothing is
concatenated: `MappedLatents` gathers the rows a step asks for straight from the mapped files, and
the ranks of a node share one copy of the pages in the OS page cache.

Why it cannot be corrupted by kills or by two processes at once:
- key.json is written once, atomically, when the folder is made; reading the cache writes nothing.
- A shard is written under a unique temporary name and renamed into place, then its record is
  written: a shard exists only when complete, so a killed encode resumes from its finished shards
  (one without a record is encoded again).
- Every shard is checked against its record before it is loaded (size and fingerprint, the full
  sha256 for shards under cache.FULL_HASH_BELOW or with verify=True / LAB_VERIFY_FULL=1; a full
  check of a folder is `python -m lab.commands.verify FOLDER`); one that fails (an overwritten
  tail, two shards swapped) is named in a warning, moved aside and encoded again. A cut key.json
  likewise. Encoding runs under an inter-process lock: a second process waits, then reads.
"""
import hashlib
import json
import math
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch.utils.data import DataLoader, Subset
from tqdm.auto import tqdm

from lab.data import to_float
from lab.infra import cache, safe_files

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "runs" / "_latents"


def key_dir(key, n_items, cache_root=None):
    """Folder for a key: readable 'k=v' parts (shortened) plus a hash of the full key + length."""
    full = dict(key, _items=n_items)
    digest = hashlib.sha1(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:10]
    readable = "-".join(f"{k}={v}" for k, v in key.items())
    readable = re.sub(r"[^A-Za-z0-9=._-]+", "_", readable)[:80]
    return Path(cache_root or DEFAULT_ROOT) / f"{readable}-{digest}", full


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def _batches(dataset, start, stop, batch_size, num_workers, device):
    """Items start..stop-1 in order, decoded by `num_workers` workers, pinned when the device is CUDA.
    Its own generator: a DataLoader seeds its workers from the global RNG otherwise, and encoding
    (cached or not) must leave a notebook's random stream as it was."""
    cuda = device is not None and torch.device(device).type == "cuda"
    return DataLoader(Subset(dataset, range(start, stop)), batch_size=batch_size, num_workers=num_workers,
                      pin_memory=cuda, generator=torch.Generator().manual_seed(start))


def _shard(folder, s):
    return folder / f"shard_{s:05d}.safetensors"


def _read_meta(folder, full):
    """key.json as a dict; None if missing or unreadable. Raises if it holds another key."""
    try:
        meta = cache.read_json(folder / "key.json", "latent cache key")
    except (FileNotFoundError, cache.CorruptFile):
        return None
    if not isinstance(meta.get("shard_size"), int) or "key" not in meta:
        return None
    if meta["key"] != full:
        raise RuntimeError(f"{folder} holds latents of another key (hash collision?); delete it")
    return meta


def _meta(folder, full, m, shard_size):
    """key.json, written now if missing; a cut or garbled one is moved aside and written again.

    Called under the folder's lock. Returns (meta, rebuild_all): after a bad key.json the shards'
    layout is unknown, so every shard is encoded again."""
    path = folder / "key.json"
    meta = _read_meta(folder, full)
    if meta is not None:
        return meta, False
    rebuild = path.exists()
    if rebuild:
        safe_files.set_aside(path, f"latent cache key file {path} is cut short or not JSON",
                             "every shard is encoded again")
    meta = dict(key=full, items=m, shard_size=shard_size, shards=math.ceil(m / shard_size))
    cache.write_json(path, meta)
    return meta, rebuild


def _check(folder, s, full=None):
    """None if shard s is present and matches its record, else what is wrong (full: cache.verify_file's)."""
    shard = _shard(folder, s)
    if not shard.exists():
        return "missing"
    if not cache.record_path(shard).exists():
        return "unrecorded"  # a kill between shard and record, or a cache older than records
    try:
        cache.verify_file(shard, what=f"latent shard {shard}", full=full)
    except cache.CorruptFile as err:
        return err.reason
    return None


def _encode_shard(encode_fn, dataset, folder, s, start, stop, batch_size, bar, dtype, device, num_workers):
    lat, lab = [], []
    for x, y in _batches(dataset, start, stop, batch_size, num_workers, device):
        with torch.no_grad():
            z = encode_fn(to_float(x, device))
        lat.append(z.detach().float().to(dtype).cpu())  # rounded once, from float32
        lab.append(torch.as_tensor(y).long())
        bar.update(len(y))
    tensors = {"latents": torch.cat(lat).contiguous(), "labels": torch.cat(lab)}
    cache.write_verified(_shard(folder, s), lambda tmp: save_file(tensors, str(tmp)), items=[start, stop])


def cached_latents(encode_fn, dataset, key, batch_size=64, cache_root=None, shard_size=None,
                   progress=True, dtype=None, device=None, num_workers=0, mapped=False, verify=False):
    """(latents [M, N, C], labels [M] int64) of `encode_fn` over `dataset`, cached on disk.

    encode_fn: images [B, 3, H, W] float32 in [0, 1] -> tokens [B, N, C] (runs under torch.no_grad()).
    key: what identifies the latents, e.g. dict(encoder='dinov2_s_imgfocus', data='photos',
        res=64, n=2048, seed=0); it must change whenever the latents would.
    shard_size: items per shard (default 16 batches); finished shards are reused after a kill.
    dtype: 'fp32' | 'bf16' | 'fp16' (or the torch dtype) the latents are stored and returned in;
        default bf16 when `device` is CUDA, else fp32 (what every CPU result was computed from).
    device: where batches go before encode_fn (uint8 images become float there); None leaves them
        on the CPU. num_workers: DataLoader workers that decode the images (pinned on CUDA).
    mapped: return MappedLatents (rows read from the mapped shards on demand; for torchrun ranks)
        instead of one tensor in memory.
    verify: hash every byte of every shard before loading (default: size and fingerprint for shards
        of cache.FULL_HASH_BELOW bytes or more, so opening a huge cache reads only their headers).
    """
    if not isinstance(key, dict) or not key:
        raise ValueError(f"key must be a non-empty dict naming encoder, data, resolution, n; got {key!r}")
    dtype = _dtype(dtype, device)
    m = len(dataset)
    if dtype != torch.float32:  # float32 caches keep the folder names they always had
        key = dict(key, _dtype=str(dtype).removeprefix("torch."))
    folder, full = key_dir(key, m, cache_root)
    full = json.loads(json.dumps(full, default=str))
    meta = _read_meta(folder, full)  # the common case reads only, without a lock
    every_byte = True if verify else None
    if meta is None or any(_check(folder, s, every_byte) for s in range(meta["shards"])):
        folder.mkdir(parents=True, exist_ok=True)
        with safe_files.file_lock(folder / ".lock", what=f"latents {folder.name}", log=None):
            meta, rebuild = _meta(folder, full, m, shard_size or batch_size * 16)
            _fill(encode_fn, dataset, folder, meta, batch_size, rebuild, progress, (dtype, device, num_workers),
                  every_byte)
    return _load(folder, meta, m, mapped)


def _dtype(dtype, device):
    if dtype is None:
        cuda = device is not None and torch.device(device).type == "cuda"
        return torch.bfloat16 if cuda else torch.float32
    if isinstance(dtype, str):
        if dtype not in DTYPES:
            raise ValueError(f"dtype={dtype!r}: allowed values are {', '.join(DTYPES)}")
        return DTYPES[dtype]
    if dtype not in DTYPES.values():
        raise ValueError(f"dtype={dtype}: allowed values are {', '.join(map(str, DTYPES.values()))}")
    return dtype


def _fill(encode_fn, dataset, folder, meta, batch_size, rebuild, progress, how, full=None):
    """Encode every shard that is missing or fails its record (the bad ones moved aside first)."""
    m, size = meta["items"], meta["shard_size"]
    todo = []
    for s in range(meta["shards"]):
        bad = "rebuild" if rebuild else _check(folder, s, full)
        if bad and bad not in ("missing", "rebuild", "unrecorded"):
            safe_files.set_aside(_shard(folder, s), f"latent shard {_shard(folder, s)} is corrupt: {bad}",
                                 "it is encoded again")
        if bad:
            todo.append(s)
    bar = tqdm(total=sum(min(size, m - s * size) for s in todo), unit="img",
               desc=f"encoding {folder.name[:40]}", disable=not progress or not todo)
    for s in todo:
        _encode_shard(encode_fn, dataset, folder, s, s * size, min((s + 1) * size, m), batch_size, bar, *how)
    bar.close()


def _load(folder, meta, m, mapped=False):
    latents, labels = mapped_latents([_shard(folder, s) for s in range(meta["shards"])])
    if len(latents) != m:
        raise RuntimeError(f"{folder}: {len(latents)} cached latents for {m} items; delete the folder")
    return (latents if mapped else torch.cat(latents.parts)), labels


def mapped_latents(files, latents_key="latents", labels_key="labels"):
    """(MappedLatents over the files' `latents_key` tensors, labels [M] int64 in memory) of safetensors
    files (zeros where a file has no labels); `torchrun -m lab.train --latents` files, for instance."""
    parts, labels = [], []
    for f in files:
        d = load_file(str(f))  # mapped, not read: a shard's pages are read when rows are gathered
        if latents_key not in d:
            raise KeyError(f"{f} has no tensor {latents_key!r} (has {sorted(d)})")
        parts.append(d[latents_key])
        labels.append(d[labels_key].long() if labels_key in d else torch.zeros(len(d[latents_key]), dtype=torch.long))
    return MappedLatents(parts), torch.cat(labels)


class MappedLatents:
    """Latents [M, N, C] kept as the memory-mapped shard tensors `parts`, indexed by rows like a
    tensor: latents[idx] gathers rows idx (a tensor or list of ints, a slice, an int) from the files,
    in the shards' dtype. Has shape, dtype, device (cpu), len() and dim(), which is what
    lab.train.global_batch uses; `torch.cat(latents.parts)` is the whole tensor in memory."""

    def __init__(self, parts):
        if not parts or any(p.shape[1:] != parts[0].shape[1:] or p.dtype != parts[0].dtype for p in parts):
            raise ValueError("MappedLatents needs one or more shards of one row shape and dtype")
        self.parts = list(parts)
        self.ends = torch.tensor([len(p) for p in self.parts]).cumsum(0)
        self.shape = torch.Size([int(self.ends[-1]), *parts[0].shape[1:]])
        self.dtype, self.device = parts[0].dtype, torch.device("cpu")

    def __len__(self):
        return self.shape[0]

    def dim(self):
        return len(self.shape)

    def __getitem__(self, idx):
        if isinstance(idx, int):
            return self[[idx]][0]
        idx = torch.arange(len(self))[idx] if isinstance(idx, slice) else torch.as_tensor(idx, dtype=torch.long)
        idx = torch.where(idx < 0, idx + len(self), idx)
        if len(idx) and (idx.min() < 0 or idx.max() >= len(self)):
            raise IndexError(f"row index out of range for {len(self)} latents")
        shard = torch.bucketize(idx, self.ends, right=True)
        out = torch.empty((len(idx), *self.shape[1:]), dtype=self.dtype)
        for s in shard.unique().tolist():
            rows = shard == s
            out[rows] = self.parts[s][idx[rows] - (self.ends[s] - len(self.parts[s]))]
        return out
