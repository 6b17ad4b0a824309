#!/usr/bin/env bash
# Builds the Dockerfile's operator and runtime targets with podman, once per content hash, and
# saves each as a docker-archive for `ctr images import` on the dev cluster's real nodes.
# No registry can be reached here, so:
#   - the base (PYTHON_IMAGE) comes from Debian's packages through mmdebstrap;
#   - the llama-cpp-python wheel is the one hack/llama-wheel.sh built and cached (--build-context).
# The Dockerfile keeps its public base images for users.
#   hack/build-images.sh            prints the two archive paths
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/.." && pwd)"
cache="${R1_CACHE_DIR:-$HOME/.cache/r1-operator}/images"
mkdir -p "$cache"
VERSION=0.1.0
SUITE=bookworm
INCLUDE=python3,python3-venv,passwd,libgomp1,ca-certificates
# crun fails on this host's cgroup v1 hybrid; the build sees the host's CA bundle and pip settings.
PODMAN=(podman --runtime /usr/sbin/runc)
BUILD_OPTS=(--network host --ulimit nofile=20000:20000 --ulimit nproc=4096:4096
            -v /etc/ssl/certs:/etc/ssl/certs:ro)
[ -f /etc/pip.conf ] && BUILD_OPTS+=(-v /etc/pip.conf:/etc/pip.conf:ro)

# ---- the base: Debian minbase with Python, by suite and package list
base_key=$(printf '%s|%s' "$SUITE" "$INCLUDE" | sha256sum | cut -c1-16)
base_tar="$cache/base-$base_key.tar"
base_img="localhost/r1-dev/base:$base_key"
if [ ! -f "$base_tar" ]; then
  echo "building the Debian base ($SUITE: $INCLUDE) with mmdebstrap" >&2
  rm -rf "$cache/base-$base_key.tmp.tar"
  # mmdebstrap picks the output format by the name's extension: keep .tar on the temporary name
  mmdebstrap --quiet --variant=minbase --include="$INCLUDE" "$SUITE" "$cache/base-$base_key.tmp.tar" >&2
  mv "$cache/base-$base_key.tmp.tar" "$base_tar"
fi
"${PODMAN[@]}" image exists "$base_img" || "${PODMAN[@]}" import -q "$base_tar" "$base_img" >/dev/null

# ---- the wheel, as the llama-build stage would leave it
whl=$("$here/llama-wheel.sh")
wctx="$cache/wheel-context-$(basename "$(dirname "$whl")")"
if [ ! -f "$wctx/wheels/path.txt" ]; then
  rm -rf "$wctx.tmp"; mkdir -p "$wctx.tmp/wheels/$(basename "$(dirname "$whl")")"
  cp "$whl" "$wctx.tmp/wheels/$(basename "$(dirname "$whl")")/"
  echo "/wheels/$(basename "$(dirname "$whl")")/$(basename "$whl")" > "$wctx.tmp/wheels/path.txt"
  rm -rf "$wctx"; mv "$wctx.tmp" "$wctx"
fi

# ---- the images, keyed by everything they are built from
key=$(cd "$repo" && { git ls-files -s Dockerfile pyproject.toml README.md operator runtime devtools \
        | grep -v '^160000'; git diff HEAD -- Dockerfile pyproject.toml README.md operator runtime devtools; \
        git ls-files --others --exclude-standard operator runtime devtools | xargs -r sha256sum; \
        echo "$base_key $(basename "$whl")"; } | sha256sum | cut -c1-16)
for target in operator runtime; do
  out="$cache/$target-$key.tar"
  if [ ! -f "$out" ]; then
    echo "building image $target (content key $key)" >&2
    "${PODMAN[@]}" build -q "${BUILD_OPTS[@]}" --target "$target" \
      --build-arg PYTHON_IMAGE="$base_img" --build-context llama-build="$wctx" \
      -t "docker.io/r1-operator/$target:$VERSION" -t "docker.io/r1-operator/$target:$key" \
      -f "$repo/Dockerfile" "$repo" >&2
    "${PODMAN[@]}" save -q --format docker-archive -o "$out.tmp" \
      "docker.io/r1-operator/$target:$VERSION" "docker.io/r1-operator/$target:$key"
    mv "$out.tmp" "$out"   # atomic: an interrupted build never looks complete
    find "$cache" -maxdepth 1 -name "$target-*.tar" ! -name "$(basename "$out")" -delete  # older contents
    "${PODMAN[@]}" image prune -f >/dev/null
  fi
  echo "$out"
done
