"""Chapter 1, introduction: measuring claims about deep learning instead of asserting them.

- :func:`accuracy`: the fraction of predictions equal to the labels.
- :func:`matmul_flops`, :func:`dense_flops` and :func:`measure_gflops`: how much arithmetic a
  matrix product (and an MLP) is, and how fast this machine does it.
- :func:`learning_curve`: test accuracy as a function of training-set size.
- :func:`logistic_regression` and :class:`MLPClassifier`: the classical baseline and a small
  PyTorch network behind the same ``fit(X, y)`` / ``predict(X)`` interface, so one loop
  can train either.
- :func:`most_changed_units`: which units training changed most.
- :class:`NearestClassMean`: the simplest classifier, to score how well a representation separates classes.
- :func:`show_weights`: first-layer weights drawn as images.

The stratified split of this chapter is :func:`companion.data.stratified_split`.
"""
from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import numpy as np

#: The guide's "NVIDIA A100 GPU: 624 TFLOPS", and what that number is. NVIDIA's A100
#: datasheet (SXM, 2020): 624 TFLOPS is the FP16/BF16 tensor-core peak *with* 2:4
#: structured sparsity; the dense figures are below. All are peaks, not measurements.
A100_PEAK_TFLOPS = {
    "FP16/BF16 tensor core, 2:4 sparse (the guide's figure)": 624.0,
    "FP16/BF16 tensor core, dense": 312.0,
    "TF32 tensor core, dense": 156.0,
    "FP32, dense (no tensor cores)": 19.5,
    "FP64, dense": 9.7,
}


def accuracy(y_true, y_pred) -> float:
    """Fraction of positions where ``y_pred`` equals ``y_true``.

    y_true, y_pred: array-likes (lists, NumPy arrays, CPU tensors) of the same length N >= 1.
    Returns a Python float in [0, 1]. Raises ``ValueError`` when the lengths differ
    (rather than letting NumPy broadcast a length-1 array against the other).
    """
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    if y_true.shape != y_pred.shape:
        raise ValueError(f"y_true has shape {y_true.shape} but y_pred has shape {y_pred.shape}")
    if y_true.size == 0:
        raise ValueError("accuracy of an empty set of predictions is undefined")
    return float(np.mean(y_true == y_pred))


def matmul_flops(n: int, m: int, p: int) -> int:
    """Floating-point operations of the product of an (n, m) and an (m, p) matrix.

    Convention: ``2 * n * m * p``. Each of the n*p outputs is a dot product of length m:
    m multiplications and m additions (counting the add into the accumulator that starts
    at zero; a fused multiply-add counts as 2). Hardware peak figures (TFLOPS) and
    benchmarks use the same convention.
    """
    return 2 * int(n) * int(m) * int(p)


def dense_flops(widths: Sequence[int], batch: int = 1) -> int:
    """FLOPs of the matrix products in one forward pass of an MLP with layer widths ``widths``.

    widths: (in, hidden..., out), e.g. [784, 256, 256, 10] for three Linear layers. Each
    layer is a (batch, in) @ (in, out) product; biases and activations (a few FLOPs per
    unit) are left out. A training step (forward and backward) costs about three times this.
    """
    return sum(matmul_flops(batch, a, b) for a, b in zip(widths[:-1], widths[1:]))


