#!/usr/bin/env bash
# Builds (once) and prints the path of the llama-cpp-python wheel.
# PyPI ships only the sdist, and a CPU build takes ~8 minutes on 2 cores, so the
# wheel is cached outside the repo, keyed by version, build flags, Python and CPU.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
CMAKE_ARGS="${CMAKE_ARGS:--DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF}"
PY="${PYTHON:-python3}"
CACHE="${R1_CACHE_DIR:-$HOME/.cache/r1-operator}"
pyver=$("$PY" -c 'import sys; print(f"cp{sys.version_info[0]}{sys.version_info[1]}")')
key=$(printf '%s|%s|%s|%s' "$VERSION" "$CMAKE_ARGS" "$pyver" "$(uname -m)" | sha256sum | cut -c1-16)
dir="$CACHE/wheels/llama-cpp-python-$VERSION-$key"
whl=$(ls "$dir"/llama_cpp_python-*.whl 2>/dev/null | head -n1 || true)
if [ -z "$whl" ]; then
  echo "building llama-cpp-python $VERSION (flags: $CMAKE_ARGS); this takes ~8 min on 2 cores" >&2
  tmp="$dir.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  CMAKE_ARGS="$CMAKE_ARGS" CMAKE_BUILD_PARALLEL_LEVEL="${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" \
    "$PY" -m pip wheel --no-deps --no-binary llama-cpp-python -w "$tmp" "llama-cpp-python==$VERSION" >&2
  # Publish atomically so an interrupted build never looks complete.
  rm -rf "$dir"; mv "$tmp" "$dir"
  whl=$(ls "$dir"/llama_cpp_python-*.whl | head -n1)
fi
echo "$whl"
