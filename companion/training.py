"""One training loop for the whole course: :func:`fit`, with a progress bar, history and callbacks.

Data are ``(X, y)`` tensor pairs or any iterable of ``(X, y)`` batches (a ``DataLoader``).
A callback is any object with some of the methods ``on_train_begin(model)``,
``on_epoch_end(epoch, logs, model) -> bool`` (return True to stop) and
``on_train_end(model)``; chapter 8 adds the standard ones. :class:`EarlyStopping` is
here because many chapters use it.
"""
from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field
from typing import Any, Callable, Iterable

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from .runtime import get_device


@dataclass
class History:
    """Per-epoch metrics: ``history["val_acc"]`` is a list with one value per epoch."""

    metrics: dict[str, list[float]] = field(default_factory=dict)
    stopped_epoch: int | None = None

    def log(self, logs: dict[str, float]) -> None:
        for key, value in logs.items():
            self.metrics.setdefault(key, []).append(value)

    def __getitem__(self, key: str) -> list[float]:
        return self.metrics[key]

    def __contains__(self, key: str) -> bool:
        return key in self.metrics

    @property
    def epochs(self) -> int:
        return len(next(iter(self.metrics.values()), []))

    def best(self, key: str = "val_loss", mode: str = "min") -> tuple[int, float]:
        """(epoch index, value) of the best entry of ``key``."""
        values = self.metrics[key]
        pick = min if mode == "min" else max
        value = pick(values)
        return values.index(value), value


def batches(data: Any, batch_size: int, shuffle: bool, generator: torch.Generator | None = None) -> Iterable:
    """Yield ``(X, y)`` mini-batches from a tensor pair, or pass an iterable of batches through."""
    if isinstance(data, (tuple, list)) and len(data) == 2 and isinstance(data[0], Tensor):
        X, y = data
        n = len(X)
        order = torch.randperm(n, generator=generator) if shuffle else torch.arange(n)
        for start in range(0, n, batch_size):
            idx = order[start:start + batch_size]
            yield X[idx], y[idx]
    else:
        yield from data


def accuracy(logits: Tensor, y: Tensor) -> float:
    """Fraction of rows whose arg-max logit is the label. logits (N, C), y (N,)."""
    return (logits.argmax(dim=-1) == y).float().mean().item()


@torch.no_grad()
def evaluate(model: nn.Module, data: Any, loss_fn: Callable = F.cross_entropy, batch_size: int = 1024,
             device: torch.device | None = None) -> dict[str, float]:
    """Mean loss and accuracy of ``model`` (in eval mode) over ``data``."""
    device = device or next(model.parameters()).device
    was_training = model.training
    model.eval()
    total_loss, correct, count, classifying = 0.0, 0, 0, True
    for X, y in batches(data, batch_size, shuffle=False):
        X, y = X.to(device), y.to(device)
        out = model(X)
        total_loss += loss_fn(out, y).item() * len(y)  # loss_fn returns a batch mean
        classifying = out.ndim == 2 and y.ndim == 1
        if classifying:
            correct += (out.argmax(dim=-1) == y).sum().item()
        count += len(y)
    model.train(was_training)
    metrics = {"loss": total_loss / count}
    if classifying:
        metrics["acc"] = correct / count
    return metrics


@torch.no_grad()
def predict(model: nn.Module, X: Tensor, batch_size: int = 1024) -> Tensor:
    """Model outputs for ``X`` in eval mode, on the CPU. X (N, ...) -> (N, C)."""
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    out = torch.cat([model(X[i:i + batch_size].to(device)).cpu() for i in range(0, len(X), batch_size)])
    model.train(was_training)
    return out


