"""Recurrent networks: the RNN, LSTM and GRU cells from scratch, unrolling, and the
chapter's models (sentiment, forecasting, sequence classification, seq2seq).

Shapes follow ``torch.nn``: a batch of inputs at one time step is ``x`` (B, I), a hidden
state ``h`` (B, H) (the cells also take unbatched ``(I,)`` and ``(H,)``, like PyTorch's); a
sequence is ``(B, T, I)`` (batch first). The cells take their
weights in PyTorch's own layout, so copying ``nn.RNNCell``, ``nn.LSTMCell`` or
``nn.GRUCell``'s parameters into them gives the same numbers:

==========  ================  ================  =============================
cell        ``W_ih``          ``W_hh``          gate order of the row blocks
==========  ================  ================  =============================
RNN         (H, I)            (H, H)            -
LSTM        (4H, I)           (4H, H)           input i, forget f, cell g, output o
GRU         (3H, I)           (3H, H)           reset r, update z, new n
==========  ================  ================  =============================

Contents:

- cells: :func:`rnn_cell`, :func:`lstm_cell`, :func:`gru_cell`, :func:`cell_weights`,
  :func:`unroll`, :func:`time_cell`
- gradients through time: :func:`input_gradient_norms`
- sentiment: :class:`SentimentRNN`, :func:`train_sentiment_lstm`, :func:`predict_sentiment`
- forecasting: :func:`make_windows`, :class:`Standardizer`, :class:`GRUForecaster`,
  :func:`train_forecaster`, :func:`forecast_one_step`, :func:`persistence_forecast`,
  :func:`arima_forecast`, :func:`rmse`
- sequence classification: :class:`SequenceClassifier` (MNIST-1D as 40 time steps)
- seq2seq: :func:`reversal_task`, :class:`Seq2Seq`, :func:`greedy_decode`,
  :func:`exact_match`, :func:`train_seq2seq`
"""
from __future__ import annotations

import math
import time
from typing import Callable, Sequence

import numpy as np
import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .runtime import get_device, seed_everything


# ====================================================================== cells

def _linear(x: Tensor, W: Tensor, b: Tensor | None) -> Tensor:
    """``x @ W.T + b`` (b may be None); for a batch, one fused ``torch.addmm``."""
    if b is None:
        return x @ W.T
    return torch.addmm(b, x, W.T) if x.ndim == 2 else x @ W.T + b


def _gates(x: Tensor, h: Tensor, W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None, b_hh: Tensor | None) -> Tensor:
    """All gates' pre-activations in one go: ``x @ W_ih.T + b_ih + h @ W_hh.T + b_hh``, (B, kH)."""
    return _linear(x, W_ih, b_ih) + _linear(h, W_hh, b_hh)


def rnn_cell(x: Tensor, h: Tensor, W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None, nonlinearity: str = "tanh") -> Tensor:
    """One step of a vanilla (Elman) RNN, like ``nn.RNNCell``.

    ``h' = tanh(x @ W_ih.T + b_ih + h @ W_hh.T + b_hh)``.
    x (B, I), h (B, H), W_ih (H, I), W_hh (H, H), b_ih and b_hh (H,) or None -> h' (B, H).
    """
    pre = _gates(x, h, W_ih, W_hh, b_ih, b_hh)
    return torch.tanh(pre) if nonlinearity == "tanh" else torch.relu(pre)


