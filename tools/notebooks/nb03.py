"""Source of notebooks/03_fit.ipynb (regenerate with `python tools/nb.py`)."""

NOTEBOOKS = {"03_fit": [
("md", """
# 03 · Make the 35B model fit your card: memory plan and expert offload

**What you learn:** where a model's memory goes (weights layer by layer, the KV cache, the recurrent
state, compute buffers), why Qwen3.5-35B-A3B's KV cache is small (only 10 of its 40 layers have one), and
how keeping the *expert* weights of some layers in system RAM (llama.cpp's `--n-cpu-moe`) makes a
19.7 GiB model run on a 16 GB card. You check the plan against llama.cpp's own figures, pick the config
for your card, and load a model with that placement.

**Time:** about 10 s (measured on a 2-core machine without GPU: 3-7 s of cells, depending on what
else runs, plus the kernel start). **Needs:** the kit installed (`make setup`). A GPU is optional: without one the plan is still
made for the card size you give below, and the loading step runs on the CPU.
"""),
("code", """
# Parameters (the test suite overrides these)
MODEL_PATH = None      # None: the small default model (SmolLM2-135M-Instruct); or your downloaded GGUF
VRAM_GIB = 16.0        # the card to plan for (free memory, GiB); None: ask the GPU
N_CTX = 8192           # context length
TYPE_K = "q8_0"        # KV cache types: f16, q8_0, q4_0, ...
TYPE_V = "q8_0"
TARGET_SHAPE = True    # also plan Qwen3.5-35B-A3B's exact shape (a synthetic header, no download)
REAL_MODEL = None      # e.g. "unsloth/Qwen3.5-35B-A3B-GGUF:Q4_K_M": download if missing, fit, serve (section 6)
"""),
("md", """
## 1. What is in the file

Everything the plan needs is in the GGUF header: every tensor's name, type and size, which layers have
attention (and so a KV cache), the KV heads and head sizes, the recurrent-state sizes. Nothing is
guessed from the model's name, and no weights are read.
"""),
("code", """
from qwenkit import htmltable, kvnotes
from qwenkit import plan as qplan
from qwenkit.config import RunConfig
from qwenkit.engine import Engine, gpu_free_bytes, probe
from qwenkit.gguf_info import read_model_info
from qwenkit.models import default_model_path

path = str(MODEL_PATH or default_model_path())
info = read_model_info(path)
print(info.summary())
"""),
("md", """
## 2. The plan: where every byte goes

`plan(info, cfg)` places each tensor the way llama.cpp does: the input embeddings always in system
RAM, the layers on the GPU (`n_gpu_layers=-1`: all of them), and the experts of the first
`n_cpu_moe` layers in RAM. The KV cache is counted only for layers that have attention, K and V apart;
the compute buffers are what llama.cpp reserves for one batch of `n_ubatch` tokens (mostly the logits).
"""),
("code", """
budget = int(VRAM_GIB * 2**30) if VRAM_GIB else (gpu_free_bytes() or 16 * 2**30)
cfg = RunConfig(model=path, n_ctx=N_CTX, type_k=TYPE_K, type_v=TYPE_V)
p = qplan.plan(info, cfg)
print(f"planned for a {budget / 2**30:.1f} GiB card; this llama.cpp build: "
      f"{'GPU' if kvnotes.gpu_build() else 'CPU-only (the GPU rows are for the card named above)'}")
p
"""),
("md", """
## 3. Check the plan against llama.cpp

llama.cpp can *simulate* a load (`no_alloc`): it reads the header, builds the context and reports the
KV cache, recurrent state and compute buffers it would allocate, without allocating them. That is the
ground truth the planner is tested against (weights and KV within 1 %, total within 5 %).
"""),
("code", """
cmp = qplan.compare(qplan.plan(info, cfg, gpu=False), probe(cfg))
htmltable.compare_table(cmp)
"""),
("md", """
## 4. Qwen3.5-35B-A3B on your card

The real model is a 19.7 GiB download; its exact shape (256 experts, Q4_K_M-like types) comes here from a
synthetic header, so this part runs anywhere. Read the table across: the KV cache costs megabytes per
thousand tokens (only the attention layers have one), so `q8_0` saves little; what decides the fit is how
many layers' experts stay in system RAM (`n_cpu_moe`). Each of them costs decode speed: measured on an
H200 with this shape (llama-bench tg128, 16-core host), 240-248 tok/s with every expert on the GPU, 151
with the experts of 8 layers in RAM, 130 with 11, 110 with 16. So `fit()` keeps that number as small as
the card allows.
"""),
("code", """
if TARGET_SHAPE:
    target = qplan.target_model_info("qwen35moe")
    print(f"{target.n_layer} layers, {len(target.kv_layers)} with a KV cache (GGUF header)")
    display(htmltable.fit_table(target, budget))
"""),
("code", """
import matplotlib.pyplot as plt

if TARGET_SHAPE:
    tcfg = RunConfig(model=target.source, n_ctx=N_CTX, type_k=TYPE_K, type_v=TYPE_V)
    rows = qplan.offload_sweep(target, tcfg)
    fig, ax = plt.subplots(figsize=(7, 3.5))
    ax.plot([r["n_cpu_moe"] for r in rows], [r["gpu"] / 2**30 for r in rows], label="GPU (planned)")
    ax.plot([r["n_cpu_moe"] for r in rows], [r["ram"] / 2**30 for r in rows], label="system RAM")
    ax.axhline(budget / 2**30, color="red", ls="--", label=f"budget {budget / 2**30:.1f} GiB")
    ax.set(xlabel=f"n_cpu_moe (layers of {target.n_layer} whose experts stay in RAM)", ylabel="GiB")
    ax.legend()
    ax.set_title(f"Qwen3.5-35B-A3B shape, n_ctx {N_CTX}, KV {TYPE_K}/{TYPE_V}")
    plt.show()
"""),
("code", """
if TARGET_SHAPE:
    fitted = qplan.fit_report(target, budget, tcfg)
    print(fitted.cfg.summary())
    display(fitted)
"""),
("md", """
## 5. Load with expert offload

The same `n_cpu_moe` setting works in the notebook kernel (`Engine`) and in the kit's server.
llama.cpp logs each tensor it keeps in system RAM; here a tiny random-weight model with the
Qwen3.5 architecture keeps the experts of its first 3 layers there, and still generates.
`Engine.load()` closes the previous model first, so relaunching with another config does not
accumulate memory.
"""),
("code", """
from qwenkit.synthetic import tiny_model

eng = Engine()
llm = eng.load(RunConfig(model=str(tiny_model("qwen35moe")), n_ctx=512, n_cpu_moe=3))
placed = llm.load_log.overrides()
layers = sorted({int(name.split(".")[1]) for name in placed})
print(f"{len(placed)} expert tensors of layers {layers} kept in system RAM:", *sorted(placed)[:3], "...", sep="\\n  ")
out = llm("Once upon a time", max_tokens=16, temperature=0.0)
print("generated (random weights, so no meaning):", repr(out["choices"][0]["text"]))
eng.close()
"""),
("md", """
## 6. The one path to the real model

`realmodel.resolve_model("REPO:QUANT")` returns a verified local GGUF (downloading it, resumably, when it is
missing), and `realmodel.fit_config(cfg)` fits it to the GPU's free memory. The terminal version does both and
then serves: `python -m qwenkit serve --model unsloth/Qwen3.5-35B-A3B-GGUF:Q4_K_M --fit`.
Measured on an H200 held to a 16 GiB budget (full-size synthetic model, Q4_K_M-like): the fit chose
`n_cpu_moe=11`, planned 15,511 MiB on the GPU, llama.cpp allocated 15,410 MiB and the card showed 15,414 MiB in
use; decode ran at 129-130 tok/s (llama-bench tg128), 123 in the kit's kernel and 116-120 streamed by the kit's
server. A consumer card with less bandwidth and a slower CPU will be slower: published RTX 5080 figures for the
real model are 62-70 tok/s.
"""),
("code", """
if REAL_MODEL:
    from qwenkit import realmodel
    real_cfg = RunConfig(model=str(realmodel.resolve_model(REAL_MODEL)), n_ctx=N_CTX, type_k=TYPE_K, type_v=TYPE_V)
    fitted_real = realmodel.fit_config(real_cfg, int(VRAM_GIB * 2**30) if VRAM_GIB else None)
    print(fitted_real)
else:
    print("Set REAL_MODEL to serve the real model; the same from a terminal:")
    print("python -m qwenkit serve --model unsloth/Qwen3.5-35B-A3B-GGUF:Q4_K_M --fit")
"""),
("md", """
**From a terminal:** `python -m qwenkit fit --model YOUR.gguf --vram auto --n-ctx 65536 --type-k q8_0 --type-v q8_0`
prints the same plan and the fitted flags (`--probe` adds the llama.cpp comparison, `--save cfg.json`
keeps the config). **Next:** `04_serve` serves the model with this config.
"""),
]}
