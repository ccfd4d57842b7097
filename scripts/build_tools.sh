#!/usr/bin/env bash
# Build llama.cpp's own tools (llama-bench, llama-server, llama-perplexity) from the SAME
# sources and with the SAME flags as the llama-cpp-python wheel that scripts/setup.sh builds,
# so that the kit's figures compare with llama.cpp's on one build.
#
#   scripts/build_tools.sh            # builds once, prints the bin directory
#   scripts/build_tools.sh --print    # prints the bin directory if built (exit 1 if not)
#
# Sources: the llama-cpp-python 0.3.36 sdist (QWENKIT_SDIST=dir of an extracted sdist, else
# `pip download` into the cache).
# Flags: exactly setup.sh's choice (QWENKIT_CMAKE_ARGS, else CUDA where nvcc and a GPU exist,
# else GGML_NATIVE=OFF plus the instruction sets /proc/cpuinfo lists), configured through the
# sdist's top-level CMakeLists.txt as pip does (shared libraries, Release, LLAVA_BUILD off).
# Output: $QWENKIT_TOOLS_CACHE (default ~/.cache/qwenkit/tools)/<flavor>-<key>/bin, keyed by
# version + flags; only a finished build lands there.
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${QWENKIT_VENV:-$ROOT/.venv}"
VPY="$VENV/bin/python"; [ -x "$VPY" ] || VPY="${PYTHON:-python3}"
LLAMA_VERSION="0.3.36"
CACHE="${QWENKIT_TOOLS_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/qwenkit/tools}"
TARGETS="${QWENKIT_TOOLS_TARGETS:-llama-bench llama-server llama-perplexity}"
log() { printf '[build_tools] %s\n' "$*" >&2; }

# ---- flags: the same decision (and cache key) as scripts/setup.sh ------------------------
# shellcheck source=llama_flags.sh
source "$(dirname "${BASH_SOURCE[0]}")/llama_flags.sh"
OUTDIR="$CACHE/$FLAVOR-$KEY"

if [ "${1:-}" = "--print" ]; then
  [ -x "$OUTDIR/bin/llama-bench" ] && { echo "$OUTDIR/bin"; exit 0; }
  exit 1
fi
if [ -x "$OUTDIR/bin/llama-bench" ] && [ -x "$OUTDIR/bin/llama-server" ]; then
  log "already built ($FLAVOR, $CMAKE_ARGS)"
  echo "$OUTDIR/bin"; exit 0
fi

# ---- sources ----------------------------------------------------------------------------
SRC="${QWENKIT_SDIST:-}"
if [ -z "$SRC" ]; then
  SRC="$CACHE/src/llama_cpp_python-$LLAMA_VERSION"
  if [ ! -f "$SRC/CMakeLists.txt" ]; then
    log "downloading the llama-cpp-python $LLAMA_VERSION sdist"
    mkdir -p "$CACHE/src"
    "$VPY" -m pip download -q --no-deps --no-binary :all: -d "$CACHE/src" "llama-cpp-python==$LLAMA_VERSION"
    tar -xzf "$CACHE/src/llama_cpp_python-$LLAMA_VERSION.tar.gz" -C "$CACHE/src"
  fi
fi
log "sources: $SRC"

# ---- configure + build ------------------------------------------------------------------
BUILD="$OUTDIR.build"; mkdir -p "$CACHE"
GEN=(); command -v ninja >/dev/null 2>&1 && GEN=(-G Ninja)
log "building $TARGETS ($FLAVOR): about 5-10 min on 2 cores"
log "CMAKE_ARGS=$CMAKE_ARGS"
# shellcheck disable=SC2086
cmake -S "$SRC" -B "$BUILD" "${GEN[@]}" -DCMAKE_BUILD_TYPE=Release \
  -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON \
  -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_APP=OFF \
  -DLLAMA_BUILD_UI=OFF -DLLAMA_USE_PREBUILT_UI=OFF -DLLAMA_OPENSSL=OFF \
  $CMAKE_ARGS >"$BUILD.configure.log" 2>&1 || { tail -n 40 "$BUILD.configure.log" >&2; exit 1; }
# shellcheck disable=SC2086
cmake --build "$BUILD" --config Release -j "$(nproc)" --target $TARGETS \
  >"$BUILD.build.log" 2>&1 || { tail -n 40 "$BUILD.build.log" >&2; exit 1; }

rm -rf "$OUTDIR.tmp"; mkdir -p "$OUTDIR.tmp/bin"
# executables and the shared libraries they load (RPATH $ORIGIN after the copy)
find "$BUILD" -maxdepth 2 -path '*/bin/*' \( -type f -o -type l \) -exec cp -a {} "$OUTDIR.tmp/bin/" \;
find "$BUILD" \( -name 'lib*.so*' \) \( -type f -o -type l \) -exec cp -a {} "$OUTDIR.tmp/bin/" \; 2>/dev/null || true
printf '%s\n' "$LLAMA_VERSION" "$CMAKE_ARGS" "$SRC" > "$OUTDIR.tmp/BUILD_INFO"
rm -rf "$OUTDIR"; mv "$OUTDIR.tmp" "$OUTDIR"
log "built: $OUTDIR/bin"
echo "$OUTDIR/bin"
