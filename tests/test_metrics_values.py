"""lab.metrics' wiring, by value: the streamed FD equals the FD of the extracted features, the
feature dispatch returns the named network's features, the LPIPS summary is the mean of the distances.
(Mutation testing found these paths covered by no test or by shape checks only.)"""
import pytest
import torch

import lab  # noqa: F401
from lab import metrics


def images(n, seed, size=32):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 3, size // 4, size // 4, generator=g)
    return torch.nn.functional.interpolate(x, size=(size, size), mode="bilinear", align_corners=False)


@pytest.mark.parametrize("features", ["effnet", "dino"])
def test_streamed_fd_equals_fd_of_extracted_features(features):
    a, b = images(7, 0), images(5, 1)
    out = metrics.fd(a, b, features=features, batch_size=3)
    fa, fb = metrics.extract_features(a, features), metrics.extract_features(b, features)
    ref = metrics.fd_from_features(fa, fb)
    assert out["value"] == pytest.approx(ref["value"], rel=1e-5, abs=1e-6)
    assert (out["name"], out["network"]) == (metrics.FD_NAMES[features], metrics.NETWORKS[features])
    assert (out["n_a"], out["n_b"], out["dim"]) == (7, 5, metrics.FEATURE_DIMS[features])


def test_extract_features_dispatch():
    x = images(3, 2)
    eff = metrics.extract_features(x, "effnet", batch_size=2)
    torch.testing.assert_close(eff, metrics.effnet_features(x))
    assert eff.shape == (3, metrics.FEATURE_DIMS["effnet"])
    dino = metrics.extract_features(x, "dino", batch_size=2)
    torch.testing.assert_close(dino, metrics.dino_features(x))
    assert dino.shape == (3, metrics.FEATURE_DIMS["dino"])
    assert metrics.extract_features(x).shape == eff.shape  # effnet by default
    with pytest.raises(ValueError, match="inception_path"):
        metrics.extract_features(x, "inception")


def test_lpips_summary_is_the_mean_distance():
    x, y = images(3, 3, 64), images(3, 4, 64)
    out = metrics.lpips(x, y, "alex")
    assert out["name"] == "LPIPS-alex" and out["n"] == 3 and "alex" in out["network"]
    assert out["value"] == pytest.approx(metrics.lpips_distance(x, y, "alex").mean().item(), rel=1e-6)
    assert metrics.lpips(x, y)["value"] == out["value"]  # alex by default
