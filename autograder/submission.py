"""What the grader does to a submitted notebook before nbgrader runs it.

nbgrader has already restored every locked cell (instructions, the setup cell, the test
cells) from the gradebook. :class:`PrepareSubmission` then, in this order:

1. **Fresh checks in every test cell.** Each test cell starts by loading its chapter's
   checks from a private copy of the companion (``companion.checks.fresh``), so a
   notebook that replaced ``check``, a check, a reference or a helper in ``companion``
   changes nothing in what the tests compare against.
2. **Tampering removed.** In every cell the learner can edit, statements that change
   code the learner does not own are replaced by ``pass`` with a ``# [grader] removed:``
   comment that says why (see :func:`tampering`). The rest of the learner's code runs
   as written, so they earn exactly what their own code earns, and the feedback shows
   what was taken out.
3. **Teaching cells skipped.** Code cells that are identical to the chapter's own
   demonstration cells (training runs, figures, tables) don't affect a grade, so they
   are not run; a cell the learner added or changed is run. This keeps one submission
   at a few seconds of grading, whatever the chapter trains.
"""
from __future__ import annotations

import ast
import json
import re
from pathlib import Path

from nbgrader.preprocessors import NbGraderPreprocessor
from traitlets import Bool

ROOT = Path(__file__).resolve().parent.parent
MARK = "# [grader] removed:"
SKIPPED = "# [grader] a teaching cell of the chapter: not run while grading (it does not affect your grade)"

# Modules whose use in a learner's cell can only serve to reach around the checks.
FORBIDDEN_MODULES = {"builtins", "importlib", "ctypes", "gc", "inspect", "unittest"}
FORBIDDEN_DOTTED = {"sys.modules", "sys._getframe", "sys.settrace", "sys.setprofile", "sys.meta_path",
                    "sys.path_hooks", "sys.path_importer_cache", "sys.exc_info"}
FORBIDDEN_CALLS = {"exec", "eval", "compile", "__import__", "globals", "setattr", "delattr", "vars"}
FORBIDDEN_ATTRS = {"__dict__", "__globals__", "__code__", "__builtins__", "__setattr__", "__delattr__",
                   "__subclasses__", "__closure__", "__defaults__", "__kwdefaults__", "f_globals", "f_locals",
                   "f_back", "f_builtins", "tb_frame", "gi_frame"}
PROTECTED_NAMES = {"check", "companion", "__builtins__", "get_ipython"}
# Global settings a learner may legitimately change (seeding and determinism, plotting).
ALLOWED_TARGETS = ("torch.backends.", "os.environ", "plt.rcParams", "matplotlib.rcParams", "mpl.rcParams",
                   "np.set_printoptions", "pd.options", "torch.set_printoptions")


def _dotted(node: ast.AST) -> str:
    parts = []
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        parts.append(node.attr if isinstance(node, ast.Attribute) else "[]")
        node = node.value
    if isinstance(node, ast.Name):
        parts.append(node.id)
        return ".".join(reversed(parts)).replace(".[]", "[]")
    return ""


def _root(node: ast.AST) -> str | None:
    while isinstance(node, (ast.Attribute, ast.Subscript, ast.Call)):
        node = node.func if isinstance(node, ast.Call) else node.value
    return node.id if isinstance(node, ast.Name) else None


def imported_names(sources: list[str]) -> set[str]:
    """Names that ``import`` statements bind anywhere in the notebook (modules and their members)."""
    names = set()
    for src in sources:
        try:
            tree = ast.parse(_without_magics(src))
        except SyntaxError:
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for alias in node.names:
                    names.add((alias.asname or alias.name).split(".")[0])
    return names


def _without_magics(src: str) -> str:
    return "\n".join("" if line.lstrip().startswith(("%", "!")) else line for line in src.splitlines())


