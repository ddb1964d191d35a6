"""companion.runtime: fast mode, pick, device choice, seeding and the cache folder."""
from __future__ import annotations

import random

import numpy as np
import pytest
import torch

from companion import runtime
from companion.runtime import cache_dir, fast_mode, get_device, pick, seed_everything

MODE_VARS = ("COURSE_FAST", "NBGRADER_EXECUTION", "CI")


@pytest.fixture
def clean_env(monkeypatch):
    """No mode variable set; the test sets what it needs."""
    for name in MODE_VARS + ("COURSE_DEVICE",):
        monkeypatch.delenv(name, raising=False)
    return monkeypatch


def _set(monkeypatch, env: dict[str, str | None]) -> None:
    for name, value in env.items():
        if value is None:
            monkeypatch.delenv(name, raising=False)
        else:
            monkeypatch.setenv(name, value)


# ------------------------------------------------------------------ fast_mode

@pytest.mark.parametrize(
    "env, expected",
    [
        # nothing set: a learner's own run is full mode
        ({}, False),
        # nbgrader alone, CI alone, both
        ({"NBGRADER_EXECUTION": "autograde"}, True),
        ({"NBGRADER_EXECUTION": "validate"}, True),
        ({"CI": "true"}, True),
        ({"CI": "1"}, True),
        ({"CI": "false"}, False),
        ({"CI": "0"}, False),
        ({"NBGRADER_EXECUTION": "autograde", "CI": "true"}, True),
        ({"NBGRADER_EXECUTION": "autograde", "CI": "false"}, True),
        # COURSE_FAST forces either way and wins over everything else
        ({"COURSE_FAST": "1"}, True),
        ({"COURSE_FAST": "0"}, False),
        ({"COURSE_FAST": "1", "CI": "false"}, True),
        ({"COURSE_FAST": "0", "CI": "true"}, False),
        ({"COURSE_FAST": "0", "NBGRADER_EXECUTION": "autograde"}, False),
        ({"COURSE_FAST": "0", "NBGRADER_EXECUTION": "autograde", "CI": "true"}, False),
        ({"COURSE_FAST": "1", "NBGRADER_EXECUTION": "autograde", "CI": "true"}, True),
    ],
)
def test_fast_mode_truth_table(clean_env, env, expected):
    _set(clean_env, env)
    assert fast_mode() is expected


@pytest.mark.parametrize("value", ["1", "true", "TRUE", "yes", "on", " On "])
def test_course_fast_true_spellings(clean_env, value):
    clean_env.setenv("COURSE_FAST", value)
    assert fast_mode() is True


@pytest.mark.parametrize("value", ["0", "false", "False", "no", "off", " OFF "])
def test_course_fast_false_spellings(clean_env, value):
    clean_env.setenv("COURSE_FAST", value)
    clean_env.setenv("CI", "true")  # would otherwise turn fast mode on
    assert fast_mode() is False


@pytest.mark.parametrize("value", ["2", "maybe", "fast", "y"])
def test_invalid_course_fast_raises_clear_error(clean_env, value):
    clean_env.setenv("COURSE_FAST", value)
    with pytest.raises(ValueError) as info:
        fast_mode()
    message = str(info.value)
    assert "COURSE_FAST" in message
    assert value.lower() in message
    assert "1/0" in message  # says which values are accepted


def test_mode_reason_names_the_cause(clean_env):
    assert runtime.mode_reason() == "default for a learner"
    clean_env.setenv("CI", "true")
    assert "CI" in runtime.mode_reason()
    clean_env.setenv("NBGRADER_EXECUTION", "autograde")
    assert "nbgrader" in runtime.mode_reason()
    clean_env.setenv("COURSE_FAST", "0")
    assert "COURSE_FAST" in runtime.mode_reason()


# ------------------------------------------------------------------ pick

def test_pick_full_by_default(clean_env):
    assert pick(full=40, fast=2) == 40


def test_pick_fast_in_fast_mode(clean_env):
    clean_env.setenv("COURSE_FAST", "1")
    assert pick(full=40, fast=2) == 2
    sentinel_full, sentinel_fast = object(), object()
    assert pick(sentinel_full, sentinel_fast) is sentinel_fast


def test_pick_follows_nbgrader(clean_env):
    clean_env.setenv("NBGRADER_EXECUTION", "autograde")
    assert pick(full="big", fast="small") == "small"


# ------------------------------------------------------------------ get_device

def test_get_device_default_is_cpu_without_accelerators(clean_env):
    device = get_device()
    assert isinstance(device, torch.device)
    if not torch.cuda.is_available() and not runtime._mps_available():
        assert device == torch.device("cpu")


def test_get_device_honours_course_device_cpu(clean_env):
    clean_env.setenv("COURSE_DEVICE", "cpu")
    assert get_device() == torch.device("cpu")


def test_get_device_prefer_argument(clean_env):
    assert get_device("cpu") == torch.device("cpu")


@pytest.mark.skipif(torch.cuda.is_available(), reason="CUDA is present: asking for it is fine")
def test_get_device_cuda_absent_raises(clean_env):
    clean_env.setenv("COURSE_DEVICE", "cuda")
    with pytest.raises(RuntimeError, match="CUDA is not available"):
        get_device()
    with pytest.raises(RuntimeError, match="cuda:1"):
        get_device("cuda:1")


@pytest.mark.cuda
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_get_device_cuda_present(clean_env):
    clean_env.setenv("COURSE_DEVICE", "cuda")
    assert get_device().type == "cuda"
    clean_env.delenv("COURSE_DEVICE")
    assert get_device().type == "cuda"


# ------------------------------------------------------------------ seed_everything

def test_seed_everything_repeats_all_generators():
    assert seed_everything(123) == 123
    first = (torch.randn(5), np.random.rand(5), random.random())
    seed_everything(123)
    second = (torch.randn(5), np.random.rand(5), random.random())
    assert torch.equal(first[0], second[0])
    np.testing.assert_array_equal(first[1], second[1])
    assert first[2] == second[2]


def test_different_seeds_differ():
    seed_everything(0)
    a = torch.randn(5)
    seed_everything(1)
    b = torch.randn(5)
    assert not torch.equal(a, b)


# ------------------------------------------------------------------ cache_dir

def test_cache_dir_honours_env_and_creates_folder(tmp_path, monkeypatch):
    target = tmp_path / "nested" / "cache"
    monkeypatch.setenv("COURSE_CACHE_DIR", str(target))
    path = cache_dir()
    assert path == target
    assert path.is_dir()


def test_cache_dir_default_under_home(tmp_path, monkeypatch):
    monkeypatch.delenv("COURSE_CACHE_DIR", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    path = cache_dir()
    assert path == tmp_path / ".cache" / "dl-course"
    assert path.is_dir()


def test_tmp_cache_fixture_is_used(tmp_cache):
    assert cache_dir() == tmp_cache
