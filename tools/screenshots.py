"""Run every notebook in JupyterLab in Debian's headless Chromium and save a screenshot of each.

Not part of CI (the browser test, tests/test_browser.py, is). For the record a person would
see: each notebook is copied to a private folder (the committed ones never get outputs),
opened in JupyterLab on 127.0.0.1, run with Run > Run All Cells, and photographed whole once
the kernel is idle again. A CJK font must be installed so that Japanese text renders
(Debian: fonts-noto-cjk); the script refuses to run without one. Prints each notebook's
wall time in the browser and whether any cell ended in an error.

    .venv/bin/python tools/screenshots.py                 # all notebooks -> benchmarks/screenshots/
    .venv/bin/python tools/screenshots.py 02 06 --out /tmp/shots

Needs: `apt-get install -y chromium fonts-noto-cjk`, the pip package playwright (its client
only: no browser is downloaded, `playwright install` is never run).
"""
from __future__ import annotations

import argparse
import json
import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
CHROMIUM = os.environ.get("QWENKIT_CHROMIUM", "/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync",
                 "--disable-default-apps", "--disable-extensions", "--mute-audio"]
WIDTH = 1280
MAX_HEIGHT = 16000        # Chromium's largest texture: taller notebooks are cut (the script says so)


def need(ok: bool, problem: str, fix: str) -> None:
    if not ok:
        sys.exit(f"error: {problem}\n  fix: {fix}")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_lab(root: Path, home: Path) -> tuple[subprocess.Popen, str, str, Path]:
    """JupyterLab on 127.0.0.1 serving `root`, with private settings: no news toast, and every
    cell rendered (windowing off) so that one screenshot holds the whole notebook."""
    settings = home / "settings"
    for rel, body in {
        "@jupyterlab/apputils-extension/notification.jupyterlab-settings": {"fetchNews": "false",
                                                                             "checkForUpdates": False},
        "@jupyterlab/notebook-extension/tracker.jupyterlab-settings": {"windowingMode": "none"},
    }.items():
        p = settings / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(json.dumps(body))
    for d in ("config", "runtime", "workspaces"):
        (home / d).mkdir(parents=True, exist_ok=True)
    port, token = free_port(), secrets.token_hex(16)
    env = dict(os.environ, JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(settings), JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"),
               PYTHONPATH=str(REPO))
    log = home / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1",
           f"--port={port}", "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        need(proc.poll() is None, f"JupyterLab exited ({proc.returncode})", f"see {log}")
        try:
            with urllib.request.urlopen(f"{url}/api/status?token={token}", timeout=3) as r:
                if r.status == 200:
                    return proc, url, token, log
        except OSError:
            time.sleep(0.5)
    proc.terminate()
    sys.exit(f"error: JupyterLab did not answer within 120 s\n  fix: see {log}")


