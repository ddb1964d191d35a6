"""Chapter 11's pipeline functions against independent implementations, and its checks.

- confusion matrix vs scikit-learn; bag of words vs a Counter; windows vs a plain loop,
  with the no-leak property (changing the test period changes nothing learned from
  training); thresholds vs their defining properties; the matrix-factorization step vs
  autograd in float64, duplicates included;
- the data helpers (CO2, breast cancer, generated ratings) and the training helper;
- each check passes the reference and a second correct implementation (visible and
  hidden), and fails the classic mistakes with the hint that names them.
"""
from __future__ import annotations

import math
from collections import Counter

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from companion import applications as A  # noqa: E402
from companion.checks import CheckFailed  # noqa: E402
from companion.checks import ch11 as check  # noqa: E402
import companion.checks.ch11 as check_module  # noqa: E402

F64 = torch.float64


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ====================================================================== vision

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 300), c=st.integers(2, 12), seed=st.integers(0, 10_000))
def test_confusion_matrix_matches_sklearn(n, c, seed):
    from sklearn.metrics import confusion_matrix as sk_cm

    g = gen(seed)
    t, p = torch.randint(0, c, (n,), generator=g), torch.randint(0, c, (n,), generator=g)
    got = A.confusion_matrix(t, p, c)
    assert got.dtype == torch.int64 and got.shape == (c, c)
    np.testing.assert_array_equal(got.numpy(), sk_cm(t.numpy(), p.numpy(), labels=list(range(c))))
    assert got.sum().item() == n


def test_digit_cnn_shapes_and_size():
    model = A.digit_cnn()
    assert model(torch.rand(3, 784)).shape == (3, 10)
    assert sum(p.numel() for p in model.parameters()) == 20_490


# ====================================================================== sentiment

@settings(max_examples=40, deadline=None)
@given(n=st.integers(1, 20), t=st.integers(1, 15), v=st.integers(2, 30), seed=st.integers(0, 10_000))
def test_bag_of_words_counts_every_token_but_padding(n, t, v, seed):
    g = gen(seed)
    ids = torch.randint(0, v, (n, t), generator=g)
    got = A.bag_of_words(ids, v)
    assert got.dtype == torch.float32 and got.shape == (n, v)
    for row, counts in zip(ids.tolist(), got):
        expected = Counter(i for i in row if i != 0)
        assert {i: int(c) for i, c in enumerate(counts.tolist()) if c} == dict(expected)
    assert (got[:, 0] == 0).all()


def test_bag_of_words_on_real_snippets():
    from companion import text

    texts = ["A great, great film!", "not good", "zzzz unknownword"]
    vocab = text.Vocab(texts * 2, min_freq=2)
    ids, _ = text.encode_texts(vocab, texts)
    counts = A.bag_of_words(ids, len(vocab))
    assert counts[0, vocab.stoi["great"]] == 2
    assert counts.sum(1).tolist() == [len(text.tokenize(s)) for s in texts]


# ====================================================================== forecasting

def _windows_loop(series, window, test_fraction, horizon=1):
    s = np.asarray(series, dtype=np.float64)
    n_train = int(len(s) * (1 - test_fraction))
    mean, std = s[:n_train].mean(), s[:n_train].std()
    z = (s - mean) / std
    parts = {True: ([], []), False: ([], [])}
    for t in range(window + horizon - 1, len(s)):
        parts[t < n_train][0].append(z[t - horizon - window + 1:t - horizon + 1])
        parts[t < n_train][1].append(z[t])
    return parts, mean, std


@pytest.mark.parametrize("T, window, test_fraction, horizon", [(20, 3, 0.25, 1), (60, 5, 0.2, 1), (60, 4, 0.25, 3),
                                                               (120, 12, 0.25, 1), (30, 1, 0.5, 2)])
def test_windows_match_a_plain_loop(T, window, test_fraction, horizon):
    series = torch.randn(T, generator=gen(T + window), dtype=F64).cumsum(0)
    Xtr, ytr, Xte, yte, mean, std = A.train_test_windows(series, window, test_fraction, horizon)
    parts, m, s = _windows_loop(series.numpy(), window, test_fraction, horizon)
    for X, y, key in ((Xtr, ytr, True), (Xte, yte, False)):
        np.testing.assert_allclose(X.numpy(), np.array(parts[key][0]).reshape(-1, window), rtol=1e-12)
        np.testing.assert_allclose(y.numpy(), np.array(parts[key][1]), rtol=1e-12)
    assert math.isclose(mean.item(), m) and math.isclose(std.item(), s)
    assert mean.dim() == 0 and std.dim() == 0 and Xtr.dtype == F64


