"""Checks for chapter 8, Optimization and regularization in practice.

Each function takes the learner's implementation, compares it with the references in
``companion.diagnostics`` (which match ``torch.nn.utils.clip_grad_norm_``,
``clip_grad_value_``, ``torch.nn.init`` and scikit-learn's balanced class weights), and
prints a verdict or raises :class:`CheckFailed`. ``hidden=True`` runs the extra cases
that nbgrader's hidden tests use. Every random input comes from a seeded
``torch.Generator``, so grading is deterministic.
"""
from __future__ import annotations

import copy
import math
from typing import Callable

import torch
from torch import nn
from torch.nn import functional as F

from .. import diagnostics as D
from ..runtime import get_device
from .core import Case, CheckFailed, check_function, compare, describe, learner_facing, passed, run_learner


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _device(device) -> torch.device:
    device = get_device() if device is None else device
    return torch.device(device) if isinstance(device, str) else device


# ---------------------------------------------------------------- gradient clipping

def _grad_set(label: str, shapes, seed: int, scale: float = 1.0, dtype=torch.float32, none_at=(),
              device=None) -> tuple[str, list[torch.Tensor]]:
    """Parameters (leaf tensors) with random gradients of the given shapes; ``none_at`` get no gradient."""
    g = _gen(seed)
    params = []
    for i, shape in enumerate(shapes):
        p = torch.randn(shape, generator=g, dtype=dtype).to(device).requires_grad_(True)
        if i not in none_at:
            p.grad = (torch.randn(shape, generator=g, dtype=dtype) * scale).to(device)
        params.append(p)
    return label, params


def _copy_params(params: list[torch.Tensor]) -> list[torch.Tensor]:
    out = []
    for p in params:
        q = p.detach().clone().requires_grad_(True)
        q.grad = None if p.grad is None else p.grad.detach().clone()
        out.append(q)
    return out


def _grads(params) -> list:
    return [None if p.grad is None else p.grad.detach().clone() for p in params]


def _compare_grads(got: list, expected: list, rtol: float, atol: float) -> str | None:
    for i, (a, b) in enumerate(zip(got, expected)):
        if b is None:
            if a is not None:
                return f"parameter {i} had no gradient (.grad is None) and should keep none, but now has one"
            continue
        if a is None:
            return f"the gradient of parameter {i} became None"
        problem = compare(a, b, rtol=rtol, atol=atol, path=f"the gradient of parameter {i}")
        if problem:
            return problem
    return None


def _per_parameter_norm(params, max_norm):
    for p in params:
        if p.grad is not None:
            norm = p.grad.norm()
            p.grad.mul_(torch.clamp(max_norm / (norm + 1e-6), max=1.0))
    return torch.stack([p.grad.norm() for p in params if p.grad is not None]).norm()


def _no_eps(params, max_norm):
    params = [p for p in params if p.grad is not None]
    total = torch.stack([p.grad.norm() for p in params]).norm()
    for p in params:
        p.grad.mul_(torch.clamp(max_norm / total, max=1.0))
    return total


def _always_scale(params, max_norm):
    params = [p for p in params if p.grad is not None]
    total = torch.stack([p.grad.norm() for p in params]).norm()
    for p in params:
        p.grad.mul_(max_norm / (total + 1e-6))
    return total


def _squared_total(params, max_norm):
    params = [p for p in params if p.grad is not None]
    total = sum((p.grad ** 2).sum() for p in params)
    for p in params:
        p.grad.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


def _sum_of_norms(params, max_norm):
    params = [p for p in params if p.grad is not None]
    total = sum(p.grad.norm() for p in params)
    for p in params:
        p.grad.mul_(torch.clamp(max_norm / (total + 1e-6), max=1.0))
    return total


_NORM_MISTAKES = {
    "each parameter's gradient was clipped on its own. Clip by the *global* norm: one total over all"
    " gradients, sqrt(sum of ||g||^2), and one common factor for all of them": _per_parameter_norm,
    "the total norm is a square root of the sum of squares over all gradients; yours looks like the"
    " sum of squares itself": _squared_total,
    "the global norm is sqrt(sum over parameters of ||g||^2), not the sum of the per-parameter norms":
    _sum_of_norms,
    "gradients whose norm is already below max_norm must stay as they are: the factor is"
    " min(1, max_norm / (total + 1e-6))": _always_scale,
    "add 1e-6 to the total norm before dividing (PyTorch's convention: max_norm / (total + 1e-6));"
    " it keeps an all-zero gradient finite": _no_eps,
}


