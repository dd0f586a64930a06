"""lab.metrics' plumbing by exact values, with stub feature networks: which batches a rank reads,
how uint8 images are scaled, that sharded moments add up to the whole set's, that the Inception
path reaches the user's network, that the probe's standardisation uses the training statistics,
and the error messages and boundaries of the checks. (Mutation testing found these unpinned.)"""
import types

import pytest
import torch

import lab  # noqa: F401
from lab import metrics
from lab import feature_nets
from stand_ins import PooledConv


def ids(n):
    """n one-pixel 'images' whose value is their index: a batch shows which images it holds."""
    return torch.arange(n, dtype=torch.float32).view(n, 1, 1, 1)


def batch_ids(batches):
    return [b.flatten().long().tolist() for b in batches]


class Pairs(torch.utils.data.Dataset):
    """(image, label) pairs, as torchvision datasets give them."""
    def __init__(self, n):
        self.x = ids(n)

    def __len__(self):
        return len(self.x)

    def __getitem__(self, i):
        return self.x[i], -1


@pytest.mark.parametrize("make", [ids, Pairs, lambda n: list(torch.split(ids(n), 2)),
                                  lambda n: [(b, None) for b in torch.split(ids(n), 2)]],
                         ids=["tensor", "dataset", "batches", "labelled batches"])
def test_batches_shard_by_rank(make):
    assert batch_ids(metrics._batches(make(7), 2)) == [[0, 1], [2, 3], [4, 5], [6]]
    assert batch_ids(metrics._batches(make(7), 2, rank=0, world=2)) == [[0, 1], [4, 5]]
    assert batch_ids(metrics._batches(make(7), 2, rank=1, world=2)) == [[2, 3], [6]]
    assert batch_ids(metrics._batches(make(7), 2, rank=2, world=3)) == [[4, 5]]


def test_n_batches():
    assert metrics._n_batches(ids(7), 2) == 4 and metrics._n_batches(Pairs(6), 4) == 2
    assert metrics._n_batches([1, 2, 3], 99) == 3 and metrics._n_batches(iter([1]), 2) is None


def test_features_scale_uint8_and_pass_floats():
    u8 = torch.tensor([0, 51, 255], dtype=torch.uint8).view(3, 1, 1, 1)
    got = list(metrics._features(lambda x: x.flatten(1), "cpu", u8, 2, "t"))
    assert [g.flatten().tolist() for g in got] == [[0.0, pytest.approx(0.2)], [1.0]]
    assert got[0].dtype == torch.float32
    f = torch.tensor([0.5, 3.0]).view(2, 1, 1, 1).double()
    got = list(metrics._features(lambda x: x.flatten(1), "cpu", f, 4, "t"))
    assert got[0].tolist() == [[0.5], [3.0]] and got[0].dtype == torch.float32
    assert metrics._extract(lambda x: 2 * x.flatten(1), "cpu", ids(5), 2, "t").flatten().tolist() == [0, 2, 4, 6, 8]


def test_batch_moments_of_shards_add_up():
    x = torch.randn(7, 3, 1, 1, generator=torch.Generator().manual_seed(0))
    fn = lambda b: b.flatten(1)  # noqa: E731
    whole = metrics._batch_moments(fn, "cpu", 3, x, 2, "t")
    shards = [metrics._batch_moments(fn, "cpu", 3, x, 2, "t", rank=r, world=2) for r in (0, 1)]
    assert whole["n"].item() == 7 and [s["n"].item() for s in shards] == [4, 3]
    merged = metrics.merge_moments(*shards)
    for k in whole:
        torch.testing.assert_close(merged[k], whole[k])
    torch.testing.assert_close(whole["sum"], x.flatten(1).double().sum(0))
    assert whole["sum"].device.type == "cpu" and whole["sum"].dtype == torch.float64


