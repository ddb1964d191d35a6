"""Chapter 1: companion.intro (references) and companion.checks.ch01 (the graded checks)."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from companion import data as D
from companion import intro as I
from companion.checks import CheckFailed
from companion.checks import ch01 as check


# ------------------------------------------------------------------ accuracy

@pytest.mark.parametrize("seed", range(5))
@pytest.mark.parametrize("n", [1, 7, 100])
def test_accuracy_matches_sklearn(seed, n):
    from sklearn.metrics import accuracy_score

    rng = np.random.default_rng(seed)
    y, p = rng.integers(0, 4, n), rng.integers(0, 4, n)
    got = I.accuracy(y, p)
    assert type(got) is float
    assert got == pytest.approx(accuracy_score(y, p), abs=1e-15)


def test_accuracy_on_lists_strings_and_tensors():
    from sklearn.metrics import accuracy_score

    assert I.accuracy([1, 0, 1], [1, 1, 1]) == pytest.approx(2 / 3)
    a, b = np.array(["cat", "dog", "dog"]), np.array(["cat", "cat", "dog"])
    assert I.accuracy(a, b) == pytest.approx(accuracy_score(a, b))
    assert I.accuracy(torch.tensor([1, 2, 3]), torch.tensor([1, 2, 0])) == pytest.approx(2 / 3)


def test_accuracy_refuses_to_broadcast():
    with pytest.raises(ValueError, match="shape"):
        I.accuracy(np.array([3, 3, 3, 1]), np.array([3]))
    with pytest.raises(ValueError):
        I.accuracy([], [])


# ------------------------------------------------------------------ FLOPs and speed

@pytest.mark.parametrize("n, m, p", [(1, 1, 1), (2, 3, 4), (5, 1, 7), (64, 128, 32)])
def test_matmul_flops_is_two_nmp_and_matches_a_loop(n, m, p):
    loop = sum(2 for _ in range(n) for _ in range(p) for _ in range(m))  # one multiply + one add per term
    assert I.matmul_flops(n, m, p) == 2 * n * m * p == loop
    assert type(I.matmul_flops(np.int32(n), m, p)) is int


def test_matmul_flops_agrees_with_pytorchs_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    a, b = torch.randn(12, 34), torch.randn(34, 56)
    with FlopCounterMode(display=False) as counter:
        a @ b
    assert counter.get_total_flops() == I.matmul_flops(12, 34, 56)


def test_matmul_flops_does_not_overflow():
    assert I.matmul_flops(np.int32(65536), np.int32(65536), np.int32(65536)) == 2 * 65536**3


def test_dense_flops_sums_the_layers():
    assert I.dense_flops([784, 256, 256, 10]) == 2 * (784 * 256 + 256 * 256 + 256 * 10)
    assert I.dense_flops([784, 256, 256, 10], batch=64) == 64 * I.dense_flops([784, 256, 256, 10])
    assert I.dense_flops([7]) == 0
    assert type(I.dense_flops(np.array([64, 32, 10]), 8)) is int


def test_dense_flops_agrees_with_pytorchs_flop_counter():
    from torch.utils.flop_counter import FlopCounterMode

    net = I.mlp(40, (100, 50), 10)
    with FlopCounterMode(display=False) as counter:
        net(torch.randn(32, 40))
    assert counter.get_total_flops() == I.dense_flops([40, 100, 50, 10], batch=32)


def test_measure_gflops_is_sane_on_cpu():
    rate = I.measure_gflops(128, "cpu", repeats=2)
    assert math.isfinite(rate) and 0.05 < rate < 1e5
    assert I.measure_gflops(64, torch.device("cpu"), repeats=1, dtype=torch.float64) > 0
    with pytest.raises(ValueError):
        I.measure_gflops(8, "cpu", repeats=0)


def test_measure_gflops_synchronises_the_device(monkeypatch):
    calls = []
    monkeypatch.setattr(I, "synchronize", lambda device: calls.append(torch.device(device)))
    I.measure_gflops(32, "cpu", repeats=3)
    assert len(calls) >= 2 * 3 + 2  # around the warm-up and around every timed repeat
    assert all(d.type == "cpu" for d in calls)


def test_python_loop_is_much_slower_than_torch():
    slow = I.python_matmul_gflops(16)
    assert 0 < slow < I.measure_gflops(256, "cpu", repeats=2)


def test_a100_figures():
    assert I.A100_PEAK_TFLOPS["FP16/BF16 tensor core, 2:4 sparse (the guide's figure)"] == 624.0
    assert I.A100_PEAK_TFLOPS["FP32, dense (no tensor cores)"] == 19.5


@pytest.mark.cuda
def test_measure_gflops_on_cuda():
    cpu = I.measure_gflops(512, "cpu", repeats=2)
    gpu = I.measure_gflops(2048, "cuda", repeats=3)
    assert math.isfinite(gpu) and gpu > cpu
    assert I.measure_gflops(1024, "cuda", repeats=2, dtype=torch.bfloat16) > 0


# ------------------------------------------------------------------ models and the learning curve

def _blobs(seed=0, n=120, d=5, k=3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, k, n)
    X = rng.normal(size=(k, d))[y] * 3 + rng.normal(size=(n, d))
    return X, y


def test_most_changed_units():
    before = np.zeros((4, 2))
    after = np.array([[0.0, 1.0], [3.0, 4.0], [0.0, 0.0], [2.0, 0.0]])
    got = I.most_changed_units(before, after, 3)
    np.testing.assert_array_equal(got, [1, 3, 0])
    assert got.dtype.kind == "i"
    rng = np.random.default_rng(0)
    b, a = rng.normal(size=(50, 9)), rng.normal(size=(50, 9))
    order = I.most_changed_units(b, a, 50)
    norms = np.linalg.norm(a - b, axis=1)[order]
    assert np.all(np.diff(norms) <= 0) and sorted(order) == list(range(50))


def test_nearest_class_mean_matches_sklearn():
    from sklearn.neighbors import NearestCentroid

    X, y = _blobs()
    Xt, _ = _blobs(seed=1)
    ours = I.NearestClassMean().fit(X, y).predict(Xt)
    np.testing.assert_array_equal(ours, NearestCentroid().fit(X, y).predict(Xt))


def test_learning_curve_rows():
    X, y = _blobs(n=100)
    Xt, yt = _blobs(seed=1, n=50)
    rows = I.learning_curve(I.NearestClassMean, X, y, Xt, yt, [10, 40, 100])
    assert [r["size"] for r in rows] == [10, 40, 100]
    for r in rows:
        model = I.NearestClassMean().fit(X[:r["size"]], y[:r["size"]])
        assert r["train_acc"] == I.accuracy(y[:r["size"]], model.predict(X[:r["size"]]))
        assert r["test_acc"] == I.accuracy(yt, model.predict(Xt))
    assert I.learning_curve(I.NearestClassMean, X, y, Xt, yt, []) == []
    with pytest.raises(ValueError):
        I.learning_curve(I.NearestClassMean, X, y, Xt, yt, [101])


def test_learning_curve_builds_a_fresh_model_per_size():
    made = []

    def make():
        made.append(I.NearestClassMean())
        return made[-1]

    X, y = _blobs()
    I.learning_curve(make, X, y, X, y, [20, 60])
    assert len(made) == 2 and len(made[0].means_) and made[0] is not made[1]


def test_logistic_regression_is_a_sklearn_estimator():
    X, y = _blobs()
    model = I.logistic_regression()
    assert model.C == 1.0
    assert I.accuracy(y, model.fit(X, y).predict(X)) > 0.9


def test_mlp_shapes():
    net = I.mlp(40, (16, 8), 5)
    assert net(torch.zeros(3, 40)).shape == (3, 5)
    assert [m.out_features for m in net if isinstance(m, torch.nn.Linear)] == [16, 8, 5]


def test_mlp_classifier_learns_digits_and_repeats_exactly():
    ds = D.load_digits()
    tr, te = D.stratified_split(ds.y, 0.2, seed=0)
    a = I.MLPClassifier(hidden=(64,), updates=300, device="cpu").fit(ds.X[tr], ds.y[tr])
    b = I.MLPClassifier(hidden=(64,), updates=300, device="cpu").fit(ds.X[tr], ds.y[tr])
    pred = a.predict(ds.X[te])
    assert pred.shape == (len(te),) and pred.dtype == np.int64
    assert I.accuracy(ds.y[te], pred) > 0.9
    np.testing.assert_array_equal(pred, b.predict(ds.X[te]))
    assert a.hidden_features(ds.X[:5]).shape == (5, 64)
    change = a.first_layer_change()
    assert change.shape == (64, 64) and np.abs(change).max() > 0
    before, after = a.first_layer_weights()
    np.testing.assert_allclose(after - before, change)


def test_mlp_classifier_epochs_or_updates():
    with pytest.raises(ValueError):
        I.MLPClassifier(epochs=2, updates=10)
    with pytest.raises(ValueError):
        I.MLPClassifier()
    X, y = _blobs(n=64)
    model = I.MLPClassifier(hidden=(8,), updates=20, batch_size=16, device="cpu").fit(X, y)
    assert model.history_.epochs == 5  # 4 steps per epoch, 20 updates


def test_show_weights_draws_one_panel_per_row():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    axes = I.show_weights(np.random.default_rng(0).normal(size=(7, 16)), (4, 4), ncols=4)
    assert len(axes) == 8 and len(axes[0].images) == 1 and len(axes[7].images) == 0
    plt.close("all")


# ------------------------------------------------------------------ the checks: references pass

@pytest.mark.parametrize("hidden", [False, True])
def test_references_pass_their_checks(hidden, capsys):
    assert check.accuracy(I.accuracy, hidden=hidden) is None
    assert check.stratified_split(D.stratified_split, hidden=hidden) is None
    assert check.matmul_flops(I.matmul_flops, hidden=hidden) is None
    assert check.learning_curve(I.learning_curve, hidden=hidden) is None
    assert check.most_changed_units(I.most_changed_units, hidden=hidden) is None
    assert check.dense_flops(I.dense_flops, hidden=hidden) is None
    out, err = capsys.readouterr()
    assert out.count("\u2714") == 6 and err == ""


def notebook_style_split(y, test_fraction, seed=0):
    """A learner's solution written differently from the reference (other draw, other order)."""
    rng = np.random.default_rng(seed)
    test = []
    for c in sorted(set(np.asarray(y).tolist())):
        rows = np.flatnonzero(np.asarray(y) == c)
        test.extend(rng.permutation(rows)[:round(len(rows) * test_fraction)])
    test = np.array(sorted(test), dtype=np.int64)
    return np.array([i for i in range(len(y)) if i not in set(test)], dtype=np.int64), test


