"""companion.backprop: hand-written backpropagation against torch autograd, and gradient checks."""
from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from companion import backprop as B
from companion.backprop import (
    XOR_X,
    XOR_Y,
    backward,
    bce_loss,
    forward,
    gradient_check,
    init_params,
    loss_of,
    numerical_gradient,
    train,
)

NAMES = ("W1", "b1", "W2", "b2")


def random_problem(m, n, h, k, seed):
    rng = np.random.default_rng(seed)
    params = init_params(n, h, k, seed=seed)
    params["b1"] = rng.normal(size=(1, h)) * 0.1  # nonzero biases: no ReLU input exactly at 0
    params["b2"] = rng.normal(size=(1, k)) * 0.1
    X = rng.normal(size=(m, n))
    y = (rng.random(size=(m, k)) < 0.5).astype(np.float64)
    return params, X, y


def torch_reference(params, X, y):
    """Loss and gradients of the same network by torch autograd, in float64."""
    p = {k: torch.tensor(v, dtype=torch.float64, requires_grad=True) for k, v in params.items()}
    Xt, yt = torch.tensor(X), torch.tensor(y)
    z1 = Xt @ p["W1"] + p["b1"]
    a1 = torch.relu(z1)
    z2 = a1 @ p["W2"] + p["b2"]
    out = torch.sigmoid(z2)
    # BCE summed over the k outputs, averaged over the m examples (stable form, from logits)
    loss = torch.nn.functional.binary_cross_entropy_with_logits(z2, yt, reduction="sum") / Xt.shape[0]
    loss.backward()
    return out.detach().numpy(), loss.item(), {k: v.grad.numpy() for k, v in p.items()}


dims = st.tuples(st.integers(1, 12), st.integers(1, 6), st.integers(1, 10), st.integers(1, 3),
                 st.integers(0, 10_000))


@settings(max_examples=30, deadline=None)
@given(dims=dims)
def test_forward_backward_match_autograd(dims):
    m, n, h, k, seed = dims
    params, X, y = random_problem(m, n, h, k, seed)
    out, cache = forward(params, X)
    ref_out, ref_loss, ref_grads = torch_reference(params, X, y)
    assert out.shape == (m, k)
    assert cache["z1"].shape == cache["a1"].shape == (m, h) and cache["z2"].shape == (m, k)
    np.testing.assert_allclose(out, ref_out, rtol=1e-12, atol=1e-15)
    assert bce_loss(out, y) == pytest.approx(ref_loss, rel=1e-10, abs=1e-12)
    grads = backward(params, X, y, out, cache)
    assert set(grads) == set(NAMES)
    for name in NAMES:
        assert grads[name].shape == params[name].shape, name
        np.testing.assert_allclose(grads[name], ref_grads[name], rtol=1e-10, atol=1e-12, err_msg=name)


@settings(max_examples=15, deadline=None)
@given(dims=dims)
def test_gradient_check_passes_for_backward(dims):
    m, n, h, k, seed = dims
    params, X, y = random_problem(m, n, h, k, seed)
    out, cache = forward(params, X)
    errors = gradient_check(params, X, y, backward(params, X, y, out, cache))
    assert set(errors) == set(NAMES)
    assert max(errors.values()) < 1e-7, errors


def test_gradient_check_flags_a_wrong_gradient():
    params, X, y = random_problem(8, 3, 5, 2, seed=1)
    out, cache = forward(params, X)
    grads = backward(params, X, y, out, cache)
    wrong = dict(grads, W2=grads["W2"] * 2)  # e.g. a forgotten 1/2 or a doubled term
    errors = gradient_check(params, X, y, wrong)
    assert errors["W2"] > 1e-3
    assert errors["W1"] < 1e-7 and errors["b2"] < 1e-7


def test_gradient_check_leaves_params_alone():
    params, X, y = random_problem(6, 2, 4, 1, seed=2)
    before = {k: v.copy() for k, v in params.items()}
    out, cache = forward(params, X)
    gradient_check(params, X, y, backward(params, X, y, out, cache))
    for k in params:
        np.testing.assert_array_equal(params[k], before[k])


def test_gradient_check_on_xor_away_from_the_relu_kink():
    # With zero biases the [0, 0] row puts every hidden unit exactly on ReLU's kink, where
    # finite differences see half a slope; the notebook (and this test) shift b1 off it.
    params = init_params(2, 8, 1, seed=0)
    params["b1"] = np.full((1, 8), 0.1)
    out, cache = forward(params, XOR_X)
    errors = gradient_check(params, XOR_X, XOR_Y, backward(params, XOR_X, XOR_Y, out, cache))
    assert max(errors.values()) < 1e-7, errors


# ------------------------------------------------------------------ numerical_gradient

