"""companion.checks (the engine): verdicts, and the messages learners get when something is wrong."""
from __future__ import annotations

import numpy as np
import pytest
import torch

from companion.checks import Case, CheckFailed, check_function, check_gradient, compare, describe, passed


def ref_double(x):
    return x * 2


def ref_relu(x):
    return torch.where(x > 0, x, torch.zeros_like(x))


CASES = [
    Case("small", (torch.tensor([-1.0, 0.0, 2.0]),)),
    Case("matrix", (torch.tensor([[1.0, -2.0], [3.0, -4.0]]),)),
]


def fail_message(fn, reference=ref_double, cases=CASES, **kwargs) -> str:
    with pytest.raises(CheckFailed) as info:
        check_function(fn, reference, cases, **kwargs)
    return str(info.value)


# ------------------------------------------------------------------ passing

def test_check_failed_is_an_assertion_error():
    assert issubclass(CheckFailed, AssertionError)


def test_correct_function_passes_with_a_verdict(capsys):
    def learner(x):
        return x + x

    assert check_function(learner, ref_double, CASES) is None
    out = capsys.readouterr().out
    lines = out.strip().splitlines()
    assert len(lines) == 1
    assert lines[0].startswith("\u2714")
    assert "ref_double" in lines[0] and "2" in lines[0]


def test_verdict_names_name_device_and_hidden(capsys):
    check_function(lambda x: x * 2, ref_double, CASES, name="double", device="cpu", hidden=True)
    line = capsys.readouterr().out.strip()
    assert line.startswith("\u2714 double")
    assert "cpu" in line and "extra" in line
    check_function(lambda x: x * 2, ref_double, CASES, quiet=True)
    assert capsys.readouterr().out == ""
    passed("thing", 3)
    assert capsys.readouterr().out.startswith("\u2714 thing")


def test_tolerance_is_respected():
    check_function(lambda x: x * 2 + 1e-9, ref_double, CASES, quiet=True)
    msg = fail_message(lambda x: x * 2 + 1e-3, rtol=1e-5, atol=1e-7)
    assert "expected" in msg


# ------------------------------------------------------------------ wrong results

def test_wrong_shape_message():
    msg = fail_message(lambda x: (x * 2).reshape(1, -1))
    assert "shape" in msg
    assert "(1, 3)" in msg and "(3,)" in msg
    assert msg.index("(1, 3)") < msg.index("expected") < msg.index("(3,)")  # got, then expected


def test_wrong_dtype_message():
    msg = fail_message(lambda x: (x * 2).double())
    assert "dtype" in msg
    assert "torch.float64" in msg and "torch.float32" in msg
    np_msg = compare(np.zeros(3, dtype=np.int64), np.zeros(3, dtype=np.float64))
    assert np_msg is not None and "dtype" in np_msg and "int64" in np_msg and "float64" in np_msg


def test_wrong_device_message_on_the_meta_device():
    """A device mismatch is reported before any value is read (meta tensors have none)."""
    msg = compare(torch.empty(3, device="meta"), torch.zeros(3))
    assert msg is not None and "meta" in msg and "cpu" in msg


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_wrong_device_message_on_cuda():
    def learner(x):
        return torch.tensor(x.tolist()) * 2  # built on the CPU, ignores x.device

    msg = fail_message(learner, device="cuda")
    assert "cpu" in msg and "cuda" in msg and "device" in msg


def test_first_differing_index_and_values():
    def learner(x):
        y = x * 2
        y[..., -1] = 99.0
        return y

    msg = fail_message(learner)
    assert "case 'small'" in msg
    assert "index (2,)" in msg
    assert "99" in msg and "expected 4" in msg
    assert "1 of 3 entries differ" in msg


def test_first_differing_index_2d():
    msg = compare(torch.tensor([[1.0, 2.0], [3.0, 5.0]]), torch.tensor([[1.0, 2.0], [3.0, 4.0]]))
    assert "index (1, 1)" in msg and "is 5" in msg and "expected 4" in msg


