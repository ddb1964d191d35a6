"""companion.activations against PyTorch's own functions and autograd, in float64."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra import numpy as hnp

from companion import activations as A

RTOL = 1e-12
# Absolute slack of a few float64 ulps of 1: covers results that are a difference of two
# numbers near 1 (1 - tanh^2, 1 - s, ...) and float64 underflow in the tails, where
# PyTorch itself flushes to 0 (e.g. torch.sigmoid(-740.) == 0, the exact value is 4e-322).
ATOL = 1e-15

finite = st.floats(-1e3, 1e3, allow_nan=False, allow_infinity=False)
# values that hit the interesting places often: 0 exactly, tiny, moderate, and +-1e3
special = st.sampled_from([0.0, -0.0, 1e-300, -1e-300, 1e-8, -1e-8, 0.5, -0.5, 1.0, -1.0,
                           5.0, -5.0, 20.0, -20.0, 40.0, -40.0, 710.0, -710.0, 1e3, -1e3])
values = st.one_of(finite, special)
shapes = hnp.array_shapes(min_dims=0, max_dims=3, min_side=1, max_side=6)
arrays64 = hnp.arrays(np.float64, shapes, elements=values)


def T(a) -> torch.Tensor:
    return torch.as_tensor(np.asarray(a, dtype=np.float64))


def leaky_ref(alpha):
    return lambda x: F.leaky_relu(x, alpha)


# name, ours, derivative, PyTorch's reference forward
PAIRS = [
    ("relu", A.relu, A.relu_grad, torch.relu),
    ("leaky_relu", A.leaky_relu, A.leaky_relu_grad, leaky_ref(0.01)),
    ("sigmoid", A.sigmoid, A.sigmoid_grad, torch.sigmoid),
    ("tanh", A.tanh, A.tanh_grad, torch.tanh),
    ("gelu", A.gelu, A.gelu_grad, lambda x: F.gelu(x, approximate="none")),
]
IDS = [p[0] for p in PAIRS]


def autograd_derivative(ref, x: torch.Tensor) -> torch.Tensor:
    """Elementwise derivative of ``ref`` at ``x`` by autograd."""
    x = x.detach().clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(ref(x).sum(), x)
    return grad


def assert_close(got, expected, rtol=RTOL, atol=ATOL):
    assert got.shape == expected.shape
    assert got.dtype == expected.dtype
    torch.testing.assert_close(got, expected, rtol=rtol, atol=atol, equal_nan=False)


# ------------------------------------------------------------------ forward vs PyTorch

@pytest.mark.parametrize("name, fn, grad, ref", PAIRS, ids=IDS)
@settings(max_examples=30, deadline=None)
@given(a=arrays64)
def test_forward_matches_torch(name, fn, grad, ref, a):
    x = T(a)
    assert_close(fn(x), ref(x))


@pytest.mark.parametrize("alpha", [0.0, 0.01, 0.2, 1.0, 3.0])
@settings(max_examples=30, deadline=None)
@given(a=arrays64)
def test_leaky_relu_any_alpha(alpha, a):
    x = T(a)
    assert_close(A.leaky_relu(x, alpha), F.leaky_relu(x, alpha))
    assert_close(A.leaky_relu_grad(x, alpha), autograd_derivative(leaky_ref(alpha), x))


def test_activations_table_matches_module():
    assert set(A.ACTIVATIONS) == {"ReLU", "Leaky ReLU", "Sigmoid", "Tanh", "GELU"}
    x = torch.linspace(-6, 6, 241, dtype=torch.float64)
    for name, (fn, grad, ref) in A.ACTIVATIONS.items():
        assert_close(fn(x), ref(x))
        assert_close(grad(x), autograd_derivative(ref, x))


# ------------------------------------------------------------------ derivatives vs autograd

@pytest.mark.parametrize("name, fn, grad, ref", PAIRS, ids=IDS)
@settings(max_examples=30, deadline=None)
@given(a=arrays64)
def test_grad_matches_autograd_of_torch(name, fn, grad, ref, a):
    x = T(a)
    assert_close(grad(x), autograd_derivative(ref, x))


@pytest.mark.parametrize("name, fn, grad, ref", PAIRS, ids=IDS)
@settings(max_examples=30, deadline=None)
@given(a=hnp.arrays(np.float64, shapes, elements=st.floats(-30, 30).filter(lambda v: v != 0)))
def test_grad_matches_autograd_of_our_forward(name, fn, grad, ref, a):
    """The derivative is the derivative of our own forward (autograd through our ops).

    Exact zeros are left out: see test_autograd_through_sigmoid_tanh_at_zero.
    """
    x = T(a)
    # our forwards are differentiable torch code, so autograd can go through them too
    assert_close(grad(x), autograd_derivative(fn, x), rtol=1e-10, atol=1e-14)


def test_kinks_follow_autograd_convention():
    x = torch.tensor([-1.0, -0.0, 0.0, 1.0], dtype=torch.float64)
    assert A.relu_grad(x).tolist() == [0.0, 0.0, 0.0, 1.0]
    assert A.leaky_relu_grad(x, 0.1).tolist() == [0.1, 0.1, 0.1, 1.0]
    zero = torch.zeros(1, dtype=torch.float64)
    assert A.relu_grad(zero).item() == autograd_derivative(torch.relu, zero).item() == 0.0
    assert A.leaky_relu_grad(zero, 0.3).item() == pytest.approx(
        autograd_derivative(leaky_ref(0.3), zero).item(), abs=0)


def test_known_values():
    x = torch.tensor([0.0], dtype=torch.float64)
    assert A.sigmoid(x).item() == 0.5
    assert A.sigmoid_grad(x).item() == 0.25
    assert A.tanh(x).item() == 0.0
    assert A.tanh_grad(x).item() == 1.0
    assert A.gelu(x).item() == 0.0
    assert A.gelu_grad(x).item() == 0.5
    one = torch.tensor([1.0], dtype=torch.float64)
    assert A.gelu(one).item() == pytest.approx(0.5 * (1 + math.erf(1 / math.sqrt(2))), rel=1e-15)


def test_saturating_functions_do_not_overflow():
    x = torch.tensor([-1e4, -1e3, -745.0, 745.0, 1e3, 1e4], dtype=torch.float64)
    for fn in (A.sigmoid, A.sigmoid_grad, A.tanh, A.tanh_grad, A.gelu, A.gelu_grad):
        assert torch.isfinite(fn(x)).all(), fn.__name__
    assert A.sigmoid(x).tolist()[-1] == 1.0 and A.sigmoid(x).tolist()[0] == 0.0
    assert A.tanh(x).tolist()[-1] == 1.0 and A.tanh(x).tolist()[0] == -1.0
    # float32 overflows exp much earlier (~88): still fine
    x32 = torch.tensor([-1e4, -100.0, 100.0, 1e4])
    assert torch.isfinite(A.sigmoid(x32)).all() and torch.isfinite(A.tanh(x32)).all()
    assert_close(A.sigmoid(x32), torch.sigmoid(x32), rtol=1e-6, atol=1e-7)


def test_tanh_relative_accuracy_near_zero():
    x = torch.tensor([1e-20, 1e-10, 1e-5, -1e-10], dtype=torch.float64)
    torch.testing.assert_close(A.tanh(x), torch.tanh(x), rtol=1e-12, atol=0)


@pytest.mark.parametrize("fn, expected", [(A.sigmoid, 0.25), (A.tanh, 1.0)], ids=["sigmoid", "tanh"])
def test_autograd_through_sigmoid_tanh_at_zero(fn, expected):
    x = torch.zeros(3, dtype=torch.float64)
    assert autograd_derivative(fn, x).tolist() == [expected] * 3


def test_relu_propagates_nan():
    x = torch.tensor([float("nan"), 1.0, -1.0], dtype=torch.float64)
    assert torch.isnan(A.leaky_relu(x)[0])  # the sibling function already does
    assert torch.isnan(A.relu(x)[0])


# ------------------------------------------------------------------ softmax

@settings(max_examples=30, deadline=None)
@given(a=hnp.arrays(np.float64, hnp.array_shapes(min_dims=1, max_dims=3, min_side=1, max_side=6),
                    elements=values), data=st.data())
def test_softmax_matches_torch(a, data):
    x = T(a)
    dim = data.draw(st.integers(-x.ndim, x.ndim - 1), label="dim")
    got = A.softmax(x, dim=dim)
    assert_close(got, torch.softmax(x, dim=dim))
    torch.testing.assert_close(got.sum(dim=dim), torch.ones_like(got.sum(dim=dim)), rtol=0, atol=1e-14)


def test_softmax_default_dim_is_last():
    x = torch.randn(3, 4, dtype=torch.float64)
    assert_close(A.softmax(x), torch.softmax(x, dim=-1))
    assert_close(A.naive_softmax(x), torch.softmax(x, dim=-1))


@pytest.mark.parametrize("logits", [
    [1000.0, 1001.0, 1002.0],
    [1e4, 0.0, -1e4],
    [1e4, 1e4, 1e4],
    [-1e4, -1e4 + 1, -1e4 + 2],
])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_softmax_on_huge_logits(logits, dtype):
    z = torch.tensor(logits, dtype=dtype)
    p = A.softmax(z)
    assert torch.isfinite(p).all()
    assert p.sum().item() == pytest.approx(1.0, abs=1e-6 if dtype == torch.float32 else 1e-15)
    tol = dict(rtol=1e-6, atol=1e-7) if dtype == torch.float32 else dict(rtol=RTOL, atol=ATOL)
    assert_close(p, torch.softmax(z, -1), **tol)


@pytest.mark.parametrize("logits", [[1000.0, 1001.0, 1002.0], [1e4, 0.0, -1e4]])
def test_naive_softmax_overflows(logits):
    z = torch.tensor(logits, dtype=torch.float64)
    assert torch.isnan(A.naive_softmax(z)).any()


def test_softmax_shift_invariance():
    z = torch.randn(5, 7, dtype=torch.float64)
    assert_close(A.softmax(z + 1e3), A.softmax(z), rtol=1e-10, atol=1e-15)


# ------------------------------------------------------------------ dtype, device, shape

ALL_FUNCS = [A.relu, A.relu_grad, A.leaky_relu, A.leaky_relu_grad, A.sigmoid, A.sigmoid_grad,
             A.tanh, A.tanh_grad, A.gelu, A.gelu_grad, A.softmax, A.naive_softmax]


def _devices():
    devs = ["cpu"]
    if torch.cuda.is_available():
        devs.append(pytest.param("cuda", marks=pytest.mark.cuda))
    return devs


@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("device", _devices())
@pytest.mark.parametrize("shape", [(), (7,), (2, 3), (2, 3, 4)], ids=str)
def test_dtype_device_shape_preserved(fn, dtype, device, shape):
    if fn in (A.softmax, A.naive_softmax) and shape == ():
        shape = (1,)
    x = torch.randn(shape, dtype=dtype, device=device)
    out = fn(x)
    assert out.shape == x.shape
    assert out.dtype == dtype
    assert out.device == x.device


@pytest.mark.parametrize("name, fn, grad, ref", PAIRS, ids=IDS)
def test_float32_matches_torch(name, fn, grad, ref):
    x = torch.linspace(-10, 10, 1001, dtype=torch.float32)
    torch.testing.assert_close(fn(x), ref(x), rtol=1e-6, atol=1e-6)
    torch.testing.assert_close(grad(x), autograd_derivative(ref, x), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("fn", ALL_FUNCS, ids=lambda f: f.__name__)
def test_input_not_modified(fn):
    x = torch.randn(4, 5, dtype=torch.float64)
    before = x.clone()
    fn(x)
    assert torch.equal(x, before)


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("name, fn, grad, ref", PAIRS, ids=IDS)
def test_cuda_matches_cpu(name, fn, grad, ref):
    x = torch.linspace(-20, 20, 4001, dtype=torch.float64)
    torch.testing.assert_close(fn(x.cuda()).cpu(), fn(x), rtol=1e-12, atol=1e-15)
    torch.testing.assert_close(grad(x.cuda()).cpu(), grad(x), rtol=1e-12, atol=1e-15)
