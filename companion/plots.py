"""Figures the notebooks share. Matplotlib is imported on first use, not at ``import companion``."""
from __future__ import annotations

from typing import Callable, Sequence

import numpy as np


def _plt():
    import matplotlib.pyplot as plt

    return plt


def decision_boundary(predict: Callable[[np.ndarray], np.ndarray], X: np.ndarray, y: np.ndarray, ax=None,
                      title: str = "", margin: float = 0.5, resolution: int = 200):
    """Shade the plane by ``predict`` (N, 2) -> (N,) and scatter the points ``X`` (N, 2) coloured by ``y``."""
    plt = _plt()
    ax = ax or plt.gca()
    (x0, y0), (x1, y1) = X.min(axis=0) - margin, X.max(axis=0) + margin
    gx, gy = np.meshgrid(np.linspace(x0, x1, resolution), np.linspace(y0, y1, resolution))
    grid = np.c_[gx.ravel(), gy.ravel()]
    zz = np.asarray(predict(grid), dtype=float).reshape(gx.shape)
    ax.contourf(gx, gy, zz, levels=20 if zz.max() - zz.min() > 0 else 1, cmap="RdBu_r", alpha=0.35, vmin=0, vmax=1)
    ax.contour(gx, gy, zz, levels=[0.5], colors="k", linewidths=1)
    ax.scatter(X[:, 0], X[:, 1], c=np.asarray(y).ravel(), cmap="RdBu_r", vmin=0, vmax=1, s=120, edgecolors="k")
    ax.set_title(title)
    ax.set_xlabel("$x_1$")
    ax.set_ylabel("$x_2$")
    return ax


def activations(functions: dict, x_range: tuple[float, float] = (-5, 5), axes=None):
    """One panel per activation: the function (solid) and its derivative (dashed).

    functions: name -> (f, df), both mapping a tensor to a tensor of the same shape.
    """
    import torch

    plt = _plt()
    if axes is None:
        _, axes = plt.subplots(1, len(functions), figsize=(3.2 * len(functions), 3), sharey=True)
    x = torch.linspace(*x_range, 401)
    for ax, (name, (f, df)) in zip(np.atleast_1d(axes), functions.items()):
        ax.plot(x, f(x), label="f(x)")
        ax.plot(x, df(x), "--", label="f'(x)")
        ax.axhline(0, color="grey", lw=0.5)
        ax.axvline(0, color="grey", lw=0.5)
        ax.set_title(name)
        ax.set_ylim(-1.5, 3)
    np.atleast_1d(axes)[0].legend(loc="upper left")
    return axes


def history(hist, metrics: Sequence[str] = ("loss", "acc"), axes=None, title: str = ""):
    """Training curves: one panel per metric, with its ``val_`` twin when present."""
    plt = _plt()
    metrics = [m for m in metrics if m in hist]
    if axes is None:
        _, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 3.2))
    for ax, metric in zip(np.atleast_1d(axes), metrics):
        epochs = np.arange(1, len(hist[metric]) + 1)
        ax.plot(epochs, hist[metric], label="train")
        if f"val_{metric}" in hist:
            ax.plot(epochs, hist[f"val_{metric}"], label="validation")
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.legend()
    if title:
        plt.suptitle(title)
    return axes


def image_grid(images: np.ndarray, titles: Sequence[str] | None = None, ncols: int = 8, size: float = 1.4,
               cmap: str = "gray_r"):
    """Show images (N, H, W) in a grid with optional titles."""
    plt = _plt()
    n = len(images)
    nrows = int(np.ceil(n / ncols))
    fig, axes = plt.subplots(nrows, ncols, figsize=(size * ncols, size * nrows * 1.15))
    for i, ax in enumerate(np.atleast_1d(axes).ravel()):
        ax.axis("off")
        if i < n:
            ax.imshow(images[i], cmap=cmap)
            if titles is not None:
                ax.set_title(titles[i], fontsize=8)
    return fig


def curve(values: Sequence[float], xlabel: str = "epoch", ylabel: str = "loss", ax=None, log: bool = False, **kw):
    """A single line plot of ``values`` against their index."""
    plt = _plt()
    ax = ax or plt.gca()
    ax.plot(np.arange(1, len(values) + 1), values, **kw)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if log:
        ax.set_yscale("log")
    return ax
