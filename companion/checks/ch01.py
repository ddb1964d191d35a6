"""Checks for chapter 1, Introduction to deep learning.

Each function takes the learner's implementation and compares it with the references in
``companion.intro`` and ``companion.data``, then prints a verdict or raises
:class:`CheckFailed`. ``hidden=True`` runs the extra cases of nbgrader's hidden tests.

The stratified split draws rows at random, and a learner cannot be expected to reproduce
the reference's exact draw, so :func:`stratified_split` checks the *properties* a
stratified split must have instead of comparing indices.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .. import data as D
from .. import intro as I
from .core import Case, CheckFailed, check_function, compare, describe, learner_facing, passed, run_learner


# ---------------------------------------------------------------- accuracy

@learner_facing
def accuracy(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``accuracy(y_true, y_pred)`` -> the fraction of equal entries, a float."""
    rng = np.random.default_rng(11 if hidden else 10)
    y = rng.integers(0, 10, size=50)
    noisy = np.where(rng.random(50) < 0.3, rng.integers(0, 10, size=50), y)
    cases = [
        Case("3 of 4 right", (np.array([0, 1, 2, 3]), np.array([0, 1, 2, 0]))),
        Case("all right", (np.array([5, 5, 1]), np.array([5, 5, 1]))),
        Case("50 random labels, about 70 % right", (y, noisy)),
    ]
    if hidden:
        cases += [
            Case("none right", (np.array([1, 2, 3]), np.array([0, 0, 0]))),
            Case("one example", (np.array([7]), np.array([7]))),
            Case("Python lists", ([1, 0, 1, 1, 0], [1, 1, 1, 0, 0])),
            Case("string labels", (np.array(["cat", "dog", "dog"]), np.array(["cat", "cat", "dog"]))),
            Case("int32 truth, int64 predictions", (y.astype(np.int32), noisy.astype(np.int64))),
            Case("1,000 labels", (np.arange(1000) % 7, (np.arange(1000) * 3) % 7)),
        ]

    for case in cases:
        got = run_learner(fn, "accuracy", case)
        if isinstance(got, bool) or not isinstance(got, (float, int, np.floating, np.integer)):
            raise CheckFailed(f"`accuracy` returned {describe(got)} on case '{case.label}'; return a plain"
                              " number, e.g. `float(np.mean(...))`.")

    def as_count(y_true, y_pred):
        return float(np.sum(np.asarray(y_true) == np.asarray(y_pred)))

    check_function(fn, I.accuracy, cases, name="accuracy", rtol=1e-9, atol=1e-12, hidden=hidden, quiet=True,
                   mistakes={"this is the number of correct predictions; divide by how many there are":
                             as_count,
                             "this is the error rate (the share that is wrong), 1 - accuracy":
                             lambda t, p: 1.0 - I.accuracy(t, p),
                             "accuracy is a fraction between 0 and 1, not a percentage": lambda t, p: 100 * I.accuracy(t, p)})
    n = len(cases)
    if hidden:
        mismatch = Case("y_true has 4 labels, y_pred only 1", (np.array([3, 3, 3, 1]), np.array([3])))
        try:
            got = fn(*mismatch.args)
        except ValueError:
            got = None
        except NotImplementedError:
            run_learner(fn, "accuracy", mismatch)
        except Exception as err:
            raise CheckFailed(f"`accuracy` raised {type(err).__name__} on case '{mismatch.label}';"
                              " raise a ValueError when the lengths differ.") from None
        else:
            raise CheckFailed(f"`accuracy` returned {got!r} on case '{mismatch.label}'. NumPy broadcasts a"
                              " length-1 array against the other one, so `y_true == y_pred` silently compares"
                              " every label with that single prediction. Check the lengths first and"
                              " `raise ValueError(...)` when they differ.")
        n += 1
    passed("accuracy", n, hidden=hidden)


# ---------------------------------------------------------------- stratified split

