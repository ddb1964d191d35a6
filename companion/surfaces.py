"""Two-dimensional test surfaces for optimizers, path tracing, plots and an interactive explorer.

A surface's function takes a tensor of points (..., 2) and returns their heights (...),
so the same code evaluates one point for the optimizer and a whole grid for the plot.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch
from torch import Tensor


@dataclass(frozen=True)
class Surface:
    """A test function with where to start, where its minimum is, and what to draw."""

    name: str
    f: Callable[[Tensor], Tensor]
    start: tuple[float, float]
    minimum: tuple[float, float]
    xlim: tuple[float, float]
    ylim: tuple[float, float]
    lrs: dict = field(default_factory=dict)  # a learning rate per optimizer that works on this surface

    def __call__(self, xy: Tensor) -> Tensor:
        return self.f(xy)


def _ravine(xy: Tensor) -> Tensor:
    # curvature 0.1 along x and 4 along y: condition number 40
    return 0.05 * xy[..., 0] ** 2 + 2.0 * xy[..., 1] ** 2


_C, _S = math.cos(math.pi / 4), math.sin(math.pi / 4)


def _tilted(xy: Tensor) -> Tensor:
    # the same ravine turned by 45 degrees, so its axes are no longer the coordinate axes
    u = _C * xy[..., 0] + _S * xy[..., 1]
    v = -_S * xy[..., 0] + _C * xy[..., 1]
    return 0.05 * u**2 + 2.0 * v**2


def _rosenbrock(xy: Tensor) -> Tensor:
    return (1 - xy[..., 0]) ** 2 + 100 * (xy[..., 1] - xy[..., 0] ** 2) ** 2


# Picked from a grid of learning rates: good, not extreme, values for 60 to 500 steps.
_QUADRATIC_LRS = {"SGD": 0.4, "momentum": 0.1, "Nesterov": 0.1, "AdaGrad": 1.0, "RMSprop": 0.1, "Adam": 0.5}

SURFACES = {
    "ravine": Surface("ravine", _ravine, (-9.0, 1.5), (0.0, 0.0), (-10, 10), (-2.5, 2.5), _QUADRATIC_LRS),
    "tilted ravine": Surface("tilted ravine", _tilted, (-7.0, -5.0), (0.0, 0.0), (-8, 8), (-8, 8), _QUADRATIC_LRS),
    "rosenbrock": Surface("rosenbrock", _rosenbrock, (-1.5, 2.0), (1.0, 1.0), (-2, 2), (-1, 3),
                          {"SGD": 1.5e-3, "momentum": 1e-3, "Nesterov": 1e-3, "AdaGrad": 0.3, "RMSprop": 0.02,
                           "Adam": 0.2}),
}


def trace(surface: Surface, make_optimizer: Callable, steps: int = 100, start=None) -> np.ndarray:
    """Run ``make_optimizer([point])`` on ``surface`` for ``steps`` steps from ``start``.

    Returns the path, a float64 array (steps + 1, 2) beginning at the start. The path is
    cut short if it leaves the plane (the optimizer diverged).
    """
    point = torch.tensor(start if start is not None else surface.start, dtype=torch.float64, requires_grad=True)
    optimizer = make_optimizer([point])
    path = [point.detach().clone().numpy()]
    for _ in range(steps):
        optimizer.zero_grad()
        surface(point).backward()
        optimizer.step()
        now = point.detach().clone().numpy()
        if not np.isfinite(now).all() or np.abs(now).max() > 1e6:
            break
        path.append(now)
    return np.array(path)


def heights(surface: Surface, path: np.ndarray) -> np.ndarray:
    """The surface's value at each point of a path (N, 2) -> (N,)."""
    return surface(torch.as_tensor(path, dtype=torch.float64)).numpy()


