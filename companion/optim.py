"""Optimizers from scratch: one pure single-step function per rule, and ``torch.optim.Optimizer`` classes on top.

The step functions take a parameter tensor, its gradient and the optimizer's state for
it, and return new tensors (nothing is modified in place). They follow PyTorch's
conventions exactly, so the classes below match ``torch.optim`` step for step:

=========  =======================================================================
rule       one step (g the gradient, t = 1, 2, ... the step count)
=========  =======================================================================
SGD        p <- p - lr g
momentum   v <- mu v + g;                p <- p - lr v
Nesterov   v <- mu v + g;                p <- p - lr (g + mu v)
AdaGrad    s <- s + g^2;                 p <- p - lr g / (sqrt(s) + eps)
RMSprop    s <- a s + (1 - a) g^2;       p <- p - lr g / (sqrt(s) + eps)
Adam       m <- b1 m + (1 - b1) g;  v <- b2 v + (1 - b2) g^2;
           p <- p - lr m_hat / (sqrt(v_hat) + eps),  m_hat = m / (1 - b1^t), v_hat = v / (1 - b2^t)
=========  =======================================================================

Weight decay (``weight_decay=wd``) is PyTorch's coupled form: g <- g + wd p before the rule.
"""
from __future__ import annotations

import torch
from torch import Tensor


# ---------------------------------------------------------------- single steps

def sgd_step(p: Tensor, grad: Tensor, lr: float) -> Tensor:
    """Plain gradient descent: returns p - lr * grad."""
    return p - lr * grad


def momentum_step(p: Tensor, grad: Tensor, velocity: Tensor, lr: float, momentum: float = 0.9,
                  nesterov: bool = False) -> tuple[Tensor, Tensor]:
    """One SGD-with-momentum step in PyTorch's convention; returns ``(new_p, new_velocity)``.

    velocity starts as zeros and stays in gradient units: v = momentum * v + grad. Plain
    momentum moves by lr * v; Nesterov looks ahead and moves by lr * (grad + momentum * v).
    """
    v = momentum * velocity + grad
    direction = grad + momentum * v if nesterov else v
    return p - lr * direction, v


def adagrad_step(p: Tensor, grad: Tensor, sum_sq: Tensor, lr: float, eps: float = 1e-10) -> tuple[Tensor, Tensor]:
    """One AdaGrad step; returns ``(new_p, new_sum_sq)``. sum_sq accumulates every squared gradient."""
    s = sum_sq + grad * grad
    return p - lr * grad / (s.sqrt() + eps), s


def rmsprop_step(p: Tensor, grad: Tensor, square_avg: Tensor, lr: float, alpha: float = 0.99,
                 eps: float = 1e-8) -> tuple[Tensor, Tensor]:
    """One RMSprop step; returns ``(new_p, new_square_avg)``, a moving average of squared gradients."""
    s = alpha * square_avg + (1 - alpha) * grad * grad
    return p - lr * grad / (s.sqrt() + eps), s


def adam_step(p: Tensor, grad: Tensor, m: Tensor, v: Tensor, t: int, lr: float = 1e-3,
              betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> tuple[Tensor, Tensor, Tensor]:
    """One Adam step with bias correction; returns ``(new_p, new_m, new_v)``.

    m, v start as zeros; t is the number of this step, counting from 1.
    """
    b1, b2 = betas
    m = b1 * m + (1 - b1) * grad
    v = b2 * v + (1 - b2) * grad * grad
    m_hat = m / (1 - b1**t)
    v_hat = v / (1 - b2**t)
    return p - lr * m_hat / (v_hat.sqrt() + eps), m, v


# ---------------------------------------------------------------- optimizer classes

class _Scratch(torch.optim.Optimizer):
    """Shared loop: for each parameter with a gradient, call ``self._update(p, grad, state, group)``."""

    def _update(self, p: Tensor, grad: Tensor, state: dict, group: dict) -> Tensor:  # pragma: no cover
        raise NotImplementedError

    @torch.no_grad()
    def step(self, closure=None):
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                if group.get("weight_decay", 0):
                    grad = grad + group["weight_decay"] * p
                p.copy_(self._update(p, grad, self.state[p], group))
        return loss


class SGD(_Scratch):
    """Stochastic gradient descent with optional momentum and Nesterov momentum (like ``torch.optim.SGD``)."""

    def __init__(self, params, lr: float = 1e-3, momentum: float = 0.0, nesterov: bool = False,
                 weight_decay: float = 0.0):
        if nesterov and momentum <= 0:
            raise ValueError("Nesterov momentum needs momentum > 0")
        super().__init__(params, dict(lr=lr, momentum=momentum, nesterov=nesterov, weight_decay=weight_decay))

    def _update(self, p, grad, state, group):
        if group["momentum"] == 0:
            return sgd_step(p, grad, group["lr"])
        velocity = state.get("velocity", torch.zeros_like(p))
        new_p, state["velocity"] = momentum_step(p, grad, velocity, group["lr"], group["momentum"], group["nesterov"])
        return new_p


class Adagrad(_Scratch):
    """AdaGrad (like ``torch.optim.Adagrad`` with its default lr_decay=0, initial_accumulator_value=0)."""

    def __init__(self, params, lr: float = 1e-2, eps: float = 1e-10, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, eps=eps, weight_decay=weight_decay))

    def _update(self, p, grad, state, group):
        new_p, state["sum_sq"] = adagrad_step(p, grad, state.get("sum_sq", torch.zeros_like(p)),
                                              group["lr"], group["eps"])
        return new_p


