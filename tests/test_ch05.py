"""Chapter 5's references against PyTorch in float64, and its checks against right and wrong answers.

- rnn_cell / lstm_cell / gru_cell vs nn.RNNCell / nn.LSTMCell / nn.GRUCell with copied
  weights (hypothesis over shapes, with and without biases, unbatched inputs), values and
  gradients; unrolled over a sequence vs nn.RNN / nn.LSTM / nn.GRU, both directions;
- the fused LSTM and GRU steps within 2x of PyTorch's cells on the CPU;
- sliding windows, the scaler, the baselines, packing, seq2seq and the training helpers;
- each check passes the reference (visible and hidden) and PyTorch's own cells, and fails
  a plausible wrong implementation with a message that names the mistake.
"""
from __future__ import annotations

import contextlib
import io
import warnings

import matplotlib

matplotlib.use("Agg")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
import torch  # noqa: E402
from hypothesis import given, settings  # noqa: E402
from hypothesis import strategies as st  # noqa: E402
from torch import nn  # noqa: E402

from companion import rnn  # noqa: E402
from companion.checks import CheckFailed  # noqa: E402
from companion.checks import ch05 as check  # noqa: E402

F64 = torch.float64
TORCH_CELLS = {"rnn": nn.RNNCell, "lstm": nn.LSTMCell, "gru": nn.GRUCell}
TORCH_LAYERS = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Small models on a shared 2-core machine: OpenMP threads only spin against each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def gen(seed):
    return torch.Generator().manual_seed(seed)


def _state(kind, shape, g):
    h = torch.randn(*shape, generator=g, dtype=F64)
    return (h, torch.randn(*shape, generator=g, dtype=F64)) if kind == "lstm" else h


def _flat(out):
    return out if isinstance(out, tuple) else (out,)


# ====================================================================== cells vs torch.nn

@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@settings(max_examples=25, deadline=None)
@given(B=st.integers(1, 9), I=st.integers(1, 12), H=st.integers(1, 12), bias=st.booleans(),
       seed=st.integers(0, 2**16))
def test_cells_match_torch_with_copied_weights(kind, B, I, H, bias, seed):
    torch.manual_seed(seed)
    module = TORCH_CELLS[kind](I, H, bias=bias).double()
    with torch.no_grad():  # weights larger than the default init, so the nonlinearities bite
        for p in module.parameters():
            p.mul_(4)
    g = gen(seed)
    x = torch.randn(B, I, generator=g, dtype=F64)
    state = _state(kind, (B, H), g)
    ours = rnn.CELLS[kind](x, state, *rnn.cell_weights(module))
    theirs = module(x, state)
    for a, b in zip(_flat(ours), _flat(theirs)):
        assert a.shape == b.shape and a.dtype == b.dtype
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cells_take_unbatched_inputs_like_torch(kind):
    torch.manual_seed(0)
    module = TORCH_CELLS[kind](4, 6).double()
    g = gen(1)
    x, state = torch.randn(4, generator=g, dtype=F64), _state(kind, (6,), g)
    for a, b in zip(_flat(rnn.CELLS[kind](x, state, *rnn.cell_weights(module))), _flat(module(x, state))):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cell_gradients_match_torch(kind):
    torch.manual_seed(3)
    module = TORCH_CELLS[kind](5, 7).double()
    g = gen(3)
    x = torch.randn(4, 5, generator=g, dtype=F64, requires_grad=True)
    state = _state(kind, (4, 7), g)
    weights = [w.detach().clone().requires_grad_(True) for w in rnn.cell_weights(module)]
    ours = sum((t * (i + 1)).sum() for i, t in enumerate(_flat(rnn.CELLS[kind](x, state, *weights))))
    g_ours = torch.autograd.grad(ours, [x, *weights])
    theirs = sum((t * (i + 1)).sum() for i, t in enumerate(_flat(module(x, state))))
    g_theirs = torch.autograd.grad(theirs, [x, *rnn.cell_weights(module)])
    for a, b in zip(g_ours, g_theirs):
        torch.testing.assert_close(a, b, rtol=1e-11, atol=1e-12)


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
@pytest.mark.parametrize("bidirectional", [False, True])
def test_unroll_reproduces_torch_layers_both_directions(kind, bidirectional):
    torch.manual_seed(5)
    layer = TORCH_LAYERS[kind](3, 4, batch_first=True, bidirectional=bidirectional).double()
    xs = torch.randn(2, 9, 3, generator=gen(5), dtype=F64)
    with torch.no_grad():
        out, _ = layer(xs)
        zero = torch.zeros(2, 4, dtype=F64)
        start = (zero, zero) if kind == "lstm" else zero
        fwd, final = rnn.unroll(rnn.CELLS[kind], xs, start, *rnn.cell_weights(layer))
        torch.testing.assert_close(fwd, out[..., :4], rtol=1e-12, atol=1e-13)
        assert torch.equal(_flat(final)[0], fwd[:, -1])
        if bidirectional:
            bwd, _ = rnn.unroll(rnn.CELLS[kind], xs.flip(1), start, *rnn.cell_weights(layer, reverse=True))
            torch.testing.assert_close(bwd.flip(1), out[..., 4:], rtol=1e-12, atol=1e-13)