def _split_labels(hidden: bool) -> list[tuple[str, np.ndarray, float]]:
    rng = np.random.default_rng(31 if hidden else 30)
    cases = [
        ("10 balanced classes, 100 labels, test 20 %", np.repeat(np.arange(10), 10)[rng.permutation(100)], 0.2),
        ("3 unbalanced classes (61/29/10), test 30 %", rng.permutation(np.repeat([0, 1, 2], [61, 29, 10])), 0.3),
    ]
    if hidden:
        cases += [
            ("labels 3, 7 and 42, test 25 %", rng.permutation(np.repeat([42, 3, 7], [40, 24, 16])), 0.25),
            ("the digits labels (1,797), test 20 %", D.load_digits().y, 0.2),
            ("a class with a single member, test 20 %", np.array([0] * 20 + [1] * 19 + [2]), 0.2),
            ("string labels, test 50 %", rng.permutation(np.repeat(np.array(["cat", "dog", "emu"]), [8, 12, 6])), 0.5),
            ("two classes, test 10 %", rng.permutation(np.repeat([0, 1], [73, 47])), 0.1),
        ]
    return cases


def _allowed_counts(n_c: int, fraction: float) -> set[int]:
    exact = n_c * fraction
    allowed = {int(round(exact))}
    if abs(exact - math.floor(exact) - 0.5) < 1e-9:  # an exact tie: either way of rounding is fine
        allowed |= {math.floor(exact), math.ceil(exact)}
    return allowed


def _as_index_array(part, what: str, label: str) -> np.ndarray:
    if not isinstance(part, np.ndarray):
        raise CheckFailed(f"on case '{label}', {what} is {describe(part)}; return NumPy arrays of indices"
                          " (e.g. from np.flatnonzero, np.sort, np.setdiff1d).")
    if part.ndim != 1:
        raise CheckFailed(f"on case '{label}', {what} has shape {part.shape}; it should be 1-D.")
    if part.size and part.dtype.kind not in "iu":
        raise CheckFailed(f"on case '{label}', {what} has dtype {part.dtype}; indices must be integers"
                          " (positions of rows in y, not the labels themselves and not booleans).")
    return part


def _check_split(fn: Callable, y: np.ndarray, fraction: float, seed: int, label: str) -> tuple[np.ndarray, np.ndarray]:
    y_before = y.copy()
    case = Case(label, (y, fraction, seed))
    result = run_learner(fn, "stratified_split", case,
                         context=f"case '{label}' (y = {len(y)} labels, test_fraction = {fraction}, seed = {seed})")
    if not np.array_equal(y, y_before):
        raise CheckFailed(f"`stratified_split` changed `y` in place on case '{label}'; leave the labels as they are.")
    if not isinstance(result, (tuple, list)) or len(result) != 2:
        raise CheckFailed(f"`stratified_split` returned {describe(result)} on case '{label}';"
                          " return a pair `(train_idx, test_idx)`.")
    train = _as_index_array(result[0], "train_idx", label)
    test = _as_index_array(result[1], "test_idx", label)
    n = len(y)
    for what, part in (("train_idx", train), ("test_idx", test)):
        if part.size and (part.min() < 0 or part.max() >= n):
            raise CheckFailed(f"on case '{label}', {what} holds {int(part.min() if part.min() < 0 else part.max())},"
                              f" which is not a row of y (valid positions are 0..{n - 1}).")
        if len(np.unique(part)) != len(part):
            raise CheckFailed(f"on case '{label}', {what} lists some rows more than once; each row belongs to"
                              " one part, once (draw without replacement: `replace=False`).")
        if np.any(np.diff(part) < 0):
            raise CheckFailed(f"on case '{label}', {what} is not sorted; return both index arrays in"
                              " increasing order (`np.sort`).")
    both = np.intersect1d(train, test)
    if both.size:
        raise CheckFailed(f"on case '{label}', {both.size} row(s) are in both parts (e.g. row {int(both[0])});"
                          " the training and test parts must not overlap.")
    if len(train) + len(test) != n:
        missing = np.setdiff1d(np.arange(n), np.concatenate([train, test]))
        raise CheckFailed(f"on case '{label}', {missing.size} of the {n} rows are in neither part"
                          f" (e.g. row {int(missing[0])}); every row goes to train or test.")
    # per-class counts
    classes, totals = np.unique(y, return_counts=True)
    test_counts = {c: int(np.sum(y[test] == c)) for c in classes}
    expected_total = sum(min(_allowed_counts(int(t), fraction)) for t in totals)
    for c, n_c in zip(classes, totals):
        allowed = _allowed_counts(int(n_c), fraction)
        if test_counts[c] not in allowed:
            want = min(allowed)
            hint = ""
            if test_counts[c] == int(round(n_c * (1 - fraction))):
                hint = (" It looks like the parts are swapped: `test_fraction` is the share of each class that goes"
                        " to the *test* part, and the function returns `(train_idx, test_idx)` in that order.")
            elif test_counts[c] == math.floor(n_c * fraction) and want != math.floor(n_c * fraction):
                hint = " It looks like the count was truncated (`int(...)`); round it with `round(...)`."
            elif abs(len(test) - expected_total) <= len(classes):
                hint = (" Your test part has about the right total size, but not the right count in every class:"
                        " choose the test rows class by class, round(n_c * test_fraction) of each class."
                        " (scikit-learn's `train_test_split(..., stratify=y)` spreads the rounding differently,"
                        " so it does not give these counts.)")
            name = repr(c.item() if hasattr(c, "item") else c)
            raise CheckFailed(f"on case '{label}', class {name} has {n_c} rows, so round({n_c} * {fraction}) ="
                              f" {want} of them belong in the test part, but your test part holds"
                              f" {test_counts[c]}.{hint}")
    return train, test


