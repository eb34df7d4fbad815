"""A real browser, as a user meets the README's explore step: JupyterLab on 127.0.0.1, the
committed notebook 02 opened unmodified in headless Chromium (Playwright driving Debian's
/usr/bin/chromium), Run All, Run All again (it must reuse what the first run trained), then the
explorer's K slider moved and its figure seen to follow. A screenshot goes to the test's temporary
folder, so the suite leaves the checkout as it found it, or to AVS_SCREENSHOT_DIR where that is set
(`AVS_SCREENSHOT_DIR=figures` renews the committed figures/browser_02_derivation.png)."""
import os
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from conftest import free_port

CHROMIUM = "/usr/bin/chromium"
ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(), reason="Debian's chromium is not installed (make test installs it)")


@pytest.fixture
def lab(tmp_path, notebook_world):
    """JupyterLab over a checkout-shaped folder: the committed notebooks/02_derivation.ipynb copied
    unmodified, the project's pyproject.toml (how the workbench finds its root) and
    data/default_world pointing at the tiny test world. The kernel starts in notebooks/, as it does
    for a user who opens the notebook from the README."""
    import shutil

    work = tmp_path / "checkout"
    (work / "notebooks").mkdir(parents=True)
    (work / "data").mkdir()
    shutil.copy(ROOT / "notebooks" / "02_derivation.ipynb", work / "notebooks")
    shutil.copy(ROOT / "pyproject.toml", work)
    shutil.copytree(ROOT / "configs", work / "configs")
    # the world's visual pretraining, 600 batches by default, takes minutes: 4 exercise the same path
    with open(work / "configs" / "tiny_world.yaml", "a") as config:
        config.write("visual_pretrain_steps: 4\n")
    (work / "data" / "default_world").symlink_to(notebook_world, target_is_directory=True)
    # no autosave: the test's run must not depend on when the lab saves (jupytext would write the pair)
    docmanager = tmp_path / "settings" / "@jupyterlab" / "docmanager-extension"
    docmanager.mkdir(parents=True)
    (docmanager / "plugin.jupyterlab-settings").write_text('{"autosave": false}')
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k != "AVS_HOME"}, "JUPYTERLAB_SETTINGS_DIR": str(tmp_path / "settings"),
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
    yield url, work
    server.terminate()
    server.wait(timeout=30)


def _run_all_and_wait_for_explorer(page, shots: Path):
    """Run All from the Run menu; wait until the explorer's slider and figure are drawn, failing fast
    with the first traceback."""
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    page.wait_for_function("() => document.body.textContent.includes('Python 3 (ipykernel) | Idle')", timeout=120_000)
    page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
    page.click("div.lm-Menu-itemLabel:text-is('Run All Cells')")
    time.sleep(2)
    deadline = time.time() + 900
    while True:
        failure = page.locator("[data-mime-type='application/vnd.jupyter.stderr']")
        tracebacks = [failure.nth(i).inner_text() for i in range(failure.count())]
        tracebacks = [t for t in tracebacks if "Traceback" in t or "Error" in t]
        if tracebacks or time.time() > deadline:
            page.screenshot(path=str(shots / "failure.png"))
            pytest.fail(f"Run All failed (screenshot {shots / 'failure.png'}): {tracebacks[:1]}")
        busy = page.locator(".jp-Notebook-ExecutionIndicator[data-status='busy']").count()
        if not busy and page.locator(".widget-slider").count() and page.locator(".js-plotly-plot .gtitle").count():
            return
        time.sleep(2)


def test_notebook_02_run_all_twice_in_chromium(lab, tmp_path):
    url, work = lab
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        page.goto(f"{url}/lab/tree/notebooks/02_derivation.ipynb?reset")
        page.wait_for_selector(".jp-Notebook", timeout=60_000)
        _run_all_and_wait_for_explorer(page, tmp_path)
        title = page.locator(".js-plotly-plot .gtitle").first
        assert "K=5" in title.text_content()
        # outputs land under the checkout's runs/ and the model in the data's model store, never in notebooks/
        assert (work / "runs" / "notebooks" / "02_derivation" / "metrics.json").exists()
        models = sorted((work / "data" / "default_world" / "cache" / "models").glob("ddeseg-*/best.pt"),
                        key=lambda p: p.stat().st_mtime_ns)
        assert models, "notebook 02 trained no model into the data's model store"
        # nothing but the notebook (and, if the lab saved it, its jupytext pair) lives in notebooks/
        assert set(q.name for q in (work / "notebooks").iterdir() if not q.name.startswith(".")) <= {
            "02_derivation.ipynb", "02_derivation.py"}
        best = models[-1].stat().st_mtime_ns

        # Run All a second time: it reuses the trained model instead of failing or retraining
        _run_all_and_wait_for_explorer(page, tmp_path)
        assert page.get_by_text("reusing the model trained in").count() >= 1
        assert models[-1].stat().st_mtime_ns == best

        # the widgets answer: a K-slider move redraws the figure for K=4
        plot = page.locator(".js-plotly-plot").first
        plot.scroll_into_view_if_needed()
        handle = page.locator(".widget-slider .noUi-handle").first
        handle.focus()
        handle.press("ArrowLeft")
        page.wait_for_function("() => [...document.querySelectorAll('.js-plotly-plot .gtitle')]"
                               ".some(t => t.textContent.includes('K=4'))", timeout=30_000)
        shots = Path(os.environ.get("AVS_SCREENSHOT_DIR") or tmp_path)
        shots.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(shots / "browser_02_derivation.png"), full_page=False)
        assert (shots / "browser_02_derivation.png").stat().st_size > 0
        errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']")
        assert not any("Error" in errors.nth(i).inner_text() for i in range(errors.count()))
        browser.close()