def lstm_cell(x: Tensor, state: tuple[Tensor, Tensor], W_ih: Tensor, W_hh: Tensor,
              b_ih: Tensor | None = None, b_hh: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """One step of an LSTM, like ``nn.LSTMCell``: returns ``(h', c')``.

    One matrix product gives all four gates' pre-activations, split in PyTorch's order
    i, f, g, o::

        i, f, o = sigmoid(.)    g = tanh(.)
        c' = f * c + i * g      h' = o * tanh(c')

    x (B, I), state = (h (B, H), c (B, H)), W_ih (4H, I), W_hh (4H, H), biases (4H,) or None.
    """
    h, c = state
    i, f, g, o = _gates(x, h, W_ih, W_hh, b_ih, b_hh).chunk(4, dim=-1)
    c = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
    return torch.sigmoid(o) * torch.tanh(c), c


def gru_cell(x: Tensor, h: Tensor, W_ih: Tensor, W_hh: Tensor, b_ih: Tensor | None = None,
             b_hh: Tensor | None = None) -> Tensor:
    """One step of a GRU, like ``nn.GRUCell``: returns h' (B, H).

    With the row blocks in PyTorch's order r, z, n::

        r = sigmoid(W_ir x + b_ir + W_hr h + b_hr)
        z = sigmoid(W_iz x + b_iz + W_hz h + b_hz)
        n = tanh(W_in x + b_in + r * (W_hn h + b_hn))
        h' = (1 - z) * n + z * h

    The reset gate multiplies the *whole* hidden term (bias included), and z close to 1
    keeps the old state. x (B, I), h (B, H), W_ih (3H, I), W_hh (3H, H), biases (3H,) or None.
    """
    gi, gh = _linear(x, W_ih, b_ih), _linear(h, W_hh, b_hh)
    i_r, i_z, i_n = gi.chunk(3, dim=-1)
    h_r, h_z, h_n = gh.chunk(3, dim=-1)
    r = torch.sigmoid(i_r + h_r)
    z = torch.sigmoid(i_z + h_z)
    n = torch.tanh(i_n + r * h_n)
    return n + z * (h - n)  # = (1 - z) * n + z * h, one operation fewer


CELLS = {"rnn": rnn_cell, "lstm": lstm_cell, "gru": gru_cell}


def cell_weights(module: nn.Module, layer: int = 0, reverse: bool = False) -> tuple[Tensor, ...]:
    """``(W_ih, W_hh, b_ih, b_hh)`` of a ``nn.*Cell``, or of one layer/direction of ``nn.RNN/LSTM/GRU``.

    Biases are None when the module was built with ``bias=False``.
    """
    if isinstance(module, nn.RNNCellBase):
        names = ("weight_ih", "weight_hh", "bias_ih", "bias_hh")
    else:
        suffix = f"_l{layer}" + ("_reverse" if reverse else "")
        names = tuple(n + suffix for n in ("weight_ih", "weight_hh", "bias_ih", "bias_hh"))
    return tuple(getattr(module, n, None) for n in names)


def unroll(cell: Callable, xs: Tensor, state, *weights: Tensor) -> tuple[Tensor, object]:
    """Run ``cell`` over a sequence: the same weights at every step (the "unrolled" network).

    cell: :func:`rnn_cell`, :func:`lstm_cell` or :func:`gru_cell`; xs (B, T, I); state:
    h (B, H), or (h, c) for the LSTM. Returns ``outputs`` (B, T, H), the hidden state after
    each step, and the final state. Autograd through this loop *is* backpropagation
    through time.
    """
    outputs = []
    for t in range(xs.shape[1]):
        state = cell(xs[:, t], state, *weights)
        outputs.append(state[0] if isinstance(state, tuple) else state)
    return torch.stack(outputs, dim=1), state


def time_cell(kind: str = "lstm", batch: int = 64, input_size: int = 64, hidden: int = 128,
              repeats: int = 10, number: int = 100, backward: bool = False) -> dict[str, float]:
    """Time one step of the from-scratch cell against ``nn.LSTMCell`` / ``nn.GRUCell`` on the CPU.

    Returns ``{"ours_us", "torch_us", "ratio"}``: the best of ``repeats`` runs of ``number``
    steps, in microseconds per step, and ours / PyTorch's (1.0 is as fast).
    ``backward=True`` times a forward and backward pass instead of a forward pass.
    """
    module = {"lstm": nn.LSTMCell, "gru": nn.GRUCell, "rnn": nn.RNNCell}[kind](input_size, hidden)
    ours = CELLS[kind]
    g = torch.Generator().manual_seed(0)
    x = torch.randn(batch, input_size, generator=g)
    h = torch.randn(batch, hidden, generator=g)
    state = (h, torch.randn(batch, hidden, generator=g)) if kind == "lstm" else h
    weights = cell_weights(module)

    def run_torch():
        out = module(x, state)
        return out[0] if isinstance(out, tuple) else out

    def run_ours():
        out = ours(x, state, *weights)
        return out[0] if isinstance(out, tuple) else out

    def block(step):
        start = time.perf_counter()
        for _ in range(number):
            step()
        return (time.perf_counter() - start) / number * 1e6

    steps = {}
    for name, fn in (("torch", run_torch), ("ours", run_ours)):
        steps[name] = (lambda fn=fn: fn().sum().backward()) if backward else fn
    t_ours, t_torch = [], []
    with torch.set_grad_enabled(backward):
        for _ in range(max(5, number // 10)):  # warm up
            steps["torch"]()
            steps["ours"]()
        # alternate the two, so that a busy machine slows both alike; keep each one's best block
        for _ in range(repeats):
            t_torch.append(block(steps["torch"]))
            t_ours.append(block(steps["ours"]))
    o, t = min(t_ours), min(t_torch)
    return {"ours_us": o, "torch_us": t, "ratio": o / t}


# ====================================================================== gradients through time

def input_gradient_norms(kind: str, lengths: Sequence[int], hidden: int = 32, input_size: int = 8,
                         batch: int = 32, seed: int = 0, forget_bias: float | None = None) -> np.ndarray:
    """How much the *first* input still matters after T steps: ``||dL/dx_1||`` for each T.

    A freshly initialised ``nn.RNN`` (tanh) or ``nn.LSTM`` (PyTorch's default init; with
    ``forget_bias`` the forget gate's bias starts at that value, as Keras's
    ``unit_forget_bias`` does with 1) reads random sequences of length T; the loss is
    the sum of the last hidden state. Computed in float64, so that tiny gradients do not
    underflow to 0. Returns (len(lengths),) float64, the gradient norm with respect to x_1,
    averaged over the batch.
    """
    norms = []
    for T in lengths:
        seed_everything(seed)
        net = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[kind](input_size, hidden, batch_first=True).double()
        if forget_bias is not None and kind == "lstm":
            with torch.no_grad():
                for name in ("bias_ih_l0", "bias_hh_l0"):
                    getattr(net, name)[hidden:2 * hidden] = forget_bias / 2
        x = torch.randn(batch, T, input_size, generator=torch.Generator().manual_seed(seed + T), dtype=torch.float64,
                        requires_grad=True)
        out, _ = net(x)
        out[:, -1].sum().backward()
        norms.append(x.grad[:, 0].norm(dim=-1).mean().item())
    return np.asarray(norms)


# ====================================================================== sentiment

class SentimentRNN(nn.Module):
    """Embedding -> (bi)LSTM over the packed sequence -> dropout -> linear, 2 logits.

    Input: ids (B, T) int64, right-padded with 0 (:func:`companion.text.encode_texts`); the
    lengths are read off the padding so the model fits ``companion.training.fit``. The
    LSTM is run on a ``PackedSequence``, so padding never enters the state; its final
    hidden states (both directions when bidirectional) feed the classifier.
    """

    def __init__(self, vocab_size: int, embed_dim: int = 64, hidden: int = 64, bidirectional: bool = True,
                 dropout: float = 0.5, cell: str = "lstm", pad_idx: int = 0):
        super().__init__()
        self.pad_idx = pad_idx
        self.embed = nn.Embedding(vocab_size, embed_dim, padding_idx=pad_idx)
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = rnn(embed_dim, hidden, batch_first=True, bidirectional=bidirectional)
        self.drop = nn.Dropout(dropout)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), 2)

    def forward(self, ids: Tensor) -> Tensor:
        lengths = (ids != self.pad_idx).sum(dim=1).clamp(min=1)
        emb = self.drop(self.embed(ids))
        packed = nn.utils.rnn.pack_padded_sequence(emb, lengths.cpu(), batch_first=True, enforce_sorted=False)
        _, state = self.rnn(packed)
        h = state[0] if isinstance(state, tuple) else state     # (layers * directions, B, H)
        last = torch.cat([h[-2], h[-1]], dim=1) if self.rnn.bidirectional else h[-1]
        return self.head(self.drop(last))


def train_sentiment_lstm(ds, split: dict, epochs: int, seed: int = 0, *, embed_dim: int = 64, hidden: int = 64,
                         bidirectional: bool = True, dropout: float = 0.5, lr: float = 3e-3,
                         batch_size: int = 64, max_len: int = 64, min_freq: int = 2,
                         train_limit: int | None = None, device=None, progress: bool = True) -> dict:
    """Train :class:`SentimentRNN` on the movie snippets; return model, vocab, test accuracy, history.

    ds: :func:`companion.data.load_movie_snippets` (texts, y); split: index arrays
    ``{"train", "val", "test"}`` (:func:`companion.text.snippet_split`). The vocabulary is
    built from the training texts only. The weights of the epoch with the best validation
    accuracy are kept. ``train_limit`` uses only the first that many training rows (fast
    mode). Returns ``dict(model=..., vocab=..., test_acc=float, val_acc=float, history=History)``.
    """
    from . import text, training

    device = device or get_device()
    seed_everything(seed)
    train_idx = np.asarray(split["train"])[:train_limit]
    texts = [ds.texts[i] for i in train_idx]
    vocab = text.Vocab(texts, min_freq=min_freq)

    def part(idx):
        ids, _ = text.encode_texts(vocab, [ds.texts[i] for i in idx], max_len=max_len)
        return ids, torch.as_tensor(ds.y[idx])

    train, val, test = part(train_idx), part(split["val"]), part(split["test"])
    model = SentimentRNN(len(vocab), embed_dim, hidden, bidirectional, dropout)
    keep_best = training.EarlyStopping(monitor="val_acc", mode="max", patience=max(epochs, 1), restore_best=True)
    history = training.fit(model, train, val, epochs=epochs, lr=lr, batch_size=batch_size, device=device,
                           callbacks=[keep_best], progress=progress, seed=seed)
    return {"model": model, "vocab": vocab, "history": history,
            "val_acc": training.evaluate(model, val, device=device)["acc"],
            "test_acc": training.evaluate(model, test, device=device)["acc"]}


@torch.no_grad()
def predict_sentiment(model: nn.Module, vocab, texts: Sequence[str], max_len: int = 64) -> np.ndarray:
    """Probability that each text is positive: (N,) float32."""
    from . import text, training

    ids, _ = text.encode_texts(vocab, list(texts), max_len=max_len)
    return torch.softmax(training.predict(model, ids), dim=-1)[:, 1].numpy()


# ====================================================================== forecasting

def make_windows(series, window: int, horizon: int = 1):
    """Sliding windows for supervised forecasting.

    series: 1-D tensor (L,). Returns ``X`` (N, window) and ``y`` (N, horizon) with
    N = L - window - horizon + 1: row k is ``X[k] = series[k : k + window]`` and
    ``y[k] = series[k + window : k + window + horizon]``, the values right after the
    window, never inside it. Same dtype and device as ``series``.
    """
    frames = series.unfold(0, window + horizon, 1)        # (N, window + horizon), a view
    return frames[:, :window].clone(), frames[:, window:].clone()


class Standardizer:
    """``(x - mean) / std`` with the statistics of the data it was ``fit`` on (the training part)."""

    def fit(self, x) -> "Standardizer":
        self.mean, self.std = float(np.mean(np.asarray(x))), float(np.std(np.asarray(x)))
        return self

    def transform(self, x):
        return (x - self.mean) / self.std

    def inverse(self, x):
        return x * self.std + self.mean


class GRUForecaster(nn.Module):
    """A GRU reads a window (B, window) one value per step; a linear layer maps its last state to (B, horizon)."""

    def __init__(self, hidden: int = 32, horizon: int = 1, layers: int = 1, dropout: float = 0.0):
        super().__init__()
        self.gru = nn.GRU(1, hidden, num_layers=layers, batch_first=True, dropout=dropout if layers > 1 else 0.0)
        self.head = nn.Linear(hidden, horizon)

    def forward(self, X: Tensor) -> Tensor:
        out, _ = self.gru(X.unsqueeze(-1))
        return self.head(out[:, -1])


def train_forecaster(series: np.ndarray, n_test: int, window: int = 12, hidden: int = 32, epochs: int = 200,
                     lr: float = 3e-3, batch_size: int = 32, n_val: int = 0, seed: int = 0, device=None,
                     progress: bool = True) -> dict:
    """Fit a :class:`GRUForecaster` on all but the last ``n_test`` values of ``series`` (L,).

    The scaler is fit on the training values only. When ``n_val`` > 0 the last ``n_val``
    training targets are held out as validation (the weights of the best validation epoch
    are kept). Returns ``dict(model, scaler, history)``.
    """
    from . import training

    device = device or get_device()
    seed_everything(seed)
    train_values = series[:len(series) - n_test]
    scaler = Standardizer().fit(train_values)
    X, y = make_windows(torch.as_tensor(scaler.transform(train_values), dtype=torch.float32), window)
    train, val, callbacks = (X, y), None, []
    if n_val:
        train, val = (X[:-n_val], y[:-n_val]), (X[-n_val:], y[-n_val:])
        callbacks = [training.EarlyStopping(monitor="val_loss", patience=epochs, restore_best=True)]
    model = GRUForecaster(hidden)
    history = training.fit(model, train, val, epochs=epochs, lr=lr, batch_size=batch_size, loss_fn=F.mse_loss,
                           device=device, callbacks=callbacks, progress=progress, seed=seed)
    return {"model": model, "scaler": scaler, "history": history}


def forecast_one_step(model: nn.Module, scaler: Standardizer, series: np.ndarray, n_test: int, window: int) -> np.ndarray:
    """One-step-ahead forecasts of the last ``n_test`` values, each from the ``window`` true values before it."""
    from . import training

    scaled = torch.as_tensor(scaler.transform(series), dtype=torch.float32)
    X, _ = make_windows(scaled, window)
    pred = training.predict(model, X[-n_test:])[:, 0].numpy()
    return scaler.inverse(pred)


def persistence_forecast(series: np.ndarray, n_test: int) -> np.ndarray:
    """The naive forecast "next year = this year" for the last ``n_test`` values."""
    return np.asarray(series[len(series) - n_test - 1:-1])


def arima_forecast(series: np.ndarray, n_test: int, order=(9, 0, 0)) -> np.ndarray:
    """statsmodels ARIMA fit on all but the last ``n_test`` values, then one-step-ahead forecasts of those.

    The fitted parameters stay fixed over the test part (``results.apply``); each forecast
    sees only the true values before it, like the GRU's. Convergence warnings of the
    optimiser are silenced (they are about the last digits of the fit, not its use here).
    """
    import warnings

    from statsmodels.tools.sm_exceptions import ConvergenceWarning, ValueWarning
    from statsmodels.tsa.arima.model import ARIMA

    series = np.asarray(series, dtype=np.float64)
    n_train = len(series) - n_test
    with warnings.catch_warnings():
        for category in (ConvergenceWarning, ValueWarning, UserWarning, RuntimeWarning):
            warnings.simplefilter("ignore", category)
        fitted = ARIMA(series[:n_train], order=order).fit()
        full = fitted.apply(series)
        return np.asarray(full.predict(start=n_train, end=len(series) - 1))


def rmse(pred, target) -> float:
    """Root mean squared error between two arrays of the same shape."""
    return float(np.sqrt(np.mean((np.asarray(pred, dtype=np.float64) - np.asarray(target, dtype=np.float64)) ** 2)))


# ====================================================================== sequence classification

class SequenceClassifier(nn.Module):
    """A recurrent classifier for signals: X (B, T) read as T steps of one value -> logits (B, C).

    ``cell`` is "gru", "lstm" or "rnn"; the last layer's final state (both directions when
    bidirectional) goes through a linear layer.
    """

    def __init__(self, hidden: int = 64, n_classes: int = 10, cell: str = "gru", layers: int = 1,
                 bidirectional: bool = False, input_size: int = 1):
        super().__init__()
        rnn = {"lstm": nn.LSTM, "gru": nn.GRU, "rnn": nn.RNN}[cell]
        self.rnn = rnn(input_size, hidden, num_layers=layers, batch_first=True, bidirectional=bidirectional)
        self.head = nn.Linear(hidden * (2 if bidirectional else 1), n_classes)

    def forward(self, X: Tensor) -> Tensor:
        _, state = self.rnn(X.unsqueeze(-1) if X.ndim == 2 else X)
        h = state[0] if isinstance(state, tuple) else state
        last = torch.cat([h[-2], h[-1]], dim=1) if self.rnn.bidirectional else h[-1]
        return self.head(last)


# ====================================================================== seq2seq

BOS = 10  # the start token of the generated digit tasks; digits are the tokens 0-9


def reversal_task(n: int, length: int = 8, seed: int = 0) -> tuple[Tensor, Tensor]:
    """Generated data (not real): random digit strings and their reversals.

    Returns ``src`` (n, length) and ``tgt`` (n, length) int64 in 0..9, with
    ``tgt = src.flip(1)``.
    """
    g = torch.Generator().manual_seed(seed)
    src = torch.randint(0, 10, (n, length), generator=g)
    return src, src.flip(1)


class Seq2Seq(nn.Module):
    """A GRU encoder-decoder without attention.

    :meth:`encode` reads the source (B, S) into a state (1, B, H); :meth:`step` takes the
    previous tokens (B,) and a state and returns the next token's logits (B, V) and the new
    state. :meth:`forward` trains with *teacher forcing*: the decoder reads the true
    previous tokens, all at once. Its input packs source and decoder input side by side,
    ``X = cat([src, tgt_in], 1)`` (B, S + T) with ``tgt_in = [BOS, y_1 .. y_{T-1}]``, so that
    :func:`companion.training.fit` can batch them; it returns logits (B, V, T), the layout
    ``F.cross_entropy`` expects with targets (B, T).
    """

    def __init__(self, vocab: int = 11, src_len: int = 8, embed_dim: int = 32, hidden: int = 128):
        super().__init__()
        self.src_len = src_len
        self.src_embed = nn.Embedding(vocab, embed_dim)
        self.tgt_embed = nn.Embedding(vocab, embed_dim)
        self.encoder = nn.GRU(embed_dim, hidden, batch_first=True)
        self.decoder = nn.GRU(embed_dim, hidden, batch_first=True)
        self.out = nn.Linear(hidden, vocab)

    def encode(self, src: Tensor) -> Tensor:
        _, h = self.encoder(self.src_embed(src))
        return h

    def step(self, tokens: Tensor, state: Tensor) -> tuple[Tensor, Tensor]:
        out, state = self.decoder(self.tgt_embed(tokens).unsqueeze(1), state)
        return self.out(out[:, 0]), state

    def forward(self, X: Tensor) -> Tensor:
        src, tgt_in = X[:, :self.src_len], X[:, self.src_len:]
        out, _ = self.decoder(self.tgt_embed(tgt_in), self.encode(src))
        return self.out(out).transpose(1, 2)


def teacher_forcing_input(src: Tensor, tgt: Tensor, bos: int = BOS) -> Tensor:
    """``cat([src, BOS, tgt[:, :-1]], 1)``: the input of :meth:`Seq2Seq.forward`, (B, S + T)."""
    start = torch.full((len(tgt), 1), bos, dtype=tgt.dtype, device=tgt.device)
    return torch.cat([src, start, tgt[:, :-1]], dim=1)


def greedy_decode(decoder_step: Callable, state, start_tokens: Tensor, steps: int) -> Tensor:
    """Greedy decoding: feed the most likely token of each step back in as the next input.

    decoder_step(tokens (B,) int64, state) -> (logits (B, V), new state); state: the
    encoder's final state (anything the step understands); start_tokens (B,) int64.
    Returns (B, steps) int64, the chosen tokens (the start token not included).
    """
    tokens, out = start_tokens, []
    for _ in range(steps):
        logits, state = decoder_step(tokens, state)
        tokens = logits.argmax(dim=-1)
        out.append(tokens)
    return torch.stack(out, dim=1)


@torch.no_grad()
def translate(model: Seq2Seq, src: Tensor, steps: int | None = None, bos: int = BOS,
              decode: Callable = greedy_decode) -> Tensor:
    """Encode ``src`` (B, S) and decode greedily (with ``decode``) for ``steps`` tokens: (B, steps)."""
    model.eval()
    device = next(model.parameters()).device
    src = src.to(device)
    start = torch.full((len(src),), bos, dtype=torch.int64, device=device)
    return decode(model.step, model.encode(src), start, steps or src.shape[1]).cpu()


def exact_match(pred: Tensor, target: Tensor) -> float:
    """Fraction of rows where every token is right: pred, target (N, T)."""
    return (pred == target).all(dim=1).float().mean().item()


def token_accuracy(pred: Tensor, target: Tensor) -> float:
    """Fraction of tokens that are right: pred, target (N, T)."""
    return (pred == target).float().mean().item()


def train_seq2seq(n_train: int, length: int = 8, epochs: int = 10, hidden: int = 128, lr: float = 3e-3,
                  batch_size: int = 64, seed: int = 0, device=None, progress: bool = True) -> dict:
    """Train :class:`Seq2Seq` with teacher forcing on :func:`reversal_task` data (Adam, cosine schedule).

    Returns ``dict(model, history)``; evaluate it with :func:`translate` on held-out
    sequences (another seed).
    """
    from . import training

    device = device or get_device()
    seed_everything(seed)
    src, tgt = reversal_task(n_train, length, seed=seed)
    model = Seq2Seq(src_len=length, hidden=hidden)
    optimizer = torch.optim.Adam(model.parameters(), lr=lr)
    scheduler = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, max(epochs, 1))
    history = training.fit(model, (teacher_forcing_input(src, tgt), tgt), epochs=epochs, optimizer=optimizer,
                           scheduler=scheduler, batch_size=batch_size, device=device, progress=progress, seed=seed)
    return {"model": model, "history": history}
