"""Sample-quality metrics for the demo model.

* Frechet distance between Gaussian fits of the classifier's 128-d
  penultimate features (a Fashion-MNIST analogue of FID; call it FD or
  "Frechet classifier distance").  Reference statistics are those of the
  10,000 Fashion-MNIST test images, cached in ``weights/fashion_test_stats.npz``
  (recomputed automatically if the cache is missing or belongs to other
  classifier weights).
* Classifier accuracy of samples with respect to the requested classes.
* Paired comparisons: two configurations sampled from the same seeds, their FD
  difference and its 95% interval from a bootstrap over the shared seeds.

All functions take images ``[B, 1, 32, 32]`` in [-1, 1] (the output of
:func:`skip_tuning_demo.sampling.sample`).
"""

from __future__ import annotations

import hashlib
import os
import warnings
from collections.abc import Sequence

import numpy as np
import torch

from .classifier import CLASSIFIER_WEIGHTS, FashionClassifier, load_classifier
from .model import WEIGHTS_DIR

REFERENCE_STATS = os.path.join(WEIGHTS_DIR, "fashion_test_stats.npz")

_CLASSIFIER_CACHE = {}


def get_classifier(device: str | torch.device = "cpu") -> FashionClassifier:
    """The shipped classifier, loaded once per device."""
    key = str(device)
    if key not in _CLASSIFIER_CACHE:
        _CLASSIFIER_CACHE[key] = load_classifier(device)
    return _CLASSIFIER_CACHE[key]


