"""Learner submissions generated from the solution notebooks, each with the score it must get.

A chapter's exercises are read from its solution notebook: every solution cell, the
names it defines, and the test cells that use those names, directly or through another
exercise's function (so a broken ``accuracy`` also costs a ``learning_curve`` that
calls it). Each generator below edits a copy of the solution notebook the way a learner
might, and returns it with the set of test cells that must lose their points; the
expected score is the maximum minus those points, computed, never typed in.
"""
from __future__ import annotations

import ast
import copy
import json
import re
from dataclasses import dataclass, field

from _course import SOLUTIONS, nbgrader_meta, notebook_path


@dataclass
class Exercise:
    grade_id: str                    # the solution cell's id
    index: int                       # its position in the solution notebook
    names: set[str]                  # what it defines at top level
    function: str | None             # its first top-level function (None: it defines a class only)
    uses: set[str] = field(default_factory=set)   # names of other exercises its code calls


@dataclass
class Chapter:
    name: str
    nb: dict
    exercises: list[Exercise]
    tests: dict[str, set[str]]       # test cell id -> names its source uses
    points: dict[str, float]         # test cell id -> points
    deps: dict[str, set[str]] = field(default_factory=dict)  # defined name -> defined names its code uses

    @property
    def max_score(self) -> float:
        return sum(self.points.values())

    def functions(self) -> list[Exercise]:
        return [e for e in self.exercises if e.function]

    def broken_by(self, names: set[str]) -> set[str]:
        """Test cells that fail when ``names`` stop working (through every exercise that calls them)."""
        names = set(names)
        while True:
            more = {name for name, used in self.deps.items() if used & names} - names
            if not more:
                break
            names |= more
        return {t for t, used in self.tests.items() if used & names}

    def score_without(self, names: set[str]) -> float:
        return self.max_score - sum(self.points[t] for t in self.broken_by(names))


def _source(cell) -> str:
    return "".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]


def _loaded_names(src: str) -> set[str]:
    return {n.id for n in ast.walk(ast.parse(src)) if isinstance(n, ast.Name)}


def load(chapter: str) -> Chapter:
    nb = json.loads(notebook_path(SOLUTIONS, chapter).read_text())
    exercises, tests, points = [], {}, {}
    for i, cell in enumerate(nb["cells"]):
        meta = nbgrader_meta(cell)
        if cell["cell_type"] != "code":
            continue
        src = _source(cell)
        if meta.get("solution"):
            tree = ast.parse(src)
            names, function = set(), None
            for node in tree.body:
                if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                    names.add(node.name)
                    if function is None and isinstance(node, ast.FunctionDef):
                        function = node.name
                elif isinstance(node, ast.Assign):
                    names |= {t.id for t in node.targets if isinstance(t, ast.Name)}
            exercises.append(Exercise(meta["grade_id"], i, names, function, _loaded_names(src) - names))
        elif meta.get("grade"):
            tests[meta["grade_id"]] = _loaded_names(src)
            points[meta["grade_id"]] = float(meta.get("points", 0))
    defined = set().union(*(e.names for e in exercises))
    deps = {}
    for e in exercises:
        e.uses &= defined
        for node in ast.parse(_source(nb["cells"][e.index])).body:
            if isinstance(node, (ast.FunctionDef, ast.ClassDef)):
                deps[node.name] = {n.id for n in ast.walk(node) if isinstance(n, ast.Name)} & defined - {node.name}
    return Chapter(chapter, nb, exercises, tests, points, deps)


def _cell(nb: dict, grade_id: str) -> dict:
    return next(c for c in nb["cells"] if nbgrader_meta(c).get("grade_id") == grade_id)


def _append(nb: dict, e: Exercise, code: str) -> None:
    cell = _cell(nb, e.grade_id)
    cell["source"] = _source(cell).rstrip() + "\n\n" + code.strip() + "\n"


WRAP = """
import functools
_original_{fn} = {fn}

@functools.wraps(_original_{fn})
def {fn}(*args, **kwargs):
    out = _original_{fn}(*args, **kwargs)
{body}
"""


