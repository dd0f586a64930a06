"""lab.class_agreement on features with a known answer, and on real images end to end."""
import numpy as np
import pytest
import torch

from lab import class_agreement as ca
from lab import data


def blobs(n_per, k=4, d=8, spread=0.1, seed=0):
    rng = np.random.default_rng(seed)
    centres = np.eye(k, d) * 5
    x = np.concatenate([c + spread * rng.standard_normal((n_per, d)) for c in centres])
    return x, np.repeat(np.arange(k), n_per)


def test_agreement_is_one_on_separable_classes_and_zero_when_every_request_is_wrong():
    x, y = blobs(50)
    clf = ca.fit_classifier(x, y)
    assert ca.agreement(clf, x, y) == 1.0
    assert ca.agreement(clf, x, (y + 1) % 4) == 0.0
    assert ca.agreement(clf, x, torch.as_tensor(y)) == 1.0


def test_agreement_counts_exactly_the_matching_fraction():
    x, y = blobs(25)
    clf = ca.fit_classifier(x, y)
    wrong = y.copy()
    wrong[:10] = (wrong[:10] + 1) % 4           # 10 of 100 requests disagree with the sample's class
    assert ca.agreement(clf, x, wrong) == pytest.approx(0.9)


def test_agreement_refuses_mismatched_or_empty_input():
    x, y = blobs(5)
    clf = ca.fit_classifier(x, y)
    with pytest.raises(ValueError, match="requested labels"):
        ca.agreement(clf, x, y[:-1])
    with pytest.raises(ValueError, match="at least one"):
        ca.agreement(clf, x[:0], y[:0])


def test_effnet_classifier_tells_digits_apart_far_above_chance():
    ds = data.digits(size=32, n=300)
    images = torch.stack([ds[i][0] for i in range(len(ds))])
    labels = np.array([int(ds[i][1]) for i in range(len(ds))])
    feats = ca.image_features(images, size=64)
    clf = ca.fit_classifier(feats[:200], labels[:200])
    held_out = ca.agreement(clf, feats[200:], labels[200:])
    shuffled = ca.agreement(clf, feats[200:], np.random.default_rng(0).permutation(labels[200:]))
    assert held_out > 0.7 and shuffled < 0.3   # chance is 0.1
