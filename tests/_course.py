"""Paths and helpers shared by the notebook, release and grading tests."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import nbformat

ROOT = Path(__file__).resolve().parent.parent
SOLUTIONS = ROOT / "solutions"
COURSE = ROOT / "course"
AUTOGRADER = ROOT / "autograder"
CHAPTERS = sorted(p.name for p in SOLUTIONS.iterdir() if p.is_dir())

#: Fast-mode budget per chapter notebook, in seconds (issue acceptance lists).
FAST_BUDGET_S = {"ch01-intro": 45, "ch02-ann": 45, "ch03-training": 45}
DEFAULT_FAST_BUDGET_S = 60


def notebook_path(folder: Path, chapter: str) -> Path:
    return folder / chapter / f"{chapter}.ipynb"


def nbgrader_meta(cell) -> dict:
    return cell.get("metadata", {}).get("nbgrader", {})


def is_exercise_cell(cell) -> bool:
    meta = nbgrader_meta(cell)
    return bool(meta.get("solution") or meta.get("grade"))


def env_with_venv(**extra: str) -> dict[str, str]:
    """The environment for subprocesses: this interpreter's bin first on PATH, fast mode on."""
    env = dict(os.environ)
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    env.setdefault("COURSE_FAST", "1")
    env.update(extra)
    return env


def execute(path: Path, allow_errors: bool, timeout: int = 300) -> tuple[nbformat.NotebookNode, float]:
    """Execute a copy of a notebook in its folder with nbclient; return it and the seconds taken."""
    from nbclient import NotebookClient

    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                            resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


def error_cells(nb) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and any(o.get("output_type") == "error" for o in c.get("outputs", []))]


def make_course_copy(dest: Path) -> Path:
    """A throwaway course directory (solutions, course, autograder config) under ``dest``."""
    shutil.copytree(SOLUTIONS, dest / "solutions")
    shutil.copytree(COURSE, dest / "course")
    (dest / "autograder").mkdir()
    for name in ("nbgrader_config.py", "grade.py"):
        shutil.copy(AUTOGRADER / name, dest / "autograder" / name)
    return dest


def run(cmd: list[str], cwd: Path, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env_with_venv(**extra_env), capture_output=True, text=True,
                          timeout=timeout)
