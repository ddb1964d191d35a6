"""Grade every submission in autograder/submitted/, several at a time, and never stop on one.

    autograder/submitted/<student>/<chapter>/<chapter>.ipynb   (what you collected)

Each (student, chapter) is checked first (is it JSON, a notebook, the right chapter?),
then autograded by its own ``nbgrader autograde`` process with its own gradebook, a
copy of the chapter's registered gradebook, so that several can run at once (nbgrader
grades serially and SQLite must not be shared between processes). Each finished
submission leaves a status file; the gradebooks are merged into autograder/gradebook.db
at the end, feedback is written to autograder/feedback/, and grades go to
autograder/grades.csv.

An interrupted run loses nothing: run the same command again and the submissions that
were finished, and have not changed since, are reused; the main gradebook is only
written by the merge, one submission per transaction. ``--fresh`` regrades everything.

Exit status: 0 when every submission was graded, 1 when some could not be (listed, with why).

Usage: ``make grade`` (or ``python autograder/grade.py [--chapter C] [--student S] [--jobs N] [--fresh]``).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor, as_completed
from dataclasses import asdict, dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
WORK = HERE / ".grading"          # per-chapter templates, per-submission gradebooks and status
MARK = "# [grader] removed:"


@dataclass
class Result:
    student: str
    chapter: str
    score: float | None = None
    max_score: float | None = None
    problem: str = ""
    seconds: float = 0.0
    removed: int = 0              # tampering statements the grader took out
    reused: bool = False          # graded by an earlier run and unchanged since
    digest: str = ""


def main_db_url() -> str:
    return os.environ.get("NBGRADER_DB_URL", f"sqlite:///{HERE / 'gradebook.db'}")


def _env(db_url: str) -> dict[str, str]:
    env = dict(os.environ)
    env["NBGRADER_DB_URL"] = db_url
    for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(name, "1")  # several kernels at once must not each start a thread per core
    env["PATH"] = str(Path(sys.executable).parent) + os.pathsep + env.get("PATH", "")
    return env


_children: set[subprocess.Popen] = set()
_lock = threading.Lock()
_stopping = threading.Event()   # set on interrupt: no new nbgrader process starts


def nbgrader(*args: str, db_url: str | None = None, timeout: float | None = None) -> subprocess.CompletedProcess:
    """Run one nbgrader command from this folder (where its config lives), in its own process group."""
    with _lock:
        if _stopping.is_set():
            return subprocess.CompletedProcess(["nbgrader", *args], 1, "", "[ERROR] interrupted")
        proc = subprocess.Popen(["nbgrader", *args], cwd=HERE, env=_env(db_url or main_db_url()), text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, start_new_session=True)
        _children.add(proc)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        _kill(proc)
        out, err = proc.communicate()
        err += f"\n[ERROR] nbgrader took longer than {timeout:g} s and was stopped"
        proc.returncode = proc.returncode or -9
    finally:
        with _lock:
            _children.discard(proc)
    return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill(proc: subprocess.Popen) -> None:
    """Stop a child and everything it started (its kernel included)."""
    try:
        os.killpg(proc.pid, signal.SIGTERM)
        proc.wait(timeout=10)
    except (ProcessLookupError, PermissionError):
        pass
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)


def _last_error(proc: subprocess.CompletedProcess) -> str:
    lines = [ln.strip() for ln in (proc.stderr + proc.stdout).splitlines() if ln.strip()]
    errors = [ln for ln in lines if "[ERROR]" in ln or "Error" in ln]
    return (errors or lines or ["nbgrader failed without a message"])[-1][:300]


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _write_json(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


# ------------------------------------------------------------------ before grading

def grade_ids(nb: dict) -> set[str]:
    return {c.get("metadata", {}).get("nbgrader", {}).get("grade_id") for c in nb.get("cells", [])} - {None}


def preflight(student: str, chapter: str, known: list[str]) -> str:
    """Why this submission cannot be graded, in an instructor's terms, or '' when it can."""
    folder = HERE / "submitted" / student / chapter
    if chapter not in known:
        return f"unknown chapter folder '{chapter}' (chapters: {', '.join(known)})"
    notebooks = sorted(folder.glob("*.ipynb"))
    if not notebooks:
        return "the submission folder holds no notebook"
    expected = folder / f"{chapter}.ipynb"
    if not expected.exists():
        names = ", ".join(p.name for p in notebooks)
        return f"expected {expected.name} but the folder holds {names} (a wrong chapter or a renamed file?)"
    try:
        nb = json.loads(expected.read_text(encoding="utf-8"))
        if not isinstance(nb, dict) or "cells" not in nb:
            raise ValueError("it has no cells")
    except (ValueError, UnicodeDecodeError) as err:
        return f"{expected.name} is not a valid notebook (it does not appear to be JSON: {str(err)[:80]})"
    ours = grade_ids(json.loads((ROOT / "solutions" / chapter / f"{chapter}.ipynb").read_text()))
    theirs = grade_ids(nb)
    if theirs and not (theirs & ours - {"intro", "setup"}):
        for other in known:
            other_ids = grade_ids(json.loads((ROOT / "solutions" / other / f"{other}.ipynb").read_text()))
            if other != chapter and theirs & other_ids - {"intro", "setup"}:
                return f"{expected.name} holds the exercises of {other}, not {chapter}: submitted to the wrong chapter"
    return ""


