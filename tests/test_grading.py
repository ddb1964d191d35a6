"""The nbgrader round trip for every chapter, through `autograder/grade.py` (what `make
grade` runs, here with two workers), in a copy of the course directory.

Per chapter: the solution gets full marks; the untouched release gets 0; plausible
mistakes lose exactly their exercises; two generated bad submissions (a syntax error, an
exception, an infinite loop, stderr and warnings, NaN, a wrong shape and dtype, a renamed
function, deleted, duplicated and reordered cells) and one tampering submission get
exactly the score their honest code earns (``_submissions.py`` computes it). Then: a
notebook that is not JSON, an empty folder and the wrong chapter are reported without
stopping the others; one submission scores the same five times; feedback explains each
failure and holds neither hidden-test code nor another learner's work; an interrupted
run resumes.
"""
from __future__ import annotations

import csv
import json
import shutil
import signal
import subprocess
import time

import pytest

import _submissions as subs
from _course import CHAPTERS, COURSE, SOLUTIONS, env_with_venv, make_course_copy, nbgrader_meta, notebook_path, run

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
    "ch04-cnn": {
        # flips the kernel: the textbook convolution, not the cross-correlation layers compute
        "conv2d": (lambda s: s.replace("out = weight.reshape(o, -1) @ cols",
                                       "out = weight.flip(-2, -1).reshape(o, -1) @ cols"), {"test_conv2d"}),
        # pads with zeros, which win the max where a window holds only negative values
        "max_pool2d": (lambda s: s.replace('value=float("-inf")', "value=0.0"), {"test_max_pool2d"}),
        # forgets the biases
        "conv_params": (lambda s: s.replace("return weights + (out_channels if bias else 0)", "return weights"),
                        {"test_conv_params"}),
    },
    "ch05-rnn": {
        # the forget gate reuses the input gate
        "lstm_cell": (lambda s: s.replace("c_new = f * c + i * g", "c_new = i * c + i * g"), {"test_lstm_cell"}),
        # drops the last window
        "make_windows": (lambda s: s.replace("n = len(series) - window - horizon + 1",
                                             "n = len(series) - window - horizon"), {"test_make_windows"}),
    },
    "ch06-transformers": {
        # forgets to scale the scores by 1 / sqrt(d)
        "scaled_dot_product_attention": (lambda s: s.replace("scores = q @ k.transpose(-2, -1) / math.sqrt(d)",
                                                             "scores = q @ k.transpose(-2, -1)"),
                                         {"test_scaled_dot_product_attention"}),
        # a plain reshape that cuts the sequence into pieces instead of splitting each token's features
        "split_merge_heads": (lambda s: s.replace("return x.reshape(N, L, n_heads, E // n_heads).transpose(1, 2)",
                                                  "return x.reshape(N, n_heads, L, E // n_heads)"),
                              {"test_split_merge_heads"}),
    },
    "ch07-advanced": {
        # reads logvar as the log of the standard deviation
        "reparameterize": (lambda s: s.replace("std = torch.exp(0.5 * logvar)", "std = torch.exp(logvar)"),
                           {"test_reparameterize"}),
        # the KL term with its sign flipped
        "kl_divergence": (lambda s: s.replace("per_example = -0.5 * torch.sum", "per_example = 0.5 * torch.sum"),
                          {"test_kl_divergence"}),
    },
    "ch08-practice": {
        # scales small gradients up as well as large ones down
        "clip_grad_norm": (lambda s: s.replace("factor = torch.clamp(max_norm / (total_norm + 1e-6), max=1.0)",
                                               "factor = max_norm / (total_norm + 1e-6)"), {"test_clip_grad_norm"}),
        # fan_in and fan_out swapped
        "fan_in_and_fan_out": (lambda s: s.replace("return shape[1] * receptive_field, shape[0] * receptive_field",
                                                   "return shape[0] * receptive_field, shape[1] * receptive_field"),
                               {"test_fan_in_and_fan_out"}),
        # inverse counts without the balancing factor
        "class_weights": (lambda s: s.replace("return len(y) / (n_classes * counts)", "return 1 / counts"),
                          {"test_class_weights"}),
    },
    "ch09-transfer": {
        # freezes the parameters but leaves frozen batch norm updating its running statistics
        "freeze": (lambda s: s.replace("module.train(model.training and is_trainable(name))",
                                       "module.train(model.training)"), {"test_freeze"}),
        # passes the gradient through unchanged in sign
        "grad_reverse": (lambda s: s.replace("return -ctx.lam * grad, None", "return ctx.lam * grad, None"),
                         {"test_grad_reverse"}),
    },
    "ch10-deployment": {
        # truncates toward zero instead of rounding
        "quantize_dequantize": (lambda s: s.replace("q = torch.round(x / scale)", "q = torch.trunc(x / scale)"),
                                {"test_quantize"}),
        # the soft term without its T**2 factor
        "kd_loss": (lambda s: s.replace("return alpha * T**2 * soft", "return alpha * soft"), {"test_kd_loss"}),
    },
    "ch11-applications": {
        # rows are the predicted class: the matrix comes out transposed
        "confusion_matrix": (lambda s: s.replace("pair = y_true.long() * n_classes + y_pred.long()",
                                                 "pair = y_pred.long() * n_classes + y_true.long()"),
                             {"test_confusion_matrix"}),
        # scales with the whole series' statistics, test period included
        "train_test_windows": (lambda s: s.replace("mean = series[:n_train].mean()", "mean = series.mean()").replace(
            "std = series[:n_train].std(unbiased=False)", "std = series.std(unbiased=False)"),
            {"test_train_test_windows"}),
        # floor where the recall target needs ceil
        "threshold_for_recall": (lambda s: s.replace("k = math.ceil(", "k = math.floor("),
                                 {"test_threshold_for_recall"}),
    },
    "ch12-practices": {
        # standardizes with statistics of every row, test rows included: the leak
        "split_and_standardize": (lambda s: s.replace("mean = X_train.mean(axis=0)", "mean = X.mean(axis=0)").replace(
            "std = X_train.std(axis=0)", "std = X.std(axis=0)"), {"test_split_and_standardize"}),
        # forgets NumPy's global generator
        "set_seed": (lambda s: s.replace("    np.random.seed(seed)\n", ""), {"test_set_seed"}),
    },
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
    ch = subs.load(chapter)
    assert grade_ids <= set(ch.points), f"{chapter}: unknown test cells {grade_ids - set(ch.points)}"
    return sum(ch.points[g] for g in grade_ids)


