"""Source of notebooks/04_serve.ipynb and notebooks/05_summarize.ipynb (regenerate with `python tools/nb.py`)."""

_NB04 = [
("md", """# 04 · Serve the model: an OpenAI-compatible API on your own machine

**What you learn:** how to start the kit's OpenAI-compatible server from a `RunConfig` so that
the recipe's client (`OpenAI(base_url="http://127.0.0.1:8000/v1", api_key="anything")`) works as
written, which of `llama_cpp.server`'s defaults hurt (memory, speed, streams cut off, exposure to
web pages) and how the kit avoids each one, how one GPU serves a room of users at once (sequence
slots), and how to check, log and stop the server.

**Time:** under a minute with the small default model on a 2-core machine (measured: 6 s quiet,
30 s while other programs took 1.35 of its 2 cores; section 6's chat adds two loads of the model
and about 3,800 prompt tokens: 11 s measured, 66 s while other programs took most of the cores); loading Qwen3.5-35B-A3B adds its load time (tens of
seconds from a fast disk). **Needs:** the kit installed (`make setup`). A GPU is optional;
put the model you downloaded in notebook 02 (and the config you fitted in notebook 03) in the
parameters below.

**What the small default model can and cannot do.** Without a model of your own, this notebook
serves SmolLM2-135M-Instruct, a 135-million-parameter stand-in (Qwen3.5-35B-A3B has 35 billion)
that installs from the package index and runs on any CPU. It follows the chat format and writes
fluent English, so everything about *serving* (the API, streaming, keys, concurrent clients, the
log) works and is shown with it. It knows little: its answers are often wrong or invented, and it
writes only English. The server calls whatever it serves `qwen3.5-35b` (the name the recipe's
client asks for). Put your Qwen3.5 GGUF in `MODEL_PATH` and the same cells give the real model's
answers."""),
("code", """# Parameters (the test suite overrides these)
MODEL_PATH = None    # None: the small default model (SmolLM2-135M-Instruct); or your Qwen3.5 GGUF
CONFIG_PATH = None   # a RunConfig saved by notebook 03 / 06 (JSON); wins over MODEL_PATH and N_CTX
N_CTX = 2048         # context size for this demo; the recipe uses 8192
PORT = "any"         # 8000 is the recipe's; "any" takes the first free port from 8000 up
MAX_TOKENS = 64      # tokens per answer in this notebook
N_CONCURRENT = 4     # streams started at the same time in section 5
CHAT_TURNS = 4       # chat turns of about 250 tokens each in section 6"""),
("md", """## 1. One configuration, rendered for the server

The recipe starts the server with `python -m llama_cpp.server --cache_type_k q8_0 --n_gpu_layers -1
--flash_attn True --n_ctx 8192 ...`. Two things in such a command are wrong for llama-cpp-python
0.3.36: `--cache_type_k` is not one of its flags (`--cache_type` is the *prompt* cache; the KV types
are `--type_k/--type_v` with GGML type ids), and the server's defaults that the command leaves alone
cost memory and speed: `logits_all=True` (a float32 array of n_ctx x vocabulary: about 2 GB at
2048 tokens for Qwen3.5's 248K vocabulary), half the CPU cores, and `interrupt_requests=True`
(a new request silently ends the answer still streaming).

`from_recipe_flags` translates the recipe's flags; `server_args()` shows what the server gets."""),
("code", """from pathlib import Path

from qwenkit.config import RunConfig, from_recipe_flags
from qwenkit.models import default_model_path

model = MODEL_PATH or str(default_model_path())
recipe, _, notes = from_recipe_flags(
    f"--model {model} --cache_type_k q8_0 --n_gpu_layers -1 --flash_attn True --n_ctx 8192")
print("recipe flags ->", recipe.summary())
for n in notes:
    print("  note:", n)

cfg = RunConfig.load(CONFIG_PATH) if CONFIG_PATH else RunConfig(model=model, n_ctx=N_CTX)
print("\\nthis notebook's config:", cfg.summary())
print("server arguments:", " ".join(cfg.server_args()))"""),
("md", """## 2. Start it (safe by default)

`server.start(cfg)` runs the server in a **child process** (a crash in llama.cpp, such as a CUDA
out-of-memory abort, cannot take this notebook's kernel with it) and waits until `GET /v1/models`
answers. On the way it:

- binds **127.0.0.1** only, and checks the address it really listens on;
- reports a port already in use *before* the model loads (llama_cpp.server itself loads the whole
  model first and only then fails);
- passes settings through a clean environment: `HOST=0.0.0.0` or `API_KEY=...` in your shell do
  not reach it (llama_cpp.server lets such variables override its flags);
- writes everything, llama.cpp's own messages included, to a log file."""),
("code", """from qwenkit import server

srv = server.start(cfg, port=PORT)   # prints the URL (and the key, when there is one)
print(srv)
print("context size the server really has:", srv.n_ctx)"""),
("md", """## 3. The recipe's client, as written

No key is needed on 127.0.0.1 (section 4 explains why that is safe here), so any `api_key`
string works, and the model name the recipe asks for, `qwen3.5-35b`, is the server's alias."""),
("code", """import time

from openai import OpenAI

client = OpenAI(base_url=srv.base_url, api_key="anything", timeout=120, max_retries=1)
print([m.id for m in client.models.list().data], "-> serving the file", Path(cfg.model).name)

t0 = time.perf_counter()
r = client.chat.completions.create(
    model="qwen3.5-35b", max_tokens=MAX_TOKENS, temperature=0.2,
    messages=[{"role": "user", "content": "In two sentences: what is a KV cache?"}])
print(r.choices[0].message.content)
print(f"{r.usage.prompt_tokens} prompt + {r.usage.completion_tokens} completion tokens "
      f"in {time.perf_counter() - t0:.2f} s")"""),
("md", """Streaming shows tokens as they come. The decode speed below is measured by the client:
tokens after the first, divided by the time after the first. (With the 135M stand-in, read the
answer for *how* it arrives, not for what it says about GGUF.)"""),
("code", """t0, first, n = time.perf_counter(), None, 0
for chunk in client.chat.completions.create(
        model="qwen3.5-35b", max_tokens=MAX_TOKENS, stream=True,
        messages=[{"role": "user", "content": "Explain GGUF in three short sentences."}]):
    piece = chunk.choices[0].delta.content if chunk.choices else None
    if piece:
        first = first or time.perf_counter()
        n += 1
        print(piece, end="", flush=True)
end = time.perf_counter()
print(f"\\n\\nfirst token after {first - t0:.2f} s; decode {(n - 1) / max(end - first, 1e-9):.1f} tok/s "
      f"({n} streamed pieces)")"""),
("md", """## 4. Why no key is needed on 127.0.0.1, and when one is

A server on 127.0.0.1 is not reachable from other machines, but a web page you visit *is*
running on your machine: with llama_cpp.server's defaults (any `Host` header, CORS `*`), a page can
point a hostname of its own at 127.0.0.1 ("DNS rebinding") and drive the model. The kit's entry
point accepts only `localhost` Host headers and no foreign `Origin`, so such requests are refused:"""),
("code", """import httpx

ok = httpx.get(srv.base_url + "/models")
rebinding = httpx.get(srv.base_url + "/models", headers={"Host": "attacker.example"})
web_page = httpx.post(srv.base_url + "/chat/completions", headers={"Origin": "https://attacker.example"},
                      json={"messages": [{"role": "user", "content": "hi"}], "max_tokens": 1})
print("normal request:         ", ok.status_code)
print("foreign Host (rebinding):", rebinding.status_code, rebinding.json()["error"]["message"])
print("foreign web Origin:      ", web_page.status_code, web_page.json()["error"]["message"])"""),
("md", """Any other address (`host="0.0.0.0"` to share the model on your network) needs
`allow_remote=True` **and** an API key; requests without `Authorization: Bearer <key>` then get
401, the API docs pages included. `server.new_api_key()` makes a key, and `srv.client()` knows it:

```python
lan = server.start(cfg, host="0.0.0.0", allow_remote=True, api_key=server.new_api_key())
print(lan.describe())          # prints the key; give it to the clients that may use the model
```"""),
("code", """from qwenkit.errors import ServerError

try:
    server.start(cfg, host="0.0.0.0")
except ServerError as e:
    print(type(e).__name__, "-", e)"""),
("md", """## 5. One GPU, a room of users

The kit's server decodes several requests **together**: it has `parallel` sequence slots, and
each step of the model is one `llama_decode` that holds the next token of every answer being
written plus a piece of a waiting prompt. A model that reads its weights once per step (decoding
is limited by memory bandwidth) then writes several answers for little more than the cost of one.
`n_ctx` is per slot. With one slot, requests wait their turn in a queue.

Below, the same users ask at the same moment: first the server started above (its slots are
shown), then one with `parallel = N_CONCURRENT`. Look at the worst time to first token and the
aggregate rate. On a CPU-only machine the kit's default is one slot (one answer already takes
every core), so the gain here is small; on a GPU it is large (H200, Qwen3.5-35B-A3B-sized model,
8 users: 474 tok/s together against 227 for one stream, 2.5x llama-server's 191, `benchmarks/RESULTS.md`)."""),
("code", """from qwenkit import users

print("slots of the first server:", srv.health()["slots"])
one = users.at_once(srv, N_CONCURRENT, max_tokens=MAX_TOKENS // 2)
one"""),
("code", """with server.start(cfg.replace(parallel=N_CONCURRENT), port="any", quiet=True) as srv_n:
    print("slots:", srv_n.health()["slots"])
    many = users.at_once(srv_n, N_CONCURRENT, max_tokens=MAX_TOKENS // 2)
    print("sequences per decode, mean / largest:", srv_n.health()["decode"]["mean_sequences"],
          "/", srv_n.health()["decode"]["max_sequences"])
many"""),
("code", """def worst(c):
    return max(u.ttft_s for u in c.users)


print(f"worst time to first token: {worst(one):.2f} s with {one.slots} slot(s), "
      f"{worst(many):.2f} s with {many.slots}")
print(f"aggregate: {one.aggregate:.1f} tok/s with {one.slots} slot(s), {many.aggregate:.1f} tok/s with {many.slots}")
assert all(u.finish for u in one.users + many.users), 'an answer ended without a finish_reason'"""),
("md", """## 6. Why turn 2 is fast

A chat client sends the whole conversation again with every message. The kit keeps what it
already prefilled: the prompt tokens of the previous turn (the attention KV cache of a dense
model; on Qwen3.5, whose recurrent DeltaNet state cannot be cut back, also a checkpoint of that
state taken 4 tokens before each prompt's end) are reused, and only the new message is read.
The server reports them as `usage.prompt_tokens_details.cached_tokens`; the in-kernel
`ChatSession` below uses the same scheduler. Two sessions on the same model ask the same
turns, one with the cache and one with `reuse=False` (each prompt read from its first token);
each turn adds about 250 tokens of the sample document. Flash attention is off so that the
two give the same greedy answers (on a CPU it is not bit-identical when a prompt is read in
different pieces)."""),
("code", """from itertools import pairwise

import matplotlib.pyplot as plt

from qwenkit.data import sample_text
from qwenkit.serving.chat import ChatSession

doc = sample_text("en")
turns = [f"Here is part {k + 1} of my notes:\\n\\n{doc[k * 1000:(k + 1) * 1000].strip()}\\n\\nWhat is its main point?"
         for k in range(CHAT_TURNS)]
chat_cfg = cfg.replace(n_ctx=2048, flash_attn=False)
runs = {}
for name, reuse in (("cache on", True), ("cache off", False)):
    with ChatSession(chat_cfg, system="You are a helpful assistant.", max_tokens=16, reuse=reuse) as chat:
        runs[name] = [chat.ask(t) for t in turns]

on, off = runs["cache on"], runs["cache off"]
print(f"{'turn':>4} {'prompt':>7} {'cached':>7} {'TTFT on':>8} {'TTFT off':>9}")
for k, (a, b) in enumerate(zip(on, off, strict=True), 1):
    print(f"{k:>4} {a.prompt_tokens:>7} {a.cached_tokens:>7} {a.ttft_s:>7.2f}s {b.ttft_s:>8.2f}s")
print("cached tokens with the cache off:", [b.cached_tokens for b in off])
print("same answers with and without the cache:", [a.text for a in on] == [b.text for b in off])

x = range(1, len(turns) + 1)
fig, ax = plt.subplots(figsize=(6, 3))
ax.plot(x, [a.ttft_s for a in off], "o-", label="cache off: the whole conversation each turn")
ax.plot(x, [a.ttft_s for a in on], "o-", label="cache on: only the new message")
ax.set(xlabel="turn", ylabel="time to first token (s)", xticks=list(x), title="Time to first token per chat turn")
ax.set_ylim(bottom=0)
ax.legend(fontsize=8)
plt.show()
assert all(a.cached_tokens >= b.prompt_tokens - 8 for b, a in pairwise(on)), "turn 2+ should reuse the last prompt"
assert all(b.cached_tokens == 0 for b in off)"""),
("md", """Turn 1 costs the same either way. From turn 2 on, the cached chat reads only its new
message, so its time to first token stays flat while the uncached one grows with the
conversation (2-core CPU, measured: turns 1-4 took 0.57, 0.65, 0.73, 0.85 s with the cache and
0.58, 1.23, 1.95, 2.64 s without, the answers the same; the times jump about when other programs
take the cores). On a
16 GB card with Qwen3.5's experts in system RAM, a 20K-token conversation costs tens of seconds
a turn without the cache (`benchmarks/RESULTS.md` has the H200 and CPU measurements)."""),
("md", """### Many chats, one system prompt

A room of users talks to one assistant, and every chat starts with the same long system prompt.
The server reads it once: a new chat copies it from whichever slot holds it, even one still
answering someone else (on Qwen3.5 from a checkpoint taken where the first user message begins),
and chats that arrive together let one of them read it while the others wait for the copy.
`benchmarks/multiturn.py --scenarios shared-busy` measures it: on the 2-core CPU, 0.31 s to the
first token against llama-server's 2.97 s (it reuses a prefix only from an idle slot)."""),
("code", """system = "You answer questions about the notes below.\\n\\n" + doc[:3000]
client = srv.client()
reused = []
for who in ("Ann", "Bo", "Cy"):
    r = client.chat.completions.create(model="any", max_tokens=8, temperature=0, messages=[
        {"role": "system", "content": system}, {"role": "user", "content": f"I am {who}. What is the main point?"}])
    reused.append(r.usage.prompt_tokens_details.cached_tokens)
    print(f"{who}: {r.usage.prompt_tokens} prompt tokens, {reused[-1]} of them reused")
assert min(reused[1:]) >= r.usage.prompt_tokens - 32, 'later chats should reuse the system prompt'"""),
("md", """## 7. The log, and stopping

The log holds llama.cpp's messages (model load, memory, per-request timings) and one line per request.
When a server does not come up (a wrong path, a truncated download, out of memory), `server.start`
raises an error that quotes the last lines of this log, and nothing is left running."""),
("code", """print(srv.log_path)
print(srv.log_tail(12))"""),
("md", """`srv.stop()` ends the server (terminate, wait, kill if it has to); `with server.start(cfg) as srv:`
does it at the end of the block, and a server is also stopped when this kernel exits.

To keep a server running outside a notebook, use the command line:

```
python -m qwenkit serve --config my_run.json --background    # prints the URL (and key, if any)
python -m qwenkit serve --status
python -m qwenkit serve --stop
```"""),
("code", """srv.stop()
print("running:", srv.alive())"""),
]

