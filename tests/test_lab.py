"""`make lab` serves JupyterLab on 127.0.0.1 with course/ as its root and prints a tokened URL."""
from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import time
import urllib.error
import urllib.request

import pytest

from _course import ROOT, env_with_venv

pytestmark = pytest.mark.slow


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_make_lab_serves_the_course(tmp_path):
    port = _free_port()
    env = env_with_venv(JUPYTER_CONFIG_DIR=str(tmp_path / "config"), JUPYTER_RUNTIME_DIR=str(tmp_path / "runtime"),
                        JUPYTER_DATA_DIR=str(tmp_path / "data"))
    proc = subprocess.Popen(["make", "--no-print-directory", "lab", f"PORT={port}",
                             f"LAB_ARGS=--LabApp.workspaces_dir={tmp_path / 'ws'}"],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                            start_new_session=True)
    url, log = None, []
    try:
        deadline = time.time() + 90
        while time.time() < deadline and url is None:
            line = proc.stdout.readline()
            if not line:
                if proc.poll() is not None:
                    break
                continue
            log.append(line)
            match = re.search(rf"(http://127\.0\.0\.1:{port}/lab\?token=([0-9a-f]+))", line)
            if match:
                url, token = match.group(1), match.group(2)
        assert url, "no http://127.0.0.1 URL with a token was printed:\n" + "".join(log[-30:])
        api = f"http://127.0.0.1:{port}/api/contents/ch02-ann/ch02-ann.ipynb?token={token}"
        body = None
        while body is None and time.time() < deadline:  # the URL is logged just before it listens
            try:
                with urllib.request.urlopen(api, timeout=30) as resp:
                    assert resp.status == 200
                    body = resp.read().decode()
            except urllib.error.URLError:
                time.sleep(0.5)
        assert body and '"cells"' in body and "Artificial neural networks" in body
        with urllib.request.urlopen(f"{url}", timeout=30) as resp:
            assert resp.status == 200
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