def shoot(page, url: str, token: str, name: str, out: Path, timeout_s: float, first: bool = False) -> dict:
    """Open one notebook, run all cells, wait for the kernel, screenshot it whole."""
    from playwright.sync_api import expect
    page.set_viewport_size({"width": WIDTH, "height": 1000})
    # a workspace of its own (reset): only this notebook is open, no tab of the previous one
    page.goto(f"{url}/lab/workspaces/shot-{Path(name).stem}/tree/{name}?reset&token={token}")
    page.wait_for_selector(".jp-Notebook .jp-Cell", timeout=90_000)
    # the file browser only takes width from the notebook: hide it
    tab = page.locator(".jp-SideBar.jp-mod-left .lm-TabBar-tab.lm-mod-current")
    if tab.count():
        tab.first.click()              # clicking the open tab collapses the sidebar
    page.wait_for_timeout(300)
    status = page.locator("#jp-main-statusbar")
    expect(status).to_contain_text("Idle", timeout=90_000)
    t0 = time.monotonic()
    page.click("div.lm-MenuBar-itemLabel:text-is('Run')")
    page.click("li.lm-Menu-item:has-text('Run All Cells')")
    page.wait_for_timeout(1500)
    deadline = t0 + timeout_s
    while time.monotonic() < deadline:   # every code cell has a number and none is running
        state = page.evaluate("""() => {
            const nb = [...document.querySelectorAll('.jp-NotebookPanel')]
                .find(e => !e.classList.contains('lm-mod-hidden'));
            const p = [...nb.querySelectorAll('.jp-CodeCell .jp-InputPrompt')].map(e => e.textContent.trim());
            return {running: p.filter(t => t.includes('*')).length,
                    empty: p.filter(t => t === '' || t === '[ ]:').length, n: p.length};
        }""")
        if state["running"] == 0 and state["empty"] == 0 and "Idle" in status.inner_text():
            break
        page.wait_for_timeout(1000)
    took = time.monotonic() - t0
    errors = page.locator(".jp-OutputArea-output[data-mime-type='application/vnd.jupyter.stderr']").count()
    tracebacks = page.evaluate("() => [...document.querySelectorAll('.jp-OutputArea-output')]"
                               ".filter(e => e.textContent.includes('Traceback')).length")
    page.wait_for_timeout(800)       # let images and widgets paint
    height = page.evaluate("""() => {
        const nb = document.querySelector('.jp-NotebookPanel .jp-WindowedPanel-outer') ||
                   document.querySelector('.jp-NotebookPanel .jp-Notebook');
        return nb.scrollHeight + nb.getBoundingClientRect().top + 40;
    }""")
    cut = height > MAX_HEIGHT
    page.set_viewport_size({"width": WIDTH, "height": int(min(height, MAX_HEIGHT))})
    page.evaluate("""() => { for (const e of document.querySelectorAll('.jp-NotebookPanel .jp-WindowedPanel-outer, '
                             + '.jp-NotebookPanel .jp-Notebook')) { e.scrollTop = 0; } }""")
    page.wait_for_timeout(800)
    page.screenshot(path=str(out))
    return {"notebook": name, "seconds": round(took, 1), "finished": time.monotonic() < deadline,
            "cells": state["n"], "not_run": state["empty"], "stderr_outputs": errors, "tracebacks": tracebacks,
            "height": int(height), "cut": cut, "png": str(out)}


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("only", nargs="*", help="notebook number prefixes (default: all)")
    ap.add_argument("--out", default=str(REPO / "benchmarks" / "screenshots"))
    ap.add_argument("--timeout", type=float, default=900, help="seconds per notebook")
    args = ap.parse_args(argv)

    need(Path(CHROMIUM).exists(), f"no Chromium at {CHROMIUM}", "apt-get install -y chromium (or set QWENKIT_CHROMIUM)")
    fonts = subprocess.run(["fc-list", ":lang=ja"], capture_output=True, text=True, check=False).stdout
    need(bool(fonts.strip()), "no font with Japanese glyphs (fc-list :lang=ja is empty): Japanese would show as boxes",
         "apt-get install -y fonts-noto-cjk")
    try:
        from playwright.sync_api import sync_playwright
    except ImportError:
        need(False, "the pip package playwright is missing", "pip install -r requirements.txt")
    notebooks = sorted(p for p in (REPO / "notebooks").glob("[0-9][0-9]_*.ipynb")
                       if not args.only or any(p.name.startswith(o) for o in args.only))
    need(bool(notebooks), f"no notebook matches {args.only}", "give number prefixes such as 02 06")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="qwenkit-shots-"))
    root = work / "notebooks"
    root.mkdir()
    for p in notebooks:
        shutil.copy(p, root / p.name)
    proc, url, token, log = start_lab(root, work / "jhome")
    results = []
    try:
        with sync_playwright() as pw:
            ctx = pw.chromium.launch_persistent_context(str(work / "profile"), executable_path=CHROMIUM, headless=True,
                                                        args=CHROMIUM_ARGS, viewport={"width": WIDTH, "height": 1000})
            page = ctx.pages[0] if ctx.pages else ctx.new_page()
            page.set_default_timeout(60_000)
            first = True
            for p in notebooks:
                print(f"{p.name}: running ...", flush=True)
                r = shoot(page, url, token, p.name, out / (p.stem + ".png"), args.timeout, first)
                first = False
                results.append(r)
                print(f"  {r['seconds']} s, {r['cells']} code cells, tracebacks {r['tracebacks']}, "
                      f"{'finished' if r['finished'] else 'TIMED OUT'}"
                      f"{', cut at %d px' % MAX_HEIGHT if r['cut'] else ''}"
                      f" -> {r['png']}", flush=True)
                # stop this notebook's kernel before the next one (the machine may have 2 cores)
                page.evaluate("""async (token) => {
                    const r = await fetch('/api/sessions?token=' + token); const s = await r.json();
                    for (const x of s) { await fetch('/api/sessions/' + x.id + '?token=' + token, {method: 'DELETE'}); }
                }""", token)
            ctx.close()
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
    (out / "screenshots.json").write_text(json.dumps({"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                                                      "cpu_count": os.cpu_count(), "loadavg": os.getloadavg(),
                                                      "results": results}, indent=1) + "\n")
    bad = [r for r in results if r["tracebacks"] or not r["finished"]]
    print("all notebooks ran without a traceback" if not bad else f"problems: {[r['notebook'] for r in bad]}")
    shutil.rmtree(work, ignore_errors=True)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