@pytest.mark.parametrize("kind", ["lstm", "gru"])
def test_fused_cells_are_within_2x_of_torch_on_the_cpu(kind):
    # the best of three measurements, so that a busy machine does not fail the test
    ratio = min(rnn.time_cell(kind, batch=64, input_size=64, hidden=128, repeats=5, number=100)["ratio"]
                for _ in range(3))
    assert ratio < 2.0, f"{kind}_cell takes {ratio:.2f}x the time of nn.{kind.upper()}Cell"


def test_parameter_counts_follow_the_gate_counts():
    counts = {k: sum(p.numel() for p in TORCH_LAYERS[k](32, 64).parameters()) for k in TORCH_LAYERS}
    assert counts["gru"] == 3 * counts["rnn"] and counts["lstm"] == 4 * counts["rnn"]


# ====================================================================== gradients through time

def test_vanishing_gradient_illustration():
    lengths = [1, 10, 50]
    plain = rnn.input_gradient_norms("rnn", lengths)
    lstm_open = rnn.input_gradient_norms("lstm", lengths, forget_bias=3.0)
    assert plain.shape == (3,) and np.all(plain > 0)   # float64: nothing underflows to 0
    assert plain[0] > 10 * plain[1] > 1e3 * plain[2]     # exponential decay with T
    assert lstm_open[2] > 1e6 * plain[2]
    assert lstm_open[2] > rnn.input_gradient_norms("lstm", [50])[0]


# ====================================================================== sliding windows and forecasting

@settings(max_examples=30, deadline=None)
@given(L=st.integers(2, 60), window=st.integers(1, 20), horizon=st.integers(1, 5))
def test_make_windows_properties(L, window, horizon):
    if window + horizon > L:
        return
    series = torch.arange(L, dtype=F64) * 1.5
    X, y = rnn.make_windows(series, window, horizon)
    N = L - window - horizon + 1
    assert X.shape == (N, window) and y.shape == (N, horizon) and X.dtype == y.dtype == F64
    for k in range(N):
        assert torch.equal(X[k], series[k:k + window])
        assert torch.equal(y[k], series[k + window:k + window + horizon])
    assert y[-1, -1] == series[-1]                 # the last window ends at the last value
    assert torch.all(X[:, -1] < y[:, 0])            # each target comes after its window (increasing series)
    X[0, 0] = -1                                   # the result does not alias the input
    assert series[0] == 0


