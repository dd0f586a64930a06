"""Training curves (lab.infra.curves): TensorBoard event files read back with TensorBoard's own reader.

The scalars must equal the trainers' histories, step for step, and logging must not change a weight.
"""
import os
import shutil
import sys
import types

import lab  # noqa: F401  (before timm)
import numpy as np
import pytest
import timm
import torch
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from lab.autoencoders.decoder import ConvDecoder
from lab.autoencoders.fit import fit
from lab.autoencoders.hae import HAE
from lab.autoencoders.stages import train_stage
from lab.autoencoders.trainers import train_vae
from lab.autoencoders.vae import KLVAE
from lab.infra.curves import WANDB_ENV, curves
from lab.train import train_generator


def read(log_dir):
    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0, "images": 0})
    acc.Reload()
    return acc


def scalar(acc, tag):
    """(steps, values) of one scalar tag."""
    events = acc.Scalars(tag)
    return [e.step for e in events], [e.value for e in events]


def f32(values):
    return np.asarray(values, dtype=np.float32).tolist()


def toy_latents(M=16, N=4, C=8):
    g = torch.Generator().manual_seed(0)
    return torch.randn(M, N, C, generator=g), torch.arange(M) % 2


def tiny_vae():
    torch.manual_seed(0)
    return KLVAE(image_size=32, latent_dim=4, widths=(8, 8, 16, 16, 32), decoder_widths=(32, 16, 16, 8, 8))


def tiny_images(n=8, size=32):
    g = torch.Generator().manual_seed(0)
    return torch.nn.functional.interpolate(torch.rand(n, 3, 4, 4, generator=g), size=size, mode="bilinear")


GEN_KW = dict(path="slerp", loss="riemannian", batch_size=8, lr=2e-3, ema_decay=0.9, seed=1, progress=False,
              model_kw=dict(width=32, depth=1, heads=2), log_every=2, ckpt_every=3)


# ----------------------------------------------------------------------------- generator

def test_generator_curves_equal_history_and_change_nothing(tmp_path):
    lat, labels = toy_latents()
    out = train_generator(lat, labels, steps=6, out_dir=str(tmp_path / "run"), **GEN_KW)
    rng_logged = torch.get_rng_state()
    plain = train_generator(lat, labels, steps=6, **GEN_KW)  # no out_dir: no writer at all
    assert torch.equal(torch.get_rng_state(), rng_logged)  # the sample grid drew from its own generator
    for key in ("model", "ema"):
        for (name, a), b in zip(out[key].state_dict().items(), plain[key].state_dict().values()):
            assert torch.equal(a, b), (key, name)
    assert out["losses"] == plain["losses"]

    acc = read(tmp_path / "run" / "tb")
    steps, values = scalar(acc, "loss")
    assert steps == [1, 2, 3, 4, 5, 6] and values == f32(out["losses"])
    assert scalar(acc, "grad_norm")[0] == steps and all(v > 0 for v in scalar(acc, "grad_norm")[1])
    # lr and step time at the host syncs: every log_every=2 steps and at the checkpoint after step 3
    assert scalar(acc, "lr") == ([2, 3, 4, 6], [pytest.approx(2e-3)] * 4)
    assert all(v > 0 for v in scalar(acc, "step_time_s")[1])
    # no decoder here: token-norm statistics of a few EMA samples at each checkpoint stand in for images
    norm_steps, norms = scalar(acc, "samples/token_norm_mean")
    assert norm_steps == [3, 6] and norms == pytest.approx([8 ** 0.5] * 2, rel=1e-2)  # slerp: near the sphere (Euler drifts off it a little)


def test_generator_resume_appends_one_curve(tmp_path):
    """A run 'killed' after logging step 5 but checkpointed at 3 resumes at 3: steps 4-5 show once."""
    lat, labels = toy_latents()
    run = tmp_path / "run"
    train_generator(lat, labels, steps=5, out_dir=str(run), **GEN_KW)  # checkpoints at 3 and 5
    shutil.rmtree(run / "checkpoints" / "step_00000005")  # as if killed before the save of step 5
    resumed = train_generator(lat, labels, steps=7, out_dir=str(run), **GEN_KW)
    assert len(resumed["losses"]) == 7
    steps, values = scalar(read(run / "tb"), "loss")
    assert steps == list(range(1, 8)) and values == f32(resumed["losses"])


# ----------------------------------------------------------------------------- autoencoders