@learner_facing
def clip_grad_norm(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``clip_grad_norm(parameters, max_norm) -> total_norm``: in place, like ``clip_grad_norm_``."""
    device = _device(device)
    sets = [
        (_grad_set("three tensors, total norm above max_norm", [(4, 3), (3,), (2, 3)], 1, 3.0, device=device), 1.0),
        (_grad_set("gradients already small enough", [(5, 2), (2,)], 2, 0.1, device=device), 5.0),
        (_grad_set("one parameter has no gradient (.grad is None)", [(3, 3), (3,), (4,)], 3, 2.0, none_at=(1,),
                   device=device), 0.5),
    ]
    as_generator = [0]
    if hidden:
        sets += [
            (_grad_set("float64, many tensors", [(8, 8), (8,), (8, 4), (4,), (2, 4)], 4, 5.0, torch.float64,
                       device=device), 2.0),
            (_grad_set("tiny gradients (here the +1e-6 matters)", [(6, 5), (5,)], 5, 1e-4, torch.float64,
                       device=device), 1e-5),
            (_grad_set("all gradients zero", [(3, 2), (2,)], 6, 0.0, device=device), 1.0),
            (_grad_set("a single large tensor", [(300, 200)], 7, 10.0, device=device), 3.0),
            (_grad_set("max_norm equal to the norm it would clip to", [(10,), (10,)], 8, 1.0, device=device), 100.0),
        ]
        as_generator += [3, 6]
    n = 0
    for i, ((label, params), max_norm) in enumerate(sets):
        mine, ref = _copy_params(params), _copy_params(params)
        values = [p.detach().clone() for p in mine]
        context = f"case '{label}' (max_norm = {max_norm})"
        given = (p for p in mine) if i in as_generator else mine
        if i in as_generator:
            context += ", parameters passed as a generator like model.parameters()"
        got = run_learner(fn, "clip_grad_norm", Case(label, (given, max_norm)), context=context)
        expected_total = torch.nn.utils.clip_grad_norm_(ref, max_norm)
        for p, v in zip(mine, values):
            if not torch.equal(p.detach(), v):
                raise CheckFailed(f"`clip_grad_norm` changed the parameters themselves on {context}; it should"
                                  " only scale their gradients (p.grad), leaving the values for the optimizer.")
        problem = _compare_grads(_grads(mine), _grads(ref), 1e-5, 1e-9)
        if problem is None:
            if got is None:
                raise CheckFailed(f"`clip_grad_norm` on {context} clipped correctly but returned None; return the"
                                  " total norm measured *before* clipping.")
            if isinstance(got, torch.Tensor) and got.numel() != 1:
                raise CheckFailed(f"`clip_grad_norm` on {context} returned {describe(got)}; return one number,"
                                  " the total norm before clipping (a 0-d tensor or a float).")
            problem = compare(float(got), expected_total.item(), rtol=1e-5, atol=1e-9, path="the returned total norm")
            if problem:
                after = torch.stack([q.grad.norm() for q in ref if q.grad is not None]).norm().item()
                hint = (" That is the norm *after* clipping; return the one measured before."
                        if math.isclose(float(got), after, rel_tol=1e-4) else "")
                raise CheckFailed(f"`clip_grad_norm` on {context}: {problem}{hint}")
        else:
            message = f"`clip_grad_norm` is not right on {context}:\n  {problem}"
            if i in as_generator:
                if all(torch.equal(a, b) for a, b in zip(_grads(mine), _grads(params)) if b is not None) \
                        and expected_total.item() > max_norm:
                    message += ("\n  Hint: no gradient changed. model.parameters() is a generator that can be"
                                " walked through only once: turn it into a list first, params = list(parameters).")
            for hint, wrong in _NORM_MISTAKES.items():
                trial = _copy_params(params)
                try:
                    wrong(trial, max_norm)
                except Exception:
                    continue
                if _compare_grads(_grads(mine), _grads(trial), 1e-5, 1e-9) is None:
                    message += f"\n  Hint: {hint}"
                    break
            raise CheckFailed(message)
        n += 1
    passed("clip_grad_norm (and torch.nn.utils.clip_grad_norm_)", n, device, hidden)


@learner_facing
def clip_grad_value(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``clip_grad_value(parameters, clip_value)``: clamp every gradient entry in place."""
    device = _device(device)
    sets = [
        (_grad_set("two tensors, some entries beyond the limit", [(4, 3), (3,)], 11, 2.0, device=device), 1.0),
        (_grad_set("one parameter has no gradient", [(3, 3), (5,)], 12, 1.0, none_at=(0,), device=device), 0.5),
    ]
    as_generator = [0]
    if hidden:
        sets += [
            (_grad_set("float64, limit 0.1", [(6, 6), (6,), (2, 6)], 13, 1.0, torch.float64, device=device), 0.1),
            (_grad_set("nothing to clip", [(5, 5)], 14, 0.01, device=device), 1.0),
            (_grad_set("big gradients", [(100, 50), (50,)], 15, 100.0, device=device), 3.0),
        ]
        as_generator += [2]

    def max_only(params, c):
        for p in params:
            if p.grad is not None:
                p.grad.clamp_(max=c)

    def by_norm(params, c):
        D.clip_grad_norm(params, c)

    n = 0
    for i, ((label, params), clip_value) in enumerate(sets):
        mine, ref = _copy_params(params), _copy_params(params)
        values = [p.detach().clone() for p in mine]
        context = f"case '{label}' (clip_value = {clip_value})"
        given = (p for p in mine) if i in as_generator else mine
        if i in as_generator:
            context += ", parameters passed as a generator"
        run_learner(fn, "clip_grad_value", Case(label, (given, clip_value)), context=context)
        torch.nn.utils.clip_grad_value_(ref, clip_value)
        for p, v in zip(mine, values):
            if not torch.equal(p.detach(), v):
                raise CheckFailed(f"`clip_grad_value` changed the parameters themselves on {context}; clamp"
                                  " their gradients, p.grad, instead.")
        problem = _compare_grads(_grads(mine), _grads(ref), 1e-6, 0)
        if problem:
            message = f"`clip_grad_value` is not right on {context}:\n  {problem}"
            for hint, wrong in {"clamp on both sides: every entry into [-clip_value, clip_value]": max_only,
                                "this clips by the global norm; clip_grad_value clamps each entry": by_norm}.items():
                trial = _copy_params(params)
                wrong(trial, clip_value)
                if _compare_grads(_grads(mine), _grads(trial), 1e-6, 0) is None:
                    message += f"\n  Hint: {hint}"
                    break
            raise CheckFailed(message)
        n += 1
    passed("clip_grad_value (and torch.nn.utils.clip_grad_value_)", n, device, hidden)


# ---------------------------------------------------------------- fans and initialisation

@learner_facing
def fan_in_and_fan_out(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``fan_in_and_fan_out(shape) -> (fan_in, fan_out)`` and that a 1-D shape raises ValueError."""
    shapes = [("a Linear weight (out=3, in=5)", (3, 5)),
              ("a Conv2d weight (16 out, 3 in, 5x5 kernel)", (16, 3, 5, 5)),
              ("a Conv1d weight (8 out, 4 in, kernel 3)", (8, 4, 3))]
    if hidden:
        shapes += [("a square Linear weight", (64, 64)),
                   ("a Conv3d weight", (4, 2, 3, 3, 3)),
                   ("a 1x1 convolution", (32, 16, 1, 1)),
                   ("torch.Size of a Linear weight", torch.Size([10, 784])),
                   ("one output unit", (1, 7))]
    cases = [Case(label, (shape,)) for label, shape in shapes]

    def as_tuple(shape):
        return tuple(D.fan_in_and_fan_out(shape))

    def swapped(shape):
        a, b = D.fan_in_and_fan_out(shape)
        return (b, a)

    def no_field(shape):
        return (int(shape[1]), int(shape[0]))

    def summed_field(shape):
        extra = sum(shape[2:]) if len(shape) > 2 else 1
        return (shape[1] * extra, shape[0] * extra)

    def wrapped(shape):
        out = run_learner(fn, "fan_in_and_fan_out", Case("", (shape,)), context=f"shape {tuple(shape)}")
        if isinstance(out, (tuple, list)) and len(out) == 2:
            return tuple(int(v) if isinstance(v, (int, float)) and float(v).is_integer() else v for v in out)
        return out

    check_function(wrapped, as_tuple, cases, name="fan_in_and_fan_out", rtol=0, atol=0, hidden=hidden, quiet=True,
                   mistakes={"fan_in and fan_out are swapped: a weight of shape (out, in, ...) has fan_in ="
                             " in * (kernel size) = shape[1] * ...": swapped,
                             "for a convolution, multiply by the receptive field (the product of the kernel"
                             " dimensions, shape[2:])": no_field,
                             "the receptive field is the *product* of the kernel dimensions, not their sum":
                             summed_field})
    n = len(cases)
    bias_shapes = [("a bias of shape (5,)", (5,))] + ([("a 0-d shape ()", ())] if hidden else [])
    for label, shape in bias_shapes:
        try:
            out = fn(shape)
        except ValueError:
            n += 1
            continue
        except NotImplementedError:
            run_learner(fn, "fan_in_and_fan_out", Case(label, (shape,)))
        except Exception as err:  # the wrong kind of error
            raise CheckFailed(f"`fan_in_and_fan_out` on {label} raised {type(err).__name__}: {err}; it should"
                              " raise ValueError (e.g. `raise ValueError('need at least 2 dimensions')`).") from None
        raise CheckFailed(f"`fan_in_and_fan_out` on {label} returned {out!r}; a tensor with fewer than 2"
                          " dimensions has no fan_in/fan_out, so raise ValueError (as torch.nn.init does).")
    passed("fan_in_and_fan_out", n, None, hidden)


def _init_cases(hidden: bool, device: torch.device, kaiming: bool) -> list[tuple[str, tuple, dict, torch.dtype, int]]:
    # fan_out != 2 * fan_in anywhere: there, "fans swapped" and "no gain" give the same He std
    cases = [("a Linear weight (200 out, 128 in)", (200, 128), {}, torch.float32, 1),
             ("a Conv2d weight (24, 16, 3, 3)", (24, 16, 3, 3), {}, torch.float32, 2)]
    if kaiming:
        cases += [("the Linear weight with mode='fan_out'", (200, 128), {"mode": "fan_out"}, torch.float32, 3)]
    else:
        cases += [("the Linear weight with gain 5/3 (tanh)", (200, 128), {"gain": 5 / 3}, torch.float32, 3)]
    if hidden:
        cases += [("float64, (50, 300)", (50, 300), {}, torch.float64, 4),
                  ("a Conv1d weight (8, 4, 5)", (8, 4, 5), {"mode": "fan_out"} if kaiming else {"gain": 2.0},
                   torch.float32, 5),
                  ("a tiny (2, 3) weight", (2, 3), {}, torch.float32, 6),
                  ("a 1x1 conv (48, 32, 1, 1)", (48, 32, 1, 1), {"mode": "fan_in"} if kaiming else {"gain": 0.5},
                   torch.float64, 7)]
    return cases


def _check_init(fn: Callable, name: str, reference: Callable, mistakes: dict, hidden: bool, device,
                kaiming: bool, what: str) -> None:
    device = _device(device)
    cases = _init_cases(hidden, device, kaiming)
    for label, shape, kwargs, dtype, seed in cases:
        context = f"case '{label}', {dtype}" + "".join(f", {k} = {v:.4g}" if isinstance(v, float) else f", {k} = {v!r}"
                                                      for k, v in kwargs.items())
        tensor = torch.empty(shape, dtype=dtype, device=device).fill_(12345.0)
        gen = torch.Generator(device=device).manual_seed(seed)
        got = run_learner(fn, name, Case(label, (tensor,), {**kwargs, "generator": gen}), context=context)
        expected = reference(torch.empty(shape, dtype=dtype, device=device),
                             **kwargs, generator=torch.Generator(device=device).manual_seed(seed))
        if torch.equal(tensor, torch.full_like(tensor, 12345.0)):
            if isinstance(got, torch.Tensor) and got.shape == tensor.shape:
                raise CheckFailed(f"`{name}` on {context} returned a new tensor but left `tensor` unchanged: fill it"
                                  " in place (tensor.uniform_(...) / tensor.normal_(...)) and return it.")
            raise CheckFailed(f"`{name}` on {context} did not fill `tensor`: fill it in place with"
                              " tensor.uniform_(a, b, generator=generator) or"
                              " tensor.normal_(mean, std, generator=generator).")
        if got is not tensor and not (isinstance(got, torch.Tensor) and got.shape == tensor.shape
                                      and torch.equal(got.to(tensor.device, tensor.dtype), tensor)):
            raise CheckFailed(f"`{name}` on {context} filled the tensor but returned {describe(got)}; return"
                              " `tensor` itself, as torch.nn.init does (so calls can be chained).")
        problem = compare(tensor, expected, rtol=1e-5, atol=1e-7, path="the filled tensor")
        if problem is None:
            continue
        message = f"`{name}` is not right on {context}:\n  {problem}"
        for hint, wrong in mistakes.items():
            try:
                trial = wrong(torch.empty(shape, dtype=dtype, device=device), **kwargs,
                              generator=torch.Generator(device=device).manual_seed(seed))
            except Exception:
                continue
            if compare(tensor, trial, rtol=1e-5, atol=1e-7) is None:
                message += f"\n  Hint: {hint}"
                break
        else:
            got_std, exp_std = tensor.double().std().item(), expected.double().std().item()
            if abs(got_std / exp_std - 1) < 0.05:
                message += (f"\n  Your values have the right spread (std {got_std:.4g}, expected {exp_std:.4g}) but"
                            f" are not the numbers {what} draws from the generator it is given: draw with"
                            f" tensor.{'normal_(0, std' if kaiming else 'uniform_(-bound, bound'}, generator=generator)"
                            " so that a seeded generator gives reproducible weights.")
            else:
                message += f"\n  The std of your values is {got_std:.4g}; the expected std is {exp_std:.4g}."
        raise CheckFailed(message)
    return len(cases)


@learner_facing
def xavier_uniform(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``xavier_uniform_(tensor, gain=1.0, generator=None)`` against ``torch.nn.init.xavier_uniform_``."""

    def fill(t, bound, generator):
        return t.uniform_(-bound, bound, generator=generator)

    def std_as_bound(t, gain=1.0, generator=None):
        return fill(t, D.xavier_std(t.shape, gain), generator)

    def fan_in_only(t, gain=1.0, generator=None):
        return fill(t, math.sqrt(3) * gain / math.sqrt(D.fan_in_and_fan_out(t.shape)[0]), generator)

    def no_gain(t, gain=1.0, generator=None):
        return D.xavier_uniform_(t, 1.0, generator=generator)

    def no_field(t, gain=1.0, generator=None):
        fan_in, fan_out = t.shape[1], t.shape[0]
        return fill(t, gain * math.sqrt(6 / (fan_in + fan_out)), generator)

    def no_two(t, gain=1.0, generator=None):
        fan_in, fan_out = D.fan_in_and_fan_out(t.shape)
        return fill(t, gain * math.sqrt(3 / (fan_in + fan_out)), generator)

    mistakes = {
        "the bound of a uniform on [-b, b] is sqrt(3) times its std: b = gain * sqrt(6 / (fan_in + fan_out))":
        std_as_bound,
        "Xavier averages both fans: std = gain * sqrt(2 / (fan_in + fan_out)), so b = sqrt(3) * std":
        no_two,
        "Xavier uses fan_in + fan_out, not fan_in alone (that would be LeCun's rule)": fan_in_only,
        "multiply by `gain`": no_gain,
        "for a convolution the fans include the receptive field: use fan_in_and_fan_out(tensor.shape)": no_field,
    }
    n = _check_init(fn, "xavier_uniform_", D.xavier_uniform_, mistakes, hidden, device, False,
                    "torch.nn.init.xavier_uniform_")
    passed("xavier_uniform_ (the same numbers as torch.nn.init.xavier_uniform_)", n, _device(device), hidden)


@learner_facing
def kaiming_normal(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``kaiming_normal_(tensor, mode="fan_in", generator=None)`` against ``torch.nn.init.kaiming_normal_``."""

    def normal(t, std, generator):
        return t.normal_(0.0, std, generator=generator)

    def fans(t):
        return D.fan_in_and_fan_out(t.shape)

    def no_gain(t, mode="fan_in", generator=None):
        fan = fans(t)[0 if mode == "fan_in" else 1]
        return normal(t, 1 / math.sqrt(fan), generator)

    def swapped(t, mode="fan_in", generator=None):
        fan = fans(t)[1 if mode == "fan_in" else 0]
        return normal(t, math.sqrt(2 / fan), generator)

    def no_sqrt(t, mode="fan_in", generator=None):
        fan = fans(t)[0 if mode == "fan_in" else 1]
        return normal(t, 2 / fan, generator)

    def gain_two(t, mode="fan_in", generator=None):
        fan = fans(t)[0 if mode == "fan_in" else 1]
        return normal(t, 2 / math.sqrt(fan), generator)

    def xavier(t, mode="fan_in", generator=None):
        return D.xavier_normal_(t, math.sqrt(2), generator=generator)

    def no_field(t, mode="fan_in", generator=None):
        fan = t.shape[1] if mode == "fan_in" else t.shape[0]
        return normal(t, math.sqrt(2 / fan), generator)

    mistakes = {
        "He initialisation has the gain sqrt(2) for ReLU: std = sqrt(2) / sqrt(fan), i.e. sqrt(2 / fan)": no_gain,
        "fan_in and fan_out are swapped: mode='fan_in' uses fan_in (shape[1] * receptive field)": swapped,
        "the *variance* is 2 / fan; the std is its square root, sqrt(2 / fan)": no_sqrt,
        "the gain is sqrt(2), not 2: std = sqrt(2) / sqrt(fan)": gain_two,
        "that is Xavier's fan average; He uses one fan, picked by `mode`": xavier,
        "for a convolution the fans include the receptive field: use fan_in_and_fan_out(tensor.shape)": no_field,
    }

    def reference(t, mode="fan_in", generator=None):
        return D.kaiming_normal_(t, mode=mode, nonlinearity="relu", generator=generator)

    n = _check_init(fn, "kaiming_normal_", reference, mistakes, hidden, device, True,
                    "torch.nn.init.kaiming_normal_")
    passed("kaiming_normal_ (the same numbers as torch.nn.init.kaiming_normal_)", n, _device(device), hidden)


# ---------------------------------------------------------------- learning-rate range test

def _lr_setup(seed: int, n_in: int, n_out: int, n_batches: int, batch: int, dtype, device, optimizer: str):
    g = _gen(seed)
    model = nn.Sequential(nn.Linear(n_in, 16), nn.Tanh(), nn.Linear(16, n_out)).to(dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g, dtype=dtype) * 0.5)
    model.to(device)
    centers = torch.randn(n_out, n_in, generator=g, dtype=dtype) * 2
    batches = []
    for _ in range(n_batches):
        y = torch.randint(0, n_out, (batch,), generator=g)
        X = centers[y] + torch.randn(batch, n_in, generator=g, dtype=dtype)
        batches.append((X.to(device), y.to(device)))

    def make_optimizer(params):
        if optimizer == "adam":
            return torch.optim.Adam(params, lr=1e-3)
        return torch.optim.SGD(params, lr=0.123, momentum=0.9)

    return model, make_optimizer, batches


def _lr_cases(hidden: bool):
    #        label, seed, n_in, n_out, n_batches, batch, dtype, optimizer, kwargs
    cases = [("SGD with momentum, 40 steps up to lr 30 (it diverges)", 1, 4, 3, 40, 16, torch.float32, "sgd",
              dict(lr_min=1e-4, lr_max=30.0, steps=40)),
             ("SGD with momentum, 25 steps up to lr 0.1 (no divergence)", 2, 4, 3, 25, 16, torch.float32, "sgd",
              dict(lr_min=1e-3, lr_max=0.1, steps=25)),
             ("only 7 batches for 20 steps: reuse them in turn", 3, 5, 4, 7, 8, torch.float32, "sgd",
              dict(lr_min=1e-3, lr_max=0.5, steps=20))]
    if hidden:
        cases += [("Adam, float64, 60 steps", 4, 6, 5, 60, 32, torch.float64, "adam",
                   dict(lr_min=1e-5, lr_max=10.0, steps=60)),
                  ("diverge = 2 stops sooner", 5, 4, 3, 50, 16, torch.float32, "sgd",
                   dict(lr_min=1e-4, lr_max=100.0, steps=50, diverge=2.0)),
                  ("two steps: lr_min, then lr_max", 6, 3, 2, 2, 8, torch.float64, "sgd",
                   dict(lr_min=0.01, lr_max=1.0, steps=2)),
                  ("defaults (lr_min 1e-6, lr_max 1, 100 steps) on 3 batches", 7, 4, 3, 3, 16, torch.float32,
                   "sgd", dict())]
    return cases


def _lr_variant(*, linear=False, late=False, no_zero=False, no_stop=False, vs_first=False, no_end=False,
                after=False):
    def run(model, optimizer, loss_fn, batches, lr_min=1e-6, lr_max=1.0, steps=100, diverge=4.0):
        lrs, losses, best, first = [], [], math.inf, None
        for i in range(steps):
            frac = i / steps if no_end else i / max(steps - 1, 1)
            lr = lr_min + (lr_max - lr_min) * frac if linear else lr_min * (lr_max / lr_min) ** frac
            if not late:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            X, y = batches[i % len(batches)]
            if not no_zero:
                optimizer.zero_grad()
            loss = loss_fn(model(X), y)
            loss.backward()
            optimizer.step()
            if late:
                for group in optimizer.param_groups:
                    group["lr"] = lr
            value = loss_fn(model(X), y).item() if after else loss.item()
            lrs.append(lr)
            losses.append(value)
            first = value if first is None else first
            best = min(best, value)
            if not no_stop and (not math.isfinite(value) or value > diverge * (first if vs_first else best)):
                break
        return lrs, losses
    return run


_LR_MISTAKES = {
    "the learning rate should grow *exponentially* (evenly spaced in log scale):"
    " lr_i = lr_min * (lr_max / lr_min) ** (i / (steps - 1))": _lr_variant(linear=True),
    "the last step should use exactly lr_max: the exponent is i / (steps - 1), not i / steps": _lr_variant(no_end=True),
    "set the learning rate *before* optimizer.step(); yours applies each rate one step late":
    _lr_variant(late=True),
    "zero the gradients at every step (optimizer.zero_grad()); otherwise they pile up from step to step":
    _lr_variant(no_zero=True),
    "stop right after a loss that is not finite or above diverge * the lowest loss so far":
    _lr_variant(no_stop=True),
    "compare with the lowest loss so far, not with the first loss": _lr_variant(vs_first=True),
    "record the loss computed for the step (before optimizer.step()), not a loss recomputed after it":
    _lr_variant(after=True),
}


@learner_facing
def lr_range_test(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``lr_range_test(model, optimizer, loss_fn, batches, lr_min, lr_max, steps, diverge) -> (lrs, losses)``.

    Runs the learner's loop and the reference on identical copies of a small seeded
    model, optimizer and batches; compares the learning rates, the losses, and the
    weights the two runs end with.
    """
    device = _device(device)
    n = 0
    for label, seed, n_in, n_out, n_batches, batch, dtype, opt_name, kwargs in _lr_cases(hidden):
        context = f"case '{label}'" + "".join(f", {k} = {v:g}" for k, v in kwargs.items())
        model, make_optimizer, batches = _lr_setup(seed, n_in, n_out, n_batches, batch, dtype, device, opt_name)
        ref_model = copy.deepcopy(model)
        got = run_learner(fn, "lr_range_test",
                          Case(label, (model, make_optimizer(model.parameters()), F.cross_entropy, list(batches)),
                               dict(kwargs)), context=context)
        expected = D.lr_range_test(ref_model, make_optimizer(ref_model.parameters()), F.cross_entropy, batches,
                                   **kwargs)
        if not (isinstance(got, (tuple, list)) and len(got) == 2):
            raise CheckFailed(f"`lr_range_test` on {context} returned {describe(got)}; return a pair (lrs, losses).")
        lrs, losses = ([float(v) for v in part] if isinstance(part, (list, tuple, torch.Tensor)) else part
                       for part in got)
        problem = None
        if not isinstance(lrs, list) or not isinstance(losses, list):
            raise CheckFailed(f"`lr_range_test` on {context} should return two lists of floats, got"
                              f" {describe(got[0])} and {describe(got[1])}.")
        if len(lrs) != len(losses):
            raise CheckFailed(f"`lr_range_test` on {context} returned {len(lrs)} learning rates but {len(losses)}"
                              " losses; record one of each per step.")
        if len(lrs) != len(expected[0]):
            steps = kwargs.get("steps", 100)
            why = (f"the reference stopped after {len(expected[0])} of the {steps} steps, right after a loss above"
                   f" diverge x the lowest so far" if len(expected[0]) < steps
                   else f"the reference ran all {steps} steps without diverging")
            problem = f"your loop recorded {len(lrs)} steps; {why}."
        if problem is None:
            problem = compare(lrs, expected[0], rtol=1e-9, atol=0, path="lrs")
        if problem is None:
            problem = compare(losses, expected[1], rtol=1e-4, atol=1e-6, path="losses")
        if problem is None:
            for (name, p), q in zip(model.named_parameters(), ref_model.parameters()):
                problem = compare(p.detach(), q.detach(), rtol=1e-4, atol=1e-6,
                                  path=f"the model's {name} after your loop")
                if problem:
                    break
        if problem:
            message = f"`lr_range_test` is not right on {context}:\n  {problem}"
            for hint, wrong in _LR_MISTAKES.items():
                m2, make2, b2 = _lr_setup(seed, n_in, n_out, n_batches, batch, dtype, device, opt_name)
                try:
                    trial = wrong(m2, make2(m2.parameters()), F.cross_entropy, b2, **kwargs)
                except Exception:
                    continue
                if len(trial[0]) == len(lrs) and compare(lrs, trial[0], rtol=1e-9, atol=0) is None \
                        and compare(losses, trial[1], rtol=1e-4, atol=1e-6) is None:
                    message += f"\n  Hint: {hint}"
                    break
            raise CheckFailed(message)
        n += 1
    passed("lr_range_test", n, device, hidden)


# ---------------------------------------------------------------- class weights

@learner_facing
def class_weights(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``class_weights(y, n_classes)`` -> float32 (n_classes,): n / (n_classes * count_c)."""
    device = _device(device)
    g = _gen(81 if hidden else 80)
    cases = [
        Case("labels [0, 0, 0, 1]", (torch.tensor([0, 0, 0, 1]), 2)),
        Case("3 classes, 60 / 30 / 10 examples", (torch.tensor([0] * 60 + [1] * 30 + [2] * 10), 3)),
        Case("10 classes in a shuffled order", (torch.cat([torch.arange(10).repeat(5),
                                                           torch.randint(0, 10, (40,), generator=g)])
                                                [torch.randperm(90, generator=g)], 10)),
    ]
    if hidden:
        cases += [
            Case("already balanced", (torch.arange(4).repeat(25), 4)),
            Case("a rare class 0", (torch.tensor([0] + [1] * 999), 2)),
            Case("MNIST-like imbalance", (torch.cat([torch.arange(5).repeat_interleave(32),
                                                     torch.arange(5, 10).repeat_interleave(320)]), 10)),
            Case("one class", (torch.zeros(7, dtype=torch.long), 1)),
        ]

    def inverse(y, c):
        return 1.0 / torch.bincount(y, minlength=c).float()

    def no_classes(y, c):
        return len(y) / torch.bincount(y, minlength=c).float()

    def frequency(y, c):
        return torch.bincount(y, minlength=c).float() / len(y)

    def sum_to_one(y, c):
        w = D.class_weights(y, c)
        return w / w.sum()

    def counts(y, c):
        return torch.bincount(y, minlength=c).float()

    check_function(fn, D.class_weights, cases, name="class_weights", device=device, rtol=1e-5, atol=1e-7,
                   hidden=hidden,
                   mistakes={"inverse frequency must be normalised: n_samples / (n_classes * count), so a class"
                             " with the average count gets weight 1": inverse,
                             "divide by n_classes too: n_samples / (n_classes * count)": no_classes,
                             "that is each class's frequency; the weight is its inverse, scaled: n / (C * count)":
                             frequency,
                             "don't rescale the weights to sum to 1; 'balanced' weights average 1 per example":
                             sum_to_one,
                             "those are the counts; rare classes need *large* weights": counts})