@learner_facing
def stratified_split(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``stratified_split(y, test_fraction, seed)`` -> ``(train_idx, test_idx)`` by its properties.

    For every case: two sorted 1-D integer arrays, disjoint, together every row once, each
    class sending round(n_c * test_fraction) rows to the test part, ``y`` unchanged. Then:
    the same seed gives the same split, and different seeds give different splits.
    """
    n_checks = 0
    for label, y, fraction in _split_labels(hidden):
        train, test = _check_split(fn, y, fraction, 0, label)
        again = _check_split(fn, y, fraction, 0, label)
        if not (np.array_equal(train, again[0]) and np.array_equal(test, again[1])):
            raise CheckFailed(f"on case '{label}', two calls with the same seed gave different splits. Draw with a"
                              " generator made from the seed, `rng = np.random.default_rng(seed)`, inside the"
                              " function (not with np.random.* functions, which share one global state).")
        others = [_check_split(fn, y, fraction, s, label)[1] for s in (1, 2, 3)]
        if all(np.array_equal(test, o) for o in others):
            raise CheckFailed(f"on case '{label}', seeds 0, 1, 2 and 3 all gave the same test rows. The split must"
                              " be random and depend on `seed`: draw each class's test rows with"
                              " `rng.choice(members, size=k, replace=False)` from `rng = np.random.default_rng(seed)`.")
        n_checks += 1
    passed("stratified_split (disjoint, complete, sorted, per-class counts, seeded)", n_checks, hidden=hidden)


# ---------------------------------------------------------------- FLOPs

@learner_facing
def matmul_flops(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``matmul_flops(n, m, p)`` -> 2*n*m*p, an integer."""
    cases = [Case("(2, 3) @ (3, 4)", (2, 3, 4)), Case("(1024, 1024) @ (1024, 1024)", (1024, 1024, 1024)),
             Case("(10, 784) @ (784, 128)", (10, 784, 128))]
    if hidden:
        cases += [Case("(1, 1) @ (1, 1)", (1, 1, 1)), Case("dot product (1, 500) @ (500, 1)", (1, 500, 1)),
                  Case("outer product (300, 1) @ (1, 200)", (300, 1, 200)),
                  Case("(64, 3) @ (3, 1000)", (64, 3, 1000)), Case("(7, 11) @ (11, 13)", (7, 11, 13)),
                  Case("GPT-sized (8192, 12288) @ (12288, 49152)", (8192, 12288, 49152))]
    for case in cases:  # overflow first: it is the least obvious mistake
        got = run_learner(fn, "matmul_flops", case)
        if isinstance(got, np.integer) and got != I.matmul_flops(*case.args) and np.iinfo(type(got)).bits < 64:
            raise CheckFailed(f"`matmul_flops` returned {int(got)} on case '{case.label}' (NumPy type"
                              f" {type(got).__name__}): the product overflowed a small NumPy integer type. Multiply Python ints"
                              " (`int(n)`), which never overflow.")
    check_function(fn, I.matmul_flops, cases, name="matmul_flops", rtol=0, atol=0, hidden=hidden, quiet=True,
                   mistakes={"this counts only the multiplications; every multiply comes with an add (2 FLOPs per"
                             " multiply-add)": lambda n, m, p: n * m * p,
                             "this is the exact count of the loop (m multiplies and m - 1 adds per output); the"
                             " course uses the usual convention 2 * n * m * p": lambda n, m, p: n * p * (2 * m - 1),
                             "this counts the entries of the two inputs, not the work of multiplying them":
                             lambda n, m, p: n * m + m * p,
                             "the inner dimension m (the length of each dot product) is missing":
                             lambda n, m, p: 2 * n * p})
    for case in cases:
        got = run_learner(fn, "matmul_flops", case)
        if isinstance(got, bool) or not isinstance(got, (int, np.integer)):
            raise CheckFailed(f"`matmul_flops` returned {describe(got)} on case '{case.label}'; return an int"
                              " (multiply integers: `2 * n * m * p`, not `2.0 * ...` or a division).")
    passed("matmul_flops", len(cases), hidden=hidden)


# ---------------------------------------------------------------- learning curve

class _Spy:
    """Counts how ``make_model`` is used: how many models, and what each was fitted on."""

    def __init__(self):
        self.made, self.fits = 0, []

    def make(self):
        self.made += 1
        spy, model, index = self, I.NearestClassMean(), self.made

        class Watched:
            def fit(self, X, y):
                spy.fits.append((index, len(X), np.asarray(X).copy()))
                model.fit(X, y)
                return self

            def predict(self, X):
                if not hasattr(model, "means_"):
                    raise RuntimeError("predict was called on a model that was never fitted")
                return model.predict(X)

        return Watched()


def _curve_data(seed: int, n_train: int, n_test: int, d: int = 6, k: int = 3, noise: float = 1.6):
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(k, d)) * 1.5
    y = rng.integers(0, k, size=n_train + n_test)
    X = centres[y] + noise * rng.normal(size=(len(y), d))
    return X[:n_train], y[:n_train], X[n_train:], y[n_train:]


