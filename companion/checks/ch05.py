"""Checks for chapter 5, Recurrent networks.

Each function takes the learner's implementation, compares it with the reference in
``companion.rnn`` (whose cells match ``nn.RNNCell``, ``nn.LSTMCell`` and ``nn.GRUCell``
with copied weights) on fixed, seeded cases, and prints a verdict or raises
:class:`CheckFailed`. ``hidden=True`` runs the extra cases that nbgrader's hidden tests
use (other shapes, float64, a batch of one, long sequences fed back step by step);
learners may run them too.
"""
from __future__ import annotations

from typing import Callable

import torch

from .. import rnn as R
from ..runtime import get_device
from .core import Case, CheckFailed, check_function, compare, learner_facing, passed, run_learner


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _cell_case(label: str, kind: str, B: int, I: int, H: int, seed: int, dtype=torch.float32) -> Case:
    """Random inputs and weights for one step of a cell; the weights have PyTorch's layout."""
    g = _gen(seed)
    k = {"rnn": 1, "lstm": 4, "gru": 3}[kind]

    def rand(*shape, scale=1.0):
        return (torch.randn(*shape, generator=g, dtype=torch.float64) * scale).to(dtype)

    x, h = rand(B, I), rand(B, H, scale=0.8).clamp(-1, 1)
    state = (h, rand(B, H, scale=1.5)) if kind == "lstm" else h
    weights = (rand(k * H, I, scale=0.6), rand(k * H, H, scale=0.6), rand(k * H, scale=0.5), rand(k * H, scale=0.5))
    return Case(label, (x, state, *weights))


def _cell_cases(kind: str, hidden: bool) -> list[Case]:
    cases = [_cell_case("batch of 3, 4 inputs, 5 hidden units", kind, 3, 4, 5, 1),
             _cell_case("batch of 8, 10 inputs, 6 hidden units", kind, 8, 10, 6, 2)]
    if hidden:
        cases += [_cell_case("float64, batch of 16, 7 inputs, 12 hidden units", kind, 16, 7, 12, 3, torch.float64),
                  _cell_case("a batch of one", kind, 1, 3, 4, 4),
                  _cell_case("as many inputs as hidden units", kind, 5, 6, 6, 5),
                  _cell_case("one input feature, 32 hidden units", kind, 4, 1, 32, 6, torch.float64)]
    return cases


def _sequence(fn: Callable, name: str, kind: str, hidden: bool, device) -> int:
    """Feed the learner's cell its own state for many steps; compare with nn.RNN / LSTM / GRU."""
    steps = 25 if hidden else 6
    g = _gen(40 + hidden)
    module = {"rnn": torch.nn.RNN, "lstm": torch.nn.LSTM, "gru": torch.nn.GRU}[kind]
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(7 + hidden)
        net = module(3, 5, batch_first=True).double().to(device)
    weights = tuple(w.detach() for w in R.cell_weights(net))
    xs = torch.randn(2, steps, 3, generator=g, dtype=torch.float64).to(device)
    h = torch.zeros(2, 5, dtype=torch.float64, device=device)
    state = (h, h.clone()) if kind == "lstm" else h
    with torch.no_grad():
        expected, _ = net(xs)
    for t in range(steps):
        label = f"step {t + 1} of a {steps}-step sequence, feeding back the state your cell returned"
        state = run_learner(fn, name, Case(label, (xs[:, t], state, *weights)), context=label)
        got = state[0] if kind == "lstm" and isinstance(state, (tuple, list)) else state
        problem = compare(got, expected[:, t], rtol=1e-6, atol=1e-9, path="the hidden state")
        if problem:
            raise CheckFailed(f"`{name}` unrolled over a sequence disagrees with torch.nn.{module.__name__} (copied"
                              f" weights, float64) at {label}: {problem}")
    return steps


def _shapes(case: Case, kind: str) -> str:
    x, state, W_ih, W_hh, b_ih, b_hh = case.args
    h, c = state if kind == "lstm" else (state, None)
    parts = [f"x {tuple(x.shape)}", f"h {tuple(h.shape)}"] + ([f"c {tuple(c.shape)}"] if c is not None else [])
    parts += [f"W_ih {tuple(W_ih.shape)}", f"W_hh {tuple(W_hh.shape)}", f"b_ih, b_hh {tuple(b_ih.shape)}", str(x.dtype)]
    return f"case '{case.label}' ({', '.join(parts)})"