def blank_gradebook() -> Path:
    """An empty gradebook with nbgrader's schema.

    Creating a gradebook costs seconds (nbgrader runs its database migrations); copying
    an empty one costs nothing, and registering a chapter in it then takes a fraction of
    a second, so every new gradebook starts as a copy of this one.
    """
    folder = WORK / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "blank.db"
    if not path.exists():
        from nbgrader.api import Gradebook

        tmp = folder / f"blank.{os.getpid()}.db"
        tmp.unlink(missing_ok=True)
        with Gradebook(f"sqlite:///{tmp}"):
            pass
        os.replace(tmp, path)
    return path


def _sqlite_path(db_url: str) -> Path | None:
    return Path(db_url[len("sqlite:///"):]) if db_url.startswith("sqlite:///") else None


def register(chapters: list[str], db_url: str) -> None:
    """Put each chapter and its grade cells in the gradebook at ``db_url`` (from solutions/,
    without touching course/), one after the other, through one worker."""
    path = _sqlite_path(db_url)
    if path is not None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(blank_gradebook(), path)
    worker = _workers.get()
    try:
        for chapter in chapters:
            reply = worker.run({"register": chapter, "db_url": db_url}, timeout=600)
            if not reply.get("ok"):
                sys.exit(f"could not register {chapter} from solutions/: {reply.get('error')}")
    finally:
        _workers.put(worker)


def templates(chapters: list[str], jobs: int) -> None:
    """For each chapter, a gradebook with only that chapter registered (``templates/<chapter>.db``),
    rebuilt when its source notebook changes; stale ones are rebuilt by the workers at once."""
    folder = WORK / "templates"
    folder.mkdir(parents=True, exist_ok=True)
    stale = {}
    for chapter in chapters:
        db, stamp = folder / f"{chapter}.db", folder / f"{chapter}.sha256"
        digest = _sha256(ROOT / "solutions" / chapter / f"{chapter}.ipynb")
        if not (db.exists() and stamp.exists() and stamp.read_text() == digest):
            stamp.unlink(missing_ok=True)
            db.unlink(missing_ok=True)
            stale[chapter] = (db, stamp, digest)
    if not stale:
        return
    blank_gradebook()  # once, before the threads copy it
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        list(pool.map(lambda ch: register([ch], f"sqlite:///{stale[ch][0]}"), stale))
    for db, stamp, digest in stale.values():
        stamp.write_text(digest)


