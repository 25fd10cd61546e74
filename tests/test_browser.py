"""The notebooks in a real browser: JupyterLab on 127.0.0.1 driven by Playwright in Debian's Chromium.

Runs 02 and 04 with Run All Cells, checks that every widget displays, drags the explorer's crop slider and sees its
picture change, saves, stops the kernels, reopens both notebooks without a kernel and checks what a saved notebook
shows: the finished training bar, the explorer's last pictures, no "Error displaying widget".
Screenshots go to outputs/browser-test/ at the repository root.
"""

import json
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import nbformat
import pytest

from conftest import ROOT, drag_crop_slider

CHROMIUM = Path("/usr/lib/chromium/chromium")  # Debian's binary; /usr/bin/chromium is a wrapper script
SCREENSHOTS = ROOT / "outputs" / "browser-test"
WIDGET_SETTINGS = Path(sys.prefix) / "share" / "jupyter" / "lab" / "settings" / "overrides.json"
TINY = {"n_resblocks": 2, "n_feats": 8, "patch_size": 24, "test_every": 3, "epochs": 2, "batch_size": 2}


def _requirements():
    if not CHROMIUM.is_file():
        return f"no Chromium at {CHROMIUM} (apt-get install chromium; .ci/run does it as root)"
    for module in ("playwright", "jupyterlab"):
        try:
            __import__(module)
        except ImportError:
            return f"{module} is not installed (pip install -e '.[test]')"
    if not WIDGET_SETTINGS.is_file():
        return f"{WIDGET_SETTINGS} missing: scripts/_venv.sh installs it (bash scripts/test.sh)"
    return None


pytestmark = [pytest.mark.slow, pytest.mark.skipif(_requirements() is not None, reason=str(_requirements()))]


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    """A JupyterLab server on a working folder holding copies of 02 (tiny training values) and 04."""
    work = tmp_path_factory.mktemp("lab")
    for name in ("02_train.ipynb", "04_visual_comparison.ipynb"):
        shutil.copy(ROOT / "notebooks" / name, work / name)
    nb = nbformat.read(work / "02_train.ipynb", as_version=4)
    params = next(c for c in nb.cells if "parameters" in c.metadata.get("tags", []))
    params.source += "\n" + "\n".join(f"{k} = {v!r}" for k, v in TINY.items())
    nbformat.write(nb, work / "02_train.ipynb")
    port = _free_port()
    server = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "jupyterlab",
            "--no-browser",
            "--allow-root",
            "--ip",
            "127.0.0.1",
            "--port",
            str(port),
            "--ServerApp.token=",
            "--ServerApp.password=",
            f"--ServerApp.root_dir={work}",
        ],
        cwd=work,
        stdout=subprocess.DEVNULL,
        stderr=open(work / "lab.log", "w"),
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(120):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            time.sleep(0.5)
    yield base, work
    server.terminate()
    server.wait(timeout=30)


@pytest.fixture(scope="module")
def browser():
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(
            executable_path=str(CHROMIUM),
            headless=True,
            args=["--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage"],
        )
        yield chromium
        chromium.close()


def _open(page, base, name):
    page.goto(f"{base}/lab/tree/{name}?reset")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=120_000)
    time.sleep(2)
    for answer in page.locator(".jp-toast-button:has-text('No')").all():  # the "Jupyter news" question
        answer.click()


def _run_all(page, base, name, timeout=600):
    _open(page, base, name)
    page.wait_for_selector(".jp-Notebook-ExecutionIndicator[data-status='idle']", timeout=120_000)
    page.click(".jp-Notebook")
    page.keyboard.press("Escape")
    page.click("#jp-MainMenu >> text=Run")
    page.click(".lm-Menu-content >> text=Run All Cells")
    time.sleep(2)
    deadline = time.time() + timeout
    while time.time() < deadline:
        busy = page.evaluate(
            "() => [...document.querySelectorAll('.jp-InputPrompt')].some(e => e.textContent.includes('*'))"
        )
        if not busy:
            return
        time.sleep(1)
    raise AssertionError(f"{name}: still running after {timeout} s")


