"""Class agreement: does a class-conditional generator draw the class it was asked for?

A classifier trained on real images of the data set (a logistic regression on EfficientNet-Lite0
features, a network independent of the DINO teacher) labels decoded samples; the score is the
fraction that gets the requested class. Read it beside two references from the same classifier:
its accuracy on real held-out images (the classifier's ceiling) and on the same images encoded
and decoded by the autoencoder (the decoder's ceiling: a generator cannot keep more class identity
than its decoder). Chance is 1 / number of classes.
"""
import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from lab import metrics


def image_features(images01, size=64, batch_size=64):
    """EfficientNet-Lite0 pooled features at `size` px (64 px costs ~1.7 s per 64 images on 2 cores)."""
    return np.asarray(metrics.effnet_features(images01, size=size, batch_size=batch_size))


def fit_classifier(features, labels, c=1.0, max_iter=2000):
    """Standardise, then a multinomial logistic regression; returns the fitted sklearn pipeline."""
    clf = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter))
    return clf.fit(np.asarray(features), np.asarray(labels))


def agreement(classifier, features, requested):
    """Fraction of samples the classifier assigns to the class that was requested for them."""
    requested = np.asarray(requested.cpu() if torch.is_tensor(requested) else requested)
    if len(requested) != len(features):
        raise ValueError(f"{len(features)} samples but {len(requested)} requested labels")
    if len(requested) == 0:
        raise ValueError("agreement needs at least one sample")
    return float((classifier.predict(np.asarray(features)) == requested).mean())


def reference(train_feats, train_labels, test_feats, test_labels):
    """The real-image side of a comparison: the classifier fitted on the training images' features and
    its accuracy on the held-out images' features (the classifier's own ceiling)."""
    clf = fit_classifier(train_feats, train_labels)
    return dict(classifier=clf, real_accuracy=agreement(clf, test_feats, test_labels))