@pytest.mark.parametrize("hidden", [False, True])
def test_a_different_but_correct_split_passes(hidden):
    check.stratified_split(notebook_style_split, hidden=hidden)


# ------------------------------------------------------------------ the checks: mistakes fail helpfully

def fails(check_fn, fn, *, hidden=False) -> str:
    with pytest.raises(CheckFailed) as info:
        check_fn(fn, hidden=hidden)
    return str(info.value)


def _not_written(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("check_fn", [check.accuracy, check.stratified_split, check.matmul_flops, check.learning_curve,
                                      check.most_changed_units, check.dense_flops])
def test_unwritten_exercise_says_so(check_fn):
    assert "not written yet" in fails(check_fn, _not_written)
    assert "not written yet" in fails(check_fn, _not_written, hidden=True)


@pytest.mark.parametrize("wrong, hint, hidden", [
    (lambda t, p: int(np.sum(np.asarray(t) == np.asarray(p))), "number of correct predictions", False),
    (lambda t, p: 1 - float(np.mean(np.asarray(t) == np.asarray(p))), "error rate", False),
    (lambda t, p: 100 * float(np.mean(np.asarray(t) == np.asarray(p))), "not a percentage", False),
    (lambda t, p: float(np.mean(np.asarray(t) == np.asarray(p))), "broadcasts", True),
    (lambda t, p: torch.tensor(float(np.mean(np.asarray(t) == np.asarray(p)))), "plain number", False),
    (lambda t, p: float((t == p).mean()), "AttributeError", True),
])
def test_accuracy_mistakes(wrong, hint, hidden):
    assert hint in fails(check.accuracy, wrong, hidden=hidden)


def _per_class(y, f, seed, count, order=lambda rows, k, rng: rng.choice(rows, size=k, replace=False)):
    y = np.asarray(y)
    rng = np.random.default_rng(seed)
    parts = [order(np.flatnonzero(y == c), count(np.sum(y == c), f), rng) for c in np.unique(y)]
    test = np.sort(np.concatenate(parts)).astype(np.int64)
    return np.setdiff1d(np.arange(len(y)), test), test


SPLIT_MISTAKES = {
    "truncated": (lambda y, f, seed=0: _per_class(y, f, seed, lambda n, f: int(n * f)), "truncated"),
    "not per class": (lambda y, f, seed=0: (lambda t: (np.setdiff1d(np.arange(len(y)), t), t))(
        np.sort(np.random.default_rng(seed).choice(len(y), round(len(y) * f), replace=False))), "class by class"),
    "swapped": (lambda y, f, seed=0: D.stratified_split(y, f, seed)[::-1], "swapped"),
    "unsorted": (lambda y, f, seed=0: (D.stratified_split(y, f, seed)[0], D.stratified_split(y, f, seed)[1][::-1]),
                 "not sorted"),
    "seed ignored": (lambda y, f, seed=0: D.stratified_split(y, f, 0), "depend on `seed`"),
    "first rows of each class": (lambda y, f, seed=0: _per_class(y, f, seed, lambda n, f: round(n * f),
                                                                 lambda rows, k, rng: rows[:k]), "depend on `seed`"),
    "global random state": (lambda y, f, seed=0: D.stratified_split(y, f, int(np.random.randint(10**6))),
                            "same seed gave different splits"),
    "overlap": (lambda y, f, seed=0: (np.arange(len(y)), D.stratified_split(y, f, seed)[1]), "both parts"),
    "missing rows": (lambda y, f, seed=0: (D.stratified_split(y, f, seed)[0][1:], D.stratified_split(y, f, seed)[1]),
                     "in neither part"),
    "with replacement": (lambda y, f, seed=0: _per_class(y, f, seed, lambda n, f: round(n * f),
                                                         lambda rows, k, rng: np.sort(rng.choice(rows, k, replace=True))
                                                         if k else rows[:0]), "more than once"),
    "lists": (lambda y, f, seed=0: tuple(list(p) for p in D.stratified_split(y, f, seed)), "NumPy arrays"),
    "boolean masks": (lambda y, f, seed=0: (lambda t: (~np.isin(np.arange(len(y)), t), np.isin(np.arange(len(y)), t)))(
        D.stratified_split(y, f, seed)[1]), "integers"),
    "labels instead of rows": (lambda y, f, seed=0: tuple(np.sort(np.asarray(y)[p]) for p in D.stratified_split(y, f, seed)),
                               ""),
    "three parts": (lambda y, f, seed=0: (*D.stratified_split(y, f, seed), None), "pair"),
}


@pytest.mark.parametrize("name", sorted(SPLIT_MISTAKES))
def test_split_mistakes_fail_with_a_hint(name):
    wrong, hint = SPLIT_MISTAKES[name]
    message = fails(check.stratified_split, wrong, hidden=True)
    assert hint in message, message


def test_split_that_mutates_y_is_caught():
    def sorts_in_place(y, f, seed=0):
        out = D.stratified_split(y, f, seed)
        y.sort()
        return out

    assert "in place" in fails(check.stratified_split, sorts_in_place)


def test_sklearn_train_test_split_is_explained():
    from sklearn.model_selection import train_test_split

    def with_sklearn(y, f, seed=0):
        tr, te = train_test_split(np.arange(len(y)), test_size=f, stratify=y, random_state=seed)
        return np.sort(tr), np.sort(te)

    assert "train_test_split" in fails(check.stratified_split, with_sklearn, hidden=True)


@pytest.mark.parametrize("wrong, hint", [
    (lambda n, m, p: n * m * p, "only the multiplications"),
    (lambda n, m, p: n * p * (2 * m - 1), "exact count of the loop"),
    (lambda n, m, p: n * m + m * p, "entries of the two inputs"),
    (lambda n, m, p: 2 * n * p, "inner dimension"),
    (lambda n, m, p: 2.0 * n * m * p, "return an int"),
])
def test_flops_mistakes(wrong, hint):
    assert hint in fails(check.matmul_flops, wrong)


def test_flops_overflow_is_explained():
    with np.errstate(over="ignore"):
        message = fails(check.matmul_flops, lambda n, m, p: np.int32(2) * np.int32(n) * np.int32(m) * np.int32(p))
    assert "overflowed" in message


def _rows(model, X, y, Xt, yt, n, train_X=None, train_y=None):
    train_X = X[:n] if train_X is None else train_X
    train_y = y[:n] if train_y is None else train_y
    return {"size": n, "train_acc": I.accuracy(train_y, model.predict(train_X)), "test_acc": I.accuracy(yt, model.predict(Xt))}


def lc_reuses_one_model(make_model, X, y, Xt, yt, sizes):
    model = make_model()
    return [_rows(model.fit(X[:n], y[:n]) or model, X, y, Xt, yt, n) for n in sizes]


def lc_all_rows(make_model, X, y, Xt, yt, sizes):
    return [_rows(make_model().fit(X, y), X, y, Xt, yt, n) for n in sizes]


def lc_last_rows(make_model, X, y, Xt, yt, sizes):
    out = []
    for n in sizes:
        m = make_model()
        m.fit(X[-n:], y[-n:])
        out.append(_rows(m, X, y, Xt, yt, n, X[-n:], y[-n:]))
    return out


def lc_train_acc_on_everything(make_model, X, y, Xt, yt, sizes):
    out = []
    for n in sizes:
        m = make_model()
        m.fit(X[:n], y[:n])
        out.append(_rows(m, X, y, Xt, yt, n, X, y))
    return out


def lc_test_on_train(make_model, X, y, Xt, yt, sizes):
    out = []
    for n in sizes:
        m = make_model()
        m.fit(X[:n], y[:n])
        out.append(_rows(m, X[:n], y[:n], X[:n], y[:n], n))
    return out


def lc_tuples(make_model, X, y, Xt, yt, sizes):
    return [tuple(r.values()) for r in I.learning_curve(make_model, X, y, Xt, yt, sizes)]


def lc_sorted_sizes(make_model, X, y, Xt, yt, sizes):
    return I.learning_curve(make_model, X, y, Xt, yt, sorted(sizes))


def lc_fits_twice(make_model, X, y, Xt, yt, sizes):
    out = []
    for n in sizes:
        m = make_model()
        m.fit(X, y)
        m.fit(X[:n], y[:n])
        out.append(_rows(m, X, y, Xt, yt, n))
    return out


@pytest.mark.parametrize("wrong, hint, hidden", [
    (lc_reuses_one_model, "fresh model", False),
    (lc_all_rows, "trained on", False),
    (lc_last_rows, "first n rows", False),
    (lc_train_acc_on_everything, "n rows the model was trained on", False),
    (lc_test_on_train, "on the test set", False),
    (lc_tuples, "expected a dict", False),
    (lc_sorted_sizes, "first n rows", True),
    (lc_fits_twice, "fitted exactly once", False),
])
def test_learning_curve_mistakes(wrong, hint, hidden):
    message = fails(check.learning_curve, wrong, hidden=hidden)
    assert hint in message, message


@pytest.mark.parametrize("wrong, hint", [
    (lambda b, a, k: np.argsort(-np.linalg.norm(a, axis=1))[:k], "largest weights, not the largest change"),
    (lambda b, a, k: np.argsort(np.linalg.norm(a - b, axis=1))[:k], "changed least"),
    (lambda b, a, k: np.argsort(np.linalg.norm(a - b, axis=1))[-k:], "wrong order"),
    (lambda b, a, k: np.argsort(-np.abs(a - b).max(axis=1))[:k], "Euclidean norm"),
    (lambda b, a, k: np.sort(np.argsort(-np.linalg.norm(a - b, axis=1))[:k]), "sorted by unit number"),
    (lambda b, a, k: np.argsort(-np.linalg.norm(a - b, axis=0))[:k], "not right"),
])
def test_most_changed_units_mistakes(wrong, hint):
    message = fails(check.most_changed_units, wrong)
    assert hint in message, message


def test_most_changed_units_must_not_modify_the_weights():
    def in_place(before, after, k):
        after -= before
        return np.argsort(-np.linalg.norm(after, axis=1))[:k]

    assert "in place" in fails(check.most_changed_units, in_place)


@pytest.mark.parametrize("wrong, hint", [
    (lambda w, batch=1: I.dense_flops(w, 1), "batch size multiplies"),
    (lambda w, batch=1: batch * sum(a * b for a, b in zip(w[:-1], w[1:])), "2 FLOPs"),
    (lambda w, batch=1: sum(I.matmul_flops(batch, x, x) for x in w), "consecutive widths"),
    (lambda w, batch=1: I.matmul_flops(batch, w[0], w[1]), "only the first layer"),
])
def test_dense_flops_mistakes(wrong, hint):
    message = fails(check.dense_flops, wrong)
    assert hint in message, message
