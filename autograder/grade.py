"""Grade every submission in autograder/submitted/, one at a time, and never stop on one.

    autograder/submitted/<student>/<chapter>/<chapter>.ipynb   (what you collected)

For each (student, chapter) this runs ``nbgrader autograde`` in its own process, so a
submission that crashes nbgrader is reported and the others are still graded; then
``nbgrader generate_feedback`` (HTML in autograder/feedback/) and finally
``nbgrader export`` to autograder/grades.csv. Exit status: 0 when every submission was
graded, 1 when some could not be (they are listed).

Usage: ``make grade`` (or ``python autograder/grade.py [--student S] [--chapter C]``).
"""
from __future__ import annotations

import argparse
import os
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent


@dataclass
class Result:
    student: str
    chapter: str
    score: float | None = None
    max_score: float | None = None
    problem: str = ""


def nbgrader(*args: str) -> subprocess.CompletedProcess:
    """Run one nbgrader command from the autograder folder (where its config lives)."""
    return subprocess.run(["nbgrader", *args], cwd=HERE, capture_output=True, text=True)


def _last_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "[ERROR]" in ln or "Error" in ln]
    return (errors or lines or ["nbgrader failed without a message"])[-1][:300]


def register_chapters(chapters: list[str]) -> None:
    """Put every chapter and its grade cells in the gradebook (from solutions/), without touching course/."""
    with tempfile.TemporaryDirectory() as scratch:
        for chapter in chapters:
            proc = nbgrader("generate_assignment", chapter, "--force", "--log-level=WARN",
                            f"--CourseDirectory.release_directory={scratch}")
            if proc.returncode:
                sys.exit(f"could not register {chapter} from solutions/: {_last_error(proc)}")


def scores(results: list[Result]) -> None:
    from nbgrader.api import Gradebook, MissingEntry

    db_url = os.environ.get("NBGRADER_DB_URL", f"sqlite:///{HERE / 'gradebook.db'}")
    with Gradebook(db_url) as gb:
        for r in results:
            if r.problem:
                continue
            try:
                sub = gb.find_submission(r.chapter, r.student)
                r.score, r.max_score = sub.score, sub.max_score
            except MissingEntry:
                r.problem = "no grades were recorded"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", help="grade only this student")
    parser.add_argument("--chapter", help="grade only this chapter (e.g. ch02-ann)")
    args = parser.parse_args(argv)

    submitted = HERE / "submitted"
    known = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())
    pairs = sorted((s.name, c.name) for s in submitted.glob("*") if s.is_dir()
                   for c in s.iterdir() if c.is_dir()) if submitted.is_dir() else []
    pairs = [(s, c) for s, c in pairs if (not args.student or s == args.student)
             and (not args.chapter or c == args.chapter)]
    if not pairs:
        print(f"Nothing to grade: put submissions in {submitted}/<student>/<chapter>/.")
        return 0

    register_chapters(sorted({c for _, c in pairs if c in known}))
    results = []
    for student, chapter in pairs:
        result = Result(student, chapter)
        results.append(result)
        if chapter not in known:
            result.problem = f"unknown chapter folder '{chapter}' (chapters: {', '.join(known)})"
        elif not list((submitted / student / chapter).glob("*.ipynb")):
            result.problem = "the submission folder holds no notebook"
        else:
            print(f"grading {student} / {chapter} ...", flush=True)
            proc = nbgrader("autograde", chapter, "--student", student, "--force", "--log-level=WARN")
            if proc.returncode:
                result.problem = f"nbgrader autograde failed: {_last_error(proc)}"
                continue
            proc = nbgrader("generate_feedback", chapter, "--student", student, "--force", "--log-level=WARN")
            if proc.returncode:
                result.problem = f"feedback failed: {_last_error(proc)}"
    scores(results)
    proc = nbgrader("export", f"--to={HERE / 'grades.csv'}", "--log-level=WARN")
    if proc.returncode:
        print(f"export to grades.csv failed: {_last_error(proc)}")

    width = max(len(r.student) for r in results)
    print(f"\n{'student':<{width}}  chapter      score")
    for r in results:
        verdict = f"{r.score:g} / {r.max_score:g}" if r.score is not None else f"NOT GRADED: {r.problem}"
        print(f"{r.student:<{width}}  {r.chapter:<11}  {verdict}")
    print(f"\nfeedback: {HERE / 'feedback'}   grades: {HERE / 'grades.csv'}")
    failed = [r for r in results if r.problem]
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
