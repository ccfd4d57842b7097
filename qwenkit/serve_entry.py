"""The kit's server entry point: `python -m qwenkit.serve_entry`, run by `qwenkit.server` in a
child process. It builds llama_cpp.server's own app (`create_app`, `ModelSettings`,
`LlamaProxy`) and adds what llama-cpp-python lacks:

- Settings arrive in one environment variable (`QWENKIT_SERVE`, JSON), never on the command
  line, and every variable llama_cpp.server would read on its own (`HOST`, `PORT`, `API_KEY`,
  `N_CTX`, `CONFIG_FILE`, ...) is removed first: its pydantic settings let the environment win.
- The port is bound BEFORE the model loads, so "address in use" is reported in a second, not
  after a full load; with port "any" the next free port is taken. The address really bound is
  checked (loopback unless remote access was asked for) and reported to the parent.
- Only localhost `Host` headers (DNS rebinding) and no foreign `Origin`s are accepted; the
  wildcard CORS middleware that `create_app` installs is removed. When a key is set, EVERY
  route (the docs too) needs `Authorization: Bearer <key>`.
- A request may carry `chat_template_kwargs` (as llama.cpp's own server and vLLM accept,
  e.g. `{"enable_thinking": false}`); they reach the model's chat template.
- Expert placement (`RunConfig.n_cpu_moe`) is applied through `qwenkit.engine` when it offers it.
- The child exits when the process that started it goes away (no orphan servers), unless it
  was started in the background on purpose.

Progress goes to a small JSON status file the parent polls (`phase`: starting, bound, loading,
ready, error), and everything printed (llama.cpp's own log included) goes to the log file.
"""
from __future__ import annotations

import contextvars
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

ENV_VAR = "QWENKIT_SERVE"
ANY_PORT_START = 8000
ANY_PORT_SPAN = 100
LOOPBACK_HOSTS = {"localhost", "127.0.0.1", "::1"}

# exit codes the parent understands
EXIT_BAD_SETTINGS = 2
EXIT_PORT_IN_USE = 3
EXIT_LOAD_FAILED = 4

_template_kwargs: contextvars.ContextVar[dict] = contextvars.ContextVar("qwenkit_template_kwargs", default={})


# ---- status file -----------------------------------------------------------------------------
class Status:
    def __init__(self, path: str | None):
        self.path = path
        self.data: dict[str, Any] = {"pid": os.getpid()}

    def write(self, phase: str, **fields: Any) -> None:
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


# ---- environment -----------------------------------------------------------------------------
def scrub_environment() -> list[str]:
    """Remove every variable llama_cpp.server's settings would read (case-insensitive), and
    CONFIG_FILE, which replaces all settings. Returns the names removed."""
    from llama_cpp.server.settings import Settings

    fields = {name.lower() for name in Settings.model_fields} | {"config_file"}
    removed = [k for k in list(os.environ) if k.lower() in fields]
    for k in removed:
        del os.environ[k]
    return removed


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
    assert last is not None
    raise last


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
    """Host / Origin / key checks before anything reaches llama_cpp.server's routes, and
    per-request `chat_template_kwargs` taken out of chat bodies."""

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
        if scope["type"] == "http" and scope.get("method") == "POST" and scope.get("path", "").endswith("/chat/completions"):
            return await self._chat(scope, receive, send)
        return await self.app(scope, receive, send)

    async def _chat(self, scope, receive, send):
        chunks, more = [], True
        while more:
            msg = await receive()
            if msg["type"] == "http.disconnect":
                return
            chunks.append(msg.get("body", b""))
            more = msg.get("more_body", False)
        body = b"".join(chunks)
        kwargs: dict = {}
        try:
            data = json.loads(body) if body else None
        except ValueError:
            data = None
        if isinstance(data, dict) and "chat_template_kwargs" in data:
            extra = data.pop("chat_template_kwargs")
            if isinstance(extra, dict):
                kwargs = {str(k): v for k, v in extra.items()}
            body = json.dumps(data).encode()
            headers = [(k, v) for k, v in scope["headers"] if k != b"content-length"]
            headers.append((b"content-length", str(len(body)).encode()))
            scope = dict(scope, headers=headers)
        sent = False

        async def replay():
            nonlocal sent
            if not sent:
                sent = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        token = _template_kwargs.set(kwargs)
        try:
            await self.app(scope, replay, send)
        finally:
            _template_kwargs.reset(token)


def add_template_kwargs(llama) -> None:
    """Make the model's chat handler merge the request's `chat_template_kwargs` (the same way
    llama_cpp.server applies ModelSettings.chat_template_kwargs at load time)."""
    import llama_cpp

    base = (llama.chat_handler or llama._chat_handlers.get(llama.chat_format)
            or llama_cpp.llama_chat_format.get_chat_completion_handler(llama.chat_format))

    def handler(*args, **kwargs):
        return base(*args, **{**_template_kwargs.get(), **kwargs})

    llama.chat_handler = handler