def tampering(src: str, modules: set[str]) -> list[tuple[ast.stmt, str]]:
    """Statements of ``src`` that reach around the checks, each with the reason.

    ``modules`` are the names the notebook's imports bind (``torch``, ``np``, ``check``,
    ``companion``, ...). Flagged: assigning or deleting an attribute or item of one of
    them (``check.relu = ...``, ``torch.allclose = ...``), rebinding ``check`` or
    ``companion``, ``setattr``/``exec``/``eval``/``__import__``/``globals``, importing
    ``sys``, ``builtins``, ``importlib``, ``inspect``, ``gc``, ``ctypes`` or the checks,
    and reaching into ``__dict__``, ``__globals__``, ``__code__`` and frames.
    """
    try:
        tree = ast.parse(_without_magics(src))
    except SyntaxError:
        return []
    found: dict[int, tuple[ast.stmt, str]] = {}

    def flag(stmt: ast.stmt, reason: str) -> None:
        found.setdefault(id(stmt), (stmt, reason))

    def targets(stmt: ast.stmt) -> list[ast.AST]:
        if isinstance(stmt, ast.Assign):
            return list(stmt.targets)
        if isinstance(stmt, (ast.AugAssign, ast.AnnAssign)):
            return [stmt.target]
        if isinstance(stmt, ast.Delete):
            return list(stmt.targets)
        if isinstance(stmt, (ast.For, ast.AsyncFor)):
            return [stmt.target]
        if isinstance(stmt, (ast.With, ast.AsyncWith)):
            return [item.optional_vars for item in stmt.items if item.optional_vars is not None]
        return []

    def simple_statements(body):
        for stmt in body:
            yield stmt
            for field in ("body", "orelse", "finalbody", "handlers"):
                inner = getattr(stmt, field, None)
                if isinstance(inner, list):
                    yield from simple_statements(inner)
            if isinstance(stmt, ast.Match):
                for case in stmt.cases:
                    yield from simple_statements(case.body)

    for stmt in simple_statements(tree.body):
        for target in _unpack(targets(stmt)):
            if isinstance(target, (ast.Attribute, ast.Subscript)) and _root(target) in modules:
                name = _dotted(target) or _root(target)
                if not name.startswith(ALLOWED_TARGETS):
                    flag(stmt, f"changes `{name}`, which belongs to a library or the course")
            elif isinstance(target, ast.Name) and target.id in PROTECTED_NAMES:
                flag(stmt, f"rebinds `{target.id}`, which the tests use")
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and stmt.name in PROTECTED_NAMES:
            flag(stmt, f"rebinds `{stmt.name}`, which the tests use")
        if isinstance(stmt, (ast.Import, ast.ImportFrom)):
            mods = [a.name for a in stmt.names] if isinstance(stmt, ast.Import) else [stmt.module or ""]
            for mod in mods:
                top = mod.split(".")[0]
                if top in FORBIDDEN_MODULES or mod.startswith("companion.checks") or (
                        isinstance(stmt, ast.ImportFrom) and mod == "companion"
                        and any(a.name == "checks" for a in stmt.names)):
                    flag(stmt, f"imports `{mod}`, which exercises never need")
            if isinstance(stmt, ast.Import) and any(a.name == "sys" and a.asname not in (None, "sys") for a in stmt.names):
                flag(stmt, "imports `sys` under another name")
            if any((a.asname or a.name).split(".")[0] in PROTECTED_NAMES - {"companion"} for a in stmt.names):
                flag(stmt, "rebinds a name the tests use")
        if isinstance(stmt, (ast.Global, ast.Nonlocal)) and set(stmt.names) & PROTECTED_NAMES:
            flag(stmt, "rebinds a name the tests use")
        # expressions anywhere in the statement (not in nested statements: they are visited themselves)
        for node in _own_nodes(stmt):
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in FORBIDDEN_CALLS:
                if node.func.id in ("setattr", "delattr", "vars") and node.args and _root(node.args[0]) not in modules \
                        and not isinstance(node.args[0], ast.Call):
                    continue  # setattr(self, ...) on the learner's own object is fine
                flag(stmt, f"calls `{node.func.id}`, which exercises never need")
            elif isinstance(node, ast.Attribute) and node.attr in FORBIDDEN_ATTRS:
                flag(stmt, f"reaches into `{node.attr}`")
            elif isinstance(node, ast.Attribute) and _dotted(node) in FORBIDDEN_DOTTED:
                flag(stmt, f"uses `{_dotted(node)}`, which exercises never need")
            elif isinstance(node, ast.Name) and node.id in ("__builtins__",):
                flag(stmt, "reaches into `__builtins__`")
            elif isinstance(node, ast.Call) and _dotted(node.func).split(".")[-1] in ("__setattr__", "__delattr__"):
                flag(stmt, "calls `__setattr__`")
    return sorted(found.values(), key=lambda item: item[0].lineno)


def _unpack(targets: list[ast.AST]):
    for target in targets:
        if isinstance(target, (ast.Tuple, ast.List)):
            yield from _unpack(list(target.elts))
        elif isinstance(target, ast.Starred):
            yield from _unpack([target.value])
        else:
            yield target


def _own_nodes(stmt: ast.stmt):
    """Nodes of ``stmt`` outside its nested statement bodies."""
    stack = [child for name, child in ast.iter_fields(stmt)
             if name not in ("body", "orelse", "finalbody", "handlers", "cases")]
    while stack:
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(item)
        elif isinstance(item, ast.AST):
            yield item
            stack.extend(child for _, child in ast.iter_fields(item))


def neutralize(src: str, modules: set[str]) -> tuple[str, list[str]]:
    """``src`` with each tampering statement replaced by ``pass  # [grader] removed: why``."""
    found = tampering(src, modules)
    if not found:
        return src, []
    lines = src.splitlines()
    spans: list[list] = []  # [first, last, reasons]: statements sharing lines are replaced together
    for stmt, reason in found:
        first, last = stmt.lineno - 1, (stmt.end_lineno or stmt.lineno) - 1
        if spans and first <= spans[-1][1]:
            spans[-1][1] = max(spans[-1][1], last)
            spans[-1][2].append(reason)
        else:
            spans.append([first, last, [reason]])
    for first, last, why in reversed(spans):
        indent = re.match(r"\s*", lines[first]).group(0)
        original = " ".join(line.strip() for line in lines[first:last + 1])
        lines[first:last + 1] = [f"{indent}pass  {MARK} {'; '.join(dict.fromkeys(why))}: {original[:120]}"]
    return "\n".join(lines), [f"line {stmt.lineno}: {reason}" for stmt, reason in found]


