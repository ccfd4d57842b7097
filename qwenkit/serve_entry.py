"""The kit's server entry point: `python -m qwenkit.serve_entry`, run by `qwenkit.server` in a
child process. It serves the kit's own app (`qwenkit.serving`: OpenAI routes over a
continuous-batching scheduler with N sequence slots) and adds the process around it:

- Settings arrive in one environment variable (`QWENKIT_SERVE`, JSON), never on the command
  line; nothing else in the environment changes a setting (HOST, PORT, API_KEY are ignored).
- The port is bound BEFORE the model loads, so "address in use" is reported in a second, not
  after a full load; with port "any" the next free port is taken. The address really bound is
  checked (loopback unless remote access was asked for) and reported to the parent. The app
  answers from then on: /health says 503 "loading" until the model is ready.
- Only localhost `Host` headers (DNS rebinding) and no foreign `Origin`s are accepted. When a
  key is set, EVERY route (the docs and /health too) needs `Authorization: Bearer <key>`.
- The child exits when the process that started it goes away (no orphan servers), unless it
  was started in the background on purpose.

Progress goes to a small JSON status file the parent polls (`phase`: starting, bound, loading,
ready, error), and everything printed (llama.cpp's own log included) goes to the log file.
"""
from __future__ import annotations

import errno
import hmac
import ipaddress
import json
import os
import socket
import sys
import threading
import time
import traceback
from typing import Any, NoReturn

__all__ = ["ANY_PORT_SPAN", "ANY_PORT_START", "ENV_VAR", "EXIT_BAD_SETTINGS", "EXIT_LOAD_FAILED", "EXIT_PORT_IN_USE",
           "Guard", "LOOPBACK_HOSTS", "Status", "bind_socket", "default_parallel", "is_loopback", "main",
           "stream_flush_default", "unified_default"]

ENV_VAR = "QWENKIT_SERVE"
ANY_PORT_START = 8000
ANY_PORT_SPAN = 100
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}

# exit codes the parent understands
EXIT_BAD_SETTINGS = 2
EXIT_PORT_IN_USE = 3
EXIT_LOAD_FAILED = 4



# ---- status file -----------------------------------------------------------------------------
class Status:
    def __init__(self, path: str | None):
        self.path = path
        self.data: dict[str, Any] = {"pid": os.getpid()}
        self._lock = threading.Lock()  # the loader thread and the main thread both write

    def write(self, phase: str, **fields: Any) -> None:
        with self._lock:
            self._write(phase, **fields)

    def _write(self, phase: str, **fields: Any) -> None:
        self.data.update(fields, phase=phase, time=time.time())
        print(f"[qwenkit.serve_entry] {phase}: " + ", ".join(f"{k}={v}" for k, v in fields.items()),
              file=sys.stderr, flush=True)
        if not self.path:
            return
        tmp = self.path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(self.data, f)
        os.replace(tmp, self.path)

    def fail(self, code: int, problem: str, fix: str | None = None) -> NoReturn:
        self.write("error", problem=problem, fix=fix, exit_code=code)
        sys.exit(code)


# ---- addresses -------------------------------------------------------------------------------
def is_loopback(host: str) -> bool:
    h = host.strip("[]")
    if h == "localhost":
        return True
    try:
        return ipaddress.ip_address(h).is_loopback
    except ValueError:
        return False


def bind_socket(host: str, port: int | str) -> socket.socket:
    """Bind and listen before the model loads. Raises OSError(EADDRINUSE) for a taken port;
    with port 'any' tries ANY_PORT_START, +1, ... and returns the first free one."""
    if host == "localhost":
        host = "127.0.0.1"
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    candidates = range(ANY_PORT_START, ANY_PORT_START + ANY_PORT_SPAN) if port == "any" else [int(port)]
    last: OSError | None = None
    for p in candidates:
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # TIME_WAIT only; a listener still blocks
        if family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 1)
        try:
            sock.bind((host.strip("[]"), p))
            sock.listen(128)  # a second binder now fails even with SO_REUSEADDR
            sock.set_inheritable(True)
            return sock
        except OSError as e:
            sock.close()
            last = e
            if e.errno != errno.EADDRINUSE:
                raise
    raise last if last is not None else OSError(errno.EADDRINUSE, "no port to try")


# ---- request guard (pure ASGI, so streaming passes through untouched) --------------------------
def _header(scope, name: bytes) -> str | None:
    for k, v in scope.get("headers", []):
        if k == name:
            return v.decode("latin-1")
    return None


def _host_only(host_header: str) -> str:
    h = host_header.strip().lower()
    if h.startswith("["):
        return h[1:h.index("]")] if "]" in h else h
    return h.rsplit(":", 1)[0] if h.count(":") == 1 else h


def _origin_allowed(origin: str, extra: set[str]) -> bool:
    if origin in extra:
        return True
    from urllib.parse import urlsplit
    try:
        parts = urlsplit(origin)
    except ValueError:
        return False
    return parts.scheme in ("http", "https") and (parts.hostname or "") in LOOPBACK_HOSTS


