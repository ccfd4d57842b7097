"""Fault suite, server and clients: real kit servers on 127.0.0.1 (the small default model or the
tiny random qwen35moe, n_ctx 512-1024, one thread), attacked, restarted, loaded and killed."""
from __future__ import annotations

import http.server
import json
import os
import signal
import socket
import threading
import time
from pathlib import Path

import httpx
import openai
import pytest

from qwenkit import server
from qwenkit.config import RunConfig
from qwenkit.errors import ServerError

from netutil import QuietHandler, listening_addresses, serve

pytestmark = pytest.mark.faults

ROUTES = [("GET", "/v1/models"), ("POST", "/v1/chat/completions"), ("POST", "/v1/completions"),
          ("GET", "/docs"), ("GET", "/openapi.json"), ("POST", "/extras/tokenize")]
BODIES = {"/v1/chat/completions": {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1},
          "/v1/completions": {"prompt": "hi", "max_tokens": 1},
          "/extras/tokenize": {"input": "hello"}}
# the bound this suite states for the load test: the server's resident memory may grow by at
# most this much from after warm-up to the end of 250 streamed requests
RSS_GROWTH_BOUND_MIB = 64

def non_loopback_address() -> str | None:
    """An address of this machine that is not loopback (the outgoing interface), if any."""
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
            s.connect(("192.0.2.1", 9))  # TEST-NET-1: no packet is sent for a UDP connect
            ip = s.getsockname()[0]
    except OSError:
        return None
    return None if ip.startswith("127.") or ip == "0.0.0.0" else ip


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise AssertionError("no VmRSS")


def server_children() -> set[int]:
    """Live kit server processes whose parent is this test process."""
    out = set()
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            if ppid == os.getpid() and server._pid_is_server(int(d.name)):
                out.add(int(d.name))
        except (OSError, ValueError, IndexError):
            continue
    return out