def test_windows_leak_nothing_from_the_test_period():
    series = torch.randn(100, generator=gen(1)).cumsum(0)
    changed = series.clone()
    changed[80:] += 1000.0  # a wild test period
    a, b = A.train_test_windows(series, 6, 0.2), A.train_test_windows(changed, 6, 0.2)
    for i in (0, 1, 4, 5):  # X_train, y_train, mean, std
        assert torch.equal(a[i], b[i])
    assert not torch.equal(a[3], b[3])


def test_windows_at_matches_the_scaled_layout():
    series = np.arange(30, dtype=np.float32)
    X, targets = A.windows_at(series, 5, horizon=2)
    assert X.shape == (30 - 6, 5) and targets[0] == 6
    np.testing.assert_array_equal(X[:, -1], targets - 2)


def test_check_cases_have_no_floating_point_ambiguity():
    # The exercises define n_train = int(T * (1 - f)), k = ceil(r * P), m = floor(f * n): every
    # case must give the same answer however a learner rounds.
    for hidden in (False, True):
        for case in check_module._window_cases(hidden):
            series, _, f = case.args
            T = len(series)
            assert int(T * (1 - f)) == T - int(T * f) == T - round(T * f), case.label
        for case in check_module._recall_cases(hidden)[0]:
            _, labels, r = case.args
            P = int((np.asarray(labels) == 1).sum())
            assert math.ceil(r * P) == math.ceil(r * P - 1e-9), case.label
        for case in check_module._fpr_cases(hidden):
            scores, f = case.args
            assert math.floor(f * len(scores)) == math.floor(f * len(scores) + 1e-9), case.label


# ====================================================================== healthcare

@settings(max_examples=60, deadline=None)
@given(n=st.integers(2, 80), r=st.floats(0.01, 1.0), seed=st.integers(0, 10_000))
def test_threshold_for_recall_is_the_highest_that_reaches_the_target(n, r, seed):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 2, n)
    labels[0] = 1
    scores = np.round(rng.normal(size=n), 1)  # ties on purpose
    t = A.threshold_for_recall(scores, labels, r)
    pos = scores[labels == 1]
    assert (pos >= t).mean() >= r - 1e-9
    higher = pos[pos > t]
    if len(higher):
        assert (pos >= higher.min()).mean() < r - 1e-9


def test_binary_report_counts():
    rep = A.binary_report(np.array([0.9, 0.2, 0.6, 0.1]), np.array([1, 1, 0, 0]), 0.5)
    assert rep["missed"] == 1 and rep["false alarms"] == 1 and rep["recall"] == 0.5 and rep["specificity"] == 0.5


def test_breast_cancer_loader():
    X, y, names = A.load_breast_cancer()
    assert X.shape == (569, 30) and X.dtype == np.float32 and y.sum() == 212 and len(names) == 30


# ====================================================================== anomaly detection

def test_anomaly_scores_in_eval_mode_without_grad_and_mode_restored():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 3), nn.Dropout(0.5), nn.Linear(3, 5))
    X = torch.rand(7, 5)
    model.train()
    s1, s2 = A.anomaly_scores(model, X), A.anomaly_scores(model, X)
    assert torch.equal(s1, s2) and not s1.requires_grad and model.training
    model.eval()
    torch.testing.assert_close(s1, ((model(X) - X) ** 2).mean(1))


@settings(max_examples=60, deadline=None)
@given(n=st.integers(1, 200), fpr=st.floats(0.0, 0.99), seed=st.integers(0, 10_000))
def test_threshold_at_fpr_flags_at_most_the_budget_and_is_the_smallest_such_score(n, fpr, seed):
    s = np.round(np.random.default_rng(seed).normal(size=n), 1)
    t = A.threshold_at_fpr(torch.as_tensor(s), fpr)
    assert t in s
    assert (s > t).mean() <= fpr + 1e-9
    lower = s[s < t]
    if len(lower):
        assert (s > lower.max()).mean() > fpr - 1e-9


def test_pca_scores_are_zero_on_the_training_span():
    X = torch.randn(50, 3, dtype=F64) @ torch.randn(3, 10, dtype=F64)
    assert A.pca_reconstruction_scores(X, X, k=3).max().item() < 1e-20


# ====================================================================== recommendation

def _mf_autograd(U, V, users, items, ratings, lr, reg):
    U_, V_ = U.clone().requires_grad_(True), V.clone().requires_grad_(True)
    Uu, Vi = U_[users], V_[items]
    loss = 0.5 * (((Uu * Vi).sum(1) - ratings) ** 2 + reg * ((Uu ** 2).sum(1) + (Vi ** 2).sum(1))).sum()
    gU, gV = torch.autograd.grad(loss, [U_, V_])
    return U - lr * gU, V - lr * gV


