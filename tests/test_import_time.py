"""``import companion`` stays light: little time on top of torch, and no heavy optional modules."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
HEAVY = ("matplotlib", "sklearn", "mlxtend", "tqdm", "ipywidgets", "nbgrader")
BUDGET_S = 0.3
RUNS = 3


def run_child(code: str) -> str:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def timed_import(statements: str) -> float:
    code = (
        "import time\n"
        "t0 = time.perf_counter()\n"
        f"{statements}\n"
        "print(time.perf_counter() - t0)\n"
    )
    return float(run_child(code))


def test_import_companion_adds_little_to_torch():
    torch_alone = min(timed_import("import torch") for _ in range(RUNS))
    with_companion = min(timed_import("import torch; import companion") for _ in range(RUNS))
    extra = with_companion - torch_alone
    assert extra <= BUDGET_S, (f"import companion adds {extra:.3f} s on top of torch "
                               f"({torch_alone:.3f} s -> {with_companion:.3f} s)")


def test_import_companion_does_not_import_heavy_modules():
    code = (
        "import sys, json\n"
        "import companion\n"
        f"heavy = {HEAVY!r}\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in heavy)))\n"
    )
    loaded = json.loads(run_child(code))
    assert loaded == [], f"import companion pulled in {loaded}"


def test_companion_is_imported_from_this_checkout():
    path = run_child("import companion; print(companion.__file__)")
    assert Path(path).resolve().is_relative_to(ROOT), path


@pytest.mark.parametrize("attribute", ["fast_mode", "pick", "get_device", "seed_everything", "cache_dir", "start"])
def test_top_level_helpers_need_no_submodule_import(attribute):
    import companion

    assert callable(getattr(companion, attribute))


def test_submodules_load_on_first_use():
    import companion

    assert companion.activations.relu is not None
    assert companion.data.load_digits is not None
    with pytest.raises(AttributeError, match="no_such_thing"):
        companion.no_such_thing


def test_core_submodules_stay_light_too():
    """Beyond what torch itself pulls in (this torch build imports tqdm), nothing heavy."""
    code = (
        "import sys, json\n"
        f"heavy = {HEAVY!r}\n"
        "def loaded(): return {m for m in sys.modules if m.split('.')[0] in heavy}\n"
        "import torch\n"
        "by_torch = loaded()\n"
        "import companion.activations, companion.backprop, companion.perceptron, companion.checks\n"
        "print(json.dumps(sorted(loaded() - by_torch)))\n"
    )
    assert json.loads(run_child(code)) == []