def gone(pid: int, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not server._pid_is_server(pid):
            return True
        time.sleep(0.05)
    return False


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tiny_cfg(model) -> RunConfig:
    return RunConfig(model=str(model), n_ctx=512, n_threads=1)


def _call(base: str, method: str, route: str, headers: dict) -> int:
    r = httpx.request(method, base + route, headers=headers, json=BODIES.get(route), timeout=60)
    return r.status_code


# ---- Host / Origin / key ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed(faults_good_model, tmp_path_factory):
    key = server.new_api_key()
    srv = server.start(tiny_cfg(faults_good_model), port="any", api_key=key, quiet=True,
                       log_path=tmp_path_factory.mktemp("keyed") / "s.log")
    yield srv
    srv.stop()


def test_host_origin_key_matrix(served, keyed, faults_log):
    """Every protected route, every case: what must be refused is refused, what must work works."""
    key = keyed.api_key
    bearer = {"Authorization": f"Bearer {key}"}
    cases = [  # (server, case, headers, expected status)
        (served, "no key server, plain localhost request", {}, 200),
        (served, "no key server, Host localhost:PORT", {"Host": "localhost:{port}"}, 200),
        (served, "no key server, Origin http://localhost:PORT", {"Origin": "http://localhost:{port}"}, 200),
        (served, "no key server, recipe's dummy key", {"Authorization": "Bearer anything"}, 200),
        (served, "DNS rebinding: Host evil.example", {"Host": "evil.example:{port}"}, 403),
        (served, "Host localhost.evil.example", {"Host": "localhost.evil.example"}, 403),
        (served, "Host 127.0.0.1.nip.io", {"Host": "127.0.0.1.nip.io:{port}"}, 403),
        (served, "foreign Origin https://evil.example", {"Origin": "https://evil.example"}, 403),
        (served, "Origin null (sandboxed page)", {"Origin": "null"}, 403),
        (served, "Origin http://localhost.evil.example", {"Origin": "http://localhost.evil.example"}, 403),
        (keyed, "key server, no key", {}, 401),
        (keyed, "key server, wrong key", {"Authorization": "Bearer wrong"}, 401),
        (keyed, "key server, key without Bearer", {"Authorization": key}, 401),
        (keyed, "key server, right key", bearer, 200),
        (keyed, "key server, right key + Host evil.example", {**bearer, "Host": "evil.example"}, 403),
        (keyed, "key server, right key + foreign Origin", {**bearer, "Origin": "https://evil.example"}, 403),
    ]
    results, bad = {}, []
    for srv, name, headers, want in cases:
        h = {k: v.format(port=srv.port) for k, v in headers.items()}
        for method, route in ROUTES:
            got = _call(srv.root_url, method, route, h)
            results[(name, route)] = got
            if got != want:
                bad.append(f"{name} {method} {route}: {got}, expected {want}")
    assert not bad, "\n".join(bad)
    # a preflight from a foreign origin never gets a wildcard CORS answer
    r = httpx.options(served.base_url + "/chat/completions",
                      headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and r.headers.get("access-control-allow-origin") is None
    refused = sum(1 for (_, w) in [(c[1], c[3]) for c in cases] if w != 200) * len(ROUTES)
    faults_log.add("server:host_origin_key_matrix", area="server",
                   input=f"{len(cases)} header cases x {len(ROUTES)} routes ("
                   + ", ".join(r for _, r in ROUTES) + ")",
                   fault="foreign Host (DNS rebinding), foreign/null Origin, missing/wrong key",
                   result=f"{len(results)} requests: all {refused} hostile ones refused (403 Host/Origin, "
                   f"401 key), all {len(results) - refused} legitimate ones answered 200; no wildcard CORS",
                   requests=len(results), refused=refused)


# ---- environment, restarts, orphans -----------------------------------------------------------------
def test_host_env_restart_ten_times_one_port(faults_good_model, monkeypatch, faults_log, tmp_path):
    """HOST=0.0.0.0 (and PORT, API_KEY) in the environment: the server still binds loopback only.
    Ten start/stop cycles on one port: each answers, each stop frees the port, no orphan."""
    for k, v in {"HOST": "0.0.0.0", "PORT": "9", "API_KEY": "from-env", "host": "0.0.0.0"}.items():
        monkeypatch.setenv(k, v)
    port = free_port()
    before = server_children()
    other = non_loopback_address()
    pids, times = [], []
    for i in range(10):
        t = time.monotonic()
        srv = server.start(tiny_cfg(faults_good_model), port=port, quiet=True, log_path=tmp_path / f"s{i}.log")
        times.append(time.monotonic() - t)
        try:
            pids.append(srv.pid)
            assert srv.port == port and srv.ping()
            assert listening_addresses(port) == {"127.0.0.1"}, listening_addresses(port)
            if other and i == 0:
                with pytest.raises(OSError):
                    socket.create_connection((other, port), timeout=2).close()
            assert httpx.get(srv.base_url + "/models").status_code == 200  # API_KEY from env ignored
        finally:
            srv.stop()
        assert gone(srv.pid, 5), f"cycle {i}: server {srv.pid} still runs"
        assert not server.port_in_use("127.0.0.1", port), f"cycle {i}: port {port} still taken"
    assert server_children() == before
    assert not any(server._pid_is_server(p) for p in pids)
    how = (f"a connect to this machine's {other} refused" if other else "no non-loopback address here")
    faults_log.add("server:host_env", area="server", input="HOST=0.0.0.0, PORT=9, API_KEY=from-env in the environment",
                   fault="environment overriding the bind address / key",
                   result=f"listens on 127.0.0.1 only (/proc/net/tcp); {how}; env key not used")
    faults_log.add("server:restart_x10", area="server", input="tiny qwen35moe, one fixed port",
                   fault="start/stop 10 times", load="10 cycles",
                   result=f"10/10 started and answered on the same port, every stop freed the "
                   f"port, 0 orphan processes; start {min(times):.1f}-{max(times):.1f} s",
                   cycles=10, start_s_max=round(max(times), 2))


# ---- load ------------------------------------------------------------------------------------------
def _stream(client, model: str, i: int) -> tuple[str, str | None]:
    text, finish = [], None
    for chunk in client.chat.completions.create(
            model=model, max_tokens=8, stream=True, temperature=0.7, seed=i,
            messages=[{"role": "user", "content": f"Say one word about the number {i}."}]):
        if chunk.choices:
            text.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    return "".join(text), finish


def test_load_200_sequential_50_concurrent(served, faults_log):
    """250 short streamed chat requests (max_tokens 8): 200 one after another, then 50 with 8 in
    flight; every one ends with a finish_reason; the server's RSS stays within the bound."""
    from concurrent.futures import ThreadPoolExecutor

    client = served.client(timeout=120)
    for i in range(5):  # warm-up: caches, allocator, first-request paths
        _stream(client, served.alias, 1000 + i)
    rss0 = rss_mib(served.pid)
    peak = [rss0]
    stop = threading.Event()

    def sample():
        while not stop.is_set():
            try:
                peak[0] = max(peak[0], rss_mib(served.pid))
            except (OSError, AssertionError):
                pass
            time.sleep(0.1)

    th = threading.Thread(target=sample, daemon=True)
    th.start()
    t0 = time.monotonic()
    try:
        seq = [_stream(client, served.alias, i) for i in range(200)]
        t1 = time.monotonic()
        with ThreadPoolExecutor(8) as ex:
            conc = list(ex.map(lambda i: _stream(client, served.alias, i), range(200, 250)))
        t2 = time.monotonic()
    finally:
        stop.set()
        th.join(2)
    rss1 = rss_mib(served.pid)
    peak[0] = max(peak[0], rss1)
    finishes = [f for _, f in seq + conc]
    missing = [i for i, f in enumerate(finishes) if f not in ("stop", "length")]
    assert not missing, f"requests without a finish_reason: {missing}"
    assert served.alive()
    growth = rss1 - rss0
    assert growth <= RSS_GROWTH_BOUND_MIB, f"RSS grew {growth:.1f} MiB ({rss0:.0f} -> {rss1:.0f})"
    assert peak[0] - rss0 <= RSS_GROWTH_BOUND_MIB
    faults_log.add("load:sequential_and_concurrent", area="load",
                   input="SmolLM2-135M server, n_ctx 1024, 1 thread, streamed chat, max_tokens 8",
                   fault="sustained load", load="200 sequential + 50 concurrent (8 in flight)",
                   result=f"250/250 ended with a finish_reason ({finishes.count('length')} length, "
                   f"{finishes.count('stop')} stop); RSS {rss0:.0f} -> {rss1:.0f} MiB (growth {growth:+.1f}, "
                   f"peak {peak[0] - rss0:+.1f}; bound +{RSS_GROWTH_BOUND_MIB} MiB); "
                   f"{t1 - t0:.0f} s + {t2 - t1:.0f} s",
                   requests=250, rss_start_mib=round(rss0, 1), rss_end_mib=round(rss1, 1),
                   rss_growth_mib=round(growth, 1), rss_peak_growth_mib=round(peak[0] - rss0, 1),
                   rss_bound_mib=RSS_GROWTH_BOUND_MIB, seconds=round(t2 - t0, 1))


# ---- a killed server ---------------------------------------------------------------------------------
def test_killed_server_is_reported_and_restarts(faults_good_model, faults_log, tmp_path):
    from qwenkit import summarize

    port = free_port()
    srv = server.start(tiny_cfg(faults_good_model), port=port, quiet=True, log_path=tmp_path / "a.log")
    client = srv.client(timeout=10)
    assert client.models.list().data
    os.kill(srv.pid, signal.SIGKILL)
    assert srv._proc is not None
    srv._proc.wait(10)
    # the caller (this process, a notebook kernel) survives and hears about it
    with pytest.raises(openai.APIConnectionError):
        client.models.list()
    with pytest.raises(ServerError) as e:
        srv.check()
    assert "killed by SIGKILL" in e.value.problem and "start it again" in (e.value.fix or "")
    with pytest.raises(ServerError, match="no server answers"):
        summarize.summarize("A short document. " * 5, client, srv.alias, n_ctx=512, language="en")
    srv.stop()  # harmless on a dead server
    # the next start on the same port works
    with server.start(tiny_cfg(faults_good_model), port=port, quiet=True, log_path=tmp_path / "b.log") as again:
        assert again.port == port and again.client(timeout=10).models.list().data
        again.check()  # quiet while it runs
    faults_log.add("server:sigkill", area="server", input="tiny qwen35moe server",
                   fault="server process killed with SIGKILL (as the OOM killer does)",
                   result="client: APIConnectionError; ServerProcess.check(): ServerError \"killed by SIGKILL\" "
                   "with the log tail; summarize: ServerError; caller survives; restart on the same port works")


# ---- what the kit never enables ------------------------------------------------------------------------
def test_no_prompt_cache_no_rpc(served, default_model):
    """The kit's server has no setting that reaches a disk prompt cache (which unpickles files)
    or llama.cpp's RPC backend: neither exists in RunConfig, and the server's log shows none."""
    from dataclasses import fields
    names = {f.name for f in fields(RunConfig)}
    assert not {n for n in names if "cache_type" in n or "rpc" in n}, names
    log = served.log_path.read_text(errors="replace")
    assert "Using disk cache" not in log and "Using ram cache" not in log and "RPC" not in log


# ---- clients ------------------------------------------------------------------------------------------
class _Hang(http.server.BaseHTTPRequestHandler):
    """Accepts a request and never answers (counts the attempts)."""
    attempts = 0

    def do_GET(self):
        type(self).attempts += 1
        time.sleep(5)

    def log_message(self, *a):
        pass


def test_client_timeout_and_at_most_one_retry(served, faults_log):
    c = served.client()
    assert c.max_retries == 1 and c.timeout is not None and float(c.timeout) <= 600
    assert served.client(max_retries=5).max_retries == 1
    from qwenkit.summarize import TokenCounter
    counter = TokenCounter(c, served.alias)
    counter("hello")
    assert counter._http is not None and counter._http.timeout.read == 60
    # against a server that never answers: a timeout, after at most one retry
    _Hang.attempts = 0
    httpd, _root = serve(_Hang)
    try:
        fake = server.ServerProcess(None, host="127.0.0.1", port=httpd.server_address[1], api_key=None,
                                    alias="x", log_path=Path("/dev/null"), status_path=Path("/dev/null"),
                                    owned=False)
        t = time.monotonic()
        with pytest.raises(openai.APITimeoutError):
            fake.client(timeout=0.5).models.list()
        took = time.monotonic() - t
    finally:
        httpd.shutdown()
    assert _Hang.attempts == 2 and took < 5, (_Hang.attempts, took)
    faults_log.add("clients:timeout_retry", area="clients",
                   input="ServerProcess.client() against a server that never answers",
                   fault="hung server", result=f"APITimeoutError after {_Hang.attempts} attempts (1 retry) in "
                   f"{took:.1f} s; default timeout {float(c.timeout):.0f} s, max_retries 1 (openai's own: 600 s, 2)",
                   attempts=_Hang.attempts)


def _stream_handler(mode: str):
    """A fake OpenAI server: tokenize counts, a plain chat answer, and a chat stream that is cut."""

    class H(QuietHandler):
        def do_POST(self):
            req = self.read_json()
            if self.path.endswith("/tokenize/count"):
                return self.send_json({"count": 1 + len(req.get("input", "").split())})
            if not req.get("stream"):
                return self.send_json({"id": "x", "object": "chat.completion", "created": 0, "model": "m",
                                   "choices": [{"index": 0, "finish_reason": "length",
                                                "message": {"role": "assistant", "content": "ok"}}],
                                   "usage": {"prompt_tokens": 20, "completion_tokens": 1, "total_tokens": 21}})
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            if mode == "clean_end":
                self.send_header("Connection", "close")
            else:
                self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            for piece in ("The summary", " is"):
                ev = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "m",
                      "choices": [{"index": 0, "delta": {"content": piece}, "finish_reason": None}]}
                data = f"data: {json.dumps(ev)}\n\n".encode()
                if mode == "clean_end":
                    self.wfile.write(data)
                else:
                    self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")
                self.wfile.flush()
            self.close_connection = True  # then the connection just ends: no finish_reason, no [DONE]

    return H


@pytest.mark.parametrize("mode", ["clean_end", "broken_chunked"])
def test_cut_stream_is_an_error_not_a_short_answer(mode, faults_log):
    from qwenkit import summarize

    httpd, root = serve(_stream_handler(mode))
    try:
        client = openai.OpenAI(base_url=root + "/v1", api_key="x", timeout=10, max_retries=0)
        with pytest.raises(ServerError) as e:
            summarize.summarize("One short paragraph to summarize.", client, "m", n_ctx=1024, language="en")
    finally:
        httpd.shutdown()
    msg = e.value.problem
    assert ("without a finish_reason" in msg) if mode == "clean_end" else ("broke off" in msg), msg
    faults_log.add(f"clients:cut_stream_{mode}", area="clients",
                   input="summarize() against a local server that streams two pieces, then "
                   + ("closes the connection cleanly" if mode == "clean_end" else "drops it mid-chunk"),
                   fault="stream ending without a finish_reason",
                   result="ServerError: " + ("\"ended without a finish_reason after 2 pieces\"" if mode == "clean_end"
                                             else "\"broke off after 2 pieces\"") + ", not a 2-piece summary")