@settings(max_examples=40, deadline=None)
@given(nu=st.integers(1, 8), ni=st.integers(1, 8), k=st.integers(1, 4), b=st.integers(1, 40),
       lr=st.floats(0.0, 0.5), reg=st.floats(0.0, 1.0), seed=st.integers(0, 10_000))
def test_mf_step_matches_autograd_with_repeated_indices(nu, ni, k, b, lr, reg, seed):
    g = gen(seed)
    U, V = torch.randn(nu, k, generator=g, dtype=F64), torch.randn(ni, k, generator=g, dtype=F64)
    users, items = torch.randint(0, nu, (b,), generator=g), torch.randint(0, ni, (b,), generator=g)
    ratings = torch.randn(b, generator=g, dtype=F64)
    U0, V0 = U.clone(), V.clone()
    got = A.mf_step(U, V, users, items, ratings, lr, reg)
    expected = _mf_autograd(U, V, users, items, ratings, lr, reg)
    for a, e in zip(got, expected):
        torch.testing.assert_close(a, e, rtol=1e-12, atol=1e-12)
    assert torch.equal(U, U0) and torch.equal(V, V0)


def test_generated_ratings_and_matrix_factorization_beat_the_baselines():
    R = A.make_ratings(seed=0)
    assert len(R.ratings) == int(0.08 * 400 * 250) and set(np.unique(R.ratings)) <= {1, 2, 3, 4, 5}
    assert np.array_equal(A.make_ratings(seed=0).ratings, R.ratings)
    order = np.random.default_rng(0).permutation(len(R.ratings))
    tr, te = order[:6000], order[6000:]
    mu, bu, bi = A.bias_baseline(R.users[tr], R.items[tr], R.ratings[tr], R.n_users, R.n_items)
    base = mu + bu[R.users] + bi[R.items]
    resid = R.ratings - base
    U, V, val = A.fit_mf((R.users[tr], R.items[tr], resid[tr]), (R.users[te], R.items[te], resid[te]),
                         R.n_users, R.n_items, rank=3, epochs=30, progress=False)
    bias_rmse = A.rmse(base[te], R.ratings[te])
    assert A.rmse(R.ratings[te].mean() * 0 + R.ratings[tr].mean(), R.ratings[te]) > bias_rmse
    assert val[-1] < bias_rmse - 0.1


def test_co2_loader():
    co2 = A.load_co2_monthly()
    x = co2["x"]
    assert x.shape == (526,) and np.isfinite(x).all() and x[-12:].mean() > x[:12].mean() + 50
    assert co2["year"][0] == pytest.approx(1958 + 2 / 12)


# ====================================================================== checks

def _second_windows(series, window, test_fraction, horizon=1):
    n_train = int(len(series) * (1 - test_fraction))
    mean, std = series[:n_train].mean(), series[:n_train].std(unbiased=False)
    z = (series - mean) / std
    w = z.unfold(0, window, 1)[:len(series) - window - horizon + 1]
    y = z[window + horizon - 1:]
    train = torch.arange(window + horizon - 1, len(series)) < n_train
    return w[train], y[train], w[~train], y[~train], mean, std


def _cm_loop(t, p, n):
    out = torch.zeros(n, n, dtype=torch.int64)
    for a, b in zip(t.tolist(), p.tolist()):
        out[a, b] += 1
    return out


@pytest.mark.parametrize("hidden", [False, True])
def test_references_and_other_correct_answers_pass(hidden, capsys):
    cpu = torch.device("cpu")
    check.confusion_matrix(A.confusion_matrix, hidden=hidden, device=cpu)
    check.confusion_matrix(_cm_loop, hidden=hidden, device=cpu)
    check.bag_of_words(A.bag_of_words, hidden=hidden, device=cpu)
    check.bag_of_words(lambda ids, v: torch.stack([torch.bincount(r[r > 0], minlength=v).float() for r in ids]),
                       hidden=hidden, device=cpu)
    check.train_test_windows(A.train_test_windows, hidden=hidden, device=cpu)
    check.train_test_windows(_second_windows, hidden=hidden, device=cpu)
    check.threshold_for_recall(A.threshold_for_recall, hidden=hidden)
    check.anomaly_scores(A.anomaly_scores, hidden=hidden, device=cpu)
    check.threshold_at_fpr(A.threshold_at_fpr, hidden=hidden)
    check.threshold_at_fpr(lambda s, f: float(np.sort(np.asarray(s))[len(s) - 1 - math.floor(f * len(s))]),
                           hidden=hidden)
    check.mf_step(A.mf_step, hidden=hidden, device=cpu)
    check.mf_step(_mf_autograd, hidden=hidden, device=cpu)
    out = capsys.readouterr()
    assert out.err == "" and out.out.count("\u2714") == 12


def _not_written(*args, **kwargs):
    raise NotImplementedError()


