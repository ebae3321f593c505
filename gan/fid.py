"""Sample quality measured with the project's own MNIST classifier (reference_cnn).

Features are the 1024-d output of its Flatten layer (the input of the last Dense layer); the
Frechet distance between the Gaussians fitted to the features of generated and of test images is
an MNIST analogue of FID. The histogram of predicted classes exposes mode collapse.
"""
import numpy as np

from nn import EVAL_BATCH, batch_slices, eval_mode, first_param, on_model
from nn.backend import to_numpy, xp_of
from nn.layers import Flatten

NUM_CLASSES = 10


def _flatten_index(model):
    for i, layer in enumerate(model.layers):
        if isinstance(layer, Flatten):
            return i
    raise ValueError("the classifier has no Flatten layer to take features from")


def features_and_classes(model, images, batch_size=EVAL_BATCH):
    """Penultimate features (N, D) float64 and predicted classes (N,) int, both on the host.

    images: host array (N, 1, 28, 28) or (N, 784) in [0, 1]. The model runs in eval mode; the
    features are the output of its Flatten layer, the classes the argmax of the layers after it.
    """
    k = _flatten_index(model) + 1
    xp = xp_of(first_param(model))
    images = np.reshape(images, (len(images), 1, 28, 28))
    feats, classes = [], []
    with eval_mode(model):
        for s in batch_slices(len(images), batch_size):
            h = on_model(model, images[s])
            for layer in model.layers[:k]:
                h = layer.forward(h)
            feats.append(np.asarray(to_numpy(h), dtype=np.float64))
            for layer in model.layers[k:]:
                h = layer.forward(h)
            classes.append(to_numpy(xp.argmax(h, axis=1)))
    model.clear_caches()  # forward only: no backward will use them
    return np.concatenate(feats), np.concatenate(classes)


def class_fractions(classes, num_classes=NUM_CLASSES):
    """Fraction (num_classes,) of the predicted labels `classes` (N,) falling in each class."""
    return np.bincount(np.asarray(classes), minlength=num_classes)[:num_classes] / len(classes)


def coverage(fractions, threshold=0.01):
    """Number of classes holding at least `threshold` of the samples."""
    return int(np.sum(np.asarray(fractions) >= threshold))


def _sqrt_psd(s):
    """Symmetric square root of a symmetric PSD matrix (tiny negative eigenvalues clipped to 0)."""
    w, v = np.linalg.eigh(s)
    return (v * np.sqrt(np.clip(w, 0.0, None))) @ v.T


def frechet_distance(f1, f2):
    """Frechet distance between Gaussians fitted to features f1 (N1, D) and f2 (N2, D), on the host.

    ||mu1 - mu2||^2 + tr(S1 + S2 - 2 (S1^1/2 S2 S1^1/2)^1/2), in float64, with unbiased sample
    covariances and symmetric square roots from numpy.linalg.eigh (tiny negative eigenvalues,
    rounding errors of a semi-definite matrix, clipped to 0).
    """
    f1, f2 = np.asarray(f1, dtype=np.float64), np.asarray(f2, dtype=np.float64)
    mu1, mu2 = f1.mean(axis=0), f2.mean(axis=0)
    s1, s2 = np.atleast_2d(np.cov(f1, rowvar=False)), np.atleast_2d(np.cov(f2, rowvar=False))
    r1 = _sqrt_psd(s1)
    m = r1 @ s2 @ r1
    w = np.linalg.eigvalsh((m + m.T) / 2)
    cross = np.sum(np.sqrt(np.clip(w, 0.0, None)))
    return float(np.sum((mu1 - mu2) ** 2) + np.trace(s1) + np.trace(s2) - 2 * cross)
