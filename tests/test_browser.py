"""The notebooks as a user meets them: JupyterLab in a real headless Chromium (``make test-browser``).

Starts JupyterLab on localhost, opens notebook 05 (compression) with its CI parameters in
Chromium through Selenium, runs every cell as a user would (Run > Run All Cells), and checks
what the user sees: no error output, the figures rendered as images, and the compression
explorer alive -- moving its first slider one step changes its table. Screenshots go to
``cache/screenshots/`` (git-ignored).

Needs Chromium and its driver (Debian: ``chromium chromium-driver``) and Selenium (PyPI); the
test is skipped, saying which is missing, when they are not there, and it is left out of
``make test`` (marker ``browser``): ``make test-browser`` installs them and runs it.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import time

import pytest

from lcc_utils import runs
from lcc_utils.paths import project_root

pytestmark = [pytest.mark.browser, pytest.mark.integration]

ROOT = project_root()
SCREENSHOTS = ROOT / "cache" / "screenshots"
CHROMIUM = next((p for p in map(shutil.which, ("chromium", "chromium-browser", "google-chrome")) if p), None)
CHROMEDRIVER = shutil.which("chromedriver")


def _ci_params(stem: str) -> dict:
    return json.loads((ROOT / "tests" / "notebook_params" / f"{stem}.json").read_text())


@pytest.fixture
def browser():
    """Headless Chromium driven by Selenium (skipped, naming what is missing)."""
    webdriver = pytest.importorskip("selenium.webdriver", reason="selenium is not installed (make test-browser)")
    from selenium.webdriver.chrome.service import Service

    if not CHROMIUM or not CHROMEDRIVER:
        pytest.skip("no Chromium / chromedriver on PATH (Debian: apt-get install chromium chromium-driver)")
    opts = webdriver.ChromeOptions()
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(arg)
    opts.binary_location = CHROMIUM
    driver = webdriver.Chrome(service=Service(CHROMEDRIVER), options=opts)
    driver.set_script_timeout(600)
    yield driver
    driver.quit()


@pytest.fixture
def lab(tmp_path, shared_data, monkeypatch):
    """JupyterLab on a free localhost port, serving a folder with notebook 05 under CI parameters.

    The upstream training run (04, CI parameters) is made first, into the test's runs folder,
    which the server's kernels inherit (``LCC_RUNS_DIR``) with the real data root.
    """
    import papermill as pm

    monkeypatch.setenv("LCC_DATA_DIR", str(shared_data))
    runs.execute_notebook(runs.notebook_path("04_train"), _ci_params("04_train"))
    served = tmp_path / "lab"
    served.mkdir()
    # the user's copy: notebook 05 with the CI parameters injected (papermill --prepare-only)
    pm.execute_notebook(str(ROOT / "notebooks" / "05_compression.ipynb"), str(served / "05_compression.ipynb"),
                        parameters=_ci_params("05_compression"), prepare_only=True, progress_bar=False)
    # an executed copy as committed, to open as a reader would
    shutil.copy(ROOT / "runs" / "data" / "eurosat-0-5a716511" / "01_data.ipynb", served / "executed_01_data.ipynb")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    token = secrets.token_hex(16)
    cmd = [sys.executable, "-m", "jupyterlab", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           f"--IdentityProvider.token={token}", f"--ServerApp.root_dir={served}",
           "--LabApp.expose_app_in_browser=True", "--LabApp.news_url=", "--ServerApp.open_browser=False"]
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        cmd.append("--allow-root")
    log = (tmp_path / "lab.log").open("w")
    server = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, cwd=served,
                              env={**os.environ, "JUPYTER_CONFIG_DIR": str(tmp_path / "jupyter-config")})
    url = f"http://127.0.0.1:{port}/lab?token={token}"
    deadline = time.monotonic() + 120
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"JupyterLab did not start:\n{(tmp_path / 'lab.log').read_text()[-3000:]}")
            time.sleep(1)
    yield url, served
    server.terminate()
    server.wait(timeout=30)
    log.close()


_OPEN_AND_RUN = """
const [path, done] = [arguments[0], arguments[arguments.length - 1]];
const app = window.jupyterapp;
app.restored
  .then(() => app.commands.execute('docmanager:open', {path, factory: 'Notebook'}))
  .then(async (panel) => {
    await panel.context.ready;
    await panel.sessionContext.ready;
    await app.commands.execute('notebook:run-all-cells');
    done('started');
  })
  .catch((e) => done('error: ' + e));
"""

_OPEN_EXECUTED = """
const [path, done] = [arguments[0], arguments[arguments.length - 1]];
const app = window.jupyterapp;
app.restored
  .then(() => app.commands.execute('docmanager:open', {path, factory: 'Notebook', kernel: {name: 'lcc'}}))
  .then(async (panel) => {
    await panel.context.ready;
    await new Promise((r) => setTimeout(r, 5000));
    const images = panel.content.widgets.filter((c) => c.model.type === 'code').reduce((n, c) => {
      for (let k = 0; k < c.model.outputs.length; k++) n += 'image/png' in c.model.outputs.get(k).data ? 1 : 0;
      return n;
    }, 0);
    done({dirty: panel.context.model.dirty, images});
    await panel.context.sessionContext.shutdown();
    panel.dispose();
  })
  .catch((e) => done('error: ' + e));
