"""A real browser: JupyterLab on 127.0.0.1, notebook 02 opened in headless Chromium (Playwright
driving Debian's /usr/bin/chromium), all cells run, the explorer widget and its plotly figure
render and follow a K-slider move. A screenshot goes to figures/."""
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def lab(tmp_path, notebook_world):
    import papermill

    import jupytext

    work = tmp_path / "lab"
    work.mkdir()
    # notebook 02 with its parameters pointed at the tiny world (papermill injects them, runs nothing)
    papermill.execute_notebook(jupytext.read(ROOT / "notebooks" / "02_derivation.py"), str(work / "02_derivation.ipynb"),
                               parameters={"data_root": str(notebook_world), "train_epochs": 1, "image_size": 64,
                                           "run_dir": str(work / "run")}, prepare_only=True, kernel_name="python3")
    port = _free_port()
    env = {**os.environ, "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
           "JUPYTERLAB_WORKSPACES_DIR": str(tmp_path / "workspaces")}
    args = [sys.executable, "-m", "jupyterlab", "--no-browser", f"--port={port}", "--ip=127.0.0.1",
            "--ServerApp.token=", "--ServerApp.password=", f"--ServerApp.root_dir={work}"]
    if os.geteuid() == 0:
        args.append("--allow-root")
    server = subprocess.Popen(args, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            urllib.request.urlopen(f"{url}/api/status", timeout=1)
            break
        except OSError:
            time.sleep(0.5)
    else:
        server.kill()
        pytest.fail("JupyterLab did not start")
    yield url
    server.terminate()
    server.wait(timeout=30)


def test_notebook_02_explorer_in_chromium(lab, tmp_path):
    lab_dir = tmp_path
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{lab}/lab/tree/02_derivation.ipynb?reset")
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        # wait until the kernel is connected and idle, then run all cells from the Run menu
        page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
        page.wait_for_function("() => document.body.textContent.includes('Python 3 (ipykernel) | Idle')", timeout=120_000)
        page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
        page.click("div.lm-Menu-itemLabel:text-is('Run All Cells')")
        deadline = time.time() + 900
        while not page.locator(".widget-slider").count():
            failure = page.locator("[data-mime-type='application/vnd.jupyter.stderr']")
            tracebacks = [failure.nth(i).inner_text() for i in range(failure.count())]
            tracebacks = [t for t in tracebacks if "Traceback" in t or "Error" in t]
            if tracebacks or time.time() > deadline:
                shot = Path(lab_dir) / "failure.png"
                page.screenshot(path=str(shot))
                pytest.fail(f"the explorer did not render (screenshot {shot}): {tracebacks[:1]}")
            time.sleep(2)
        plot = page.wait_for_selector(".js-plotly-plot", timeout=300_000)
        plot.scroll_into_view_if_needed()
        title = page.locator(".js-plotly-plot .gtitle")
        title.wait_for(timeout=60_000)
        assert "K=5" in title.text_content()
        assert page.locator(".js-plotly-plot .bars .point").count() == 10  # 5 distances + 5 weights
        handle = page.locator(".widget-slider .noUi-handle").first
        handle.focus()
        handle.press("ArrowLeft")
        page.wait_for_function("() => document.querySelector('.js-plotly-plot .gtitle').textContent.includes('K=4')",
                               timeout=30_000)
        assert page.locator(".js-plotly-plot .bars .point").count() == 8
        (ROOT / "figures").mkdir(exist_ok=True)
        page.screenshot(path=str(ROOT / "figures" / "browser_02_derivation.png"), full_page=False)
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert not any("Error" in errors.nth(i).inner_text() for i in range(errors.count()))
        browser.close()