@learner_facing
def learning_curve(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``learning_curve(make_model, X_train, y_train, X_test, y_test, sizes)`` -> list of rows.

    Uses the nearest-class-mean classifier as the model, so the expected rows are exact,
    and a spy that records how many models were built and what each was trained on.
    """
    setups = [("3 classes, sizes [5, 20, 80]", 0, 80, 60, [5, 20, 80]),
              ("3 classes, sizes [10, 40]", 1, 50, 40, [10, 40])]
    if hidden:
        setups += [("one size", 2, 30, 30, [30]), ("sizes not increasing [40, 8, 20]", 3, 40, 50, [40, 8, 20]),
                   ("5 classes, 9 sizes", 4, 200, 100, [3, 5, 10, 20, 40, 60, 100, 150, 200]),
                   ("no sizes", 5, 20, 10, [])]
    for label, seed, n_train, n_test, sizes in setups:
        X_train, y_train, X_test, y_test = _curve_data(seed, n_train, n_test, k=5 if "5 classes" in label else 3)
        spy = _Spy()
        case = Case(label, (spy.make, X_train, y_train, X_test, y_test, sizes))
        context = f"case '{label}'"
        got = run_learner(fn, "learning_curve", case, context=context)
        if spy.made != len(sizes):
            advice = ("build a fresh model for every size by calling `make_model()` inside the loop; reusing one"
                      " model would carry what it learned from one size into the next" if spy.made < len(sizes)
                      else "call `make_model()` once per size, no more")
            raise CheckFailed(f"on {context}, `make_model()` was called {spy.made} time(s) for {len(sizes)} size(s): {advice}.")
        fitted = sorted(i for i, _, _ in spy.fits)
        if fitted != list(range(1, len(sizes) + 1)):
            raise CheckFailed(f"on {context}, each model should be fitted exactly once (call `model.fit(...)` once per"
                              f" size); the fit calls went to models {fitted}.")
        for (index, n_rows, X_seen), n in zip(sorted(spy.fits, key=lambda f: f[0]), sizes):
            if n_rows != n or not np.array_equal(X_seen, X_train[:n]):
                what = (f"{n_rows} rows" if n_rows != n else "the wrong rows")
                raise CheckFailed(f"on {context}, the model for size {n} was trained on {what}; train it on the"
                                  f" first n rows, `X_train[:n], y_train[:n]`.")

        def train_on_all(make_model, X_train, y_train, X_test, y_test, sizes):
            rows = I.learning_curve(make_model, X_train, y_train, X_test, y_test, sizes)
            for row in rows:
                m = make_model().fit(X_train[:row["size"]], y_train[:row["size"]])
                row["train_acc"] = I.accuracy(y_train, m.predict(X_train))
            return rows

        def test_on_train(make_model, X_train, y_train, X_test, y_test, sizes):
            rows = I.learning_curve(make_model, X_train, y_train, X_test, y_test, sizes)
            for row in rows:
                row["test_acc"] = row["train_acc"]
            return rows

        ref_case = Case(label, (I.NearestClassMean, X_train, y_train, X_test, y_test, sizes))
        expected = I.learning_curve(*ref_case.args)
        problem = compare(got, expected, rtol=1e-9, atol=1e-12, path="your rows")
        if problem:
            message = f"`learning_curve` is not right on {context}:\n  {problem}"
            for hint, wrong in {"train_acc should be measured on the n rows the model was trained on"
                                " (X_train[:n]), not on the whole training set": train_on_all,
                                "test_acc should be measured on the test set (X_test, y_test)": test_on_train}.items():
                if compare(got, wrong(*ref_case.args), rtol=1e-9, atol=1e-12) is None:
                    message += f"\n  Hint: {hint}"
                    break
            else:
                if isinstance(got, list) and got and isinstance(got[0], dict) and set(got[0]) == {"size", "train_acc", "test_acc"}:
                    message += ("\n  Each row is {'size': n, 'train_acc': accuracy on X_train[:n],"
                                " 'test_acc': accuracy on X_test}, one row per size in the order of `sizes`.")
            raise CheckFailed(message)
    passed("learning_curve", len(setups), hidden=hidden)


# ---------------------------------------------------------------- most-changed units

@learner_facing
def most_changed_units(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``most_changed_units(before, after, k)`` -> indices of the k rows that changed most, largest first."""
    rng = np.random.default_rng(41 if hidden else 40)

    def layer(units, inputs, scale=0.1):
        before = rng.normal(size=(units, inputs)) * scale
        after = before + rng.normal(size=(units, inputs)) * rng.uniform(0.01, 1.0, size=(units, 1))
        return before, after

    small_before = np.array([[0.0, 0.0], [1.0, 1.0], [5.0, -5.0], [2.0, 0.0]])
    small_after = np.array([[3.0, 4.0], [1.0, 2.0], [5.0, -5.0], [0.0, 0.0]])  # changes: 5, 1, 0, 2
    cases = [Case("4 units, 2 inputs: changes 5, 1, 0, 2", (small_before, small_after, 2)),
             Case("16 units with 64 inputs, k = 5", (*layer(16, 64), 5))]
    if hidden:
        big_before = rng.normal(size=(6, 3)) * 10  # large weights that barely move
        cases += [Case("k = 1", (*layer(10, 7), 1)), Case("k = all units", (*layer(8, 784), 8)),
                  Case("256 units like the MLP's, k = 20", (*layer(256, 784), 20)),
                  Case("large weights, small changes", (big_before, big_before + rng.normal(size=(6, 3)) * 0.01, 3)),
                  Case("float32 weights", tuple(a.astype(np.float32) for a in layer(12, 30)) + (4,))]

    def norm_of_after(before, after, k):
        return np.argsort(-np.linalg.norm(after, axis=1), kind="stable")[:k]

    def smallest_first(before, after, k):
        return np.argsort(np.linalg.norm(after - before, axis=1), kind="stable")[:k]

    def ascending_top_k(before, after, k):
        return np.argsort(np.linalg.norm(after - before, axis=1), kind="stable")[::-1][:k][::-1]

    def max_abs(before, after, k):
        return np.argsort(-np.abs(after - before).max(axis=1), kind="stable")[:k]

    def by_index(before, after, k):
        return np.sort(I.most_changed_units(before, after, k))

    def signed_sum(before, after, k):
        return np.argsort(-(after - before).sum(axis=1), kind="stable")[:k]

    check_function(fn, I.most_changed_units, cases, name="most_changed_units", rtol=0, atol=0, hidden=hidden,
                   mistakes={"these are the units with the largest weights, not the largest change: subtract"
                             " `before` from `after` first": norm_of_after,
                             "these are the units that changed least: sort by decreasing change"
                             " (e.g. `np.argsort(-change)`)": smallest_first,
                             "these are the right units in the wrong order: the largest change comes first":
                             ascending_top_k,
                             "these are the right units, but sorted by unit number: order them by change,"
                             " largest first (do not sort the indices afterwards)": by_index,
                             "measure each unit's change with the Euclidean norm of its row,"
                             " `np.linalg.norm(after - before, axis=1)`, not the largest single entry": max_abs,
                             "a sum of signed changes lets positive and negative changes cancel; use the"
                             " Euclidean norm of each row": signed_sum})


# ---------------------------------------------------------------- FLOPs of an MLP

@learner_facing
def dense_flops(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``dense_flops(widths, batch)`` -> sum of 2 * batch * in * out over the layers."""
    cases = [Case("the MNIST MLP [784, 256, 256, 10], one example", ([784, 256, 256, 10], 1)),
             Case("the MNIST MLP, batch of 64", ([784, 256, 256, 10], 64)),
             Case("the guide's [784, 128, 64, 32, 10], batch of 32", ([784, 128, 64, 32, 10], 32))]
    if hidden:
        cases += [Case("one layer [5, 3], batch 2", ([5, 3], 2)), Case("no layer: widths [7]", ([7], 4)),
                  Case("a tuple of widths", ((40, 100, 100, 10), 100)),
                  Case("a wide layer, batch 1,000", ([4096, 4096], 1000)),
                  Case("widths in a NumPy array", (np.array([64, 32, 10]), 8))]

    def no_batch(widths, batch=1):
        return I.dense_flops(widths, 1)

    def params_only(widths, batch=1):
        return sum(int(a) * int(b) for a, b in zip(widths[:-1], widths[1:])) * int(batch)

    def pairs_wrong(widths, batch=1):
        return sum(I.matmul_flops(batch, w, w) for w in widths)

    def first_only(widths, batch=1):
        return I.matmul_flops(batch, widths[0], widths[1])

    check_function(fn, I.dense_flops, cases, name="dense_flops", rtol=0, atol=0, hidden=hidden,
                   mistakes={"this is the count for a single example: every example in the batch costs the same,"
                             " so the batch size multiplies the work": no_batch,
                             "each multiply-add counts as 2 FLOPs (use matmul_flops for each layer)": params_only,
                             "each layer maps widths[i] to widths[i + 1]: pair consecutive widths,"
                             " `zip(widths[:-1], widths[1:])`": pairs_wrong,
                             "only the first layer is counted: add up every layer": first_only})
