"""Neural architecture search of chapter 7, in its simplest honest form: a budgeted random search.

A *search space* says which architectures are allowed (here small MLPs and 1-D CNNs
for MNIST-1D, with a depth, a width, an activation and a learning rate); a *budget*
says how many to try. Each trial samples an architecture, trains it briefly and scores
it on a validation set. Random search is the baseline every NAS method must beat (Li &
Talwalkar, 2019, found it hard to beat).
"""
from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
from torch import nn

from .models import count_parameters

SPACE = {
    "kind": ("mlp", "cnn"),
    "depth": (1, 2, 3),
    "width": (16, 32, 64, 128),
    "activation": ("relu", "gelu", "tanh"),
    "lr": (1e-3, 2e-2),  # sampled log-uniformly between these two
}
ACTIVATIONS = {"relu": nn.ReLU, "gelu": nn.GELU, "tanh": nn.Tanh}


def sample_architecture(rng: np.random.Generator, space: dict = SPACE) -> dict:
    """Draw one architecture from ``space``: a dict with kind, depth, width, activation and lr."""
    lo, hi = space["lr"]
    return {
        "kind": str(rng.choice(space["kind"])),
        "depth": int(rng.choice(space["depth"])),
        "width": int(rng.choice(space["width"])),
        "activation": str(rng.choice(space["activation"])),
        "lr": float(math.exp(rng.uniform(math.log(lo), math.log(hi)))),
    }


def build(arch: dict, n_in: int = 40, n_classes: int = 10) -> nn.Sequential:
    """The network an architecture dict describes; input (B, n_in) signals, output (B, n_classes) logits.

    ``mlp``: ``depth`` hidden layers of ``width`` units. ``cnn``: ``depth`` convolutions
    with ``width`` channels, stride 2 and padding 1, the first with kernel 5 and the others
    with kernel 3 (the MNIST-1D paper's CNN is depth 3 with 25 channels), then one linear
    layer on the flattened feature maps.
    """
    act = ACTIVATIONS[arch["activation"]]
    width, depth = arch["width"], arch["depth"]
    if arch["kind"] == "mlp":
        layers: list[nn.Module] = []
        size = n_in
        for _ in range(depth):
            layers += [nn.Linear(size, width), act()]
            size = width
        return nn.Sequential(*layers, nn.Linear(size, n_classes))
    if arch["kind"] == "cnn":
        layers = [nn.Unflatten(1, (1, n_in))]
        channels, length = 1, n_in
        for i in range(depth):
            k = 5 if i == 0 else 3
            layers += [nn.Conv1d(channels, width, kernel_size=k, stride=2, padding=1), act()]
            channels, length = width, (length + 2 - k) // 2 + 1
        return nn.Sequential(*layers, nn.Flatten(), nn.Linear(channels * length, n_classes))
    raise ValueError(f"unknown kind {arch['kind']!r}")


def describe(arch: dict) -> str:
    """A short name such as ``cnn 3x64 gelu lr 2.1e-03``."""
    return f"{arch['kind']} {arch['depth']}x{arch['width']} {arch['activation']} lr {arch['lr']:.1e}"


@dataclass
class Trial:
    """One architecture tried: what it was, its size, its validation accuracy, its training time, the trained model."""

    arch: dict
    n_params: int
    val_acc: float
    seconds: float
    history: dict = field(default_factory=dict, repr=False)
    model: nn.Module | None = field(default=None, repr=False)


def random_search(train, val, n_trials: int, epochs: int, seed: int = 0, batch_size: int = 100,
                  space: dict = SPACE, device=None, progress: bool = True) -> list[Trial]:
    """Try ``n_trials`` random architectures, each trained ``epochs`` epochs with Adam; score on ``val``.

    train, val: ``(X, y)`` tensor pairs. The architectures come from a NumPy generator
    seeded with ``seed``; each network is initialised after seeding torch with
    ``seed + trial``, so a search repeats exactly on the CPU.
    """
    from tqdm.auto import tqdm

    from .runtime import seed_everything
    from .training import evaluate, fit

    rng = np.random.default_rng(seed)
    trials = []
    bar = tqdm(range(n_trials), desc="trials", disable=not progress)
    for i in bar:
        arch = sample_architecture(rng, space)
        seed_everything(seed + i)
        model = build(arch, n_in=train[0].shape[1], n_classes=int(train[1].max()) + 1)
        start = time.perf_counter()
        hist = fit(model, train, epochs=epochs, lr=arch["lr"], batch_size=batch_size, device=device,
                   progress=False, seed=seed + i)
        acc = evaluate(model, val, device=device)["acc"]
        trials.append(Trial(arch, count_parameters(model), acc, time.perf_counter() - start, hist.metrics, model))
        bar.set_postfix(best=f"{max(t.val_acc for t in trials):.1%}")
    bar.close()
    return trials


def pareto_front(n_params, acc) -> np.ndarray:
    """Which trials no other trial beats on both size and accuracy.

    n_params, acc: (T,) sequences. Trial j *dominates* trial i when it is at least as
    small (n_params[j] <= n_params[i]) and at least as accurate (acc[j] >= acc[i]), and
    strictly better in at least one of the two. Returns a (T,) bool array, True for the
    trials that no trial dominates (identical trials keep each other on the front).
    """
    p = np.asarray(n_params, dtype=float)
    a = np.asarray(acc, dtype=float)
    no_worse = (p[None, :] <= p[:, None]) & (a[None, :] >= a[:, None])  # [i, j]: j is no worse than i
    better = (p[None, :] < p[:, None]) | (a[None, :] > a[:, None])
    return ~(no_worse & better).any(axis=1)
