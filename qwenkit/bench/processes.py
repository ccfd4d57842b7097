"""Benchmark server processes on 127.0.0.1, each started, polled until ready and stopped on
exit: llama.cpp's `llama-server` (NativeServer), `python -m llama_cpp.server` (StockServer) and
the kit's own server (kit_server)."""
from __future__ import annotations

import contextlib
import http.client
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from qwenkit.bench.results import BenchError
from qwenkit.bench.tools import tool_env, tool_path
from qwenkit.config import RunConfig

__all__ = ["NativeServer", "StockServer", "free_port", "kit_server", "start_llama_server"]


def free_port() -> int:
    """A TCP port free on 127.0.0.1 now (the system's choice)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _ServerRun:
    """A benchmark server process on 127.0.0.1: started, polled until `ready_path` answers 200,
    stopped on exit; its output goes to a temporary log file."""
    name = "server"
    ready_path = "/health"
    port: int
    base_url: str
    proc: subprocess.Popen
    argv: list[str]            # the command line it was started with

    def _launch(self, args: Sequence[str], env: dict, log_prefix: str, ready_timeout: float) -> None:
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.argv = list(args)
        self.log = tempfile.NamedTemporaryFile(prefix=log_prefix, suffix=".log", delete=False)  # noqa: SIM115 - the process writes it
        self.proc = subprocess.Popen(list(args), stdout=self.log, stderr=subprocess.STDOUT, env=env,
                                     stdin=subprocess.DEVNULL)
        t0 = time.monotonic()
        while True:
            if self.proc.poll() is not None:
                raise BenchError(f"{self.name} exited ({self.proc.returncode}): {self.log_tail()}",
                                 "the log lines above say why (a port in use, a model that does not load)")
            try:
                c = http.client.HTTPConnection("127.0.0.1", self.port, timeout=2)
                c.request("GET", self.ready_path)
                ok = c.getresponse().status == 200
                c.close()
                if ok:
                    return
            except OSError:
                pass
            if time.monotonic() - t0 > ready_timeout:
                self.stop()
                raise BenchError(f"{self.name} did not become ready in {ready_timeout:.0f} s: {self.log_tail()}",
                                 "give it a longer ready_timeout (a large model loads slowly), or read its log")
            time.sleep(0.2)

    def headers(self) -> dict[str, str]:
        """Request headers a client needs (none: these servers run without a key), as
        qwenkit.server.ServerProcess.headers(), so every benchmark server is asked alike."""
        return {}

    def log_tail(self, n: int = 2000) -> str:
        try:
            return Path(self.log.name).read_text(errors="replace")[-n:]
        except OSError:
            return ""

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)

    def __enter__(self):
        return self

    def __exit__(self, *exc) -> None:
        self.stop()


class NativeServer(_ServerRun):
    """llama.cpp's `llama-server` for a RunConfig, on 127.0.0.1 (one slot, no web UI)."""
    name = "llama-server"

    def __init__(self, cfg: RunConfig, bin_dir: Path | None = None, port: int | None = None,
                 extra_args: Sequence[str] = (), env: dict | None = None, ready_timeout: float = 300):
        exe = tool_path("llama-server", bin_dir)
        self.port = port or free_port()
        # extra_args come last: a flag given twice, llama.cpp's argument parser takes the later one
        args = [str(exe), "-m", cfg.model, "--host", "127.0.0.1", "--port", str(self.port),
                *cfg.llama_server_args(), *extra_args]
        e = tool_env(exe.parent)
        e.update(env or {})
        self._launch(args, e, "llama-server-", ready_timeout)


def start_llama_server(cfg: RunConfig, **kw) -> NativeServer:
    return NativeServer(cfg, **kw)


class StockServer(_ServerRun):
    """`python -m llama_cpp.server` with llama-cpp-python's own defaults plus the given
    arguments (a reference point: what a user of the plain package gets)."""
    name = "llama_cpp.server"
    ready_path = "/v1/models"

    def __init__(self, model: str, args: Sequence[str] = (), port: int | None = None,
                 ready_timeout: float = 300, env: dict | None = None):
        self.port = port or free_port()
        e = {k: v for k, v in os.environ.items() if k.upper() not in ("HOST", "PORT", "API_KEY", "MODEL")}
        e.update(env or {})
        self._launch([sys.executable, "-m", "llama_cpp.server", "--model", model,
                      "--host", "127.0.0.1", "--port", str(self.port), *args], e, "llama_cpp-server-", ready_timeout)


@contextlib.contextmanager
def kit_server(cfg: RunConfig, env: dict[str, str] | None = None, port: int | str = "any",
               **start_kw: Any) -> Iterator[Any]:
    """The kit's server (qwenkit.server.start) for cfg. env: variables set while the process
    starts (only those the server passes on, e.g. GGML_*, CUDA_*). port: "any" takes the first
    free one from 8000 up; give free_port() when two servers start at the same time."""
    from qwenkit import server
    old = {k: os.environ.get(k) for k in (env or {})}
    os.environ.update(env or {})
    try:
        srv = server.start(cfg, port=port, access_log=False, quiet=True, **start_kw)
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    try:
        yield srv
    finally:
        srv.stop()
