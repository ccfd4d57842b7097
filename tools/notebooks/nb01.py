"""Source of notebooks/01_build_check.ipynb (regenerate with `python tools/nb.py`)."""

NOTEBOOKS = {"01_build_check": [
("md", """
# 01 · Does llama-cpp-python really use your GPU?

**What you learn:** how to tell a CUDA build of llama-cpp-python from a CPU-only one, why the
CPU-only build is the most common failure of a local LLM set-up, and the exact command that fixes it.

**Time:** a few seconds on a quiet 2-core machine (measured: 2 s; 27 s while other programs kept it busy). **Needs:** the kit installed (`make setup`); a GPU is optional: on a
machine without one this notebook says so and runs on the CPU.
"""),
("code", """
# Parameters (the test suite overrides these)
MODEL_PATH = None   # None: the small default model (SmolLM2-135M-Instruct) that ships with the kit
N_TOKENS = 32       # tokens to decode in the load check and per speed repetition
TIME_LIMIT = 10.0   # seconds the speed measurement may repeat for a stable figure
"""),
("md", """
## 1. Three facts decide everything

- **The build.** `llama-cpp-python` is published as *source only*: `pip install` compiles llama.cpp on
  your machine, and unless the environment variable `CMAKE_ARGS` said `-DGGML_CUDA=on`, it compiles
  a CPU-only library. Nothing warns you: the model loads, it is just 5-20x slower.
- **The GPU**, as the NVIDIA driver (NVML) reports it: name, compute capability, free memory.
- **The toolchain:** a CUDA build needs `nvcc`, the CUDA compiler.

`doctor.diagnose()` reads all three and gives one verdict.
"""),
("code", """
from qwenkit import doctor

report = doctor.diagnose()
print(report)
"""),
("md", """
The library describes itself in `llama_print_system_info()`: a CUDA build lists `CUDA : ARCHS = ...`,
a CPU build only CPU features (`AVX2`, `AVX512`, ...).
"""),
("code", """
print(report.build.system_info)
print("GPU offload compiled in:", report.build.gpu_offload)
"""),
("md", """
## 2. Load a model and look at what llama.cpp did

Asking for the GPU is not enough: `n_gpu_layers=-1` asks for every layer on the GPU, and llama.cpp's
own log says how many it really put there (`offloaded N/M layers to GPU`). A CPU build puts none there.
"""),
("code", """
load = doctor.load_check(MODEL_PATH, n_tokens=N_TOKENS)
print(f"layers on the GPU: {load['offloaded']}")
"""),
("md", """
## 3. How fast does it decode here, and can you believe the figure?

One short decode says little: on a machine where other programs run, it measures them too. The
measurement below repeats until its mean is known within ±3 % (or `TIME_LIMIT` passes), records how
much CPU time *other* programs used meanwhile, and `trust` says whether the figure can be believed and
whether it matches what the kit states for a machine like this one.
"""),
("code", """
from qwenkit import bench, trust
from qwenkit.config import RunConfig, default_threads

cfg = RunConfig(model=load["model"], n_ctx=512, n_threads=default_threads())
(tg,) = bench.bench(cfg, p=0, n=N_TOKENS, r=3, until=0.03, time_limit=TIME_LIMIT)
print(f"decode: {tg.mean:.1f} ± {tg.sd:.1f} tok/s over {len(tg.rates)} runs of {N_TOKENS} tokens")
print(trust.judge(tg))
if not report.build.gpu_offload and trust.cores() == 2:
    # the kit's statement for this kind of machine (benchmarks/RESULTS.md: llama-bench tg128 155.8,
    # the kit 151.2; this notebook measured 195 on a quiet one)
    print(trust.within(tg, 120, 230, "the small default model decodes 150-200 tok/s on a quiet 2-core CPU machine"))
else:
    print("(the kit states no figure for this machine; the one above is yours)")
"""),
("md", """
## 4. The fix, when the verdict is "GPU present but CPU-only build"

pip keeps the wheel it built in its cache, keyed by the package version and **not** by `CMAKE_ARGS`.
So after a CPU build, `CMAKE_ARGS="-DGGML_CUDA=on" pip install llama-cpp-python` silently reinstalls
the cached CPU wheel. The rebuild has to bypass the cache (`--no-cache-dir --force-reinstall`).
`make setup` does this for you: it keeps one built wheel per flag set, so switching between CPU and
CUDA builds really rebuilds, and a second run reuses what the first built.
"""),
("code", """
if report.fix_command:
    print("Run this in a terminal, then restart the kernel:")
    print(report.fix_command)
elif report.gpus:
    print("Nothing to fix: the build uses your GPU.")
else:
    print("No NVIDIA GPU here: everything runs on the CPU. With a GPU, the command would be:")
    print(doctor.reinstall_command("89"), "   # 89 = RTX 40xx; doctor fills in your card's")
"""),
("md", """
**Next:** `02_download` picks the Qwen3.5-35B-A3B file that fits your card. The same check from a
terminal: `python -m qwenkit doctor` (add `--json` for a machine-readable report).
"""),
]}
