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


def fresh(chapter: str):
    """The checks of ``chapter`` (e.g. ``"ch02"``) from a private copy of the companion.

    The copy is loaded from the package's files on disk under a new module name, so
    nothing a notebook did to ``companion`` (or to a name like ``check``) reaches it: a
    replaced check, reference or helper stays replaced only in the notebook's own copy.
    The grader calls this at the top of every test cell.
    """
    import importlib
    import importlib.util
    import itertools
    import re
    import sys
    from pathlib import Path

    if not re.fullmatch(r"ch\d\d", chapter):
        raise ValueError(f"chapter should look like 'ch02', got {chapter!r}")
    global _COUNTER
    _COUNTER = globals().get("_COUNTER") or itertools.count()
    package = Path(__file__).resolve().parent.parent
    name = f"_companion_graded_{next(_COUNTER)}"
    spec = importlib.util.spec_from_file_location(name, package / "__init__.py",
                                                  submodule_search_locations=[str(package)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return importlib.import_module(f"{name}.checks.{chapter}")


__all__ = ["fresh", "Case", "CheckFailed", "check_function", "check_gradient", "compare", "describe", "learner_facing", "passed"]