def _flat(obj) -> list:
    return [t for o in obj for t in _flat(o)] if isinstance(obj, (tuple, list)) else [obj]


def _check_cell(fn, kind: str, name: str, mistakes: dict, hidden: bool, device) -> None:
    """Like :func:`check_function`, with the cell's shapes (not its numbers) naming each case."""
    device = get_device() if device is None else device
    cases = _cell_cases(kind, hidden)
    reference = R.CELLS[kind]
    for raw in cases:
        case = Case(raw.label, tuple(tuple(a.to(device) for a in arg) if isinstance(arg, tuple) else arg.to(device)
                                     for arg in raw.args))
        context = _shapes(case, kind)
        expected = reference(*case.args)
        before = [t.clone() for t in _flat(case.args)]
        got = run_learner(fn, name, case, context=context)
        if any(not torch.equal(a, b) for a, b in zip(_flat(case.args), before)):
            raise CheckFailed(f"`{name}` changed one of its inputs in place on {context}: compute new tensors"
                              " instead (in-place operations end in an underscore, like `mul_`).")
        problem = compare(got, expected, rtol=1e-4, atol=1e-5)
        if problem:
            message = f"`{name}` is not right on {context}:\n  {problem}"
            for hint, wrong in mistakes.items():
                try:
                    if compare(got, wrong(*case.args), rtol=1e-4, atol=1e-5) is None:
                        message += f"\n  Hint: {hint}"
                        break
                except Exception:  # a mistake model that does not apply to this case
                    continue
            raise CheckFailed(message)
    n = _sequence(fn, name, kind, hidden, device)
    passed(f"{name} (one step, and {n} steps against torch.nn.{'RNN' if kind == 'rnn' else kind.upper()})",
           len(cases) + n, device, hidden)


# ---------------------------------------------------------------- RNN cell