def test_train_forecaster_fits_the_scaler_on_the_training_part_only():
    series = np.concatenate([np.zeros(40), np.full(10, 1000.0)]).astype(np.float32) + np.arange(50, dtype=np.float32)
    out = rnn.train_forecaster(series, n_test=10, window=5, hidden=4, epochs=1, progress=False)
    assert out["scaler"].mean == pytest.approx(float(series[:40].mean()))
    assert out["scaler"].std == pytest.approx(float(series[:40].std()))
    pred = rnn.forecast_one_step(out["model"], out["scaler"], series, 10, 5)
    assert pred.shape == (10,)


def test_baselines_on_the_sunspots_emit_no_warnings():
    from companion import data

    s = data.load_sunspots()
    persistence = rnn.persistence_forecast(s, 60)
    assert np.array_equal(persistence, s[-61:-1])
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        arima = rnn.arima_forecast(s, 60, order=(9, 0, 0))
    assert not caught, [str(w.message) for w in caught]
    assert arima.shape == (60,)
    assert rnn.rmse(arima, s[-60:]) < rnn.rmse(persistence, s[-60:])


def test_rmse():
    assert rnn.rmse([1, 2, 3], [1, 2, 5]) == pytest.approx(np.sqrt(4 / 3))


# ====================================================================== sentiment

def test_packing_makes_padding_invisible():
    torch.manual_seed(0)
    model = rnn.SentimentRNN(vocab_size=30, embed_dim=8, hidden=5).eval()
    seqs = [[3, 4, 5, 6, 7], [8, 9], [10, 11, 12]]
    from companion import text

    ids, _ = text.pad(seqs)
    with torch.no_grad():
        batched = model(ids)
        alone = torch.cat([model(torch.tensor([s])) for s in seqs])
    torch.testing.assert_close(batched, alone, rtol=1e-5, atol=1e-6)


def test_vader_scores_the_anchor_the_chapters_print_on_all_snippets():
    """Chapters 5, 6, 9 and 11 print "VADER on all 10,568 snippets: 64.7 %" beside their models."""
    from companion import data, text

    ds = data.load_movie_snippets()
    assert len(ds) == 10_568 and ds.y.mean() > 0.45  # the neutral 37 left out; both classes present
    assert round(100 * text.vader_accuracy(ds.texts, ds.y), 1) == 64.7


def test_train_sentiment_lstm_returns_what_chapter_6_uses():
    from companion import data, text

    ds = data.load_movie_snippets()
    split = text.snippet_split(ds.y)
    out = rnn.train_sentiment_lstm(ds, split, epochs=1, seed=0, train_limit=300, hidden=8, embed_dim=8,
                                   progress=False, device=torch.device("cpu"))
    assert {"model", "vocab", "test_acc", "history"} <= set(out)
    assert 0.0 <= out["test_acc"] <= 1.0 and out["history"].epochs == 1
    probs = rnn.predict_sentiment(out["model"], out["vocab"], ["great", "awful film"])
    assert probs.shape == (2,) and np.all((probs >= 0) & (probs <= 1))


def test_sequence_classifier_shapes():
    for cell in ("rnn", "lstm", "gru"):
        for bi in (False, True):
            model = rnn.SequenceClassifier(hidden=6, n_classes=10, cell=cell, bidirectional=bi)
            assert model(torch.randn(3, 40)).shape == (3, 10)


# ====================================================================== seq2seq

def test_reversal_task_is_reversal():
    src, tgt = rnn.reversal_task(50, 7, seed=1)
    assert src.shape == tgt.shape == (50, 7) and src.dtype == torch.int64
    assert torch.equal(tgt, src.flip(1)) and int(src.max()) <= 9


def test_teacher_forced_forward_equals_stepping_the_decoder():
    torch.manual_seed(0)
    model = rnn.Seq2Seq(src_len=5, hidden=12).eval()
    src, tgt = rnn.reversal_task(4, 5, seed=2)
    with torch.no_grad():
        logits = model(rnn.teacher_forcing_input(src, tgt))        # (B, V, T)
        state, tokens, steps = model.encode(src), torch.full((4,), rnn.BOS), []
        for t in range(5):
            out, state = model.step(tokens, state)
            steps.append(out)
            tokens = tgt[:, t]
    assert logits.shape == (4, 11, 5)
    torch.testing.assert_close(logits, torch.stack(steps, dim=2), rtol=1e-5, atol=1e-6)