"""

_STATE = """
const panel = window.jupyterapp.shell.currentWidget;
const cells = panel.content.widgets.filter((c) => c.model.type === 'code');
const status = panel.sessionContext.session ? panel.sessionContext.session.kernel.status : 'none';
const errors = [];
for (const c of cells) {
  for (let k = 0; k < c.model.outputs.length; k++) {
    const o = c.model.outputs.get(k).toJSON();
    if (o.output_type === 'error') errors.push(o.ename + ': ' + o.evalue);
  }
}
return {pending: cells.filter((c) => c.model.executionCount === null).length, status, errors};
"""

# JupyterLab draws only the cells near the viewport: scroll each cell with an output of the
# given MIME type (only cell ``only`` when not null) into view, wait, and return the index of
# every such cell with what is drawn there.
_SCROLL_TO_OUTPUTS = """
const [mime, only, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
const nb = window.jupyterapp.shell.currentWidget.content;
(async () => {
  const found = [];
  for (const [i, c] of nb.widgets.entries()) {
    if (c.model.type !== 'code' || (only !== null && i !== only)) continue;
    let has = false;
    for (let k = 0; k < c.model.outputs.length; k++) has = has || mime in c.model.outputs.get(k).data;
    if (!has) continue;
    await nb.scrollToCell(c, 'center');
    await new Promise((r) => setTimeout(r, 1500));
    const imgs = Array.from(c.node.querySelectorAll('.jp-RenderedImage img'));
    found.push({cell: i, drawn: imgs.filter((im) => im.complete && im.naturalWidth > 0).length,
                sliders: c.node.querySelectorAll('.widget-slider .noUi-handle').length});
  }
  return found;
})().then(done, (e) => done('error: ' + e));
"""

_TABLE = """
const t = window.jupyterapp.shell.currentWidget.node.querySelectorAll('.widget-html table');
return t.length ? t[t.length - 1].innerText : null;
"""


def test_notebook_05_runs_in_jupyterlab_shows_its_figures_and_the_explorer_responds(lab, browser):
    from selenium.webdriver.common.by import By
    from selenium.webdriver.common.keys import Keys

    url, served = lab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    browser.get(url)
    deadline = time.monotonic() + 180
    while not browser.execute_script("return !!window.jupyterapp"):
        assert time.monotonic() < deadline, "JupyterLab's page did not load"
        time.sleep(1)
    # a committed executed notebook opens as it was saved: its figures there, nothing marked modified
    opened = browser.execute_async_script(_OPEN_EXECUTED, "executed_01_data.ipynb")
    assert isinstance(opened, dict), opened
    assert opened["images"] >= 3 and not opened["dirty"], f"the executed 01 notebook as opened: {opened}"

    assert browser.execute_async_script(_OPEN_AND_RUN, "05_compression.ipynb") == "started"

    deadline = time.monotonic() + 1200
    while True:
        state = browser.execute_script(_STATE)
        assert not state["errors"], "a cell failed in JupyterLab:\n" + "\n".join(state["errors"])
        if state["pending"] == 0 and state["status"] == "idle":
            break
        assert time.monotonic() < deadline, f"notebook 05 did not finish in JupyterLab: {state}"
        time.sleep(2)
    time.sleep(2)  # let the last outputs and widgets render
    figures = browser.execute_async_script(_SCROLL_TO_OUTPUTS, "image/png", None)
    assert isinstance(figures, list) and figures, f"no cell of notebook 05 has a figure output: {figures}"
    undrawn = [f["cell"] for f in figures if not f["drawn"]]
    assert not undrawn, f"figure outputs of cells {undrawn} did not render as images in JupyterLab"
    browser.execute_async_script(_SCROLL_TO_OUTPUTS, "image/png", figures[0]["cell"])
    browser.save_screenshot(str(SCREENSHOTS / "05_compression_figure.png"))

    # the explorer: its first slider, one step to the right, changes the table it shows
    explorers = browser.execute_async_script(_SCROLL_TO_OUTPUTS, "application/vnd.jupyter.widget-view+json", None)
    assert explorers and explorers[-1]["sliders"], f"the compression explorer's sliders did not render: {explorers}"
    handles = browser.find_elements(By.CSS_SELECTOR, ".widget-slider .noUi-handle")
    before = browser.execute_script(_TABLE)
    assert before, "the compression explorer shows no table"
    handles[0].click()
    handles[0].send_keys(Keys.ARROW_RIGHT)
    deadline = time.monotonic() + 60
    while (after := browser.execute_script(_TABLE)) == before:
        assert time.monotonic() < deadline, "moving the explorer's slider did not change its table"
        time.sleep(1)
    browser.save_screenshot(str(SCREENSHOTS / "05_compression_explorer_moved.png"))
    assert after and after != before
