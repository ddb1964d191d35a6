"""The nbgrader round trip, through `autograder/grade.py` (what `make grade` runs), in a copy
of the course directory: full marks for the solution, 0 for the untouched release, partial
marks for plausible mistakes, and one broken submission never stops the others."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from _course import COURSE, SOLUTIONS, make_course_copy, nbgrader_meta, notebook_path, run

pytestmark = pytest.mark.slow
CHAPTER = "ch02-ann"

# A learner's plausible mistakes, by solution cell: each costs exactly its test's points.
MISTAKES = {
    # relu_grad uses >= (wrong at exactly 0): test_relu, 1 point
    "relu_family": lambda src: src.replace("return (x > 0).to(x.dtype)", "return (x >= 0).to(x.dtype)"),
    # softmax without the max shift: overflows on large logits, test_softmax, 2 points
    "softmax": lambda src: src.replace("shifted = z - z.amax(dim=-1, keepdim=True)", "shifted = z"),
    # forgets to average over the batch: test_backward, 3 points
    "backward": lambda src: src.replace("dz2 = (out - y) / m", "dz2 = out - y"),
}
SYNTAX_ERROR = {"forward": lambda src: src.replace("def forward(params, X):", "def forward(params, X)")}


def _edited(cell_edits: dict) -> dict:
    nb = json.loads(notebook_path(SOLUTIONS, CHAPTER).read_text())
    for cell in nb["cells"]:
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id in cell_edits:
            before = "".join(cell["source"])
            cell["source"] = cell_edits[grade_id](before)
            assert cell["source"] != before, f"the edit of {grade_id} changed nothing"
    return nb


def _points(nb: dict, grade_ids: set[str]) -> float:
    return sum(nbgrader_meta(c)["points"] for c in nb["cells"] if nbgrader_meta(c).get("grade_id") in grade_ids)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = make_course_copy(tmp_path_factory.mktemp("course"))
    submitted = root / "autograder" / "submitted"

    def submit(student: str, nb: dict | None = None, source=None, text: str | None = None):
        folder = submitted / student / CHAPTER
        folder.mkdir(parents=True)
        target = folder / f"{CHAPTER}.ipynb"
        if source is not None:
            shutil.copy(source, target)
        elif nb is not None:
            target.write_text(json.dumps(nb))
        else:
            target.write_text(text)

    submit("full", source=notebook_path(SOLUTIONS, CHAPTER))
    submit("untouched", source=notebook_path(COURSE, CHAPTER))
    submit("mistakes", _edited(MISTAKES))
    submit("syntax", _edited(SYNTAX_ERROR))
    submit("notjson", text="{ this is not a notebook")
    proc = run(["python", "autograder/grade.py"], cwd=root, timeout=900)

    from nbgrader.api import Gradebook

    scores = {}
    with Gradebook(f"sqlite:///{root / 'autograder' / 'gradebook.db'}") as gb:
        for student in ("full", "untouched", "mistakes", "syntax"):
            sub = gb.find_submission(CHAPTER, student)
            scores[student] = (sub.score, sub.max_score)
    return root, proc, scores


def test_grading_reports_the_broken_submission_and_carries_on(graded):
    root, proc, _ = graded
    assert proc.returncode == 1, "grade.py should exit 1 when a submission could not be graded"
    assert "notjson" in proc.stdout and "NOT GRADED" in proc.stdout and "not appear to be JSON" in proc.stdout
    for student in ("full", "untouched", "mistakes", "syntax"):
        assert f"grading {student} / {CHAPTER}" in proc.stdout


def test_solution_scores_full_marks(graded):
    _, _, scores = graded
    score, max_score = scores["full"]
    assert max_score >= 10 and score == max_score


def test_untouched_release_scores_zero(graded):
    _, _, scores = graded
    assert scores["untouched"][0] == 0


def test_plausible_mistakes_lose_exactly_their_exercises(graded):
    _, _, scores = graded
    solution = json.loads(notebook_path(SOLUTIONS, CHAPTER).read_text())
    lost = _points(solution, {"test_relu", "test_softmax", "test_backward"})
    score, max_score = scores["mistakes"]
    assert score == max_score - lost


def test_a_syntax_error_costs_only_its_own_exercise(graded):
    _, _, scores = graded
    solution = json.loads(notebook_path(SOLUTIONS, CHAPTER).read_text())
    score, max_score = scores["syntax"]
    assert score == max_score - _points(solution, {"test_forward"})


def test_feedback_explains_each_failure(graded):
    root, _, _ = graded
    html = (root / "autograder" / "feedback" / "mistakes" / CHAPTER / f"{CHAPTER}.html").read_text()
    assert "Hint: the gradients are m times too large" in html
    assert "relu&#39;(0) = 0" in html or "relu'(0) = 0" in html
    assert "NaN or infinity" in html


def test_grades_are_exported_to_csv(graded):
    root, _, scores = graded
    with open(root / "autograder" / "grades.csv") as fh:
        rows = {r["student_id"]: r for r in csv.DictReader(fh) if r["assignment"] == CHAPTER}
    for student, (score, max_score) in scores.items():
        assert float(rows[student]["score"]) == score and float(rows[student]["max_score"]) == max_score