def test_greedy_decode_feeds_back_its_own_tokens():
    torch.manual_seed(0)
    model = rnn.Seq2Seq(src_len=4, hidden=8).eval()
    src, _ = rnn.reversal_task(3, 4, seed=3)
    pred = rnn.translate(model, src)
    with torch.no_grad():
        state, tokens = model.encode(src), torch.full((3,), rnn.BOS)
        for t in range(4):
            logits, state = model.step(tokens, state)
            tokens = logits.argmax(-1)
            assert torch.equal(pred[:, t], tokens)
    assert rnn.exact_match(pred, pred) == 1.0 and rnn.token_accuracy(pred, pred.flip(0)) <= 1.0


def test_seq2seq_learns_a_short_reversal():
    out = rnn.train_seq2seq(n_train=3000, length=3, epochs=4, hidden=32, progress=False, device=torch.device("cpu"))
    src, tgt = rnn.reversal_task(300, 3, seed=9)
    assert rnn.exact_match(rnn.translate(out["model"], src), tgt) > 0.8


# ====================================================================== checks

def _quiet(fn, *args, **kwargs):
    err = io.StringIO()
    with contextlib.redirect_stderr(err), warnings.catch_warnings():
        warnings.simplefilter("error")
        fn(*args, **kwargs)
    assert err.getvalue() == ""


@pytest.mark.parametrize("name", ["rnn_cell", "lstm_cell", "gru_cell", "make_windows", "greedy_decode"])
@pytest.mark.parametrize("hidden", [False, True])
def test_checks_pass_the_reference(name, hidden, capsys):
    reference = rnn.CELLS.get(name.removesuffix("_cell")) if name.endswith("_cell") else getattr(rnn, name)
    assert getattr(check, name)(reference, hidden=hidden) is None
    assert "\u2714" in capsys.readouterr().out


@pytest.mark.parametrize("kind", ["rnn", "lstm", "gru"])
def test_cell_checks_pass_torchs_own_cells(kind):
    def with_torch(x, state, W_ih, W_hh, b_ih, b_hh):
        H = W_hh.shape[1]
        module = TORCH_CELLS[kind](W_ih.shape[1], H).to(x.dtype)
        with torch.no_grad():
            for p, w in zip(module.parameters(), (W_ih, W_hh, b_ih, b_hh)):
                p.copy_(w)
        with torch.no_grad():
            return module(x, state)

    _quiet(getattr(check, f"{kind}_cell"), with_torch, hidden=True)


def test_checks_accept_unfold_windows_and_a_list_pair():
    _quiet(check.make_windows, lambda s, w, horizon=1: (s.unfold(0, w + horizon, 1)[:, :w],
                                                        s.unfold(0, w + horizon, 1)[:, w:]), hidden=True)
    _quiet(check.lstm_cell, lambda *a: list(rnn.lstm_cell(*a)))


def _lstm(order="ifgo", tanh_c=True, swap=False):
    def cell(x, state, W_ih, W_hh, b_ih, b_hh):
        h, c = state
        parts = dict(zip(order, (x @ W_ih.T + b_ih + h @ W_hh.T + b_hh).chunk(4, 1)))
        i, f, o = (torch.sigmoid(parts[k]) for k in "ifo")
        g = torch.tanh(parts["g"])
        c = f * c + i * g
        h = o * (torch.tanh(c) if tanh_c else c)
        return (c, h) if swap else (h, c)
    return cell


