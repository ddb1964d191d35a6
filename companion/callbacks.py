"""Callbacks for :func:`companion.training.fit`: checkpoints, learning-rate reduction, logs.

A callback is any object with some of ``on_train_begin(model)``,
``on_epoch_end(epoch, logs, model) -> bool`` (True stops training) and
``on_train_end(model)``. ``fit`` does not hand callbacks its optimizer, so a callback
that changes the learning rate takes the optimizer in its constructor.

=====================  ========================================================
Keras                  here
=====================  ========================================================
ModelCheckpoint        :class:`ModelCheckpoint` (best weights on disk, atomic write)
ReduceLROnPlateau      :class:`ReduceLROnPlateau` (or ``fit(..., scheduler=...)``)
EarlyStopping          :class:`EarlyStopping` (``companion.training``'s, re-exported)
CSVLogger              :class:`CSVLogger`
TensorBoard            :class:`JSONLogger`: one JSON object per epoch with the scalars
                       and, optionally, per-layer weight/gradient norms and histograms
                       (the ``tensorboard`` package is not needed); read it back with
                       :func:`read_json_log`
=====================  ========================================================
"""
from __future__ import annotations

import csv
import json
import math
import os
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .training import EarlyStopping

__all__ = ["Callback", "ModelCheckpoint", "ReduceLROnPlateau", "EarlyStopping", "CSVLogger", "JSONLogger",
           "read_csv_log", "read_json_log"]


class Callback:
    """Base class with do-nothing hooks; subclass and override what you need."""

    def on_train_begin(self, model: nn.Module) -> None:
        pass

    def on_epoch_end(self, epoch: int, logs: dict[str, float], model: nn.Module) -> bool:
        return False

    def on_train_end(self, model: nn.Module) -> None:
        pass


def _better(mode: str, value: float, best: float, min_delta: float = 0.0) -> bool:
    if not math.isfinite(value):
        return False
    return value < best - min_delta if mode == "min" else value > best + min_delta


def _check_mode(mode: str) -> str:
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', got {mode!r}")
    return mode


def _monitored(name: str, logs: dict[str, float], monitor: str) -> float:
    if monitor not in logs:
        raise KeyError(f"{name} monitors {monitor!r}, but the logs only have {sorted(logs)}"
                       " (pass validation data to fit for the val_ metrics)")
    return float(logs[monitor])


def atomic_save(obj: Any, path: str | os.PathLike) -> Path:
    """``torch.save`` to a temporary file in the same folder, then rename it over ``path``.

    A rename within one folder is atomic, so a crash mid-write never leaves a
    half-written checkpoint where the last good one was.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    return path


class ModelCheckpoint(Callback):
    """Keep the best weights seen so far on disk, in ``folder``.

    After every epoch whose ``monitor`` value improves on the best so far (by more than
    ``min_delta``), the model's ``state_dict`` is written to ``folder/filename``
    atomically (:func:`atomic_save`). With ``save_best_only=False`` the weights of every
    epoch also go to ``folder/last.pt``. :meth:`load_best` puts the best weights into a
    model; ``best``, ``best_epoch`` and ``path`` say what was kept.
    """

    def __init__(self, folder: str | os.PathLike, monitor: str = "val_loss", mode: str = "min",
                 save_best_only: bool = True, filename: str = "best.pt", min_delta: float = 0.0,
                 verbose: bool = False):
        self.folder, self.monitor, self.mode = Path(folder), monitor, _check_mode(mode)
        self.save_best_only, self.filename, self.min_delta, self.verbose = save_best_only, filename, min_delta, verbose
        self.path = self.folder / filename
        self.best, self.best_epoch, self.saves = (math.inf if mode == "min" else -math.inf), None, 0

    def on_train_begin(self, model: nn.Module) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        self.best = math.inf if self.mode == "min" else -math.inf
        self.best_epoch, self.saves = None, 0

    def on_epoch_end(self, epoch: int, logs: dict[str, float], model: nn.Module) -> bool:
        value = _monitored("ModelCheckpoint", logs, self.monitor)
        if _better(self.mode, value, self.best, self.min_delta):
            if self.verbose:
                print(f"epoch {epoch + 1}: {self.monitor} improved from {self.best:.4f} to {value:.4f};"
                      f" saving {self.path}")
            self.best, self.best_epoch = value, epoch
            atomic_save({"epoch": epoch, self.monitor: value, "state_dict": model.state_dict()}, self.path)
            self.saves += 1
        if not self.save_best_only:
            atomic_save({"epoch": epoch, self.monitor: value, "state_dict": model.state_dict()},
                        self.folder / "last.pt")
        return False

    def load_best(self, model: nn.Module) -> nn.Module:
        """Load the saved best weights into ``model`` (on its device) and return it."""
        if not self.path.exists():
            raise FileNotFoundError(f"no checkpoint at {self.path}: has the model been trained with this callback?")
        device = next(model.parameters()).device
        saved = torch.load(self.path, map_location=device, weights_only=True)
        model.load_state_dict(saved["state_dict"])
        return model


class ReduceLROnPlateau(Callback):
    """Multiply the learning rate by ``factor`` when ``monitor`` has not improved for ``patience`` epochs.

    A thin callback around ``torch.optim.lr_scheduler.ReduceLROnPlateau`` (same arguments;
    ``threshold`` is relative, PyTorch's default). ``fit`` does not pass its optimizer to
    callbacks, so give it here: ``ReduceLROnPlateau(optimizer, ...)`` and
    ``fit(..., optimizer=optimizer, callbacks=[...])``. ``fit(..., scheduler=torch.optim.
    lr_scheduler.ReduceLROnPlateau(optimizer))`` does the same on the validation loss.
    ``reductions`` lists the epochs after which the rate was cut.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, monitor: str = "val_loss", mode: str = "min",
                 factor: float = 0.5, patience: int = 5, min_lr: float = 0.0, threshold: float = 1e-4,
                 cooldown: int = 0, verbose: bool = False):
        self.optimizer, self.monitor, self.verbose = optimizer, monitor, verbose
        self.kwargs = dict(mode=_check_mode(mode), factor=factor, patience=patience, min_lr=min_lr,
                           threshold=threshold, cooldown=cooldown)
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(optimizer, **self.kwargs)
        self.reductions: list[int] = []

    def on_train_begin(self, model: nn.Module) -> None:
        self.scheduler = torch.optim.lr_scheduler.ReduceLROnPlateau(self.optimizer, **self.kwargs)
        self.reductions = []

    def on_epoch_end(self, epoch: int, logs: dict[str, float], model: nn.Module) -> bool:
        before = [g["lr"] for g in self.optimizer.param_groups]
        self.scheduler.step(_monitored("ReduceLROnPlateau", logs, self.monitor))
        after = [g["lr"] for g in self.optimizer.param_groups]
        if after != before:
            self.reductions.append(epoch)
            if self.verbose:
                print(f"epoch {epoch + 1}: learning rate {before[0]:.3g} -> {after[0]:.3g}")
        return False


