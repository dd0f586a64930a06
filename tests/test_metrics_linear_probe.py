"""metrics.linear_probe with its defaults, by what reaches the classifier rather than by accuracy alone.

logreg: the LogisticRegression it builds (C = 1, max_iter = 2000) receives the features standardised
with the training mean and std (ddof 1, floor 1e-6), in float64, train and test alike.
sgd: a zero-bias N(0, 0.01²) head drawn from seed's generator, AdamW(lr 1e-3, weight decay 1e-4),
100 epochs of batches of 256 in the order of one randperm per epoch from the same generator, and
the returned accuracy is that of the trained head on the standardised test features."""
import numpy as np
import pytest
import sklearn.linear_model
import torch

from lab import metrics


def blobs(n, seed, d=4, classes=3):
    g = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    scale, offset = torch.tensor([0.5, 3.0, 0.01, 7.0])[:d], torch.tensor([2.0, -1.0, 0.05, 0.0])[:d]
    x = torch.randn(n, d, generator=g) * scale + offset
    x[:, 0] += 1.5 * y.float()
    return x, y


def standardised(xtr, xte):
    x = xtr.double().numpy()
    mean, std = x.mean(0), np.maximum(x.std(0, ddof=1), 1e-6)
    return (x - mean) / std, (xte.double().numpy() - mean) / std


class RecordingLogReg(sklearn.linear_model.LogisticRegression):
    made = []

    def __init__(self, **kw):
        super().__init__(**kw)
        RecordingLogReg.made.append(self)
        self.kw, self.seen = kw, []

    def fit(self, X, y):
        self.seen.append(("fit", X.copy(), y.copy()))
        return super().fit(X, y)

    def predict(self, X):
        self.seen.append(("predict", X.copy()))
        return super().predict(X)


def test_logreg_default_gets_standardised_float64_features_and_c_1(monkeypatch):
    monkeypatch.setattr(sklearn.linear_model, "LogisticRegression", RecordingLogReg)
    RecordingLogReg.made = []
    xtr, ytr = blobs(90, 0)
    xte, yte = blobs(30, 1)
    acc = metrics.linear_probe(xtr, ytr, xte, yte)  # method='logreg' by default
    (clf,) = RecordingLogReg.made
    assert clf.kw == {"C": 1.0, "max_iter": 2000}
    (_, xfit, yfit), (_, xpred) = clf.seen
    want_tr, want_te = standardised(xtr, xte)
    assert xfit.dtype == np.float64 and xpred.dtype == np.float64
    np.testing.assert_allclose(xfit, want_tr, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(xpred, want_te, rtol=1e-5, atol=1e-6)
    assert yfit.tolist() == ytr.tolist()
    ref = sklearn.linear_model.LogisticRegression(C=1.0, max_iter=2000).fit(want_tr, ytr.numpy())
    assert acc == float((ref.predict(want_te) == yte.numpy()).mean())


def test_standardisation_floors_a_constant_feature_at_1e_6():
    """A constant training feature (std 0) is divided by 1e-6: a test value 1e-6 off it becomes ±1, not ±1e-6."""
    made = []

    class Rec(RecordingLogReg):
        def __init__(self, **kw):
            super().__init__(**kw)
            made.append(self)

    xtr, ytr = blobs(60, 2, d=2)
    xtr[:, 1] = 3.0
    xte = torch.tensor([[0.0, 3.0 + 2 ** -20], [1.0, 3.0 - 2 ** -20]])
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(sklearn.linear_model, "LogisticRegression", Rec)
        metrics.linear_probe(xtr, ytr, xte, torch.tensor([0, 1]))
    xpred = made[0].seen[1][1]
    np.testing.assert_allclose(xpred[:, 1], [2 ** -20 / 1e-6, -2 ** -20 / 1e-6], rtol=1e-5)


class RecordingAdamW(torch.optim.AdamW):
    made = []

    def __init__(self, params, **kw):
        params = list(params)
        super().__init__(params, **kw)
        RecordingAdamW.made.append(self)
        self.kw, self.initial, self.steps = kw, [p.detach().clone() for p in params], 0

    def step(self, closure=None):
        self.steps += 1
        return super().step(closure)


def test_sgd_defaults_seed_batches_epochs_and_returned_accuracy(monkeypatch):
    monkeypatch.setattr(torch.optim, "AdamW", RecordingAdamW)
    RecordingAdamW.made = []
    targets = []
    ce = torch.nn.functional.cross_entropy
    monkeypatch.setattr(metrics.F, "cross_entropy", lambda logits, y: targets.append(y.tolist()) or ce(logits, y))
    n = 300  # batches of 256: 256 + 44 per epoch
    xtr, ytr = blobs(n, 3)
    xte, yte = blobs(50, 4)
    ytr[-1] = 3  # the classes are 0..3 (the largest label + 1), one of them only in training
    acc = metrics.linear_probe(xtr, ytr, xte, yte, method="sgd")
    (opt,) = RecordingAdamW.made
    assert opt.kw == {"lr": 1e-3, "weight_decay": 1e-4}
    assert opt.steps == 100 * 2 and len(targets) == 200
    g = torch.Generator().manual_seed(0)
    w0 = torch.empty(4, 4).normal_(0, 0.01, generator=g)
    weight0, bias0 = opt.initial
    assert torch.equal(weight0, w0) and torch.equal(bias0, torch.zeros(4))
    perm = torch.randperm(n, generator=g)  # epoch 1's order, from the same generator as the head
    assert targets[:2] == [ytr[perm[:256]].tolist(), ytr[perm[256:]].tolist()]
    perm = torch.randperm(n, generator=g)
    assert targets[2:4] == [ytr[perm[:256]].tolist(), ytr[perm[256:]].tolist()]
    weight, bias = (p.detach().double() for p in opt.param_groups[0]["params"])
    _, te = standardised(xtr, xte)
    pred = (torch.from_numpy(te) @ weight.T + bias).argmax(1)
    assert acc == pytest.approx((pred == yte).double().mean().item(), abs=1e-6)
    assert acc > 0.5  # better than chance (1/3): the head learnt
