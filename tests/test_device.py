"""One device rule (trainutil.pick_device) and Fréchet statistics that shard.

pick_device: an explicit device, else $LAB_DEVICE, else CUDA when present, else CPU. Metrics run
their networks on that device whatever device the images are on. FD from running float64 moments
(count, sum, sum of outer products) merged over shards, or all_reduced over torchrun ranks, equals
FD over the whole set.
"""
import os

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from lab import metrics
from lab import trainutil as tu
from lab.commands import nbtools


def test_pick_device_explicit_then_lab_device_then_cuda(monkeypatch):
    monkeypatch.delenv("LAB_DEVICE", raising=False)
    assert tu.pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")
    monkeypatch.setenv("LAB_DEVICE", "meta")
    assert tu.pick_device().type == "meta"
    assert tu.pick_device("cpu").type == "cpu"
    monkeypatch.setenv("LAB_DEVICE", "")
    assert tu.pick_device().type == ("cuda" if torch.cuda.is_available() else "cpu")


class StubNet(torch.nn.Module):
    """Stands in for EfficientNet-Lite0: records the device of what it sees, returns CPU features."""

    def __init__(self):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.seen = []

    def forward_features(self, x):
        self.seen.append((x.device.type, self.w.device.type, torch.is_inference_mode_enabled()))
        return torch.zeros(len(x), 1280)

    def forward_head(self, x, pre_logits=True):
        return x


def test_features_run_on_the_picked_device_not_the_images(monkeypatch):
    stub = StubNet()
    monkeypatch.setattr(metrics, "_NETS", {})
    monkeypatch.setattr(metrics.feature_nets, "efficientnet_lite0", lambda: stub)
    monkeypatch.setenv("LAB_DEVICE", "meta")  # a device no image is on
    f = metrics.effnet_features(torch.rand(5, 3, 8, 8), size=8, batch_size=2)
    assert f.shape == (5, 1280) and f.device.type == "cpu"
    assert stub.seen == [("meta", "meta", True)] * 3