def _plain(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.item() if value.numel() == 1 else value.tolist()
    return value


class CSVLogger(Callback):
    """Write one row per epoch (epoch number, then every metric in the logs) to a CSV file.

    The file is rewritten when training begins (``append=False``) and each row is flushed
    as soon as its epoch ends, so a crashed run keeps what it logged. Read it back with
    :func:`read_csv_log`.
    """

    def __init__(self, path: str | os.PathLike, append: bool = False):
        self.path, self.append = Path(path), append
        self.keys: list[str] | None = None

    def on_train_begin(self, model: nn.Module) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if not self.append or not self.path.exists():
            self.path.write_text("")
            self.keys = None
        else:
            with open(self.path, newline="") as fh:
                header = next(csv.reader(fh), None)
            self.keys = header[1:] if header else None

    def on_epoch_end(self, epoch: int, logs: dict[str, float], model: nn.Module) -> bool:
        if self.keys is None:
            self.keys = list(logs)
            with open(self.path, "a", newline="") as fh:
                csv.writer(fh).writerow(["epoch", *self.keys])
        with open(self.path, "a", newline="") as fh:
            csv.writer(fh).writerow([epoch, *(_plain(logs.get(k, "")) for k in self.keys)])
        return False


def read_csv_log(path: str | os.PathLike) -> dict[str, list[float]]:
    """A :class:`CSVLogger` file as ``{column: [value per epoch]}`` (numbers as floats, epoch as int)."""
    with open(path, newline="") as fh:
        rows = list(csv.DictReader(fh))
    columns: dict[str, list] = {key: [] for key in (rows[0] if rows else {})}
    for row in rows:
        for key, value in row.items():
            columns[key].append(int(value) if key == "epoch" else (float(value) if value != "" else math.nan))
    return columns


def _histogram(t: torch.Tensor, bins: int) -> dict[str, list[float]]:
    t = t.detach().float().flatten().cpu()
    lo, hi = t.min().item(), t.max().item()
    if lo == hi:
        lo, hi = lo - 0.5, hi + 0.5
    counts = torch.histc(t, bins=bins, min=lo, max=hi)
    return {"min": lo, "max": hi, "counts": counts.tolist()}


class JSONLogger(Callback):
    """A TensorBoard-style event log without TensorBoard: one JSON object per line, one line per epoch.

    Each line holds ``{"epoch", "time", "scalars": {...}}``; with ``histograms=True`` also
    ``"layers"``: for every Linear/Conv layer (named as in ``model.named_modules()``) the
    weight's shape and norm, the norm of its last gradient (fit zeroes the gradients at the
    start of each batch, so this is the gradient of the epoch's last batch) and a
    ``bins``-bin histogram of the weights, like Keras's ``TensorBoard(histogram_freq=1)``.
    Read it back with :func:`read_json_log`.
    """

    def __init__(self, path: str | os.PathLike, histograms: bool = False, bins: int = 30):
        self.path, self.histograms, self.bins = Path(path), histograms, bins

    def on_train_begin(self, model: nn.Module) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.write_text("")
        self.start = time.perf_counter()

    def on_epoch_end(self, epoch: int, logs: dict[str, float], model: nn.Module) -> bool:
        from .diagnostics import LAYERS

        event: dict[str, Any] = {"epoch": epoch, "time": round(time.perf_counter() - self.start, 4),
                                 "scalars": {k: _plain(v) for k, v in logs.items()}}
        if self.histograms:
            layers = {}
            for name, module in model.named_modules():
                if isinstance(module, LAYERS):
                    w = module.weight
                    layers[name] = {"shape": list(w.shape), "weight_norm": w.detach().norm().item(),
                                    "grad_norm": w.grad.norm().item() if w.grad is not None else None,
                                    "histogram": _histogram(w, self.bins)}
            event["layers"] = layers
        with open(self.path, "a") as fh:
            fh.write(json.dumps(event) + "\n")
        return False


def read_json_log(path: str | os.PathLike) -> list[dict[str, Any]]:
    """The events of a :class:`JSONLogger` file, one dict per epoch, in order."""
    with open(path) as fh:
        return [json.loads(line) for line in fh if line.strip()]
