"""Start, wait for, log and stop the kit's OpenAI-compatible server (qwenkit.serving) in a child process.

    from qwenkit import server
    srv = server.start(cfg)                     # waits until GET /v1/models answers
    client = srv.client()                       # openai.OpenAI with the key, a timeout, <= 1 retry
    ...
    srv.stop()                                  # or `with server.start(cfg) as srv:`

Safe by default (docs/design.md): 127.0.0.1 only; the child (qwenkit.serve_entry) accepts only
localhost Host headers and no foreign Origins, so no key is needed on loopback and the recipe's
client (`OpenAI(base_url=..., api_key="anything")`) works as written. Any other address needs
`allow_remote=True` and an API key; requests without it get 401. Settings and the key reach the
child through a clean environment, never its command line.

A running server is a child process: a crash in llama.cpp (CUDA out of memory aborts the
process) cannot take the notebook kernel with it.
"""
from __future__ import annotations

import atexit
import contextlib
import errno
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import weakref
from pathlib import Path
from typing import Any

from qwenkit.config import RunConfig
from qwenkit.errors import ServerError

__all__ = ["DEFAULT_PORT", "ServerProcess", "background", "child_environment", "new_api_key", "port_in_use",
           "save_background", "start", "state_path", "stop_background"]

DEFAULT_PORT = 8000
# Variables the child may inherit (everything else, HOST/PORT/API_KEY/N_CTX/... included, is
# dropped: llama_cpp.server lets the environment override its flags).
_ENV_KEEP = {"PATH", "HOME", "USER", "LOGNAME", "LANG", "LANGUAGE", "TZ", "TMPDIR", "TEMP", "TMP",
             "PYTHONPATH", "VIRTUAL_ENV", "LD_LIBRARY_PATH", "SYSTEMROOT", "XDG_CACHE_HOME",
             "QWENKIT_CACHE", "OMP_NUM_THREADS"}
_ENV_KEEP_PREFIXES = ("LC_", "CUDA_", "NVIDIA_", "GGML_", "HIP_", "ROCR_", "HSA_", "VK_", "ONEAPI_")

_live: "weakref.WeakSet[ServerProcess]" = weakref.WeakSet()


def new_api_key() -> str:
    """A random key for a server reachable from the network."""
    return "qk-" + secrets.token_urlsafe(24)


def child_environment(spec: dict[str, Any]) -> dict[str, str]:
    """The child's whole environment: a short allow-list of the parent's plus the settings."""
    env = {k: v for k, v in os.environ.items()
           if k in _ENV_KEEP or k.startswith(_ENV_KEEP_PREFIXES)}
    env["PYTHONUNBUFFERED"] = "1"
    pkg_parent = str(Path(__file__).resolve().parent.parent)  # the child imports this very qwenkit
    env["PYTHONPATH"] = os.pathsep.join([pkg_parent] + ([env["PYTHONPATH"]] if env.get("PYTHONPATH") else []))
    env["QWENKIT_SERVE"] = json.dumps(spec)
    return env


def _is_loopback(host: str) -> bool:
    from qwenkit.serve_entry import is_loopback
    return is_loopback(host)


