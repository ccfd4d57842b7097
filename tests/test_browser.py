"""The tuning panel in a real browser: JupyterLab on 127.0.0.1, headless Chromium from Debian's
`chromium` package driven by Playwright's client (no browser is downloaded), notebook 06 run
top to bottom, the n_ctx slider moved with the keyboard, Relaunch clicked, and the new n_ctx
read back from the live model's status line. Saves a screenshot under tmp_path, and to
$QWENKIT_SCREENSHOT_DIR/06_tune.png when that variable is set.

Needs: `apt-get install -y chromium` (scripts/ci_system_deps.sh) and the pip package
`playwright` (never `playwright install`). Without them the test is skipped, except under CI
(CI set), where it fails and says what is missing."""
from __future__ import annotations

import contextlib
import os
import shutil
import time
from pathlib import Path
from typing import TYPE_CHECKING

import nbformat
import pytest

if TYPE_CHECKING:
    from playwright.sync_api import FloatRect

CHROMIUM = os.environ.get("QWENKIT_CHROMIUM", "/usr/bin/chromium")
# flags for this closed network: nothing in the background tries to reach the internet
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--mute-audio"]
# small, quick settings for the copy the browser runs (the 2-core CI machine is shared)
OVERRIDES = {"N_THREADS": 1, "N_PROMPT": 16, "N_GEN": 4, "SAVE_PATH": "tuned.json"}


def _need(what: str) -> None:
    msg = f"browser test needs {what}"
    if os.environ.get("CI"):
        pytest.fail(msg + " (CI installs it: scripts/ci_system_deps.sh, requirements.txt)")
    pytest.skip(msg)


def _inject_parameters(path: Path, **overrides) -> dict:
    """Insert an overrides cell after the `parameters` cell (papermill's convention, as
    tests/nbrun.py does); returns the notebook's parameters with the overrides applied."""
    from nbrun import parameters, parameters_cell_index
    nb = nbformat.read(str(path), as_version=4)
    params = {**parameters(nb), **overrides}
    src = "# injected by the browser test\n" + "\n".join(f"{k} = {v!r}" for k, v in overrides.items())
    nb.cells.insert(parameters_cell_index(nb) + 1, nbformat.v4.new_code_cell(src))
    nbformat.write(nb, str(path))
    return params


@pytest.mark.browser
@pytest.mark.slow
def test_tune_panel_in_jupyterlab(tmp_path, widgets_jupyterlab):
    if not Path(CHROMIUM).exists():
        _need(f"Debian's chromium at {CHROMIUM} (apt-get install -y chromium)")
    try:
        from playwright.sync_api import expect, sync_playwright
    except ImportError:
        _need("the pip package playwright")
    info = widgets_jupyterlab
    shot = tmp_path / "06_tune.png"
    t0 = time.monotonic()
    if True:  # the server reads the notebook when the browser opens it: edit the copy first
        params = _inject_parameters(info["root"] / "06_tune.ipynb", **OVERRIDES)
        first_ctx = params["N_CTX_NEXT"]
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(
                str(tmp_path / "chromium-profile"), executable_path=CHROMIUM, headless=True,
                args=CHROMIUM_ARGS, viewport={"width": 1400, "height": 2000})
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(60_000)
            step = "open the notebook"
            try:
                page.goto(f"{info['url']}/lab/tree/06_tune.ipynb?token={info['token']}")
                page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
                step = "wait for the kernel"
                expect(page.locator("#jp-main-statusbar")).to_contain_text("Idle", timeout=90_000)
                step = "Run > Run All Cells"
                page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
                page.click("li.lm-Menu-item:has-text('Run All Cells')")
                panel = page.locator(".qwenkit-tune-panel")
                status = panel.locator(".qwenkit-status")
                step = f"the notebook's own relaunches (live n_ctx {first_ctx})"
                expect(status).to_contain_text(f"n_ctx {first_ctx}", timeout=120_000)
                step = "the last cell (Save)"
                expect(panel.locator(".qwenkit-save")).to_contain_text("saved", timeout=60_000)
                expect(panel).to_have_count(1)   # one panel: no cell displays it a second time
                assert "K q8_0" in status.inner_text()

                step = "move the n_ctx slider one stop right"
                want = first_ctx * 2
                readout = panel.locator(".qwenkit-n-ctx .widget-readout")
                handle = panel.locator(".qwenkit-n-ctx .noUi-handle")
                handle.scroll_into_view_if_needed()
                handle.focus()
                page.keyboard.press("ArrowRight")
                if readout.inner_text().replace(",", "") != str(want):   # keyboard ignored: drag it
                    track = panel.locator(".qwenkit-n-ctx .noUi-target").bounding_box()
                    assert track is not None, "the n_ctx slider's track is not laid out"
                    stops = 6  # 256 .. 8192 on the default model: 5 gaps
                    x, y = _center(handle.bounding_box())
                    page.mouse.move(x, y)
                    page.mouse.down()
                    page.mouse.move(x + track["width"] / (stops - 1), y, steps=8)
                    page.mouse.up()
                expect(readout).to_have_text(f"{want:,}")
                # the plan follows the slider before any relaunch; the live model does not
                expect(panel.locator(".qwenkit-plan")).to_contain_text(f"{want} cells", timeout=30_000)
                assert f"n_ctx {first_ctx}" in status.inner_text()

                step = f"click Relaunch and see the live n_ctx {want}"
                panel.locator(".qwenkit-relaunch").click()
                expect(status).to_contain_text(f"n_ctx {want}", timeout=90_000)
                expect(panel.locator(".qwenkit-result")).to_contain_text("llama.cpp", timeout=30_000)
                expect(panel.locator(".qwenkit-history")).to_contain_text(str(want), timeout=30_000)
                panel.scroll_into_view_if_needed()
                page.wait_for_timeout(500)   # let the plot image paint
                panel.screenshot(path=str(shot))
            except Exception as e:  # noqa: BLE001 - add what the browser showed, then fail
                fail = tmp_path / "failure.png"
                with contextlib.suppress(Exception):
                    page.screenshot(path=str(fail))
                log = info["log"].read_text(errors="replace")[-3000:]
                pytest.fail(f"browser test failed at step '{step}' after {time.monotonic() - t0:.0f} s: "
                            f"{type(e).__name__}: {str(e)[:1500]}\nscreenshot: {fail}\nJupyterLab log tail:\n{log}")
            finally:
                ctx.close()
    assert shot.stat().st_size > 10_000
    out_dir = os.environ.get("QWENKIT_SCREENSHOT_DIR")
    if out_dir:
        Path(out_dir).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(out_dir) / "06_tune.png")


def _center(box: FloatRect | None) -> tuple[float, float]:
    assert box is not None, "the element is not laid out (no bounding box)"
    return box["x"] + box["width"] / 2, box["y"] + box["height"] / 2