def fit(model: nn.Module, train: Any, val: Any = None, *, epochs: int = 10, lr: float = 1e-3,
        optimizer: torch.optim.Optimizer | None = None, scheduler: Any = None,
        loss_fn: Callable = F.cross_entropy, batch_size: int = 32, device: torch.device | None = None,
        callbacks: Iterable = (), progress: bool = True, seed: int = 0) -> History:
    """Train ``model`` and return its :class:`History` (loss, acc, val_loss, val_acc, lr per epoch).

    The default optimizer is Adam with ``lr``. ``scheduler`` is stepped once per epoch
    (with the validation loss for ``ReduceLROnPlateau``). Shuffling uses its own
    generator seeded with ``seed``; weight initialisation and dropout use the global
    generator, so call :func:`companion.seed_everything` before building the model for
    runs that repeat exactly on the CPU.
    """
    from tqdm.auto import tqdm

    device = device or get_device()
    model.to(device)
    optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=lr)
    generator = torch.Generator().manual_seed(seed)
    callbacks = list(callbacks)
    history = History()
    for cb in callbacks:
        getattr(cb, "on_train_begin", lambda m: None)(model)
    bar = tqdm(range(epochs), desc="epochs", disable=not progress, leave=True)
    for epoch in bar:
        model.train()
        total_loss, correct, count, classifying = 0.0, 0, 0, True
        for X, y in batches(train, batch_size, shuffle=True, generator=generator):
            X, y = X.to(device), y.to(device)
            optimizer.zero_grad()
            out = model(X)
            loss = loss_fn(out, y)
            if not math.isfinite(loss.item()):
                raise FloatingPointError(f"the loss became {loss.item()} in epoch {epoch + 1}:"
                                         " the learning rate is probably too high")
            loss.backward()
            optimizer.step()
            total_loss += loss.item() * len(y)
            classifying = out.ndim == 2 and y.ndim == 1
            if classifying:
                correct += (out.argmax(dim=-1) == y).sum().item()
            count += len(y)
        logs = {"loss": total_loss / count, "lr": optimizer.param_groups[0]["lr"]}
        if classifying:
            logs["acc"] = correct / count
        if val is not None:
            logs.update({f"val_{k}": v for k, v in evaluate(model, val, loss_fn, device=device).items()})
        history.log(logs)
        bar.set_postfix({k: f"{v:.4f}" for k, v in logs.items() if k != "lr"})
        if scheduler is not None:
            if isinstance(scheduler, torch.optim.lr_scheduler.ReduceLROnPlateau):
                scheduler.step(logs.get("val_loss", logs["loss"]))
            else:
                scheduler.step()
        stop = False
        for cb in callbacks:
            stop |= bool(getattr(cb, "on_epoch_end", lambda *a: False)(epoch, logs, model))
        if stop:
            history.stopped_epoch = epoch
            break
    bar.close()
    for cb in callbacks:
        getattr(cb, "on_train_end", lambda m: None)(model)
    return history


class EarlyStopping:
    """Stop when ``monitor`` has not improved by ``min_delta`` for ``patience`` epochs.

    With ``restore_best=True`` the model gets back the weights of its best epoch at the end.
    """

    def __init__(self, monitor: str = "val_loss", patience: int = 5, mode: str = "min",
                 min_delta: float = 0.0, restore_best: bool = True):
        if mode not in ("min", "max"):
            raise ValueError("mode must be 'min' or 'max'")
        self.monitor, self.patience, self.mode = monitor, patience, mode
        self.min_delta, self.restore_best = min_delta, restore_best

    def on_train_begin(self, model: nn.Module) -> None:
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.wait, self.best_state = -1, 0, None

    def improved(self, value: float) -> bool:
        if self.mode == "min":
            return value < self.best - self.min_delta
        return value > self.best + self.min_delta

    def on_epoch_end(self, epoch: int, logs: dict[str, float], model: nn.Module) -> bool:
        if self.monitor not in logs:
            raise KeyError(f"EarlyStopping monitors {self.monitor!r}, but the logs only have {sorted(logs)}")
        value = logs[self.monitor]
        if self.improved(value):
            self.best, self.best_epoch, self.wait = value, epoch, 0
            if self.restore_best:
                self.best_state = copy.deepcopy(model.state_dict())
            return False
        self.wait += 1
        return self.wait >= self.patience

    def on_train_end(self, model: nn.Module) -> None:
        if self.restore_best and self.best_state is not None:
            model.load_state_dict(self.best_state)
