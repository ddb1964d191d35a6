"""Checks for chapter 11, Real-world applications.

Each function takes the learner's pipeline function, compares it with the reference in
``companion.applications`` on fixed, seeded inputs, and prints a verdict or raises
:class:`CheckFailed` naming the classic mistake when it recognises one. ``hidden=True``
runs the extra cases that nbgrader's hidden tests use. Every random input comes from a
seeded ``torch.Generator`` or ``numpy.random.default_rng``, so grading is deterministic.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import applications as A
from ..runtime import get_device
from .core import Case, CheckFailed, check_function, compare, describe, learner_facing, passed, run_learner


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _device(device) -> torch.device:
    device = get_device() if device is None else device
    return torch.device(device) if isinstance(device, str) else device


# ---------------------------------------------------------------- vision

@learner_facing
def confusion_matrix(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``confusion_matrix(y_true, y_pred, n_classes)`` -> (C, C) int64 counts, rows = true class."""
    device = _device(device)
    g = _gen(1101 if not hidden else 1102)
    cases = [
        Case("six labels, three classes", (torch.tensor([0, 0, 1, 2, 2, 2]), torch.tensor([0, 1, 1, 2, 0, 2]), 3)),
        Case("200 labels, ten classes", (torch.randint(0, 10, (200,), generator=g),
                                         torch.randint(0, 10, (200,), generator=g), 10)),
    ]
    if hidden:
        y = torch.randint(0, 4, (50,), generator=g)
        cases += [
            Case("class 4 never occurs (n_classes = 5)", (y, torch.randint(0, 4, (50,), generator=g), 5)),
            Case("every prediction right", (y, y.clone(), 4)),
            Case("one class", (torch.zeros(7, dtype=torch.long), torch.zeros(7, dtype=torch.long), 1)),
            Case("no examples at all", (torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 3)),
            Case("1,000 labels, 12 classes", (torch.randint(0, 12, (1000,), generator=g),
                                              torch.randint(0, 12, (1000,), generator=g), 12)),
        ]

    def from_data(t, p, n):
        return A.confusion_matrix(t, p, int(max(t.max(), p.max())) + 1)

    check_function(fn, A.confusion_matrix, cases, name="confusion_matrix", device=device, rtol=0, atol=0,
                   hidden=hidden,
                   mistakes={"rows and columns are swapped: row i is the TRUE class i, column j the PREDICTED"
                             " class j (the matrix is transposed)": lambda t, p, n: A.confusion_matrix(t, p, n).T,
                             "the size should be n_classes x n_classes even when some class never appears;"
                             " don't take it from the largest label": from_data,
                             "the exercise asks for counts, not rates: don't divide by the row totals":
                             lambda t, p, n: A.confusion_matrix(t, p, n) / A.confusion_matrix(t, p, n).sum(
                                 1, keepdim=True).clamp(min=1)})


# ---------------------------------------------------------------- sentiment