def test_nan_hint():
    msg = fail_message(lambda x: x * 2 / (x - x))  # 0/0 -> NaN, finite/0 -> inf
    assert "NaN" in msg
    assert "overflow" in msg or "division by zero" in msg
    # a NaN where the reference has one too is not a difference
    assert compare(torch.tensor([float("nan"), 1.0]), torch.tensor([float("nan"), 1.0])) is None


def test_mistake_hint_appended():
    hints = {
        "you returned x + 2 instead of 2 * x": lambda x: x + 2,
        "you returned x squared": lambda x: x * x,
    }
    msg = fail_message(lambda x: x * x, mistakes=hints)
    assert "Hint: you returned x squared" in msg
    assert "x + 2" not in msg
    # no known mistake matches: no hint
    assert "Hint" not in fail_message(lambda x: x * 3, mistakes=hints)


def test_mistake_model_that_raises_is_ignored():
    hints = {"broken model": lambda x: 1 / 0, "the triple": lambda x: x * 3}
    msg = fail_message(lambda x: x * 3, mistakes=hints)
    assert "Hint: the triple" in msg


def test_result_not_a_tensor():
    msg = fail_message(lambda x: (x * 2).tolist())
    assert "expected a torch tensor" in msg and "list" in msg


# ------------------------------------------------------------------ learner code that fails

def test_learner_exception_names_type_and_line():
    def learner(x):
        scale = 0
        return x * (1 / scale)  # the offending line

    msg = fail_message(learner)
    assert "ZeroDivisionError" in msg
    assert "1 / scale" in msg  # the source of the line that raised
    assert "line " in msg
    assert "case 'small'" in msg


def test_learner_exception_inside_torch_points_at_learner_line():
    def learner(x):
        return torch.matmul(x, torch.ones(5))  # shapes do not fit

    msg = fail_message(learner)
    assert "RuntimeError" in msg
    assert "torch.matmul(x, torch.ones(5))" in msg


def test_learner_assertion_error_is_reported_not_passed_through():
    def learner(x):
        assert x.ndim == 2, "only matrices"
        return x * 2

    msg = fail_message(learner)
    assert "AssertionError" in msg and "only matrices" in msg


def test_not_implemented_yet():
    def learner(x):
        raise NotImplementedError()

    msg = fail_message(learner)
    assert "not written yet" in msg
    assert "NotImplementedError" in msg


@pytest.mark.parametrize("thing", [None, 3, "relu", torch.zeros(2)])
def test_not_callable(thing):
    msg = fail_message(thing, name="relu")
    assert "`relu` should be a function" in msg
    assert describe(thing) in msg


def test_in_place_mutation_detected():
    def learner(x):
        x[x < 0] = 0  # writes into the caller's tensor
        return x

    msg = fail_message(learner, reference=ref_relu)
    assert "in place" in msg
    assert "`x`" in msg  # names the argument


def test_in_place_mutation_of_a_keyword_argument():
    def ref(x, *, scale):
        return x * scale

    def learner(x, *, scale):
        scale.mul_(1)  # harmless: no change
        x.mul_(2)
        return x

    cases = [Case("kw", (torch.ones(2),), {"scale": torch.full((2,), 2.0)})]
    assert "in place" in fail_message(learner, reference=ref, cases=cases)

    def learner_kw(x, *, scale):
        scale.add_(1)
        return x * 2

    msg = fail_message(learner_kw, reference=ref, cases=cases)
    assert "in place" in msg and "scale" in msg


def test_in_place_on_numpy_and_list_inputs():
    def ref(a):
        return np.sort(a)

    def learner(a):
        a.sort()
        return a

    assert "in place" in fail_message(learner, reference=ref, cases=[Case("np", (np.array([3, 1, 2]),))])

    def ref_list(values):
        return sorted(values)

    def learner_list(values):
        values.sort()
        return values

    assert "in place" in fail_message(learner_list, reference=ref_list, cases=[Case("l", ([3, 1, 2],))])


# ------------------------------------------------------------------ compare()

