"""The kit's server: real llama_cpp.server processes on 127.0.0.1 with the small default model,
driven by the real `openai` client (n_ctx 1024, at most 64 new tokens per request)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path
from typing import Any, cast

import httpx
import openai
import pytest

from qwenkit import server
from qwenkit.config import RunConfig
from qwenkit.errors import ServerError

from netutil import listening_addresses

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parent.parent

def gone(pid: int, within: float = 10.0) -> bool:
    end = time.monotonic() + within
    while time.monotonic() < end:
        if not server._pid_is_server(pid):
            return True
        time.sleep(0.1)
    return False


def small_cfg(model, **kw) -> RunConfig:
    return RunConfig(model=str(model), n_ctx=512, n_threads=1, **kw)


# ---- the shared server --------------------------------------------------------------------------
def test_recipe_client_plain_and_streamed(served):
    """The recipe's client, as written: any api_key string, model qwen3.5-35b."""
    assert served.base_url.startswith("http://127.0.0.1:") and served.base_url.endswith("/v1")
    assert listening_addresses(served.port) == {"127.0.0.1"}
    assert served.status().get("parallel", 0) >= 1  # the kit's own scheduler serves it
    client = openai.OpenAI(base_url=served.base_url, api_key="anything", timeout=60, max_retries=0)
    ids = [m.id for m in client.models.list().data]
    assert ids == ["qwen3.5-35b", "SmolLM2-135M-Instruct.Q4_1"]  # the alias, then the file's stem
    r = client.chat.completions.create(model="qwen3.5-35b", max_tokens=16, temperature=0,
                                       messages=[{"role": "user", "content": "Name a colour."}])
    assert r.choices[0].message.content and r.usage is not None and r.usage.completion_tokens <= 16
    pieces, finish = [], None
    for chunk in client.chat.completions.create(model="qwen3.5-35b", max_tokens=16, stream=True,
                                                messages=[{"role": "user", "content": "Count to five."}]):
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces).strip() and finish in ("stop", "length")
    # the kit's own helper: explicit timeout, at most one retry
    c = served.client()
    assert c.max_retries <= 1 and c.timeout is not None and c.timeout <= 600


