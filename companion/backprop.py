"""A two-layer network in NumPy with backpropagation written out, and gradient checking.

The network (the guide's): ``X -> Linear -> ReLU -> Linear -> sigmoid``, trained with the
mean binary cross-entropy. Shapes, for m examples, n inputs, h hidden units, k outputs:

=====  =========  =====================================
name   shape      meaning
=====  =========  =====================================
X      (m, n)     inputs, one row per example
y      (m, k)     targets in {0, 1}
W1     (n, h)     first-layer weights;  b1 (1, h)
W2     (h, k)     second-layer weights; b2 (1, k)
z1,a1  (m, h)     hidden pre-activation and ReLU output
z2,out (m, k)     output logit and sigmoid probability
=====  =========  =====================================
"""
from __future__ import annotations

from typing import Callable

import numpy as np

XOR_X = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
XOR_Y = np.array([[0], [1], [1], [0]], dtype=np.float64)

Params = dict[str, np.ndarray]


def init_params(n_in: int, n_hidden: int, n_out: int, seed: int = 0, scale: float = 1.0) -> Params:
    """Gaussian weights scaled by ``scale / sqrt(fan_in)`` and zero biases."""
    rng = np.random.default_rng(seed)
    return {
        "W1": rng.normal(size=(n_in, n_hidden)) * scale / np.sqrt(n_in),
        "b1": np.zeros((1, n_hidden)),
        "W2": rng.normal(size=(n_hidden, n_out)) * scale / np.sqrt(n_hidden),
        "b2": np.zeros((1, n_out)),
    }


def sigmoid(z: np.ndarray) -> np.ndarray:
    """Overflow-free logistic function."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1 / (1 + e), e / (1 + e))


def forward(params: Params, X: np.ndarray) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """Forward pass. Returns ``out`` (m, k) and the cache ``{"z1", "a1", "z2"}`` that backward needs."""
    z1 = X @ params["W1"] + params["b1"]
    a1 = np.maximum(z1, 0)
    z2 = a1 @ params["W2"] + params["b2"]
    return sigmoid(z2), {"z1": z1, "a1": a1, "z2": z2}


def bce_loss(out: np.ndarray, y: np.ndarray, eps: float = 1e-12) -> float:
    """Binary cross-entropy of probabilities ``out`` (m, k) against targets ``y`` (m, k),
    summed over the k outputs and averaged over the m examples (for k = 1: the plain mean)."""
    out = np.clip(out, eps, 1 - eps)
    return float(-np.sum(y * np.log(out) + (1 - y) * np.log(1 - out)) / out.shape[0])


def backward(params: Params, X: np.ndarray, y: np.ndarray, out: np.ndarray, cache: dict[str, np.ndarray]) -> Params:
    """Gradients of the mean BCE loss (averaged over the m examples) for every parameter.

    Sigmoid + BCE give dL/dz2 = (out - y) / m; the chain rule does the rest. Returns
    ``{"W1", "b1", "W2", "b2"}`` with the parameters' shapes.
    """
    m = X.shape[0]
    dz2 = (out - y) / m                       # (m, k)
    dW2 = cache["a1"].T @ dz2                 # (h, k)
    db2 = dz2.sum(axis=0, keepdims=True)      # (1, k)
    da1 = dz2 @ params["W2"].T                # (m, h)
    dz1 = da1 * (cache["z1"] > 0)             # ReLU passes gradient where it was active
    dW1 = X.T @ dz1                           # (n, h)
    db1 = dz1.sum(axis=0, keepdims=True)      # (1, h)
    return {"W1": dW1, "b1": db1, "W2": dW2, "b2": db2}


def loss_of(params: Params, X: np.ndarray, y: np.ndarray) -> float:
    """The loss as a function of the parameters (what gradient checking differentiates)."""
    return bce_loss(forward(params, X)[0], y)


def train(params: Params, X: np.ndarray, y: np.ndarray, lr: float = 0.5, epochs: int = 2000,
          forward_fn: Callable = forward, backward_fn: Callable = backward) -> tuple[Params, list[float]]:
    """Full-batch gradient descent; returns the trained parameters (a copy) and the loss per epoch."""
    params = {k: v.copy() for k, v in params.items()}
    losses = []
    for _ in range(epochs):
        out, cache = forward_fn(params, X)
        losses.append(bce_loss(out, y))
        grads = backward_fn(params, X, y, out, cache)
        for k in params:
            params[k] -= lr * grads[k]
    return params, losses


def numerical_gradient(f: Callable[[np.ndarray], float], x: np.ndarray, eps: float = 1e-5) -> np.ndarray:
    """Central-difference estimate of the gradient of a scalar function ``f`` at ``x``.

    grad[i] = (f(x + eps e_i) - f(x - eps e_i)) / (2 eps), for every entry i of x (any shape).
    ``x`` is perturbed in place one entry at a time and restored, so f may read it directly.
    """
    grad = np.zeros_like(x, dtype=np.float64)
    for i in np.ndindex(x.shape):
        old = x[i]
        x[i] = old + eps
        f_plus = f(x)
        x[i] = old - eps
        f_minus = f(x)
        x[i] = old
        grad[i] = (f_plus - f_minus) / (2 * eps)
    return grad


def relative_error(analytic: np.ndarray, numerical: np.ndarray) -> float:
    """``|a - n| / (|a| + |n|)`` with Euclidean norms: 0 when equal, near 1 when unrelated.

    Norms rather than entries, so a gradient that is exactly 0 (a dead ReLU unit) against
    finite-difference noise of 1e-11 does not read as a 100 % error.
    """
    scale = np.linalg.norm(analytic) + np.linalg.norm(numerical)
    return float(np.linalg.norm(analytic - numerical) / max(scale, 1e-12))


def gradient_check(params: Params, X: np.ndarray, y: np.ndarray, grads: Params, eps: float = 1e-6) -> dict[str, float]:
    """:func:`relative_error` between ``grads`` and numerical gradients, per parameter.

    Below about 1e-7 the analytic gradient is right; above 1e-3 it is almost surely wrong.
    """
    errors = {}
    for name in params:
        probe = {k: v.copy() for k, v in params.items()}

        def f(value: np.ndarray, name: str = name) -> float:
            probe[name] = value
            return loss_of(probe, X, y)

        errors[name] = relative_error(grads[name], numerical_gradient(f, params[name].copy(), eps))
    return errors