# ------------------------------------------------------------------ grading one

def grade_one(r: Result, fresh: bool, timeout: float) -> Result:
    notebook = HERE / "submitted" / r.student / r.chapter / f"{r.chapter}.ipynb"
    r.digest = _sha256(notebook) + ":" + (WORK / "templates" / f"{r.chapter}.sha256").read_text()
    part = WORK / "parts" / r.chapter
    part.mkdir(parents=True, exist_ok=True)
    db, status = part / f"{r.student}.db", part / f"{r.student}.json"
    if not fresh and status.exists() and db.exists():
        old = json.loads(status.read_text())
        if old.get("digest") == r.digest and not old.get("problem"):
            r.score, r.max_score, r.removed, r.seconds = old["score"], old["max_score"], old["removed"], old["seconds"]
            r.reused = True
            return r
    status.unlink(missing_ok=True)
    shutil.copy(WORK / "templates" / f"{r.chapter}.db", db)
    url = f"sqlite:///{db}"
    worker = _workers.get()
    try:
        reply = worker.run({"chapter": r.chapter, "student": r.student, "db_url": url}, timeout)
    finally:
        _workers.put(worker)
    r.seconds = reply.get("seconds", 0.0)
    if not reply.get("ok"):
        r.problem = reply.get("error") or "nbgrader failed without a message"
        return r
    from nbgrader.api import Gradebook, MissingEntry

    try:
        with Gradebook(url) as gb:
            sub = gb.find_submission(r.chapter, r.student)
            r.score, r.max_score = sub.score, sub.max_score
    except MissingEntry:
        r.problem = "no grades were recorded"
        return r
    if _stopping.is_set():
        return r
    graded = HERE / "autograded" / r.student / r.chapter / f"{r.chapter}.ipynb"
    r.removed = graded.read_text().count(MARK) if graded.exists() else 0
    _write_json(status, asdict(r))
    return r


class Worker:
    """A ``grade.py --worker`` process that autogrades and writes feedback, one submission at a time,
    or registers a chapter in a gradebook.

    nbgrader takes seconds to import; a worker imports it once and then grades many
    submissions through nbgrader's own Python API, each with its own gradebook. It runs
    in its own process group, so stopping it stops its kernels too; a worker that
    crashes or hangs is replaced, and only that submission is reported.
    """

    def __init__(self, index: int):
        self.index, self.proc = index, None

    def _start(self) -> None:
        WORK.mkdir(parents=True, exist_ok=True)
        log = open(WORK / f"worker-{self.index}.log", "a")
        with _lock:
            if _stopping.is_set():
                raise KeyboardInterrupt
            self.proc = subprocess.Popen([sys.executable, str(Path(__file__).resolve()), "--worker"], cwd=HERE,
                                         env=_env(main_db_url()), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                         stderr=log, text=True, start_new_session=True)
            _children.add(self.proc)
        log.close()

    def stop(self) -> None:
        if self.proc is not None:
            with _lock:
                _children.discard(self.proc)
            _kill(self.proc)
            self.proc = None

    def run(self, job: dict, timeout: float) -> dict:
        """Send one job (see :func:`worker_main`); its answer, or why there is none."""
        import selectors

        if self.proc is None or self.proc.poll() is not None:
            self._start()
        try:
            self.proc.stdin.write(json.dumps(job) + "\n")
            self.proc.stdin.flush()
            with selectors.DefaultSelector() as sel:
                sel.register(self.proc.stdout, selectors.EVENT_READ)
                if not sel.select(timeout):
                    self.stop()
                    return {"ok": False, "error": f"nbgrader took longer than {timeout:g} s and was stopped"}
            line = self.proc.stdout.readline()
        except (BrokenPipeError, OSError):
            line = ""
        if not line:
            self.stop()
            tail = (WORK / f"worker-{self.index}.log").read_text()[-300:].strip().splitlines()
            return {"ok": False, "error": "the grading process died" + (f": {tail[-1]}" if tail else "")}
        return json.loads(line)