def test_foreign_host_and_origin_refused(served):
    url = served.base_url + "/models"
    assert httpx.get(url).status_code == 200
    assert httpx.get(url, headers={"Host": f"localhost:{served.port}"}).status_code == 200
    # DNS rebinding: a page on evil.example resolving to 127.0.0.1 sends its own Host
    r = httpx.get(url, headers={"Host": f"evil.example:{served.port}"})
    assert r.status_code == 403 and "Host" in r.json()["error"]["message"]
    r = httpx.post(served.base_url + "/chat/completions", headers={"Host": "evil.example"},
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert r.status_code == 403
    # a foreign web origin: refused, and never a wildcard CORS answer
    r = httpx.post(served.base_url + "/chat/completions", headers={"Origin": "https://evil.example"},
                   json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
    assert r.status_code == 403
    r = httpx.options(served.base_url + "/chat/completions",
                      headers={"Origin": "https://evil.example", "Access-Control-Request-Method": "POST"})
    assert r.status_code == 403 and r.headers.get("access-control-allow-origin") != "*"
    r = httpx.get(url, headers={"Origin": f"http://localhost:{served.port}"})
    assert r.status_code == 200 and "access-control-allow-origin" not in r.headers
    r = httpx.get(served.root_url + "/openapi.json", headers={"Host": "evil.example"})
    assert r.status_code == 403


def test_eight_concurrent_streams_all_finish(served):
    """interrupt_requests is off: a new request never cuts off the one streaming."""
    client = served.client(timeout=120)
    results: dict[int, tuple[str, str | None]] = {}

    def one(i: int) -> None:
        text, finish = [], None
        for chunk in client.chat.completions.create(
                model=served.alias, max_tokens=24, stream=True, temperature=0.7, seed=i,
                messages=[{"role": "user", "content": f"Write a sentence about the number {i}."}]):
            if chunk.choices:
                text.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
        results[i] = ("".join(text), finish)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(180)
    assert sorted(results) == list(range(8))
    for i, (text, finish) in results.items():
        assert finish in ("stop", "length"), f"stream {i} ended without a finish_reason"
        assert text.strip(), f"stream {i} came back empty"


def test_context_overflow_is_a_400(served):
    client = served.client()
    with pytest.raises(openai.BadRequestError) as e:
        client.chat.completions.create(model=served.alias, max_tokens=8,
                                       messages=[{"role": "user", "content": "word " * 3000}])
    assert "context" in str(e.value).lower()


# ---- safety of the launch -----------------------------------------------------------------------
def test_remote_bind_needs_opt_in_and_key(default_model):
    cfg = small_cfg(default_model)
    with pytest.raises(ServerError, match="expose"):
        server.start(cfg, host="0.0.0.0")
    with pytest.raises(ServerError, match="API key"):
        server.start(cfg, host="0.0.0.0", allow_remote=True)
    key = server.new_api_key()
    with server.start(cfg, host="0.0.0.0", allow_remote=True, api_key=key, port="any") as srv:
        assert srv.api_key == key and key in srv.describe()
        url = f"http://127.0.0.1:{srv.port}/v1/models"
        assert httpx.get(url).status_code == 401
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 401
        assert httpx.get(f"http://127.0.0.1:{srv.port}/docs").status_code == 401
        assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200
        with pytest.raises(openai.AuthenticationError):
            openai.OpenAI(base_url=srv.base_url, api_key="anything", max_retries=0).models.list()
        assert srv.client().models.list().data[0].id == srv.alias


def test_environment_does_not_reach_the_server(default_model, monkeypatch):
    """llama_cpp.server lets HOST/PORT/API_KEY/N_CTX... override its flags: the child never sees
    them, and the key travels in the environment, never on the command line."""
    for k, v in {"HOST": "0.0.0.0", "PORT": "9", "API_KEY": "from-env", "N_CTX": "64",
                 "CONFIG_FILE": "/nonexistent.json", "host": "0.0.0.0"}.items():
        monkeypatch.setenv(k, v)
    key = "secret-" + server.new_api_key()
    with server.start(small_cfg(default_model), port="any", api_key=key) as srv:
        assert listening_addresses(srv.port) == {"127.0.0.1"}
        assert srv.n_ctx == 512
        assert key.encode() not in Path(f"/proc/{srv.pid}/cmdline").read_bytes()
        env = Path(f"/proc/{srv.pid}/environ").read_bytes().split(b"\0")
        names = {e.split(b"=", 1)[0] for e in env if e}
        assert not names & {b"HOST", b"PORT", b"API_KEY", b"N_CTX", b"CONFIG_FILE", b"host"}
        url = srv.base_url + "/models"
        assert httpx.get(url, headers={"Authorization": "Bearer from-env"}).status_code == 401
        assert httpx.get(url, headers={"Authorization": f"Bearer {key}"}).status_code == 200


def test_port_in_use_found_before_the_model_loads(default_model, monkeypatch):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        s.listen(1)
        port = s.getsockname()[1]
        t0 = time.monotonic()
        with pytest.raises(ServerError, match="in use"):
            server.start(small_cfg(default_model), port=port)
        assert time.monotonic() - t0 < 1.0  # no process even started
        # the child's own check (the parent's is only a fast path): bind first, then load
        monkeypatch.setattr(server, "port_in_use", lambda *a: False)
        with pytest.raises(ServerError, match="in use") as e:
            server.start(small_cfg(default_model), port=port)
        log = Path(e.value.log_path).read_text()
        assert "loading" not in log and "llama_model_load" not in log
        assert gone(e.value.pid, 1)


def test_any_port_skips_a_taken_one(default_model):
    from qwenkit import serve_entry
    taken = []
    try:
        for p in range(serve_entry.ANY_PORT_START, serve_entry.ANY_PORT_START + 3):
            s = socket.socket()
            try:
                s.bind(("127.0.0.1", p))
                s.listen(1)
                taken.append(s)
                break
            except OSError:
                s.close()
        with server.start(small_cfg(default_model), port="any") as srv:
            assert srv.port not in {t.getsockname()[1] for t in taken}
            assert srv.ping()
    finally:
        for s in taken:
            s.close()


def test_truncated_gguf_fails_fast_with_the_log_tail(default_model, tmp_path):
    bad = tmp_path / "truncated.gguf"
    with open(default_model, "rb") as f:
        bad.write_bytes(f.read(8 << 20))
    t0 = time.monotonic()
    with pytest.raises(ServerError) as e:
        server.start(small_cfg(bad), port="any", ready_timeout=60)
    assert time.monotonic() - t0 < 30
    msg = str(e.value)
    assert "did not load" in msg and "last lines" in msg
    assert "file bounds" in msg or "failed to load" in msg.lower()  # llama.cpp's own reason
    assert gone(e.value.pid, 2)


def test_never_ready_times_out_and_stops_it(default_model):
    with pytest.raises(ServerError, match="did not answer within") as e:
        server.start(small_cfg(default_model), port="any", ready_timeout=0.05)
    assert gone(e.value.pid, 5)


def test_bad_logit_bias_is_a_400_naming_the_field(served):
    r = httpx.post(served.base_url + "/completions",
                   json={"prompt": "hi", "max_tokens": 1, "logit_bias": {"not-a-token": 1.0}})
    assert r.status_code == 400
    assert r.json()["error"]["param"] == "logit_bias" and "not-a-token" in r.json()["error"]["message"]


def test_internal_errors_do_not_echo_the_exception(default_model, capsys):
    """A failure inside the app (here the model's tokenizer raises): 500 with a generic
    message; the exception's text goes to the log (stderr) only."""
    from fastapi.testclient import TestClient

    from qwenkit.serving import AppState, create_app

    class BrokenTokenizer:
        n_ctx_slot, n_vocab = 512, 100

        def completion_tokens(self, text):
            raise RuntimeError("secret /internal/path")

    state = AppState("m")
    # stand-ins for the model and its scheduler: the request fails at the tokenizer, before either is used further
    state.model, state.scheduler = cast(Any, BrokenTokenizer()), cast(Any, object())
    with TestClient(create_app(state), raise_server_exceptions=False) as c:
        r = c.post("/v1/completions", json={"prompt": "hi", "max_tokens": 1})
    assert r.status_code == 500
    assert "secret" not in r.text and "log" in r.json()["error"]["message"]
    assert "secret /internal/path" in capsys.readouterr().err


def test_missing_model_is_reported_without_a_process(tmp_path):
    with pytest.raises(ServerError, match="does not exist"):
        server.start(RunConfig(model=str(tmp_path / "nope.gguf")))


# ---- stopping: no orphans -------------------------------------------------------------------------
def test_stop_and_context_manager_leave_nothing(default_model, tmp_path):
    log = tmp_path / "s.log"
    with server.start(small_cfg(default_model), port="any", log_path=log) as srv:
        pid = srv.pid
        assert srv.alive() and srv.ping()
        assert "qwen3.5-35b" in repr(srv)
    assert not srv.alive() and gone(pid, 1)
    assert "Application startup complete" in log.read_text() or log.stat().st_size > 0
    srv.stop()  # idempotent


_CHILD = """
import os, sys, time
from qwenkit import server
from qwenkit.config import RunConfig
srv = server.start(RunConfig(model={model!r}, n_ctx=512, n_threads=1), port="any", quiet=True)
print("pid", srv.pid, flush=True)
if sys.argv[1] == "hang":
    time.sleep(600)
"""


@pytest.mark.parametrize("how", ["exit", "killed"])
def test_no_orphan_when_the_parent_goes(default_model, how):
    """Interpreter exit stops the server (atexit); a parent killed outright: the server notices."""
    code = textwrap.dedent(_CHILD.format(model=str(default_model)))
    p = subprocess.Popen([sys.executable, "-c", code, "hang" if how == "killed" else "exit"],
                         stdout=subprocess.PIPE, text=True, cwd=ROOT)
    assert p.stdout is not None
    try:
        line = p.stdout.readline()
        pid = int(line.split()[-1])
        assert server._pid_is_server(pid)
        if how == "killed":
            p.send_signal(signal.SIGKILL)
        p.wait(30)
        assert gone(pid, 10), f"server {pid} outlived its parent ({how})"
    finally:
        if p.poll() is None:  # a failure above must not leave the hanging parent behind
            p.kill()
            p.wait(10)


def test_background_status_and_stop_via_cli(default_model, tmp_path):
    env = dict(os.environ, QWENKIT_CACHE=str(tmp_path))

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "qwenkit", *args], env=env, cwd=ROOT,
                              capture_output=True, text=True, timeout=120, check=False)

    r = cli("serve", "--background", "--port", "any", "--model", str(default_model), "--n_ctx", "512")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "http://127.0.0.1:" in r.stdout and "/v1" in r.stdout
    state = json.loads((tmp_path / "server" / "background.json").read_text())
    assert (tmp_path / "server" / "background.json").stat().st_mode & 0o077 == 0
    pid = state["pid"]
    try:
        assert server._pid_is_server(pid)  # it outlived the CLI that started it
        r = cli("serve", "--status")
        assert r.returncode == 0 and "answers: yes" in r.stdout
        r = cli("serve", "--stop")
        assert r.returncode == 0 and "stopped" in r.stdout
        assert gone(pid, 10)
        r = cli("serve", "--status")
        assert r.returncode == 1 and "no background server" in r.stdout
    finally:
        if server._pid_is_server(pid):
            os.kill(pid, signal.SIGKILL)


