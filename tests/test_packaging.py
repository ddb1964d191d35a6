"""One dependency list, one torch pin, and the commands the README promises."""
from __future__ import annotations

import re
import tomllib

from _course import ROOT


def _pyproject() -> dict:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_torch_is_pinned_once_and_torchvision_is_absent():
    deps = _pyproject()["project"]["dependencies"]
    torch_pins = [d for d in deps if re.match(r"torch\b", d) and not d.startswith("torchinfo")]
    assert torch_pins == ["torch==2.13.0"]
    everything = deps + sum(_pyproject()["project"]["optional-dependencies"].values(), [])
    assert not any(d.startswith(("torchvision", "torchaudio")) for d in everything)


def test_environment_yml_installs_the_project_with_the_same_pin():
    env = (ROOT / "environment.yml").read_text()
    assert "-e .[dev]" in env, "conda should install the project itself, so pyproject stays the one list"
    assert re.findall(r"torch==[\d.]+", env) == ["torch==2.13.0"]


def test_makefile_reads_the_pin_from_pyproject_and_installs_torch_first():
    make = (ROOT / "Makefile").read_text()
    assert "grep -o '\"torch==[^\"]*\"' pyproject.toml" in make
    install = make[make.index("$(STAMP):"):]
    assert install.index('"$(TORCH)"') < install.index('-e ".[dev]"')
    for target in ("lab:", "test:", "release:", "grade:"):
        assert f"\n{target}" in make


def test_ci_runs_the_readme_test_command():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert "make test" in readme and "make lab" in readme
    assert re.search(r"^make test\b", ci, re.M)
