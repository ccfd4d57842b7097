"""Server fixtures: one real server process per test session on the small default model
(127.0.0.1, a free port, n_ctx 1024), shared by the server and summarize tests, and one on a
tiny synthetic qwen35moe with a chat template that honours `enable_thinking`."""
from __future__ import annotations

import pytest

SERVER_N_CTX = 1024
# One thread: on a machine whose cores are shared (CI, other test runs), llama.cpp's threads
# spin at barriers and a 2-thread decode can drop 50x when a core is taken; one does not.
SERVER_THREADS = 1
# Two sequence slots: the shared servers exercise continuous batching in every server test,
# and 8 concurrent clients fit (2 running + the queue's 4 x 2).
SERVER_SLOTS = 2


@pytest.fixture(scope="session")
def served(default_model, tmp_path_factory):
    """A running ServerProcess (default model, n_ctx 1024, port 'any'); stopped at session end."""
    from qwenkit import server
    from qwenkit.config import RunConfig

    log = tmp_path_factory.mktemp("server") / "server.log"
    srv = server.start(RunConfig(model=str(default_model), n_ctx=SERVER_N_CTX, n_threads=SERVER_THREADS,
                                 parallel=SERVER_SLOTS), port="any",
                       log_path=log, ready_timeout=120)
    yield srv
    srv.stop()


@pytest.fixture(scope="session")
def served_thinking(tmp_path_factory):
    """A server on the tiny random qwen35moe whose template adds an empty think block when
    `enable_thinking` is false (Qwen3-style)."""
    from qwenkit import server, synthetic
    from qwenkit.config import RunConfig

    path = synthetic.write_model(tmp_path_factory.mktemp("thinking") / "qwen35moe-tiny.gguf",
                                 arch="qwen35moe", size="tiny", weights="random",
                                 chat_template=synthetic.THINKING_CHAT_TEMPLATE, progress=False)
    srv = server.start(RunConfig(model=str(path), n_ctx=512, n_batch=512, n_threads=SERVER_THREADS,
                                 parallel=SERVER_SLOTS), port="any",
                       log_path=path.with_suffix(".log"), ready_timeout=120)
    yield srv
    srv.stop()