def synchronize(device) -> None:
    """Wait until queued work on ``device`` has finished (GPUs run asynchronously)."""
    import torch

    device = torch.device(device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


def measure_gflops(n: int = 1024, device="cpu", repeats: int = 5, dtype=None, min_time: float = 0.01) -> float:
    """Measured speed of an (n, n) @ (n, n) matrix product on ``device``, in GFLOP/s.

    One warm-up product, then ``repeats`` timings; each timing runs enough products back
    to back to last at least ``min_time`` seconds and the device is synchronised before
    the clock is read (otherwise a GPU timing measures only the launch). Returns the best
    of the repeats (closest to what the hardware can do), with :func:`matmul_flops`'s
    2*n^3 convention. ``dtype`` defaults to float32.
    """
    import torch

    if repeats < 1:
        raise ValueError("repeats must be at least 1")
    device = torch.device(device)
    dtype = dtype or torch.float32
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    with torch.no_grad():
        synchronize(device)
        start = time.perf_counter()
        a @ b  # warm-up: first call picks kernels, allocates workspace
        synchronize(device)
        once = time.perf_counter() - start
        number = max(1, int(min_time / max(once, 1e-7)))
        best = float("inf")
        for _ in range(repeats):
            synchronize(device)
            start = time.perf_counter()
            for _ in range(number):
                a @ b
            synchronize(device)
            best = min(best, (time.perf_counter() - start) / number)
    return matmul_flops(n, n, n) / best / 1e9


def python_matmul_gflops(n: int = 48) -> float:
    """GFLOP/s of a textbook triple loop in pure Python on (n, n) lists: computing before libraries."""
    rng = np.random.default_rng(0)
    a, b = rng.normal(size=(n, n)).tolist(), rng.normal(size=(n, n)).tolist()
    start = time.perf_counter()
    c = [[0.0] * n for _ in range(n)]
    for i in range(n):
        for j in range(n):
            total = 0.0
            for k in range(n):
                total += a[i][k] * b[k][j]
            c[i][j] = total
    return matmul_flops(n, n, n) / (time.perf_counter() - start) / 1e9


def learning_curve(make_model: Callable[[], Any], X_train, y_train, X_test, y_test,
                   sizes: Sequence[int]) -> list[dict]:
    """Train a fresh model on the first ``n`` training rows for each ``n`` in ``sizes``.

    make_model: called once per size, returns an object with ``fit(X, y)`` and
    ``predict(X) -> labels``. X_train (N, D) should be in random order, so that its first
    n rows are a random sample and each smaller training set sits inside the larger ones.
    Returns one dict per size, in order: ``{"size": n, "train_acc": accuracy on the n
    rows trained on, "test_acc": accuracy on the whole test set}``.
    """
    rows = []
    for n in sizes:
        if not 1 <= n <= len(X_train):
            raise ValueError(f"size {n} is outside 1..{len(X_train)}")
        model = make_model()
        model.fit(X_train[:n], y_train[:n])
        rows.append({"size": n,
                     "train_acc": accuracy(y_train[:n], model.predict(X_train[:n])),
                     "test_acc": accuracy(y_test, model.predict(X_test))})
    return rows


# ---------------------------------------------------------------- the two models

def logistic_regression(C: float = 1.0, max_iter: int = 2000):
    """scikit-learn's multinomial logistic regression on raw features (L2 penalty, strength 1/C).

    A linear model: one weight per input feature and class, so what it can learn about an
    image is one template per class.
    """
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=max_iter)


def mlp(n_in: int, hidden: Sequence[int] = (256, 256), n_classes: int = 10):
    """A plain multi-layer perceptron: Linear-ReLU blocks of widths ``hidden``, then a Linear to logits.

    Input (B, n_in), output (B, n_classes).
    """
    from torch import nn

    layers, width = [], n_in
    for h in hidden:
        layers += [nn.Linear(width, h), nn.ReLU()]
        width = h
    layers.append(nn.Linear(width, n_classes))
    return nn.Sequential(*layers)


