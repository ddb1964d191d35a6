"""Engine of the checks: compare results, explain differences, contain learner errors."""
from __future__ import annotations

import contextlib
import copy
import functools
import inspect
import io
import math
import random
import traceback
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, Sequence

import numpy as np
import torch


class CheckFailed(AssertionError):
    """A learner's function does not do what the exercise asks; the message says why."""


@dataclass
class Case:
    """One set of inputs for a check: ``fn(*args, **kwargs)``; ``label`` names it in messages."""

    label: str
    args: tuple = ()
    kwargs: dict = field(default_factory=dict)


def learner_facing(check: Callable) -> Callable:
    """Make a check show the learner only its message, not the companion's internals.

    A :class:`CheckFailed` leaves with its traceback cut at this wrapper, whose frame
    IPython hides (``__tracebackhide__``), so the notebook shows the learner's cell line,
    one line of the companion and the message. Other exceptions (a bug in a check) keep their full traceback.
    """
    @functools.wraps(check)
    def wrapper(*args, **kwargs):
        __tracebackhide__ = True  # noqa: F841 (read by IPython and pytest)
        with _contained() as note:
            try:
                return check(*args, **kwargs)
            except CheckFailed as err:
                failure = err
            finally:
                note()
        _report(failure)
    return wrapper


_DEPTH = 0


@contextlib.contextmanager
def _contained():
    """Run a check deterministically and keep the learner's stderr and warnings off stderr.

    Inside: every random generator starts from seed 0 (and is put back afterwards, so the
    notebook's own randomness is untouched), and whatever the learner's code writes to
    stderr or warns is caught. nbgrader scores a test cell 0 when anything reaches
    stderr, even if the check passed, so a debugging print must not cost points: it is
    shown on stdout instead, by the ``note`` callback the caller runs at the end.
    """
    global _DEPTH
    if _DEPTH:  # a check calling another check: the outer one already contains it
        yield lambda: None
        return
    buffer = io.StringIO()
    caught: list = []

    def note() -> None:
        text = buffer.getvalue().strip()
        msgs = [f"{w.category.__name__}: {w.message}" for w in caught]
        if text or msgs:
            shown = "\n    ".join([*text.splitlines()[:5], *msgs[:3]])
            print(f"(note: your code wrote this to stderr or warned; it does not affect the check)\n    {shown}")

    np_state, py_state = np.random.get_state(), random.getstate()
    try:
        with torch.random.fork_rng(devices=[]), warnings.catch_warnings(record=True) as caught_now, \
                contextlib.redirect_stderr(buffer):
            warnings.simplefilter("always")
            caught = caught_now
            torch.manual_seed(0)
            np.random.seed(0)
            random.seed(0)
            _DEPTH += 1
            yield note
    finally:
        _DEPTH = max(0, _DEPTH - 1)
        np.random.set_state(np_state)
        random.setstate(py_state)


def _report(err: CheckFailed):
    # IPython always shows the last frame of a traceback; let it be this one line.
    raise err.with_traceback(None) from None  # the check did not pass: the message below says why


# ---------------------------------------------------------------- descriptions

def describe(obj: Any) -> str:
    """A short description of a value: type, shape, dtype and device where they apply."""
    if isinstance(obj, torch.Tensor):
        return f"a tensor of shape {tuple(obj.shape)}, dtype {obj.dtype}, on {obj.device}"
    if isinstance(obj, np.ndarray):
        return f"a NumPy array of shape {obj.shape}, dtype {obj.dtype}"
    if isinstance(obj, (tuple, list)):
        return f"a {type(obj).__name__} of {len(obj)} items"
    if isinstance(obj, Mapping):
        return f"a dict with keys {sorted(map(str, obj))}"
    if obj is None:
        return "None"
    return f"{type(obj).__name__} {obj!r}"


def _fmt(value: Any) -> str:
    if isinstance(value, (float, np.floating)):
        return f"{value:.6g}"
    if isinstance(value, (int, np.integer)) and not isinstance(value, bool):
        return f"{int(value):,}" if abs(int(value)) >= 10_000 else str(int(value))
    return repr(value)


def _describe_case(fn: Callable, case: Case) -> str:
    try:
        bound = inspect.signature(fn).bind_partial(*case.args, **case.kwargs)
        parts = [f"{name} = {_short(value)}" for name, value in bound.arguments.items()]
    except (TypeError, ValueError):
        parts = [_short(a) for a in case.args] + [f"{k} = {_short(v)}" for k, v in case.kwargs.items()]
    return f"case '{case.label}' ({', '.join(parts)})"


