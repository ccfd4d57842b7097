"""The kit server's per-token path: llama-server's sampling defaults, the GIL-keeping calls,
and the hand-off from the generation thread to the event loop (all on real parts)."""
from __future__ import annotations

import asyncio
import threading

import pytest

from qwenkit import bench, fastgen
from qwenkit.serve_entry import LLAMA_SERVER_DEFAULTS

REPEATS = "The list of words: apple, apple, apple, apple,"


def test_left_out_repeat_penalty_is_llama_servers_default(served):
    """A request without repeat_penalty is not penalized (llama-server's 1.0, not
    llama_cpp.server's 1.1); one that sends it gets what it sent."""
    assert LLAMA_SERVER_DEFAULTS["repeat_penalty"] == 1.0

    def text(extra=None):
        return bench.stream_completion(served.base_url, REPEATS, 24, headers=served.headers(), extra=extra).text

    left_out, off, on = text(), text({"repeat_penalty": 1.0}), text({"repeat_penalty": 1.1})
    assert left_out == off
    assert on != off  # the greedy answer repeats "apple"; a penalty breaks the run
    assert left_out.count("apple") > on.count("apple")


def test_left_out_repeat_penalty_non_streamed_chat(served):
    import json
    import urllib.request
    msgs = [{"role": "user", "content": "Repeat after me: apple, apple, apple, apple, apple"}]

    def answer(extra):
        body = {"messages": msgs, "max_tokens": 24, "temperature": 0, **extra}
        req = urllib.request.Request(served.base_url + "/chat/completions", json.dumps(body).encode(),
                                     {"Content-Type": "application/json", **served.headers()})
        with urllib.request.urlopen(req, timeout=120) as r:
            return json.loads(r.read())["choices"][0]["message"]["content"]

    assert answer({}) == answer({"repeat_penalty": 1.0})


def test_held_calls_keep_the_gil_and_agree_with_the_bindings(llm_small):
    import llama_cpp
    held = fastgen.held_calls()
    assert held.holds_gil  # Linux: the library opens again as a PyDLL
    vocab = llm_small._model.vocab
    for tok in (0, 1, 42, 1000):
        assert bool(held.llama_vocab_is_eog(vocab, tok)) == bool(llama_cpp.llama_vocab_is_eog(vocab, tok))
    det = fastgen._Detok(vocab)
    assert det.piece(1000) == llm_small.detokenize([1000])


def test_handoff_delivers_everything_in_order_across_threads():
    async def main():
        loop = asyncio.get_running_loop()
        h = fastgen.Handoff(loop)
        assert h._write is not None  # the pipe path, not the fallback
        n = 5000  # more wake-up bytes than a pipe buffer holds when the loop is slow to drain

        def producer():
            for i in range(n):
                h.put(i)
            h.put(None)

        t = threading.Thread(target=producer)
        t.start()
        got = []
        while True:
            items = await h.get_all()
            assert items
            got += items
            if got[-1] is None:
                break
        t.join()
        fds = (h._r, h._w)
        h.close()
        return got, fds, h

    got, fds, h = asyncio.run(main())
    assert got == list(range(5000)) + [None]
    assert h._r == h._w == -1
    import os
    for fd in fds:
        with pytest.raises(OSError):
            os.fstat(fd)


def test_handoff_without_a_pipe_falls_back(monkeypatch):
    monkeypatch.setattr(fastgen, "_held_write", lambda: None)

    async def main():
        h = fastgen.Handoff(asyncio.get_running_loop())
        assert h._write is None
        threading.Thread(target=lambda: [h.put(i) for i in range(100)]).start()
        got = []
        while len(got) < 100:
            got += await h.get_all()
        h.close()
        return got

    assert asyncio.run(main()) == list(range(100))


@pytest.fixture(scope="module")
def llm_small(default_model):
    from qwenkit.config import RunConfig
    from qwenkit.engine import load
    llm = load(RunConfig(model=str(default_model), n_ctx=256, n_threads=1))
    yield llm
    llm.close()