def _url_host(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def port_in_use(host: str, port: int) -> bool:
    """True when something listens on host:port (checked by binding, as the server will)."""
    h = "127.0.0.1" if host == "localhost" else host.strip("[]")
    fam = socket.AF_INET6 if ":" in h else socket.AF_INET
    with socket.socket(fam, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind((h, port))
            s.listen(1)
        except OSError as e:
            return e.errno == errno.EADDRINUSE
    return False


def _read_json(path: Path) -> dict:
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError):
        return {}


def _tail(path: Path | None, n: int = 40) -> str:
    if not path:
        return ""
    try:
        with open(path, "rb") as f:
            f.seek(0, os.SEEK_END)
            size = f.tell()
            f.seek(max(0, size - 64 * 1024))
            lines = f.read().decode("utf-8", "replace").splitlines()
    except OSError:
        return ""
    return "\n".join(lines[-n:])


class ServerProcess:
    """A running server child (qwenkit.serve_entry). Stop it with .stop(), a `with` block, or interpreter exit."""

    def __init__(self, proc: subprocess.Popen | None, *, host: str, port: int, api_key: str | None,
                 alias: str, log_path: Path, status_path: Path, cfg: RunConfig | None = None,
                 pid: int | None = None, owned: bool = True):
        self._proc = proc
        self.host, self.port = host, port
        self.api_key = api_key
        self.alias = alias
        self.log_path = Path(log_path)
        self.status_path = Path(status_path)
        self.cfg = cfg
        self.pid = proc.pid if proc is not None else int(pid or 0)
        self.owned = owned  # stopped at interpreter exit
        self._lock = threading.Lock()
        if owned:
            _live.add(self)

    # ---- addresses ----
    @property
    def root_url(self) -> str:
        """The URL a client on this machine uses (a wildcard bind is reached through loopback)."""
        host = {"0.0.0.0": "127.0.0.1", "::": "::1", "": "127.0.0.1"}.get(self.host, self.host)  # noqa: S104
        return f"http://{_url_host(host)}:{self.port}"

    @property
    def base_url(self) -> str:
        return self.root_url + "/v1"

    @property
    def n_ctx(self) -> int | None:
        """The context size the server really has (llama.cpp may round the one asked for)."""
        n = self.status().get("n_ctx")
        return int(n) if n else (self.cfg.n_ctx if self.cfg else None)

    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}

    def client(self, timeout: float = 300.0, max_retries: int = 1, **kw):
        """An `openai.OpenAI` client for this server: its key, an explicit timeout, at most one
        retry (the default 2 retries resubmit long generations to a one-at-a-time server)."""
        import openai
        return openai.OpenAI(base_url=self.base_url, api_key=self.api_key or "not-needed",
                             timeout=timeout, max_retries=min(max_retries, 1), **kw)

    # ---- state ----
    def status(self) -> dict:
        return _read_json(self.status_path)

    def alive(self) -> bool:
        if self._proc is not None:
            return self._proc.poll() is None
        return _pid_is_server(self.pid)

    def returncode(self) -> int | None:
        return self._proc.poll() if self._proc is not None else None

    def log_tail(self, n: int = 40) -> str:
        return _tail(self.log_path, n)

    def check(self) -> None:
        """Raise ServerError when the server process has died (killed, out of memory, crashed),
        saying how it ended, with the log's last lines; return quietly while it runs. The
        notebook that started it keeps working either way (the server is a child process)."""
        if self.alive():
            return
        rc = self.returncode()
        if rc is not None and rc < 0:
            try:
                name = signal.Signals(-rc).name
            except ValueError:
                name = f"signal {-rc}"
            how = f"was killed by {name}"
        else:
            how = f"exited with code {rc}" if rc is not None else "is no longer running"
        fix = "start it again: server.start(cfg)"
        if rc == -signal.SIGKILL:
            fix = ("SIGKILL often means the system ran out of memory (use a smaller n_ctx or model); "
                   + fix)
        _live.discard(self)
        raise _error(self, f"the server process {self.pid} ({self.base_url}) {how}"
                     f"\n--- last lines of {self.log_path} ---\n{self.log_tail(15)}", fix)

    def ping(self, timeout: float = 2.0) -> bool:
        """True when GET /v1/models answers 200 (the model has loaded)."""
        import httpx
        try:
            r = httpx.get(self.base_url + "/models", headers=self.headers(), timeout=timeout)
            return r.status_code == 200
        except httpx.HTTPError:
            return False

    def health(self, timeout: float = 2.0) -> dict:
        """GET /health: slots busy/total, queue, sequences per decode ({} when it does not answer)."""
        import httpx
        try:
            return httpx.get(self.root_url + "/health", headers=self.headers(), timeout=timeout).json()
        except (httpx.HTTPError, ValueError):
            return {}

    # ---- stop ----
    def stop(self, timeout: float = 10.0) -> None:
        """Terminate, wait, kill if needed; idempotent."""
        with self._lock:
            if self._proc is not None:
                if self._proc.poll() is None:
                    try:
                        self._proc.terminate()
                        self._proc.wait(timeout)
                    except subprocess.TimeoutExpired:
                        self._proc.kill()
                        self._proc.wait(5)
                    except ProcessLookupError:
                        pass
            elif self.pid and _pid_is_server(self.pid):
                _terminate_pid(self.pid, timeout)
            _live.discard(self)

    def __enter__(self) -> "ServerProcess":
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = "running" if self.alive() else "stopped"
        return f"<ServerProcess {self.alias} at {self.base_url} pid={self.pid} {state}>"

    def describe(self) -> str:
        """What a person needs to use it: the URL, the model name, the key if there is one."""
        lines = [f"server: {self.base_url}  (model name: {self.alias}, pid {self.pid})",
                 f"log:    {self.log_path}"]
        if not _is_loopback(self.host):
            lines.insert(1, f"listening on {self.host}: reachable from other machines, with the key")
        if self.api_key:
            lines.append(f"key:    {self.api_key}")
        return "\n".join(lines)