def _explorer_pictures(page):
    """The explorer's pictures: the images of the one code cell holding sliders (it comes right after the setup)."""
    return page.evaluate(
        "() => { const cells = [...document.querySelectorAll('.jp-Notebook .jp-CodeCell')];"
        " const explorer = cells.find(c => c.querySelector('.widget-slider'));"
        " return explorer ? [...explorer.querySelectorAll('.jp-OutputArea-output img')].map(i => i.src) : []; }"
    )


def _texts(page):
    """The text of every output; JupyterLab renders only the cells in view, so scroll through the notebook."""
    seen = []
    for step in range(200):
        seen += page.locator(".jp-OutputArea-output").all_inner_texts()
        at_end = page.evaluate(
            "() => { const p = document.querySelector('.jp-WindowedPanel-outer');"
            " const end = p.scrollTop + p.clientHeight >= p.scrollHeight - 2;"
            " p.scrollTop += p.clientHeight * 0.8; return end; }"
        )
        if at_end:
            break
        time.sleep(0.3)
    return "\n".join(seen)


def _save(page):
    page.keyboard.press("Control+s")
    time.sleep(2)


def _stop_kernels(context, base):
    xsrf = next((c["value"] for c in context.cookies() if c["name"] == "_xsrf"), "")
    for kernel in context.request.get(f"{base}/api/kernels").json():
        assert context.request.delete(f"{base}/api/kernels/{kernel['id']}", headers={"X-XSRFToken": xsrf}).ok


def test_notebooks_run_interact_save_and_reopen_in_a_real_browser(lab, browser):
    base, work = lab
    SCREENSHOTS.mkdir(parents=True, exist_ok=True)
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    page = context.new_page()

    _run_all(page, base, "02_train.ipynb")
    total = TINY["epochs"] * TINY["test_every"]
    assert f"{total}/{total} it" in _texts(page) and "Error displaying widget" not in _texts(page)
    assert "PSNR" in _texts(page)
    page.screenshot(path=str(SCREENSHOTS / "02_after_run.png"))
    _save(page)

    _run_all(page, base, "04_visual_comparison.ipynb")
    assert page.locator("text=Error displaying widget").count() == 0
    before = _explorer_pictures(page)
    assert len(before) == 2, "the explorer shows its comparison and its wipe"
    after = drag_crop_slider(page, lambda: _explorer_pictures(page), before)
    assert after[0] != before[0] and after[1] != before[1], "dragging the crop slider redraws both pictures"
    page.screenshot(path=str(SCREENSHOTS / "04_after_drag.png"))
    _save(page)
    page.close()

    _stop_kernels(context, base)
    saved = json.loads((work / "04_visual_comparison.ipynb").read_text())
    assert "widgets" in saved["metadata"], "widget state saved with the notebook"
    page = context.new_page()
    _open(page, base, "04_visual_comparison.ipynb")
    assert "Error displaying widget" not in _texts(page)  # (scrolls to the end)
    explorer = page.locator(".jp-Notebook .jp-CodeCell", has=page.locator(".widget-slider"))
    explorer.scroll_into_view_if_needed()
    time.sleep(3)
    page.screenshot(path=str(SCREENSHOTS / "04_reopened_without_kernel.png"))
    assert page.locator("text=Error displaying widget").count() == 0
    assert explorer.locator(".widget-slider").count() >= 4  # saved state
    assert _explorer_pictures(page) == after, "the reopened notebook shows the explorer's last pictures"
    _open(page, base, "02_train.ipynb")
    page.screenshot(path=str(SCREENSHOTS / "02_reopened_without_kernel.png"))
    assert f"{total}/{total} it" in _texts(page) and "Error displaying widget" not in _texts(page)
    context.close()
    print(f"screenshots in {SCREENSHOTS}")
