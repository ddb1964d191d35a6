"""Chapter 12's fixes against independent implementations and their defining properties, and its checks.

- split_and_standardize vs scikit-learn's StandardScaler, and the no-leak property
  (changing the test rows changes nothing fitted on training);
- duplicate finding vs a brute-force comparison; nearest distances vs cdist;
- set_seed vs seed_everything; diagnose on the reference curves;
- each check passes the reference and a second correct implementation (visible and
  hidden), and fails the classic mistakes with the hint that names them.
"""
from __future__ import annotations

import random

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402

import companion  # noqa: E402
from companion import pitfalls as P  # noqa: E402
from companion.checks import CheckFailed  # noqa: E402
from companion.checks import ch12 as check  # noqa: E402
import companion.checks.ch12 as M  # noqa: E402


# ====================================================================== split and standardize

@settings(max_examples=40, deadline=None)
@given(n=st.integers(5, 60), d=st.integers(1, 6), f=st.sampled_from([0.2, 0.25, 0.5]), seed=st.integers(0, 10_000))
def test_split_and_standardize_matches_standard_scaler(n, d, f, seed):
    from sklearn.preprocessing import StandardScaler

    rng = np.random.default_rng(seed)
    X = rng.normal(3, 5, (n, d))
    y = np.arange(n)
    Xtr, Xte, ytr, yte, mean, std = P.split_and_standardize(X, y, f, seed)
    n_test = int(n * f)
    assert len(yte) == n_test and len(ytr) == n - n_test
    assert sorted(np.r_[ytr, yte].tolist()) == list(range(n))  # a partition of the rows
    scaler = StandardScaler().fit(X[ytr])  # y holds the row numbers
    np.testing.assert_allclose(Xtr, scaler.transform(X[ytr]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(Xte, scaler.transform(X[yte]), rtol=1e-9, atol=1e-9)
    np.testing.assert_allclose(std, scaler.scale_, rtol=1e-12)


def test_split_and_standardize_leaks_nothing_and_survives_constant_columns():
    X = np.random.default_rng(0).normal(size=(40, 3))
    X[:, 1] = 2.0
    y = np.arange(40)
    a = P.split_and_standardize(X, y, 0.25, 7)
    changed = X.copy()
    changed[a[3]] += 1000.0  # the test rows only
    b = P.split_and_standardize(changed, y, 0.25, 7)
    for i in (0, 2, 4, 5):
        np.testing.assert_array_equal(a[i], b[i])
    assert np.isfinite(a[0]).all() and (a[0][:, 1] == 0).all() and a[5][1] == 1


def test_select_top_features_matches_corrcoef():
    rng = np.random.default_rng(0)
    X, y = rng.normal(size=(50, 30)), rng.integers(0, 2, 50)
    corr = np.abs([np.corrcoef(X[:, j], y)[0, 1] for j in range(30)])
    np.testing.assert_array_equal(P.select_top_features(X, y, 5), np.argsort(-corr)[:5])


# ====================================================================== duplicates

@settings(max_examples=50, deadline=None)
@given(n=st.integers(0, 30), m=st.integers(0, 30), d=st.integers(1, 3), seed=st.integers(0, 10_000))
def test_duplicates_match_brute_force(n, m, d, seed):
    rng = np.random.default_rng(seed)
    X_train, X_test = rng.integers(0, 3, (n, d)).astype(np.float32), rng.integers(0, 3, (m, d)).astype(np.float32)
    got = P.find_cross_split_duplicates(X_train, X_test)
    expected = [i for i in range(m) if any((X_test[i] == row).all() for row in X_train)]
    assert got.dtype == np.int64 and got.tolist() == expected


def test_with_duplicates_and_nearest_distances():
    X, y = np.arange(20, dtype=np.float32).reshape(10, 2), np.arange(10)
    X2, y2, origin = P.with_duplicates(X, y, 0.5, seed=0)
    assert len(X2) == 15 and np.array_equal(X2, X[origin]) and np.array_equal(y2, y[origin])
    assert len(np.unique(origin)) == 10
    q, r = torch.randn(7, 4), torch.randn(11, 4)
    torch.testing.assert_close(P.nearest_distances(q, r, batch=3), torch.cdist(q, r).min(1).values)


def test_in_stored_order_keeps_the_order():
    X, y = torch.arange(10.0)[:, None], torch.arange(10)
    batches = P.in_stored_order(X, y, batch_size=4)
    assert [len(b[1]) for b in batches] == [4, 4, 2] and torch.equal(torch.cat([b[1] for b in batches]), y)


# ====================================================================== seeding and curves

def test_set_seed_matches_seed_everything():
    P.set_seed(42)
    a = P.draws()
    companion.seed_everything(42)
    b = P.draws()
    assert a[0] == b[0] and np.array_equal(a[1], b[1]) and torch.equal(a[2], b[2])


@pytest.mark.parametrize("name", list(P.reference_curves()))
def test_reference_curves_get_their_diagnosis(name):
    train, val, target, expected = P.reference_curves()[name]
    assert P.diagnose(train, val, target) == expected
    assert P.diagnose(np.array(train), torch.tensor(val), target) == expected


# ====================================================================== checks

def _split_second(X, y, test_fraction, seed):
    from sklearn.preprocessing import StandardScaler

    order = np.random.default_rng(seed).permutation(len(X))
    k = int(len(X) * test_fraction)
    scaler = StandardScaler().fit(X[order[k:]])
    return (scaler.transform(X[order[k:]]), scaler.transform(X[order[:k]]), y[order[k:]], y[order[:k]],
            scaler.mean_, scaler.scale_)


def _dups_brute(X_train, X_test):
    return np.array([i for i in range(len(X_test)) if (X_train == X_test[i]).all(1).any()], dtype=np.int64)


def _seed_all(seed):
    companion.seed_everything(seed)


def _diagnose_second(train, val, target, rise=0.1):
    t, v = list(train)[-1], list(val)[-1]
    rising = v > (1 + rise) * min(val)
    return ("overfitting" if rising else "good fit" if v <= target
            else "underfitting" if t - target >= v - t else "overfitting")


@pytest.mark.parametrize("hidden", [False, True])
def test_references_and_other_correct_answers_pass(hidden, capsys):
    check.split_and_standardize(P.split_and_standardize, hidden=hidden)
    check.split_and_standardize(_split_second, hidden=hidden)
    check.set_seed(P.set_seed, hidden=hidden, device="cpu")
    check.set_seed(_seed_all, hidden=hidden, device="cpu")
    check.diagnose(P.diagnose, hidden=hidden)
    check.diagnose(_diagnose_second, hidden=hidden)
    check.find_cross_split_duplicates(P.find_cross_split_duplicates, hidden=hidden)
    check.find_cross_split_duplicates(_dups_brute, hidden=hidden)
    out = capsys.readouterr()
    assert out.err == "" and out.out.count("\u2714") == 8


def _not_written(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("name", ["split_and_standardize", "set_seed", "diagnose", "find_cross_split_duplicates"])
def test_unwritten_exercises_fail_with_the_friendly_message(name):
    with pytest.raises(CheckFailed, match="not written yet"):
        getattr(check, name)(_not_written)


def _seed_no_numpy(seed):
    random.seed(seed)
    np.random.default_rng(seed)
    torch.manual_seed(seed)


def _seed_no_torch(seed):
    random.seed(seed)
    np.random.seed(seed)


def _seed_no_python(seed):
    np.random.seed(seed)
    torch.manual_seed(seed)


WRONG = [
    ("split leak", lambda h: check.split_and_standardize(M._leaky, hidden=h), "ALL rows"),
    ("split ddof", lambda h: check.split_and_standardize(M._ddof1, hidden=h), "population std"),
    ("split nan", lambda h: check.split_and_standardize(M._no_guard, hidden=True), "NaN"),
    ("split own stats", lambda h: check.split_and_standardize(M._own_stats, hidden=h), "TRAINING mean"),
    ("split unshuffled", lambda h: check.split_and_standardize(M._unshuffled, hidden=h), "not shuffled"),
    ("split test at end", lambda h: check.split_and_standardize(M._test_at_end, hidden=h), "FIRST n_test"),
    ("seed numpy", lambda h: check.set_seed(_seed_no_numpy, hidden=h, device="cpu"), "default_rng"),
    ("seed torch", lambda h: check.set_seed(_seed_no_torch, hidden=h, device="cpu"), "manual_seed"),
    ("seed python", lambda h: check.set_seed(_seed_no_python, hidden=h, device="cpu"), "random.seed"),
    ("diagnose vs first", lambda h: check.diagnose(M._vs_first, hidden=h), "LOWEST"),
    ("diagnose target first", lambda h: check.diagnose(M._target_first, hidden=h), "in order"),
    ("diagnose strict", lambda h: check.diagnose(M._strict, hidden=True), "bias >= variance"),
    ("diagnose best train", lambda h: check.diagnose(M._best_train, hidden=True), "LAST training loss"),
    ("diagnose fixed rise", lambda h: check.diagnose(M._fixed_rise, hidden=True), "`rise`"),
    ("dups train side", lambda h: check.find_cross_split_duplicates(M._train_side, hidden=h), "indices into X_train"),
    ("dups approximate", lambda h: check.find_cross_split_duplicates(M._approximate, hidden=True), "exact copies"),
    ("dups within test", lambda h: check.find_cross_split_duplicates(M._any_repeat, hidden=True), "inside the test"),
    ("dups mask", lambda h: check.find_cross_split_duplicates(M._mask, hidden=h), "boolean"),
]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name, run, hint", WRONG, ids=[w[0] for w in WRONG])
def test_wrong_answers_fail_with_a_helpful_message(name, run, hint, hidden):
    with pytest.raises(CheckFailed, match=hint):
        run(hidden)


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    np.random.seed(5)
    expected = torch.rand(3), np.random.rand(2)
    torch.manual_seed(123)
    np.random.seed(5)
    check.set_seed(P.set_seed, hidden=True, device="cpu")
    assert torch.equal(torch.rand(3), expected[0]) and np.array_equal(np.random.rand(2), expected[1])


@pytest.mark.cuda
@pytest.mark.parametrize("hidden", [False, True])
def test_set_seed_check_on_cuda(hidden):
    check.set_seed(P.set_seed, hidden=hidden, device=torch.device("cuda"))