class Guard:
    """Host / Origin / key checks before anything reaches the app's routes."""

    def __init__(self, app, *, api_key: str | None, remote: bool, allowed_origins: list[str]):
        self.app = app
        self.api_key = api_key
        self.remote = remote
        self.allowed_origins = set(allowed_origins or [])

    async def _deny(self, send, status: int, message: str, code: str) -> None:
        body = json.dumps({"error": {"message": message, "type": "invalid_request_error",
                                     "code": code}}).encode()
        headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
        if status == 401:
            headers.append((b"www-authenticate", b"Bearer"))
        await send({"type": "http.response.start", "status": status, "headers": headers})
        await send({"type": "http.response.body", "body": body})

    async def __call__(self, scope, receive, send):
        if scope["type"] not in ("http", "websocket"):
            return await self.app(scope, receive, send)
        host = _header(scope, b"host")
        if not self.remote and (host is None or _host_only(host) not in LOOPBACK_HOSTS):
            return await self._deny(send, 403, f"Host {host!r} is not allowed: this server answers "
                                    "only requests addressed to localhost", "forbidden_host")
        origin = _header(scope, b"origin")
        if origin is not None and origin != "null" and not _origin_allowed(origin, self.allowed_origins):
            return await self._deny(send, 403, f"Origin {origin!r} is not allowed", "forbidden_origin")
        if origin == "null":
            return await self._deny(send, 403, "Origin 'null' is not allowed", "forbidden_origin")
        if self.api_key is not None and scope.get("method") != "OPTIONS":
            auth = _header(scope, b"authorization") or ""
            scheme, _, token = auth.partition(" ")
            if scheme.lower() != "bearer" or not hmac.compare_digest(token.strip().encode(), self.api_key.encode()):
                return await self._deny(send, 401, "missing or wrong API key (send Authorization: "
                                        "Bearer <key>)", "invalid_api_key")
        return await self.app(scope, receive, send)

def stream_flush_default(cfg, gpu_offload: bool, cores: int) -> float:
    """How long a stream gathers tokens before one socket write, when the caller did not say.

    25 ms when the model computes on the CPU (a CPU-only build, or n_gpu_layers 0) with threads
    on every core: the event loop's per-write work then runs on a core the model needs.
    Measured on 2 cores (SmolLM2, uvloop + httptools, 16 interleaved rounds): 0.977 -> 1.006 of
    llama-server. Else 0 (every token written when it is made): on an H200, with the model on
    the GPU (1.124 vs 1.122) or with 11 layers' experts in RAM on 16 threads (1.054 vs 1.088,
    within noise), 25 ms gained nothing."""
    cpu_model = not gpu_offload or cfg.n_gpu_layers == 0
    return 25.0 if cpu_model and cfg.n_threads >= cores else 0.0


# ---- main ------------------------------------------------------------------------------------
def _watch_parent(parent_pid: int) -> None:
    def loop():
        while True:
            time.sleep(1.0)
            if os.getppid() != parent_pid:
                print("[qwenkit.serve_entry] the process that started this server is gone: exiting",
                      file=sys.stderr, flush=True)
                os._exit(0)
    threading.Thread(target=loop, name="qwenkit-parent-watch", daemon=True).start()


def default_parallel(cfg, gpu_offload: bool) -> int:
    """Slots when the config says 0 (auto): 1 when the model computes on the CPU (one
    sequence already takes every core); on a GPU, as many as the memory plan fits next to the
    model in the card's free memory, at most 8."""
    if not gpu_offload or cfg.n_gpu_layers == 0:
        return 1
    try:
        from qwenkit.plan import max_parallel
        return max(1, min(8, max_parallel(cfg)))
    except Exception as e:  # noqa: BLE001 - a plan that cannot be made: one slot is always safe
        print(f"[qwenkit.serve_entry] could not plan slots ({e}); serving 1", file=sys.stderr, flush=True)
        return 1


def unified_default() -> bool:
    """One shared KV pool on a GPU build (llama-server's advice for many slots); per-slot
    regions on a CPU build (see RunConfig.kv_unified: exact results there)."""
    from qwenkit.llama_api import C
    return bool(C.llama_supports_gpu_offload())


