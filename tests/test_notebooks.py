"""Every solution notebook runs cleanly in fast mode within its budget, and every release
notebook runs to the end with only its exercise cells failing.

(nbval also executes the solution notebooks cell by cell: `pytest --nbval-lax solutions`,
which `make test` includes through pyproject's testpaths.)
"""
from __future__ import annotations

import nbformat
import pytest

from _course import (CHAPTERS, COURSE, DEFAULT_FAST_BUDGET_S, FAST_BUDGET_S, SOLUTIONS, error_cells,
                     execute, is_exercise_cell, nbgrader_meta, notebook_path)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _fast_mode(monkeypatch):
    monkeypatch.setenv("COURSE_FAST", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solution_runs_clean_within_fast_budget(chapter):
    nb, seconds = execute(notebook_path(SOLUTIONS, chapter), allow_errors=False)
    budget = FAST_BUDGET_S.get(chapter, DEFAULT_FAST_BUDGET_S)
    print(f"{chapter}: fast mode executed in {seconds:.1f} s (budget {budget} s)")
    assert seconds <= budget, f"{chapter} took {seconds:.1f} s in fast mode; the budget is {budget} s"
    checks = [c for c in nb.cells if nbgrader_meta(c).get("grade")]
    assert checks, "a chapter without graded cells"
    for cell in checks:
        text = "".join(o.get("text", "") for o in cell.outputs if o.get("output_type") == "stream")
        assert "\u2714" in text, f"test cell {nbgrader_meta(cell)['grade_id']} printed no passing verdict"
        assert not any(o.get("name") == "stderr" for o in cell.outputs), \
            f"test cell {nbgrader_meta(cell)['grade_id']} wrote to stderr, which nbgrader scores as 0"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_release_runs_to_the_end_with_only_exercises_failing(chapter):
    nb, _ = execute(notebook_path(COURSE, chapter), allow_errors=True)
    failing = set(error_cells(nb))
    outside = [i for i in failing if not is_exercise_cell(nb.cells[i])]
    assert not outside, "cells outside the exercises failed: " + "; ".join(
        f"cell {i}: {nb.cells[i].source[:80]!r}" for i in outside)
    tests = [i for i, c in enumerate(nb.cells) if nbgrader_meta(c).get("grade")]
    assert set(tests) <= failing, "a test cell passed on an untouched release notebook: it cannot fail"
    for i in tests:
        err = next(o for o in nb.cells[i].outputs if o.get("output_type") == "error")
        assert err["ename"] == "CheckFailed" and "not written yet" in err["evalue"], \
            f"cell {i} should fail with the check's friendly message, got {err['ename']}: {err['evalue'][:200]}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solution_is_committed_without_outputs(chapter):
    nb = nbformat.read(notebook_path(SOLUTIONS, chapter), as_version=4)
    nbformat.validate(nb)
    assert nb.metadata.kernelspec.name == "python3"
    for cell in nb.cells:
        if cell.cell_type == "code":
            assert not cell.outputs and cell.execution_count is None