def stream_errors_as_events(app_module) -> None:
    """llama_cpp.server starts a streamed answer (HTTP 200) before the model runs, so an error
    inside it (a prompt longer than the context) just ends the stream: no finish_reason, no
    message. Send it as an OpenAI-style `{"error": {...}}` event instead, which the openai
    client raises as APIError (code context_length_exceeded for an overflow). Unknown errors
    are logged here and reported without the exception text."""
    from llama_cpp.server.errors import RouteErrorHandler

    original = app_module.get_event_publisher

    def as_event(e: Exception, body) -> dict:
        for pattern, fmt in RouteErrorHandler.pattern_and_formatters.items():
            m = pattern.search(str(e))
            if m:
                return {"error": fmt(body, m)[1]}
        traceback.print_exception(e)
        return {"error": {"message": "the server failed while streaming (see its log)",
                          "type": "server_error", "param": None, "code": None}}

    async def publisher(request, inner_send_chan, body, body_model, llama_call, kwargs):
        def call(llama, **kw):
            try:
                it = llama_call(llama, **kw)
            except Exception as e:  # noqa: BLE001
                return iter([as_event(e, body)])

            def guarded():
                try:
                    yield from it
                except Exception as e:  # noqa: BLE001
                    yield as_event(e, body)
            return guarded()

        return await original(request=request, inner_send_chan=inner_send_chan, body=body,
                              body_model=body_model, llama_call=call, kwargs=kwargs)

    app_module.get_event_publisher = publisher


def install_fast_path(llama, status: Status, app_module=None, flush_ms: float = 0.0) -> None:
    """qwenkit.fastgen's lean completion path (llama.cpp's decode and sampler with O(1) Python
    work per token; requests it does not support fall back to llama-cpp-python's own), and one
    generation thread for the server (a new OpenMP team per worker thread cost 2-core decode
    60 of 160 tok/s) with a publisher that lets generation run ahead of the event loop."""
    try:
        from qwenkit import fastgen
        fastgen.install(llama)
        if app_module is not None:
            fastgen.install_server(app_module, flush_ms=flush_ms)
        status.write("loading", fastgen="on", stream_flush_ms=flush_ms)
    except Exception as e:  # noqa: BLE001 - the stock path still works
        status.write("loading", fastgen=f"not installed: {e}")


# What a request gets when it does not say: llama.cpp's llama-server defaults where
# llama_cpp.server's differ. Its repeat_penalty 1.1 is an old llama.cpp default (llama.cpp has
# used 1.0, off, since 2024); with it on, every token runs a penalty pass and a sampler over the
# whole 248K vocabulary instead of an argmax, which cost the kit's server a quarter of its
# streamed decode speed on an H200 against llama-server (which does not penalize).
LLAMA_SERVER_DEFAULTS = {"repeat_penalty": 1.0}


def use_llama_server_defaults(app_module) -> None:
    """Fields a request leaves out take LLAMA_SERVER_DEFAULTS (fields it sends are kept, 1.1
    included). Every completion and chat route, streamed or not, passes its arguments through
    prepare_request_resources; the request's own model knows which fields were sent."""
    original = app_module.prepare_request_resources
    if getattr(original, "__qwenkit__", False):
        return

    def prepare_request_resources(body, llama_proxy, body_model, kwargs):
        sent = getattr(body, "model_fields_set", set())
        for name, value in LLAMA_SERVER_DEFAULTS.items():
            if name not in sent and name in kwargs:
                kwargs[name] = value
        return original(body, llama_proxy, body_model, kwargs)

    prepare_request_resources.__qwenkit__ = True
    app_module.prepare_request_resources = prepare_request_resources


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


def hide_internal_errors() -> None:
    """llama_cpp.server answers an unexpected exception with HTTP 500 and the exception's text
    (paths, internals). Keep the text in the log; the client gets a generic message."""
    from llama_cpp.server.errors import RouteErrorHandler

    original = RouteErrorHandler.error_message_wrapper
    if getattr(original, "__qwenkit__", False):
        return

    def wrapper(self, error, body=None):
        status, response = original(self, error, body)
        if status >= 500:
            traceback.print_exception(error)
            response = dict(response, message="internal server error (the server's log has the details)")
        return status, response

    wrapper.__qwenkit__ = True
    RouteErrorHandler.error_message_wrapper = wrapper


def disable_unsafe_features(model_settings) -> None:
    """Never the prompt cache (its disk form unpickles files: code execution from a cache
    folder) and never RPC servers (llama.cpp's RPC backend has known CVEs), whatever the
    settings say (FACTS.md, reliability and security)."""
    model_settings.cache = False
    model_settings.cache_type = "ram"
    model_settings.rpc_servers = None


