"""Checks for chapter 2, Artificial neural networks.

Each function takes the learner's implementation(s), compares them with the references
in ``companion.perceptron``, ``companion.activations``, ``companion.backprop`` and
``companion.models``, and prints a verdict or raises :class:`CheckFailed`.
``hidden=True`` runs the extra cases that nbgrader's hidden tests use (more shapes,
seeds, dtypes and edge cases); learners may run them too.
"""
from __future__ import annotations

import math
from typing import Callable

import numpy as np
import torch
from torch import nn

from .. import activations as A
from .. import backprop as B
from .. import models as M
from .. import perceptron as P
from ..runtime import get_device
from .core import Case, CheckFailed, check_function, compare, learner_facing, passed, run_learner


def _tensor_cases(hidden: bool, big: float = 20.0) -> list[Case]:
    g = torch.Generator().manual_seed(2 if hidden else 1)
    cases = [
        Case("a few values around 0", (torch.tensor([-2.0, -0.5, 0.0, 0.5, 2.0]),)),
        Case("random 3x4 matrix", (torch.randn(3, 4, generator=g),)),
    ]
    if hidden:
        cases += [
            Case("float64 batch", (torch.randn(2, 3, 5, generator=g, dtype=torch.float64) * 3,)),
            Case("large magnitudes", (torch.linspace(-big, big, 11),)),
            Case("a single number", (torch.tensor(0.3),)),
            Case("exact zeros", (torch.zeros(4),)),
        ]
    return cases


def _activation(name: str, fn: Callable, grad: Callable, ref: Callable, ref_grad: Callable,
                hidden: bool, device, mistakes=None, grad_mistakes=None, kwargs=None) -> None:
    device = get_device() if device is None else device
    cases = _tensor_cases(hidden)
    if kwargs:
        cases += [Case(c.label + f" with {kwargs}", c.args, kwargs) for c in cases[:2]]
    check_function(fn, ref, cases, name=name, device=device, rtol=1e-5, atol=1e-6,
                   mistakes=mistakes, hidden=hidden, quiet=True)
    check_function(grad, ref_grad, cases, name=f"{name}_grad", device=device, rtol=1e-5, atol=1e-6,
                   mistakes=grad_mistakes, hidden=hidden, quiet=True)
    passed(f"{name} and {name}_grad", 2 * len(cases), device, hidden)


