"""Regularization from scratch: weight penalties, inverted dropout, batch normalization, early stopping.

Each function matches its PyTorch counterpart (``F.dropout``'s scaling, ``F.batch_norm``
and ``nn.BatchNorm1d`` including running statistics, ``companion.training.EarlyStopping``'s
decision) and returns new tensors instead of writing into its inputs.
"""
from __future__ import annotations

from typing import Callable, Iterable, Sequence

import torch
from torch import Tensor, nn


# ---------------------------------------------------------------- penalties

def weights(model: nn.Module) -> list[Tensor]:
    """The weight matrices and kernels of ``model`` (parameters with 2 or more dimensions), not the biases."""
    return [p for p in model.parameters() if p.ndim >= 2]


def l1_penalty(params: Iterable[Tensor], lam: float) -> Tensor:
    """lam * sum of |w| over every entry of every tensor in ``params`` (a 0-d tensor)."""
    return lam * sum(p.abs().sum() for p in params)


def l2_penalty(params: Iterable[Tensor], lam: float) -> Tensor:
    """lam * sum of w^2 over every entry of every tensor (Keras's ``regularizers.l2(lam)``).

    Its gradient is 2 * lam * w, so SGD with ``weight_decay = 2 * lam`` takes the same step.
    """
    return lam * sum((p**2).sum() for p in params)


def penalized(loss_fn: Callable, model: nn.Module, l1: float = 0.0, l2: float = 0.0) -> Callable:
    """``loss_fn(out, y)`` plus L1/L2 penalties on ``model``'s weights, added only while the model is training.

    (So validation losses computed in eval mode stay comparable with an unpenalised model.)
    """
    def loss(out: Tensor, y: Tensor) -> Tensor:
        value = loss_fn(out, y)
        if model.training and l1:
            value = value + l1_penalty(weights(model), l1)
        if model.training and l2:
            value = value + l2_penalty(weights(model), l2)
        return value

    return loss


# ---------------------------------------------------------------- dropout

def dropout(x: Tensor, p: float = 0.5, training: bool = True) -> Tensor:
    """Inverted dropout: in training, zero each entry with probability ``p`` and scale survivors by 1 / (1 - p).

    In evaluation (``training=False``) the input comes back unchanged, so the expected
    value of every unit is the same in both modes. Uses the global torch generator.
    """
    if not training or p == 0:
        return x
    if p >= 1:
        return torch.zeros_like(x)
    keep = torch.rand(x.shape, device=x.device) >= p
    return torch.where(keep, x / (1 - p), torch.zeros_like(x))


# ---------------------------------------------------------------- batch norm

def batch_norm(x: Tensor, gamma: Tensor, beta: Tensor, running_mean: Tensor, running_var: Tensor,
               training: bool = True, momentum: float = 0.1, eps: float = 1e-5) -> tuple[Tensor, Tensor, Tensor]:
    """Batch normalization of x (N, D) per feature; returns ``(out, new_running_mean, new_running_var)``.

    Training: normalise with the batch's mean and biased variance, and move the running
    statistics a fraction ``momentum`` towards the batch's mean and *unbiased* variance
    (PyTorch's convention). Evaluation: normalise with the running statistics, which come
    back unchanged. gamma, beta, running_mean, running_var: (D,).
    """
    if training:
        n = x.shape[0]
        mean = x.mean(dim=0)
        var = x.var(dim=0, unbiased=False)
        new_mean = (1 - momentum) * running_mean + momentum * mean
        new_var = (1 - momentum) * running_var + momentum * var * n / (n - 1)
    else:
        mean, var, new_mean, new_var = running_mean, running_var, running_mean, running_var
    out = (x - mean) / torch.sqrt(var + eps) * gamma + beta
    return out, new_mean, new_var


class BatchNorm1d(nn.Module):
    """``nn.BatchNorm1d`` for (N, D) inputs built on :func:`batch_norm` (same parameters, buffers and results)."""

    def __init__(self, num_features: int, momentum: float = 0.1, eps: float = 1e-5):
        super().__init__()
        self.momentum, self.eps = momentum, eps
        self.weight = nn.Parameter(torch.ones(num_features))
        self.bias = nn.Parameter(torch.zeros(num_features))
        self.register_buffer("running_mean", torch.zeros(num_features))
        self.register_buffer("running_var", torch.ones(num_features))

    def forward(self, x: Tensor) -> Tensor:
        out, mean, var = batch_norm(x, self.weight, self.bias, self.running_mean, self.running_var,
                                    self.training, self.momentum, self.eps)
        if self.training:
            with torch.no_grad():
                self.running_mean.copy_(mean)
                self.running_var.copy_(var)
        return out


# ---------------------------------------------------------------- early stopping

def early_stopping(values: Sequence[float], patience: int, min_delta: float = 0.0,
                   mode: str = "min") -> tuple[int | None, int]:
    """Replay early stopping over per-epoch ``values``; return ``(stop_epoch, best_epoch)`` (0-based).

    An epoch improves when its value beats the best so far by more than ``min_delta``
    (lower is better in mode "min", higher in "max"). Training stops at the end of the
    epoch that makes ``patience`` epochs in a row without improvement; ``stop_epoch`` is
    None when that never happens. ``best_epoch`` is the epoch whose weights get restored.
    It replays :class:`companion.training.EarlyStopping` itself, so the exercise's
    reference and the callback used in training cannot drift apart.
    """
    from .training import EarlyStopping

    rule = EarlyStopping(monitor="value", patience=patience, mode=mode, min_delta=min_delta, restore_best=False)
    rule.on_train_begin(None)
    for epoch, value in enumerate(values):
        if rule.on_epoch_end(epoch, {"value": value}, None):
            return epoch, rule.best_epoch
    return None, rule.best_epoch