def test_vae_curves_equal_history_with_an_image_grid(tmp_path):
    x = tiny_images()
    hist = train_vae(tiny_vae(), x, steps=4, batch_size=4, lr=1e-3, out_dir=str(tmp_path / "vae"), ckpt_every=2)
    acc = read(tmp_path / "vae" / "tb")
    for key in ("loss", "l1", "kl"):
        steps, values = scalar(acc, key)
        assert steps == hist["step"] == [1, 2, 3, 4] and values == f32(hist[key]), key
    assert scalar(acc, "lr")[0] == [1, 2, 3, 4] and scalar(acc, "grad_norm")[0] == [1, 2, 3, 4]
    # inputs above decodes at the first step and at each checkpoint
    assert [e.step for e in acc.Images("recon")] == [1, 2, 4]
    img = acc.Images("recon")[-1]
    assert (img.width, img.height) == (4 * 33 + 1, 2 * 33 + 1)  # 4 columns, 2 rows, 1-pixel padding


def test_vae_weights_are_bit_identical_with_and_without_curves(tmp_path):
    x = tiny_images()
    a, b = tiny_vae(), tiny_vae()
    ha = train_vae(a, x, steps=3, batch_size=4, lr=1e-3, out_dir=str(tmp_path / "a"))
    hb = train_vae(b, x, steps=3, batch_size=4, lr=1e-3, out_dir=str(tmp_path / "b"), log_dir=None)
    assert not (tmp_path / "b" / "tb").exists() and (tmp_path / "a" / "tb").is_dir()
    assert ha == hb
    for (name, p), q in zip(a.state_dict().items(), b.state_dict().values()):
        assert torch.equal(p, q), name


def test_fit_without_log_dir_writes_nothing(tmp_path):
    w = torch.nn.Parameter(torch.ones(3))
    hist = fit(lambda idx, gen, k: dict(loss=(w ** 2).sum(), rec=(w ** 2).sum()), [w], 4, steps=2,
               batch_size=2, lr=0.1, ckpt_dir=str(tmp_path / "ck"), progress=False)
    assert len(hist["loss"]) == 2 and sorted(os.listdir(tmp_path)) == ["ck"]


def test_each_hae_stage_logs_to_its_own_folder(tmp_path):
    torch.manual_seed(0)
    vit = timm.create_model("vit_small_patch14_dinov2", pretrained=False, img_size=28, dynamic_img_size=True,
                            depth=1, embed_dim=32, num_heads=2, num_classes=0)
    ae = HAE(vit, stem="conv", image_size=32, stem_channels=(8, 16, 32), decoder=ConvDecoder(32, widths=(16, 8, 8, 8, 8)))
    hist = train_stage(ae, tiny_images(4), 1, steps=2, batch_size=2, lpips_net=None, out_dir=str(tmp_path),
                       progress=False)
    acc = read(tmp_path / "tb" / "stage1")
    assert scalar(acc, "align") == ([1, 2], f32(hist["align"]))
    assert acc.Images("recon")


# ----------------------------------------------------------------------------- the writer

def test_only_rank_zero_writes(tmp_path, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    log = curves(str(tmp_path / "tb"))
    log.scalars(1, {"loss": 1.0})
    log.images(1, "recon", torch.zeros(1, 3, 4, 4))
    log.close()
    assert log.tb is None and not (tmp_path / "tb").exists()


def test_nan_terms_are_skipped(tmp_path):
    log = curves(str(tmp_path))
    log.scalars(1, {"loss": 1.0, "g": float("nan")})
    log.scalars(2, {"loss": 0.5, "g": 0.25})
    log.close()
    acc = read(tmp_path)
    assert scalar(acc, "loss") == ([1, 2], [1.0, 0.5]) and scalar(acc, "g") == ([2], [0.25])


def test_lab_wandb_is_off_by_default_and_checked(tmp_path, monkeypatch):
    calls = []
    fake = types.SimpleNamespace(init=lambda **kw: calls.append(kw) or types.SimpleNamespace(
        log=lambda values, step: calls.append((step, values)), finish=lambda: calls.append("finish")))
    monkeypatch.setitem(sys.modules, "wandb", fake)
    monkeypatch.delenv(WANDB_ENV, raising=False)
    curves(str(tmp_path / "off")).close()
    assert calls == []  # unset: wandb is never touched

    monkeypatch.setenv(WANDB_ENV, "online")
    with pytest.raises(ValueError, match=WANDB_ENV):
        curves(str(tmp_path / "bad"))
    assert not (tmp_path / "bad").exists()

    monkeypatch.setenv(WANDB_ENV, "offline")
    log = curves(str(tmp_path / "on"))
    log.scalars(3, {"loss": 0.5})
    log.close()
    assert calls[0]["mode"] == "offline" and calls[0]["dir"] == str(tmp_path / "on")
    assert calls[1:] == [(3, {"loss": 0.5}), "finish"]
    assert scalar(read(tmp_path / "on"), "loss") == ([3], [0.5])  # TensorBoard too

    monkeypatch.setitem(sys.modules, "wandb", None)  # not installed
    with pytest.raises(ImportError, match="pip install wandb"):
        curves(str(tmp_path / "missing"))
