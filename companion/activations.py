"""Activation functions and their derivatives, written with plain tensor operations.

Every function takes a tensor ``x`` of any shape and returns a tensor of the same
shape, dtype and device. Derivatives follow PyTorch's autograd conventions at the kinks:
``relu_grad(0) = 0`` and ``leaky_relu_grad(0) = alpha``.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor


def relu(x: Tensor) -> Tensor:
    """max(0, x), elementwise (NaN stays NaN, as in ``torch.relu``)."""
    return x.clamp(min=0)


def relu_grad(x: Tensor) -> Tensor:
    """1 where x > 0, else 0."""
    return (x > 0).to(x.dtype)


def leaky_relu(x: Tensor, alpha: float = 0.01) -> Tensor:
    """x for x > 0, alpha * x otherwise."""
    return torch.where(x > 0, x, alpha * x)


def leaky_relu_grad(x: Tensor, alpha: float = 0.01) -> Tensor:
    """1 for x > 0, alpha otherwise."""
    return torch.where(x > 0, torch.ones_like(x), torch.full_like(x, alpha))


def sigmoid(x: Tensor) -> Tensor:
    """1 / (1 + exp(-x)), computed without overflow for large |x|.

    For x >= 0 this form is used directly; for x < 0 the equal form exp(x) / (1 + exp(x))
    keeps exp's argument non-positive. (Clamping, rather than abs, keeps autograd's
    derivative right at exactly 0, and keeps the unused branch finite.)
    """
    pos = torch.exp(-x.clamp(min=0))  # in (0, 1]: never overflows
    neg = torch.exp(x.clamp(max=0))
    return torch.where(x >= 0, 1 / (1 + pos), neg / (1 + neg))


def sigmoid_grad(x: Tensor) -> Tensor:
    """sigmoid(x) * (1 - sigmoid(x))."""
    s = sigmoid(x)
    return s * (1 - s)


def tanh(x: Tensor) -> Tensor:
    """(e^x - e^-x) / (e^x + e^-x), stable for large |x| and precise near 0.

    With t = expm1(-2|x|) = e^(-2|x|) - 1, tanh|x| = -t / (2 + t); ``expm1`` keeps the
    digits that ``exp(...) - 1`` would lose for tiny x.
    """
    t_pos = torch.expm1(-2 * x.clamp(min=0))
    t_neg = torch.expm1(2 * x.clamp(max=0))
    return torch.where(x >= 0, -t_pos / (2 + t_pos), t_neg / (2 + t_neg))


def tanh_grad(x: Tensor) -> Tensor:
    """1 - tanh(x)^2."""
    return 1 - tanh(x) ** 2


def _normal_cdf(x: Tensor) -> Tensor:
    return 0.5 * (1 + torch.erf(x / math.sqrt(2.0)))


def gelu(x: Tensor) -> Tensor:
    """x * Phi(x), Phi the standard normal CDF (the exact form, not the tanh approximation)."""
    return x * _normal_cdf(x)


def gelu_grad(x: Tensor) -> Tensor:
    """Phi(x) + x * phi(x), phi the standard normal density."""
    pdf = torch.exp(-0.5 * x**2) / math.sqrt(2 * math.pi)
    return _normal_cdf(x) + x * pdf


def softmax(z: Tensor, dim: int = -1) -> Tensor:
    """exp(z_i) / sum_j exp(z_j) along ``dim``; shifting by the max keeps exp from overflowing.

    z: (..., C) logits. Returns probabilities of the same shape that sum to 1 along ``dim``.
    """
    shifted = z - z.amax(dim=dim, keepdim=True)
    e = torch.exp(shifted)
    return e / e.sum(dim=dim, keepdim=True)


def naive_softmax(z: Tensor, dim: int = -1) -> Tensor:
    """The textbook formula without the shift: overflows to NaN for large logits (for demos)."""
    e = torch.exp(z)
    return e / e.sum(dim=dim, keepdim=True)


#: name -> (function, derivative, PyTorch's own version) for plots, widgets and tests.
ACTIVATIONS = {
    "ReLU": (relu, relu_grad, torch.relu),
    "Leaky ReLU": (leaky_relu, leaky_relu_grad, lambda x: torch.nn.functional.leaky_relu(x, 0.01)),
    "Sigmoid": (sigmoid, sigmoid_grad, torch.sigmoid),
    "Tanh": (tanh, tanh_grad, torch.tanh),
    "GELU": (gelu, gelu_grad, torch.nn.functional.gelu),
}
