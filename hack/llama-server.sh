#!/usr/bin/env bash
# Builds (once) and prints the path of llama-server, from the llama.cpp that llama-cpp-python's sdist vendors:
# the same source as the runtime's llama.cpp. It is the measured peer of `r1-runtime serve` in benchmarks and a
# reference in tests; it goes into no image or chart. The build (~10 min on 2 cores) is cached outside the repo,
# keyed by version, build flags and CPU, and published atomically, so an interrupted build never looks complete.
set -euo pipefail
VERSION="${LLAMA_CPP_PYTHON_VERSION:-0.3.36}"
FLAGS="-DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_FMA=ON -DGGML_F16C=ON -DBUILD_SHARED_LIBS=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_BUILD_TOOLS=ON -DLLAMA_BUILD_SERVER=ON -DLLAMA_CURL=OFF -DLLAMA_OPENSSL=OFF -DCMAKE_BUILD_TYPE=Release"
PY="${PYTHON:-python3}"
CACHE="${R1_CACHE_DIR:-$HOME/.cache/r1-operator}"
key=$(printf '%s|%s|%s' "$VERSION" "$FLAGS" "$(uname -m)" | sha256sum | cut -c1-16)
dir="$CACHE/llama-server/$VERSION-$key"
if [ ! -x "$dir/llama-server" ]; then
  echo "building llama-server from llama-cpp-python $VERSION's vendored llama.cpp; this takes ~10 min on 2 cores" >&2
  tmp="$dir.tmp.$$"
  rm -rf "$tmp"; mkdir -p "$tmp"
  sdist="$CACHE/sdists/llama_cpp_python-$VERSION.tar.gz"
  if [ ! -f "$sdist" ]; then
    mkdir -p "$CACHE/sdists"
    "$PY" -m pip download -q --no-deps --no-binary :all: -d "$tmp/dl" "llama-cpp-python==$VERSION" >&2
    mv "$tmp/dl/llama_cpp_python-$VERSION.tar.gz" "$sdist.tmp.$$" && mv "$sdist.tmp.$$" "$sdist"
  fi
  tar -xzf "$sdist" -C "$tmp" "llama_cpp_python-$VERSION/vendor/llama.cpp"
  src="$tmp/llama_cpp_python-$VERSION/vendor/llama.cpp"
  # shellcheck disable=SC2086
  cmake -S "$src" -B "$tmp/build" -G Ninja $FLAGS >&2
  cmake --build "$tmp/build" --target llama-server -j "${CMAKE_BUILD_PARALLEL_LEVEL:-$(nproc)}" >&2
  mkdir -p "$tmp/out"
  cp "$tmp/build/bin/llama-server" "$tmp/out/llama-server"
  "$tmp/out/llama-server" --version >&2
  rm -rf "$dir"; mkdir -p "$(dirname "$dir")"; mv "$tmp/out" "$dir"; rm -rf "$tmp"
fi
echo "$dir/llama-server"
