"""Shared fixtures for the companion package's unit tests.

Markers ``cuda`` and ``slow`` are declared in pyproject.toml. A test that needs a GPU
is written as::

    @pytest.mark.cuda
    @pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
    def test_something_on_the_gpu(): ...
"""
from __future__ import annotations

import socket

import pytest


@pytest.fixture
def tmp_cache(tmp_path, monkeypatch):
    """An empty dataset cache: ``COURSE_CACHE_DIR`` points at a fresh temporary folder."""
    folder = tmp_path / "course-cache"
    monkeypatch.setenv("COURSE_CACHE_DIR", str(folder))
    return folder


@pytest.fixture
def no_network(monkeypatch):
    """Any attempt to open a network connection raises ``RuntimeError("network used")``."""

    def refuse(*args, **kwargs):
        raise RuntimeError("network used")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)


def pytest_collection_modifyitems(config, items):
    """Every test marked ``cuda`` skips cleanly on a machine without a CUDA GPU."""
    import torch

    if torch.cuda.is_available():
        return
    skip = pytest.mark.skip(reason="needs CUDA")
    for item in items:
        if "cuda" in item.keywords:
            item.add_marker(skip)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """Keep each phase's report on the test item, so fixtures can see a failure (browser screenshots)."""
    outcome = yield
    rep = outcome.get_result()
    setattr(item, f"rep_{rep.when}", rep)
