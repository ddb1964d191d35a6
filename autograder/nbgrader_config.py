"""nbgrader configuration: the repository root is the course directory.

Run nbgrader from this folder (the Makefile does): ``cd autograder && nbgrader ...``.

    solutions/<chapter>/<chapter>.ipynb                source   (instructor notebooks)
    course/<chapter>/<chapter>.ipynb                   release  (what learners open)
    autograder/submitted/<student>/<chapter>/...       collected submissions   (git-ignored)
    autograder/autograded/..., autograder/feedback/... nbgrader's output        (git-ignored)
    autograder/gradebook.db                            the gradebook            (git-ignored)
"""
import os
import sys
from pathlib import Path

c = get_config()  # noqa: F821 (provided by nbgrader when it loads this file)

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

c.CourseDirectory.course_id = "deep-learning-course"
c.CourseDirectory.root = str(ROOT)
c.CourseDirectory.source_directory = "solutions"
c.CourseDirectory.release_directory = "course"
c.CourseDirectory.submitted_directory = "autograder/submitted"
c.CourseDirectory.autograded_directory = "autograder/autograded"
c.CourseDirectory.feedback_directory = "autograder/feedback"
# An instructor (or a test) may point the gradebook elsewhere with NBGRADER_DB_URL.
c.CourseDirectory.db_url = os.environ.get("NBGRADER_DB_URL", f"sqlite:///{HERE / 'gradebook.db'}")

# Every notebook runs on the environment's own Python kernel, whatever its metadata says.
c.Execute.kernel_name = "python3"
# Per-cell limit. Measured in fast mode on 2 cores: the slowest cell of chapter 2 (a
# training loop) takes about 5 s and its slowest test cell under 0.1 s; 120 s leaves a
# wide margin on a slow laptop while still stopping an infinite loop, so the other
# exercises are graded.
# COURSE_CELL_TIMEOUT overrides it (the tests use a short one for their infinite loops).
c.Execute.timeout = int(os.environ.get("COURSE_CELL_TIMEOUT", "120"))
c.Execute.interrupt_on_timeout = True

# nbgrader gives 0 to a test cell with any stderr output. Library warnings are not the
# learner's fault: drop stderr chunks that are warnings before grading.
c.IgnorePattern.enabled = True
c.IgnorePattern.pattern = r"(?i)warn"

# Deleted test cells are put back by submission.RepairCells (nbgrader's own
# add_missing_cells crashes on some rearrangements), and their source restored by OverwriteCells.
c.OverwriteCells.add_missing_cells = False

c.ClearSolutions.code_stub = {"python": "# YOUR CODE HERE\nraise NotImplementedError()"}

# Before a submission runs: fresh checks in every test cell, tampering removed, the
# chapter's unchanged teaching cells skipped (autograder/submission.py says why).
sys.path.insert(0, str(HERE))
from nbconvert.preprocessors import CSSHTMLHeaderPreprocessor  # noqa: E402
from nbgrader.preprocessors import (  # noqa: E402
    CheckCellMetadata, ClearHiddenTests, ClearOutput, DeduplicateIds, GetGrades, OverwriteCells, OverwriteKernelspec,
)
from submission import PrepareSubmission, RepairCells, TrimTracebacks  # noqa: E402

c.Autograde.sanitize_preprocessors = [ClearOutput, DeduplicateIds, RepairCells, OverwriteKernelspec, OverwriteCells,
                                      PrepareSubmission, CheckCellMetadata]
# Feedback shows each test's result and message, not the hidden tests' code (nor tracebacks quoting it).
c.GenerateFeedback.preprocessors = [GetGrades, ClearHiddenTests, TrimTracebacks, CSSHTMLHeaderPreprocessor]