def plot_paths(surface: Surface, paths: dict, ax=None, title: str | None = None, legend: bool = True):
    """Contours of ``surface`` (log-spaced) with each path of ``{label: (N, 2) array}`` drawn on top."""
    import matplotlib.pyplot as plt

    ax = ax or plt.gca()
    gx, gy = np.meshgrid(np.linspace(*surface.xlim, 300), np.linspace(*surface.ylim, 300))
    z = surface(torch.as_tensor(np.stack([gx, gy], axis=-1))).numpy()
    floor = float(surface(torch.tensor(surface.minimum, dtype=torch.float64)))
    ax.contourf(gx, gy, np.log10(z - floor + 1e-3), levels=30, cmap="Greys", alpha=0.55)
    ax.contour(gx, gy, np.log10(z - floor + 1e-3), levels=15, colors="grey", linewidths=0.4)
    for label, path in paths.items():
        line, = ax.plot(path[:, 0], path[:, 1], "-", lw=1.6, label=label)
        ax.plot(path[:, 0], path[:, 1], ".", ms=3, color=line.get_color())
    ax.plot(*surface.start, "o", color="k", ms=6)
    ax.plot(*surface.minimum, "*", color="gold", mec="k", ms=14)
    ax.set(xlim=surface.xlim, ylim=surface.ylim, xlabel="$w_1$", ylabel="$w_2$", title=title or surface.name)
    if legend:
        ax.legend(fontsize=8, loc="best")
    return ax


def optimizer_explorer():
    """Sliders for the learning rate, momentum (beta_1 for Adam) and steps; watch the path on a surface.

    Draws the companion optimizer's path (solid) with ``torch.optim``'s on top (dotted) and
    the height after each step. Returns the ipywidgets container: leave it as a cell's
    last expression to show it.
    """
    import ipywidgets as w
    import matplotlib.pyplot as plt

    from . import optim as O

    rules = O.catalogue()
    surface_w = w.Dropdown(options=list(SURFACES), value="ravine", description="surface")
    rule_w = w.Dropdown(options=list(rules), value="momentum", description="optimizer")
    lr_w = w.FloatLogSlider(value=0.1, base=10, min=-4, max=0.5, step=0.05, description="learning rate")
    mom_w = w.FloatSlider(value=0.9, min=0.0, max=0.99, step=0.01, description="momentum/β₁")
    steps_w = w.IntSlider(value=100, min=10, max=500, step=10, description="steps")
    out = w.Output()

    def kwargs(rule: str) -> dict:
        kw = {"lr": lr_w.value}
        if rule in ("momentum", "Nesterov"):
            kw.update(momentum=mom_w.value, nesterov=rule == "Nesterov")
        if rule == "Adam":
            kw["betas"] = (mom_w.value, 0.999)
        return kw

    def draw(*_):
        surface = SURFACES[surface_w.value]
        ours, theirs, _ = rules[rule_w.value]
        kw = kwargs(rule_w.value)
        if rule_w.value in ("momentum", "Nesterov") and kw["momentum"] == 0:
            kw.update(momentum=0.0, nesterov=False)
        path = trace(surface, lambda p: ours(p, **kw), steps_w.value)
        check = trace(surface, lambda p: theirs(p, **kw), steps_w.value)
        with out:
            out.clear_output(wait=True)
            fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4), gridspec_kw={"width_ratios": [1.4, 1]})
            plot_paths(surface, {f"{rule_w.value} (companion)": path}, ax=left, legend=False)
            left.plot(check[:, 0], check[:, 1], ":", color="k", lw=1, label="torch.optim")
            left.legend(fontsize=8)
            h = heights(surface, path) - float(surface(torch.tensor(surface.minimum, dtype=torch.float64)))
            right.semilogy(np.arange(len(h)), np.maximum(h, 1e-16))
            diverged = len(path) < steps_w.value + 1
            right.set(xlabel="step", ylabel="height above the minimum",
                      title="diverged!" if diverged else f"after {len(h) - 1} steps: {h[-1]:.2e}")
            plt.tight_layout()
            plt.show()

    for control in (surface_w, rule_w, lr_w, mom_w, steps_w):
        control.observe(draw, names="value")

    def suggest(*_):
        lr_w.value = SURFACES[surface_w.value].lrs.get(rule_w.value, lr_w.value)

    surface_w.observe(suggest, names="value")
    rule_w.observe(suggest, names="value")
    suggest()
    box = w.VBox([w.HBox([surface_w, rule_w]), w.HBox([lr_w, mom_w, steps_w]), out])
    draw()
    return box