@learner_facing
def relu(fn: Callable, grad: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``relu(x)`` and ``relu_grad(x)`` (tensors in, tensors out, same shape)."""
    _activation("relu", fn, grad, A.relu, A.relu_grad, hidden, device,
                mistakes={"negative inputs should become 0, not stay as they are": lambda x: x.abs()},
                grad_mistakes={"at exactly 0 the course uses PyTorch's convention relu'(0) = 0 (use x > 0, not x >= 0)":
                               lambda x: (x >= 0).to(x.dtype),
                               "the derivative is 1 or 0, not the ReLU output itself": A.relu})


@learner_facing
def leaky_relu(fn: Callable, grad: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``leaky_relu(x, alpha=0.01)`` and ``leaky_relu_grad(x, alpha=0.01)``."""
    _activation("leaky_relu", fn, grad, A.leaky_relu, A.leaky_relu_grad, hidden, device,
                mistakes={"alpha should scale the negative side only": lambda x, alpha=0.01: torch.where(x > 0, alpha * x, x),
                          "the `alpha` argument is ignored: use it instead of a fixed 0.01":
                          lambda x, alpha=0.01: A.leaky_relu(x, 0.01)},
                grad_mistakes={"at exactly 0 the course uses PyTorch's convention: the slope there is alpha":
                               lambda x, alpha=0.01: torch.where(x >= 0, torch.ones_like(x), torch.full_like(x, alpha))},
                kwargs={"alpha": 0.2})


@learner_facing
def sigmoid(fn: Callable, grad: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``sigmoid(x)`` and ``sigmoid_grad(x)``."""
    _activation("sigmoid", fn, grad, A.sigmoid, A.sigmoid_grad, hidden, device,
                mistakes={"the sign inside exp is flipped: sigmoid(x) = 1 / (1 + exp(-x))": lambda x: A.sigmoid(-x)},
                grad_mistakes={"you returned sigmoid(x); its derivative is sigmoid(x) * (1 - sigmoid(x))": A.sigmoid,
                               "the derivative is s * (1 - s) with s = sigmoid(x), not x * (1 - x)": lambda x: x * (1 - x)})


@learner_facing
def tanh(fn: Callable, grad: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``tanh(x)`` and ``tanh_grad(x)``."""
    _activation("tanh", fn, grad, A.tanh, A.tanh_grad, hidden, device,
                grad_mistakes={"the derivative is 1 - tanh(x)**2, not 1 - x**2": lambda x: 1 - x**2,
                               "the derivative is 1 - tanh(x)**2, not 1 - tanh(x)": lambda x: 1 - A.tanh(x)})


@learner_facing
def gelu(fn: Callable, grad: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``gelu(x)`` (exact, with the normal CDF) and ``gelu_grad(x)``."""
    def tanh_approx(x):
        return 0.5 * x * (1 + torch.tanh(math.sqrt(2 / math.pi) * (x + 0.044715 * x**3)))

    _activation("gelu", fn, grad, A.gelu, A.gelu_grad, hidden, device,
                mistakes={"this is the tanh approximation of GELU; use the exact x * Phi(x), with"
                          " Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))": tanh_approx},
                grad_mistakes={"the product rule gives Phi(x) + x * phi(x); it looks like the x * phi(x) term is missing":
                               lambda x: 0.5 * (1 + torch.erf(x / math.sqrt(2)))})


@learner_facing
def softmax(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``softmax(z)`` over the last dimension, including logits that overflow exp."""
    device = get_device() if device is None else device
    g = torch.Generator().manual_seed(12 if hidden else 11)
    cases = [
        Case("three logits", (torch.tensor([2.0, 1.0, 0.1]),)),
        Case("batch of 4 rows, 5 classes", (torch.randn(4, 5, generator=g),)),
        Case("huge logits", (torch.tensor([1000.0, 1001.0, 1002.0]),)),
    ]
    if hidden:
        cases += [
            Case("very negative logits", (torch.tensor([[-1000.0, -1001.0], [-5e4, 5e4]]),)),
            Case("float64 3-d batch", (torch.randn(2, 3, 7, generator=g, dtype=torch.float64) * 30,)),
            Case("one class", (torch.randn(6, 1, generator=g),)),
            Case("equal logits", (torch.full((3, 4), 7.0),)),
        ]
    check_function(fn, A.softmax, cases, name="softmax", device=device, rtol=1e-5, atol=1e-7, hidden=hidden,
                   mistakes={"the sum runs over the wrong dimension: normalise each row (dim=-1, keepdim=True)":
                             lambda z: torch.exp(z - z.amax()) / torch.exp(z - z.amax()).sum(dim=0, keepdim=True),
                             "each row should sum to 1, not the whole tensor":
                             lambda z: torch.exp(z - z.amax()) / torch.exp(z - z.amax()).sum()})


@learner_facing
def perceptron_update(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``perceptron_update(w, b, x, y, lr)`` -> ``(new_w, new_b)`` (NumPy)."""
    w = np.array([0.5, -0.3])
    cases = [
        Case("correct prediction: nothing changes", (w, 0.1, np.array([1.0, 0.0]), 1, 0.1)),
        Case("fires but should not (y=0)", (w, 0.1, np.array([1.0, 1.0]), 0, 0.1)),
        Case("silent but should fire (y=1)", (w, -1.0, np.array([1.0, 1.0]), 1, 0.5)),
    ]
    if hidden:
        rng = np.random.default_rng(7)
        for i in range(6):
            x = rng.normal(size=5)
            cases.append(Case(f"random 5-d example {i}", (rng.normal(size=5), float(rng.normal()), x, int(i % 2), 0.05)))
        cases.append(Case("w.x + b exactly 0 predicts 0", (np.array([1.0, -1.0]), 0.0, np.array([2.0, 2.0]), 1, 1.0)))
    check_function(fn, P.perceptron_update, cases, name="perceptron_update", rtol=1e-9, atol=1e-12, hidden=hidden,
                   mistakes={"the error is y - prediction; the sign looks flipped":
                             lambda w, b, x, y, lr=0.1: tuple(2 * old - new for old, new in
                                                              zip((w, b), P.perceptron_update(w, b, x, y, lr))),
                             "the bias needs the same update as the weights: b + lr * error":
                             lambda w, b, x, y, lr=0.1: (P.perceptron_update(w, b, x, y, lr)[0], b),
                             "the step unit fires only when w.x + b > 0 (strictly)":
                             lambda w, b, x, y, lr=0.1: (w + lr * (y - int(x @ w + b >= 0)) * x, b + lr * (y - int(x @ w + b >= 0)))})


def _net_case(label: str, m: int, n: int, h: int, k: int, seed: int):
    rng = np.random.default_rng(seed)
    params = B.init_params(n, h, k, seed=seed)
    params["b1"] = rng.normal(size=(1, h)) * 0.1
    params["b2"] = rng.normal(size=(1, k)) * 0.1
    X = rng.normal(size=(m, n))
    y = (rng.random((m, k)) < 0.5).astype(np.float64)
    return label, params, X, y


def _net_cases(hidden: bool):
    xor = {**B.init_params(2, 4, 1, seed=0), "b1": np.array([[0.1, -0.2, 0.05, 0.3]])}  # no ReLU kink at 0
    cases = [("XOR with 4 hidden units", xor, B.XOR_X, B.XOR_Y),
             _net_case("random 8 examples, 3 inputs, 5 hidden", 8, 3, 5, 1, seed=1)]
    if hidden:
        cases += [_net_case("one example", 1, 4, 3, 1, seed=2),
                  _net_case("2 outputs, 16 examples", 16, 6, 7, 2, seed=3),
                  _net_case("wide hidden layer", 5, 2, 32, 1, seed=4)]
    return cases


@learner_facing
def forward(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``forward(params, X)`` -> ``(out, {"z1", "a1", "z2"})`` of the NumPy network."""
    cases = [Case(label, (params, X)) for label, params, X, _ in _net_cases(hidden)]
    check_function(fn, B.forward, cases, name="forward", rtol=1e-7, atol=1e-10, hidden=hidden,
                   mistakes={"the hidden layer needs its ReLU: a1 = max(z1, 0)":
                             lambda p, X: (B.sigmoid((X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]),
                                           {"z1": X @ p["W1"] + p["b1"], "a1": X @ p["W1"] + p["b1"],
                                            "z2": (X @ p["W1"] + p["b1"]) @ p["W2"] + p["b2"]})})


@learner_facing
def backward(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``backward(params, X, y, out, cache)`` -> gradients ``{"W1", "b1", "W2", "b2"}``.

    The cases feed the reference forward pass's ``out`` and ``cache``, so a mistake in
    your forward does not show up here twice. Hidden cases also compare with numerical
    gradients of the loss.
    """
    cases = []
    for label, params, X, y in _net_cases(hidden):
        out, cache = B.forward(params, X)
        cases.append(Case(label, (params, X, y, out, cache)))

    def unaveraged(p, X, y, out, cache):
        return {k: v * X.shape[0] for k, v in B.backward(p, X, y, out, cache).items()}

    check_function(fn, B.backward, cases, name="backward", rtol=1e-6, atol=1e-10, hidden=hidden, quiet=hidden,
                   mistakes={"the gradients are m times too large: average over the batch (divide by m)": unaveraged})
    if hidden:
        for case in cases:
            params, X, y = case.args[:3]
            grads = run_learner(fn, "backward", case)
            errors = B.gradient_check(params, X, y, grads)
            worst = max(errors, key=errors.get)
            if errors[worst] > 1e-6:
                raise CheckFailed(f"`backward` on case '{case.label}': the gradient of {worst} disagrees with the"
                                  f" numerical gradient (relative error {errors[worst]:.2e}).")
        passed("backward (with numerical gradient checks)", 2 * len(cases), hidden=True)


@learner_facing
def numerical_gradient(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``numerical_gradient(f, x, eps=1e-5)`` (central differences, x restored afterwards)."""
    def cube_sum(x):
        return float(np.sum(x**3))

    def logsumexp(x):
        return float(np.log(np.exp(x).sum()))

    def quadratic(x):
        A_ = np.arange(1, 10, dtype=np.float64).reshape(3, 3)
        return float(x.ravel() @ A_ @ x.ravel())

    rng = np.random.default_rng(21 if hidden else 20)
    cases = [Case("sum of cubes at [1, -2, 0.5]", (cube_sum, np.array([1.0, -2.0, 0.5]))),
             Case("log-sum-exp of a 2x3 array", (logsumexp, rng.normal(size=(2, 3))))]
    if hidden:
        cases += [Case("a quadratic form", (quadratic, rng.normal(size=3))),
                  Case("the XOR network's loss wrt W1",
                       (lambda W: B.loss_of({**B.init_params(2, 4, 1, seed=0), "W1": W}, B.XOR_X, B.XOR_Y),
                        B.init_params(2, 4, 1, seed=0)["W1"]))]

    def forward_diff(f, x, eps=1e-5):
        g = np.zeros_like(x)
        for i in np.ndindex(x.shape):
            old = x[i]
            x[i] = old + eps
            up = f(x)
            x[i] = old
            g[i] = (up - f(x)) / eps
        return g

    check_function(fn, B.numerical_gradient, cases, name="numerical_gradient", rtol=1e-5, atol=1e-7, hidden=hidden,
                   mistakes={"these are forward differences (f(x+eps) - f(x)) / eps; use central ones,"
                             " (f(x+eps) - f(x-eps)) / (2 * eps), which are far more accurate": forward_diff})


@learner_facing
def build_mlp(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``build_mlp()`` -> the guide's 784-128-64-32-10 network with dropout 0.2, returning logits."""
    device = get_device() if device is None else device
    model = run_learner(fn, "build_mlp", Case("no arguments"), context="a call with no arguments")
    if not isinstance(model, nn.Module):
        raise CheckFailed(f"`build_mlp()` should return an nn.Module (e.g. nn.Sequential), not {type(model).__name__}.")
    ref = M.guide_mlp()
    n_got, n_ref = M.count_parameters(model), M.count_parameters(ref)
    linears = [m for m in model.modules() if isinstance(m, nn.Linear)]
    shapes = [(m.in_features, m.out_features) for m in linears]
    ref_shapes = [(m.in_features, m.out_features) for m in ref.modules() if isinstance(m, nn.Linear)]
    if shapes != ref_shapes:
        raise CheckFailed(f"the Linear layers are {shapes} as (in, out); the guide's model has {ref_shapes}.")
    if n_got != n_ref:
        raise CheckFailed(f"the model has {n_got:,} trainable parameters, expected {n_ref:,}. Are biases switched off?")
    if any(isinstance(m, (nn.Softmax, nn.LogSoftmax)) for m in model.modules()):
        raise CheckFailed("remove the softmax layer: return logits, because nn.CrossEntropyLoss applies"
                          " log-softmax itself (and does it in a numerically stable way).")
    drops = [m.p for m in model.modules() if isinstance(m, nn.Dropout)]
    if drops != [0.2, 0.2]:
        raise CheckFailed(f"expected two Dropout(0.2) layers (after the first two hidden layers), found {drops or 'none'}.")
    acts = [type(m).__name__ for m in model.modules() if isinstance(m, (nn.ReLU, nn.Sigmoid, nn.Tanh, nn.GELU, nn.LeakyReLU))]
    if acts != ["ReLU"] * 3:
        raise CheckFailed(f"the hidden layers should use ReLU (three of them); found {acts or 'no activation modules'}."
                          " Without them the network collapses to a single linear map.")
    # Same weights in, same logits out: copy the reference's parameters in layer order.
    model.to(device).eval()
    ref.to(device).eval()
    with torch.no_grad():
        for mine, theirs in zip(linears, [m for m in ref.modules() if isinstance(m, nn.Linear)]):
            mine.weight.copy_(theirs.weight)
            mine.bias.copy_(theirs.bias)
    g = torch.Generator().manual_seed(5 if hidden else 4)
    batches = [torch.rand(3, 784, generator=g)] + ([torch.rand(64, 784, generator=g), torch.rand(1, 784, generator=g)] if hidden else [])
    for X in batches:
        X = X.to(device)
        got = run_learner(model, "your model", Case(f"a batch of {len(X)}", (X,)))
        problem = compare(got, ref(X), rtol=1e-5, atol=1e-6, path="the model's output")
        if problem:
            raise CheckFailed(f"with the reference weights copied in, {problem} Check the order of the layers.")
    passed("build_mlp", len(batches) + 4, device, hidden)
