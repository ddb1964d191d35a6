"""Chapter 11's small end-to-end projects: one pipeline function per domain, and the models.

=================  ==========================================  ===========================
project            pipeline function (graded in chapter 11)    data
=================  ==========================================  ===========================
vision             :func:`confusion_matrix`                    MNIST-5k
sentiment (NLP)    :func:`bag_of_words`                        movie-review snippets
forecasting        :func:`train_test_windows`                  Mauna Loa CO2 (statsmodels)
healthcare         :func:`threshold_for_recall`                breast cancer (scikit-learn)
anomaly detection  :func:`anomaly_scores`, :func:`threshold_at_fpr`  MNIST-5k, one digit unseen
recommendation     :func:`mf_step`                             generated ratings (:func:`make_ratings`)
=================  ==========================================  ===========================

Every function returns new tensors and leaves its inputs unchanged.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

# ---------------------------------------------------------------- data not covered by companion.data


def load_co2_monthly() -> dict[str, np.ndarray]:
    """Monthly mean CO2 at Mauna Loa, March 1958 - December 2001 (``statsmodels.datasets.co2``).

    The source is weekly with a few missing weeks; each calendar month is averaged and
    the months with no measurement (a handful in 1958-1964) are filled by linear
    interpolation. Returns ``{"x": (526,) float32 ppm, "year": (526,) float64}`` where
    ``year`` is the decimal year of each month's start. Cached with a checksum.
    """
    from .data import cached_arrays

    def build():
        from statsmodels.datasets import co2

        monthly = co2.load_pandas().data["co2"].resample("MS").mean().interpolate()
        year = monthly.index.year + (monthly.index.month - 1) / 12
        return {"x": monthly.to_numpy(np.float32), "year": np.asarray(year, dtype=np.float64)}

    return cached_arrays("co2-monthly", build)


def load_breast_cancer():
    """Wisconsin diagnostic breast-cancer data (scikit-learn): 569 tumours, 30 measurements each.

    Returns ``(X (569, 30) float32, y (569,) int64, feature_names)`` with y = 1 for
    *malignant* (scikit-learn codes malignant as 0; here the class to detect is 1).
    """
    from sklearn.datasets import load_breast_cancer as sk_load

    bunch = sk_load()
    return bunch.data.astype(np.float32), (bunch.target == 0).astype(np.int64), list(bunch.feature_names)


# ---------------------------------------------------------------- vision

def confusion_matrix(y_true: Tensor, y_pred: Tensor, n_classes: int) -> Tensor:
    """Counts of (true class, predicted class) pairs: (n_classes, n_classes) int64.

    y_true, y_pred: (N,) integer labels in ``[0, n_classes)``. Row i, column j counts the
    examples of class i predicted as j (scikit-learn's convention), so the diagonal holds
    the correct ones. On the labels' device.
    """
    flat = y_true.long() * n_classes + y_pred.long()
    return torch.bincount(flat, minlength=n_classes * n_classes).reshape(n_classes, n_classes)


def digit_cnn(dropout: float = 0.3) -> nn.Sequential:
    """A small CNN for flattened 28x28 digits: (B, 784) -> (B, 10) logits, 20,490 parameters.

    Two blocks of 3x3 convolution (16 then 32 channels), ReLU and 2x2 max pooling, then
    dropout and one linear layer.
    """
    return nn.Sequential(
        nn.Unflatten(1, (1, 28, 28)),
        nn.Conv2d(1, 16, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Conv2d(16, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
        nn.Flatten(), nn.Dropout(dropout), nn.Linear(32 * 7 * 7, 10),
    )


# ---------------------------------------------------------------- sentiment

def bag_of_words(ids: Tensor, vocab_size: int) -> Tensor:
    """Word counts per text: ids (N, T) int64, right-padded with 0 -> (N, vocab_size) float32.

    Entry (n, v) counts how often token v occurs in text n. Padding (index 0) is not a
    word, so column 0 is all zeros; the unknown token (index 1) is counted like any other.
    """
    counts = torch.zeros(ids.shape[0], vocab_size, dtype=torch.float32, device=ids.device)
    counts.scatter_add_(1, ids, torch.ones(ids.shape, dtype=torch.float32, device=ids.device))
    counts[:, 0] = 0
    return counts


def bow_mlp(vocab_size: int, hidden: int = 64, dropout: float = 0.5) -> nn.Sequential:
    """Bag-of-words classifier: (B, vocab_size) counts -> (B, 2) logits, one hidden ReLU layer."""
    return nn.Sequential(nn.Dropout(0.2), nn.Linear(vocab_size, hidden), nn.ReLU(), nn.Dropout(dropout),
                         nn.Linear(hidden, 2))


# ---------------------------------------------------------------- forecasting

def train_test_windows(series: Tensor, window: int, test_fraction: float, horizon: int = 1):
    """Scaled sliding windows of a series, split in time, scaled with training statistics only.

    series: (T,) float tensor. The first ``n_train = int(T * (1 - test_fraction))`` values
    are the training period. ``mean`` and ``std`` (population std, divide by n) come from
    those values alone, and the whole series is scaled with them: z = (series - mean) / std.
    Each target index t from ``window + horizon - 1`` to T - 1 gives one example: the input
    is z[t - horizon - window + 1 : t - horizon + 1] (the ``window`` values ending
    ``horizon`` steps before t) and the target z[t]. An example is a training example
    when t < n_train, a test example otherwise (its inputs may reach back into the
    training period: that is the past, not a leak).

    Returns ``(X_train (N1, window), y_train (N1,), X_test (N2, window), y_test (N2,),
    mean, std)``, mean and std as 0-d tensors, everything in the series' dtype and device.
    """
    T = series.shape[0]
    n_train = int(T * (1 - test_fraction))
    train_part = series[:n_train]
    mean = train_part.mean()
    std = train_part.std(unbiased=False)
    z = (series - mean) / std
    targets = torch.arange(window + horizon - 1, T, device=series.device)
    starts = targets - horizon - window + 1
    X = z[starts[:, None] + torch.arange(window, device=series.device)]
    y = z[targets]
    train = targets < n_train
    return X[train], y[train], X[~train], y[~train], mean, std


def windows_at(series: np.ndarray, window: int, horizon: int = 1) -> tuple[np.ndarray, np.ndarray]:
    """Unscaled ``(X (N, window), target_index (N,))`` with the layout of :func:`train_test_windows`."""
    targets = np.arange(window + horizon - 1, len(series))
    starts = targets - horizon - window + 1
    return series[starts[:, None] + np.arange(window)], targets


def forecast_mlp(window: int, hidden: int = 32) -> nn.Sequential:
    """(B, window) -> (B,) one-step forecast with one hidden ReLU layer."""
    return nn.Sequential(nn.Linear(window, hidden), nn.ReLU(), nn.Linear(hidden, 1), nn.Flatten(0))


def linear_autoregression(X: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Least-squares weights ``w`` (window + 1,) with ``y ≈ [X, 1] @ w``: the no-hidden-layer baseline."""
    A = np.c_[X, np.ones(len(X))]
    return np.linalg.lstsq(A, y, rcond=None)[0]


# ---------------------------------------------------------------- healthcare

def threshold_for_recall(scores: np.ndarray, labels: np.ndarray, min_recall: float) -> float:
    """The highest threshold whose recall reaches ``min_recall``.

    scores: (N,) floats, higher meaning "more likely positive"; labels: (N,) 0/1.
    Predicting positive when ``score >= threshold``, recall is the fraction of positives
    caught. With P positives, at least ``k = ceil(min_recall * P)`` of them must score at
    or above the threshold, so the answer is the k-th largest score among the positives.
    ``0 < min_recall <= 1``. Returns a Python float.
    """
    scores, labels = np.asarray(scores, dtype=np.float64), np.asarray(labels)
    positive = np.sort(scores[labels == 1])[::-1]
    if len(positive) == 0:
        raise ValueError("no positive examples: recall is undefined")
    k = math.ceil(min_recall * len(positive) - 1e-9)
    return float(positive[max(k, 1) - 1])


def binary_report(scores: np.ndarray, labels: np.ndarray, threshold: float) -> dict[str, float]:
    """Accuracy, recall (sensitivity), precision and specificity of ``score >= threshold``."""
    pred = np.asarray(scores) >= threshold
    labels = np.asarray(labels).astype(bool)
    tp, fp = int((pred & labels).sum()), int((pred & ~labels).sum())
    fn, tn = int((~pred & labels).sum()), int((~pred & ~labels).sum())
    return {"accuracy": (tp + tn) / len(labels), "recall": tp / max(tp + fn, 1),
            "precision": tp / max(tp + fp, 1), "specificity": tn / max(tn + fp, 1),
            "missed": fn, "false alarms": fp}


# ---------------------------------------------------------------- anomaly detection

def autoencoder(n_in: int = 784, code: int = 32) -> nn.Sequential:
    """A dense autoencoder n_in-128-code-128-n_in with a sigmoid output (inputs in [0, 1])."""
    return nn.Sequential(nn.Linear(n_in, 128), nn.ReLU(), nn.Linear(128, code), nn.ReLU(),
                         nn.Linear(code, 128), nn.ReLU(), nn.Linear(128, n_in), nn.Sigmoid())


@torch.no_grad()
def anomaly_scores(model: nn.Module, X: Tensor) -> Tensor:
    """Reconstruction error per row: mean over features of (model(X) - X)^2, (N, D) -> (N,).

    The model runs in evaluation mode (no dropout) without gradients; its mode is put
    back afterwards.
    """
    was_training = model.training
    model.eval()
    err = ((model(X) - X) ** 2).mean(dim=1)
    model.train(was_training)
    return err


def threshold_at_fpr(scores_normal, fpr: float) -> float:
    """A threshold that flags at most a fraction ``fpr`` of normal examples (score > threshold).

    scores_normal: (n,) scores of examples known to be normal (a validation set).
    With ``m = floor(fpr * n)`` normal examples allowed above it, the threshold is the
    (m + 1)-th largest normal score: ``sorted(scores)[n - 1 - m]``. Returns a Python float.
    """
    s = np.sort(np.asarray(torch.as_tensor(scores_normal).detach().cpu(), dtype=np.float64))
    m = math.floor(fpr * len(s) + 1e-9)
    return float(s[max(len(s) - 1 - m, 0)])


def pca_reconstruction_scores(X_train: Tensor, X: Tensor, k: int = 32) -> Tensor:
    """Mean squared error of reconstructing X from the top-k principal components of X_train: (N,)."""
    mean = X_train.mean(0)
    _, _, Vt = torch.linalg.svd(X_train - mean, full_matrices=False)
    P = Vt[:k]
    centred = X - mean
    return ((centred - centred @ P.T @ P) ** 2).mean(dim=1)


# ---------------------------------------------------------------- recommendation

@dataclass(frozen=True)
class Ratings:
    """Observed ratings as parallel arrays, plus the generating matrix (for figures only).

    users, items: (M,) int64; ratings: (M,) float32 in {1, ..., 5}; full: (n_users, n_items)
    the noise-free scores every pair would get.
    """

    users: np.ndarray
    items: np.ndarray
    ratings: np.ndarray
    full: np.ndarray
    n_users: int
    n_items: int


def make_ratings(n_users: int = 400, n_items: int = 250, rank: int = 3, density: float = 0.08,
                 noise: float = 0.5, seed: int = 0) -> Ratings:
    """GENERATED star ratings with a low-rank structure (no real ratings data ship offline).

    Each user and item gets ``rank`` hidden tastes and a bias; a pair's score is
    3.5 + user bias + item bias + taste match, plus Gaussian noise of std ``noise``, then
    rounded and clipped to 1..5 stars. A fraction ``density`` of pairs is observed,
    popular items more often (a Zipf-like popularity), as in real catalogues.
    """
    rng = np.random.default_rng(seed)
    P = rng.normal(0, 1, (n_users, rank))
    Q = rng.normal(0, 1, (n_items, rank))
    b_u = rng.normal(0, 0.4, n_users)
    b_i = rng.normal(0, 0.4, n_items)
    full = 3.5 + b_u[:, None] + b_i[None, :] + (P @ Q.T) / math.sqrt(rank) * 0.8
    popularity = 1.0 / np.arange(1, n_items + 1) ** 0.6
    popularity = rng.permutation(popularity / popularity.sum())
    n_obs = int(density * n_users * n_items)
    flat = rng.choice(n_users * n_items, size=n_obs, replace=False,
                      p=np.repeat(popularity[None, :], n_users, 0).ravel() / n_users)
    users, items = flat // n_items, flat % n_items
    stars = np.clip(np.rint(full[users, items] + rng.normal(0, noise, n_obs)), 1, 5)
    return Ratings(users.astype(np.int64), items.astype(np.int64), stars.astype(np.float32),
                   full.astype(np.float32), n_users, n_items)


def mf_step(U: Tensor, V: Tensor, users: Tensor, items: Tensor, ratings: Tensor, lr: float, reg: float):
    """One gradient step of matrix factorization on a batch of ratings; returns ``(new_U, new_V)``.

    U: (n_users, k), V: (n_items, k); users, items: (B,) int64 indices; ratings: (B,).
    The prediction for a pair is the dot product U[u] . V[i]. The batch loss is

        0.5 * sum_b [ (U[u_b] . V[i_b] - r_b)^2 + reg * (|U[u_b]|^2 + |V[i_b]|^2) ]

    and both matrices move by ``-lr`` times its gradient, both gradients taken at the
    old U and V. A user (or item) that appears several times in the batch gets the sum
    of its contributions. U and V are not modified.
    """
    Uu, Vi = U[users], V[items]
    err = (Uu * Vi).sum(dim=1) - ratings
    grad_U = torch.zeros_like(U).index_add_(0, users, err[:, None] * Vi + reg * Uu)
    grad_V = torch.zeros_like(V).index_add_(0, items, err[:, None] * Uu + reg * Vi)
    return U - lr * grad_U, V - lr * grad_V


def rmse(pred, target) -> float:
    """Root mean squared error of two same-shape arrays or tensors, as a float."""
    pred, target = np.asarray(pred, dtype=np.float64), np.asarray(target, dtype=np.float64)
    return float(np.sqrt(np.mean((pred - target) ** 2)))


def bias_baseline(users: np.ndarray, items: np.ndarray, ratings: np.ndarray, n_users: int, n_items: int,
                  reg: float = 5.0) -> tuple[float, np.ndarray, np.ndarray]:
    """Global mean plus damped user and item offsets, fitted on training ratings.

    Returns ``(mu, b_user (n_users,), b_item (n_items,))``; the prediction for a pair is
    ``mu + b_user[u] + b_item[i]``. Item offsets first, then user offsets on what is left,
    each shrunk towards 0 by ``reg`` pseudo-ratings (so a user with one rating moves little).
    """
    mu = float(ratings.mean())
    r = ratings - mu
    b_item = np.bincount(items, r, n_items) / (np.bincount(items, minlength=n_items) + reg)
    r = r - b_item[items]
    b_user = np.bincount(users, r, n_users) / (np.bincount(users, minlength=n_users) + reg)
    return mu, b_user, b_item


def fit_mf(train: tuple, val: tuple, n_users: int, n_items: int, rank: int, epochs: int = 60, lr: float = 0.05,
           reg: float = 0.05, batch_size: int = 64, seed: int = 0, progress: bool = True):
    """Matrix factorization trained with :func:`mf_step` on shuffled mini-batches.

    train, val: ``(users (M,), items (M,), targets (M,))`` arrays; the targets are what
    U[u] . V[i] should predict (here: ratings minus the bias baseline). Returns
    ``(U (n_users, rank), V (n_items, rank), val_rmse)``, one validation RMSE per epoch.
    """
    from tqdm.auto import tqdm

    g = torch.Generator().manual_seed(seed)
    U = torch.randn(n_users, rank, generator=g) * 0.1
    V = torch.randn(n_items, rank, generator=g) * 0.1
    users, items, targets = (torch.as_tensor(a) for a in train)
    targets = targets.float()
    v_users, v_items, v_targets = (torch.as_tensor(a) for a in val)
    val_rmse = []
    bar = tqdm(range(epochs), desc=f"rank {rank}", disable=not progress, leave=True)
    for _ in bar:
        order = torch.randperm(len(targets), generator=g)
        for start in range(0, len(order), batch_size):
            b = order[start:start + batch_size]
            U, V = mf_step(U, V, users[b], items[b], targets[b], lr, reg)
        val_rmse.append(rmse((U[v_users] * V[v_items]).sum(1), v_targets))
        bar.set_postfix(val_rmse=f"{val_rmse[-1]:.4f}")
    bar.close()
    return U, V, val_rmse
