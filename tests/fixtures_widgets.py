"""Fixtures for the tuning panel tests: panels on the small default model (one thread, short
measurements, closed at teardown) and a JupyterLab server for the browser test."""
from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture
def widgets_panel(default_model, tmp_path):
    """make(model=None, **kw) -> TunePanel. One llama.cpp thread (the CI machine has 2 cores
    shared with other work; a second spinning thread only adds contention) and a short pp/tg
    measurement. Every panel made is closed (model freed) at teardown."""
    from qwenkit import widgets
    from qwenkit.config import RunConfig

    made = []

    def make(model=None, **kw):
        base = kw.pop("base", None) or RunConfig(model=str(model or default_model), n_threads=1)
        kw.setdefault("n_prompt", 16)
        kw.setdefault("n_gen", 4)
        kw.setdefault("save_path", tmp_path / "tuned.json")
        p = widgets.tune_panel(base=base, **kw)
        made.append(p)
        return p

    yield make
    for p in made:
        p.close()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait_http(url: str, proc: subprocess.Popen, log: Path, timeout: float) -> None:
    import urllib.error
    import urllib.request
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"JupyterLab exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(url, timeout=3) as r:
                if r.status == 200:
                    return
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.5)
    raise AssertionError(f"JupyterLab did not answer {url} within {timeout:.0f} s:\n{log.read_text()[-3000:]}")


@pytest.fixture
def widgets_jupyterlab(tmp_path):
    """JupyterLab on 127.0.0.1 (a free port, a random token, no browser opened) serving a copy
    of notebooks/06_tune.ipynb from tmp_path (so the committed notebook never gets outputs).
    Its config, data, runtime, settings and workspace folders are private to the test.
    Yields dict(url, token, root, log)."""
    import secrets
    root = tmp_path / "lab"
    root.mkdir()
    shutil.copy(REPO / "notebooks" / "06_tune.ipynb", root / "06_tune.ipynb")
    home = tmp_path / "jhome"
    for d in ("config", "runtime", "settings", "workspaces"):
        (home / d).mkdir(parents=True)
    # no "get notified about Jupyter news?" toast over the panel (nothing would be fetched anyway)
    note = home / "settings" / "@jupyterlab" / "apputils-extension" / "notification.jupyterlab-settings"
    note.parent.mkdir(parents=True)
    note.write_text('{"fetchNews": "false", "checkForUpdates": false}\n')
    port, token = _free_port(), secrets.token_hex(16)
    env = dict(os.environ)
    env.update(JUPYTER_CONFIG_DIR=str(home / "config"), JUPYTER_RUNTIME_DIR=str(home / "runtime"),
               JUPYTERLAB_SETTINGS_DIR=str(home / "settings"),
               JUPYTERLAB_WORKSPACES_DIR=str(home / "workspaces"), PYTHONPATH=str(REPO))
    log = tmp_path / "jupyterlab.log"
    cmd = [sys.executable, "-m", "jupyter", "lab", "--allow-root", "--no-browser", "--ip=127.0.0.1", f"--port={port}",
           "--ServerApp.port_retries=0", f"--IdentityProvider.token={token}",
           f"--ServerApp.root_dir={root}", "--LabApp.news_url=", "--LabApp.extension_manager=readonly",
           "--LabApp.check_for_updates_class=jupyterlab.NeverCheckForUpdate"]
    with open(log, "wb") as f:
        proc = subprocess.Popen(cmd, cwd=root, env=env, stdin=subprocess.DEVNULL, stdout=f,
                                stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        _wait_http(f"{url}/api/status?token={token}", proc, log, timeout=90)
        yield {"url": url, "token": token, "root": root, "log": log}
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