_NB05 = [
("md", """# 05 · Summarize long technical documents through the server

**What you learn:** the recipe's payoff, summarizing a long technical document through the local
OpenAI-compatible API, done so that it works on documents far longer than the context:
split at paragraph and sentence boundaries (Japanese `。` too), counted with the model's own
tokenizer, summarized part by part and combined (map-reduce), streamed as it is written, with the
numbers that tell you how fast it ran.

**Time:** about 15 seconds with the small default model on a quiet 2-core CPU machine (measured:
13 s for the notebook, 10 s for the summary, which reads about 3,100 prompt tokens and writes about
300). While other programs kept one of the two cores busy, we measured 100 s for the notebook and
up to 270 s for the summary: section 3 prints the time next to the statement and says whether your
machine was quiet. With Qwen3.5-35B-A3B on a GPU, about as long as
its answer takes to write.

**What the small default model can and cannot do.** Without a model of your own, this notebook
runs SmolLM2-135M-Instruct, a 135-million-parameter stand-in: the whole pipeline (splitting by
the model's own tokenizer, map-reduce, streaming, the numbers) is real, but the summary is not.
The small model writes only English, gets facts wrong and, left alone, repeats one sentence until
`max_tokens` stops it. The kit's loop guard catches that while it streams (section 3). Put your
Qwen3.5 GGUF in `MODEL_PATH` and the same code writes a real summary, in Japanese too. **Needs:** the kit installed (`make setup`); notebook 04
explains the server. The bundled sample documents are technical texts (Japanese and English)
about GGUF and memory for local inference, written for this kit."""),
("code", """# Parameters (the test suite overrides these)
MODEL_PATH = None    # None: the small default model (SmolLM2-135M-Instruct); or your Qwen3.5 GGUF
CONFIG_PATH = None   # a RunConfig saved by notebook 03 / 06 (JSON); wins over MODEL_PATH and N_CTX
DOCUMENT = None      # a text file to summarize; None: the bundled sample in LANGUAGE
LANGUAGE = None      # "ja" (the recipe's) or "en"; None: "en" for the small default model
                     # (SmolLM2-135M writes only English), "ja" for any other model
N_CTX = 2048         # the server's context; the recipe uses 8192
MAX_TOKENS = 128     # the recipe uses 1000; small here so the small model finishes quickly
TEMPERATURE = None   # None: 0.0 for the small default model, the summarizer's 0.2 otherwise
STATED_SECONDS = (5, 30)    # what a quiet 2-core machine takes for section 3's summary (measured 10 s)"""),
("md", """## 1. A server and a document"""),
("code", """from pathlib import Path

from qwenkit import server, summarize
from qwenkit.config import RunConfig
from qwenkit.data import sample_path
from qwenkit.models import default_model_path

cfg = (RunConfig.load(CONFIG_PATH) if CONFIG_PATH
       else RunConfig(model=MODEL_PATH or str(default_model_path()), n_ctx=N_CTX))
srv = server.start(cfg, port="any")

language = LANGUAGE or ("en" if not (MODEL_PATH or CONFIG_PATH) else "ja")
doc_path = Path(DOCUMENT) if DOCUMENT else sample_path(language)
text = summarize.read_document(doc_path)   # clear errors for a missing, binary or empty file
client = srv.client(timeout=600)
count = summarize.TokenCounter(client, srv.alias)   # the model's own tokenizer, via the server
print(f"{doc_path.name}: {len(text):,} characters, {count(text):,} tokens for this model, "
      f"context {srv.n_ctx}")
print(text[:300], "...")"""),
("md", """## 2. How the document is cut

A chunk must leave room in the context for the system prompt, the chat template's own tokens and
the answer. The cuts fall at paragraph breaks first, then after sentences (`。！？` and `.!?`),
and only a sentence longer than a whole chunk is cut between tokens. Token counts come from the
server's `/extras/tokenize`, so they are the model's own, not a guess from characters
(Japanese takes very different numbers of tokens per character in different tokenizers)."""),
("code", """budget = srv.n_ctx - 400   # an illustration; summarize() computes the exact budget itself
spans = summarize.split_spans(text, budget, count)
for i, (a, b) in enumerate(spans, 1):
    piece = text[a:b]
    print(f"chunk {i}: {count(piece):>5} tokens, ends with {piece.rstrip()[-25:]!r}")"""),
("md", """## 3. Summarize, streaming

Qwen3.5 *thinks* before it answers by default: a summary would start with a long `<think>` block
that costs time and tokens. The kit asks the chat template not to
(`chat_template_kwargs={"enable_thinking": False}`) and removes a `<think>` block if one still
comes. Parts are summarized first (progress lines), then the final summary streams below.

**The loop guard.** Small models fall into repeating themselves. `summarize` watches each answer
as it streams (`qwenkit.loopguard`): when a run of 10 words (24 characters in Japanese) comes a
second time, it closes the stream (the server stops generating), leaves the repeat out and says so
in one line; an answer stopped very early is asked for once more. For the small model the
notebook also asks for greedy decoding with `frequency_penalty` 1.0, which made its summaries of
the bundled sample far less repetitive (71-74 % distinct words instead of about 30 %).
`trust.Probe` records how much CPU time other programs took meanwhile, so the time printed at the
end can be judged."""),
("code", """from qwenkit import trust
from qwenkit.demo import SMALL_MODEL_SAMPLING
from qwenkit.loopguard import text_stats

small = not (MODEL_PATH or CONFIG_PATH)
sampling = dict(SMALL_MODEL_SAMPLING) if small else {}
if TEMPERATURE is not None:
    sampling["temperature"] = TEMPERATURE
with trust.Probe([srv.pid]) as probe:   # the server's CPU time is ours, not "other programs"
    s = summarize.summarize(
        text, client, srv.alias, n_ctx=srv.n_ctx, language=language, max_tokens=MAX_TOKENS, **sampling,
        on_progress=lambda msg: print(f"[{msg}]"),
        on_token=lambda piece: print(piece, end="", flush=True))
print("\\n")
print(s)
print("the summary:", text_stats(s.text))
took = trust.Figure("section 3's summary", [s.seconds], unit="s", machine=probe.record())
print(trust.within(took, *STATED_SECONDS, f"takes {STATED_SECONDS[0]}-{STATED_SECONDS[1]} s on a quiet 2-core machine"))"""),
("md", """## 4. Where the time went

Each request's prompt and answer sizes and times. Prompt processing is usually fast; the answer's
decode speed (tokens per second) is what a person waits for. `truncated` says whether an answer was
cut by `max_tokens`."""),
("code", """print(f"{'request':>8} {'prompt':>7} {'answer':>7} {'seconds':>8} {'decode tok/s':>13} finish")
for c in s.calls:
    rate = (c.completion_tokens - 1) / c.decode_s if c.decode_s > 0 else float("nan")
    print(f"{c.role:>8} {c.prompt_tokens:>7} {c.completion_tokens:>7} {c.seconds:>8.2f} {rate:>13.1f}",
          c.finish_reason)
print(f"\\nchunks: {s.chunks}, rounds: {s.rounds}, cut by max_tokens: {s.truncated}")"""),
("code", """import matplotlib.pyplot as plt

fig, ax = plt.subplots(figsize=(6, 2.5))
ax.bar(range(1, len(s.chunk_tokens) + 1), s.chunk_tokens, label="tokens in the chunk")
ax.axhline(s.chunk_budget, color="red", linestyle="--", label=f"budget ({s.chunk_budget})")
ax.set(xlabel="chunk", ylabel="tokens")
ax.legend(loc="lower right")
ax.set_title(f"{doc_path.name}: every chunk within its budget (n_ctx {srv.n_ctx})")
plt.show()"""),
("md", """## 5. The same from the command line, and cleaning up

```
python -m qwenkit summarize report.txt                 # the background server, or a fresh one
python -m qwenkit summarize report.txt --language en --max-tokens 500
python -m qwenkit summarize notes.txt --url http://127.0.0.1:8000/v1 --ctx 8192
```

It streams the summary and ends with the same stats line as `print(s)` above."""),
("code", """srv.stop()
print("running:", srv.alive())"""),
]

NOTEBOOKS = {"04_serve": _NB04, "05_summarize": _NB05}
