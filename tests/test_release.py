"""course/ is exactly what nbgrader generates from solutions/, and leaks nothing."""
from __future__ import annotations

import json
import re

import nbformat
import pytest

from _course import CHAPTERS, COURSE, SOLUTIONS, is_exercise_cell, make_course_copy, nbgrader_meta, notebook_path, run


@pytest.fixture(scope="module")
def regenerated(tmp_path_factory):
    root = make_course_copy(tmp_path_factory.mktemp("course"))
    out = root / "regenerated"
    for chapter in CHAPTERS:
        proc = run(["nbgrader", "generate_assignment", chapter, "--force", "--log-level=WARN",
                    f"--CourseDirectory.release_directory={out}",
                    f"--CourseDirectory.db_url=sqlite:///{root / 'gradebook.db'}"], cwd=root / "autograder")
        assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def test_every_chapter_is_released():
    released = sorted(p.name for p in COURSE.iterdir() if p.is_dir())
    assert released == CHAPTERS, "run `make release` to regenerate course/ from solutions/"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_release_is_in_sync_with_solutions(regenerated, chapter):
    committed = json.loads(notebook_path(COURSE, chapter).read_text())
    fresh = json.loads(notebook_path(regenerated, chapter).read_text())
    assert committed == fresh, f"course/{chapter} differs from what solutions/ generates: run `make release`"


def _solution_lines(nb) -> set[str]:
    """Lines that stand only inside solution or hidden-test blocks of the solution notebook.

    A line the notebook also shows in the open (``loss.backward()`` in a training cell) is
    no secret, so its appearance in course/ proves nothing.
    """
    hidden, shown, inside = set(), set(), False
    for cell in nb.cells:
        for line in cell.source.splitlines():
            if "### BEGIN SOLUTION" in line or "### BEGIN HIDDEN TESTS" in line:
                inside = True
            elif "### END SOLUTION" in line or "### END HIDDEN TESTS" in line:
                inside = False
            elif len(line.strip()) > 12:
                (hidden if inside else shown).add(line.strip())
    return hidden - shown


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_release_contains_no_solution_or_hidden_test(chapter):
    text = notebook_path(COURSE, chapter).read_text()
    assert not re.search(r"BEGIN (SOLUTION|HIDDEN TESTS)|END (SOLUTION|HIDDEN TESTS)", text)
    release = nbformat.read(notebook_path(COURSE, chapter), as_version=4)
    released_code = {line.strip() for c in release.cells if c.cell_type == "code" for line in c.source.splitlines()}
    secret = _solution_lines(nbformat.read(notebook_path(SOLUTIONS, chapter), as_version=4))
    assert secret, "the solution notebook has no solution blocks"
    leaked = secret & released_code
    assert not leaked, f"solution or hidden-test lines leaked into course/: {sorted(leaked)[:5]}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_graded_cells_have_valid_metadata(chapter):
    nb = nbformat.read(notebook_path(SOLUTIONS, chapter), as_version=4)
    ids = [nbgrader_meta(c)["grade_id"] for c in nb.cells if nbgrader_meta(c)]
    assert len(ids) == len(set(ids)), "grade_id values must be unique"
    tests = [c for c in nb.cells if nbgrader_meta(c).get("grade")]
    solutions = [c for c in nb.cells if nbgrader_meta(c).get("solution")]
    assert len(solutions) >= 4 and len(tests) >= 4  # the syllabus minimum per chapter
    for cell in nb.cells:
        meta = nbgrader_meta(cell)
        if not meta:
            continue
        assert meta["schema_version"] == 3
        if meta.get("grade"):
            assert meta["locked"] and meta["points"] > 0
            assert "### BEGIN HIDDEN TESTS" in cell.source, f"{meta['grade_id']} has no hidden tests"
            visible = cell.source.split("### BEGIN HIDDEN TESTS")[0]
            assert "check." in visible, f"{meta['grade_id']}: the visible part should call a companion check"
        if meta.get("solution"):
            assert "### BEGIN SOLUTION" in cell.source
    assert all(is_exercise_cell(c) for c in tests + solutions)
