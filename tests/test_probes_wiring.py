"""probes' linear-probing plumbing by what it hands on: the batches the encoder sees, the device,
the seeded split and the arguments that reach metrics.linear_probe. (Mutation testing found these
unpinned: an accuracy alone does not show a wrong split or a dropped argument.)"""
import pytest
import torch

from lab import probes
from stand_ins import Patchify, mse


class Recorder:
    """encode = x flattened to one token; records the batch sizes and devices it is given."""

    def __init__(self):
        self.sizes, self.devices = [], []

    def encode(self, x):
        self.sizes.append(len(x))
        self.devices.append(x.device.type)
        return x.flatten(1)[:, None, :].cpu() if x.device.type != "meta" else torch.zeros(len(x), 1, 2)


def dataset(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.utils.data.TensorDataset(torch.rand(n, 2, 1, 1, generator=g), torch.arange(n) % 2)


def test_encode_dataset_batches_of_64_in_order_and_device():
    enc = Recorder()
    f, y = probes.encode_dataset(enc, dataset(70))
    assert enc.sizes == [64, 6] and set(enc.devices) == {"cpu"}
    torch.testing.assert_close(f, dataset(70).tensors[0].flatten(1)[:, None])  # in order: no shuffle
    assert y.tolist() == (torch.arange(70) % 2).tolist()
    enc = Recorder()
    probes.encode_dataset(enc, dataset(5), batch_size=2, device="meta")  # the batches go to the device given
    assert enc.sizes == [2, 2, 1] and enc.devices == ["meta"] * 3


def test_linear_probe_features_hands_the_seeded_split_and_arguments_on(monkeypatch):
    calls = []

    def probe(ftr, ytr, fte, yte, **kw):
        calls.append((ftr, ytr, fte, yte, kw))
        return 0.5

    monkeypatch.setattr(probes.metrics, "linear_probe", probe)
    enc = Recorder()
    ds = dataset(80, seed=1)
    df = probes.linear_probe_features(enc, ds, pools=("gap", "flatten"), n=70)
    assert enc.sizes == [64, 6]  # batch_size 64 and n reach encode_dataset
    f, y = ds.tensors[0][:70].flatten(1)[:, None], torch.arange(70) % 2
    perm = torch.randperm(70, generator=torch.Generator().manual_seed(0))  # seed 0; test_fraction 0.25: 18 of 70
    for (ftr, ytr, fte, yte, kw), pool in zip(calls, ("gap", "flatten")):
        assert torch.equal(ftr, f[perm[18:]]) and torch.equal(fte, f[perm[:18]])
        assert torch.equal(ytr, y[perm[18:]]) and torch.equal(yte, y[perm[:18]])
        assert kw == {"pool": pool, "method": "logreg", "seed": 0}
    assert list(df["n_train"]) == [52, 52] and list(df["n_test"]) == [18, 18] and list(df["dim"]) == [2, 2]

    calls.clear()
    enc = Recorder()
    test_ds = dataset(30, seed=2)
    probes.linear_probe_features(enc, ds, test_dataset=test_ds, pools=("flatten",), method="sgd", n=25, batch_size=10,
                                 seed=4)
    assert enc.sizes == [10, 10, 5, 10, 10, 5]  # n = 25 of each set, in batches of 10
    ftr, ytr, fte, yte, kw = calls[0]
    assert torch.equal(fte, test_ds.tensors[0][:25].flatten(1)[:, None]) and len(ftr) == 25
    assert kw == {"pool": "flatten", "method": "sgd", "seed": 4}


def test_width_floor_takes_token_batches():
    """[B, N, C] latents are B·N tokens of dimension C (the last axis), like [B·N, C]."""
    x1 = torch.randn(2, 5, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    assert probes.width_floor(x1, 2) == pytest.approx(probes.width_floor(x1.reshape(10, 6), 2), rel=1e-12)
    assert probes.width_floor(x1, 6) == 0.0 and probes.width_floor(x1, 5) > 1 / 6


def test_linear_path_norm_dip_uses_the_times_given():
    z = torch.randn(2, 3, 8, generator=torch.Generator().manual_seed(4))
    df = probes.linear_path_norm_dip(z, ts=[0.1, 0.6, 0.93])  # off the default grid of 21
    assert df["t"].tolist() == [0.1, 0.6, 0.93]


def test_pca_rgb_does_not_depend_on_the_tokens_scale():
    """Min-max scaling: tokens × 1e-3 (a component range far below 1) give the same colours."""
    g = torch.Generator().manual_seed(5)
    tokens = torch.randn(2, 12, 5, generator=g, dtype=torch.float64) * torch.tensor([5.0, 3.0, 2.0, 0.1, 0.1],
                                                                                     dtype=torch.float64)
    big, small = probes.pca_rgb(tokens), probes.pca_rgb(tokens * 1e-3)
    torch.testing.assert_close(small, big, atol=1e-5, rtol=0)
    assert small.amax(dim=(0, 2, 3)).tolist() == [1.0, 1.0, 1.0]


class CountingPatchify(Patchify):
    """The lossless patchify stand-in, recording the batch sizes it encodes and decodes."""

    def __init__(self):
        super().__init__()
        self.enc, self.dec = [], []

    def encode(self, x):
        self.enc.append(len(x))
        return super().encode(x)

    def decode(self, z):
        self.dec.append(len(z))
        return super().decode(z)


def test_direction_magnitude_probe_batches_of_16_and_the_seed_picks_anchors():
    g = torch.Generator().manual_seed(6)
    images = torch.rand(40, 3, 16, 16, generator=g) * 0.4 + 0.3
    labels = torch.arange(40) % 4
    ae = CountingPatchify()
    df = probes.direction_magnitude_probe(ae, images, labels, n_anchors=20, norm_factors=(1.0,), distances={"mse": mse},
                                          probes=("swap", "rescale"), seed=3)
    assert ae.enc == [16, 4, 16, 4]  # anchors, then neighbours, in batches of 16
    assert ae.dec == [16, 4] * (1 + 3 + 1)  # the reference, three swaps, one rescale
    pairs = probes.same_class_pairs(labels, 20, seed=3)
    assert pairs != probes.same_class_pairs(labels, 20, seed=0)
    whole = df[df["variant"] == "whole neighbour"]
    assert whole["anchor"].tolist() == [a for a, _ in pairs]
    want = [mse(images[a:a + 1], images[b:b + 1]).item() for a, b in pairs]
    assert whole["value"].tolist() == pytest.approx(want, rel=1e-5)


def test_radial_share_std_over_two_samples():
    z = torch.randn(2, 4, 8, generator=torch.Generator().manual_seed(7))
    row = probes.radial_share_along_t(z, paths=("linear",), ts=[0.3]).iloc[0]
    x0 = probes.flows.prior_for("linear", z.shape, generator=torch.Generator().manual_seed(0))
    x_t, u_t = probes.flows.path("linear", x0, z, torch.full((2,), 0.3))
    share = probes.flows.radial_share(u_t, x_t).double()
    assert row["share_std"] == pytest.approx(share.std().item(), rel=1e-6) and row["share_std"] > 0
