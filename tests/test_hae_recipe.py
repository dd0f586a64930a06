"""The shared HAE recipe: the papers' lambda_cos, stage order and lr ratios, cached teacher tokens
(identical to the per-batch teacher pass), and one HAE for every notebook (zoo.hae's defaults)."""
import inspect
from types import SimpleNamespace

import pytest
import torch

from lab import zoo
from lab.autoencoders import stages
from lab.autoencoders.fit import precompute
from lab.autoencoders.stages import train_stage, train_stages
from test_hae import smooth_images, tiny_hae  # tests/ is on sys.path


def test_lambda_cos_default_is_the_papers_half():
    """DINO-SAE §4.1 and HAE Tab. 9 weigh the cosine loss 0.5; every entry point defaults to it."""
    assert inspect.signature(train_stage).parameters["lambda_cos"].default == 0.5
    assert inspect.signature(zoo.hae).parameters["lambda_cos"].default == 0.5


def test_cached_teacher_tokens_give_the_same_run():
    """Stage 1 with the teacher's tokens computed once equals the per-batch teacher pass: the same
    loss at every step and the same weights after it (the cache changes the cost, not the numbers)."""
    data = smooth_images(8, 32)
    kw = dict(steps=3, batch_size=4, lr=1e-3, lpips_net=None, progress=False, seed=2)
    plain = tiny_hae()
    h_plain = train_stage(plain, data, 1, **kw)
    cached = tiny_hae()
    tokens = precompute(cached.teacher_features, data, batch_size=4)
    h_cached = train_stage(cached, data, 1, teacher_tokens=tokens, **kw)
    assert h_plain["loss"] == h_cached["loss"] and h_plain["align"] == h_cached["align"]
    for (k, v), v2 in zip(plain.state_dict().items(), cached.state_dict().values()):
        assert torch.equal(v, v2), k


def test_cached_teacher_tokens_are_used(monkeypatch):
    """With teacher_tokens given, the teacher never runs in a step (that is the 0.2 s a step it saves)."""
    data = smooth_images(4, 32)
    ae = tiny_hae()
    tokens = precompute(ae.teacher_features, data)
    monkeypatch.setattr(ae, "teacher_features", lambda x: pytest.fail("teacher ran despite the cache"))
    train_stage(ae, data, 1, steps=1, batch_size=2, lpips_net=None, teacher_tokens=tokens, progress=False)


def test_stage_lrs_and_betas_follow_dino_sae(monkeypatch):
    """DINO-SAE §4.1: 1e-5, 1e-4, 1e-4, 5.4e-5 -> ratios 1 : 10 : 10 : 5.4 to stage 1's lr, in the
    order align -> GAN -> decoder -> noise; betas (0.5, 0.9) from the GAN stage on."""
    seen = []
    monkeypatch.setattr(stages, "train_stage", lambda ae, data, stage, **kw: seen.append((stage, kw)) or {})
    monkeypatch.setattr(stages, "DinoDisc", lambda teacher: "disc")
    train_stages(SimpleNamespace(teacher=None), None, (3, 2, 2, 2), lr=1e-3, lpips_net=None)
    assert [s for s, _ in seen] == [1, 2, 3, 4]
    assert [kw["lr"] for _, kw in seen] == pytest.approx([1e-3, 1e-2, 1e-2, 5.4e-3])
    assert [kw["betas"][0] for _, kw in seen] == [0.9, 0.5, 0.5, 0.5]
    with pytest.raises(ValueError, match="lr_scale"):
        train_stages(object(), None, (1, 1, 1, 1), lr_scale=(1, 2))


def test_explorer_loads_the_shared_hae(monkeypatch):
    """Notebook 00 reads the one HAE: whatever data / steps the explorer is given, zoo.hae gets its defaults."""
    from lab import explore
    seen = []
    monkeypatch.setattr(zoo, "hae", lambda **kw: seen.append(kw) or "hae")
    assert explore.load_autoencoder("hae", data="fashion", n_train=16, steps=5) == "hae"
    assert seen == [dict(size=64, seed=0)]