DETERMINISM = ("ch03-training" if "ch03-training" in CHAPTERS else CHAPTERS[-1])
CELL_TIMEOUT_S = 10  # the infinite loops of the bad submissions stop after this (setup cells take under 3 s)


@pytest.fixture(scope="module")
def graded(tmp_path_factory):
    root = make_course_copy(tmp_path_factory.mktemp("course"))
    submitted = root / "autograder" / "submitted"
    expected = {}

    def submit(student: str, chapter: str, *, nb: dict | None = None, source=None, text: str | None = None,
               name: str | None = None):
        folder = submitted / student / chapter
        folder.mkdir(parents=True)
        target = folder / (name or f"{chapter}.ipynb")
        if source is not None:
            nb = json.loads(source.read_text())
        if nb is not None:
            nb = json.loads(json.dumps(nb))
            cell = next(c for c in nb["cells"] if nbgrader_meta(c).get("solution"))
            cell["source"] = "".join(cell["source"]) + f"\n# submitted by {student}\n"
            text = json.dumps(nb)
        target.write_text(text)

    for chapter in CHAPTERS:
        ch = subs.load(chapter)
        submit("full", chapter, source=notebook_path(SOLUTIONS, chapter))
        submit("untouched", chapter, source=notebook_path(COURSE, chapter))
        if chapter in MISTAKES:
            submit("mistakes", chapter, nb=_edited(chapter, {g: e for g, (e, _) in MISTAKES[chapter].items()}))
        for kind, (nb, broken) in subs.bad_submissions(ch).items():
            submit(kind, chapter, nb=nb)
            expected[kind, chapter] = ch.score_without(broken)
        nb, broken = subs.tampering(ch)
        submit("tampering", chapter, nb=nb)
        expected["tampering", chapter] = ch.score_without(broken)
    for i in range(5):
        submit(f"again{i}", DETERMINISM, nb=_edited(DETERMINISM, {g: e for g, (e, _) in MISTAKES[DETERMINISM].items()}))
    submit("notjson", CHAPTERS[0], text="{ this is not a notebook")
    (submitted / "empty" / CHAPTERS[0]).mkdir(parents=True)
    submit("wrongname", CHAPTERS[1], source=notebook_path(SOLUTIONS, CHAPTERS[0]), name=f"{CHAPTERS[0]}.ipynb")
    submit("wrongchapter", CHAPTERS[1], source=notebook_path(SOLUTIONS, CHAPTERS[0]))
    start = time.perf_counter()
    proc = run(["python", "autograder/grade.py", "--jobs", "2", "--quiet"], cwd=root, timeout=3600,
               COURSE_CELL_TIMEOUT=str(CELL_TIMEOUT_S))
    print(f"graded {sum(1 for _ in submitted.glob('*/*'))} submissions in {time.perf_counter() - start:.0f} s")
    print(proc.stdout[-6000:])

    from nbgrader.api import Gradebook, MissingEntry

    scores, cells = {}, {}
    with Gradebook(f"sqlite:///{root / 'autograder' / 'gradebook.db'}") as gb:
        for sub in (s for a in gb.assignments for s in a.submissions):
            scores[sub.student.id, sub.assignment.name] = (sub.score, sub.max_score)
            cells[sub.student.id, sub.assignment.name] = {
                g.name: g.score for nb in sub.notebooks for g in nb.grades}
    return root, proc, scores, cells, expected


