"""Source of notebooks/06_tune.ipynb (regenerate with `python tools/nb.py`)."""

NOTEBOOKS = {"06_tune": [
("md", """
# 06 · Tune interactively: what each knob does to memory and speed

**What you learn:** how the context length (`n_ctx`), the KV cache types (`type_k`, `type_v`), flash
attention, expert offload (`n_cpu_moe`) and `n_gpu_layers` change the memory a model needs and the speed
it runs at. A panel relaunches the model inside this kernel for each setting you try, shows the plan
*before* the load and what llama.cpp really allocated *after* it, measures a short prefill (pp) and decode
(tg) speed, and keeps every try in a table and a plot. The setting you like is saved to a file that
`python -m qwenkit serve --config FILE` serves.

**Time:** about 10 s on the small default model (measured on a 2-core machine in JupyterLab: 4 s of
cells, each relaunch under a second; 30-38 s while other work kept the machine at load 8-9); on Qwen3.5-35B-A3B a relaunch takes as long as a load (10-60 s from
a fast disk). **Needs:** the kit
installed (`make setup`); JupyterLab for the panel (`make lab`). A GPU is optional.
"""),
("code", """
# Parameters (the test suite overrides these)
MODEL_PATH = None          # None: the small default model (SmolLM2-135M-Instruct); or your Qwen3.5-35B-A3B GGUF
N_CTX = 1024               # the context to start with (the slider snaps to powers of two)
N_CTX_NEXT = 2048          # the second setting the notebook tries from code
TYPE_K_NEXT = "q8_0"       # ... with this K cache type
N_PROMPT = 32              # tokens in the short prefill (pp) measurement after each relaunch
N_GEN = 8                  # tokens in the short decode (tg) measurement
N_THREADS = None           # llama.cpp threads; None: all cores
SAVE_PATH = None           # where Save writes the config; None: tuned.json in the kit's cache folder
"""),
("md", """
## 1. The panel

Move the controls: the **memory plan** under them updates at once for the *pending* setting (GPU and
system RAM, weights, KV cache, compute buffers), against the free memory the machine reports right now.
Nothing reloads while you move them. **Relaunch** closes the live model (its memory is freed), loads the
pending setting with a progress indicator, and shows the load time, llama.cpp's own allocation next to
the estimate, and pp/tg speed. A setting that cannot work (a quantized V cache without flash attention)
is refused with the reason before anything is closed.
"""),
("code", """
from qwenkit import widgets

panel = widgets.tune_panel(MODEL_PATH, n_ctx=N_CTX, n_threads=N_THREADS, n_prompt=N_PROMPT, n_gen=N_GEN,
                           save_path=SAVE_PATH)
panel
"""),
("md", """
## 2. The first load

Press **Relaunch** above, or run the next cell: the panel is plain widgets, so code can press the
button too. The line under the button is the *live* model as llama.cpp reports it: `n_ctx` from the
loaded context, the K/V types from llama.cpp's log of the cache it created.
"""),
("code", """
panel.relaunch_button.click()
print(panel.describe_live())
"""),
("md", """
## 3. A bigger context with a quantized K cache

The KV cache grows linearly with `n_ctx`; `q8_0` stores it in about half the bytes of `f16`. Only the
layers with attention hold one: the GGUF header says which (Qwen3.5-35B-A3B's says 10 of its 40, so 8K of
context is 160 MiB in `f16`: quantizing it buys megabytes). The panel's notes are about this build and
this model only: the memory a KV type saves here, from the header, and the decode speed measured for that
very pair (or that it was not measured). A CPU-only build gets no notes about CUDA kernels.
"""),
("code", """
info = panel.info
print(f"{info.arch}: KV cache in {len(info.kv_layers)} of {info.n_layer} layers (GGUF header); "
      f"{'GPU build' if panel.gpu else 'CPU-only build'}")
panel.set(n_ctx=N_CTX_NEXT, type_k=TYPE_K_NEXT)
print(panel.check_text())
panel.relaunch_button.click()
print(panel.describe_live())
"""),
("md", """
## 4. A setting llama.cpp would refuse

A quantized V cache needs flash attention. The panel refuses it with the reason and the fix, and the live
model stays as it was.
"""),
("code", """
panel.set(type_v="q8_0", flash_attn=False)
print(panel.check_text())
print("Relaunch enabled:", not panel.relaunch_button.disabled)
panel.set(type_v="f16", flash_attn=True)   # back to a valid setting
"""),
("md", """
## 5. Every try, side by side

Each relaunch added a row to the panel's history table and a point to its plot (tok/s and memory per
setting). The same table on its own (`print(...)` gives it as text):
"""),
("code", """
panel.history_table()
"""),
("md", """
## 6. Serve what you tuned

**Save** (or `panel.save()`) writes the pending setting as JSON; the server takes it as it is.
"""),
("code", """
path = panel.save(SAVE_PATH)
print(f"python -m qwenkit serve --config {path}")
"""),
("md", """
**On Qwen3.5-35B-A3B:** start from the setting `03_fit` chose for your card, then move `n_cpu_moe` down one
step at a time until the plan turns red: each expert layer back on the GPU buys decode speed (about 0.47 GB
of VRAM per layer at Q4_K_M). `panel.close_model()` frees the model when you are done.
**Next:** `07_benchmark` measures settings properly (repetitions, depth, llama-bench's method).
"""),
]}