def _wrap(nb: dict, e: Exercise, body: str) -> None:
    _append(nb, e, WRAP.format(fn=e.function, body=body))


# --------------------------------------------------------------- bad submissions

def syntax_error(nb, e):
    _append(nb, e, "this line is not python (")
    return e.names


def exception(nb, e):
    _append(nb, e, f"def {e.function}(*args, **kwargs):\n    raise ValueError('a bug in my code')")
    return {e.function}


def infinite_loop(nb, e):
    _append(nb, e, f"def {e.function}(*args, **kwargs):\n    while True:\n        pass")
    return {e.function}


def nan_result(nb, e):
    _wrap(nb, e, "    import torch, numpy as np\n"
                 "    if isinstance(out, torch.Tensor) and out.is_floating_point():\n"
                 "        return out * float('nan')\n"
                 "    if isinstance(out, np.ndarray) and out.dtype.kind == 'f':\n"
                 "        return out * np.nan\n"
                 "    if isinstance(out, float):\n"
                 "        return float('nan')\n"
                 "    raise TypeError('a result without floats, made wrong another way')")
    return {e.function}


def wrong_shape(nb, e):
    _wrap(nb, e, "    import torch, numpy as np\n"
                 "    if isinstance(out, torch.Tensor):\n"
                 "        return out.to(torch.float16).unsqueeze(0)\n"
                 "    if isinstance(out, np.ndarray):\n"
                 "        return out.astype(np.float16)[None]\n"
                 "    return [out, out]")
    return {e.function}


def renamed(nb, e):
    cell = _cell(nb, e.grade_id)
    src = _source(cell)
    assert f"def {e.function}(" in src
    cell["source"] = src.replace(f"def {e.function}(", f"def {e.function}_v2(", 1)
    return {e.function}


def noisy(nb, e):
    """Prints to stderr and warns on every call, and is otherwise right: no points lost."""
    _wrap(nb, e, "    import sys, warnings\n"
                 "    print('debugging: got here', file=sys.stderr)\n"
                 "    warnings.warn('a warning from my own code')\n"
                 "    return out")
    return set()


def rearranged(nb, passing: list[Exercise], deps: dict[str, set[str]]):
    """Deleted, duplicated and reordered cells, all around exercises that are right: no points lost."""
    original = copy.deepcopy(nb)
    cells = nb["cells"]
    first = passing[0]
    # the learner moves the last exercise that calls no other (its solution and tests) up, after the setup cell
    movable = [e for e in passing if not any(deps.get(n) for n in e.names)] or passing
    last = next((e for e in reversed(movable) if e is not first), movable[-1])
    block_ids = {last.grade_id, *_tests_after(original, last.grade_id)}
    block = [c for c in cells if nbgrader_meta(c).get("grade_id") in block_ids]
    rest = [c for c in cells if nbgrader_meta(c).get("grade_id") not in block_ids]
    setup = next(i for i, c in enumerate(rest) if nbgrader_meta(c).get("grade_id") == "setup")
    cells[:] = rest[:setup + 1] + block + rest[setup + 1:]
    # deletes a test cell (nbgrader puts it back) and an instructions cell
    deleted = _tests_after(original, first.grade_id)[0]
    cells[:] = [c for c in cells if nbgrader_meta(c).get("grade_id") != deleted]
    md = next(i for i, c in enumerate(cells) if c["cell_type"] == "markdown" and not nbgrader_meta(c).get("locked"))
    del cells[md]
    # and duplicates a solution cell
    at = next(i for i, c in enumerate(cells) if nbgrader_meta(c).get("grade_id") == first.grade_id)
    cells.insert(at + 1, copy.deepcopy(cells[at]))
    return set()


def _tests_after(nb: dict, grade_id: str) -> list[str]:
    ids = [nbgrader_meta(c).get("grade_id") for c in nb["cells"]]
    out = []
    for c in nb["cells"][ids.index(grade_id) + 1:]:
        meta = nbgrader_meta(c)
        if meta.get("solution"):
            if out:
                break
            continue
        if meta.get("grade"):
            out.append(meta["grade_id"])
    return out