def test_every_chapter_has_plausible_mistakes_to_grade():
    assert set(MISTAKES) == set(CHAPTERS), "add each new chapter's plausible mistakes to MISTAKES"


def test_broken_submissions_are_reported_and_the_rest_graded(graded):
    _, proc, scores, _, _ = graded
    assert proc.returncode == 1, "grade.py should exit 1 when a submission could not be graded"
    lines = {line.split()[0]: line for line in proc.stdout.splitlines() if "NOT GRADED" in line}
    assert "not appear to be JSON" in lines["notjson"]
    assert "holds no notebook" in lines["empty"]
    assert f"expected {CHAPTERS[1]}.ipynb but the folder holds {CHAPTERS[0]}.ipynb" in lines["wrongname"]
    assert f"holds the exercises of {CHAPTERS[0]}, not {CHAPTERS[1]}" in lines["wrongchapter"]
    assert set(lines) == {"notjson", "empty", "wrongname", "wrongchapter"}, proc.stdout[-3000:]
    for chapter in CHAPTERS:
        assert ("full", chapter) in scores and ("untouched", chapter) in scores


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_solution_scores_full_marks(graded, chapter):
    score, max_score = graded[2]["full", chapter]
    assert max_score > 0 and score == max_score, graded[3]["full", chapter]


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_untouched_release_scores_zero(graded, chapter):
    assert graded[2]["untouched", chapter][0] == 0


@pytest.mark.parametrize("chapter", sorted(MISTAKES))
def test_plausible_mistakes_lose_exactly_their_exercises(graded, chapter):
    lost = _points(chapter, set().union(*(tests for _, tests in MISTAKES[chapter].values())))
    score, max_score = graded[2]["mistakes", chapter]
    assert 0 < score == max_score - lost, graded[3]["mistakes", chapter]


@pytest.mark.parametrize("kind", ["bad-errors", "bad-results", "tampering"])
@pytest.mark.parametrize("chapter", CHAPTERS)
def test_generated_submission_gets_what_its_honest_code_earns(graded, chapter, kind):
    score, max_score = graded[2][kind, chapter]
    expected = graded[4][kind, chapter]
    assert 0 < expected < max_score
    assert score == expected, f"{kind} scored {score}, expected {expected}: {graded[3][kind, chapter]}"


