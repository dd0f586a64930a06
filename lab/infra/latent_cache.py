"""Encode a data set once and cache the latents on disk, so probes and generators never re-encode.

Layout: <cache_root>/<readable key>-<hash>/key.json + shard_00000.safetensors (+ its
.record.json), ... Each shard holds `latents` [S, N, C] float32 and `labels` [S] int64 for a
contiguous range of items; its record (lab.infra.cache.write_verified) holds its size and sha256.

Why it cannot be corrupted by kills or by two processes at once:
- key.json is written once, atomically, when the folder is made; reading the cache writes nothing.
- A shard is written under a unique temporary name and renamed into place, then its record is
  written: a shard exists only when complete, so a killed encode resumes from its finished shards
  (one without a record is encoded again).
- Every shard is checked against its record before it is loaded; one that fails (an overwritten
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
from tqdm.auto import tqdm

from lab.infra import cache, safe_files

DEFAULT_ROOT = Path(__file__).resolve().parents[2] / "runs" / "_latents"


def key_dir(key, n_items, cache_root=None):
    """Folder for a key: readable 'k=v' parts (shortened) plus a hash of the full key + length."""
    full = dict(key, _items=n_items)
    digest = hashlib.sha1(json.dumps(full, sort_keys=True, default=str).encode()).hexdigest()[:10]
    readable = "-".join(f"{k}={v}" for k, v in key.items())
    readable = re.sub(r"[^A-Za-z0-9=._-]+", "_", readable)[:80]
    return Path(cache_root or DEFAULT_ROOT) / f"{readable}-{digest}", full


def _batches(dataset, start, stop, batch_size):
    for b in range(start, stop, batch_size):
        items = [dataset[i] for i in range(b, min(b + batch_size, stop))]
        yield torch.stack([x for x, _ in items]), torch.tensor([int(y) for _, y in items])


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


def _check(folder, s):
    """None if shard s is present and matches its record, else what is wrong."""
    shard = _shard(folder, s)
    if not shard.exists():
        return "missing"
    if not cache.record_path(shard).exists():
        return "unrecorded"  # a kill between shard and record, or a cache older than records
    try:
        cache.verify_file(shard, what=f"latent shard {shard}")
    except cache.CorruptFile as err:
        return err.reason
    return None


def _encode_shard(encode_fn, dataset, folder, s, start, stop, batch_size, bar):
    lat, lab = [], []
    for x, y in _batches(dataset, start, stop, batch_size):
        with torch.no_grad():
            z = encode_fn(x)
        lat.append(z.detach().float().cpu())
        lab.append(y)
        bar.update(len(y))
    tensors = {"latents": torch.cat(lat).contiguous(), "labels": torch.cat(lab)}
    cache.write_verified(_shard(folder, s), lambda tmp: save_file(tensors, str(tmp)), items=[start, stop])


def cached_latents(encode_fn, dataset, key, batch_size=64, cache_root=None, shard_size=None,
                   progress=True):
    """(latents [M, N, C] float32, labels [M] int64) of `encode_fn` over `dataset`, cached on disk.

    encode_fn: images [B, 3, H, W] in [0, 1] -> tokens [B, N, C] (runs under torch.no_grad()).
    key: what identifies the latents, e.g. dict(encoder='dinov2_s_imgfocus', data='photos',
        res=64, n=2048, seed=0); it must change whenever the latents would.
    shard_size: items per shard (default 16 batches); finished shards are reused after a kill.
    """
    if not isinstance(key, dict) or not key:
        raise ValueError(f"key must be a non-empty dict naming encoder, data, resolution, n; got {key!r}")
    m = len(dataset)
    folder, full = key_dir(key, m, cache_root)
    full = json.loads(json.dumps(full, default=str))
    meta = _read_meta(folder, full)  # the common case reads only, without a lock
    if meta is None or any(_check(folder, s) for s in range(meta["shards"])):
        folder.mkdir(parents=True, exist_ok=True)
        with safe_files.file_lock(folder / ".lock", what=f"latents {folder.name}", log=None):
            meta, rebuild = _meta(folder, full, m, shard_size or batch_size * 16)
            _fill(encode_fn, dataset, folder, meta, batch_size, rebuild, progress)
    return _load(folder, meta, m)


def _fill(encode_fn, dataset, folder, meta, batch_size, rebuild, progress):
    """Encode every shard that is missing or fails its record (the bad ones moved aside first)."""
    m, size = meta["items"], meta["shard_size"]
    todo = []
    for s in range(meta["shards"]):
        bad = "rebuild" if rebuild else _check(folder, s)
        if bad and bad not in ("missing", "rebuild", "unrecorded"):
            safe_files.set_aside(_shard(folder, s), f"latent shard {_shard(folder, s)} is corrupt: {bad}",
                                 "it is encoded again")
        if bad:
            todo.append(s)
    bar = tqdm(total=sum(min(size, m - s * size) for s in todo), unit="img",
               desc=f"encoding {folder.name[:40]}", disable=not progress or not todo)
    for s in todo:
        _encode_shard(encode_fn, dataset, folder, s, s * size, min((s + 1) * size, m), batch_size, bar)
    bar.close()


def _load(folder, meta, m):
    parts = [load_file(str(_shard(folder, s))) for s in range(meta["shards"])]
    latents = torch.cat([p["latents"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    if len(latents) != m:
        raise RuntimeError(f"{folder}: {len(latents)} cached latents for {m} items; delete the folder")
    return latents, labels
