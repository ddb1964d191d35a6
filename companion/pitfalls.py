"""Chapter 12's best practices: the fixes for the classic mistakes, and the tools to demonstrate them.

Graded in chapter 12: :func:`split_and_standardize` (a split that leaks nothing into the
scaling), :func:`set_seed`, :func:`diagnose` (reading a pair of learning curves) and
:func:`find_cross_split_duplicates`. The rest builds the chapter's demonstrations.
"""
from __future__ import annotations

import math
import random
from typing import Sequence

import numpy as np
import torch
from torch import Tensor

# ---------------------------------------------------------------- leakage-free split


def split_and_standardize(X: np.ndarray, y: np.ndarray, test_fraction: float, seed: int):
    """Random train/test split, then standardization with the TRAINING part's statistics only.

    X: (N, D) float array, y: (N,). The rows are shuffled with
    ``np.random.default_rng(seed).permutation(N)``; the first ``n_test = int(N * test_fraction)``
    shuffled rows are the test set, the rest the training set (both in shuffled order).
    ``mean`` and ``std`` (population std, ddof=0) are computed per column on the training
    rows; a column whose std is 0 gets std 1 (it stays constant, instead of becoming NaN).
    Both parts are scaled as (X - mean) / std.

    Returns ``(X_train, X_test, y_train, y_test, mean (D,), std (D,))``.
    """
    X, y = np.asarray(X), np.asarray(y)
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = int(len(X) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean = X[train].mean(axis=0)
    std = X[train].std(axis=0)
    std = np.where(std == 0, 1, std).astype(std.dtype)
    return (X[train] - mean) / std, (X[test] - mean) / std, y[train], y[test], mean, std


def select_top_features(X: np.ndarray, y: np.ndarray, k: int) -> np.ndarray:
    """Indices of the k columns of X most correlated (in absolute value) with the 0/1 label y."""
    Xc = X - X.mean(0)
    yc = y - y.mean()
    corr = np.abs(Xc.T @ yc) / (np.linalg.norm(Xc, axis=0) * np.linalg.norm(yc) + 1e-12)
    return np.argsort(-corr, kind="stable")[:k]


# ---------------------------------------------------------------- duplicates

def find_cross_split_duplicates(X_train: np.ndarray, X_test: np.ndarray) -> np.ndarray:
    """Indices of the test rows that also occur, value for value, among the training rows.

    X_train: (N, D), X_test: (M, D), same dtype. Rows are compared exactly (by their
    bytes, through a set of hashes, so the cost is O(N + M) rather than O(N M)). A test
    row repeated inside the test set but absent from training is not a cross-split
    duplicate. Returns a sorted int64 array (possibly empty).
    """
    seen = {row.tobytes() for row in np.ascontiguousarray(X_train)}
    rows = np.ascontiguousarray(X_test)
    return np.array([i for i, row in enumerate(rows) if row.tobytes() in seen], dtype=np.int64)


def with_duplicates(X: np.ndarray, y: np.ndarray, fraction: float, seed: int = 0):
    """A copy of (X, y) in which a random ``fraction`` of the rows appears twice, rows shuffled.

    Models a merged export or a scrape that picked the same items up twice. Returns
    ``(X2, y2, origin)`` with ``origin[j]`` the index in X that row j came from.
    """
    rng = np.random.default_rng(seed)
    extra = rng.choice(len(X), int(fraction * len(X)), replace=False)
    origin = rng.permutation(np.concatenate([np.arange(len(X)), extra]))
    return X[origin], y[origin], origin


def nearest_distances(X_query: Tensor, X_ref: Tensor, batch: int = 1024) -> Tensor:
    """Euclidean distance from each query row to its nearest reference row: (M,)."""
    out = [torch.cdist(X_query[i:i + batch], X_ref).min(dim=1).values for i in range(0, len(X_query), batch)]
    return torch.cat(out) if out else X_query.new_zeros(0)


# ---------------------------------------------------------------- order of the data

def in_stored_order(X: Tensor, y: Tensor, batch_size: int = 64) -> list[tuple[Tensor, Tensor]]:
    """Mini-batches in the order the rows are stored (what you get without shuffling).

    ``companion.training.fit`` shuffles a tensor pair every epoch, but passes a list of
    batches through unchanged, so this reproduces a loader built with ``shuffle=False``.
    """
    return [(X[i:i + batch_size], y[i:i + batch_size]) for i in range(0, len(y), batch_size)]


# ---------------------------------------------------------------- reproducibility

def set_seed(seed: int) -> int:
    """Seed Python's ``random``, NumPy's global generator and PyTorch (CPU and every GPU).

    The same as :func:`companion.seed_everything`. Returns the seed.
    """
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)
    return seed


def draws(device=None) -> tuple[float, np.ndarray, Tensor]:
    """One draw from each global generator: (random.random(), np.random.rand(3), torch.rand(3))."""
    return random.random(), np.random.rand(3), torch.rand(3, device=device)


# ---------------------------------------------------------------- reading learning curves

def diagnose(train_loss: Sequence[float], val_loss: Sequence[float], target_loss: float, rise: float = 0.1) -> str:
    """Name what a pair of learning curves shows: "overfitting", "underfitting" or "good fit".

    train_loss, val_loss: one value per epoch (lower is better). ``target_loss`` is the
    loss you would be satisfied with (a strong baseline's, or what the task needs). The
    rules, in order:

    1. the last validation loss is more than ``rise`` (10 %) above the lowest one, i.e.
       ``val[-1] > (1 + rise) * min(val)``: the validation loss has turned back up:
       **overfitting**;
    2. ``val[-1] <= target_loss``: **good fit**;
    3. otherwise the larger of the two gaps names the problem. The *bias* gap is
       ``train[-1] - target_loss`` (how far the model is from fitting even its training
       data), the *variance* gap ``val[-1] - train[-1]`` (how much worse it does on new
       data): **underfitting** when bias >= variance, else **overfitting**.
    """
    train_last, val_last = float(train_loss[-1]), float(val_loss[-1])
    if val_last > (1 + rise) * float(min(val_loss)):
        return "overfitting"
    if val_last <= target_loss:
        return "good fit"
    if train_last - target_loss >= val_last - train_last:
        return "underfitting"
    return "overfitting"


def reference_curves() -> dict[str, tuple[list[float], list[float], float, str]]:
    """Hand-made learning curves with the diagnosis :func:`diagnose` gives each.

    name -> (train_loss, val_loss, target_loss, expected diagnosis).
    """
    epochs = np.arange(1, 41)
    fast = 2.3 * np.exp(-epochs / 4)
    return {
        "good fit": (list(0.05 + fast), list(0.09 + fast * 1.05), 0.15, "good fit"),
        "validation turns up": (list(0.01 + fast), list(0.3 + fast + 0.01 * np.maximum(epochs - 12, 0)), 0.15,
                                "overfitting"),
        "both stay high": (list(1.2 + fast * 0.3), list(1.25 + fast * 0.3), 0.15, "underfitting"),
        "flat but a wide gap": (list(0.01 + fast), list(0.6 + fast), 0.15, "overfitting"),
        "still improving, not there yet": (list(0.6 * np.exp(-epochs / 60) + 0.2), list(0.62 * np.exp(-epochs / 60) + 0.22),
                                           0.15, "underfitting"),
    }
