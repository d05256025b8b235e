"""Frechet distance on classifier features, with paired bootstrap intervals (benchmarks only)."""

from __future__ import annotations

import numpy as np

_REFERENCE = None


def reference():
    """Mean and covariance of the shipped classifier's features of the 10k Fashion-MNIST test images."""
    global _REFERENCE
    if _REFERENCE is None:
        from skip_tuning_demo.metrics import reference_stats

        _REFERENCE = reference_stats()
    return _REFERENCE


def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


class Reference:
    """Precomputes sigma_ref^(1/2) so that tr((S sigma_ref)^(1/2)) is one symmetric eigensolve."""

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


def frechet_from_features(features, mu_ref, sigma_ref) -> float:
    return Reference(mu_ref, sigma_ref).fd(features)


def paired_bootstrap(ref: Reference, features_a, features_b, n_boot: int = 200, seed: int = 0):
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


def bootstrap_fd(ref: Reference, features, n_boot: int = 200, seed: int = 0) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return np.array([ref.fd(f[rng.integers(0, f.shape[0], f.shape[0])]) for _ in range(n_boot)])
