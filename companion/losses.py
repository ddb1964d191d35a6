"""Loss functions in numerically stable forms, each a batch mean like ``torch.nn.functional``'s default.

=================  ==============================  ===================================
loss               inputs                          stable form
=================  ==============================  ===================================
bce_with_logits    logits z (...), targets y (...) max(z, 0) - z*y + log(1 + exp(-|z|))
cross_entropy      logits z (N, C), labels (N,)    logsumexp(z_i) - z_i[y_i]
mse / mae          prediction, target (same shape) mean((p - t)^2) / mean(|p - t|)
huber              prediction, target, delta        quadratic inside |r| <= delta, linear outside
=================  ==============================  ===================================

The naive textbook versions (``naive_bce``, ``naive_cross_entropy``) are here too, to
show where they break.
"""
from __future__ import annotations

import torch
from torch import Tensor


def bce_with_logits(logits: Tensor, targets: Tensor) -> Tensor:
    """Mean binary cross-entropy of ``sigmoid(logits)`` against targets in [0, 1].

    logits, targets: same shape (...). Returns a 0-d tensor. Never takes the log of 0 and
    never overflows, whatever the size of the logits.
    """
    return (logits.clamp(min=0) - logits * targets + torch.log1p(torch.exp(-logits.abs()))).mean()


def naive_bce(probs: Tensor, targets: Tensor) -> Tensor:
    """The textbook formula -mean(y log p + (1 - y) log(1 - p)): infinite once p rounds to 0 or 1."""
    return -(targets * torch.log(probs) + (1 - targets) * torch.log(1 - probs)).mean()


def logsumexp(z: Tensor, dim: int = -1) -> Tensor:
    """log(sum(exp(z))) along ``dim`` (removed), shifted by the maximum so it never overflows."""
    top = z.amax(dim=dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    return (top + torch.log(torch.exp(z - top).sum(dim=dim, keepdim=True))).squeeze(dim)


def log_softmax(z: Tensor, dim: int = -1) -> Tensor:
    """log(softmax(z)) along ``dim``: (z - m) - log(sum(exp(z - m))) with m the maximum.

    Working with z - m throughout avoids adding and then subtracting a large m, which
    would lose digits in float32 when the logits are large.
    """
    top = z.amax(dim=dim, keepdim=True)
    top = torch.where(torch.isfinite(top), top, torch.zeros_like(top))
    shifted = z - top
    return shifted - torch.log(torch.exp(shifted).sum(dim=dim, keepdim=True))


def cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """Mean categorical cross-entropy. logits (N, C), integer labels (N,) in [0, C). Returns a 0-d tensor.

    Per example: logsumexp(z) - z[label] = -log_softmax(z)[label].
    """
    return -log_softmax(logits, dim=1).gather(1, labels.long().unsqueeze(1)).mean()


def naive_cross_entropy(logits: Tensor, labels: Tensor) -> Tensor:
    """-mean(log(softmax(z)[y])) with the literal softmax: NaN or inf for large logits."""
    probs = torch.exp(logits) / torch.exp(logits).sum(dim=1, keepdim=True)
    return -torch.log(probs.gather(1, labels.long().unsqueeze(1))).mean()


def mse(pred: Tensor, target: Tensor) -> Tensor:
    """Mean squared error, mean((pred - target)^2). Same-shape inputs; returns a 0-d tensor."""
    return ((pred - target) ** 2).mean()


def mae(pred: Tensor, target: Tensor) -> Tensor:
    """Mean absolute error, mean(|pred - target|). Same-shape inputs; returns a 0-d tensor."""
    return (pred - target).abs().mean()


def huber(pred: Tensor, target: Tensor, delta: float = 1.0) -> Tensor:
    """Mean Huber loss: r^2 / 2 where |r| <= delta, delta * (|r| - delta / 2) elsewhere (r = pred - target).

    Equals ``torch.nn.functional.huber_loss(pred, target, delta=delta)``.
    """
    r = (pred - target).abs()
    return torch.where(r <= delta, 0.5 * r**2, delta * (r - 0.5 * delta)).mean()


def torch_pairs() -> dict:
    """``{name: (companion loss, torch.nn.functional loss)}``, both called as ``loss(input, target)``."""
    import torch.nn.functional as F

    return {
        "binary cross-entropy": (bce_with_logits, F.binary_cross_entropy_with_logits),
        "cross-entropy": (cross_entropy, F.cross_entropy),
        "MSE": (mse, F.mse_loss),
        "MAE": (mae, F.l1_loss),
        "Huber": (huber, F.huber_loss),
    }
