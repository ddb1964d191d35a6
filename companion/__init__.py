"""The course's companion package.

Reference implementations, offline datasets, the checks that graded exercises call,
the training loop, plots and widgets. ``import companion`` stays light: submodules are
imported on first use (``companion.data``, ``companion.plots``, ...).

Start a notebook with::

    import companion
    device = companion.start()   # seeds everything, picks the device, prints the mode
"""
from __future__ import annotations

import importlib

from .runtime import cache_dir, fast_mode, get_device, pick, seed_everything, start

__version__ = "0.1.0"

_SUBMODULES = {
    "activations", "applications", "attention", "backprop", "callbacks", "checks", "cnn",
    "data", "deploy", "diagnostics", "doctor", "generative", "graphs", "intro", "losses", "models",
    "nas", "optim", "perceptron", "pitfalls", "plots", "pretrained", "regularization",
    "rnn", "runtime", "schedules", "surfaces", "text", "training", "transfer", "widgets",
}

__all__ = ["cache_dir", "fast_mode", "get_device", "pick", "seed_everything", "start",
           *sorted(_SUBMODULES)]


def __getattr__(name: str):
    if name in _SUBMODULES:
        return importlib.import_module(f"{__name__}.{name}")
    raise AttributeError(f"module 'companion' has no attribute {name!r}")