def _load(cfg, slots: int, queue_limit: int | None, state, status: Status) -> None:
    """On a thread while the app already answers (503 until ready)."""
    # QWENKIT_SERVE_LOAD_DELAY_S holds the load back: the test of the loading state uses it
    delay = float(os.environ.get("QWENKIT_SERVE_LOAD_DELAY_S") or 0)
    if delay > 0:
        time.sleep(min(delay, 60.0))
    try:
        from qwenkit.serving import Scheduler, ServedModel
        from qwenkit.units import MiB
        unified = cfg.kv_unified if cfg.kv_unified is not None else unified_default()
        model = ServedModel(cfg, slots, unified_kv=unified)
        cache_bytes = cfg.prompt_cache_bytes(gpu_build=unified_default())  # as the memory plan shows it
        cache_mib = cache_bytes // MiB
        sched = Scheduler(model, queue_limit=queue_limit, cache_bytes=cache_bytes, reuse=cache_bytes > 0)
    except BaseException as e:  # noqa: BLE001 - everything here is a load failure to report
        traceback.print_exc()
        fix = getattr(e, "fix", None) or ("check the path and that the file is complete (qwenkit.gguf_info), "
                                          "and that n_ctx x parallel / n_gpu_layers fit in memory; the log "
                                          "shows llama.cpp's reason")
        problem = getattr(e, "problem", None) or str(e)
        status.write("error", problem=f"the model did not load: {problem}", fix=fix, exit_code=EXIT_LOAD_FAILED)
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(EXIT_LOAD_FAILED)
    state.attach(model, sched)
    status.write("ready", n_ctx=model.n_ctx_slot, parallel=slots, kv_unified=unified, prompt_cache_mib=cache_mib,
                 queue_limit=sched.queue_limit, alias=state.alias, model_id=state.model_id, recurrent=model.recurrent)


def main() -> int:
    raw = os.environ.pop(ENV_VAR, None)
    status = Status(None)
    if not raw:
        status.fail(EXIT_BAD_SETTINGS, f"{ENV_VAR} is not set",
                    "start the server with qwenkit.server.start() or `python -m qwenkit serve`")
    spec = json.loads(raw)
    status = Status(spec.get("status_path"))
    status.write("starting")

    import qwenkit  # noqa: F401  (loads llama.cpp before numpy)
    from qwenkit.config import RunConfig

    cfg = RunConfig.from_dict(spec["config"])
    host, port = spec.get("host", "127.0.0.1"), spec.get("port", 8000)
    api_key, remote = spec.get("api_key"), bool(spec.get("allow_remote"))
    if not is_loopback(host) and not remote:
        status.fail(EXIT_BAD_SETTINGS, f"binding {host} exposes the model to the network",
                    "pass allow_remote=True and an api_key, or use 127.0.0.1")
    if remote and not api_key:
        status.fail(EXIT_BAD_SETTINGS, "a server reachable from the network needs an API key",
                    "pass api_key=... (server.new_api_key() makes one)")

    # 1. the port, before the model
    try:
        sock = bind_socket(host, port)
    except OSError as e:
        if e.errno == errno.EADDRINUSE:
            what = (f"no free port in {ANY_PORT_START}-{ANY_PORT_START + ANY_PORT_SPAN - 1}" if port == "any"
                    else f"port {port} on {host} is already in use")
            status.fail(EXIT_PORT_IN_USE, what,
                        "stop the other server (`python -m qwenkit serve --stop`), or use another port or port='any'")
        status.fail(EXIT_BAD_SETTINGS, f"cannot bind {host}:{port}: {e}", "check the host address")
    bound_host, bound_port = sock.getsockname()[:2]
    if not is_loopback(bound_host) and not remote:  # the address really bound, not the one asked for
        sock.close()
        status.fail(EXIT_BAD_SETTINGS, f"the server would listen on {bound_host}, not on loopback",
                    "use host='127.0.0.1'")
    status.write("bound", host=bound_host, port=bound_port)
    if spec.get("parent_pid"):
        _watch_parent(int(spec["parent_pid"]))

    # 2. the app (answers 503 "loading" until the model is attached)
    from qwenkit.llama_api import C
    from qwenkit.serving import AppState, BodyLimit, create_app

    gpu = bool(C.llama_supports_gpu_offload())
    flush = spec.get("stream_flush_ms")
    if flush is None:
        flush = stream_flush_default(cfg, gpu, os.cpu_count() or 1)
    slots = int(spec.get("parallel") or cfg.parallel or 0) or default_parallel(cfg, gpu)
    state = AppState(cfg.alias, stream_flush_ms=float(flush), api_key_required=api_key is not None)
    app = create_app(state)
    origins = list(spec.get("allowed_origins") or [])
    if origins:
        from fastapi.middleware.cors import CORSMiddleware
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_credentials=False,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    guarded = Guard(BodyLimit(app, state.max_body), api_key=api_key, remote=remote, allowed_origins=origins)

    # 3. serve on the socket bound in step 1
    import importlib.util

    import uvicorn

    # loop/http "auto": uvloop and httptools when installed (requirements.txt has them: on 2
    # cores they made streamed decode 0.965 -> 0.987 of llama-server), else asyncio and h11
    status.data.update(event_loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
                       http="httptools" if importlib.util.find_spec("httptools") else "h11")
    # the model loads on a thread while the port already answers (/health: 503 loading)
    status.write("loading", model=cfg.model, parallel=slots, stream_flush_ms=float(flush))
    threading.Thread(target=_load, args=(cfg, slots, spec.get("queue_limit"), state, status),
                     name="qwenkit-load", daemon=True).start()
    config = uvicorn.Config(guarded, log_level="info", timeout_graceful_shutdown=5, loop="auto", http="auto",
                            access_log=bool(spec.get("access_log", True)))
    uvicorn.Server(config).run(sockets=[sock])
    state.close()
    status.write("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
