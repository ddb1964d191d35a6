"""The course in a real browser: JupyterLab on 127.0.0.1, driven by Playwright in Debian's Chromium.

Select with ``-m browser``. Skips, saying why, only when no Chromium is installed
(``.ci/run`` installs Debian's ``chromium``; a browser is never downloaded).
Screenshots go to tests/artifacts/ (after Run All always, and on any failure).
"""
from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import socket
import subprocess
import time
import urllib.request
from pathlib import Path

import nbformat
import pytest

from _course import COURSE, ROOT, env_with_venv, nbgrader_meta

pytestmark = [pytest.mark.browser, pytest.mark.slow]

CHROMIUM = os.environ.get("COURSE_CHROMIUM", "/usr/bin/chromium")
ARTIFACTS = ROOT / "tests" / "artifacts"
CHAPTER = "ch02-ann"          # figures, a widget and eleven exercises; fast in fast mode
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
        "--disable-sync", "--no-first-run", "--disable-quic"]
SETTINGS = {
    "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                        "checkForUpdates": False},
    "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
}

if not Path(CHROMIUM).exists():
    pytest.skip(f"no Chromium at {CHROMIUM}: install Debian's package (apt-get install chromium), "
                "as .ci/run does", allow_module_level=True)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a copy of course/, stopped by its own PID at the end."""
    tmp = tmp_path_factory.mktemp("lab")
    root = tmp / "course"
    shutil.copytree(COURSE, root)
    config = tmp / "config"
    for name, value in SETTINGS.items():
        path = config / "lab" / "user-settings" / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(value))
    port, token = _free_port(), secrets.token_hex(16)
    env = env_with_venv(JUPYTER_CONFIG_DIR=str(config), JUPYTER_RUNTIME_DIR=str(tmp / "runtime"),
                        JUPYTER_DATA_DIR=str(tmp / "data"), COURSE_FAST="1", COURSE_CACHE_DIR=os.environ.get(
                            "COURSE_CACHE_DIR", str(Path.home() / ".cache" / "dl-course")))
    env.pop("NBGRADER_EXECUTION", None)
    cmd = ["jupyter", "lab", "--no-browser", "--ServerApp.ip=127.0.0.1", f"--ServerApp.port={port}",
           f"--ServerApp.token={token}", "--allow-root", f"--ServerApp.root_dir={root}",
           f"--LabApp.workspaces_dir={tmp / 'workspaces'}", "--expose-app-in-browser"]
    log = open(tmp / "server.log", "w")
    proc = subprocess.Popen(cmd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{base}/api/status?token={token}", timeout=5):
                break
        except OSError:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError("JupyterLab did not start:\n" + (tmp / "server.log").read_text()[-3000:])
            time.sleep(0.3)
    yield {"base": base, "token": token, "root": root}
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
    log.close()


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=ARGS)
        yield browser
        browser.close()


@pytest.fixture
def page(browser, request):
    context = browser.new_context(viewport={"width": 1400, "height": 1300})
    page = context.new_page()
    page.set_default_timeout(60_000)
    page.console_errors = []
    page.on("console", lambda msg: msg.type == "error" and page.console_errors.append(msg.text))
    yield page
    failed = getattr(request.node, "rep_call", None)
    if failed is not None and failed.failed:
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / f"failed-{request.node.name}.png"), full_page=True)
    context.close()


KERNEL_IDLE = """() => {
  const w = window.jupyterapp && window.jupyterapp.shell.currentWidget;
  const k = w && w.sessionContext && w.sessionContext.session && w.sessionContext.session.kernel;
  return !!k && k.status === 'idle';
}"""


def open_notebook(page, lab, name: str):
    """Open ``name`` (a path under the course copy) in a fresh workspace and wait for its kernel."""
    page.goto(f"{lab['base']}/lab/tree/{name}?reset&token={lab['token']}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    page.wait_for_function(KERNEL_IDLE, timeout=90_000)


def copy_notebook(lab, chapter: str, new: str) -> str:
    shutil.copy(lab["root"] / chapter / f"{chapter}.ipynb", lab["root"] / chapter / new)
    return f"{chapter}/{new}"


def run_all(page, timeout_s: float = 150):
    page.evaluate("window.jupyterapp.commands.execute('notebook:run-all-cells')")
    page.wait_for_function("""() => {
      const w = window.jupyterapp.shell.currentWidget;
      const cells = w.content.widgets.filter(c => c.model.type === 'code');
      const k = w.sessionContext.session.kernel;
      return k.status === 'idle' && cells.every(c => c.model.executionCount !== null);
    }""", timeout=timeout_s * 1000, polling=500)


def save(page):
    page.evaluate("window.jupyterapp.commands.execute('docmanager:save')")
    page.wait_for_function("() => !window.jupyterapp.shell.currentWidget.context.model.dirty")


def test_release_notebook_runs_all_in_the_browser(page, lab):
    name = copy_notebook(lab, CHAPTER, "run-all.ipynb")
    open_notebook(page, lab, name)
    start = time.perf_counter()
    run_all(page)
    print(f"Run All took {time.perf_counter() - start:.1f} s in the browser")
    save(page)
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    explorer = page.locator(".jp-CodeCell", has_text="activation_explorer()").first
    explorer.scroll_into_view_if_needed()
    page.evaluate("document.querySelector('.jp-WindowedPanel-outer, .jp-Notebook').scrollBy(0, -250)")
    page.screenshot(path=str(ARTIFACTS / f"{CHAPTER}-after-run-all.png"))
    # markdown is rendered, figures and a widget are on the page
    assert page.locator(".jp-RenderedMarkdown h1").first.inner_text().startswith("Chapter 2")
    assert page.locator(".jp-RenderedMarkdown .MathJax, .jp-RenderedMarkdown mjx-container").count() > 0
    assert page.locator(".jp-OutputArea-output img[src^='data:image/png']").count() >= 3
    assert page.locator(".jupyter-widgets").count() > 0
    # and, in the saved notebook, only exercise cells failed, each with the friendly message
    nb = nbformat.read(lab["root"] / name, as_version=4)
    for i, cell in enumerate(nb.cells):
        if cell.cell_type != "code":
            continue
        assert cell.execution_count is not None, f"cell {i} did not run: Run All stopped early"
        errors = [o for o in cell.outputs if o.output_type == "error"]
        if nbgrader_meta(cell).get("grade"):
            assert errors and "not written yet" in errors[0]["evalue"], f"test cell {i}: {errors}"
        else:
            assert not errors, f"cell {i} failed outside the exercises: {errors}"


def test_widget_reacts_to_a_slider(page, lab):
    name = copy_notebook(lab, CHAPTER, "widget.ipynb")
    open_notebook(page, lab, name)
    cell = page.locator(".jp-CodeCell", has_text="activation_explorer()").first
    cell.scroll_into_view_if_needed()
    setup = page.locator(".jp-CodeCell").first
    setup.click()
    page.keyboard.press("Shift+Enter")  # the setup cell (imports, mode)
    page.wait_for_function(KERNEL_IDLE)
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Shift+Enter")
    widget = cell.locator(".jupyter-widgets .widget-hslider").first
    widget.wait_for()
    image = cell.locator(".widget-output img[src^='data:image/png']").first
    image.wait_for()
    before = image.get_attribute("src")
    handle = cell.locator(".noUi-handle, .ui-slider-handle, [role=slider]").first
    handle.focus()
    for _ in range(6):
        page.keyboard.press("ArrowRight")
    page.wait_for_function("(before) => { const img = [...document.querySelectorAll(\".widget-output img\")]"
                           ".find(i => i.src.startsWith('data:image/png')); return img && img.src !== before; }",
                           arg=before)
    assert image.get_attribute("src") != before


def _type_into(page, cell, code: str):
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+a")
    page.keyboard.press("Delete")
    page.keyboard.insert_text(code)  # inserted as is: no auto-indent or auto-closing brackets


def _run(page, cell):
    """Run one cell and wait until its prompt shows a new execution count."""
    prompt = cell.locator(".jp-InputPrompt").first
    before = prompt.inner_text()
    cell.locator(".jp-InputArea-editor").click()
    page.keyboard.press("Control+Enter")
    prompt_handle = prompt.element_handle()
    page.wait_for_function("([el, before]) => el.innerText !== before && !el.innerText.includes('*')",
                           arg=[prompt_handle, before])
    page.wait_for_function(KERNEL_IDLE)


def test_self_check_passes_then_names_the_mistake(page, lab):
    name = copy_notebook(lab, CHAPTER, "self-check.ipynb")
    open_notebook(page, lab, name)
    setup = page.locator(".jp-CodeCell").first
    _run(page, setup)
    solution = page.locator(".jp-CodeCell", has_text="def relu(x):").first
    test = page.locator(".jp-CodeCell", has_text="check.relu(relu, relu_grad)").first
    right = ("def relu(x):\n    return torch.where(x > 0, x, torch.zeros_like(x))\n\n\n"
             "def relu_grad(x):\n    return (x > 0).to(x.dtype)\n")
    _type_into(page, solution, right)
    _run(page, solution)
    _run(page, test)
    assert "\u2714 relu and relu_grad" in test.locator(".jp-OutputArea").inner_text()
    _type_into(page, solution, right.replace("(x > 0).to(x.dtype)", "(x >= 0).to(x.dtype)"))
    _run(page, solution)
    _run(page, test)
    text = test.locator(".jp-OutputArea").inner_text()
    assert "CheckFailed" in text and "relu'(0) = 0" in text, text


def test_nbgrader_extension_loads_for_the_instructor(page, lab):
    page.goto(f"{lab['base']}/lab?reset&token={lab['token']}")
    page.wait_for_selector(".jp-LabShell")
    page.wait_for_function("() => window.jupyterapp && window.jupyterapp.commands.hasCommand('nbgrader:open-assignment-list')")
    page.evaluate("window.jupyterapp.commands.execute('nbgrader:open-assignment-list')")
    page.wait_for_selector("text=Released assignments", timeout=60_000)
    nbgrader_errors = [e for e in page.console_errors if "nbgrader" in e.lower()]
    assert not nbgrader_errors, nbgrader_errors