class _Pool:
    """Idle workers, handed to one grading thread at a time."""

    def __init__(self):
        import queue

        self.queue, self.all = queue.Queue(), []

    def fill(self, n: int) -> None:
        for i in range(n):
            worker = Worker(i)
            self.all.append(worker)
            self.queue.put(worker)

    def get(self) -> Worker:
        return self.queue.get()

    def put(self, worker: Worker) -> None:
        self.queue.put(worker)

    def stop(self) -> None:
        for worker in self.all:
            worker.stop()


_workers = _Pool()


def worker_main() -> int:
    """Read one job a line and answer one line each: ``{"chapter", "student", "db_url"}`` autogrades
    and writes feedback; ``{"register": chapter, "db_url"}`` registers a chapter in a gradebook."""
    answer = os.fdopen(os.dup(1), "w", buffering=1)
    os.dup2(2, 1)  # nbgrader's own output goes to the log, never into the answers
    import copy

    from nbgrader.apps import NbGraderAPI
    from nbgrader.coursedir import CourseDirectory
    from traitlets.config.loader import PyFileConfigLoader

    base = PyFileConfigLoader("nbgrader_config.py", path=str(HERE)).load_config()
    for line in sys.stdin:
        job = json.loads(line)
        config = copy.deepcopy(base)
        config.CourseDirectory.db_url = job["db_url"]
        if "register" in job:
            with tempfile.TemporaryDirectory() as scratch:
                config.CourseDirectory.release_directory = scratch
                api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
                result = api.generate_assignment(job["register"], force=True)
            error = "" if result["success"] else _last_error(subprocess.CompletedProcess(
                [], 1, (result.get("error") or "") + "\n" + (result.get("log") or ""), ""))
            answer.write(json.dumps({"ok": result["success"], "error": error}) + "\n")
            continue
        api = NbGraderAPI(coursedir=CourseDirectory(config=config), config=config)
        start = time.perf_counter()
        result = api.autograde(job["chapter"], job["student"], force=True, create=True)
        seconds = time.perf_counter() - start
        if result["success"]:
            result = api.generate_feedback(job["chapter"], job["student"], force=True)
            what = "feedback failed"
        else:
            what = "nbgrader autograde failed"
        error = ""
        if not result["success"]:
            text = (result.get("error") or "") + "\n" + (result.get("log") or "")
            error = f"{what}: {_last_error(subprocess.CompletedProcess([], 1, text, ''))}"
        answer.write(json.dumps({"ok": result["success"], "error": error, "seconds": seconds}) + "\n")
    return 0


def merge(results: list[Result], db_url: str) -> None:
    """Copy each graded submission from its own gradebook into the main one (idempotent)."""
    import warnings

    from nbgrader.api import Gradebook, MissingEntry
    from sqlalchemy.exc import SAWarning

    # nbgrader 0.9.6's add_submission trips SQLAlchemy's autoflush warnings on every call;
    # the rows are written all the same (the tests read them back), so keep them off the screen.
    warnings.filterwarnings("ignore", category=SAWarning, module="nbgrader")
    with Gradebook(db_url) as dst:
        for r in results:
            if r.score is None:
                continue
            with Gradebook(f"sqlite:///{WORK / 'parts' / r.chapter / (r.student + '.db')}") as src:
                sub = src.find_submission(r.chapter, r.student)
                dst.update_or_create_student(r.student)
                try:
                    dst.remove_submission(r.chapter, r.student)
                    dst.db.commit()
                    dst.db.expire_all()
                except MissingEntry:
                    pass
                dst.add_submission(r.chapter, r.student, timestamp=sub.timestamp)
                for nb in sub.notebooks:
                    for g in nb.grades:
                        d = dst.find_grade(g.name, nb.name, r.chapter, r.student)
                        d.auto_score, d.manual_score = g.auto_score, g.manual_score
                        d.extra_credit, d.needs_manual_grade = g.extra_credit, g.needs_manual_grade
                    for cm in nb.comments:
                        d = dst.find_comment(cm.name, nb.name, r.chapter, r.student)
                        d.auto_comment, d.manual_comment = cm.auto_comment, cm.manual_comment
                dst.db.commit()


