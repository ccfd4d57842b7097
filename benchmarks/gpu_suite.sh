#!/usr/bin/env bash
# Run the GPU benchmark suite (benchmarks/gpu_suite.py) with its checks; results JSON and log
# go to OUT_DIR. Needs a CUDA build of llama-cpp-python 0.3.36 whose pip build-dir was BUILD_DIR
# (llama-bench and llama-server in BUILD_DIR/bin, e.g. from scripts/device_build.sh), and the
# server packages (fastapi, uvicorn, pydantic, sse-starlette, ...) importable.
#
#   benchmarks/gpu_suite.sh BUILD_DIR OUT_DIR [gpu_suite.py options, e.g. --budget 420]
#
# Then, to commit: cp OUT_DIR/gpu_suite.json benchmarks/results/ && python benchmarks/results_md.py
set -euo pipefail
BUILD="${1:?usage: benchmarks/gpu_suite.sh BUILD_DIR OUT_DIR [options]}"
OUT="${2:?usage: benchmarks/gpu_suite.sh BUILD_DIR OUT_DIR [options]}"
shift 2
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
PY="${PYTHON:-python3}"
export PYTHONUNBUFFERED=1
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
for t in llama-bench llama-server; do
  [ -x "$BUILD/bin/$t" ] || { echo "gpu_suite: $BUILD/bin/$t is missing (build with -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON)" >&2; exit 2; }
done
"$PY" -c 'import qwenkit, llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)' \
  || { echo "gpu_suite: llama-cpp-python here is not a CUDA build" >&2; exit 2; }
"$PY" -c 'import fastapi, uvicorn, sse_starlette, pydantic_settings, starlette_context' \
  || { echo "gpu_suite: the server packages are missing (fastapi, uvicorn, sse-starlette, ...)" >&2; exit 2; }
mkdir -p "$OUT"
set -o pipefail
"$PY" "$ROOT/benchmarks/gpu_suite.py" --bin "$BUILD/bin" --out "$OUT" "$@" 2>&1 | tee "$OUT/gpu_suite.log"