def bad_submissions(ch: Chapter) -> dict[str, tuple[dict, set[str]]]:
    """``{name: (notebook, names that stop working)}``: two submissions with every kind of bad cell."""
    fns = ch.functions()
    assert len(fns) >= 4, f"{ch.name}: the bad-submission suite needs 4 exercises that are functions"
    out = {}
    nb, broken = copy.deepcopy(ch.nb), set()
    for make, e in zip((syntax_error, exception, infinite_loop), fns):
        broken |= make(nb, e)
    noisy(nb, fns[3])
    out["bad-errors"] = (nb, broken)
    nb, broken = copy.deepcopy(ch.nb), set()
    for make, e in zip((nan_result, wrong_shape, renamed), fns[1:] + fns[:1]):
        broken |= make(nb, e)
    passing = [e for e in ch.exercises if not (e.names & broken) and not ch.broken_by(e.names) & ch.broken_by(broken)]
    rearranged(nb, passing or fns, ch.deps)
    out["bad-results"] = (nb, broken)
    return out


# --------------------------------------------------------------- tampering

def _check_calls(ch: Chapter, e: Exercise) -> list[str]:
    """Names of the checks a test cell of ``e`` calls (``check.<name>(...)``)."""
    names = []
    for t in _tests_after(ch.nb, e.grade_id):
        names += re.findall(r"check\.(\w+)\(", _source(_cell(ch.nb, t)))
    return sorted(set(names))


def tampering(ch: Chapter) -> tuple[dict, set[str]]:
    """One submission that breaks some exercises and tries to pass them anyway, every way we know."""
    # keep one exercise honest and right, one that calls no other, so the score is not 0
    honest = next(e for e in reversed(ch.functions()) if not any(ch.deps.get(n) for n in e.names))
    fns = [e for e in ch.functions() if e is not honest]
    nb, broken = copy.deepcopy(ch.nb), set()
    attempts = [
        # replace the whole `check` object with one that passes everything
        'check = type("AlwaysPass", (), {"__getattr__": lambda self, name: (lambda *a, **k: print("\\u2714 passed"))})()',
        # replace this exercise's checks
        lambda e: "\n".join(f"check.{name} = lambda *a, **k: print('\\u2714 passed')" for name in _check_calls(ch, e)),
        # patch the engine of the checks, through companion and through an import
        "import companion\ncompanion.checks.core.compare = lambda *a, **k: None\n"
        "import companion.checks.core as core\ncore.check_function = lambda *a, **k: None",
        # make every comparison in torch and NumPy say "equal"
        "import numpy as np, torch\ntorch.allclose = lambda *a, **k: True\nnp.allclose = lambda *a, **k: True\n"
        "np.isclose = lambda a, b, **k: np.ones(np.broadcast(a, b).shape, dtype=bool)",
        # indirect routes
        'globals()["check"] = None\nsetattr(companion, "checks", None)\nexec("check = None")',
    ]
    for i, attempt in enumerate(attempts):
        e = fns[i % len(fns)]
        code = attempt(e) if callable(attempt) else attempt
        if i == 3:  # comparisons patched: return a wrong value instead of raising
            _wrap(nb, e, "    import torch, numpy as np\n"
                         "    if isinstance(out, (torch.Tensor, np.ndarray)):\n"
                         "        return out * 2 + 1\n"
                         "    raise ValueError('a bug in my code')")
        else:
            _append(nb, e, f"def {e.function}(*args, **kwargs):\n    raise ValueError('a bug in my code')")
        _append(nb, e, code)
        broken.add(e.function)
    # and edit a locked test cell so that it passes (nbgrader restores it from the gradebook)
    e = fns[0]
    for t in _tests_after(nb, e.grade_id):
        _cell(nb, t)["source"] = "print('\\u2714 all good')"
    return nb, broken