def _normal(src: str) -> str:
    return "\n".join(line.rstrip() for line in src.strip().splitlines())


class RepairCells(NbGraderPreprocessor):
    """Make a rearranged notebook safe for nbgrader, before it restores the locked cells.

    nbgrader 0.9.6 crashes on two things learners do: it blanks the metadata of a
    duplicated cell to ``{}`` and then fails on it (``KeyError: 'grade_id'``), and it
    puts a deleted test cell back after "the previous solution or test cell", failing
    when that neighbour is anything else. Here, blanked metadata is removed, and every
    missing test cell is put back after the nearest cell that precedes it in the
    chapter's notebook and is still present (its source is then restored by nbgrader).
    """

    def preprocess(self, nb, resources):
        for cell in nb.cells:
            meta = cell.metadata.get("nbgrader")
            if meta is not None and not meta.get("grade_id"):
                del cell.metadata["nbgrader"]
        assignment, notebook = resources["nbgrader"]["assignment"], resources["nbgrader"]["notebook"]
        source_path = ROOT / "solutions" / assignment / f"{notebook}.ipynb"
        if not source_path.exists():
            return nb, resources
        import nbformat

        source = nbformat.read(source_path, as_version=4)
        ids = [c.metadata.get("nbgrader", {}).get("grade_id") for c in source.cells]
        present = {c.metadata.get("nbgrader", {}).get("grade_id") for c in nb.cells} - {None}
        for i, cell in enumerate(source.cells):
            meta = cell.metadata.get("nbgrader", {})
            if not meta.get("grade") or meta["grade_id"] in present:
                continue
            before = [g for g in ids[:i] if g in present]
            at = 0
            if before:
                at = 1 + next(j for j, c in enumerate(nb.cells)
                              if c.metadata.get("nbgrader", {}).get("grade_id") == before[-1])
            restored = nbformat.v4.new_code_cell(cell.source, metadata=cell.metadata)
            nb.cells.insert(at, restored)
            present.add(meta["grade_id"])
            self.log.warning("test cell %s was missing: put back", meta["grade_id"])
        return nb, resources


class PrepareSubmission(NbGraderPreprocessor):
    """Fresh checks in test cells, tampering removed, teaching cells skipped (see the module)."""

    skip_teaching_cells = Bool(True, help="Do not run the chapter's unchanged demonstration cells").tag(config=True)

    def preprocess(self, nb, resources):
        assignment = resources["nbgrader"]["assignment"]
        notebook = resources["nbgrader"]["notebook"]
        chapter = assignment.split("-")[0]
        source_path = ROOT / "solutions" / assignment / f"{notebook}.ipynb"
        teaching = set()
        if source_path.exists():
            for cell in json.loads(source_path.read_text())["cells"]:
                meta = cell.get("metadata", {}).get("nbgrader", {})
                if cell["cell_type"] == "code" and not (meta.get("grade") or meta.get("solution") or meta.get("locked")):
                    teaching.add(_normal("".join(cell["source"])))
        code = [c for c in nb.cells if c.cell_type == "code"]
        modules = imported_names([c.source for c in code]) | {"companion", "check"}
        removed = 0
        for cell in code:
            meta = cell.metadata.get("nbgrader", {})
            if meta.get("grade") and re.fullmatch(r"ch\d\d", chapter):
                cell.source = (f'import companion.checks; check = companion.checks.fresh("{chapter}")'
                               f"  # [grader] the checks, fresh from disk\n{cell.source}")
            elif meta.get("locked"):
                continue
            elif self.skip_teaching_cells and not meta.get("solution") and _normal(cell.source) in teaching:
                cell.source = SKIPPED
            else:
                cell.source, reasons = neutralize(cell.source, modules)
                removed += len(reasons)
                for reason in reasons:
                    self.log.warning("removed from %s: %s", meta.get("grade_id", "a cell"), reason)
        resources.setdefault("nbgrader", {})["tampering_removed"] = removed
        return nb, resources


class TrimTracebacks(NbGraderPreprocessor):
    """In feedback, a failed test cell shows its error's name and message, not a traceback.

    A traceback quotes the test cell's source, hidden tests included; the message is
    what a learner needs (the checks write it for them).
    """

    def preprocess_cell(self, cell, resources, index):
        if cell.cell_type == "code" and cell.metadata.get("nbgrader", {}).get("grade"):
            for out in cell.get("outputs", []):
                if out.get("output_type") == "error":
                    out["traceback"] = [f"{out.get('ename', 'Error')}: {out.get('evalue', '')}"]
        return cell, resources