class RMSprop(_Scratch):
    """RMSprop (like ``torch.optim.RMSprop`` without momentum or centring)."""

    def __init__(self, params, lr: float = 1e-2, alpha: float = 0.99, eps: float = 1e-8, weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay))

    def _update(self, p, grad, state, group):
        new_p, state["square_avg"] = rmsprop_step(p, grad, state.get("square_avg", torch.zeros_like(p)),
                                                  group["lr"], group["alpha"], group["eps"])
        return new_p


class Adam(_Scratch):
    """Adam with bias correction (like ``torch.optim.Adam``, amsgrad off)."""

    def __init__(self, params, lr: float = 1e-3, betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8,
                 weight_decay: float = 0.0):
        super().__init__(params, dict(lr=lr, betas=tuple(betas), eps=eps, weight_decay=weight_decay))

    def _update(self, p, grad, state, group):
        state["step"] = t = state.get("step", 0) + 1
        m, v = state.get("m", torch.zeros_like(p)), state.get("v", torch.zeros_like(p))
        new_p, state["m"], state["v"] = adam_step(p, grad, m, v, t, group["lr"], group["betas"], group["eps"])
        return new_p


def catalogue(lr_sgd: float = 0.1, lr_adaptive: float = 0.01) -> dict:
    """The six rules as ``{name: (companion class, torch.optim class, kwargs)}`` with the given learning rates."""
    return {
        "SGD": (SGD, torch.optim.SGD, dict(lr=lr_sgd)),
        "momentum": (SGD, torch.optim.SGD, dict(lr=lr_sgd, momentum=0.9)),
        "Nesterov": (SGD, torch.optim.SGD, dict(lr=lr_sgd, momentum=0.9, nesterov=True)),
        "AdaGrad": (Adagrad, torch.optim.Adagrad, dict(lr=lr_adaptive)),
        "RMSprop": (RMSprop, torch.optim.RMSprop, dict(lr=lr_adaptive)),
        "Adam": (Adam, torch.optim.Adam, dict(lr=lr_adaptive)),
    }


def max_param_gap(model_a: torch.nn.Module, model_b: torch.nn.Module) -> float:
    """Largest absolute difference between corresponding parameters of two same-shaped models."""
    gaps = [(a - b).abs().max().item() for a, b in zip(model_a.parameters(), model_b.parameters())]
    return max(gaps) if gaps else 0.0


def lockstep(make_model, ours, theirs, batches, loss_fn) -> list[float]:
    """Train two copies of ``make_model()`` side by side, one per optimizer factory, on the same batches.

    ``ours``/``theirs``: callables ``params -> Optimizer``. ``batches``: list of (X, y).
    Returns the largest parameter difference after each step (floating-point noise when the rules agree).
    """
    a = make_model()
    b = make_model()
    b.load_state_dict(a.state_dict())
    opt_a, opt_b = ours(a.parameters()), theirs(b.parameters())
    gaps = []
    for X, y in batches:
        for model, opt in ((a, opt_a), (b, opt_b)):
            opt.zero_grad()
            loss_fn(model(X), y).backward()
            opt.step()
        gaps.append(max_param_gap(a, b))
    return gaps


__all__ = ["sgd_step", "momentum_step", "adagrad_step", "rmsprop_step", "adam_step",
           "SGD", "Adagrad", "RMSprop", "Adam", "catalogue", "max_param_gap", "lockstep"]