class MLPClassifier:
    """A PyTorch MLP behind scikit-learn's ``fit`` / ``predict`` interface.

    Trains with :func:`companion.training.fit` (Adam, mini-batches) for ``epochs``; with
    ``updates`` instead, the number of epochs is chosen so that training makes about that
    many mini-batch steps whatever the training-set size (a small set gets more epochs).
    ``initial_weight`` keeps the first layer's weights before training, so that
    :meth:`first_layer_change` shows what training added.
    """

    def __init__(self, hidden: Sequence[int] = (256, 256), epochs: int | None = None, updates: int | None = None,
                 lr: float = 1e-3, batch_size: int = 64, seed: int = 0, device=None):
        if (epochs is None) == (updates is None):
            raise ValueError("give exactly one of epochs and updates")
        self.hidden, self.epochs, self.updates = tuple(hidden), epochs, updates
        self.lr, self.batch_size, self.seed, self.device = lr, batch_size, seed, device

    def fit(self, X, y) -> "MLPClassifier":
        import torch

        from . import training
        from .runtime import get_device, seed_everything

        X = torch.as_tensor(np.asarray(X, dtype=np.float32))
        y = torch.as_tensor(np.asarray(y, dtype=np.int64))
        self.classes_ = np.unique(y.numpy())
        n_classes = int(max(self.classes_.max() + 1, 2))
        seed_everything(self.seed)
        self.model_ = mlp(X.shape[1], self.hidden, n_classes)
        self.initial_weight = self.model_[0].weight.detach().clone().cpu()
        epochs = self.epochs
        if epochs is None:
            steps_per_epoch = -(-len(X) // self.batch_size)
            epochs = max(1, round(self.updates / steps_per_epoch))
        self.history_ = training.fit(self.model_, (X, y), epochs=epochs, lr=self.lr, batch_size=self.batch_size,
                                     device=self.device or get_device(), progress=False, seed=self.seed)
        return self

    def predict(self, X) -> np.ndarray:
        import torch

        from . import training

        logits = training.predict(self.model_, torch.as_tensor(np.asarray(X, dtype=np.float32)))
        return logits.argmax(dim=1).numpy()

    def hidden_features(self, X, layer: int = -1) -> np.ndarray:
        """Activations after hidden block ``layer`` (default: the last hidden layer), shape (N, width)."""
        import torch

        n_blocks = len(self.hidden)
        stop = 2 * ((layer % n_blocks) + 1)
        body = self.model_[:stop]
        with torch.no_grad():
            body.eval()
            out = body(torch.as_tensor(np.asarray(X, dtype=np.float32)).to(next(body.parameters()).device))
        return out.cpu().numpy()

    def first_layer_weights(self) -> tuple[np.ndarray, np.ndarray]:
        """First-layer weights ``(before, after)`` training, each (hidden[0], n_in)."""
        return self.initial_weight.numpy(), self.model_[0].weight.detach().cpu().numpy()

    def first_layer_change(self) -> np.ndarray:
        """First-layer weights minus their random initial values, (hidden[0], n_in)."""
        return (self.model_[0].weight.detach().cpu() - self.initial_weight).numpy()


def most_changed_units(before: np.ndarray, after: np.ndarray, k: int) -> np.ndarray:
    """Indices of the ``k`` rows (units) whose weights changed most, largest change first.

    before, after: (units, inputs) weights of one layer at two moments. The change of a
    unit is the Euclidean norm of its row of ``after - before``. Returns an int array (k,).
    """
    change = np.linalg.norm(np.asarray(after) - np.asarray(before), axis=1)
    return np.argsort(-change, kind="stable")[:k]


class NearestClassMean:
    """The simplest classifier: predict the class whose training mean is nearest (Euclidean).

    ``fit(X (N, D), y (N,))``, ``predict(X (M, D)) -> (M,)`` labels. Deterministic, no settings.
    """

    def fit(self, X, y) -> "NearestClassMean":
        X, y = np.asarray(X, dtype=np.float64), np.asarray(y)
        self.classes_ = np.unique(y)
        self.means_ = np.stack([X[y == c].mean(axis=0) for c in self.classes_])
        return self

    def predict(self, X) -> np.ndarray:
        X = np.asarray(X, dtype=np.float64)
        # |x - m|^2 = |x|^2 - 2 x.m + |m|^2; |x|^2 is the same for every class
        scores = X @ self.means_.T - 0.5 * (self.means_ ** 2).sum(axis=1)
        return self.classes_[scores.argmax(axis=1)]


# ---------------------------------------------------------------- figures

def show_weights(W: np.ndarray, image_shape: tuple[int, int], ncols: int = 10, title: str = "", axes=None,
                 size: float = 1.0, labels: Sequence[str] | None = None):
    """Draw each row of ``W`` (K, H*W) as an (H, W) image: red positive, blue negative.

    Each image gets its own symmetric colour scale, so the pattern shows whatever its size.
    """
    import matplotlib.pyplot as plt

    W = np.asarray(W)
    if axes is None:
        nrows = int(np.ceil(len(W) / ncols))
        _, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 1.1))
    axes = np.atleast_1d(axes).ravel()
    for i, ax in enumerate(axes):
        ax.axis("off")
        if i < len(W):
            v = np.abs(W[i]).max() or 1.0
            ax.imshow(W[i].reshape(image_shape), cmap="RdBu_r", vmin=-v, vmax=v)
            if labels is not None:
                ax.set_title(labels[i], fontsize=8)
    if title:
        axes[0].figure.suptitle(title)
    return axes