def _file_sha256(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


@torch.no_grad()
def compute_features(
    images: torch.Tensor, classifier: FashionClassifier | None = None, batch_size: int = 500
) -> np.ndarray:
    """Penultimate classifier features ``[N, 128]`` (float64 numpy)."""
    clf = classifier or get_classifier()
    dev = next(clf.parameters()).device
    out = []
    for i in range(0, images.shape[0], batch_size):
        out.append(clf.features(images[i : i + batch_size].to(dev, torch.float32)).double().cpu().numpy())
    return np.concatenate(out, axis=0) if out else np.zeros((0, 128))


@torch.no_grad()
def predict(images: torch.Tensor, classifier: FashionClassifier | None = None, batch_size: int = 500) -> torch.Tensor:
    """Predicted class indices ``[N]``."""
    clf = classifier or get_classifier()
    dev = next(clf.parameters()).device
    preds = [
        clf(images[i : i + batch_size].to(dev, torch.float32)).argmax(1).cpu()
        for i in range(0, images.shape[0], batch_size)
    ]
    return torch.cat(preds) if preds else torch.zeros(0, dtype=torch.long)


def classifier_accuracy(
    images: torch.Tensor, labels: Sequence[int] | torch.Tensor, classifier: FashionClassifier | None = None
) -> float:
    """Fraction of images the classifier assigns to the requested class."""
    labels = torch.as_tensor(labels if torch.is_tensor(labels) else list(labels), dtype=torch.long).cpu()
    if labels.shape[0] != images.shape[0]:
        raise ValueError("labels and images differ in length")
    return float((predict(images, classifier) == labels).float().mean())


def per_class_accuracy(
    images: torch.Tensor, labels: Sequence[int] | torch.Tensor, classifier: FashionClassifier | None = None
) -> dict:
    """``{class_index: accuracy}`` for the classes present in ``labels``."""
    labels = torch.as_tensor(labels if torch.is_tensor(labels) else list(labels), dtype=torch.long).cpu()
    pred = predict(images, classifier)
    return {int(c): float((pred[labels == c] == c).float().mean()) for c in torch.unique(labels)}


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean and covariance of ``[N, D]`` features."""
    f = np.asarray(features, dtype=np.float64)
    return f.mean(axis=0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between N(mu1, sigma1) and N(mu2, sigma2).

    ``|mu1 - mu2|^2 + tr(sigma1 + sigma2 - 2 (sigma1 sigma2)^(1/2))``.
    """
    from scipy import linalg

    mu1, mu2 = np.atleast_1d(mu1).astype(np.float64), np.atleast_1d(mu2).astype(np.float64)
    s1, s2 = np.atleast_2d(sigma1).astype(np.float64), np.atleast_2d(sigma2).astype(np.float64)
    if mu1.shape != mu2.shape or s1.shape != s2.shape:
        raise ValueError("mean/covariance shapes differ")
    diff = mu1 - mu2
    with warnings.catch_warnings():
        # near-singular covariances (few samples, dead features) are expected; handled below
        warnings.simplefilter("ignore", linalg.LinAlgWarning)
        covmean = linalg.sqrtm(s1.dot(s2))
        if not np.isfinite(covmean).all():
            offset = np.eye(s1.shape[0]) * eps
            covmean = linalg.sqrtm((s1 + offset).dot(s2 + offset))
    if np.iscomplexobj(covmean):
        covmean = covmean.real
    return float(diff.dot(diff) + np.trace(s1) + np.trace(s2) - 2.0 * np.trace(covmean))


def reference_stats(
    classifier: FashionClassifier | None = None, data_dir: str | None = None, cache_path: str | None = REFERENCE_STATS
) -> tuple[np.ndarray, np.ndarray]:
    """Feature mean/covariance of the 10k Fashion-MNIST test images.

    Uses the cached ``.npz`` when it matches the shipped classifier weights;
    otherwise computes the statistics from the dataset (and refreshes the
    cache when ``cache_path`` is writable and the shipped classifier is used).
    """
    shipped = classifier is None
    digest = _file_sha256(CLASSIFIER_WEIGHTS) if shipped and os.path.exists(CLASSIFIER_WEIGHTS) else None
    if shipped and cache_path and os.path.exists(cache_path):
        with np.load(cache_path) as z:
            if digest is not None and str(z["classifier_sha256"]) == digest:
                return z["mu"].astype(np.float64), z["sigma"].astype(np.float64)
    from .data import load_fashion_mnist, to_model_images

    images, _ = load_fashion_mnist("test", data_dir)
    mu, sigma = feature_stats(compute_features(to_model_images(images), classifier))
    if shipped and cache_path and digest is not None:
        try:
            np.savez(cache_path, mu=mu, sigma=sigma, classifier_sha256=np.array(digest), n=np.array(images.shape[0]))
        except OSError:
            pass
    return mu, sigma


def frechet_classifier_distance(
    images: torch.Tensor, classifier: FashionClassifier | None = None, ref: tuple[np.ndarray, np.ndarray] | None = None
) -> float:
    """Frechet distance of the images' classifier features to the test-set reference."""
    mu_r, sigma_r = ref if ref is not None else reference_stats(classifier)
    mu, sigma = feature_stats(compute_features(images, classifier))
    return frechet_distance(mu, sigma, mu_r, sigma_r)


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


class FrechetReference:
    """FD to one fixed reference, fast: sigma_ref^(1/2) is precomputed, so each FD is one symmetric eigensolve."""

    def __init__(self, mu: np.ndarray, sigma: np.ndarray):
        self.mu = np.asarray(mu, dtype=np.float64)
        self.sigma = np.asarray(sigma, dtype=np.float64)
        self.root = _sqrt_psd(self.sigma)
        self.trace = float(np.trace(self.sigma))

    def distance(self, mu: np.ndarray, sigma: np.ndarray) -> float:
        # tr((S R)^(1/2)) = tr((R^(1/2) S R^(1/2))^(1/2)): eigenvalues of a symmetric PSD matrix.
        inner = self.root @ sigma @ self.root
        values = np.linalg.eigvalsh((inner + inner.T) / 2)
        diff = mu - self.mu
        return float(diff @ diff + np.trace(sigma) + self.trace - 2.0 * np.sqrt(np.clip(values, 0, None)).sum())

    def fd(self, features: np.ndarray) -> float:
        f = np.asarray(features, dtype=np.float64)
        return self.distance(f.mean(axis=0), np.cov(f, rowvar=False))


def paired_bootstrap(ref: FrechetReference, features_a, features_b, n_boot: int = 200, seed: int = 0):
    """FD(a), FD(b), and the bootstrap distribution of FD(b) - FD(a) resampling the shared seeds.

    a and b hold the samples of the same seeds in the same order (common random numbers), so
    one index draw applies to both and the seed-to-seed variation cancels in the difference.
    """
    a = np.asarray(features_a, dtype=np.float64)
    b = np.asarray(features_b, dtype=np.float64)
    rng = np.random.default_rng(seed)
    diffs = np.empty(n_boot)
    for k in range(n_boot):
        index = rng.integers(0, a.shape[0], a.shape[0])
        diffs[k] = ref.fd(b[index]) - ref.fd(a[index])
    return ref.fd(a), ref.fd(b), diffs


def paired_interval(diffs) -> tuple[float, float]:
    """95% interval of a paired difference from its bootstrap distribution (percentiles)."""
    lo, hi = np.percentile(diffs, [2.5, 97.5])
    return float(lo), float(hi)


def paired_verdict(lo: float, hi: float) -> str:
    """A lower FD is better; only an interval that excludes 0 is a difference beyond the noise."""
    if hi < 0:
        return "better"
    if lo > 0:
        return "worse"
    return "no significant difference"


__all__ = [
    "REFERENCE_STATS",
    "get_classifier",
    "compute_features",
    "predict",
    "classifier_accuracy",
    "per_class_accuracy",
    "feature_stats",
    "frechet_distance",
    "reference_stats",
    "frechet_classifier_distance",
    "FrechetReference",
    "paired_bootstrap",
    "paired_interval",
    "paired_verdict",
]
