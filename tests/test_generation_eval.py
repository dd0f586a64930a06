"""The generation side of issue 11: class agreement wired through evaluate.quality, the real-image
features cached once per data set, the one-row-per-class gallery and the report's agreement table."""
import numpy as np
import pandas as pd
import pytest
import torch

from lab import class_agreement as ca
from lab import evaluate, figures, metrics, zoo
from lab.commands import report


class Identity(torch.nn.Module):
    """A stand-in autoencoder whose latents are the images: decode(z) = z."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(1))

    def decode(self, z):
        return z


def colour_features(images01, kind="effnet", size=224, **_):
    """Stand-in features: the per-channel mean (the class is painted into the colour below)."""
    return images01.float().mean(dim=(2, 3))


def painted(labels, k=4):
    """Images [n, 3, 8, 8] whose colour names the class: channel 0 = label / k."""
    x = torch.zeros(len(labels), 3, 8, 8)
    x[:, 0] = (labels.float() / k)[:, None, None]
    x[:, 1] = 0.5
    return x


def test_quality_scores_the_requested_class_on_the_same_features_as_the_fd(monkeypatch):
    monkeypatch.setattr(metrics, "extract_features", colour_features)
    y = torch.arange(40) % 4
    real = painted(y)
    clf = ca.fit_classifier(colour_features(real).numpy(), y.numpy())
    real_feats = colour_features(real)
    asked = y.clone()
    asked[:10] = (asked[:10] + 1) % 4            # 10 of 40 samples show another class than requested
    q, images = evaluate.quality(Identity(), real, real, real_feats, classifier=clf, requested=asked)
    assert q["class_agreement"] == pytest.approx(0.75)
    assert q["fd_images"] == pytest.approx(0.0, abs=1e-6)   # same features on both sides
    assert torch.equal(images, real.clamp(0, 1))
    q_plain, _ = evaluate.quality(Identity(), real, real, real_feats)
    assert "class_agreement" not in q_plain


def test_real_features_are_computed_once_and_rebuilt_when_the_file_is_cut(tmp_path, monkeypatch):
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    calls = []

    def fake(images01, size=64):
        calls.append(size)
        return images01.float().flatten(1).numpy()[:, :5] + size
    monkeypatch.setattr(ca, "image_features", fake)
    x = torch.rand(6, 3, 4, 4)
    key = dict(data="fashion", size=4, split="test", n=6)
    first = zoo.real_features(x, key, size=32)
    again = zoo.real_features(x, key, size=32)
    assert calls == [32] and np.array_equal(first, again)
    zoo.real_features(x, key, size=48)          # another feature size is another entry
    assert calls == [32, 48]
    path = zoo.recipe_dir("features", dict(key, feature_size=32)) / "features.npy"
    path.write_bytes(path.read_bytes()[:20])    # a cut file
    with pytest.warns(Warning, match="unreadable"):
        rebuilt = zoo.real_features(x, key, size=32)
    assert calls == [32, 48, 32] and np.array_equal(rebuilt, first)


def test_class_mosaic_puts_class_k_in_row_k():
    labels = torch.tensor([2, 0, 1, 2, 0])
    images = painted(labels, k=3)
    m = figures.class_mosaic(images, labels, num_classes=4, n=2, pad=1)
    assert m.shape == (3, 4 * 9, 2 * 9)
    for k in range(3):
        assert torch.allclose(m[0, k * 9:k * 9 + 8, :8], torch.full((8, 8), k / 3))
    assert torch.equal(m[:, 3 * 9:, :], torch.ones(3, 9, 18))   # class 3 has no samples: blank row
    assert torch.equal(m[:, 9:17, 9:17], torch.ones(3, 8, 8))   # class 1 has one sample: its 2nd cell blank


def test_report_summarises_agreement_per_configuration_and_guidance():
    t = pd.DataFrame([dict(config="a", seed=1, guidance="CFG 3", n=10, class_agreement=0.5),
                      dict(config="a", seed=0, guidance="CFG 3", n=10, class_agreement=0.3),
                      dict(config="a", seed=0, guidance="no CFG", n=5, class_agreement=0.1),
                      dict(config="chance", seed=0, guidance="-", n=0, class_agreement=0.1)])
    s = report.agreement_summary(t)
    assert list(s["samples of"]) == ["a", "a", "chance"]
    row = s.iloc[0]
    assert (row["guidance"], row["seeds"], row["n per seed"]) == ("CFG 3", 2, 10)
    assert row["class agreement (mean)"] == report._g(0.4)
    assert row["per seed"] == f"{report._g(0.3)}, {report._g(0.5)}"   # in seed order
