"""Checks for chapter 3, Training deep networks.

Each function takes the learner's implementation, compares it with the references in
``companion.losses``, ``companion.optim``, ``companion.schedules`` and
``companion.regularization`` (and, for the optimizer steps, with ``torch.optim`` over
many steps), and prints a verdict or raises :class:`CheckFailed`. ``hidden=True`` runs
the extra cases that nbgrader's hidden tests use.
"""
from __future__ import annotations

import math
from typing import Callable

import torch

from .. import losses as L
from .. import optim as O
from .. import regularization as R
from .. import schedules as S
from ..runtime import get_device
from .core import Case, CheckFailed, check_function, compare, learner_facing, passed, run_learner


def _gen(seed: int) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- losses

@learner_facing
def bce_with_logits(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``bce_with_logits(logits, targets)`` -> the mean binary cross-entropy (a 0-d tensor)."""
    device = get_device() if device is None else device
    g = _gen(32 if hidden else 31)
    cases = [
        Case("four logits, 0/1 targets", (torch.tensor([2.0, -1.0, 0.5, -3.0]), torch.tensor([1.0, 0.0, 0.0, 1.0]))),
        Case("a 3x5 batch, soft targets", (torch.randn(3, 5, generator=g) * 2, torch.rand(3, 5, generator=g))),
        Case("huge logits", (torch.tensor([1000.0, -1000.0, 500.0, -500.0]), torch.tensor([1.0, 0.0, 0.0, 1.0]))),
    ]
    if hidden:
        cases += [
            Case("float64 batch", (torch.randn(4, 3, 2, generator=g, dtype=torch.float64) * 10,
                                   (torch.rand(4, 3, 2, generator=g) < 0.5).double())),
            Case("logits of exactly 0", (torch.zeros(6), torch.tensor([0.0, 1.0, 0.5, 0.0, 1.0, 0.25]))),
            Case("confidently right at +-40", (torch.tensor([40.0, -40.0]), torch.tensor([1.0, 0.0]))),
            Case("one logit", (torch.tensor([0.7]), torch.tensor([1.0]))),
            Case("large batch", (torch.randn(256, generator=g) * 30, torch.rand(256, generator=g))),
        ]

    def via_sigmoid(z, y):
        return L.naive_bce(torch.sigmoid(z), y)

    def sign_flipped(z, y):
        return L.bce_with_logits(-z, y)

    check_function(fn, L.bce_with_logits, cases, name="bce_with_logits", device=device, rtol=1e-5, atol=1e-6,
                   hidden=hidden,
                   mistakes={"this is the textbook formula on sigmoid(logits): log(sigmoid(z)) underflows to"
                             " log(0) for large |z|. Use max(z, 0) - z*y + log1p(exp(-|z|))": via_sigmoid,
                             "the loss should be a mean over all entries, not a sum":
                             lambda z, y: L.bce_with_logits(z, y) * z.numel(),
                             "the sign of the logits is flipped: a large positive logit means class 1": sign_flipped})


@learner_facing
def cross_entropy(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``cross_entropy(logits, labels)``: logits (N, C), integer labels (N,) -> mean loss (0-d)."""
    device = get_device() if device is None else device
    g = _gen(34 if hidden else 33)
    cases = [
        Case("2 examples, 3 classes", (torch.tensor([[2.0, 1.0, 0.1], [0.5, 2.5, -1.0]]), torch.tensor([0, 2]))),
        Case("a batch of 8, 5 classes", (torch.randn(8, 5, generator=g) * 3, torch.randint(0, 5, (8,), generator=g))),
    ]
    # float32 keeps about 7 digits, so logits near 1000 leave only about 4 after the decimal point:
    # the two correct ways to write it (m + log(sum(exp(z - m))) - z_y, or -log_softmax) differ there.
    huge = [Case("huge logits", (torch.tensor([[1000.0, 1001.0, 1002.0], [-1000.0, 0.0, 1000.0]]), torch.tensor([0, 1])))]
    if hidden:
        cases += [
            Case("float64, 10 classes", (torch.randn(16, 10, generator=g, dtype=torch.float64) * 20,
                                         torch.randint(0, 10, (16,), generator=g))),
            Case("very negative float64 logits", (torch.tensor([[-5e4, -5e4 - 1.0], [-800.0, -801.0]],
                                                               dtype=torch.float64), torch.tensor([1, 0]))),
            Case("one example", (torch.tensor([[0.3, -0.2, 1.1, 0.0]]), torch.tensor([2]))),
            Case("one class", (torch.randn(5, 1, generator=g), torch.zeros(5, dtype=torch.long))),
            Case("equal logits", (torch.full((3, 4), 7.0), torch.tensor([0, 1, 3]))),
        ]
        huge += [Case("very negative logits", (torch.tensor([[-800.0, -801.0, -799.5]]), torch.tensor([1])))]

    def no_shift_back(z, y):
        top = z.amax(dim=1, keepdim=True)
        return (torch.log(torch.exp(z - top).sum(dim=1)) - z.gather(1, y.unsqueeze(1)).squeeze(1)).mean()

    def picks_max(z, y):
        return (L.logsumexp(z, dim=1) - z.amax(dim=1)).mean()

    mistakes = {"after subtracting the maximum m inside logsumexp, add it back: logsumexp(z) ="
                " m + log(sum(exp(z - m)))": no_shift_back,
                "the loss should be a mean over the batch, not a sum": lambda z, y: L.cross_entropy(z, y) * len(y),
                "take the logit of the *true* class, z[i, y[i]] (e.g. z.gather(1, y[:, None])),"
                " not the largest logit": picks_max,
                "softmax computed literally overflows: use log-sum-exp with the maximum subtracted":
                L.naive_cross_entropy}
    check_function(fn, L.cross_entropy, cases, name="cross_entropy", device=device, rtol=1e-5, atol=1e-6,
                   hidden=hidden, quiet=True, mistakes=mistakes)
    check_function(fn, L.cross_entropy, huge, name="cross_entropy", device=device, rtol=0, atol=1e-3,
                   hidden=hidden, quiet=True, mistakes=mistakes)
    passed("cross_entropy", len(cases) + len(huge), device, hidden)


def _regression_cases(hidden: bool, seed: int) -> list[Case]:
    g = _gen(seed)
    cases = [
        Case("four predictions", (torch.tensor([1.0, 2.0, 3.0, 4.0]), torch.tensor([1.5, 2.0, 1.0, 6.5]))),
        Case("a 3x4 batch", (torch.randn(3, 4, generator=g), torch.randn(3, 4, generator=g))),
    ]
    if hidden:
        cases += [
            Case("float64 with outliers", (torch.randn(20, generator=g, dtype=torch.float64),
                                           torch.cat([torch.randn(17, generator=g, dtype=torch.float64),
                                                      torch.tensor([30.0, -50.0, 12.0], dtype=torch.float64)]))),
            Case("perfect predictions", (torch.arange(6.0).reshape(2, 3), torch.arange(6.0).reshape(2, 3))),
            Case("one value", (torch.tensor([0.25]), torch.tensor([-2.0]))),
        ]
    return cases


@learner_facing
def mse_mae(mse: Callable, mae: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``mse(pred, target)`` and ``mae(pred, target)`` (means over all entries, 0-d tensors)."""
    device = get_device() if device is None else device
    cases = _regression_cases(hidden, 36 if hidden else 35)
    check_function(mse, L.mse, cases, name="mse", device=device, rtol=1e-5, atol=1e-6, hidden=hidden, quiet=True,
                   mistakes={"the squared errors should be averaged, not summed": lambda p, t: ((p - t) ** 2).sum(),
                             "this is the root of the MSE; the exercise asks for the mean squared error itself":
                             lambda p, t: L.mse(p, t).sqrt()})
    check_function(mae, L.mae, cases, name="mae", device=device, rtol=1e-5, atol=1e-6, hidden=hidden, quiet=True,
                   mistakes={"take the absolute value of each error before averaging, or positive and negative"
                             " errors cancel": lambda p, t: (p - t).mean(),
                             "the absolute errors should be averaged, not summed": lambda p, t: (p - t).abs().sum()})
    passed("mse and mae", 2 * len(cases), device, hidden)


@learner_facing
def huber(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``huber(pred, target, delta=1.0)`` (mean Huber loss, like ``F.huber_loss``)."""
    device = get_device() if device is None else device
    cases = _regression_cases(hidden, 38 if hidden else 37)
    cases.append(Case("delta = 2.5", cases[0].args, {"delta": 2.5}))
    if hidden:
        cases += [Case("delta = 0.1", cases[1].args, {"delta": 0.1}),
                  Case("residuals exactly at delta", (torch.tensor([0.0, 0.0]), torch.tensor([1.0, -1.0])))]

    def no_half(p, t, delta=1.0):
        r = (p - t).abs()
        return torch.where(r <= delta, r**2, delta * (r - 0.5 * delta)).mean()

    def fixed_delta(p, t, delta=1.0):
        return L.huber(p, t, 1.0)

    def smooth_l1(p, t, delta=1.0):
        return L.huber(p, t, delta) / delta

    check_function(fn, L.huber, cases, name="huber", device=device, rtol=1e-5, atol=1e-6, hidden=hidden,
                   mistakes={"the quadratic part is r**2 / 2 (the half makes the two pieces meet smoothly at delta)":
                             no_half,
                             "the `delta` argument is ignored": fixed_delta,
                             "this is PyTorch's smooth_l1_loss (Huber divided by delta); the exercise asks for"
                             " Huber, whose linear part is delta * (|r| - delta / 2)": smooth_l1,
                             "the linear part is delta * (|r| - delta / 2), not delta * |r|":
                             lambda p, t, delta=1.0: torch.where((p - t).abs() <= delta, 0.5 * (p - t) ** 2,
                                                                 delta * (p - t).abs()).mean()})


# ---------------------------------------------------------------- optimizer steps

def _quadratic(dim: int, seed: int, dtype, device):
    """A random ill-conditioned quadratic 0.5 p'Ap + b'p: returns (A, b, p0)."""
    g = _gen(seed)
    Q, _ = torch.linalg.qr(torch.randn(dim, dim, generator=g, dtype=torch.float64))
    A = Q @ torch.diag(torch.logspace(-1, 1, dim, dtype=torch.float64)) @ Q.T
    b = torch.randn(dim, generator=g, dtype=torch.float64)
    p0 = torch.randn(dim, generator=g, dtype=torch.float64) * 2
    return A.to(device, dtype), b.to(device, dtype), p0.to(device, dtype)


def _against_torch(name: str, call: Callable, state0: tuple, make_torch: Callable, label: str, *, steps: int,
                   dim: int, seed: int, dtype, device, rtol: float, atol: float) -> None:
    """Run the learner's step ``call(p, grad, *state, t) -> (p, *state)`` and torch.optim side by side."""
    A, b, p0 = _quadratic(dim, seed, dtype, device)
    theirs = p0.clone().requires_grad_(True)
    optimizer = make_torch([theirs])
    p, state = p0.clone(), tuple(s(p0) for s in state0)
    for t in range(1, steps + 1):
        grad = A @ p + b
        case = Case(f"{label}, step {t}")
        out = run_learner(lambda: call(p, grad, *state, t), name, case, context=f"step {t} of {label}")
        if not isinstance(out, tuple) or len(out) != 1 + len(state):
            raise CheckFailed(f"`{name}` should return a tuple of {1 + len(state)} tensors; on step {t} of"
                              f" {label} it returned {type(out).__name__}.")
        p, state = out[0], tuple(out[1:])
        optimizer.zero_grad()
        (0.5 * theirs @ A @ theirs + b @ theirs).backward()
        optimizer.step()
        problem = compare(p, theirs.detach(), rtol=rtol, atol=atol, path="the parameter")
        if problem:
            raise CheckFailed(f"`{name}` drifts away from torch.optim on {label}: after step {t}, {problem}"
                              " The single steps above passed, so look at how the state carries over from one"
                              " step to the next (return the *updated* state, and feed it back in).")


@learner_facing
def momentum_step(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``momentum_step(p, grad, velocity, lr, momentum, nesterov)`` -> ``(new_p, new_velocity)``.

    Single steps against the reference, then 50 or more steps against ``torch.optim.SGD``.
    """
    device = get_device() if device is None else device
    g = _gen(40 if hidden else 39)
    p, grad, vel = torch.tensor([1.0, -2.0, 0.5]), torch.tensor([0.3, 0.1, -0.4]), torch.tensor([0.2, -0.1, 0.0])
    cases = [
        Case("momentum", (p, grad, vel), dict(lr=0.1, momentum=0.9, nesterov=False)),
        Case("Nesterov", (p, grad, vel), dict(lr=0.1, momentum=0.9, nesterov=True)),
        Case("first step (velocity 0)", (p, grad, torch.zeros(3)), dict(lr=0.5, momentum=0.8, nesterov=False)),
    ]
    if hidden:
        shape = (4, 3)
        cases += [
            Case(f"{'Nesterov' if nest else 'momentum'} on a {shape} float64 weight",
                 (torch.randn(shape, generator=g, dtype=torch.float64), torch.randn(shape, generator=g, dtype=torch.float64),
                  torch.randn(shape, generator=g, dtype=torch.float64)), dict(lr=0.03, momentum=0.95, nesterov=nest))
            for nest in (False, True)
        ] + [Case("momentum 0 is plain SGD", (p, grad, vel), dict(lr=0.2, momentum=0.0, nesterov=True))]

    def keras_style(p, grad, velocity, lr, momentum=0.9, nesterov=False):
        v = momentum * velocity - lr * grad
        return (p + momentum * v - lr * grad if nesterov else p + v), v

    def dampened(p, grad, velocity, lr, momentum=0.9, nesterov=False):
        v = momentum * velocity + (1 - momentum) * grad
        return p - lr * (grad + momentum * v if nesterov else v), v

    def stale_nesterov(p, grad, velocity, lr, momentum=0.9, nesterov=False):
        v = momentum * velocity + grad
        return p - lr * (grad + momentum * velocity if nesterov else v), v

    def no_nesterov(p, grad, velocity, lr, momentum=0.9, nesterov=False):
        return O.momentum_step(p, grad, velocity, lr, momentum, False)

    check_function(fn, O.momentum_step, cases, name="momentum_step", device=device, rtol=1e-6, atol=1e-7,
                   hidden=hidden, quiet=True,
                   mistakes={"PyTorch keeps the velocity in gradient units: v = momentum * v + grad, then"
                             " p - lr * v (not Keras's v = momentum * v - lr * grad, then p + v)": keras_style,
                             "return the *updated* velocity as the second item, so the next step can use it":
                             lambda p, grad, velocity, lr, momentum=0.9, nesterov=False:
                             (O.momentum_step(p, grad, velocity, lr, momentum, nesterov)[0], velocity),
                             "PyTorch's velocity adds the whole gradient, v = momentum * v + grad, not"
                             " (1 - momentum) * grad": dampened,
                             "Nesterov's look-ahead uses the *new* velocity: p - lr * (grad + momentum * v_new)":
                             stale_nesterov,
                             "with nesterov=True the step should be p - lr * (grad + momentum * v_new)": no_nesterov})
    runs = [("momentum 0.9, lr 0.05", dict(lr=0.05, momentum=0.9, nesterov=False), torch.float64, 60)]
    if hidden:
        runs += [("Nesterov 0.9, lr 0.05", dict(lr=0.05, momentum=0.9, nesterov=True), torch.float64, 80),
                 ("Nesterov 0.5, lr 0.2, float32", dict(lr=0.2, momentum=0.5, nesterov=True), torch.float32, 50)]
    else:
        runs += [("Nesterov 0.9, lr 0.05", dict(lr=0.05, momentum=0.9, nesterov=True), torch.float64, 60)]
    for i, (label, kw, dtype, steps) in enumerate(runs):
        _against_torch("momentum_step",
                       lambda p, grad, v, t, kw=kw: fn(p, grad, v, **kw), (torch.zeros_like,),
                       lambda params, kw=kw: torch.optim.SGD(params, **kw), f"torch.optim.SGD({label})",
                       steps=steps, dim=6, seed=100 + i + 10 * hidden, dtype=dtype, device=device,
                       rtol=1e-9 if dtype == torch.float64 else 1e-4, atol=1e-11 if dtype == torch.float64 else 1e-5)
    passed("momentum_step (single steps, then runs against torch.optim.SGD)",
           len(cases) + len(runs), device, hidden)


@learner_facing
def adam_step(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``adam_step(p, grad, m, v, t, lr, betas, eps)`` -> ``(new_p, new_m, new_v)``.

    Single steps against the reference, then 50 or more steps against ``torch.optim.Adam``.
    """
    device = get_device() if device is None else device
    g = _gen(42 if hidden else 41)
    p, grad = torch.tensor([1.0, -2.0, 0.5, 3.0]), torch.tensor([0.3, 0.1, -0.4, 2.0])
    m, v = torch.tensor([0.05, -0.02, 0.0, 0.3]), torch.tensor([0.01, 0.002, 0.003, 0.5])
    cases = [
        Case("first step (t = 1, m = v = 0)", (p, grad, torch.zeros(4), torch.zeros(4), 1), dict(lr=0.01)),
        Case("step t = 3", (p, grad, m, v, 3), dict(lr=0.01)),
        Case("step t = 1000, other betas", (p, grad, m, v, 1000), dict(lr=0.001, betas=(0.8, 0.99))),
        Case("small gradients, t = 1", (p, grad * 1e-5, torch.zeros(4), torch.zeros(4), 1), dict(lr=0.01)),
    ]
    if hidden:
        shape = (3, 5)
        cases += [
            Case("float64 weight, t = 7", (torch.randn(shape, generator=g, dtype=torch.float64),
                                           torch.randn(shape, generator=g, dtype=torch.float64),
                                           torch.randn(shape, generator=g, dtype=torch.float64) * 0.1,
                                           torch.rand(shape, generator=g, dtype=torch.float64) * 0.1, 7),
                 dict(lr=0.003, betas=(0.9, 0.999), eps=1e-8)),
            Case("tiny gradients, large eps", (p, grad * 1e-6, torch.zeros(4), torch.zeros(4), 1), dict(lr=0.1, eps=1e-3)),
            Case("zero gradient", (p, torch.zeros(4), m, v, 2), dict(lr=0.01)),
        ]

    def no_correction(p, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        b1, b2 = betas
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        return p - lr * m / (v.sqrt() + eps), m, v

    def eps_inside(p, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        b1, b2 = betas
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad**2
        return p - lr * (m / (1 - b1**t)) / torch.sqrt(v / (1 - b2**t) + eps), m, v

    def stores_corrected(p, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        new_p, m, v = O.adam_step(p, grad, m, v, t, lr, betas, eps)
        return new_p, m / (1 - betas[0] ** t), v / (1 - betas[1] ** t)

    def grad_not_squared(p, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        b1, b2 = betas
        m = b1 * m + (1 - b1) * grad
        v = b2 * v + (1 - b2) * grad
        return p - lr * (m / (1 - b1**t)) / ((v / (1 - b2**t)).sqrt() + eps), m, v

    def step_minus_one(p, grad, m, v, t, lr=1e-3, betas=(0.9, 0.999), eps=1e-8):
        return O.adam_step(p, grad, m, v, t + 1, lr, betas, eps)

    check_function(fn, O.adam_step, cases, name="adam_step", device=device, rtol=1e-6, atol=1e-7,
                   hidden=hidden, quiet=True,
                   mistakes={"the bias correction is missing: divide m by (1 - beta1**t) and v by (1 - beta2**t)"
                             " before the update": no_correction,
                             "eps goes outside the square root: m_hat / (sqrt(v_hat) + eps)": eps_inside,
                             "the step is right, but return the raw moving averages m and v as the new state;"
                             " the bias-corrected m_hat and v_hat are only for computing the step": stores_corrected,
                             "v averages the *squared* gradients, grad**2": grad_not_squared,
                             "t is the number of this step counting from 1 (the bias correction uses beta**t);"
                             " it looks like you used t + 1": step_minus_one})
    runs = [("lr 0.05", dict(lr=0.05), torch.float64, 60)]
    if hidden:
        runs += [("lr 0.2, betas (0.8, 0.99)", dict(lr=0.2, betas=(0.8, 0.99)), torch.float64, 100),
                 ("lr 0.01, eps 1e-6, float32", dict(lr=0.01, eps=1e-6), torch.float32, 50)]
    for i, (label, kw, dtype, steps) in enumerate(runs):
        _against_torch("adam_step",
                       lambda p, grad, m, v, t, kw=kw: fn(p, grad, m, v, t, **kw), (torch.zeros_like, torch.zeros_like),
                       lambda params, kw=kw: torch.optim.Adam(params, **kw), f"torch.optim.Adam({label})",
                       steps=steps, dim=6, seed=200 + i + 10 * hidden, dtype=dtype, device=device,
                       rtol=1e-9 if dtype == torch.float64 else 1e-4, atol=1e-11 if dtype == torch.float64 else 1e-5)
    passed("adam_step (single steps, then runs against torch.optim.Adam)", len(cases) + len(runs), device, hidden)


# ---------------------------------------------------------------- schedules

@learner_facing
def cosine_lr(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``cosine_lr(epoch, lr0, T_max, eta_min=0.0)`` at every epoch 0..T_max (and beyond, hidden)."""
    settings = [(0.1, 10, 0.0), (0.5, 7, 0.01)]
    if hidden:
        settings += [(1.0, 1, 0.0), (3e-4, 50, 1e-5), (0.02, 4, 0.02)]
    cases = [Case(f"epoch {e} of T_max = {T} (lr0 = {lr0}, eta_min = {eta})", (e, lr0, T), {"eta_min": eta})
             for lr0, T, eta in settings for e in range(T + 1)]
    if hidden:
        cases += [Case("epoch 15 of T_max = 10 (past the end: the cosine climbs again)", (15, 0.1, 10), {"eta_min": 0.0})]

    def no_floor(epoch, lr0, T_max, eta_min=0.0):
        return lr0 * (1 + math.cos(math.pi * epoch / T_max)) / 2

    def no_half(epoch, lr0, T_max, eta_min=0.0):
        return eta_min + (lr0 - eta_min) * (1 + math.cos(math.pi * epoch / T_max))

    def full_period(epoch, lr0, T_max, eta_min=0.0):
        return eta_min + (lr0 - eta_min) * (1 + math.cos(2 * math.pi * epoch / T_max)) / 2

    check_function(fn, S.cosine_lr, cases, name="cosine_lr", rtol=1e-6, atol=1e-10, hidden=hidden, quiet=True,
                   mistakes={"the schedule should end at eta_min: eta_min + (lr0 - eta_min) * (1 + cos(pi t / T)) / 2":
                             no_floor,
                             "(1 + cos) runs from 2 to 0: divide by 2 so the schedule starts at lr0": no_half,
                             "the cosine covers half a period over T_max epochs: cos(pi * t / T_max), not 2 pi":
                             full_period})
    # the same numbers as PyTorch's scheduler
    for lr0, T, eta in settings[:2]:
        torch_values = S.torch_lrs(lambda o, T=T, eta=eta: torch.optim.lr_scheduler.CosineAnnealingLR(o, T, eta), T + 1, lr0)
        mine = [run_learner(fn, "cosine_lr", Case(f"epoch {e}", (e, lr0, T), {"eta_min": eta})) for e in range(T + 1)]
        problem = compare([float(x) for x in mine], torch_values, rtol=1e-6, atol=1e-10, path="your schedule")
        if problem:
            raise CheckFailed(f"`cosine_lr` disagrees with torch.optim.lr_scheduler.CosineAnnealingLR: {problem}")
    passed("cosine_lr (and CosineAnnealingLR's values)", len(cases), None, hidden)


# ---------------------------------------------------------------- dropout

def _dropout_fraction(out, x) -> float:
    return ((out == 0) & (x != 0)).double().mean().item()


@learner_facing
def dropout(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``dropout(x, p, training)``: random, so the check tests its properties.

    In training every entry must be 0 or x / (1 - p), about a fraction p of them 0, and
    two calls must drop different entries; in evaluation x must come back unchanged.
    """
    device = get_device() if device is None else device
    torch_device = torch.device(device) if isinstance(device, str) else device
    settings = [(0.5, (400, 250), torch.float32), (0.2, (50, 40, 50), torch.float32)]
    if hidden:
        settings += [(0.9, (100_000,), torch.float64), (0.05, (300, 300), torch.float32)]
    fork = [torch_device] if torch_device.type == "cuda" else []
    n = 0
    with torch.random.fork_rng(devices=fork):
        torch.manual_seed(3 if hidden else 2)
        for p, shape, dtype in settings:
            x = (torch.rand(shape, dtype=dtype) + 0.5).to(device) * torch.where(torch.rand(shape) < 0.5, -1.0, 1.0).to(device, dtype)
            label = f"x of shape {shape}, {dtype}, p = {p}"
            before = x.clone()
            out = run_learner(fn, "dropout", Case(label, (x, p), {"training": True}), context=label)
            if not isinstance(out, torch.Tensor) or out.shape != x.shape or out.dtype != x.dtype \
                    or out.device.type != x.device.type:
                from .core import describe
                raise CheckFailed(f"`dropout` on {label} returned {describe(out)}; expected a tensor like x"
                                  f" ({describe(x)}).")
            if not torch.equal(x, before):
                raise CheckFailed("`dropout` changed its input x in place; return a new tensor instead.")
            kept = out != 0
            scaled = torch.isclose(out, x / (1 - p), rtol=1e-5, atol=0)
            frac = _dropout_fraction(out, x)
            if not torch.all(scaled | ~kept):
                hint = ""
                if torch.allclose(out[kept], x[kept]):
                    hint = " The kept entries are not scaled: inverted dropout divides them by (1 - p)."
                elif torch.allclose(out[kept], x[kept] / p):
                    hint = " They are divided by p; divide by the probability of *keeping*, 1 - p."
                elif torch.allclose(out[kept], x[kept] * (1 - p)):
                    hint = " They are multiplied by (1 - p); inverted dropout divides by it."
                raise CheckFailed(f"`dropout` on {label}: every entry should be 0 or x / (1 - p).{hint}")
            if abs(frac - p) > 0.01:
                hint = (" That is close to 1 - p: p is the probability of *dropping* a unit."
                        if abs(frac - (1 - p)) < 0.01 else "")
                raise CheckFailed(f"`dropout` on {label} zeroed {frac:.1%} of the entries; expected about {p:.0%}.{hint}")
            again = run_learner(fn, "dropout", Case(label, (x, p), {"training": True}), context=label)
            if torch.equal(again, out):
                raise CheckFailed(f"`dropout` on {label} dropped the same entries twice in a row: draw a new random"
                                  " mask on every call (torch.rand(x.shape, device=x.device) < p, for example).")
            evaluated = run_learner(fn, "dropout", Case(label, (x, p), {"training": False}), context=label + " in eval")
            problem = compare(evaluated, x, rtol=0, atol=0, path="the output in evaluation mode")
            if problem:
                hint = (" It looks scaled by (1 - p): that is the old, non-inverted dropout. With inverted dropout"
                        " evaluation does nothing." if isinstance(evaluated, torch.Tensor)
                        and evaluated.shape == x.shape and torch.allclose(evaluated, x * (1 - p)) else
                        " With training=False, dropout must return x unchanged.")
                raise CheckFailed(f"`dropout` on {label} with training=False: {problem}{hint}")
            n += 3
        edge = [(0.0, "p = 0 keeps everything")] + ([(1.0, "p = 1 drops everything (and must not divide by 0)")]
                                                    if hidden else [])
        x = torch.randn(64, 8).to(device)
        for p, label in edge:
            out = run_learner(fn, "dropout", Case(label, (x, p), {"training": True}), context=label)
            problem = compare(out, x if p == 0 else torch.zeros_like(x), rtol=0, atol=0)
            if problem:
                raise CheckFailed(f"`dropout` with {label}: {problem}")
            n += 1
    passed("dropout (scaling, drop rate, fresh masks, evaluation mode)", n, device, hidden)


# ---------------------------------------------------------------- batch norm

def _bn_case(label: str, n: int, d: int, seed: int, training: bool, dtype=torch.float32, offset=0.0, **kw) -> Case:
    g = _gen(seed)
    x = (torch.randn(n, d, generator=g, dtype=torch.float64) * 3 + offset).to(dtype)
    gamma = (torch.rand(d, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    beta = torch.randn(d, generator=g, dtype=torch.float64).to(dtype)
    rm = torch.randn(d, generator=g, dtype=torch.float64).to(dtype)
    rv = (torch.rand(d, generator=g, dtype=torch.float64) + 0.5).to(dtype)
    return Case(label, (x, gamma, beta, rm, rv), {"training": training, **kw})


@learner_facing
def batch_norm(fn: Callable, *, hidden: bool = False, device=None) -> None:
    """Check ``batch_norm(x, gamma, beta, running_mean, running_var, training, momentum, eps)``.

    Returns ``(out, new_running_mean, new_running_var)``; compared with the reference in
    training and in evaluation mode, and over a run of training batches followed by eval.
    """
    device = get_device() if device is None else device
    cases = [_bn_case("training, batch of 8, 4 features", 8, 4, 1, True),
             _bn_case("evaluation, batch of 5, 4 features", 5, 4, 2, False)]
    if hidden:
        cases += [_bn_case("training, float64, momentum 0.01", 32, 6, 3, True, torch.float64, momentum=0.01),
                  _bn_case("evaluation, float64, eps 1e-3", 7, 3, 4, False, torch.float64, eps=1e-3),
                  _bn_case("training, batch of 2", 2, 5, 5, True),
                  _bn_case("training, features far from 0", 16, 3, 6, True, torch.float64, offset=1000.0),
                  _bn_case("evaluation, one example", 1, 4, 7, False)]

    def unbiased_norm(x, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5):
        out, m, v = R.batch_norm(x, gamma, beta, rm, rv, training, momentum, eps)
        if training:
            out = (x - x.mean(0)) / torch.sqrt(x.var(0, unbiased=True) + eps) * gamma + beta
        return out, m, v

    def biased_running(x, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5):
        out, m, v = R.batch_norm(x, gamma, beta, rm, rv, training, momentum, eps)
        if training:
            v = (1 - momentum) * rv + momentum * x.var(0, unbiased=False)
        return out, m, v

    def keras_momentum(x, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5):
        return R.batch_norm(x, gamma, beta, rm, rv, training, 1 - momentum, eps)

    def batch_stats_in_eval(x, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5):
        if training:
            return R.batch_norm(x, gamma, beta, rm, rv, True, momentum, eps)
        return R.batch_norm(x, gamma, beta, rm, rv, True, momentum, eps)[0], rm, rv

    def stats_not_updated(x, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5):
        return R.batch_norm(x, gamma, beta, rm, rv, training, momentum, eps)[0], rm, rv

    def no_affine(x, gamma, beta, rm, rv, training=True, momentum=0.1, eps=1e-5):
        out, m, v = R.batch_norm(x, torch.ones_like(gamma), torch.zeros_like(beta), rm, rv, training, momentum, eps)
        return out, m, v

    check_function(fn, R.batch_norm, cases, name="batch_norm", device=device, rtol=1e-5, atol=1e-5,
                   hidden=hidden, quiet=True,
                   mistakes={"normalise with the batch's *biased* variance (unbiased=False); the unbiased one"
                             " is only for the running estimate": unbiased_norm,
                             "the running variance is updated with the *unbiased* batch variance"
                             " (x.var(0, unbiased=True)), PyTorch's convention": biased_running,
                             "momentum is the weight of the *new* batch statistic: (1 - momentum) * running +"
                             " momentum * batch (Keras uses the opposite convention)": keras_momentum,
                             "in evaluation mode normalise with the running statistics, not the batch's":
                             batch_stats_in_eval,
                             "in training mode return the *updated* running statistics": stats_not_updated,
                             "scale by gamma and shift by beta after normalising": no_affine})
    # a short life: several training batches, then evaluation, feeding back the learner's own running stats
    steps = 6 if hidden else 3
    g = _gen(60 + hidden)
    d = 5
    gamma, beta = torch.linspace(0.5, 2, d).to(device), torch.linspace(-1, 1, d).to(device)
    mine = ref = (torch.zeros(d, device=device), torch.ones(d, device=device))
    for step in range(steps + 1):
        training = step < steps
        x = (torch.randn(16, d, generator=g) * 2 + 3).to(device)
        label = f"training batch {step + 1} of {steps}" if training else f"evaluation after {steps} training batches"
        got = run_learner(fn, "batch_norm", Case(label, (x, gamma, beta, *mine), {"training": training}),
                          context=label)
        expected = R.batch_norm(x, gamma, beta, *ref, training=training)
        problem = compare(got, expected, rtol=1e-5, atol=1e-5)
        if problem:
            raise CheckFailed(f"`batch_norm` on {label}, feeding back the running statistics it returned: {problem}")
        mine, ref = tuple(got[1:]), tuple(expected[1:])
    passed("batch_norm (training and evaluation)", len(cases) + steps + 1, device, hidden)


# ---------------------------------------------------------------- early stopping

@learner_facing
def early_stopping(fn: Callable, *, hidden: bool = False) -> None:
    """Check ``early_stopping(values, patience, min_delta=0.0, mode="min")`` -> ``(stop_epoch, best_epoch)``."""
    u_shape = [1.0, 0.8, 0.7, 0.65, 0.66, 0.68, 0.64, 0.7, 0.75, 0.8, 0.9]
    cases = [
        Case("a validation loss that dips, then rises; patience 3", (u_shape, 3)),
        Case("the same with patience 5", (u_shape, 5)),
        Case("still improving at the end", ([0.9, 0.8, 0.7, 0.6, 0.5], 2)),
        Case("min_delta 0.02: tiny gains do not count",
             ([1.0, 0.9, 0.89, 0.885, 0.875, 0.87, 0.865, 0.86], 3), {"min_delta": 0.02}),
    ]
    if hidden:
        cases += [
            Case("accuracy, mode 'max'", ([0.5, 0.6, 0.7, 0.69, 0.7, 0.71, 0.65, 0.6], 2), {"mode": "max"}),
            Case("ties are not improvements", ([1.0, 0.5, 0.5, 0.5, 0.5], 3)),
            Case("patience 1", ([3.0, 2.0, 2.5, 1.0], 1)),
            Case("never improves after epoch 0", ([0.3, 0.4, 0.5, 0.6], 3)),
            Case("a single epoch", ([0.7], 2)),
            Case("max mode with min_delta", ([0.1, 0.2, 0.205, 0.208, 0.3, 0.29, 0.3], 3),
                 {"mode": "max", "min_delta": 0.01}),
        ]

    def replay(values, patience, min_delta=0.0, mode="min", *, ties=False, late=False, vs_previous=False):
        sign = 1 if mode == "min" else -1
        best, best_epoch, wait, prev = math.inf, -1, 0, math.inf
        for epoch, value in enumerate(values):
            v = sign * value
            ref = prev if vs_previous else best
            better = v <= ref - min_delta if ties else v < ref - min_delta
            prev = v
            if better:
                best, best_epoch, wait = v, epoch, 0
            else:
                wait += 1
                if (wait > patience) if late else (wait >= patience):
                    return epoch, best_epoch
        return None, best_epoch

    check_function(fn, R.early_stopping, cases, name="early_stopping", rtol=0, atol=0, hidden=hidden,
                   mistakes={"stop when `patience` epochs in a row brought no improvement (wait >= patience):"
                             " yours stops one epoch late": lambda *a, **k: replay(*a, **k, late=True),
                             "a value equal to the best so far is not an improvement (compare strictly)":
                             lambda *a, **k: replay(*a, **k, ties=True),
                             "compare each value with the best so far, not with the previous epoch":
                             lambda *a, **k: replay(*a, **k, vs_previous=True),
                             "min_delta is ignored: an improvement must beat the best by more than min_delta":
                             lambda v, p, min_delta=0.0, mode="min": R.early_stopping(v, p, 0.0, mode),
                             "mode is ignored: with mode='max' higher values are better":
                             lambda v, p, min_delta=0.0, mode="min": R.early_stopping(v, p, min_delta, "min")})