def test_compare_dicts():
    exp = {"W": np.ones(2), "b": 0.5}
    assert compare({"W": np.ones(2), "b": 0.5}, exp) is None
    missing = compare({"W": np.ones(2)}, exp)
    assert "missing" in missing and "'b'" in missing
    extra = compare({"W": np.ones(2), "b": 0.5, "c": 1}, exp)
    assert "unexpected" in extra and "'c'" in extra
    nested = compare({"W": np.array([1.0, 3.0]), "b": 0.5}, exp)
    assert "['W']" in nested and "index (1,)" in nested
    assert "dict" in compare([1, 2], exp)


def test_compare_tuples_and_lists():
    assert compare((1.0, np.zeros(2)), (1.0, np.zeros(2))) is None
    msg = compare((1.0,), (1.0, 2.0))
    assert "1 items" in msg and "expected 2" in msg
    assert "[1]" in compare((1.0, 3.0), (1.0, 2.0))
    assert "tuple" in compare(1.0, (1.0, 2.0))


def test_compare_numbers():
    assert compare(1.0, 1.0) is None
    assert compare(1.0 + 1e-9, 1.0) is None
    assert compare(2, 2.0) is None
    assert compare(np.float32(0.5), 0.5) is None
    assert compare(torch.tensor(0.5), 0.5) is None  # a one-element tensor counts as a number
    assert compare(float("nan"), float("nan")) is None
    msg = compare(1.5, 1.0)
    assert "1.5" in msg and "expected 1" in msg
    assert "number" in compare("1.0", 1.0)
    assert "number" in compare(True, 1)  # a bool is not a number here
    assert compare(1.01, 1.0, rtol=0.1) is None


def test_compare_other_scalars():
    assert compare("abc", "abc") is None
    assert compare(None, None) is None
    assert compare(True, True) is None
    assert compare(1, True) is not None
    assert compare("abd", "abc") is not None


def test_compare_numpy_dtype_leniency():
    # a float64 answer to a float32 exercise is fine, ints of any width are fine
    assert compare(np.zeros(2, np.float64), np.zeros(2, np.float32)) is None
    assert compare(np.zeros(2, np.int32), np.zeros(2, np.int64)) is None
    assert compare([0.0, 0.0], np.zeros(2)) is None
    assert "NumPy" in compare(torch.zeros(2), np.zeros(2))


def test_compare_zero_dim_arrays():
    assert compare(np.array(1.0), np.array(1.0)) is None
    msg = compare(np.array(2.0), np.array(1.0))
    assert "is 2" in msg and "expected 1" in msg and "index" not in msg


def test_compare_bfloat16():
    assert compare(torch.ones(3, dtype=torch.bfloat16), torch.ones(3, dtype=torch.bfloat16)) is None


# ------------------------------------------------------------------ check_gradient

def test_check_gradient_right_and_wrong():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 2))

    def f(v):
        return float(np.sum(np.sin(v) * v))

    right = np.cos(x) * x + np.sin(x)
    err = check_gradient(f, x, right)
    assert 0 <= err < 1e-6
    wrong = right.copy()
    wrong[2, 1] += 0.5
    with pytest.raises(CheckFailed) as info:
        check_gradient(f, x, wrong, name="dL/dx")
    msg = str(info.value)
    assert "dL/dx" in msg and "(2, 1)" in msg and "relative error" in msg
    with pytest.raises(CheckFailed, match="shape"):
        check_gradient(f, x, right.T)


def test_check_gradient_leaves_x_alone():
    x = np.array([1.0, 2.0, 3.0])
    check_gradient(lambda v: float(v @ v), x, 2 * x)
    np.testing.assert_array_equal(x, [1.0, 2.0, 3.0])


# ------------------------------------------------------------------ learner_facing

def test_learner_facing_wrapper():
    from companion import checks

    if not hasattr(checks, "learner_facing"):
        pytest.skip("companion.checks has no learner_facing")

    @checks.learner_facing
    def my_check(value):
        """doc"""
        if value == "fail":
            raise CheckFailed("the message")
        if value == "bug":
            raise KeyError("a bug in the check itself")
        return "ok"

    assert my_check.__name__ == "my_check" and my_check.__doc__ == "doc"
    assert my_check("fine") == "ok"
    with pytest.raises(CheckFailed, match="the message"):
        my_check("fail")
    with pytest.raises(KeyError):
        my_check("bug")  # not disguised as a learner's failure
