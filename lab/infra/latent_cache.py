"""Encode a data set once and cache the latents on disk, so probes and generators never re-encode.

Layout: <cache_root>/<readable key>-<hash>/key.json + shard_00000.safetensors, ... Each shard
holds `latents` [S, N, C] float32 and `labels` [S] int64 for a contiguous range of items and is
written atomically, so a killed run resumes from its finished shards.
"""
import hashlib
import json
import math
import os
import re
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from tqdm.auto import tqdm

DEFAULT_ROOT = Path(__file__).resolve().parents[1] / "runs" / "_latents"


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
    folder.mkdir(parents=True, exist_ok=True)
    meta_path = folder / "key.json"
    shard_size = shard_size or batch_size * 16
    if meta_path.exists():
        old = json.loads(meta_path.read_text())
        if old["key"] != json.loads(json.dumps(full, default=str)):
            raise RuntimeError(f"{folder} holds latents of another key (hash collision?); delete it")
        shard_size = old["shard_size"]  # resume with the shard layout already on disk
    n_shards = math.ceil(m / shard_size)
    meta_path.write_text(json.dumps(dict(key=full, items=m, shard_size=shard_size, shards=n_shards),
                                    indent=2, default=str))
    shard = lambda s: folder / f"shard_{s:05d}.safetensors"
    todo = [s for s in range(n_shards) if not shard(s).exists()]
    bar = tqdm(total=sum(min(shard_size, m - s * shard_size) for s in todo), unit="img",
               desc=f"encoding {folder.name[:40]}", disable=not progress or not todo)
    for s in todo:
        start, stop = s * shard_size, min((s + 1) * shard_size, m)
        lat, lab = [], []
        for x, y in _batches(dataset, start, stop, batch_size):
            with torch.no_grad():
                z = encode_fn(x)
            lat.append(z.detach().float().cpu())
            lab.append(y)
            bar.update(len(y))
        tmp = shard(s).with_suffix(".tmp")
        save_file({"latents": torch.cat(lat).contiguous(), "labels": torch.cat(lab)}, str(tmp))
        os.replace(tmp, shard(s))  # atomic: a shard exists only when complete
    bar.close()
    parts = [load_file(str(shard(s))) for s in range(n_shards)]
    latents = torch.cat([p["latents"] for p in parts])
    labels = torch.cat([p["labels"] for p in parts])
    if len(latents) != m:
        raise RuntimeError(f"{folder}: {len(latents)} cached latents for {m} items; delete the folder")
    return latents, labels
