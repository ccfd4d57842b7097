"""Speed measurements comparable with llama.cpp's own tools.

In-kernel (`bench`, `sweep`: qwenkit.bench.runner), the way llama-bench measures, on three
paths of one loaded model: "decode" (llama-bench's own loop through the binding), "kit" (the
kit's generation loop) and "llama-cpp-python" (stock `Llama.generate`).

Through a server (`bench_server`, `stream_completion`: qwenkit.bench.sse): streamed
/v1/completions, greedy, client-side: decode tok/s = (chunks - 1) / (time of last chunk - time
of first chunk), time to first token, with a plain http.client SSE reader (no openai package
needed). Works against the kit's server, `python -m llama_cpp.server` and llama.cpp's native
`llama-server` alike.

    from qwenkit import bench
    res = bench.bench(cfg, r=5)                          # [pp512, tg128] for path="kit"
    print(bench.table(res))
    rows = bench.sweep(cfg, "type_k", ["f16", "q8_0"], r=3)
    bench.plot(rows, x="type_k")
    bench.save_json(rows, "sweep.json")

llama.cpp's tools (llama-bench, llama-server) built from the same sources: `find_tools()`,
`run_llama_bench(...)`, `NativeServer(...)` (scripts/build_tools.sh builds them).

Modules, one job each:
  results    BenchResult, BenchError, test names, merging repetitions, the JSON result file
  runner     in-kernel measurement (bench, sweep, loaded)
  sse        the streaming client (stream_completion, bench_server, open_stream) and get_json
  tools      llama.cpp's built tools: find_tools, run_llama_bench
  processes  server processes: NativeServer (llama-server), StockServer (llama_cpp.server),
             kit_server, free_port
  pairs      the kit's server and llama-server side by side with the same model and flags
  models     the synthetic GPU model, a logit_bias against end-of-generation tokens
  machine    machine_info (where a result was measured), gpu_slug, cpu_seconds
  tables     markdown / HTML tables;  plots: bar charts
The llama-bench / llama-server flags for a RunConfig are RunConfig's own (llama_bench_args(),
llama_server_args()): nothing here renders them.
"""
from __future__ import annotations

from qwenkit.bench.machine import cpu_seconds, gpu_slug, machine_info
from qwenkit.bench.models import SYNTHETIC_MODEL_NAME, eog_bias, synthetic_model
from qwenkit.bench.pairs import native_pair_args, server_pair
from qwenkit.bench.plots import plot
from qwenkit.bench.processes import NativeServer, StockServer, free_port, kit_server, start_llama_server
from qwenkit.bench.results import (
    CONFIG_FIELDS,
    BenchError,
    BenchResult,
    config_fields,
    load_json,
    merge,
    save_json,
    test_name,
)
from qwenkit.bench.runner import MAX_REPS, PATHS, bench, loaded, sweep
from qwenkit.bench.sse import (
    DEFAULT_SERVER_PROMPT,
    StreamStats,
    bench_server,
    get_json,
    open_stream,
    stream_completion,
)
from qwenkit.bench.tables import fmt_rate, html, markdown_table, table
from qwenkit.bench.tools import find_tools, run_llama_bench, tool_env, tool_path

__all__ = [
    "CONFIG_FIELDS", "DEFAULT_SERVER_PROMPT", "MAX_REPS", "PATHS", "SYNTHETIC_MODEL_NAME",
    "BenchError", "BenchResult", "NativeServer", "StockServer", "StreamStats",
    "bench", "bench_server", "config_fields", "cpu_seconds", "eog_bias", "find_tools", "fmt_rate", "free_port",
    "get_json", "gpu_slug", "html", "kit_server", "load_json", "loaded",
    "machine_info", "markdown_table", "merge", "native_pair_args", "open_stream", "plot", "run_llama_bench",
    "save_json", "server_pair", "start_llama_server", "stream_completion", "sweep", "synthetic_model",
    "table", "test_name", "tool_env", "tool_path",
]
