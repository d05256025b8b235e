"""Small CNN classifier for Fashion-MNIST used to score demo samples.

It works on the demo model's image format (``[B, 1, 32, 32]`` in [-1, 1]).
``features(x)`` returns the 128-d penultimate activations used for the
Frechet distance in :mod:`skip_tuning_demo.metrics`.

Train (a few minutes on CPU)::

    python -m skip_tuning_demo.train_classifier
"""

from __future__ import annotations

import os

import torch
import torch.nn as nn
import torch.nn.functional as F

from .model import WEIGHTS_DIR

CLASSIFIER_WEIGHTS = os.path.join(WEIGHTS_DIR, "fashion_classifier.safetensors")
FEATURE_DIM = 128


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.Conv2d(cout, cout, 3, padding=1, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
        nn.MaxPool2d(2),
    )


class FashionClassifier(nn.Module):
    """conv(16)x2 -> conv(32)x2 -> conv(64)x2 (each with 2x2 max-pool) -> fc 128 -> fc 10."""

    def __init__(self, num_classes: int = 10):
        super().__init__()
        self.body = nn.Sequential(_block(1, 16), _block(16, 32), _block(32, 64))  # 32 -> 16 -> 8 -> 4
        self.fc = nn.Linear(64 * 4 * 4, FEATURE_DIM)
        self.drop = nn.Dropout(0.3)
        self.head = nn.Linear(FEATURE_DIM, num_classes)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Penultimate-layer features ``[B, 128]`` for images ``[B, 1, 32, 32]`` in [-1, 1]."""
        h = self.body(x)
        return F.relu(self.fc(h.flatten(1)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.drop(self.features(x)))


def load_classifier(device: str | torch.device = "cpu", path: str | None = None) -> FashionClassifier:
    """Load the shipped classifier (eval mode, float32)."""
    from safetensors.torch import load_file

    model = FashionClassifier()
    sd = load_file(path or CLASSIFIER_WEIGHTS)
    model.load_state_dict({k: (v.float() if v.is_floating_point() else v) for k, v in sd.items()}, strict=True)
    return model.to(device).eval()