@learner_facing
def rnn_cell(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``rnn_cell(x, h, W_ih, W_hh, b_ih, b_hh)`` -> h' (B, H), like ``nn.RNNCell``."""
    def pre(x, h, W_ih, W_hh, b_ih, b_hh):
        return x @ W_ih.T + b_ih + h @ W_hh.T + b_hh

    _check_cell(fn, "rnn", "rnn_cell", {
        "the new state is tanh of the sum; it looks like tanh is missing": pre,
        "use tanh, not sigmoid, for the vanilla RNN's state": lambda *a: torch.sigmoid(pre(*a)),
        "both biases are added: b_ih and b_hh (PyTorch keeps two)":
            lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.tanh(x @ W_ih.T + h @ W_hh.T + b_ih),
        "the previous state h enters through h @ W_hh.T; it looks left out":
            lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.tanh(x @ W_ih.T + b_ih + b_hh),
        "the weights are stored (out, in): multiply by the transpose, x @ W_ih.T and h @ W_hh.T":
            lambda x, h, W_ih, W_hh, b_ih, b_hh: torch.tanh(x @ W_ih + b_ih + h @ W_hh + b_hh),
    }, hidden, device)


# ---------------------------------------------------------------- LSTM cell

def _lstm_variant(order="ifgo", tanh_c=True, g_act=torch.tanh, swap_out=False, one_bias=False, no_h=False):
    def cell(x, state, W_ih, W_hh, b_ih, b_hh):
        h, c = state
        gates = x @ W_ih.T + b_ih + (0 if no_h else h @ W_hh.T) + (0 if one_bias else b_hh)
        parts = dict(zip(order, gates.chunk(4, dim=-1)))
        i, f, g, o = torch.sigmoid(parts["i"]), torch.sigmoid(parts["f"]), g_act(parts["g"]), torch.sigmoid(parts["o"])
        c_new = f * c + i * g
        h_new = o * (torch.tanh(c_new) if tanh_c else c_new)
        return (c_new, h_new) if swap_out else (h_new, c_new)
    return cell


@learner_facing
def lstm_cell(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``lstm_cell(x, (h, c), W_ih, W_hh, b_ih, b_hh)`` -> ``(h', c')``, like ``nn.LSTMCell``."""
    _check_cell(fn, "lstm", "lstm_cell", {
        "the row blocks are in PyTorch's order i, f, g, o (input, forget, cell, output); yours"
        " looks like i, f, o, g": _lstm_variant("ifog"),
        "the row blocks are in PyTorch's order i, f, g, o; it looks like the input and forget"
        " gates are swapped": _lstm_variant("figo"),
        "the output is h' = o * tanh(c'): it looks like the tanh on the cell state is missing":
            _lstm_variant(tanh_c=False),
        "the candidate g uses tanh, not sigmoid (only i, f and o are sigmoids)":
            _lstm_variant(g_act=torch.sigmoid),
        "return (h', c') in that order, hidden state first, like nn.LSTMCell": _lstm_variant(swap_out=True),
        "both biases are added: b_ih and b_hh": _lstm_variant(one_bias=True),
        "the previous hidden state enters every gate through h @ W_hh.T; it looks left out":
            _lstm_variant(no_h=True),
    }, hidden, device)


# ---------------------------------------------------------------- GRU cell

def _gru_variant(order="rzn", keras_z=False, reset_before=False, reset_no_bias=False):
    def cell(x, h, W_ih, W_hh, b_ih, b_hh):
        gi = dict(zip(order, (x @ W_ih.T + b_ih).chunk(3, dim=-1)))
        W = dict(zip(order, W_hh.chunk(3, dim=0)))
        b = dict(zip(order, b_hh.chunk(3, dim=-1)))
        r = torch.sigmoid(gi["r"] + h @ W["r"].T + b["r"])
        z = torch.sigmoid(gi["z"] + h @ W["z"].T + b["z"])
        if reset_before:
            hn = (r * h) @ W["n"].T + b["n"]
        elif reset_no_bias:
            hn = r * (h @ W["n"].T) + b["n"]
        else:
            hn = r * (h @ W["n"].T + b["n"])
        n = torch.tanh(gi["n"] + hn)
        return z * n + (1 - z) * h if keras_z else (1 - z) * n + z * h
    return cell


@learner_facing
def gru_cell(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``gru_cell(x, h, W_ih, W_hh, b_ih, b_hh)`` -> h' (B, H), like ``nn.GRUCell``."""
    _check_cell(fn, "gru", "gru_cell", {
        "PyTorch's update is h' = (1 - z) * n + z * h (z near 1 keeps the old state); yours"
        " looks like z * n + (1 - z) * h": _gru_variant(keras_z=True),
        "the reset gate multiplies the whole hidden term, bias included: r * (h @ W_hn.T + b_hn)":
            _gru_variant(reset_no_bias=True),
        "PyTorch applies r *after* the matrix product: r * (h @ W_hn.T + b_hn), not (r * h) @ W_hn.T":
            _gru_variant(reset_before=True),
        "the row blocks are in PyTorch's order r, z, n (reset, update, new); r and z look swapped":
            _gru_variant(order="zrn"),
    }, hidden, device)


# ---------------------------------------------------------------- sliding windows

@learner_facing
def make_windows(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``make_windows(series, window, horizon=1)`` -> ``(X (N, window), y (N, horizon))``."""
    device = get_device() if device is None else device
    g = _gen(50 + hidden)
    cases = [Case("series 0, 1, ..., 9; window 3", (torch.arange(10.0), 3)),
             Case("a random series of 30 values; window 5", (torch.randn(30, generator=g), 5)),
             Case("series 0, ..., 11; window 4, horizon 2", (torch.arange(12.0), 4), {"horizon": 2})]
    if hidden:
        cases += [Case("float64 series of 100; window 12, horizon 3",
                       (torch.randn(100, generator=g, dtype=torch.float64), 12), {"horizon": 3}),
                  Case("exactly one window fits (window 7, horizon 3, 10 values)",
                       (torch.arange(10.0) * 2, 7), {"horizon": 3}),
                  Case("window 1", (torch.randn(6, generator=g), 1)),
                  Case("the sunspot series, window 12", (torch.as_tensor(_sunspot_stand_in()), 12))]

    def windows(series, window, horizon=1, *, shift=0, stop=0, end_shift=0):
        n = len(series) - window - horizon + 1 - stop
        X = torch.stack([series[k + shift:k + shift + window] for k in range(n)])
        y = torch.stack([series[k + window + end_shift:k + window + end_shift + horizon] for k in range(n)])
        return X, y

    check_function(fn, R.make_windows, cases, name="make_windows", device=device, rtol=0, atol=0, hidden=hidden,
                   mistakes={
                       "the last window is missing: N = len(series) - window - horizon + 1 (the + 1 counts"
                       " the window that ends exactly at the last target)":
                           lambda s, w, horizon=1: windows(s, w, horizon, stop=1),
                       "the target leaks into the input: y[k] starts at series[k + window], right after"
                       " X[k] = series[k : k + window]; yours overlaps the window":
                           lambda s, w, horizon=1: windows(s, w, horizon, end_shift=-1),
                       "each window is shifted one step late, so it contains its own target: X[k] should be"
                       " series[k : k + window]": lambda s, w, horizon=1: windows(s, w, horizon, shift=1),
                       "y should have shape (N, horizon), one column per future step, even for horizon 1":
                           lambda s, w, horizon=1: (lambda X, y: (X, y.squeeze(-1)))(*R.make_windows(s, w, horizon)),
                   })


def _sunspot_stand_in():
    """A sunspot-like cycle (11-year period) so the check needs no dataset; float32 (60,)."""
    t = torch.arange(60, dtype=torch.float64)
    return (80 * torch.sin(2 * torch.pi * t / 11).abs() + 5 * torch.cos(t)).float()


# ---------------------------------------------------------------- greedy decoding

class _TinyDecoder:
    """A tiny deterministic decoder step: embedding, tanh recurrence, linear read-out.

    step(tokens (B,), state) -> (logits (B, V), state); with ``lstm=True`` the state is a
    tuple ``(h, c)``. Counts its calls so the check can tell how the loop used it.
    """

    def __init__(self, vocab: int = 7, hidden: int = 6, seed: int = 0, lstm: bool = False, dtype=torch.float64):
        g = _gen(seed)
        self.E = torch.randn(vocab, hidden, generator=g, dtype=dtype) * 1.5
        self.W = torch.randn(hidden, hidden, generator=g, dtype=dtype)
        self.U = torch.randn(hidden, vocab, generator=g, dtype=dtype) * 2
        self.lstm, self.calls = lstm, 0

    def to(self, device):
        self.E, self.W, self.U = (t.to(device) for t in (self.E, self.W, self.U))
        return self

    def start_state(self, batch: int, seed: int):
        h = torch.randn(batch, self.W.shape[0], generator=_gen(seed), dtype=self.E.dtype).to(self.E.device)
        return (h, -h) if self.lstm else h

    def __call__(self, tokens: torch.Tensor, state):
        self.calls += 1
        if not isinstance(tokens, torch.Tensor) or tokens.dtype != torch.int64 or tokens.ndim != 1:
            raise TypeError(f"the step function expects tokens as a 1-d int64 tensor (B,), got "
                            f"{tuple(tokens.shape) if isinstance(tokens, torch.Tensor) else type(tokens).__name__}"
                            f"{' of ' + str(tokens.dtype) if isinstance(tokens, torch.Tensor) else ''}")
        if self.lstm:
            h, c = state
            c = 0.5 * c + torch.tanh(h @ self.W + self.E[tokens])
            h = torch.tanh(c)
            return h @ self.U, (h, c)
        h = torch.tanh(state @ self.W + self.E[tokens])
        return h @ self.U, h


def _decode_case(label: str, batch: int, steps: int, seed: int, lstm: bool = False, vocab: int = 7, device=None):
    step = _TinyDecoder(vocab, seed=seed, lstm=lstm).to(device or "cpu")
    start = torch.randint(0, vocab, (batch,), generator=_gen(seed + 100)).to(device or "cpu")
    return label, step, step.start_state(batch, seed + 200), start, steps


@learner_facing
def greedy_decode(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``greedy_decode(decoder_step, state, start_tokens, steps)`` -> (B, steps) int64."""
    device = get_device() if device is None else device
    settings = [("batch of 4, 5 steps", 4, 5, 1), ("batch of 3, 8 steps", 3, 8, 2)]
    if hidden:
        settings += [("a batch of one, 6 steps", 1, 6, 3), ("one step", 5, 1, 4),
                     ("an LSTM-style state (h, c), 7 steps", 6, 7, 5, True),
                     ("batch of 16, 20 steps", 16, 20, 6)]
    n = 0
    for label, batch, steps, seed, *lstm in settings:
        lstm = bool(lstm and lstm[0])
        _, step, state, start, _ = _decode_case(label, batch, steps, seed, lstm, device=device)
        expected = R.greedy_decode(step, state, start, steps)
        step.calls = 0
        case = Case(label, (step, state, start, steps))
        before = [t.clone() for t in (state if isinstance(state, tuple) else (state,))] + [start.clone()]
        got = run_learner(fn, "greedy_decode", case, context=f"case '{label}'")
        after = list(state if isinstance(state, tuple) else (state,)) + [start]
        if any(not torch.equal(a, b) for a, b in zip(after, before)):
            raise CheckFailed(f"`greedy_decode` on case '{label}' changed the state or the start tokens it was"
                              " given, in place: keep them as they are and use new tensors for what changes.")
        problem = compare(got, expected, rtol=0, atol=0)
        if problem:
            message = f"`greedy_decode` is not right on case '{label}':\n  {problem}"
            if isinstance(got, torch.Tensor):
                message += _decode_hint(got, step, state, start, steps)
            raise CheckFailed(message)
        if step.calls != steps:
            raise CheckFailed(f"`greedy_decode` on case '{label}' called decoder_step {step.calls} times for"
                              f" {steps} steps: call it once per output token.")
        n += 1
    # a real encoder-decoder (untrained, seeded): the loop must work with the model's own step and state
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(11 + hidden)
        model = R.Seq2Seq(src_len=6, hidden=16).to(device).eval()
    src = torch.randint(0, 10, (5, 6), generator=_gen(12 + hidden)).to(device)
    with torch.no_grad():
        state = model.encode(src)
        start = torch.full((5,), R.BOS, dtype=torch.int64, device=device)
        expected = R.greedy_decode(model.step, state, start, 6)
        got = run_learner(fn, "greedy_decode", Case("Seq2Seq", (model.step, state, start, 6)),
                          context="the course's Seq2Seq model (GRU state of shape (1, B, H))")
    problem = compare(got, expected, rtol=0, atol=0)
    if problem:
        raise CheckFailed(f"`greedy_decode` with the course's Seq2Seq model (model.step, a GRU state of shape"
                          f" (1, B, H)): {problem}")
    passed("greedy_decode", n + 1, device, hidden)


def _decode_hint(got, step, state, start, steps) -> str:
    def run(feed_back=True, update=True, keep_start=False, dim=1):
        tokens, s, out = start, state, [start] if keep_start else []
        for _ in range(steps):
            logits, new = step(tokens, s)
            nxt = logits.argmax(dim=-1)
            out.append(nxt)
            s = new if update else s
            tokens = nxt if feed_back else tokens
        return torch.stack(out, dim=dim)

    candidates = {
        "each step's chosen token must be the next step's input; it looks like the start tokens"
        " are fed in at every step": dict(feed_back=False),
        "carry the state forward: pass each step's *new* state to the next call; it looks like"
        " the encoder's state is reused at every step": dict(update=False),
        "return only the generated tokens, (B, steps), without the start token": dict(keep_start=True),
        "stack the tokens along dim=1, so that row b is sequence b: (B, steps), not (steps, B)": dict(dim=0),
    }
    for hint, kw in candidates.items():
        calls = step.calls
        try:
            wrong = run(**kw)
        except Exception:
            continue
        finally:
            step.calls = calls
        if compare(got, wrong, rtol=0, atol=0) is None:
            return f"\n  Hint: {hint}"
    return ""