# ---- expert placement hook -------------------------------------------------------------------
def apply_expert_placement(cfg, status: Status) -> None:
    """Keep the expert tensors of the first cfg.n_cpu_moe layers in system RAM.

    llama-cpp-python has no option for it (FACTS.md). qwenkit.engine.install_expert_offload
    swaps `llama_cpp.Llama` for a subclass that sets tensor buffer overrides on
    llama_model_params; llama_cpp.server's LlamaProxy calls `llama_cpp.Llama(...)` when it
    loads, so the hook must run before create_app()."""
    if not cfg.n_cpu_moe:
        return
    try:
        from qwenkit.engine import install_expert_offload
    except ImportError as e:
        status.fail(EXIT_BAD_SETTINGS,
                    f"n_cpu_moe={cfg.n_cpu_moe} needs qwenkit.engine's expert placement ({e})",
                    "use n_cpu_moe=0 (and fewer GPU layers if memory is short)")
    install_expert_offload(cfg.n_cpu_moe)
    status.write("starting", n_cpu_moe=cfg.n_cpu_moe)


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


def main() -> int:
    raw = os.environ.pop(ENV_VAR, None)
    status = Status(None)
    if not raw:
        status.fail(EXIT_BAD_SETTINGS, f"{ENV_VAR} is not set",
                    "start the server with qwenkit.server.start() or `python -m qwenkit serve`")
    spec = json.loads(raw)
    status = Status(spec.get("status_path"))
    status.write("starting")
    removed = scrub_environment()
    if removed:
        status.write("starting", ignored_environment=sorted(removed))

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

    # 2. llama_cpp.server's settings from the RunConfig's own rendering
    import argparse

    from llama_cpp.server.cli import add_args_from_model, parse_model_from_args
    from llama_cpp.server.settings import ModelSettings, ServerSettings, Settings

    parser = argparse.ArgumentParser(prog="qwenkit.serve_entry")
    add_args_from_model(parser, Settings)
    args = parser.parse_args(cfg.server_args())
    model_settings = parse_model_from_args(ModelSettings, args)
    server_settings = parse_model_from_args(ServerSettings, args)
    server_settings.host, server_settings.port = bound_host, bound_port
    server_settings.api_key = api_key
    server_settings.interrupt_requests = False  # never cut off a response still streaming
    model_settings.logits_all = False
    model_settings.verbose = True  # llama.cpp's reasons (truncated file, OOM) go to the log file
    disable_unsafe_features(model_settings)

    apply_expert_placement(cfg, status)

    # 3. the model, through llama_cpp.server's own app
    status.write("loading", model=cfg.model)
    try:
        from llama_cpp.server import app as app_module
        from fastapi.middleware.cors import CORSMiddleware

        app = app_module.create_app(server_settings=server_settings, model_settings=[model_settings])
    except Exception as e:  # noqa: BLE001 - everything here is a load failure to report
        traceback.print_exc()
        status.fail(EXIT_LOAD_FAILED, f"the model did not load: {e}",
                    "check the path and that the file is complete (qwenkit.gguf_info), and that "
                    "n_ctx / n_gpu_layers fit in memory; the log shows llama.cpp's reason")
    proxy = app_module._llama_proxy
    llama = proxy._current_model
    add_template_kwargs(llama)
    use_llama_server_defaults(app_module)
    if spec.get("fastgen", True):  # before the error wrapper, which wraps its publisher
        flush = spec.get("stream_flush_ms")
        if flush is None:
            import llama_cpp
            flush = stream_flush_default(cfg, bool(llama_cpp.llama_supports_gpu_offload()), os.cpu_count() or 1)
        install_fast_path(llama, status, app_module, float(flush))
    stream_errors_as_events(app_module)
    hide_internal_errors()
    app.user_middleware = [m for m in app.user_middleware if m.cls is not CORSMiddleware]
    origins = list(spec.get("allowed_origins") or [])
    if origins:
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_credentials=False,
                           allow_methods=["GET", "POST"], allow_headers=["Authorization", "Content-Type"])
    guarded = Guard(app, api_key=api_key, remote=remote, allowed_origins=origins)

    # 4. serve on the socket bound in step 1
    import uvicorn

    # loop/http "auto": uvloop and httptools when installed (requirements.txt has them: on 2
    # cores they made streamed decode 0.965 -> 0.987 of llama-server), else asyncio and h11
    config = uvicorn.Config(guarded, log_level="info", timeout_graceful_shutdown=5, loop="auto", http="auto",
                            access_log=bool(spec.get("access_log", True)))
    server = uvicorn.Server(config)
    import importlib.util
    status.write("ready", host=bound_host, port=bound_port, n_ctx=llama.n_ctx(),
                 alias=model_settings.model_alias,
                 event_loop="uvloop" if importlib.util.find_spec("uvloop") else "asyncio",
                 http="httptools" if importlib.util.find_spec("httptools") else "h11")
    server.run(sockets=[sock])
    try:
        proxy.free()
    except Exception:  # noqa: BLE001
        pass
    status.write("stopped")
    return 0


if __name__ == "__main__":
    sys.exit(main())