def random_features(n, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    a = torch.randn(d, d, generator=g, dtype=torch.float64)
    return torch.randn(n, d, generator=g, dtype=torch.float64) @ a + 3.0


def test_moments_mean_cov_is_np_cov():
    f = random_features(50)
    mu, cov = metrics.moments_mean_cov(metrics.add_moments(metrics.empty_moments(6, "cpu"), f))
    np.testing.assert_allclose(mu, f.mean(0).numpy(), rtol=0, atol=1e-12)
    np.testing.assert_allclose(cov, np.cov(f.numpy(), rowvar=False), rtol=0, atol=1e-10)


def test_sharded_fd_equals_unsharded():
    fa, fb = random_features(300, seed=1), random_features(211, seed=2) * 1.3
    whole = metrics.fd_from_features(fa, fb)["value"]
    shards = lambda f, cuts: [metrics.add_moments(metrics.empty_moments(6, "cpu"), s) for s in torch.split(f, cuts)]
    ma = metrics.merge_moments(*shards(fa, [7, 100, 193]))
    mb = metrics.merge_moments(*shards(fb, [1, 10, 200]))
    out = metrics.fd_from_moments(ma, mb)
    assert abs(out["value"] - whole) < 1e-6 and (out["n_a"], out["n_b"], out["dim"]) == (300, 211, 6)


def channel_means(x):
    return x.mean((2, 3))


def test_rank_shards_of_a_tensor_a_dataset_and_a_loader_cover_the_set_once():
    images = torch.rand(23, 3, 4, 4)
    whole = metrics.add_moments(metrics.empty_moments(3, "cpu"), channel_means(images))
    dataset = torch.utils.data.TensorDataset(images, torch.zeros(23))
    loader = torch.utils.data.DataLoader(dataset, batch_size=5)
    for source in (images, dataset, loader):
        parts = [metrics._batch_moments(channel_means, torch.device("cpu"), 3, source, 5, "test", rank, 3)
                 for rank in range(3)]
        assert sorted(p["n"].item() for p in parts) == [5, 8, 10]
        merged = metrics.merge_moments(*parts)
        for k in whole:
            torch.testing.assert_close(merged[k], whole[k], rtol=1e-12, atol=1e-12)


def test_mean_cov_of_tokens_in_chunks_is_feature_stats():
    tokens = random_features(7 * 9).reshape(7, 9, 6).float()
    mu, cov = metrics.mean_cov(tokens, device="cpu", chunk=10)
    mu0, cov0 = metrics.feature_stats(tokens.reshape(-1, 6))
    np.testing.assert_allclose(mu, mu0, atol=1e-10)
    np.testing.assert_allclose(cov, cov0, atol=1e-9)


def _rank_worker(rank, world, init_file, out_file, images):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        m = metrics._batch_moments(channel_means, torch.device("cpu"), 3, images, 4, "test", rank, world)
        metrics.all_reduce_moments(m)
        torch.save({k: v.clone() for k, v in m.items()}, f"{out_file}.{rank}")
    finally:
        dist.destroy_process_group()


def test_fd_moments_all_reduced_over_two_ranks_equal_the_whole_set(tmp_path):
    images = torch.rand(19, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mp.spawn(_rank_worker, args=(2, str(tmp_path / "init"), str(tmp_path / "m"), images), nprocs=2)
    whole = metrics.add_moments(metrics.empty_moments(3, "cpu"), channel_means(images))
    ref = metrics.fd_from_moments(whole, metrics.add_moments(metrics.empty_moments(3, "cpu"), channel_means(images[:9])))
    for rank in range(2):
        m = torch.load(tmp_path / f"m.{rank}")
        assert m["n"].item() == 19
        got = metrics.fd_from_moments(m, metrics.add_moments(metrics.empty_moments(3, "cpu"), channel_means(images[:9])))
        assert abs(got["value"] - ref["value"]) < 1e-6


def test_notebook_05_runs_at_smoke_size_with_lab_device_cpu(tmp_path, monkeypatch):
    """Slow (minutes): the flow-matching notebook end to end with LAB_DEVICE=cpu set explicitly."""
    from test_notebooks import NOTEBOOKS, SMOKE
    nb = next(p for p in NOTEBOOKS if p.stem == "05_flow_matching")
    monkeypatch.setenv("LAB_RUNS_DIR", str(tmp_path))
    monkeypatch.setenv("LAB_DEVICE", "cpu")
    res = nbtools.execute(nb, SMOKE[nb.stem], runs_dir=str(tmp_path), check=False)
    assert res["status"] == "done", res.get("error")
    assert os.environ["LAB_DEVICE"] == "cpu"


def test_fd_from_streamed_moments_equals_fd_of_the_feature_sets():
    """metrics.fd never holds the features; its value is the one of the held feature sets."""
    g = torch.Generator().manual_seed(0)
    a, b = torch.rand(12, 3, 32, 32, generator=g), torch.rand(10, 3, 32, 32, generator=g)
    got = metrics.fd(a, b, batch_size=5)
    ref = metrics.fd_from_features(metrics.effnet_features(a, batch_size=5), metrics.effnet_features(b, batch_size=5))
    assert abs(got["value"] - ref["value"]) < 1e-6 and (got["n_a"], got["n_b"], got["dim"]) == (12, 10, 1280)


def test_uint8_images_give_the_features_of_their_float_values():
    u8 = torch.randint(0, 256, (9, 3, 4, 4), dtype=torch.uint8)
    m8 = metrics._batch_moments(channel_means, torch.device("cpu"), 3, u8, 4, "test")
    m32 = metrics._batch_moments(channel_means, torch.device("cpu"), 3, u8.float() / 255, 4, "test")
    for k in m8:
        torch.testing.assert_close(m8[k], m32[k], rtol=0, atol=1e-12)
