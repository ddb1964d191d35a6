"""The grader's defences, without nbgrader: fresh checks, and tampering found and removed.

(tests/test_grading.py grades a tampering submission of every chapter end to end.)
"""
from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "autograder"))
from submission import imported_names, neutralize, tampering  # noqa: E402

import companion  # noqa: E402
import companion.checks as checks  # noqa: E402
from companion import activations as A  # noqa: E402

SETUP = "import numpy as np\nimport torch\nimport companion\nfrom companion.checks import ch02 as check\nimport os"
MODULES = imported_names([SETUP]) | {"companion", "check"}


def wrong_relu(x):
    return x.abs()


def test_fresh_checks_ignore_a_patched_check_and_reference(monkeypatch):
    from companion.checks import ch02

    monkeypatch.setattr(ch02, "relu", lambda *a, **k: None)
    monkeypatch.setattr(A, "relu", wrong_relu)
    monkeypatch.setattr(checks.core, "compare", lambda *a, **k: None)
    assert ch02.relu(wrong_relu, A.relu_grad) is None  # the patched copy would pass anything
    fresh = checks.fresh("ch02")
    assert fresh is not ch02
    with pytest.raises(AssertionError, match="not right"):
        fresh.relu(wrong_relu, lambda x: (x > 0).to(x.dtype))


def test_fresh_rejects_a_strange_chapter_name():
    with pytest.raises(ValueError):
        checks.fresh("../../etc")


@pytest.mark.parametrize("code, reason", [
    ("check.relu = lambda *a, **k: None", "changes `check.relu`"),
    ("companion.activations.relu = wrong", "changes `companion.activations.relu`"),
    ("torch.allclose = lambda *a, **k: True", "changes `torch.allclose`"),
    ("np.isclose = lambda *a, **k: True", "changes `np.isclose`"),
    ("check = None", "rebinds `check`"),
    ("def check():\n    pass", "rebinds `check`"),
    ("for companion in range(3):\n    pass", "rebinds `companion`"),
    ("import companion.checks.core as core", "imports `companion.checks.core`"),
    ("from companion import checks", "imports `companion`"),
    ("import builtins", "imports `builtins`"),
    ("import importlib", "imports `importlib`"),
    ("setattr(check, 'relu', None)", "calls `setattr`"),
    ("setattr(companion.checks, 'ch02', None)", "calls `setattr`"),
    ("exec('check = None')", "calls `exec`"),
    ("globals()['check'] = None", "calls `globals`"),
    ("f = relu.__globals__", "reaches into `__globals__`"),
    ("import sys\nsys.modules['companion'] = None", "sys.modules"),
    ("def relu(x):\n    torch.allclose = lambda *a, **k: True\n    return x", "changes `torch.allclose`"),
])
def test_tampering_is_found(code, reason):
    found = tampering(code, MODULES)
    assert found and any(reason in why for _, why in found), found
    cleaned, reasons = neutralize(code, MODULES)
    compile(cleaned, "cell", "exec")  # still valid Python
    assert "[grader] removed:" in cleaned


@pytest.mark.parametrize("code", [
    "def relu(x):\n    return torch.where(x > 0, x, torch.zeros_like(x))",
    "torch.backends.cudnn.deterministic = True\ntorch.backends.cudnn.benchmark = False",
    "os.environ['PYTHONHASHSEED'] = '0'",
    "np.random.seed(0)\ntorch.manual_seed(0)",
    "class Block(torch.nn.Module):\n    def __init__(self):\n        super().__init__()\n        setattr(self, 'w', 1)",
    "model.weight.data = torch.zeros(3)\nself_check = 3",
    "import sys\nprint('debugging', file=sys.stderr)",
    "import math, random\nfrom torch import nn",
    "x = [1, 2]\nx[0] = 5",
])
def test_honest_code_is_left_alone(code):
    assert tampering(code, MODULES) == []
    assert neutralize(code, MODULES) == (code, [])


def test_statements_sharing_a_line_are_removed_together():
    code = "import companion.checks.core as core; core.compare = None\nx = 1"
    cleaned, reasons = neutralize(code, MODULES | {"core"})
    assert len(reasons) == 2 and cleaned.splitlines()[1] == "x = 1"
    compile(cleaned, "cell", "exec")


def test_a_syntax_error_is_left_for_the_kernel_to_report():
    assert tampering("def f(:\n  check.x = 1", MODULES) == []


def test_a_check_keeps_the_learners_stderr_and_warnings_off_stderr(capsys):
    import warnings

    from companion.checks import ch02

    def noisy_relu(x):
        print("debugging", file=sys.stderr)
        warnings.warn("careful")
        return A.relu(x)

    before = torch.random.get_rng_state()
    ch02.relu(noisy_relu, A.relu_grad)
    out = capsys.readouterr()
    assert out.err == ""
    assert "debugging" in out.out and "careful" in out.out
    assert torch.equal(torch.random.get_rng_state(), before), "a check must not move the notebook's RNG"
