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
if os.environ.get("COURSE_CHAPTERS"):  # e.g. COURSE_CHAPTERS=ch02-ann,ch03-training to test a few
    CHAPTERS = [c for c in CHAPTERS if c in os.environ["COURSE_CHAPTERS"].split(",")]

#: Fast-mode budget per chapter notebook, in seconds (issue acceptance lists).
FAST_BUDGET_S = {"ch01-intro": 45, "ch02-ann": 45, "ch03-training": 45}
DEFAULT_FAST_BUDGET_S = 60
#: The whole course in fast mode, summed over chapters (issue 10).
COURSE_FAST_BUDGET_S = 6 * 60


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


def _poll_in_slices(channel, step: float = 1.0) -> None:
    """Make ``channel.get_msg(timeout)`` wait in ``step``-second polls instead of one long one.

    pyzmq's asyncio poll occasionally misses the wake-up for a message that has already
    arrived (edge-triggered file descriptors; seen after cells that display widgets, as in
    jupyter/nbclient#312) and returns it only when its timeout runs out: nbclient then sat
    for the whole 300 s cell timeout with the reply waiting, and the notebook still passed,
    five minutes late. Every new poll looks at the socket first, so short polls bound that
    delay to ``step``; an empty channel still raises ``Empty`` at the caller's deadline.
    """
    from queue import Empty

    get_msg = channel.get_msg

    async def get_msg_in_slices(timeout: float | None = None):
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = step if deadline is None else min(step, max(deadline - time.monotonic(), 0.0))
            try:
                return await get_msg(timeout=left)
            except Empty:
                if deadline is not None and time.monotonic() >= deadline:
                    raise

    channel.get_msg = get_msg_in_slices


def execute(path: Path, allow_errors: bool, timeout: int = 300) -> tuple[nbformat.NotebookNode, float]:
    """Execute a copy of a notebook in its folder with nbclient; return it and the seconds taken."""
    from nbclient import NotebookClient

    class Client(NotebookClient):
        async def async_start_new_kernel_client(self):
            kc = await super().async_start_new_kernel_client()
            for channel in (kc.shell_channel, kc.iopub_channel):
                _poll_in_slices(channel)
            return kc

    nb = nbformat.read(path, as_version=4)
    client = Client(nb, timeout=timeout, kernel_name="python3", allow_errors=allow_errors,
                    resources={"metadata": {"path": str(path.parent)}})
    start = time.perf_counter()
    client.execute()
    return nb, time.perf_counter() - start


#: Native libraries must not start one thread per core in each of several kernels.
ONE_THREAD = {"OMP_NUM_THREADS": "1", "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1"}


def _execute_in_child(path: str, allow_errors: bool, env: dict[str, str]) -> tuple[str, float]:
    os.environ.update(env)
    nb, seconds = execute(Path(path), allow_errors=allow_errors)
    return nbformat.writes(nb), seconds


def execute_many(jobs: list[tuple[Path, bool]], workers: int = 2, **env: str) -> dict[Path, tuple]:
    """Execute notebooks ``[(path, allow_errors), ...]`` in ``workers`` processes at once.

    Returns ``{path: (executed notebook, seconds)}``; a notebook that raised returns the
    exception in place of the notebook. Two at a time on 2 cores costs each one little,
    because fast mode runs PyTorch and BLAS on one thread (``ONE_THREAD``).
    """
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor

    env = {"COURSE_FAST": "1", "MPLBACKEND": "Agg", **ONE_THREAD, **env}
    results = {}
    # "spawn": a child forked from pytest would inherit its imported zmq and asyncio state.
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(_execute_in_child, str(p), allow, env): p for p, allow in jobs}
        for future, path in futures.items():
            try:
                text, seconds = future.result()
                results[path] = (nbformat.reads(text, as_version=4), seconds)
            except Exception as err:  # a notebook that failed to run: the test reports it
                results[path] = (err, 0.0)
    return results


def cell_seconds(nb) -> list[tuple[float, int]]:
    """(seconds, cell index) for every executed code cell, slowest first, from nbclient's timing metadata."""
    from datetime import datetime

    rows = []
    for i, cell in enumerate(nb.cells):
        stamps = cell.get("metadata", {}).get("execution", {})
        if "iopub.execute_input" in stamps and "shell.execute_reply" in stamps:
            start, end = (datetime.fromisoformat(stamps[k].replace("Z", "+00:00"))
                          for k in ("iopub.execute_input", "shell.execute_reply"))
            rows.append(((end - start).total_seconds(), i))
    return sorted(rows, reverse=True)


def slowest_cells(nb, n: int = 5) -> str:
    """The n slowest code cells as one readable line: where a notebook's time went."""
    return "; ".join(f"cell {i} {seconds:.1f} s ({nb.cells[i].source.splitlines()[0][:50]!r})"
                     for seconds, i in cell_seconds(nb)[:n] if nb.cells[i].source.strip())


def error_cells(nb) -> list[int]:
    return [i for i, c in enumerate(nb.cells) if c.cell_type == "code"
            and any(o.get("output_type") == "error" for o in c.get("outputs", []))]


def make_course_copy(dest: Path) -> Path:
    """A throwaway course directory (solutions, course, autograder config) under ``dest``."""
    shutil.copytree(SOLUTIONS, dest / "solutions")
    shutil.copytree(COURSE, dest / "course")
    (dest / "autograder").mkdir()
    for script in AUTOGRADER.glob("*.py"):
        shutil.copy(script, dest / "autograder" / script.name)
    return dest


def run(cmd: list[str], cwd: Path, timeout: int = 600, **extra_env: str) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, cwd=cwd, env=env_with_venv(**extra_env), capture_output=True, text=True,
                          timeout=timeout)
