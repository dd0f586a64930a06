"""lab.metrics' wiring with stub networks, fast: the device the caller names, the default batch size
and sizes, which network is built on a cache miss, the model's own normalisation, where autocast is
used, and SSIM's data range and σ against skimage. (Mutation testing found these unpinned.)"""
import types

import pytest
import torch
import torch.nn.functional as F

from lab import encoders, metrics
from lab import feature_nets


class Recorder(torch.nn.Module):
    """A stub network with one zero parameter (so it has a device) that records its input shapes."""

    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.seen = []


class Effnet(Recorder):
    """forward_features = identity, head = channel means: features are the normalised images' means."""
    pretrained_cfg = {"mean": (0.1, 0.2, 0.3), "std": (0.5, 0.25, 2.0)}  # not ImageNet's

    def forward_features(self, x):
        self.seen.append(tuple(x.shape))
        return x + self.p

    def forward_head(self, f, pre_logits=False):
        assert pre_logits
        return f.mean((2, 3))


class Vit(Recorder):
    """Patch 16: tokens are the 16×16 block means, after one prefix token."""
    patch_embed = types.SimpleNamespace(patch_size=(16, 16))
    num_prefix_tokens = 1
    pretrained_cfg = {"mean": (0.5, 0.5, 0.5), "std": (0.25, 0.25, 0.25)}

    def forward_features(self, x):
        self.seen.append(tuple(x.shape))
        tok = F.avg_pool2d(x, 16).flatten(2).transpose(1, 2) + self.p
        return torch.cat([torch.ones_like(tok[:, :1]), tok], 1)


class Lpips(Recorder):
    def forward(self, a, b):
        self.seen.append(len(a))
        return (a - b).pow(2).mean((1, 2, 3), keepdim=True) + self.p


class Inception(torch.nn.Module):
    def __init__(self):
        super().__init__()
        self.p = torch.nn.Parameter(torch.zeros(()))
        self.seen = []

    def forward(self, x):
        self.seen.append(len(x))
        return x.mean((2, 3), keepdim=True) + self.p


@pytest.fixture
def stubs(monkeypatch, tmp_path):
    """Stub networks in the metrics cache; LAB_DEVICE=meta, so a lost device= sends them to 'meta'."""
    nets = types.SimpleNamespace(effnet=Effnet(), vit=Vit(), alex=Lpips(), vgg=Lpips(), inception=Inception(),
                                 path=str(tmp_path / "inception.pth"))
    for key, net in (("effnet", nets.effnet), ("vit-dinov2_s_imgfocus", nets.vit), ("lpips-alex", nets.alex),
                     ("lpips-vgg", nets.vgg), (f"inception-{nets.path}", nets.inception)):
        monkeypatch.setitem(metrics._NETS, key, net)
    for kind in ("effnet", "dino", "inception"):
        monkeypatch.setitem(metrics.FEATURE_DIMS, kind, 3)
    monkeypatch.setenv("LAB_DEVICE", "meta")
    return nets