def _short(value: Any) -> str:
    if isinstance(value, (torch.Tensor, np.ndarray)):
        if value.size == 0 if isinstance(value, np.ndarray) else value.numel() == 0:
            return f"empty {type(value).__name__} of shape {tuple(value.shape)}"
        if (value.size if isinstance(value, np.ndarray) else value.numel()) <= 6:
            arr = value.detach().cpu().numpy() if isinstance(value, torch.Tensor) else value
            return " ".join(np.array2string(np.asarray(arr), precision=4, separator=", ").split())
        return f"{'tensor' if isinstance(value, torch.Tensor) else 'array'} of shape {tuple(value.shape)}"
    if callable(value):
        return getattr(value, "__name__", "a function")
    if isinstance(value, Mapping):
        return "a dict with " + ", ".join(
            f"{k} {tuple(v.shape)}" if hasattr(v, "shape") else f"{k} = {_short(v)}" for k, v in value.items())
    return _fmt(value)


# ---------------------------------------------------------------- comparison

def _as_numpy(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().cpu()
        return (x.float() if x.dtype == torch.bfloat16 else x).numpy()
    return np.asarray(x)


def _compare_arrays(got: np.ndarray, exp: np.ndarray, rtol: float, atol: float, path: str) -> str | None:
    if got.shape != exp.shape:
        return f"{path} has shape {got.shape}, expected {exp.shape}."
    if exp.dtype.kind in "fc" or got.dtype.kind in "fc":
        try:
            close = np.isclose(got.astype(np.float64), exp.astype(np.float64), rtol=rtol, atol=atol, equal_nan=True)
        except (TypeError, ValueError):
            return f"{path} holds {got.dtype} values that cannot be compared with numbers."
    else:
        close = got == exp
    if close.all():
        return None
    bad = np.argwhere(~close)
    first = tuple(int(i) for i in bad[0]) if got.ndim else ()
    g, e = got[first] if got.ndim else got, exp[first] if exp.ndim else exp
    where = f" at index {first}" if got.ndim else ""
    msg = f"{path}{where} is {_fmt(g.item() if hasattr(g, 'item') else g)}, expected {_fmt(e.item() if hasattr(e, 'item') else e)}"
    if got.ndim:
        msg += f" ({len(bad)} of {close.size} entries differ"
        with np.errstate(invalid="ignore"):
            diff = np.abs(got.astype(np.float64) - exp.astype(np.float64)) if exp.dtype.kind in "fciub" else None
        if diff is not None and np.isfinite(diff).any():
            msg += f"; largest difference {np.nanmax(np.where(np.isfinite(diff), diff, np.nan)):.3g}"
        msg += ")"
    msg += "."
    got_f = got.astype(np.float64) if got.dtype.kind in "fciub" else None
    if got_f is not None and not np.isfinite(got_f).all() and np.isfinite(exp.astype(np.float64)).all():
        msg += (" Your result contains NaN or infinity where the reference is finite: this usually"
                " means an overflow (for example exp of a large number) or a division by zero.")
    return msg


def compare(got: Any, expected: Any, *, rtol: float = 1e-5, atol: float = 1e-7, path: str = "your result") -> str | None:
    """Compare ``got`` with ``expected`` recursively; return what differs, or None when they match.

    Tensors must match in shape, dtype and device; NumPy arrays in shape and dtype;
    tuples, lists and dicts item by item; numbers within ``rtol``/``atol``.
    """
    if isinstance(expected, torch.Tensor):
        if not isinstance(got, torch.Tensor):
            return f"{path} is {describe(got)}, expected a torch tensor. Use torch operations on the input tensor."
        if got.device.type != expected.device.type:
            return (f"{path} is on {got.device}, expected {expected.device}. A new tensor made without"
                    f" `device=x.device` (or an op such as torch.tensor(...)) lands on the CPU.")
        if got.dtype != expected.dtype:
            return (f"{path} has dtype {got.dtype}, expected {expected.dtype}. Keep the input's dtype:"
                    f" build constants with the input's dtype (e.g. `torch.zeros_like(x)`) rather than new defaults.")
        return _compare_arrays(_as_numpy(got), _as_numpy(expected), rtol, atol, path)
    if isinstance(expected, np.ndarray):
        if isinstance(got, torch.Tensor):
            return f"{path} is {describe(got)}, expected a NumPy array. This exercise uses NumPy."
        got_arr = np.asarray(got)
        if got_arr.dtype != expected.dtype and not (got_arr.dtype.kind == expected.dtype.kind == "f"
                                                     and got_arr.dtype.itemsize >= expected.dtype.itemsize):
            if not (expected.dtype.kind in "iu" and got_arr.dtype.kind in "iu"):
                return f"{path} has dtype {got_arr.dtype}, expected {expected.dtype}."
        return _compare_arrays(got_arr, expected, rtol, atol, path)
    if isinstance(expected, Mapping):
        if not isinstance(got, Mapping):
            return f"{path} is {describe(got)}, expected a dict with keys {sorted(expected)}."
        missing, extra = set(expected) - set(got), set(got) - set(expected)
        if missing:
            return f"{path} is missing the key(s) {sorted(missing)}."
        if extra:
            return f"{path} has unexpected key(s) {sorted(extra)}; expected exactly {sorted(expected)}."
        for key in expected:
            problem = compare(got[key], expected[key], rtol=rtol, atol=atol, path=f"{path}[{key!r}]")
            if problem:
                return problem
        return None
    if isinstance(expected, (tuple, list)):
        if not isinstance(got, (tuple, list)):
            return f"{path} is {describe(got)}, expected a {type(expected).__name__} of {len(expected)} items."
        if len(got) != len(expected):
            return f"{path} has {len(got)} items, expected {len(expected)}."
        for i, (g, e) in enumerate(zip(got, expected)):
            problem = compare(g, e, rtol=rtol, atol=atol, path=f"{path}[{i}]")
            if problem:
                return problem
        return None
    if isinstance(expected, (bool, np.bool_)) or expected is None or isinstance(expected, str):
        if got is expected or (type(got) is type(expected) and got == expected):
            return None
        if isinstance(expected, (bool, np.bool_)) and isinstance(got, (bool, np.bool_)) and bool(got) == bool(expected):
            return None
        return f"{path} is {_short(got)}, expected {_short(expected)}."
    if isinstance(expected, (int, float, np.number)):
        if isinstance(got, (torch.Tensor, np.ndarray)) and np.asarray(_as_numpy(got)).size == 1:
            got = np.asarray(_as_numpy(got)).reshape(()).item()
        if not isinstance(got, (int, float, np.number)) or isinstance(got, bool):
            return f"{path} is {describe(got)}, expected a number like {_fmt(expected)}."
        if math.isclose(float(got), float(expected), rel_tol=rtol, abs_tol=atol) or (
                math.isnan(float(got)) and math.isnan(float(expected))):
            return None
        return f"{path} is {_fmt(got)}, expected {_fmt(expected)}."
    return None if got == expected else f"{path} is {_short(got)}, expected {_short(expected)}."


# ---------------------------------------------------------------- running learner code

def _to_device(obj: Any, device: torch.device | None) -> Any:
    if device is None:
        return obj
    if isinstance(obj, torch.Tensor):
        return obj.to(device)
    if isinstance(obj, tuple):
        return tuple(_to_device(o, device) for o in obj)
    if isinstance(obj, list):
        return [_to_device(o, device) for o in obj]
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    return obj


def _clone(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().clone()
    if isinstance(obj, (np.ndarray, list, dict, tuple)):
        return copy.deepcopy(obj)
    return obj


def _learner_line(err: BaseException) -> str:
    """The last line of the learner's own code in a traceback (a notebook cell), if any."""
    frames = traceback.extract_tb(err.__traceback__)
    mine = [f for f in frames if not any(part in f.filename.replace("\\", "/")
                                         for part in ("/companion/", "site-packages"))]
    frame = (mine or frames)[-1] if frames else None
    if frame is None or not frame.line:
        return ""
    return f" (line {frame.lineno}: `{frame.line.strip()}`)"


def run_learner(fn: Callable, name: str, case: Case, *, context: str = "") -> Any:
    """Call the learner's ``fn`` on a case; turn any exception into :class:`CheckFailed`."""
    if not callable(fn):
        raise CheckFailed(f"`{name}` should be a function, but it is {describe(fn)}.") from None
    try:
        return fn(*case.args, **case.kwargs)
    except NotImplementedError:
        raise CheckFailed(
            f"`{name}` is not written yet: it still raises NotImplementedError. Replace the line"
            f" `raise NotImplementedError()` with your code, run that cell, then run this one again."
        ) from None
    except CheckFailed:
        raise
    except Exception as err:  # the learner's own bug: report it, don't crash the check
        where = _learner_line(err)
        raise CheckFailed(
            f"`{name}` raised {type(err).__name__}: {err}{where}\n  on {context or _describe_case(fn, case)}."
        ) from None


def _check_unchanged(name: str, reference: Callable, case: Case, before: tuple, context: str) -> None:
    """Raise if the learner's function wrote into one of its arguments."""
    try:
        params = list(inspect.signature(reference).parameters)
    except (TypeError, ValueError):
        params = []
    now = list(case.args) + list(case.kwargs.values())
    then = list(before[0]) + list(before[1].values())
    names = params[:len(case.args)] + list(case.kwargs)
    for i, (arg_now, arg_then) in enumerate(zip(now, then)):
        arg = names[i] if i < len(names) else f"argument {i + 1}"
        if compare(arg_now, arg_then, rtol=0, atol=0, path=f"`{arg}`"):
            raise CheckFailed(f"`{name}` changed its input `{arg}` in place on {context}."
                              " Compute and return a new value instead of writing into the input"
                              " (in-place operations end in an underscore, like `clamp_`, or assign"
                              " into a slice, like `x[x < 0] = 0`).")


def passed(name: str, n_cases: int, device: Any = None, hidden: bool = False) -> None:
    """Print the one-line verdict of a passing check."""
    kind = "extra" if hidden else "visible"
    on = f" on {device}" if device is not None else ""
    print(f"\u2714 {name}: matches the reference on all {n_cases} {kind} case(s){on}.")


@learner_facing
def check_function(
    fn: Callable,
    reference: Callable,
    cases: Sequence[Case],
    *,
    name: str | None = None,
    device: Any = None,
    rtol: float = 1e-5,
    atol: float = 1e-7,
    mistakes: Mapping[str, Callable] | None = None,
    hidden: bool = False,
    quiet: bool = False,
) -> None:
    """Check ``fn`` against ``reference`` on every case; raise :class:`CheckFailed` at the first miss.

    Tensors in the cases are moved to ``device`` first (``None``: leave them where they
    are). ``mistakes`` maps a hint ("looks like ...") to a function reproducing that
    classic mistake: when the learner's result matches one, the hint joins the message.
    The learner's inputs must come back unchanged (no in-place edits of arguments).
    """
    name = name or getattr(reference, "__name__", "your function")
    device = torch.device(device) if isinstance(device, str) else device
    for raw in cases:
        case = Case(raw.label, _to_device(raw.args, device), _to_device(raw.kwargs, device))
        context = _describe_case(reference, case)
        expected = reference(*case.args, **case.kwargs)
        before = _clone((case.args, case.kwargs))
        got = run_learner(fn, name, case, context=context)
        _check_unchanged(name, reference, case, before, context)
        problem = compare(got, expected, rtol=rtol, atol=atol)
        if problem:
            message = f"`{name}` is not right on {context}:\n  {problem}"
            for hint, wrong in (mistakes or {}).items():
                try:
                    if compare(got, wrong(*case.args, **case.kwargs), rtol=rtol, atol=atol) is None:
                        message += f"\n  Hint: {hint}"
                        break
                except Exception:  # a mistake model that does not apply to this case
                    continue
            raise CheckFailed(message)
    if not quiet:
        passed(name, len(cases), device, hidden)


@learner_facing
def check_gradient(
    f: Callable[[np.ndarray], float],
    x: np.ndarray,
    grad: np.ndarray,
    *,
    name: str = "the gradient",
    eps: float = 1e-6,
    tol: float = 1e-6,
) -> float:
    """Compare an analytic gradient with central differences of ``f`` at ``x``.

    f: maps an array shaped like x to a float. x, grad: same shape. Returns
    :func:`companion.backprop.relative_error`; raises :class:`CheckFailed` naming the
    entry that differs most when it exceeds ``tol``.
    """
    from ..backprop import numerical_gradient, relative_error

    x = np.asarray(x, dtype=np.float64)
    grad = np.asarray(grad, dtype=np.float64)
    if grad.shape != x.shape:
        raise CheckFailed(f"{name} has shape {grad.shape}, but the parameter has shape {x.shape}.")
    num = numerical_gradient(f, x.copy(), eps=eps)
    err = relative_error(grad, num)
    if err > tol:
        worst = np.unravel_index(int(np.argmax(np.abs(grad - num))), grad.shape)
        raise CheckFailed(
            f"{name} disagrees with the numerical gradient: relative error {err:.2e} (tolerance {tol:.0e});"
            f" worst at index {tuple(int(i) for i in worst)}: analytic {grad[worst]:.6g}, numerical {num[worst]:.6g}."
        )
    return err