def test_inception_path_reaches_the_users_network(monkeypatch, tmp_path):
    stub = PooledConv(6, seed=1).eval()  # [B, 6, 1, 1] like pool3 (6-d, for speed)
    seen = []
    monkeypatch.setattr(feature_nets, "inception_fid", lambda path: seen.append(path) or stub)
    monkeypatch.setitem(metrics.FEATURE_DIMS, "inception", 6)
    path = str(tmp_path / "pt_inception.pth")
    a = torch.rand(5, 3, 8, 8, generator=torch.Generator().manual_seed(2))
    b = torch.rand(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        want_a = stub(a).flatten(1)
    fa = metrics.inception_features(a, path, batch_size=2)
    assert fa.shape == (5, 6)
    torch.testing.assert_close(fa, want_a)
    sizes = []
    hook = stub.register_forward_hook(lambda mod, inp, out: sizes.append(len(inp[0])))
    torch.testing.assert_close(metrics.extract_features(a, "inception", inception_path=path, batch_size=2), want_a)
    assert sizes == [2, 2, 1]  # the batch size reaches the network
    hook.remove()
    out = metrics.fd(a, b, features="inception", inception_path=path, batch_size=3)
    ref = metrics.fd_from_features(want_a, stub(b).flatten(1).detach())
    assert out["value"] == pytest.approx(ref["value"], rel=1e-5)
    assert (out["name"], out["network"], out["n_a"], out["n_b"], out["dim"]) == (
        "FID", metrics.NETWORKS["inception"], 5, 4, 6)
    m = metrics.image_moments(a, "inception", inception_path=path, batch_size=2, rank=1, world=2)
    assert m["n"].item() == 2  # the second batch only
    assert seen == [path]  # built once, then cached under its path
    metrics._NETS.pop(f"inception-{path}")


def test_cached_builds_once_and_freezes():
    built = []
    key = "test-cached-linear"
    metrics._NETS.pop(key, None)
    build = lambda: built.append(1) or torch.nn.Linear(2, 2).train()  # noqa: E731
    net = metrics._cached(key, build, "cpu")
    assert metrics._cached(key, build, "cpu") is net and built == [1]
    assert not net.training and not any(p.requires_grad for p in net.parameters())
    metrics._NETS.pop(key)


def test_feature_check_messages():
    x = torch.rand(2, 3, 16, 16)
    with pytest.raises(ValueError, match=r"^features='clip'; allowed: 'effnet', 'dino', 'inception'$"):
        metrics.extract_features(x, "clip")
    with pytest.raises(ValueError, match=r"^features='inception' needs inception_path= \(the Inception-v3 FID "
                                         r"weights file, e\.g\. pt_inception-2015-12-05-6726825d\.pth\); "
                                         r"without it use 'effnet' \(FD-effnet\)$"):
        metrics.image_moments(x, "inception")
    with pytest.raises(ValueError, match=r"^pool='max'; allowed: 'mean', 'cls', 'both'$"):
        metrics.dino_features(x, pool="max")
    with pytest.raises(ValueError, match=r"^net='squeeze'; allowed: 'alex', 'vgg'$"):
        metrics.lpips_distance(x, x, net="squeeze")


def test_check_images_rejects_non_batches():
    msg = r"^expected two image batches \[B, C, H, W\] of one shape, got (.*) and (.*)$"
    with pytest.raises(ValueError, match=msg.replace("(.*) and (.*)", r"\(3, 16, 16\) and \(3, 16, 16\)")):
        metrics.psnr(torch.rand(3, 16, 16), torch.rand(3, 16, 16))  # same shape, but not a batch
    with pytest.raises(ValueError, match=msg.replace("(.*) and (.*)", r"\(1, 3, 16, 16\) and \(2, 3, 16, 16\)")):
        metrics.psnr(torch.rand(1, 3, 16, 16), torch.rand(2, 3, 16, 16))


def test_psnr_max_val_and_ssim_window_boundary():
    x = torch.zeros(1, 3, 11, 11)
    assert metrics.psnr(x, x + 0.5, max_val=2.0) == pytest.approx(10 * torch.log10(torch.tensor(16.0)).item())
    assert metrics.ssim(x, x) == pytest.approx(1.0)  # exactly win_size pixels is enough
    with pytest.raises(ValueError, match=r"^ssim needs images of at least win_size=11 pixels, got \(11, 10\)$"):
        metrics.ssim(x[..., :10], x[..., :10])


def test_ssim_data_range_and_sigma_closed_form():
    """Two constant images a, b: SSIM = (2ab + c1) / (a² + b² + c1), c1 = (k1·L)²; σ plays no part."""
    a, b, L = 0.25, 0.75, 2.0
    x, y = torch.full((1, 3, 12, 12), a), torch.full((1, 3, 12, 12), b)
    c1 = (0.01 * L) ** 2
    want = (2 * a * b + c1) / (a * a + b * b + c1)
    assert metrics.ssim(x, y, data_range=L) == pytest.approx(want, rel=1e-9)
    s = metrics.ssim(x, y, data_range=L, per_image=True)
    assert s.shape == (1,) and s.item() == pytest.approx(want, rel=1e-9)


def test_ssim_default_window_is_11_sigma_1_5():
    g = metrics._gaussian_window()
    assert g.shape == (11,) and g.dtype == torch.float64 and g.sum().item() == pytest.approx(1.0)
    assert (g[0] / g[5]).item() == pytest.approx(torch.exp(torch.tensor(-25 / 4.5, dtype=torch.float64)).item())
    x = torch.rand(1, 2, 13, 15, generator=torch.Generator().manual_seed(4)).double()
    out = metrics._blur(x, g)
    assert out.shape == (1, 2, 3, 5)
    w = g[:, None] * g[None, :]
    assert out[0, 1, 2, 3].item() == pytest.approx((x[0, 1, 2:13, 3:14] * w).sum().item(), rel=1e-12)


def test_covered_ball_is_closed_and_chunked():
    ref = torch.tensor([[0.0], [10.0]], dtype=torch.float64)
    radii = torch.tensor([1.0, 2.0], dtype=torch.float64)
    q = torch.tensor([[1.0], [1.5], [8.0], [12.5]], dtype=torch.float64)
    assert metrics._covered(q, ref, radii, chunk=1).tolist() == [True, False, True, False]
    f = torch.tensor([[0.0], [1.0], [3.0], [7.0]], dtype=torch.float64)
    assert metrics._kth_radius(f, 1, chunk=3).tolist() == [1.0, 1.0, 2.0, 4.0]
    assert metrics._kth_radius(f, 2, chunk=1).tolist() == [3.0, 2.0, 3.0, 6.0]


def test_precision_recall_dict_and_k_boundary():
    r = torch.randn(4, 2, generator=torch.Generator().manual_seed(5))
    out = metrics.precision_recall(r, r + 0.0, k=3, network="net")
    assert out == {"precision": 1.0, "recall": 1.0, "k": 3, "network": "net", "n_real": 4, "n_fake": 4}
    assert metrics.precision_recall(r, r)["network"] == "unknown" and metrics.precision_recall(r, r)["k"] == 3
    with pytest.raises(ValueError, match=r"^need more than k=4 samples in each set, got 4 real, 4 fake$"):
        metrics.precision_recall(r, r, k=4)


def test_pool_features_messages_and_default():
    f = torch.arange(12.0).view(1, 3, 4)
    assert metrics.pool_features(f).shape == (1, 12)
    assert metrics.pool_features(f, "gap").tolist() == [[4.0, 5.0, 6.0, 7.0]]
    with pytest.raises(ValueError, match=r"^pool='max'; allowed: 'flatten', 'gap'$"):
        metrics.pool_features(f, "max")
    with pytest.raises(ValueError, match=r"^pool='gap' needs token features \[M, N, C\], got shape \(1, 12\)$"):
        metrics.pool_features(f.view(1, 12), "gap")


def shifted_blobs(n, seed, offset):
    """Two classes at ±1 along one direction, plus a large common offset and unequal feature scales."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=g)
    x = 0.3 * torch.randn(n, 5, generator=g)
    x[:, 0] += 2 * y.float() - 1
    return x * torch.tensor([1.0, 10.0, 0.1, 5.0, 2.0]) + offset, y


@pytest.mark.parametrize("method", ["logreg", "sgd"])
def test_linear_probe_standardises_with_training_statistics(method):
    """Test features are standardised with the training mean and std: a common offset of 50 is harmless."""
    xtr, ytr = shifted_blobs(200, 0, 50.0)
    xte, yte = shifted_blobs(100, 1, 50.0)
    kw = dict(method=method, epochs=10, lr=0.05, batch_size=32)
    assert metrics.linear_probe(xtr, ytr, xte, yte, **kw) > 0.97
    assert metrics.linear_probe(xtr.view(200, 1, 5), ytr, xte.view(100, 1, 5), yte, **kw) > 0.97  # [M, 1, C] tokens flattened by default


def test_linear_probe_sgd_is_seeded():
    xtr, ytr = shifted_blobs(120, 2, 0.0)
    xte, yte = shifted_blobs(300, 3, 0.0)
    ytr[:40] = torch.randint(0, 2, (40,), generator=torch.Generator().manual_seed(9))  # label noise: seeds differ
    kw = dict(method="sgd", epochs=3, batch_size=16)
    a = metrics.linear_probe(xtr, ytr, xte, yte, **kw)
    assert a == metrics.linear_probe(xtr, ytr, xte, yte, seed=0, **kw)


# ----------------------------------------------------------------------------- the real DINO network, tiny images


@pytest.mark.real_nets
def test_dino_pools_are_the_tokens_of_the_resized_image():
    from lab import encoders
    x = torch.rand(2, 3, 42, 42, generator=torch.Generator().manual_seed(6))
    model = encoders.vit("dinov2_s_imgfocus").eval()
    with torch.no_grad():
        small = torch.nn.functional.interpolate(x, size=(28, 28), mode="bilinear", align_corners=False,
                                                antialias=True)
        out = model.forward_features(encoders.normalize(small, model))
    mean, cls = out[:, model.num_prefix_tokens:].mean(1), out[:, 0]
    both = metrics.dino_features(x, pool="both", size=28, batch_size=1)
    torch.testing.assert_close(both, torch.cat([mean, cls], 1), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(metrics.dino_features(x, pool="cls", size=28), cls, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(metrics.dino_features(x, size=28), mean, atol=1e-4, rtol=1e-4)


@pytest.mark.real_nets
def test_dino_distance_is_mean_token_cosine_distance():
    from lab import encoders
    g = torch.Generator().manual_seed(7)
    x, y = torch.rand(3, 3, 42, 42, generator=g), torch.rand(3, 3, 42, 42, generator=g)
    model = encoders.vit("dinov2_s_imgfocus").eval()
    with torch.no_grad():
        fx, fy = encoders.patch_tokens(model, x, size=28), encoders.patch_tokens(model, y, size=28)
    want = (1 - torch.nn.functional.cosine_similarity(fx, fy, dim=-1)).mean(1)
    got = metrics.dino_distance(x, y, size=28, batch_size=2)
    assert got.shape == (3,) and got.device == x.device
    torch.testing.assert_close(got, want, atol=1e-5, rtol=1e-4)


def test_resize_is_antialiased_bilinear_and_skips_the_right_size():
    x = torch.rand(1, 3, 8, 8, generator=torch.Generator().manual_seed(8))
    assert metrics._resize(x, 8) is x
    want = torch.nn.functional.interpolate(x, size=(4, 4), mode="bilinear", align_corners=False, antialias=True)
    torch.testing.assert_close(metrics._resize(x, 4), want, atol=0, rtol=0)
    assert (metrics._resize(x, 4) - x[..., ::2, ::2]).abs().max() > 1e-3  # not a plain subsample
    up = torch.nn.functional.interpolate(x, size=(11, 11), mode="bilinear", align_corners=False)
    torch.testing.assert_close(metrics._resize(x, 11), up, atol=1e-6, rtol=0)  # align_corners=False


def test_sharded_fd_reads_its_rank_and_reduces_in_one_process(monkeypatch, tmp_path):
    """fd(sharded=True) under a faked 2-rank group: rank 1 reads batches 1, 3, ... and all_reduces both
    sets' moments; sharded=False in the same group reads everything and reduces nothing. (The gloo test
    in test_metrics_sharded.py runs two real ranks; this one pins rank 1's reading in one process.)"""
    stub = PooledConv(4, seed=6).eval()
    path = str(tmp_path / "stub_inception.pth")
    monkeypatch.setitem(metrics._NETS, f"inception-{path}", stub)
    monkeypatch.setitem(metrics.FEATURE_DIMS, "inception", 4)
    g = torch.Generator().manual_seed(7)
    a, b = torch.rand(9, 3, 4, 4, generator=g), torch.rand(7, 3, 4, 4, generator=g) ** 2
    reduced = []
    monkeypatch.setattr(metrics, "all_reduce_moments", lambda m: reduced.append(m["n"].item()) or m)
    monkeypatch.setattr(metrics, "dist", types.SimpleNamespace(
        is_initialized=lambda: True, get_rank=lambda: 1, get_world_size=lambda: 2))
    with torch.no_grad():
        fa, fb = stub(a).flatten(1), stub(b).flatten(1)
    stub.seen = []
    got = metrics.fd(a, b, features="inception", inception_path=path, batch_size=2, sharded=True)
    assert stub.seen == [2, 2, 2, 1] and reduced == [4, 3]  # a: batches 1, 3 of [2,2,2,2,1]; b: 1, 3 of [2,2,2,1]
    rank1 = metrics.fd_from_features(torch.cat([fa[2:4], fa[6:8]]), torch.cat([fb[2:4], fb[6:7]]))
    assert got["value"] == pytest.approx(rank1["value"], rel=1e-9) and (got["n_a"], got["n_b"]) == (4, 3)
    stub.seen, reduced[:] = [], []
    whole = metrics.fd(a, b, features="inception", inception_path=path, batch_size=2)  # sharded=False by default
    assert stub.seen == [2, 2, 2, 2, 1, 2, 2, 2, 1] and reduced == []
    assert whole["value"] == pytest.approx(metrics.fd_from_features(fa, fb)["value"], rel=1e-9)
