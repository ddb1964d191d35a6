"""Checks for chapter 12, Best practices.

Each function takes the learner's implementation, compares it with the reference in
``companion.pitfalls`` on fixed, seeded inputs, and prints a verdict or raises
:class:`CheckFailed`, naming the classic mistake when it recognises one. ``hidden=True``
runs the extra cases that nbgrader's hidden tests use.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch

from .. import pitfalls as P
from ..runtime import get_device
from .core import Case, CheckFailed, check_function, compare, learner_facing, passed, run_learner


def _device(device) -> torch.device:
    device = get_device() if device is None else device
    return torch.device(device) if isinstance(device, str) else device


# ---------------------------------------------------------------- leakage-free split

def _split_cases(hidden: bool) -> list[Case]:
    rng = np.random.default_rng(1201 if not hidden else 1202)
    scales = np.array([1.0, 10.0, 1000.0, 0.01], dtype=np.float32)
    cases = [
        Case("6 rows, 2 columns, half for testing", (np.array([[1.0, 10.0], [2.0, 20.0], [3.0, 30.0], [4.0, 45.0],
                                                                [5.0, 50.0], [6.0, 70.0]]),
                                                      np.array([0, 1, 0, 1, 0, 1]), 0.5, 0)),
        Case("50 rows, columns on very different scales", (((rng.normal(0, 1, (50, 4)) + 3) * scales).astype(np.float32),
                                                           rng.integers(0, 3, 50), 0.2, 1)),
    ]
    if hidden:
        const = rng.normal(0, 1, (30, 3))
        const[:, 1] = 7.0
        cases += [
            Case("a constant column (std 0)", (const, rng.integers(0, 2, 30), 0.2, 2)),
            Case("float64, 40 rows, test_fraction 0.25", (rng.normal(3, 2, (40, 5)), rng.integers(0, 5, 40), 0.25, 3)),
            Case("one column", (rng.normal(0, 1, (25, 1)), np.arange(25), 0.2, 4)),
            Case("1,000 rows like the digits", (rng.integers(0, 17, (1000, 64)).astype(np.float32),
                                                rng.integers(0, 10, 1000), 0.25, 12345)),
        ]
    return cases


def _leaky(X, y, test_fraction, seed):
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = int(len(X) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean, std = X.mean(axis=0), X.std(axis=0)
    std = np.where(std == 0, 1, std).astype(std.dtype)
    return (X[train] - mean) / std, (X[test] - mean) / std, y[train], y[test], mean, std


def _ddof1(X, y, test_fraction, seed):
    out = list(P.split_and_standardize(X, y, test_fraction, seed))
    order = np.random.default_rng(seed).permutation(len(X))
    train = order[int(len(X) * test_fraction):]
    std1 = X[train].std(axis=0, ddof=1)
    std1 = np.where(std1 == 0, 1, std1)
    ratio = out[5] / std1
    return out[0] * ratio, out[1] * ratio, out[2], out[3], out[4], std1


def _no_guard(X, y, test_fraction, seed):
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = int(len(X) * test_fraction)
    test, train = order[:n_test], order[n_test:]
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        return (X[train] - mean) / std, (X[test] - mean) / std, y[train], y[test], mean, std


def _own_stats(X, y, test_fraction, seed):
    out = list(P.split_and_standardize(X, y, test_fraction, seed))
    order = np.random.default_rng(seed).permutation(len(X))
    Xt = X[order[:int(len(X) * test_fraction)]]
    s = Xt.std(axis=0)
    out[1] = (Xt - Xt.mean(axis=0)) / np.where(s == 0, 1, s)
    return tuple(out)


def _unshuffled(X, y, test_fraction, seed):
    return _split_at(X, y, np.arange(len(X)), int(len(X) * test_fraction))


def _test_at_end(X, y, test_fraction, seed):
    order = np.random.default_rng(seed).permutation(len(X))
    n_test = int(len(X) * test_fraction)
    return _split_at(X, y, np.r_[order[len(X) - n_test:], order[:len(X) - n_test]], n_test)


def _split_at(X, y, order, n_test):
    test, train = order[:n_test], order[n_test:]
    mean, std = X[train].mean(axis=0), X[train].std(axis=0)
    std = np.where(std == 0, 1, std).astype(std.dtype)
    return (X[train] - mean) / std, (X[test] - mean) / std, y[train], y[test], mean, std


@learner_facing
def split_and_standardize(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``split_and_standardize(X, y, test_fraction, seed)`` -> the reference's 6-tuple."""
    check_function(fn, P.split_and_standardize, _split_cases(hidden), name="split_and_standardize", rtol=1e-5,
                   atol=1e-5, hidden=hidden,
                   mistakes={"the mean and std were computed on ALL rows, test rows included: that is the leak"
                             " this exercise is about. Compute them on X_train only": _leaky,
                             "use the population std (ddof=0, NumPy's default), like scikit-learn's StandardScaler":
                             _ddof1,
                             "a constant column has std 0 and turns into NaN: replace a std of 0 by 1": _no_guard,
                             "the test part must be scaled with the TRAINING mean and std, not with its own":
                             _own_stats,
                             "the rows were not shuffled: take the split from"
                             " np.random.default_rng(seed).permutation(N)": _unshuffled,
                             "the test rows are the FIRST n_test rows of the permutation, the training rows the"
                             " rest": _test_at_end})


