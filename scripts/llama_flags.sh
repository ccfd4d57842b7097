# Sourced by scripts/setup.sh and scripts/build_tools.sh: the one decision of llama.cpp's build
# flags for this machine. Sets CMAKE_ARGS, FLAVOR, ARCH and KEY (the cache key: version + flags).
# CUDA for the first GPU's compute capability when nvcc and nvidia-smi exist; otherwise a portable
# CPU build: native detection off (it turns on AMX, which SIGILLs on some VMs), then only the
# instruction sets /proc/cpuinfo really lists. QWENKIT_CMAKE_ARGS / QWENKIT_FORCE_CPU=1 override.
LLAMA_VERSION="${LLAMA_VERSION:-0.3.36}"
cuda_arch() {  # compute capability of the first GPU, e.g. 8.9 -> 89
  command -v nvidia-smi >/dev/null 2>&1 || return 1
  nvidia-smi --query-gpu=compute_cap --format=csv,noheader 2>/dev/null | head -n1 | tr -d ' .'
}
ARCH=""
if [ -n "${QWENKIT_CMAKE_ARGS:-}" ]; then
  CMAKE_ARGS="$QWENKIT_CMAKE_ARGS"; FLAVOR="custom"
elif [ "${QWENKIT_FORCE_CPU:-0}" != "1" ] && command -v nvcc >/dev/null 2>&1 && ARCH="$(cuda_arch)" && [ -n "$ARCH" ]; then
  CMAKE_ARGS="-DGGML_CUDA=on -DCMAKE_CUDA_ARCHITECTURES=$ARCH"; FLAVOR="cuda-sm$ARCH"
else
  flags="$(grep -m1 -E '^(flags|Features)' /proc/cpuinfo 2>/dev/null || true)"
  has() { [[ " $flags " == *" $1 "* ]]; }
  CMAKE_ARGS="-DGGML_NATIVE=OFF"
  if [ "$(uname -m)" = "x86_64" ]; then
    has avx && CMAKE_ARGS+=" -DGGML_AVX=ON"
    has avx2 && CMAKE_ARGS+=" -DGGML_AVX2=ON"
    has fma && CMAKE_ARGS+=" -DGGML_FMA=ON"
    has f16c && CMAKE_ARGS+=" -DGGML_F16C=ON"
    has avx512f && CMAKE_ARGS+=" -DGGML_AVX512=ON"
  fi
  FLAVOR="cpu"
fi
KEY="$(printf '%s %s' "$LLAMA_VERSION" "$CMAKE_ARGS" | sha256sum | cut -c1-12)"