def _pid_is_server(pid: int) -> bool:
    """True when pid is alive and runs qwenkit.serve_entry (a reused pid is not ours)."""
    try:
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return False
    try:
        st = Path(f"/proc/{pid}/stat").read_text()
        if st.rsplit(")", 1)[1].split()[0] == "Z":
            return False
    except (OSError, IndexError):
        pass
    return b"qwenkit.serve_entry" in cmd


def _terminate_pid(pid: int, timeout: float) -> None:
    try:
        os.kill(pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if not _pid_is_server(pid):
            return
        time.sleep(0.1)
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        pass


@atexit.register
def _stop_all() -> None:
    for srv in list(_live):
        with contextlib.suppress(Exception):  # best effort at exit
            srv.stop(timeout=5)


def start(cfg: RunConfig, host: str = "127.0.0.1", port: int | str = DEFAULT_PORT,
          api_key: str | None = None, allow_remote: bool = False, log_path: str | os.PathLike | None = None,
          ready_timeout: float = 120, *, background: bool = False, allowed_origins: list[str] | None = None,
          access_log: bool = True, stream_flush_ms: float | None = None,
          queue_limit: int | None = None, quiet: bool = False) -> ServerProcess:
    """Start the server for `cfg` and wait until GET /v1/models answers.

    host: 127.0.0.1 by default; anything else needs allow_remote=True and an api_key.
    port: a number, or "any" (the first free port from 8000 up). A taken port is reported
        before the model loads.
    log_path: the server's log (llama.cpp's messages included); default in the kit's cache folder.
    background: the server outlives this Python process (`qwenkit serve --status/--stop`).
    queue_limit: requests that may wait for a slot (default 4 x cfg.parallel); more get 503.
    stream_flush_ms: > 0 groups a stream's events into at most one socket write per this many
        milliseconds (every token is still its own event; the first goes out at once). None:
        serve_entry.stream_flush_default() decides (25 when the model computes on the CPU with
        threads on every core, else 0).
    quiet: do not print the URL (and key) when it is ready.
    Raises ServerError with the log's last lines when the process dies or never answers;
    nothing is left running then.
    """
    if not isinstance(cfg, RunConfig):
        raise ServerError(f"start() needs a RunConfig, got {type(cfg).__name__}",
                          "build one: RunConfig(model=...)")
    if not Path(cfg.model).is_file():
        raise ServerError(f"model file {cfg.model} does not exist",
                          "check the path, or use qwenkit.models.default_model_path()")
    if not _is_loopback(host):
        if not allow_remote:
            raise ServerError(f"host {host!r} would expose the model to the network",
                              "keep host='127.0.0.1', or pass allow_remote=True with an api_key")
        if not api_key:
            raise ServerError("a server reachable from the network needs an API key",
                              "pass api_key=server.new_api_key() (clients send it as Bearer token)")
    if port != "any":
        try:
            port = int(port)
        except (TypeError, ValueError):
            raise ServerError(f"port {port!r} is not a number", "use e.g. 8000, or 'any'") from None
        if not 0 < port < 65536:
            raise ServerError(f"port {port} is out of range", "use 1024-65535, or 'any'")
        if port_in_use(host, port):  # fast answer; the child's own bind is the real check
            raise ServerError(f"port {port} on {host} is already in use (found before loading the model)",
                              "stop the other server (`python -m qwenkit serve --stop`), pick another "
                              "port, or pass port='any'")

    cfg = cfg.replace(model=str(Path(cfg.model).resolve()))  # the child runs in another folder
    from qwenkit.models import cache_dir

    run_dir = cache_dir() / "server"
    run_dir.mkdir(parents=True, exist_ok=True)
    stamp = time.strftime("%Y%m%d-%H%M%S")
    if log_path is None:
        log_path = run_dir / f"server-{stamp}-{os.getpid()}-{secrets.token_hex(2)}.log"
    log_path = Path(log_path)
    log_path.parent.mkdir(parents=True, exist_ok=True)
    fd, status_name = tempfile.mkstemp(prefix="status-", suffix=".json", dir=run_dir)
    os.close(fd)
    status_path = Path(status_name)
    spec = {
        "config": cfg.to_dict(), "host": host, "port": port, "api_key": api_key,
        "allow_remote": bool(allow_remote), "status_path": str(status_path),
        "parent_pid": None if background else os.getpid(),
        "allowed_origins": list(allowed_origins or []), "access_log": access_log, "queue_limit": queue_limit,
        "stream_flush_ms": None if stream_flush_ms is None else float(stream_flush_ms),
    }
    with open(log_path, "ab") as log:  # the child keeps its own copy of the descriptor
        log.write(f"\n=== qwenkit server start {time.strftime('%Y-%m-%d %H:%M:%S')}: {cfg.summary()}\n".encode())
        log.flush()
        proc = subprocess.Popen(
            [sys.executable, "-m", "qwenkit.serve_entry"], env=child_environment(spec),
            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
            start_new_session=True,  # Ctrl-C in a terminal reaches the parent, which stops it cleanly
            cwd=str(run_dir),
        )
    srv = ServerProcess(proc, host=host, port=port if isinstance(port, int) else 0, api_key=api_key,
                        alias=cfg.alias, log_path=log_path, status_path=status_path, cfg=cfg,
                        owned=not background)
    try:
        _wait_ready(srv, ready_timeout)
    except BaseException:
        srv.stop(timeout=5)
        raise
    if not quiet:
        key = f", key {api_key}" if api_key else ""
        print(f"server ready: {srv.base_url} (model {srv.alias}{key}); log {srv.log_path}")
    return srv


def _error(srv: ServerProcess, problem: str, fix: str) -> ServerError:
    e = ServerError(problem, fix)
    e.pid, e.log_path = srv.pid, srv.log_path  # for a caller that wants to look further
    return e


def _wait_ready(srv: ServerProcess, timeout: float) -> None:
    t0 = time.monotonic()
    phase = ""
    while True:
        st = srv.status()
        phase = st.get("phase", phase)
        if st.get("port") and not srv.port:
            srv.port = int(st["port"])
        if st.get("host"):
            bound = st["host"]
            if not _is_loopback(bound) and _is_loopback(srv.host):
                raise ServerError(f"the server listens on {bound}, not on {srv.host}",
                                  "report this: the child bound an address it was not asked for")
        rc = srv.returncode()
        if phase == "error" or rc is not None:
            # let the child finish writing
            proc = srv._proc
            if rc is None and proc is not None:
                try:
                    proc.wait(5)
                except subprocess.TimeoutExpired:
                    pass
            problem = st.get("problem") or f"the server process exited with code {srv.returncode()}"
            fix = st.get("fix") or "read the log below"
            raise _error(srv, f"{problem}\n--- last lines of {srv.log_path} ---\n{srv.log_tail(25)}", fix)
        if phase == "ready" and srv.port and srv.ping(timeout=2.0):
            return
        if time.monotonic() - t0 > timeout:
            raise _error(
                srv, f"the server did not answer within {timeout:.0f} s (phase: {phase or 'starting'})"
                f"\n--- last lines of {srv.log_path} ---\n{srv.log_tail(25)}",
                "a large model on a slow disk can need longer: raise ready_timeout; otherwise read the log")
        time.sleep(0.2 if phase != "ready" else 0.1)


# ---- a server in the background (`qwenkit serve --background / --status / --stop`) -----------
def state_path() -> Path:
    from qwenkit.models import cache_dir
    return cache_dir() / "server" / "background.json"


def save_background(srv: ServerProcess) -> Path:
    p = state_path()
    data = {"pid": srv.pid, "host": srv.host, "port": srv.port, "alias": srv.alias,
            "api_key": srv.api_key, "log_path": str(srv.log_path), "status_path": str(srv.status_path),
            "started": time.time()}
    tmp = p.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)  # it may hold the key
    with os.fdopen(fd, "w") as f:
        json.dump(data, f, indent=2)
    tmp.replace(p)
    return p


def background() -> ServerProcess | None:
    """The server started with background=True and recorded, if it still runs."""
    data = _read_json(state_path())
    if not data or not _pid_is_server(int(data.get("pid", 0))):
        return None
    return ServerProcess(None, host=data["host"], port=int(data["port"]), api_key=data.get("api_key"),
                         alias=data.get("alias", ""), log_path=Path(data["log_path"]),
                         status_path=Path(data.get("status_path", "")), pid=int(data["pid"]), owned=False)


def stop_background(timeout: float = 10.0) -> bool:
    """Stop the recorded background server; False when none was running."""
    srv = background()
    try:
        if srv is None:
            return False
        srv.stop(timeout)
        return True
    finally:
        try:
            state_path().unlink()
        except FileNotFoundError:
            pass