def test_numerical_gradient_of_simple_functions():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(3, 4))
    A = rng.normal(size=(4, 4))
    cases = [
        (lambda v: float(np.sum(v ** 2)), lambda v: 2 * v),
        (lambda v: float(np.sum(np.sin(v))), np.cos),
        (lambda v: float(np.sum(v @ A * v)), lambda v: v @ (A + A.T)),
        (lambda v: float(np.sum(np.exp(v)) + v[0, 0] * v[1, 1]),
         lambda v: np.exp(v) + _cross_term(v)),
    ]
    for f, df in cases:
        before = x.copy()
        num = numerical_gradient(f, x)
        np.testing.assert_array_equal(x, before)  # restored exactly
        assert num.shape == x.shape and num.dtype == np.float64
        np.testing.assert_allclose(num, df(x), rtol=1e-7, atol=1e-8)


def _cross_term(v):
    g = np.zeros_like(v)
    g[0, 0] = v[1, 1]
    g[1, 1] = v[0, 0]
    return g


def test_numerical_gradient_scalar_and_1d():
    x0 = np.array(1.5)
    assert numerical_gradient(lambda v: float(v ** 3), x0) == pytest.approx(3 * 1.5 ** 2, rel=1e-8)
    x1 = np.array([1.0, -2.0, 3.0])
    np.testing.assert_allclose(numerical_gradient(lambda v: float(v.prod()), x1), [-6.0, 3.0, -2.0], rtol=1e-8)
    np.testing.assert_array_equal(x1, [1.0, -2.0, 3.0])


def test_numerical_gradient_sees_the_perturbed_array():
    """f may read x directly (the docstring's promise): it gets the same array, perturbed."""
    x = np.array([2.0, 3.0])
    seen = []

    def f(v):
        seen.append(v is x)
        return float(x[0] * x[1])  # reads x, not v

    np.testing.assert_allclose(numerical_gradient(f, x), [3.0, 2.0], rtol=1e-8)
    assert all(seen)


def test_numerical_gradient_of_loss_matches_backward():
    params, X, y = random_problem(5, 3, 4, 2, seed=7)
    out, cache = forward(params, X)
    grads = backward(params, X, y, out, cache)
    for name in NAMES:
        probe = {k: v.copy() for k, v in params.items()}

        def f(v, name=name):
            probe[name] = v
            return loss_of(probe, X, y)

        np.testing.assert_allclose(numerical_gradient(f, params[name].copy(), eps=1e-6), grads[name],
                                   rtol=1e-6, atol=1e-9, err_msg=name)


# ------------------------------------------------------------------ bce_loss, init, train

def test_bce_loss_values():
    y = np.array([[1.0], [0.0]])
    assert bce_loss(np.array([[0.5], [0.5]]), y) == pytest.approx(np.log(2), rel=1e-15)
    assert bce_loss(y.copy(), y) == pytest.approx(0.0, abs=1e-11)
    assert np.isfinite(bce_loss(1 - y, y))  # clipped, not inf


def test_init_params_shapes_and_seed():
    p = init_params(3, 5, 2, seed=4, scale=2.0)
    assert {k: v.shape for k, v in p.items()} == {"W1": (3, 5), "b1": (1, 5), "W2": (5, 2), "b2": (1, 2)}
    assert not p["b1"].any() and not p["b2"].any()
    q = init_params(3, 5, 2, seed=4, scale=2.0)
    for k in p:
        np.testing.assert_array_equal(p[k], q[k])
    r = init_params(3, 5, 2, seed=4, scale=1.0)
    np.testing.assert_allclose(p["W1"], 2 * r["W1"], rtol=1e-15)


def test_sigmoid_numpy_is_stable():
    z = np.array([-1e4, -800.0, 0.0, 800.0, 1e4])
    with np.errstate(over="raise", invalid="raise", divide="raise"):
        s = B.sigmoid(z)
    np.testing.assert_allclose(s, torch.sigmoid(torch.tensor(z)).numpy(), rtol=1e-15, atol=1e-300)


def test_train_solves_xor_with_defaults():
    params = init_params(2, 8, 1, seed=0)
    before = {k: v.copy() for k, v in params.items()}
    trained, losses = train(params, XOR_X, XOR_Y)  # lr=0.5, epochs=2000
    assert len(losses) == 2000
    assert losses[-1] < 0.05
    assert losses[-1] < losses[0]
    out, _ = forward(trained, XOR_X)
    np.testing.assert_array_equal((out > 0.5).astype(int), XOR_Y.astype(int))
    for k in params:  # the input parameters are not trained in place
        np.testing.assert_array_equal(params[k], before[k])


def test_train_uses_the_given_functions():
    calls = {"forward": 0, "backward": 0}

    def fwd(p, X):
        calls["forward"] += 1
        return forward(p, X)

    def bwd(*args):
        calls["backward"] += 1
        return backward(*args)

    train(init_params(2, 4, 1), XOR_X, XOR_Y, epochs=5, forward_fn=fwd, backward_fn=bwd)
    assert calls == {"forward": 5, "backward": 5}