@learner_facing
def bag_of_words(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``bag_of_words(ids, vocab_size)``: padded ids (N, T) -> (N, V) float32 counts, padding ignored."""
    device = _device(device)
    g = _gen(1111 if not hidden else 1112)

    def padded(n, t, v):
        ids = torch.randint(1, v, (n, t), generator=g)
        lengths = torch.randint(1, t + 1, (n,), generator=g)
        return torch.where(torch.arange(t)[None, :] < lengths[:, None], ids, torch.zeros_like(ids))

    cases = [
        Case("two short texts", (torch.tensor([[2, 3, 2, 0, 0], [1, 4, 5, 5, 0]]), 6)),
        Case("8 texts of up to 12 tokens, vocabulary of 20", (padded(8, 12, 20), 20)),
    ]
    if hidden:
        cases += [
            Case("no padding at all", (torch.randint(1, 9, (5, 6), generator=g), 9)),
            Case("a text that is all padding", (torch.tensor([[0, 0, 0], [3, 3, 3]]), 4)),
            Case("the same word many times", (torch.full((1, 30), 7), 10)),
            Case("vocabulary larger than any id", (padded(4, 5, 6), 50)),
            Case("300 texts, vocabulary of 1,000", (padded(300, 40, 1000), 1000)),
        ]

    def with_padding(ids, v):
        counts = torch.zeros(ids.shape[0], v, device=ids.device)
        return counts.scatter_add_(1, ids, torch.ones(ids.shape, device=ids.device))

    check_function(fn, A.bag_of_words, cases, name="bag_of_words", device=device, rtol=0, atol=0, hidden=hidden,
                   mistakes={"padding (index 0) is not a word: column 0 must stay 0": with_padding,
                             "count how many times each word occurs, not only whether it occurs":
                             lambda ids, v: (A.bag_of_words(ids, v) > 0).float()})


# ---------------------------------------------------------------- forecasting

def _windows_with(series, window, test_fraction, horizon, mean, std):
    """The reference's windows, but scaled with the given statistics."""
    T = series.shape[0]
    n_train = int(T * (1 - test_fraction))
    z = (series - mean) / std
    targets = torch.arange(window + horizon - 1, T, device=series.device)
    X = z[(targets - horizon - window + 1)[:, None] + torch.arange(window, device=series.device)]
    y, train = z[targets], targets < n_train
    return X[train], y[train], X[~train], y[~train], mean, std


def _whole_series_stats(series, window, test_fraction, horizon=1):
    return _windows_with(series, window, test_fraction, horizon, series.mean(), series.std(unbiased=False))


def _unbiased(series, window, test_fraction, horizon=1):
    out = list(A.train_test_windows(series, window, test_fraction, horizon))
    n_train = int(series.shape[0] * (1 - test_fraction))
    std_b = series[:n_train].std()
    ratio = out[5] / std_b
    return out[0] * ratio, out[1] * ratio, out[2] * ratio, out[3] * ratio, out[4], std_b


def _unscaled(series, window, test_fraction, horizon=1):
    Xtr, ytr, Xte, yte, mean, std = A.train_test_windows(series, window, test_fraction, horizon)
    return Xtr * std + mean, ytr * std + mean, Xte * std + mean, yte * std + mean, mean, std


def _by_count(series, window, test_fraction, horizon=1):
    Xtr, ytr, Xte, yte, mean, std = A.train_test_windows(series, window, test_fraction, horizon)
    X, y = torch.cat([Xtr, Xte]), torch.cat([ytr, yte])
    k = int(len(X) * (1 - test_fraction))
    return X[:k], y[:k], X[k:], y[k:], mean, std


def _no_horizon(series, window, test_fraction, horizon=1):
    Xtr, ytr, Xte, yte, mean, std = A.train_test_windows(series, window, test_fraction, 1)
    return Xtr, ytr, Xte, yte, mean, std


def _window_cases(hidden: bool) -> list[Case]:
    g = _gen(1121 if not hidden else 1122)
    walk = torch.randn(60, generator=g).cumsum(0) + 10
    cases = [
        Case("the numbers 0..19, window 3, a quarter for testing", (torch.arange(20.0), 3, 0.25)),
        Case("a random walk of 60 steps, window 5", (walk, 5, 0.2)),
        Case("horizon 3 (predict three steps ahead)", (walk, 4, 0.25), {"horizon": 3}),
    ]
    if hidden:
        t = torch.arange(120, dtype=torch.float64)
        cases += [
            Case("float64 seasonal series, window 12", (torch.sin(t / 1.9) + t / 40, 12, 0.25)),
            Case("window 1", (torch.randn(30, generator=g) * 5, 1, 0.5)),
            Case("half for testing, horizon 2", (walk, 6, 0.5), {"horizon": 2}),
            Case("a short quadratic series", (torch.arange(10.0) ** 2, 2, 0.4)),
        ]
    return cases


@learner_facing
def train_test_windows(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``train_test_windows(series, window, test_fraction, horizon=1)`` -> the 6-tuple of the reference."""
    device = _device(device)
    cases = _window_cases(hidden)
    check_function(fn, A.train_test_windows, cases, name="train_test_windows", device=device, rtol=1e-5,
                   atol=1e-5, hidden=hidden,
                   mistakes={"the mean and std come from the WHOLE series: that leaks the test period into the"
                             " scaling. Compute them from series[:n_train] only": _whole_series_stats,
                             "use the population std (divide by n: std(unbiased=False)), like a StandardScaler":
                             _unbiased,
                             "the windows are not scaled: use z = (series - mean) / std for inputs and targets":
                             _unscaled,
                             "split by each example's TARGET time (t < n_train), not by counting windows":
                             _by_count,
                             "the `horizon` argument is ignored: the window must end `horizon` steps before"
                             " its target": _no_horizon})


# ---------------------------------------------------------------- healthcare

def _quantile_all(scores, labels, min_recall):
    return float(np.quantile(np.asarray(scores, dtype=np.float64), 1 - min_recall))


def _floor_k(scores, labels, min_recall):
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(labels) == 1])[::-1]
    return float(pos[max(math.floor(min_recall * len(pos)), 1) - 1])


def _one_further(scores, labels, min_recall):
    pos = np.sort(np.asarray(scores, dtype=np.float64)[np.asarray(labels) == 1])[::-1]
    k = math.ceil(min_recall * len(pos) - 1e-9)
    return float(pos[min(k, len(pos) - 1)])


def _all_scores(scores, labels, min_recall):
    s = np.sort(np.asarray(scores, dtype=np.float64))[::-1]
    pos = int((np.asarray(labels) == 1).sum())
    return float(s[max(math.ceil(min_recall * pos - 1e-9), 1) - 1])


def _recall_cases(hidden: bool) -> tuple[list[Case], np.ndarray, np.ndarray]:
    rng = np.random.default_rng(1131 if not hidden else 1132)
    labels = (rng.random(80) < 0.4).astype(np.int64)
    scores = rng.normal(0, 1, 80) + 1.5 * labels
    cases = [
        Case("ten scores, recall 0.8", (np.array([0.9, 0.2, 0.75, 0.6, 0.1, 0.8, 0.55, 0.85, 0.95, 0.4]),
                                        np.array([1, 0, 1, 1, 0, 0, 1, 0, 1, 1]), 0.8)),
        Case("80 scores, recall 0.9", (scores, labels, 0.9)),
        Case("80 scores, recall 1.0 (catch every positive)", (scores, labels, 1.0)),
    ]
    if hidden:
        l2 = (rng.random(500) < 0.3).astype(np.int64)
        cases += [
            Case("tied scores", (np.array([0.5, 0.5, 0.5, 0.2, 0.9, 0.5]), np.array([1, 1, 0, 1, 1, 0]), 0.75)),
            Case("a tiny recall target", (scores, labels, 0.01)),
            Case("recall 0.5 with 4 positives (exactly 2 needed)", (np.array([4.0, 3.0, 2.0, 1.0, 5.0]),
                                                                    np.array([1, 1, 1, 1, 0]), 0.5)),
            Case("500 float32 scores, recall 0.95", ((rng.normal(0, 1, 500) + 2 * l2).astype(np.float32), l2, 0.95)),
            Case("one positive", (np.array([0.3, 0.1, 0.7]), np.array([0, 1, 0]), 0.9)),
        ]
    return cases, scores, labels


@learner_facing
def threshold_for_recall(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``threshold_for_recall(scores, labels, min_recall)`` -> the highest threshold reaching the recall."""
    cases, scores, labels = _recall_cases(hidden)
    check_function(fn, A.threshold_for_recall, cases, name="threshold_for_recall", rtol=1e-6, atol=1e-6,
                   hidden=hidden,
                   mistakes={"k = ceil(min_recall * P): with floor, the recall can end up just below the target":
                             _floor_k,
                             "off by one: the answer is the k-th largest positive score, sorted_desc[k - 1]":
                             _one_further,
                             "the threshold must be picked among the POSITIVE examples' scores (recall only"
                             " counts positives), not among all scores": _all_scores,
                             "this looks like a quantile of all the scores; recall only depends on the scores"
                             " of the positives": _quantile_all})


# ---------------------------------------------------------------- anomaly detection

def _tiny_autoencoder(d: int, code: int, seed: int, dropout: float = 0.0, dtype=torch.float32) -> nn.Module:
    torch.manual_seed(seed)
    layers = [nn.Linear(d, 8), nn.ReLU()]
    if dropout:
        layers.append(nn.Dropout(dropout))
    layers += [nn.Linear(8, code), nn.ReLU(), nn.Linear(code, d), nn.Sigmoid()]
    return nn.Sequential(*layers).to(dtype)


@learner_facing
def anomaly_scores(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``anomaly_scores(model, X)`` -> per-row mean squared reconstruction error (N,), in eval mode."""
    device = _device(device)
    g = _gen(1141 if not hidden else 1142)
    cases = [
        Case("an autoencoder of 6 features, 5 rows", (_tiny_autoencoder(6, 2, 0).to(device),
                                                      torch.rand(5, 6, generator=g).to(device))),
        Case("20 features, 40 rows", (_tiny_autoencoder(20, 3, 1).to(device),
                                      torch.rand(40, 20, generator=g).to(device))),
    ]
    if hidden:
        cases += [
            Case("a model with dropout (evaluation mode matters)",
                 (_tiny_autoencoder(12, 3, 2, dropout=0.5).to(device), torch.rand(30, 12, generator=g).to(device))),
            Case("float64", (_tiny_autoencoder(7, 2, 3, dtype=torch.float64).to(device),
                             torch.rand(9, 7, generator=g, dtype=torch.float64).to(device))),
            Case("one row", (_tiny_autoencoder(6, 2, 4).to(device), torch.rand(1, 6, generator=g).to(device))),
        ]
    for case in cases:
        model, X = case.args
        model.train()  # as a model is right after fit: the function must switch to evaluation itself
        expected = A.anomaly_scores(model, X)
        got = run_learner(fn, "anomaly_scores", case)
        problem = compare(got, expected, rtol=1e-5, atol=1e-7)
        if problem:
            message = f"`anomaly_scores` is not right on case '{case.label}':\n  {problem}"
            model.train()
            again = run_learner(fn, "anomaly_scores", case)
            recon = model.eval()(X).detach()
            model.train()
            if isinstance(got, torch.Tensor) and isinstance(again, torch.Tensor) and not torch.equal(got, again):
                message += ("\n  Hint: two calls gave different scores, so dropout was active: put the model in"
                            " evaluation mode (model.eval()) before reconstructing.")
            elif compare(got, ((recon - X) ** 2).mean(), rtol=1e-5, atol=1e-7) is None:
                message += "\n  Hint: return one score per ROW (mean over dim=1), not one number for all rows."
            elif compare(got, ((recon - X) ** 2).sum(dim=1), rtol=1e-5, atol=1e-7) is None:
                message += "\n  Hint: average the squared errors over the features (mean), don't sum them."
            elif compare(got, (recon - X).abs().mean(dim=1), rtol=1e-5, atol=1e-7) is None:
                message += "\n  Hint: the score is the mean SQUARED error, not the mean absolute error."
            raise CheckFailed(message)
        if got.requires_grad:
            raise CheckFailed(f"`anomaly_scores` on case '{case.label}' returned a tensor that requires grad:"
                              " compute the scores under `with torch.no_grad():` (no graph is needed to score).")
    passed("anomaly_scores", len(cases), device, hidden)


def _fpr_cases(hidden: bool) -> list[Case]:
    g = _gen(1151 if not hidden else 1152)
    cases = [
        Case("the numbers 0..9 shuffled, fpr 0.2", (torch.randperm(10, generator=g).float(), 0.2)),
        Case("300 normal scores, fpr 0.05", (torch.rand(300, generator=g) ** 2, 0.05)),
        Case("300 normal scores, fpr 0.013 (not a whole number of examples)", (torch.rand(300, generator=g), 0.013)),
    ]
    if hidden:
        cases += [
            Case("fpr 0: nothing normal may be flagged", (torch.randn(50, generator=g), 0.0)),
            Case("tied scores", (torch.tensor([0.1, 0.4, 0.4, 0.4, 0.2, 0.9, 0.4, 0.3]), 0.25)),
            Case("one score", (torch.tensor([0.7]), 0.1)),
            Case("float64, 1,000 scores, fpr 0.01", (torch.rand(1000, generator=g, dtype=torch.float64), 0.01)),
        ]
    return cases


@learner_facing
def threshold_at_fpr(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``threshold_at_fpr(scores_normal, fpr)`` -> sorted(scores)[n - 1 - floor(fpr * n)] as a float.

    The scores stay on the CPU (a threshold is one number; ``device`` is accepted for uniformity).
    """
    cases = _fpr_cases(hidden)

    def quantile(s, fpr):
        return float(np.quantile(np.asarray(torch.as_tensor(s).cpu(), dtype=np.float64), 1 - fpr))

    def off_by_one(s, fpr):
        v = np.sort(np.asarray(torch.as_tensor(s).cpu(), dtype=np.float64))
        return float(v[min(len(v) - math.floor(fpr * len(v) + 1e-9), len(v) - 1)])

    def ceil_m(s, fpr):
        v = np.sort(np.asarray(torch.as_tensor(s).cpu(), dtype=np.float64))
        return float(v[max(len(v) - 1 - math.ceil(fpr * len(v) - 1e-9), 0)])

    check_function(fn, A.threshold_at_fpr, cases, name="threshold_at_fpr", rtol=1e-6, atol=1e-7, hidden=hidden,
                   quiet=True,
                   mistakes={"np.quantile interpolates between scores; the exercise picks an actual score,"
                             " sorted(scores)[n - 1 - m] with m = floor(fpr * n)": quantile,
                             "off by one: with m normal scores allowed ABOVE the threshold, it is"
                             " sorted(scores)[n - 1 - m]": off_by_one,
                             "m = floor(fpr * n): rounding up lets more than a fraction fpr through": ceil_m})
    got = run_learner(fn, "threshold_at_fpr", cases[1])
    if not isinstance(got, (float, int, np.floating)) and not (isinstance(got, torch.Tensor) and got.numel() == 1):
        raise CheckFailed(f"`threshold_at_fpr` returned {describe(got)}; return one number (a float).")
    passed("threshold_at_fpr", len(cases), None, hidden)


# ---------------------------------------------------------------- recommendation

def _fancy_assign(U, V, users, items, ratings, lr, reg):
    U2, V2 = U.clone(), V.clone()
    Uu, Vi = U[users], V[items]
    err = (Uu * Vi).sum(1) - ratings
    U2[users] = Uu - lr * (err[:, None] * Vi + reg * Uu)
    V2[items] = Vi - lr * (err[:, None] * Uu + reg * Vi)
    return U2, V2


def _sequential(U, V, users, items, ratings, lr, reg):
    U2, _ = A.mf_step(U, V, users, items, ratings, lr, reg)
    _, V2 = A.mf_step(U2, V, users, items, ratings, lr, reg)
    return U2, V2


def _flipped(U, V, users, items, ratings, lr, reg):
    Uu, Vi = U[users], V[items]
    err = ratings - (Uu * Vi).sum(dim=1)
    gU = torch.zeros_like(U).index_add_(0, users, err[:, None] * Vi + reg * Uu)
    gV = torch.zeros_like(V).index_add_(0, items, err[:, None] * Uu + reg * Vi)
    return U - lr * gU, V - lr * gV


def _mean(U, V, users, items, ratings, lr, reg):
    return A.mf_step(U, V, users, items, ratings, lr / len(ratings), reg)


@learner_facing
def mf_step(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``mf_step(U, V, users, items, ratings, lr, reg)`` -> (new_U, new_V), one gradient step."""
    device = _device(device)
    g = _gen(1161 if not hidden else 1162)

    def batch(n_users, n_items, k, b, dtype=torch.float32, unique=False):
        U = torch.randn(n_users, k, generator=g, dtype=dtype) * 0.5
        V = torch.randn(n_items, k, generator=g, dtype=dtype) * 0.5
        if unique:
            users = torch.randperm(n_users, generator=g)[:b]
            items = torch.randperm(n_items, generator=g)[:b]
        else:
            users = torch.randint(0, n_users, (b,), generator=g)
            items = torch.randint(0, n_items, (b,), generator=g)
        ratings = torch.randint(1, 6, (b,), generator=g).to(dtype) - 3
        return U, V, users, items, ratings

    cases = [
        Case("3 ratings, every user and item once", (*batch(4, 3, 2, 3, unique=True), 0.1, 0.05)),
        Case("a batch of 32 with repeated users and items", (*batch(10, 8, 3, 32), 0.05, 0.1)),
    ]
    if hidden:
        cases += [
            Case("float64, no regularization", (*batch(20, 15, 4, 50, torch.float64), 0.02, 0.0)),
            Case("lr = 0 changes nothing", (*batch(5, 5, 2, 6), 0.0, 0.1)),
            Case("one user rating the same item twice", (torch.randn(2, 3, generator=g), torch.randn(2, 3, generator=g),
                                                          torch.tensor([1, 1]), torch.tensor([0, 0]),
                                                          torch.tensor([2.0, 1.0]), 0.1, 0.01)),
            Case("a batch of 256", (*batch(100, 60, 8, 256), 0.01, 0.05)),
        ]
    check_function(fn, A.mf_step, cases, name="mf_step", device=device, rtol=1e-5, atol=1e-6, hidden=hidden,
                   mistakes={"a user (or item) that appears twice in the batch must get BOTH contributions;"
                             " `U[users] = ...` keeps only one. Accumulate with index_add_ (or use autograd"
                             " on the batch loss)": _fancy_assign,
                             "take both gradients at the OLD U and V: V's step must not use the updated U":
                             _sequential,
                             "the error's sign is flipped: with err = prediction - rating, the step is"
                             " U - lr * (err * V + reg * U)": _flipped,
                             "the loss is a SUM over the batch (0.5 * sum ...), not a mean": _mean,
                             "the reg term is missing from the gradient (reg * U[u] and reg * V[i])":
                             lambda U, V, u, i, r, lr, reg: A.mf_step(U, V, u, i, r, lr, 0.0)})
