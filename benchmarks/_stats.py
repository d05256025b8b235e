"""The benchmarks' statistics: the cached test-set reference and FD bootstraps.

The FD and the paired comparison live in skip_tuning_demo.metrics, which the demo uses too.
"""

from __future__ import annotations

import numpy as np

from skip_tuning_demo.metrics import FrechetReference as Reference
from skip_tuning_demo.metrics import paired_bootstrap, paired_interval, paired_verdict

__all__ = ["Reference", "bootstrap_fd", "paired_bootstrap", "paired_interval", "paired_verdict", "reference"]

_REFERENCE = None


def reference():
    """Mean and covariance of the shipped classifier's features of the 10k Fashion-MNIST test images."""
    global _REFERENCE
    if _REFERENCE is None:
        from skip_tuning_demo.metrics import reference_stats

        _REFERENCE = reference_stats()
    return _REFERENCE


def bootstrap_fd(ref: Reference, features, n_boot: int = 200, seed: int = 0) -> np.ndarray:
    f = np.asarray(features, dtype=np.float64)
    rng = np.random.default_rng(seed)
    return np.array([ref.fd(f[rng.integers(0, f.shape[0], f.shape[0])]) for _ in range(n_boot)])