def _gru(z_swapped=False, reset_before=False):
    def cell(x, h, W_ih, W_hh, b_ih, b_hh):
        i_r, i_z, i_n = (x @ W_ih.T + b_ih).chunk(3, 1)
        W_r, W_z, W_n = W_hh.chunk(3, 0)
        b_r, b_z, b_n = b_hh.chunk(3)
        r = torch.sigmoid(i_r + h @ W_r.T + b_r)
        z = torch.sigmoid(i_z + h @ W_z.T + b_z)
        n = torch.tanh(i_n + ((r * h) @ W_n.T + b_n if reset_before else r * (h @ W_n.T + b_n)))
        return z * n + (1 - z) * h if z_swapped else (1 - z) * n + z * h
    return cell


def _windows(shift=0, end_shift=0, stop=0):
    def make(series, window, horizon=1):
        n = len(series) - window - horizon + 1 - stop
        return (torch.stack([series[k + shift:k + shift + window] for k in range(n)]),
                torch.stack([series[k + window + end_shift:k + window + end_shift + horizon] for k in range(n)]))
    return make


def _decode(feed_back=True, update=True, dim=1):
    def decode(step, state, start, steps):
        tokens, out = start, []
        for _ in range(steps):
            logits, new = step(tokens, state)
            state = new if update else state
            out.append(logits.argmax(-1))
            tokens = out[-1] if feed_back else tokens
        return torch.stack(out, dim=dim)
    return decode


WRONG = [
    ("rnn_cell", lambda x, h, Wi, Wh, bi, bh: torch.tanh(x @ Wi.T + h @ Wh.T + bi), "both biases"),
    ("rnn_cell", lambda x, h, Wi, Wh, bi, bh: torch.sigmoid(x @ Wi.T + bi + h @ Wh.T + bh), "not sigmoid"),
    ("lstm_cell", _lstm(order="ifog"), "i, f, o, g"),
    ("lstm_cell", _lstm(order="figo"), "input and forget"),
    ("lstm_cell", _lstm(tanh_c=False), "tanh on the cell state"),
    ("lstm_cell", _lstm(swap=True), "hidden state first"),
    ("gru_cell", _gru(z_swapped=True), "(1 - z) * n + z * h"),
    ("gru_cell", _gru(reset_before=True), "after"),
    ("make_windows", _windows(stop=1), "last window is missing"),
    ("make_windows", _windows(end_shift=-1), "leaks"),
    ("make_windows", _windows(shift=1), "contains its own target"),
    ("greedy_decode", _decode(feed_back=False), "next step's input"),
    ("greedy_decode", _decode(update=False), "new* state"),
    ("greedy_decode", _decode(dim=0), "dim=1"),
]


@pytest.mark.parametrize("name, wrong, hint", WRONG, ids=[f"{n}-{h}" for n, _, h in WRONG])
def test_checks_name_the_classic_mistakes(name, wrong, hint):
    with pytest.raises(CheckFailed) as info:
        getattr(check, name)(wrong, hidden=True)
    assert hint in str(info.value), str(info.value)


def test_checks_report_errors_and_missing_code_in_the_learners_terms():
    def unwritten(*args, **kwargs):
        raise NotImplementedError()

    for name in ("rnn_cell", "lstm_cell", "gru_cell", "make_windows", "greedy_decode"):
        with pytest.raises(CheckFailed, match="not written yet"):
            getattr(check, name)(unwritten)
    with pytest.raises(CheckFailed, match="shape"):
        check.rnn_cell(lambda x, h, Wi, Wh, bi, bh: torch.tanh(Wi @ x + bi))
    with pytest.raises(CheckFailed, match="in place"):
        check.rnn_cell(lambda x, h, Wi, Wh, bi, bh: torch.tanh(x @ Wi.T + bi + h.add_(0.5) @ Wh.T + bh))


def test_greedy_decode_check_wants_one_step_call_per_token():
    def extra_call(step, state, start, steps):
        step(start, state)
        return rnn.greedy_decode(step, state, start, steps)

    with pytest.raises(CheckFailed, match="once per output token"):
        check.greedy_decode(extra_call)
