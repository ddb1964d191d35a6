"""Learning-rate schedules as plain functions of the epoch, plus reduce-on-plateau as a small class.

Each function gives the learning rate for epoch ``epoch`` (0, 1, 2, ...), the value that
``torch.optim.lr_scheduler``'s matching scheduler sets after ``epoch`` calls to ``step()``:

===========  =================================================  =============================
schedule     lr(epoch)                                          torch.optim.lr_scheduler
===========  =================================================  =============================
step         lr0 * gamma ** (epoch // step_size)                StepLR(step_size, gamma)
exponential  lr0 * gamma ** epoch                               ExponentialLR(gamma)
cosine       eta_min + (lr0 - eta_min) (1 + cos(pi epoch / T)) / 2   CosineAnnealingLR(T, eta_min)
plateau      multiply by ``factor`` after ``patience`` bad epochs   ReduceLROnPlateau
===========  =================================================  =============================

To drive an optimizer with one of the functions, wrap it:
``LambdaLR(optimizer, lambda e: cosine_lr(e, 1.0, T))`` multiplies the optimizer's lr by it.
"""
from __future__ import annotations

import math


def step_lr(epoch: int, lr0: float, step_size: int, gamma: float = 0.1) -> float:
    """Multiply the learning rate by ``gamma`` every ``step_size`` epochs."""
    return lr0 * gamma ** (epoch // step_size)


def exponential_lr(epoch: int, lr0: float, gamma: float) -> float:
    """Multiply the learning rate by ``gamma`` every epoch."""
    return lr0 * gamma**epoch


def cosine_lr(epoch: int, lr0: float, T_max: int, eta_min: float = 0.0) -> float:
    """Half a cosine from ``lr0`` at epoch 0 down to ``eta_min`` at epoch ``T_max``."""
    return eta_min + (lr0 - eta_min) * (1 + math.cos(math.pi * epoch / T_max)) / 2


class Plateau:
    """Reduce-on-plateau decision logic, the rules of ``torch.optim.lr_scheduler.ReduceLROnPlateau``.

    A value counts as an improvement when it beats the best so far by a relative
    ``threshold`` (mode "min": value < best * (1 - threshold)). After more than
    ``patience`` epochs in a row without one, the rate is multiplied by ``factor``
    (never below ``min_lr``), and ``cooldown`` epochs pass before counting again.
    """

    def __init__(self, lr: float, factor: float = 0.1, patience: int = 10, threshold: float = 1e-4,
                 cooldown: int = 0, min_lr: float = 0.0, mode: str = "min"):
        if factor >= 1.0:
            raise ValueError("factor should be below 1")
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.lr, self.factor, self.patience, self.threshold = lr, factor, patience, threshold
        self.cooldown, self.min_lr, self.mode = cooldown, min_lr, mode
        self.best = math.inf if mode == "min" else -math.inf
        self.bad_epochs = 0
        self.cooldown_left = 0

    def is_better(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best * (1 - self.threshold)
        return value > self.best * (1 + self.threshold)

    def step(self, value: float) -> float:
        """Record one epoch's monitored value; return the learning rate for the next epoch."""
        if self.is_better(value):
            self.best, self.bad_epochs = value, 0
        else:
            self.bad_epochs += 1
        if self.cooldown_left > 0:
            self.cooldown_left -= 1
            self.bad_epochs = 0
        if self.bad_epochs > self.patience:
            new_lr = max(self.lr * self.factor, self.min_lr)
            if self.lr - new_lr > 1e-8:
                self.lr = new_lr
            self.cooldown_left, self.bad_epochs = self.cooldown, 0
        return self.lr


def plateau_lrs(values, lr0: float, **kwargs) -> list[float]:
    """The learning rate in force after each value of ``values``, starting from ``lr0`` (kwargs: see :class:`Plateau`)."""
    schedule = Plateau(lr0, **kwargs)
    return [schedule.step(v) for v in values]


def torch_lrs(make_scheduler, epochs: int, lr0: float, metrics=None) -> list[float]:
    """Learning rates that a ``torch.optim.lr_scheduler`` sets for epochs 0 .. epochs-1.

    ``make_scheduler(optimizer)`` builds the scheduler on a throwaway SGD optimizer. With
    ``metrics`` (for ReduceLROnPlateau) entry ``i`` is the rate after stepping with ``metrics[i]``.
    """
    import torch

    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=lr0)
    scheduler = make_scheduler(optimizer)
    lrs = []
    for epoch in range(epochs):
        if metrics is None:
            lrs.append(optimizer.param_groups[0]["lr"])
            optimizer.step()
            scheduler.step()
        else:
            optimizer.step()
            scheduler.step(metrics[epoch])
            lrs.append(optimizer.param_groups[0]["lr"])
    return lrs