def images(n, size=16, seed=0):
    return torch.rand(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def channel_means(x, model):
    return encoders.normalize(x, model).mean((2, 3))


def test_explicit_device_wins_over_lab_device_and_default_batch_is_64(stubs):
    x, y = images(70, seed=1), images(70, seed=2)
    cpu = dict(device="cpu")
    want = channel_means(metrics._resize(x, 224), stubs.effnet)
    torch.testing.assert_close(metrics.effnet_features(x, **cpu), want)
    assert [s[0] for s in stubs.effnet.seen] == [64, 6] and stubs.effnet.seen[0][2:] == (224, 224)
    stubs.effnet.seen.clear()
    torch.testing.assert_close(metrics.extract_features(x, **cpu), want)  # 'effnet' by default
    assert [s[0] for s in stubs.effnet.seen] == [64, 6]
    stubs.effnet.seen.clear()
    metrics.extract_features(x[:3], size=32, batch_size=2, **cpu)
    metrics.extract_features(x[:3], "dino", size=48, batch_size=2, **cpu)
    assert stubs.effnet.seen == [(2, 3, 32, 32), (1, 3, 32, 32)] and stubs.vit.seen == [(2, 3, 48, 48), (1, 3, 48, 48)]
    metrics.extract_features(x[:3], "inception", inception_path=stubs.path, batch_size=2, **cpu)
    assert stubs.inception.seen[-2:] == [2, 1]
    metrics.dino_features(x, **cpu)
    assert [s[0] for s in stubs.vit.seen[2:]] == [64, 6]
    stubs.vit.seen.clear()
    torch.testing.assert_close(metrics.inception_features(x, stubs.path, **cpu), x.mean((2, 3)))
    assert stubs.inception.seen[-2:] == [64, 6]
    torch.testing.assert_close(metrics.extract_features(x, "inception", inception_path=stubs.path, **cpu),
                               x.mean((2, 3)))
    tokens = metrics.dino_features(x[:2], **cpu)
    assert tokens.shape == (2, 3) and stubs.vit.seen[-1] == (2, 3, 224, 224)
    ref = metrics.fd_from_features(want, channel_means(metrics._resize(y, 224), stubs.effnet))
    stubs.effnet.seen.clear()
    got = metrics.fd(x, y, **cpu)  # features='effnet' by default
    assert got["name"] == "FD-effnet" and got["value"] == pytest.approx(ref["value"], rel=1e-6)
    assert [s[0] for s in stubs.effnet.seen] == [64, 6, 64, 6]
    stubs.effnet.seen.clear()
    m = metrics.image_moments(x, **cpu)
    assert m["n"].item() == 70 and m["sum"].device.type == "cpu" and [s[0] for s in stubs.effnet.seen] == [64, 6]
    torch.testing.assert_close(m["sum"], want.double().sum(0), rtol=1e-6, atol=1e-6)
    for kind, net in (("dino", stubs.vit), ("inception", stubs.inception)):
        net.seen.clear()
        got = metrics.fd(x[:5], y[:4], features=kind, inception_path=stubs.path, **cpu)
        assert (got["name"], got["n_a"], got["n_b"]) == (metrics.FD_NAMES[kind], 5, 4)
        got = metrics.image_moments(x[:5], kind, inception_path=stubs.path, **cpu)
        assert got["n"].item() == 5 and got["sum"].device.type == "cpu"
        assert len(net.seen) == 3  # the named network saw a, b, then the moments' images
    assert stubs.vit.seen[-1] == (5, 3, 224, 224)  # FD-dino at 224 px by default

    d = metrics.lpips_distance(x, y, **cpu)
    torch.testing.assert_close(d, (2 * x - 2 * y).pow(2).mean((1, 2, 3)))
    assert d.device.type == "cpu" and stubs.alex.seen == [64, 6]
    d = metrics.dino_distance(x, y, **cpu)
    assert d.shape == (70,) and d.device.type == "cpu" and [s[0] for s in stubs.vit.seen[-4:]] == [64, 64, 6, 6]


def test_dino_distance_default_size_224_and_values(stubs):
    x, y = images(3, size=32, seed=3), images(3, size=32, seed=4)
    got = metrics.dino_distance(x, y, device="cpu")
    assert stubs.vit.seen == [(3, 3, 224, 224)] * 2  # 224 px by default: a 14 × 14 grid of patch 16

    def toks(im):
        return F.avg_pool2d(encoders.normalize(metrics._resize(im, 224), stubs.vit), 16).flatten(2).transpose(1, 2)
    want = (1 - F.cosine_similarity(toks(x), toks(y), dim=-1)).mean(1)
    torch.testing.assert_close(got, want)
    metrics.dino_distance(x, y, size=64, device="cpu")
    assert stubs.vit.seen[-1] == (3, 3, 64, 64)


def test_dino_features_pools_tokens_after_the_prefix(stubs):
    x = images(2, size=32, seed=8)
    toks = F.avg_pool2d(encoders.normalize(metrics._resize(x, 224), stubs.vit), 16).flatten(2).transpose(1, 2)
    mean, cls = toks.mean(1), torch.ones(2, 3)
    torch.testing.assert_close(metrics.dino_features(x, device="cpu"), mean)  # pool='mean' by default
    torch.testing.assert_close(metrics.dino_features(x, pool="cls", device="cpu"), cls)
    torch.testing.assert_close(metrics.dino_features(x, pool="both", device="cpu"), torch.cat([mean, cls], 1))
    torch.testing.assert_close(metrics.extract_features(x, "dino", device="cpu"), mean)
    assert stubs.vit.seen == [(2, 3, 224, 224)] * 4


def test_lpips_summary_names_the_network_it_used(monkeypatch, stubs):
    monkeypatch.delenv("LAB_DEVICE")  # lpips() takes no device: the metrics device
    x, y = images(4, seed=5), images(4, seed=6)
    stubs.vgg.p.data.fill_(1.0)  # vgg and alex stubs differ by one
    for net, offset in (("vgg", 1.0), ("alex", 0.0)):
        out = metrics.lpips(x, y, net=net)
        want = (2 * x - 2 * y).pow(2).mean((1, 2, 3)).mean().item() + offset
        assert out == {"name": f"LPIPS-{net}", "value": pytest.approx(want, rel=1e-6),
                       "network": f"LPIPS ({net}, lpips 0.1.4 heads)", "n": 4}
    assert metrics.lpips(x, y) == metrics.lpips(x, y, net="alex")  # alex by default


def test_cache_miss_builds_the_named_network(monkeypatch, stubs):
    built = []
    for key in ("effnet", "vit-dinov2_s_imgfocus", "vit-other_vit", "lpips-alex", "lpips-vgg"):
        monkeypatch.delitem(metrics._NETS, key, raising=False)
    monkeypatch.setattr(feature_nets, "efficientnet_lite0", lambda: built.append("effnet") or stubs.effnet)
    monkeypatch.setattr(encoders, "vit", lambda name: built.append(name) or stubs.vit)
    monkeypatch.setattr(feature_nets, "lpips_net", lambda net: built.append(net) or stubs.vgg)
    x = images(2)
    metrics.effnet_features(x, device="cpu")
    metrics.dino_distance(x, x, device="cpu")
    metrics.dino_features(x, name="other_vit", device="cpu")
    metrics.lpips_distance(x, x, net="vgg", device="cpu")
    metrics.lpips_distance(x, x, device="cpu")
    assert built == ["effnet", "dinov2_s_imgfocus", "other_vit", "vgg", "alex"]
    assert metrics._NETS["lpips-vgg"] is stubs.vgg and metrics._NETS["effnet"] is stubs.effnet


def test_per_image_metrics_never_autocast_feature_extraction_does(monkeypatch, stubs):
    calls = []
    real = metrics.autocast
    monkeypatch.setattr(metrics, "autocast", lambda dev: calls.append(torch.device(dev).type) or real(dev))
    x = images(3)
    metrics.lpips_distance(x, x, device="cpu")
    metrics.dino_distance(x, x, device="cpu")
    assert calls == []
    metrics.effnet_features(x, batch_size=2, device="cpu")
    assert calls == ["cpu", "cpu"]


def test_ssim_data_range_and_sigma_match_skimage():
    from skimage.metrics import structural_similarity
    g = torch.Generator().manual_seed(7)
    x = 2 * F.avg_pool2d(torch.rand(2, 3, 28, 30, generator=g, dtype=torch.float64), 3, 1, 1)  # in [0, 2]
    y = (x + 0.2 * torch.randn(x.shape, generator=g, dtype=torch.float64)).clamp(0, 2)
    for data_range, sigma in ((2.0, 1.5), (1.0, 2.5), (2.0, 0.8)):
        win = 2 * int(3.5 * sigma + 0.5) + 1  # skimage's window for σ (truncate = 3.5): 11 at σ = 1.5
        ours = metrics.ssim(x, y, data_range=data_range, sigma=sigma, win_size=win, per_image=True)
        for i in range(2):
            ref = structural_similarity(x[i].numpy(), y[i].numpy(), channel_axis=0, gaussian_weights=True, sigma=sigma,
                                        use_sample_covariance=False, data_range=data_range)
            assert ours[i].item() == pytest.approx(ref, abs=1e-10)
    mean = metrics.ssim(x, y)
    assert type(mean) is float and mean == pytest.approx(metrics.ssim(x, y, per_image=True).mean().item())
    assert type(metrics.psnr(x, y)) is float


def test_covered_chunks_do_not_overlap():
    ref = torch.tensor([[0.0], [10.0]], dtype=torch.float64)
    radii = torch.tensor([1.0, 2.0], dtype=torch.float64)
    q = torch.tensor([[1.0], [1.5], [8.0], [12.5], [-0.5]], dtype=torch.float64)
    assert metrics._covered(q, ref, radii, chunk=3).tolist() == [True, False, True, False, True]
    assert metrics._covered(q, ref, radii).tolist() == [True, False, True, False, True]


def test_linear_probe_method_message():
    x, y = torch.randn(6, 2), torch.arange(6) % 2
    with pytest.raises(ValueError, match=r"^method='svm'; allowed: 'logreg', 'sgd'$"):
        metrics.linear_probe(x, y, x, y, method="svm")
