"""The checks that learners run before submitting and that nbgrader's test cells call.

A check compares a learner's function with the companion's reference over a list of
:class:`Case` inputs, on a device, and either prints a one-line verdict or raises
:class:`CheckFailed` with a message written for the learner: which case, what was
expected and what came back (shape, dtype, device, the first differing entry), and, when
the answer matches a known classic mistake, what that mistake is. An exception raised
by the learner's code becomes a ``CheckFailed`` too, naming the line that raised it.

Per-chapter checks live in ``companion.checks.chNN``; this module is the engine.
"""
from .core import (
    Case,
    CheckFailed,
    check_function,
    check_gradient,
    compare,
    describe,
    learner_facing,
    passed,
)

__all__ = ["Case", "CheckFailed", "check_function", "check_gradient", "compare", "describe", "learner_facing", "passed"]