@pytest.mark.parametrize("name", ["confusion_matrix", "bag_of_words", "train_test_windows", "threshold_for_recall",
                                  "anomaly_scores", "threshold_at_fpr", "mf_step"])
def test_unwritten_exercises_fail_with_the_friendly_message(name):
    with pytest.raises(CheckFailed, match="not written yet"):
        getattr(check, name)(_not_written)


def _anomaly_train_mode(model, X):
    return ((model(X) - X) ** 2).mean(1).detach()


def _anomaly_one_number(model, X):
    with torch.no_grad():
        return ((model.eval()(X) - X) ** 2).mean()


def _anomaly_with_grad(model, X):
    model.eval()
    return ((model(X) - X) ** 2).mean(1)


M = check_module
WRONG = [
    ("cm transposed", lambda h: check.confusion_matrix(lambda t, p, n: A.confusion_matrix(p, t, n), hidden=h),
     "swapped"),
    ("cm size from data", lambda h: check.confusion_matrix(
        lambda t, p, n: A.confusion_matrix(t, p, int(max(t.max(), p.max())) + 1), hidden=True), "n_classes"),
    ("bow padding", lambda h: check.bag_of_words(
        lambda ids, v: torch.zeros(len(ids), v).scatter_add_(1, ids, torch.ones(ids.shape)), hidden=h), "padding"),
    ("bow binary", lambda h: check.bag_of_words(lambda ids, v: (A.bag_of_words(ids, v) > 0).float(), hidden=h),
     "how many times"),
    ("windows leak", lambda h: check.train_test_windows(M._whole_series_stats, hidden=h), "WHOLE series"),
    ("windows unbiased", lambda h: check.train_test_windows(M._unbiased, hidden=h), "population std"),
    ("windows by count", lambda h: check.train_test_windows(M._by_count, hidden=h), "TARGET time"),
    ("windows horizon", lambda h: check.train_test_windows(M._no_horizon, hidden=h), "horizon"),
    ("recall floor", lambda h: check.threshold_for_recall(M._floor_k, hidden=h), "ceil"),
    ("recall off by one", lambda h: check.threshold_for_recall(M._one_further, hidden=h), "off by one"),
    ("recall all scores", lambda h: check.threshold_for_recall(M._all_scores, hidden=h), "POSITIVE"),
    ("anomaly train mode", lambda h: check.anomaly_scores(_anomaly_train_mode, hidden=True, device="cpu"),
     "model.eval"),
    ("anomaly one number", lambda h: check.anomaly_scores(_anomaly_one_number, hidden=h, device="cpu"), "per ROW"),
    ("anomaly with grad", lambda h: check.anomaly_scores(_anomaly_with_grad, hidden=h, device="cpu"), "no_grad"),
    ("fpr quantile", lambda h: check.threshold_at_fpr(
        lambda s, f: float(np.quantile(np.asarray(s), 1 - f)), hidden=h), "interpolates"),
    ("mf fancy assign", lambda h: check.mf_step(M._fancy_assign, hidden=h, device="cpu"), "index_add_"),
    ("mf sequential", lambda h: check.mf_step(M._sequential, hidden=h, device="cpu"), "OLD U"),
    ("mf no reg", lambda h: check.mf_step(lambda U, V, u, i, r, lr, reg: A.mf_step(U, V, u, i, r, lr, 0.0),
                                          hidden=h, device="cpu"), "reg term"),
]


@pytest.mark.parametrize("hidden", [False, True])
@pytest.mark.parametrize("name, run, hint", WRONG, ids=[w[0] for w in WRONG])
def test_wrong_answers_fail_with_a_helpful_message(name, run, hint, hidden):
    with pytest.raises(CheckFailed, match=hint):
        run(hidden)


def test_checks_leave_the_global_random_state_alone():
    torch.manual_seed(123)
    expected = torch.rand(3)
    torch.manual_seed(123)
    check.anomaly_scores(A.anomaly_scores, hidden=True, device="cpu")
    check.mf_step(A.mf_step, device="cpu")
    assert torch.equal(torch.rand(3), expected)


@pytest.mark.cuda
@pytest.mark.parametrize("hidden", [False, True])
def test_references_pass_the_checks_on_cuda(hidden):
    cuda = torch.device("cuda")
    check.confusion_matrix(A.confusion_matrix, hidden=hidden, device=cuda)
    check.bag_of_words(A.bag_of_words, hidden=hidden, device=cuda)
    check.train_test_windows(A.train_test_windows, hidden=hidden, device=cuda)
    check.anomaly_scores(A.anomaly_scores, hidden=hidden, device=cuda)
    check.threshold_at_fpr(A.threshold_at_fpr, hidden=hidden, device=cuda)
    check.mf_step(A.mf_step, hidden=hidden, device=cuda)