# ---------------------------------------------------------------- seeding

_SEED_HINTS = (
    "Python's `random` module is not seeded the same way: call random.seed(seed)",
    "NumPy's global generator is not seeded: call np.random.seed(seed) (np.random.default_rng(seed) builds a"
    " NEW generator and leaves the global one, which np.random.rand uses, untouched)",
    "PyTorch's generator is not seeded: call torch.manual_seed(seed) (it seeds the CPU and every GPU)",
)


@learner_facing
def set_seed(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``set_seed(seed)``: afterwards, random, numpy and torch draw what ``seed_everything(seed)`` gives."""
    device = _device(device)
    seeds = [1234, 0] + ([7, 2**31 - 1, 99] if hidden else [])
    on_gpu = device.type == "cuda"
    cuda_state = torch.cuda.get_rng_state_all() if on_gpu else None
    try:
        for seed in seeds:
            run_learner(fn, "set_seed", Case(f"seed {seed}", (seed,)), context=f"seed = {seed}")
            got = P.draws(device if on_gpu else None)
            P.set_seed(seed)
            expected = P.draws(device if on_gpu else None)
            for part, hint, g, e in zip(("random.random()", "np.random.rand(3)", "torch.rand(3)"), _SEED_HINTS,
                                        got, expected):
                problem = compare(g, e, rtol=0, atol=0, path=f"the first {part} after set_seed({seed})")
                if problem:
                    raise CheckFailed(f"`set_seed` does not make the draws repeat: {problem}\n  Hint: {hint}.")
    finally:
        if on_gpu:
            torch.cuda.set_rng_state_all(cuda_state)
    passed("set_seed", len(seeds), device, hidden)


# ---------------------------------------------------------------- learning curves

def _diagnose_cases(hidden: bool) -> list[Case]:
    cases = [Case(name, (train, val, target)) for name, (train, val, target, _) in P.reference_curves().items()]
    turns_up_far = Case("validation turns up while both are far from the target",
                        ([2.0, 1.0, 0.8, 0.85, 0.9], [2.0, 1.0, 0.85, 0.95, 1.0], 0.1))
    turns_up_low = Case("validation turns up while still below the target",
                        ([1.0, 0.2, 0.05, 0.02], [1.0, 0.12, 0.1, 0.13], 0.15))
    if not hidden:
        return cases[:4] + [turns_up_far, turns_up_low]
    epochs = np.arange(1, 31)
    decay = np.exp(-epochs / 5)
    creeping = np.r_[0.2 + decay[:20], (0.2 + decay[19]) * np.linspace(1, 1.05, 10)]
    return cases[4:] + [
        Case("the same shape as a visible case, other numbers", ([3.0, 1.5, 1.2, 1.3, 1.25], [3.0, 1.6, 1.3, 1.5, 1.6],
                                                                0.2)),
        Case("NumPy arrays, validation creeping up 5 % (under the 10 % tolerance)", (0.05 + decay, creeping, 0.3)),
        Case("a 20 % rise tolerated with rise = 0.5", ([1.0, 0.6, 0.5], [1.0, 0.6, 0.72], 0.1), {"rise": 0.5}),
        Case("a 5 % rise below the target, with rise = 0.01", (0.05 + decay, creeping, 0.3), {"rise": 0.01}),
        Case("one epoch", ([0.9], [1.0], 0.5)),
        Case("bias gap equal to the variance gap", ([1.0, 0.75], [1.2, 1.0], 0.5)),
        Case("validation lower than training (dropout in training)", (list(0.4 + decay), list(0.3 + decay), 0.35)),
        Case("the training loss ends above its best", ([1.0, 0.3, 0.6], [1.1, 0.9, 0.9], 0.2)),
        Case("validation dips, then ends above its best", ([2.0, 1.0, 0.5, 0.3, 0.2], [2.0, 1.1, 0.7, 0.75, 0.9], 0.1)),
        Case("a target met exactly", ([0.5, 0.25], [0.75, 0.5], 0.5)),
    ]


def _vs_first(train, val, target, rise=0.1):
    if float(val[-1]) > (1 + rise) * float(val[0]):
        return "overfitting"
    return P.diagnose(train, val, target, rise=1e9)


def _target_first(train, val, target, rise=0.1):
    if float(val[-1]) <= target:
        return "good fit"
    return P.diagnose(train, val, target, rise)


def _strict(train, val, target, rise=0.1):
    t, v = float(train[-1]), float(val[-1])
    if v > (1 + rise) * float(min(val)):
        return "overfitting"
    if v <= target:
        return "good fit"
    return "underfitting" if t - target > v - t else "overfitting"


def _best_train(train, val, target, rise=0.1):
    return P.diagnose([min(train)], val, target, rise)


def _fixed_rise(train, val, target, rise=0.1):
    return P.diagnose(train, val, target, 0.1)


@learner_facing
def diagnose(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``diagnose(train_loss, val_loss, target_loss, rise=0.1)`` on reference curves."""
    check_function(fn, P.diagnose, _diagnose_cases(hidden), name="diagnose", hidden=hidden,
                   mistakes={"apply the rules in order: a validation loss that has turned up is overfitting even"
                             " when it is below the target": _target_first,
                             "rule 1 compares the last validation loss with its LOWEST value (min(val_loss)),"
                             " not with the first one": _vs_first,
                             "when the two gaps are equal the answer is underfitting (bias >= variance)": _strict,
                             "use the LAST training loss (train_loss[-1]), not the lowest": _best_train,
                             "the `rise` argument is ignored": _fixed_rise})


# ---------------------------------------------------------------- duplicates

def _dup_cases(hidden: bool) -> list[Case]:
    rng = np.random.default_rng(1211 if not hidden else 1212)
    train = rng.normal(0, 1, (50, 8)).astype(np.float32)
    test = rng.normal(0, 1, (20, 8)).astype(np.float32)
    test[[2, 5, 11, 17, 19]] = train[[40, 3, 3, 0, 22]]
    cases = [
        Case("5 training rows, 4 test rows", (np.array([[0, 1, 2], [3, 4, 5], [6, 7, 8], [0, 0, 0], [1, 1, 1]], float),
                                              np.array([[3, 4, 5], [9, 9, 9], [1, 1, 1], [5, 4, 3]], float))),
        Case("50 training rows, 5 of 20 test rows copied", (train, test)),
    ]
    if hidden:
        images = rng.integers(0, 17, (2000, 64)).astype(np.float32)
        held = rng.integers(0, 17, (300, 64)).astype(np.float32)
        copied = rng.choice(300, 40, replace=False)
        held[copied] = images[rng.choice(2000, 40, replace=False)]
        within = rng.normal(0, 1, (6, 3))
        within[4] = within[1]
        near = train[:10] + np.float32(1e-6)
        cases += [
            Case("no duplicates at all", (rng.normal(0, 1, (30, 4)), rng.normal(0, 1, (10, 4)))),
            Case("a test row repeated inside the test set only", (rng.normal(0, 1, (8, 3)), within)),
            Case("near copies (off by 1e-6) are not exact duplicates", (train, near)),
            Case("every test row copied", (train, train[::-1][:12].copy())),
            Case("integer rows", (np.array([[1, 2], [3, 4], [5, 6]]), np.array([[3, 4], [4, 3], [1, 2], [1, 2]]))),
            Case("2,000 digit-like training rows, 40 of 300 copied", (images, held)),
        ]
    return cases


def _train_side(X_train, X_test):
    seen = {row.tobytes() for row in np.ascontiguousarray(X_test)}
    return np.array([i for i, row in enumerate(np.ascontiguousarray(X_train)) if row.tobytes() in seen], np.int64)


def _approximate(X_train, X_test):
    return np.array([i for i, row in enumerate(X_test) if np.isclose(X_train, row, rtol=1e-5, atol=1e-5).all(1).any()],
                    np.int64)


def _any_repeat(X_train, X_test):
    both = np.concatenate([X_train, X_test])
    _, inverse, counts = np.unique(both, axis=0, return_inverse=True, return_counts=True)
    return np.flatnonzero(counts[inverse.ravel()[len(X_train):]] > 1).astype(np.int64)


def _mask(X_train, X_test):
    mask = np.zeros(len(X_test), bool)
    mask[P.find_cross_split_duplicates(X_train, X_test)] = True
    return mask


@learner_facing
def find_cross_split_duplicates(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``find_cross_split_duplicates(X_train, X_test)`` -> sorted int64 indices of copied test rows."""
    check_function(fn, P.find_cross_split_duplicates, _dup_cases(hidden), name="find_cross_split_duplicates",
                   rtol=0, atol=0, hidden=hidden,
                   mistakes={"these are indices into X_train; return the indices of the TEST rows that have a"
                             " copy in training": _train_side,
                             "only exact copies count: comparing with a tolerance (np.isclose) also flags rows"
                             " that merely look alike": _approximate,
                             "a test row that repeats inside the test set but never occurs in training is not a"
                             " cross-split duplicate": _any_repeat,
                             "return the indices of the duplicated rows (np.flatnonzero(mask)), not a boolean"
                             " mask": _mask})
