"""Reference models of the course, as PyTorch modules."""
from __future__ import annotations

from torch import nn


def guide_mlp(n_in: int = 784, n_classes: int = 10, dropout: float = 0.2) -> nn.Sequential:
    """The guide's multi-layer perceptron: 784-128-64-32-10, ReLU, dropout 0.2 after the first two.

    Input (B, 784) flattened images; output (B, 10) logits. There is no softmax layer:
    ``nn.CrossEntropyLoss`` applies log-softmax itself, which is the stable way to do it.
    111,146 parameters.
    """
    return nn.Sequential(
        nn.Linear(n_in, 128), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(128, 64), nn.ReLU(), nn.Dropout(dropout),
        nn.Linear(64, 32), nn.ReLU(),
        nn.Linear(32, n_classes),
    )


def count_parameters(model: nn.Module, trainable_only: bool = True) -> int:
    """Number of (trainable) scalar parameters in ``model``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad or not trainable_only)