@pytest.mark.parametrize("chapter", CHAPTERS)
def test_tampering_is_shown_in_the_feedback(graded, chapter):
    html = (graded[0] / "autograder" / "feedback" / "tampering" / chapter / f"{chapter}.html").read_text()
    assert "[grader] removed:" in html
    assert "tampering statement(s) removed" in next(
        line for line in graded[1].stdout.splitlines() if line.startswith("tampering") and chapter in line)


def test_same_submission_scores_the_same_five_times(graded):
    runs = [graded[3][f"again{i}", DETERMINISM] for i in range(5)]
    assert all(r == runs[0] for r in runs), runs
    assert 0 < sum(runs[0].values()) < sum(subs.load(DETERMINISM).points.values())


def test_one_submission_grades_within_20_seconds(graded):
    parts = graded[0] / "autograder" / ".grading" / "parts"
    seconds = {ch: json.loads((parts / ch / "full.json").read_text())["seconds"] for ch in CHAPTERS}
    print("autograde seconds per full submission:", {k: round(v, 1) for k, v in seconds.items()})
    assert max(seconds.values()) <= 20, seconds


def test_feedback_explains_failures_without_hidden_code(graded):
    root = graded[0]
    html = (root / "autograder" / "feedback" / "mistakes" / "ch02-ann" / "ch02-ann.html").read_text()
    assert "Hint: the gradients are m times too large" in html
    assert "relu&#39;(0) = 0" in html or "relu'(0) = 0" in html
    assert "NaN or infinity" in html
    for chapter in CHAPTERS:
        html = (root / "autograder" / "feedback" / "bad-errors" / chapter / f"{chapter}.html").read_text()
        assert "hidden=True" not in html and "BEGIN HIDDEN TESTS" not in html
        assert "a bug in my code" in html  # the learner's own exception, named in the failure


def test_feedback_holds_no_other_learners_work(graded):
    feedback = graded[0] / "autograder" / "feedback"
    students = sorted(p.name for p in feedback.iterdir())
    for page in feedback.glob("*/*/*.html"):
        html = page.read_text()
        owner = page.parent.parent.name
        others = [s for s in students if s != owner and f"submitted by {s}\n" in html.replace("<br>", "\n")]
        assert not others, f"{page} holds work of {others}"


def test_grades_are_exported_to_csv(graded):
    root, _, scores, _, _ = graded
    with open(root / "autograder" / "grades.csv") as fh:
        rows = {(r["student_id"], r["assignment"]): r for r in csv.DictReader(fh)}
    for key, (score, max_score) in scores.items():
        assert float(rows[key]["score"]) == score and float(rows[key]["max_score"]) == max_score


def test_an_interrupted_run_resumes_and_keeps_the_gradebook(tmp_path):
    root = make_course_copy(tmp_path)
    chapter = CHAPTERS[0]
    for student in ("ann", "ben", "cai"):
        folder = root / "autograder" / "submitted" / student / chapter
        folder.mkdir(parents=True)
        shutil.copy(notebook_path(SOLUTIONS, chapter), folder)
    cmd = ["python", "autograder/grade.py", "--jobs", "1", "--quiet"]
    proc = subprocess.Popen(cmd, cwd=root, env=env_with_venv(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            text=True)
    parts = root / "autograder" / ".grading" / "parts" / chapter
    deadline = time.time() + 300
    while not list(parts.glob("*.json")) and time.time() < deadline:
        time.sleep(0.2)
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=120)
    assert proc.returncode == 130, out
    assert "run the same command again" in out
    finished = {p.stem for p in parts.glob("*.json")}
    assert 1 <= len(finished) < 3
    again = run(cmd, cwd=root)
    assert again.returncode == 0, again.stdout[-3000:]
    reused = [line for line in again.stdout.splitlines() if "from an earlier run" in line]
    assert {line.split()[0] for line in reused} == finished
    from nbgrader.api import Gradebook

    with Gradebook(f"sqlite:///{root / 'autograder' / 'gradebook.db'}") as gb:
        subs_ = gb.find_assignment(chapter).submissions
        assert sorted(s.student.id for s in subs_) == ["ann", "ben", "cai"]
        assert all(s.score == s.max_score for s in subs_)
