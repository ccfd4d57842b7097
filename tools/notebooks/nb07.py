import sys; sys.path.insert(0, ".")
from tools.nb import write

write("notebooks/07_benchmark.ipynb", [
("md", """
# 07 · Benchmark: measure the recipe's claims instead of believing them

**What you learn:** how to measure prompt processing (pp) and generation (tg) speed the way llama.cpp's
own `llama-bench` does, so your numbers compare with everyone else's; where a Python program loses speed
against llama.cpp (and how the kit gets it back); what a server costs on top; whether a quantized KV
cache ("q8_0 is a free lunch that speeds up inference") really speeds anything up; and what it costs in
quality, measured as perplexity and KL divergence the way llama.cpp's `llama-perplexity` does.

**Time:** about 2 minutes with the parameters below on the small default model; a real run (r=5, p=512,
n=128) on Qwen3.5-35B-A3B takes 5-10 minutes. **Needs:** the kit installed (`make setup`). Optional:
llama.cpp's own tools built from the same sources (`scripts/build_tools.sh`, ~10 minutes once on 2 cores)
for the side-by-side comparison; without them those cells say how to get them and move on.
"""),
("code", """
# Parameters (the test suite overrides these; raise them for real measurements)
MODEL_PATH = None        # None: the small default model (SmolLM2-135M-Instruct); or your Qwen3.5-35B-A3B GGUF
N_PROMPT = 64            # llama-bench's default is 512
N_GEN = 16               # llama-bench's default is 128
REPS = 2                 # llama-bench's default is 5
LONG_DEPTH = 256         # tokens already in the cache for the "long context" measurements (try 16384)
SERVER = True            # also measure the kit's server (streamed, as a client sees it)
KV_TYPES = ["f16/f16", "q8_0/q8_0", "q4_0/q4_0", "q8_0/f16"]
PPL_CTX = 128            # perplexity chunk size (llama-perplexity's usual is 512)
PPL_CHUNKS = 2           # None: the whole bundled text
N_THREADS = None         # None: every core
SAVE_JSON = None         # a path to keep the results (e.g. "bench.json")
"""),
("md", """
## 1. How llama-bench measures, and the same measurement from Python

llama-bench runs one warm-up, then `r` repetitions. Each repetition **clears the KV cache**, optionally
fills it to a depth without timing it, then times either a prompt of `p` random tokens decoded in
batches (**pp**: prompt processing, compute-bound) or `n` single-token decodes (**tg**: generation,
memory-bandwidth-bound, what you feel while text streams). The figure is the mean ± standard deviation
of the per-repetition rates. `qwenkit.bench.bench` does exactly that on a model loaded in this kernel.
"""),
("code", """
from qwenkit import bench, quality
from qwenkit.config import RunConfig, default_threads
from qwenkit.engine import load
from qwenkit.models import default_model_path

model = str(MODEL_PATH or default_model_path())
cfg = RunConfig(model=model, n_ctx=max(1024, N_PROMPT + N_GEN + LONG_DEPTH + 64),
                n_threads=N_THREADS or default_threads())
print(cfg.summary())
llm = load(cfg)
results = bench.bench(llm, p=N_PROMPT, n=N_GEN, r=REPS, path="kit", config=cfg)
for r in results:
    print(r)
"""),
("md", """
## 2. Where a Python program loses speed

Three ways to generate on the same loaded model:

- **decode**: llama-bench's own loop through the Python binding (random tokens, no sampling): the ceiling.
- **kit**: `qwenkit.fastgen`, the kit's generation loop: decode, pick the most likely token (an argmax
  straight on llama.cpp's logits buffer), turn it into text incrementally. Everything a real answer needs.
- **llama-cpp-python**: the package's own `Llama.generate`. Its per-token Python work (a sampler
  chain rebuilt per call, token bookkeeping) costs time. Its `create_completion`, which every server
  request goes through, re-detokenizes the *whole* answer after every token, so it gets slower the
  longer the answer.
"""),
("code", """
paths = []
for path in bench.PATHS:
    paths += bench.bench(llm, p=N_PROMPT, n=N_GEN, r=REPS, path=path, config=cfg)
ceiling = {r.test: r for r in paths if r.path == "decode"}
print(bench.table(paths, baseline=lambda r: ceiling.get(r.test)))
bench.plot(paths, title="same model, three generation paths");
"""),
("md", """
## 3. Side by side with llama.cpp's own tools

A fair comparison needs the **same model, the same llama.cpp build and the same flags**.
`scripts/build_tools.sh` builds `llama-bench` and `llama-server` from the very sources that
llama-cpp-python compiled, with the same CPU (or CUDA) flags.
"""),
("code", """
tools = bench.find_tools()
if tools is None:
    print("llama.cpp's tools are not built. Once, in a terminal:  bash scripts/build_tools.sh")
    lb = []
else:
    lb = bench.run_llama_bench(cfg, p=N_PROMPT, n=N_GEN, r=REPS, bin_dir=tools)
    ref = {r.test: r for r in lb}
    print(bench.table(lb + [r for r in paths if r.path == "kit"], baseline=lambda r: ref.get(r.test)))
"""),
("md", """
## 4. Through a server, as a client sees it

The kit's server streams tokens over HTTP (Server-Sent Events). The client measures the decode rate as
tokens between the first and the last streamed chunk per second, and the time to the first token. The
same measurement works against llama.cpp's native `llama-server` and `python -m llama_cpp.server`.
"""),
("code", """
served = []
if SERVER:
    llm.close()  # one model at a time on a small machine
    with bench.kit_server(cfg) as srv:
        served.append(bench.bench_server(srv.base_url, n=N_GEN, r=REPS, label="kit server",
                                         headers=srv.headers(), config=bench.config_fields(cfg)))
    if tools is not None:
        with bench.NativeServer(cfg, bin_dir=tools) as ns:
            served.append(bench.bench_server(ns.base_url, n=N_GEN, r=REPS, label="llama-server",
                                             config=bench.config_fields(cfg)))
    for r in served:
        print(r, " time to first token:", ", ".join(f"{t:.3f} s" for t in r.extra["ttft_s"]))
"""),
("md", """
Where a Python server loses time, per token (measured; `benchmarks/RESULTS.md`):

- **Sampling settings the client never asked for.** `llama_cpp.server` applies `repeat_penalty=1.1` to
  every request that leaves it out: a penalty pass and a sampler over the whole 248K vocabulary per
  token, where greedy decoding needs one argmax. On an H200 that alone cut the kit's server to 0.79 of
  `llama-server`. The kit's server uses llama.cpp's default (1.0, off) unless the request sends one.
- **The event loop's work per token** (SSE framing, ASGI, HTTP): with uvloop + httptools it is small,
  and on a machine whose every core runs the model the kit groups a stream's tokens into one write per
  25 ms (each token is still its own event; the first and the last go out at once).
- Result on the full-size model on an H200: the kit's server streams at 1.12x `llama-server`
  (its decode loop is leaner than llama-server's slot machinery); on 2 CPU cores, at parity.
"""),
("md", """
## 5. Does a quantized KV cache speed things up?

The recipe says KV q8_0 "speeds up inference". A quantized cache is **smaller**; reading it needs
dequantizing, which costs compute. Measure decode at an empty cache and at a long depth, for each KV pair:
"""),
("code", """
pairs = [tuple(x.split("/")) for x in KV_TYPES]
kv_rows = []
for k, v in pairs:
    c = cfg.replace(type_k=k, type_v=v)
    for d in (0, LONG_DEPTH):
        for r in bench.bench(c, p=0, n=N_GEN, r=REPS, d=d, path="kit"):
            r.extra["setting"] = f"{k}/{v}"
            kv_rows.append(r)
f16 = {r.test: r for r in kv_rows if r.extra["setting"] == "f16/f16"}
print(bench.table(kv_rows, baseline=lambda r: f16.get(r.test), columns=["type_k", "type_v"]))
"""),
("md", """
## 6. ... and what does it cost in quality?

Perplexity (how surprised the model is by a text; lower is better) and the KL divergence between the
token distributions with a quantized cache and with the f16 cache, computed the way `llama-perplexity`
does: the bundled text cut into chunks of `PPL_CTX` tokens, each scored on its second half.
"""),
("code", """
q = quality.kv_quality(cfg, kv=pairs, n_ctx=PPL_CTX, n_chunks=PPL_CHUNKS, text=quality.bundled_text("en"))
speed = {}
for k, v in pairs:
    lab = f"{k}/{v}"
    for d in (0, LONG_DEPTH):
        t = bench.test_name(0, N_GEN, d)
        mine = next(r for r in kv_rows if r.extra["setting"] == lab and r.test == t)
        speed.setdefault(lab, {})[f"tg @ d{d} vs f16"] = mine.mean / f16[t].mean
print(quality.table(q, speed))
"""),
("md", """
## 7. What to take away

- On this model the KV cache is small (Qwen3.5-35B-A3B: only 10 of 40 layers hold one; f16 at 8K
  context is 160 MiB): quantizing it **buys memory, not speed**. Use q8_0 when memory is short; its
  quality cost is small, q4_0's larger.
- Measure your own machine with the same tools: `python -m qwenkit bench` (add `--llama-bench`,
  `--server`, `--sweep type_k=f16,q8_0`, `--quality`), and compare with `benchmarks/RESULTS.md`,
  which holds the kit's committed measurements (2-core CPU and H200).
"""),
("code", """
if SAVE_JSON:
    bench.save_json(results + paths + lb + served + kv_rows, SAVE_JSON, quality=[r.to_dict() for r in q])
    print("saved", SAVE_JSON)
"""),
])
