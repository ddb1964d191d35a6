"""Rosenblatt's perceptron in NumPy: a step unit and its error-driven update rule."""
from __future__ import annotations

import numpy as np

#: The four inputs of a two-input logic gate and the targets of three gates.
GATE_INPUTS = np.array([[0, 0], [0, 1], [1, 0], [1, 1]], dtype=np.float64)
GATES = {
    "AND": np.array([0, 0, 0, 1]),
    "OR": np.array([0, 1, 1, 1]),
    "XOR": np.array([0, 1, 1, 0]),
}


def predict(w: np.ndarray, b: float, X: np.ndarray) -> np.ndarray:
    """Step unit: 1 where w.x + b > 0, else 0. w: (D,), X: (D,) or (N, D) -> () or (N,) int."""
    return (np.asarray(X) @ w + b > 0).astype(np.int64)


def perceptron_update(w: np.ndarray, b: float, x: np.ndarray, y: int, lr: float = 0.1) -> tuple[np.ndarray, float]:
    """One perceptron learning step on one example; returns new ``(w, b)``.

    w: (D,) weights, b: bias, x: (D,) input, y: target in {0, 1}.
    error = y - prediction; w += lr * error * x; b += lr * error. Inputs are not modified.
    """
    error = y - predict(w, b, x)
    return w + lr * error * x, float(b + lr * error)


def train_perceptron(X: np.ndarray, y: np.ndarray, lr: float = 0.1, epochs: int = 50, seed: int = 0):
    """Train with one update per example per epoch, in a fixed order.

    Returns ``(w, b, accuracy_per_epoch)``; accuracy is measured after each epoch.
    """
    rng = np.random.default_rng(seed)
    w, b = rng.normal(size=X.shape[1]), float(rng.normal())
    accuracy = []
    for _ in range(epochs):
        for xi, yi in zip(X, y):
            w, b = perceptron_update(w, b, xi, int(yi), lr)
        accuracy.append(float((predict(w, b, X) == y).mean()))
    return w, b, accuracy
