"""qwenkit.bench's shared benchmark parts on real processes: the kit's server and llama-server
as a pair (same model and flags, same context per slot), the logit_bias against
end-of-generation tokens, get_json; and benchmarks/concurrency.py's burst through a real pair."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from qwenkit import bench
from qwenkit.config import RunConfig

from repo_scripts import load_script

TOOLS = bench.find_tools(("llama-server",))
needs_tools = pytest.mark.skipif(TOOLS is None, reason="llama-server not built (scripts/build_tools.sh)")


def _live_children() -> set[int]:
    """This process's child processes (started by any of its threads) that have not ended."""
    pids = set()
    for f in Path(f"/proc/{os.getpid()}/task").glob("*/children"):
        pids |= {int(p) for p in f.read_text().split()}
    live = set()
    for pid in pids:
        try:
            state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            continue
        if state != "Z":
            live.add(pid)
    return live


def test_eog_bias_names_the_models_end_tokens(default_model):
    import llama_cpp
    bias = bench.eog_bias(str(default_model))
    assert bias and set(bias.values()) == {-100.0}
    llm = llama_cpp.Llama(str(default_model), vocab_only=True, verbose=False)
    try:
        assert str(llm.token_eos()) in bias
        assert str(llm.tokenize(b" the", add_bos=False)[0]) not in bias
    finally:
        llm.close()


def test_eog_bias_refuses_a_file_that_is_no_model(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a gguf")
    with pytest.raises(bench.BenchError, match="vocabulary"):
        bench.eog_bias(str(bad))


def test_get_json_reports_instead_of_raising():
    port = bench.free_port()  # nothing listens there
    got = bench.get_json(f"http://127.0.0.1:{port}/health", timeout=2)
    assert set(got) == {"error"}


def test_native_pair_args():
    assert bench.native_pair_args(1) == ["-np", "1"]
    assert bench.native_pair_args(4, ["--ctx-checkpoints", "0"]) == ["-np", "4", "--kv-unified",
                                                                      "--ctx-checkpoints", "0"]


@needs_tools
@pytest.mark.parametrize("together", [False, True])
def test_server_pair_same_context_per_slot(default_model, together):
    """Two slots each: the kit's server with parallel=2 of n_ctx, llama-server with -c 2 x n_ctx
    -np 2; concurrency.py's burst gets every user's 8 tokens from both (ends banned), and both
    are stopped on exit."""
    conc = load_script("benchmarks/concurrency.py", "bench_script_concurrency")
    cfg = RunConfig(model=str(default_model), n_ctx=512, n_threads=1, flash_attn=False)
    extra = {"logit_bias": bench.eog_bias(str(default_model))}
    with bench.server_pair(cfg, 2, TOOLS, together=together) as (kit, nat):
        assert kit.health()["slots"]["total"] == 2
        props = bench.get_json(f"http://127.0.0.1:{nat.port}/props")
        # -c is llama-server's total; with --kv-unified any slot may use all of it
        assert props["total_slots"] == 2 and props["default_generation_settings"]["n_ctx"] == 1024
        argv = nat.argv
        assert argv == nat.proc.args
        assert argv[argv.index("-c") + 1] == "1024" and argv[-3:] == ["-np", "2", "--kv-unified"]
        prompts = [conc.prompt_for("short", 0, i, 2, 0) for i in range(2)]
        for srv in (kit, nat):
            b = conc.burst(srv.base_url, prompts, 8, srv.headers(), extra)
            assert b["errors"] == 0 and b["all_length"] and b["equal_tokens"], b
            assert b["completion_tokens"] == 16 and b["aggregate_tps"] > 0
    assert nat.proc.poll() is not None
    assert kit.health() == {}


def test_server_pair_stops_the_kit_when_llama_server_cannot_start(default_model, tmp_path):
    """Loading together, one side failing: its error is raised and the other side is stopped."""
    cfg = RunConfig(model=str(default_model), n_ctx=256, n_threads=1)
    before = _live_children()
    with pytest.raises(bench.BenchError, match="llama-server is not built"):
        with bench.server_pair(cfg, 2, tmp_path, together=True):
            pytest.fail("the pair started without llama-server")
    assert _live_children() - before == set()


def test_concurrency_client_ceiling_counts_every_event():
    """The stand-in server's events through the same client code: all of them, a rate above 0."""
    conc = load_script("benchmarks/concurrency.py", "bench_script_concurrency")
    c = conc.client_ceiling(3, 50)
    assert c["users"] == 3 and c["events_per_s"] > 0 and c["wall_s"] > 0
