#!/usr/bin/env bash
# On a CUDA machine without internet access: install wheels prepared on a connected machine,
# build llama-cpp-python 0.3.36 with CUDA (for the first GPU's compute capability) plus
# llama-bench/llama-server from the same sources, and install it.
# Usage: bash scripts/device_build.sh CARRY_DIR BUILD_DIR
# CARRY_DIR, copied there beforehand, holds llama_cpp_python-0.3.36.tar.gz (the sdist, which may
# be repacked without its models/docs/tests folders: docs/facts.md, section 2) and whl/*.whl
# (`pip download` of the Python packages the run needs, for that machine's Python).
set -euo pipefail
CARRY="${1:-.carry}"; BUILD="${2:-/tmp/llbuild}"
ARCH="$(nvidia-smi --query-gpu=compute_cap --format=csv,noheader | head -n1 | tr -d ' .')"
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site "$CARRY"/whl/*.whl
export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p /tmp/src && tar xzf "$CARRY/llama_cpp_python-0.3.36.tar.gz" -C /tmp/src
cd /tmp/src/llama_cpp_python-0.3.36
start=$(date +%s)
CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAVA_BUILD=OFF" \
CMAKE_BUILD_PARALLEL_LEVEL="$(nproc)" \
  python3 -m pip install -v --no-build-isolation --no-deps --no-cache-dir -C build-dir="$BUILD" . > /tmp/llbuild.log 2>&1 \
  || { tail -50 /tmp/llbuild.log; exit 1; }
echo "[device_build] CUDA sm_$ARCH build in $(( $(date +%s) - start )) s; tools: $(ls "$BUILD/bin" | tr '\n' ' ')"
grep -o "FlashAttention K-V type combinations:.*" /tmp/llbuild.log | head -1 || true
