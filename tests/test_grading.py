"""The nbgrader round trip for every chapter, through `autograder/grade.py` (what `make
grade` runs), in a copy of the course directory: full marks for the solution, 0 for the
untouched release, partial marks for plausible mistakes, and one broken submission never
stops the others."""
from __future__ import annotations

import csv
import json
import shutil

import pytest

from _course import CHAPTERS, COURSE, SOLUTIONS, make_course_copy, nbgrader_meta, notebook_path, run

pytestmark = pytest.mark.slow

# A learner's plausible mistakes, per chapter: solution cell -> (edit of its source, the
# test cells that edit must fail). Each chapter needs an entry (see the test below).
MISTAKES = {
    "ch02-ann": {
        # relu_grad uses >= (wrong at exactly 0)
        "relu_family": (lambda s: s.replace("return (x > 0).to(x.dtype)", "return (x >= 0).to(x.dtype)"),
                        {"test_relu"}),
        # softmax without the max shift: overflows on large logits
        "softmax": (lambda s: s.replace("shifted = z - z.amax(dim=-1, keepdim=True)", "shifted = z"),
                    {"test_softmax"}),
        # forgets to average over the batch
        "backward": (lambda s: s.replace("dz2 = (out - y) / m", "dz2 = out - y"), {"test_backward"}),
    },
    "ch01-intro": {
        # truncates each class's test count with int() instead of rounding it
        "stratified_split": (lambda s: s.replace("k = round(len(rows) * test_fraction)",
                                                 "k = int(len(rows) * test_fraction)"), {"test_stratified_split"}),
    },
    "ch03-training": {
        # Adam without bias correction: the early steps are too small
        "adam_step": (lambda s: s.replace("m_hat = m / (1 - beta1**t)", "m_hat = m").replace(
            "v_hat = v / (1 - beta2**t)", "v_hat = v"), {"test_adam_step"}),
        # dropout that forgets to scale the kept units by 1 / (1 - p)
        "dropout": (lambda s: s.replace("x / (1 - p)", "x"), {"test_dropout"}),
        # normalises with the unbiased variance
        "batch_norm": (lambda s: s.replace("var = x.var(dim=0, unbiased=False)", "var = x.var(dim=0)"),
                       {"test_batch_norm"}),
    },
}
# A syntax error in one solution cell costs only that exercise's tests.
SYNTAX_ERROR = {
    "ch01-intro": ("learning_curve", "def learning_curve(make_model, X_train, y_train, X_test, y_test, sizes):",
                   {"test_learning_curve"}),
    "ch02-ann": ("forward", "def forward(params, X):", {"test_forward"}),
    "ch03-training": ("cosine_lr", "def cosine_lr(epoch, lr0, T_max, eta_min=0.0):", {"test_cosine_lr"}),
}


def _edited(chapter: str, edits: dict) -> dict:
    nb = json.loads(notebook_path(SOLUTIONS, chapter).read_text())
    for cell in nb["cells"]:
        grade_id = nbgrader_meta(cell).get("grade_id")
        if grade_id in edits:
            before = "".join(cell["source"])
            cell["source"] = edits[grade_id](before)
            assert cell["source"] != before, f"{chapter}: the edit of {grade_id} changed nothing"
    return nb


def _points(chapter: str, grade_ids: set[str]) -> float:
    nb = json.loads(notebook_path(SOLUTIONS, chapter).read_text())
    found = {nbgrader_meta(c).get("grade_id"): nbgrader_meta(c).get("points", 0) for c in nb["cells"]}
    assert grade_ids <= set(found), f"{chapter}: unknown test cells {grade_ids - set(found)}"
    return sum(found[g] for g in grade_ids)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = make_course_copy(tmp_path_factory.mktemp("course"))
    submitted = root / "autograder" / "submitted"

    def submit(student: str, chapter: str, *, nb: dict | None = None, source=None, text: str | None = None):
        folder = submitted / student / chapter
        folder.mkdir(parents=True)
        target = folder / f"{chapter}.ipynb"
        if source is not None:
            shutil.copy(source, target)
        elif nb is not None:
            target.write_text(json.dumps(nb))
        else:
            target.write_text(text)

    for chapter in CHAPTERS:
        submit("full", chapter, source=notebook_path(SOLUTIONS, chapter))
        submit("untouched", chapter, source=notebook_path(COURSE, chapter))
        if chapter in MISTAKES:
            submit("mistakes", chapter, nb=_edited(chapter, {g: e for g, (e, _) in MISTAKES[chapter].items()}))
        if chapter in SYNTAX_ERROR:
            cell, line, _ = SYNTAX_ERROR[chapter]
            submit("syntax", chapter, nb=_edited(chapter, {cell: lambda s, line=line: s.replace(line, line.rstrip(":"))}))
    submit("notjson", CHAPTERS[0], text="{ this is not a notebook")
    proc = run(["python", "autograder/grade.py"], cwd=root, timeout=1800)

    from nbgrader.api import Gradebook, MissingEntry

    scores = {}
    with Gradebook(f"sqlite:///{root / 'autograder' / 'gradebook.db'}") as gb:
        for student in ("full", "untouched", "mistakes", "syntax"):
            for chapter in CHAPTERS:
                try:
                    sub = gb.find_submission(chapter, student)
                except MissingEntry:
                    continue
                scores[student, chapter] = (sub.score, sub.max_score)
    return root, proc, scores


def test_every_chapter_has_plausible_mistakes_to_grade():
    assert set(MISTAKES) == set(CHAPTERS), "add each new chapter's plausible mistakes to MISTAKES"


def test_grading_reports_the_broken_submission_and_carries_on(graded):
    _, proc, scores = graded
    assert proc.returncode == 1, "grade.py should exit 1 when a submission could not be graded"
    assert "notjson" in proc.stdout and "NOT GRADED" in proc.stdout and "not appear to be JSON" in proc.stdout
    for chapter in CHAPTERS:
        assert ("full", chapter) in scores and ("untouched", chapter) in scores


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solution_scores_full_marks(graded, chapter):
    score, max_score = graded[2]["full", chapter]
    assert max_score > 0 and score == max_score


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_untouched_release_scores_zero(graded, chapter):
    assert graded[2]["untouched", chapter][0] == 0


@pytest.mark.parametrize("chapter", sorted(MISTAKES))
def test_plausible_mistakes_lose_exactly_their_exercises(graded, chapter):
    lost = _points(chapter, set().union(*(tests for _, tests in MISTAKES[chapter].values())))
    score, max_score = graded[2]["mistakes", chapter]
    assert 0 < score == max_score - lost


@pytest.mark.parametrize("chapter", sorted(SYNTAX_ERROR))
def test_a_syntax_error_costs_only_its_own_exercise(graded, chapter):
    score, max_score = graded[2]["syntax", chapter]
    assert score == max_score - _points(chapter, SYNTAX_ERROR[chapter][2])


def test_feedback_explains_each_failure(graded):
    root = graded[0]
    html = (root / "autograder" / "feedback" / "mistakes" / "ch02-ann" / "ch02-ann.html").read_text()
    assert "Hint: the gradients are m times too large" in html
    assert "relu&#39;(0) = 0" in html or "relu'(0) = 0" in html
    assert "NaN or infinity" in html


def test_grades_are_exported_to_csv(graded):
    root, _, scores = graded
    with open(root / "autograder" / "grades.csv") as fh:
        rows = {(r["student_id"], r["assignment"]): r for r in csv.DictReader(fh)}
    for key, (score, max_score) in scores.items():
        assert float(rows[key]["score"]) == score and float(rows[key]["max_score"]) == max_score