# ---- thinking ------------------------------------------------------------------------------------
def test_chat_template_kwargs_reach_the_template(served_thinking):
    """enable_thinking=false makes the Qwen3-style template close the think block in the prompt:
    the same messages cost more prompt tokens, so the argument really reached the template."""
    client = served_thinking.client()
    msgs = [{"role": "user", "content": "hello"}]
    plain = client.chat.completions.create(model=served_thinking.alias, messages=msgs, max_tokens=1)
    off = client.chat.completions.create(model=served_thinking.alias, messages=msgs, max_tokens=1,
                                         extra_body={"chat_template_kwargs": {"enable_thinking": False}})
    assert off.usage.prompt_tokens > plain.usage.prompt_tokens


def test_think_block_stripped_from_a_real_stream(served_thinking):
    """A stream that does contain a think block (forced with a grammar) comes out without it."""
    from qwenkit.summarize import ThinkFilter, strip_thinking

    client = served_thinking.client()
    grammar = 'root ::= "<think>" "plan" "</think>" "final answer"'
    raw, shown, flt = [], [], ThinkFilter()
    for chunk in client.chat.completions.create(
            model=served_thinking.alias, messages=[{"role": "user", "content": "hi"}], max_tokens=48,
            stream=True, extra_body={"grammar": grammar}):
        if chunk.choices and chunk.choices[0].delta.content:
            raw.append(chunk.choices[0].delta.content)
            shown.append(flt.feed(raw[-1]))
    shown.append(flt.flush())
    assert "<think>" in "".join(raw)
    assert "".join(shown) == "final answer" == strip_thinking("".join(raw))