# ------------------------------------------------------------------ the run

def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--student", help="grade only this student")
    parser.add_argument("--chapter", help="grade only this chapter (e.g. ch02-ann)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1,
                        help="submissions graded at once (default: the number of CPU cores)")
    parser.add_argument("--fresh", action="store_true", help="regrade submissions an earlier run finished")
    parser.add_argument("--timeout", type=float, default=1800, help="seconds allowed per submission")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.worker:
        return worker_main()
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))

    submitted = HERE / "submitted"
    known = sorted(p.name for p in (ROOT / "solutions").iterdir() if p.is_dir())
    pairs = sorted((s.name, c.name) for s in submitted.glob("*") if s.is_dir()
                   for c in s.iterdir() if c.is_dir()) if submitted.is_dir() else []
    pairs = [(s, c) for s, c in pairs if (not args.student or s == args.student)
             and (not args.chapter or c == args.chapter)]
    if not pairs:
        print(f"Nothing to grade: put submissions in {submitted}/<student>/<chapter>/.")
        return 0

    results = [Result(s, c) for s, c in pairs]
    todo = []
    for r in results:
        r.problem = preflight(r.student, r.chapter, known)
        if not r.problem:
            todo.append(r)
    chapters = sorted({r.chapter for r in todo})

    from tqdm.auto import tqdm

    jobs = max(1, min(args.jobs, len(todo) or 1))
    _workers.fill(jobs)
    pool = ThreadPoolExecutor(max_workers=jobs)
    try:
        templates(chapters, jobs)
        futures = [pool.submit(grade_one, r, args.fresh, args.timeout) for r in todo]
        with tqdm(total=len(futures), desc="grading", unit="submission", disable=args.quiet,
                  file=sys.stdout) as bar:
            for future in as_completed(futures):
                r = future.result()
                bar.set_postfix_str(f"{r.student}/{r.chapter}")
                bar.update()
    except KeyboardInterrupt:
        _stopping.set()
        pool.shutdown(wait=False, cancel_futures=True)
        with _lock:
            for proc in list(_children):
                _kill(proc)
        pool.shutdown(wait=True)
        _workers.stop()
        print("\ninterrupted: run the same command again to finish; finished submissions are kept.")
        return 130
    pool.shutdown()
    db_url = main_db_url()
    try:
        register(chapters, db_url)
    finally:
        _workers.stop()
    merge(results, db_url)
    proc = nbgrader("export", f"--to={HERE / 'grades.csv'}", "--log-level=WARN", db_url=db_url)
    if proc.returncode:
        print(f"export to grades.csv failed: {_last_error(proc)}")

    width = max(7, *(len(r.student) for r in results))
    cwidth = max(7, *(len(r.chapter) for r in results))
    print(f"\n{'student':<{width}}  {'chapter':<{cwidth}}  score")
    for r in results:
        if r.score is None:
            verdict = f"NOT GRADED: {r.problem}"
        else:
            verdict = f"{r.score:g} / {r.max_score:g}"
            notes = [f"{r.seconds:.1f} s" + (", from an earlier run" if r.reused else "")]
            if r.removed:
                notes.append(f"{r.removed} tampering statement(s) removed before grading: see the feedback")
            verdict += f"   ({'; '.join(notes)})"
        print(f"{r.student:<{width}}  {r.chapter:<{cwidth}}  {verdict}")
    print(f"\nfeedback: {HERE / 'feedback'}   grades: {HERE / 'grades.csv'}")
    return 1 if any(r.problem for r in results) else 0


if __name__ == "__main__":
    sys.exit(main())
