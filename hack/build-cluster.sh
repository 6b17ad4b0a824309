#!/usr/bin/env bash
# Builds (once) the local control plane and kwok from Go modules, then links
# them into BIN_DIR. Each binary is cached outside the repo keyed by the hash
# of its go.mod + go.sum + source, so a repeat run does no Go build.
#   hack/build-cluster.sh BIN_DIR
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
bindir="$(mkdir -p "${1:?usage: build-cluster.sh BIN_DIR}" && cd "$1" && pwd)"
cache="${R1_CACHE_DIR:-$HOME/.cache/r1-operator}"
export GOTOOLCHAIN=local GOFLAGS=-mod=mod
K8S_VERSION=v1.34.4

build() {  # build NAME MODULE_DIR PACKAGE LDFLAGS
  local name="$1" mod="$2" pkg="$3" ldflags="$4"
  local key
  key=$(cat "$mod/go.mod" "$mod/go.sum" "$mod"/*.go <(go env GOVERSION GOARCH) <(echo "$ldflags") | sha256sum | cut -c1-16)
  local out="$cache/go-bin/$name-$key/$name"
  if [ ! -x "$out" ]; then
    echo "building $name (cache key $key); a cold build takes several minutes" >&2
    mkdir -p "$(dirname "$out")"
    (cd "$mod" && CGO_ENABLED=0 go build -trimpath -tags selinux,notest -ldflags "$ldflags" -o "$out.tmp" "$pkg")
    mv "$out.tmp" "$out"   # atomic: an interrupted build never looks complete
  fi
  ln -sf "$out" "$bindir/$name"
}

build r1-cluster "$here/cluster" . \
  "-s -w -X k8s.io/component-base/version.gitVersion=$K8S_VERSION -X k8s.io/component-base/version.gitMajor=1 -X k8s.io/component-base/version.gitMinor=34"
build kwok "$here/kwok" sigs.k8s.io/kwok/cmd/kwok "-s -w"
build r1-pause "$here/pause" . "-s -w"

# containerd v2 for real worker nodes (Debian's 1.6 loses kubelet support at 1.36), by version and tags.
CONTAINERD_VERSION=v2.4.2
tags="no_btrfs no_devmapper no_zfs"
key=$(printf '%s|%s|%s' "$CONTAINERD_VERSION" "$tags" "$(go env GOVERSION GOARCH)" | sha256sum | cut -c1-16)
dir="$cache/go-bin/containerd-$key"
if [ ! -x "$dir/containerd" ]; then
  echo "building containerd $CONTAINERD_VERSION (cache key $key); a cold build takes several minutes" >&2
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
  for cmd in containerd containerd-shim-runc-v2 ctr; do
    GOFLAGS= GOBIN="$dir.tmp" go install -trimpath -tags "$tags" -ldflags "-s -w" \
      "github.com/containerd/containerd/v2/cmd/$cmd@$CONTAINERD_VERSION"
  done
  rm -rf "$dir"; mv "$dir.tmp" "$dir"   # atomic: an interrupted build never looks complete
fi
for cmd in containerd containerd-shim-runc-v2 ctr; do ln -sf "$dir/$cmd" "$bindir/$cmd"; done

# kube-router's firewall alone enforces NetworkPolicies on the real nodes' pods (beside the bridge CNI), so the
# policies the operator writes are tested as a policy-enforcing CNI applies them. Only dev clusters run it; it is
# in no image. v2.1.0 is the version the Go module proxy serves here.
KUBE_ROUTER_VERSION=v2.1.0
key=$(printf '%s|%s' "$KUBE_ROUTER_VERSION" "$(go env GOVERSION GOARCH)" | sha256sum | cut -c1-16)
dir="$cache/go-bin/kube-router-$key"
if [ ! -x "$dir/kube-router" ]; then
  echo "building kube-router $KUBE_ROUTER_VERSION (cache key $key); a cold build takes a few minutes" >&2
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp"
  GOFLAGS= CGO_ENABLED=0 GOBIN="$dir.tmp" go install -trimpath -ldflags "-s -w" \
    "github.com/cloudnativelabs/kube-router/v2/cmd/kube-router@$KUBE_ROUTER_VERSION"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"
fi
ln -sf "$dir/kube-router" "$bindir/kube-router"

# KEDA, the autoscaler spec.autoscaling drives: its operator and its metrics API server (the external metrics the
# controller manager's HPA reads), and its CRDs, for dev clusters and tests. Its go.mod has replace directives, so
# `go install` refuses it: the module's own source is built as the main module.
KEDA_VERSION=v2.21.0
key=$(printf '%s|%s|crds-all' "$KEDA_VERSION" "$(go env GOVERSION GOARCH)" | sha256sum | cut -c1-16)
dir="$cache/go-bin/keda-$key"
if [ ! -x "$dir/keda-adapter" ]; then
  echo "building KEDA $KEDA_VERSION (cache key $key); a cold build takes ten minutes or more" >&2
  src=$(GOFLAGS= go mod download -json "github.com/kedacore/keda/v2@$KEDA_VERSION" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  work=$(mktemp -d)
  cp -r "$src" "$work/keda" && chmod -R u+w "$work/keda"
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp/crds"
  for cmd in operator adapter; do
    out=keda; [ "$cmd" = adapter ] && out=keda-adapter
    (cd "$work/keda" && CGO_ENABLED=0 go build -trimpath \
       -ldflags "-s -w -X github.com/kedacore/keda/v2/version.Version=$KEDA_VERSION" -o "$dir.tmp/$out" "./cmd/$cmd")
  done
  cp "$src"/config/crd/bases/*.yaml "$dir.tmp/crds/"   # keda.sh and eventing.keda.sh: the operator watches both
  rm -rf "$work" "$dir"; mv "$dir.tmp" "$dir"   # atomic: an interrupted build never looks complete
fi
ln -sf "$dir/keda" "$bindir/keda"
ln -sf "$dir/keda-adapter" "$bindir/keda-adapter"
mkdir -p "$bindir/../share"
ln -sfn "$dir/crds" "$bindir/../share/keda-crds"

# Karpenter's kwok provider, the autoscaler of `r1ctl dev up --autoscaler`: it turns NodePools into kwok nodes,
# as Karpenter on a cloud turns them into instances, and its CRDs. v1.15.0 needs Go 1.26.9 or newer, so this one
# build takes the approved toolchain from the Go module proxy (GOTOOLCHAIN=go1.27.3); nothing else does.
KARPENTER_VERSION=v1.15.0
KARPENTER_GO=go1.27.3
key=$(printf '%s|%s|%s' "$KARPENTER_VERSION" "$KARPENTER_GO" "$(go env GOARCH)" | sha256sum | cut -c1-16)
dir="$cache/go-bin/karpenter-$key"
if [ ! -x "$dir/karpenter-kwok" ]; then
  echo "building Karpenter $KARPENTER_VERSION's kwok provider (cache key $key); a cold build takes a few minutes" >&2
  src=$(GOFLAGS= GOTOOLCHAIN=$KARPENTER_GO go mod download -json "sigs.k8s.io/karpenter@$KARPENTER_VERSION" |
        python3 -c 'import json, sys; print(json.load(sys.stdin)["Dir"])')
  rm -rf "$dir.tmp"; mkdir -p "$dir.tmp/crds"
  (cd "$src" && GOFLAGS=-mod=readonly GOTOOLCHAIN=$KARPENTER_GO CGO_ENABLED=0 \
     go build -trimpath -ldflags "-s -w" -o "$dir.tmp/karpenter-kwok" ./kwok)
  cp "$src"/kwok/charts/crds/karpenter.sh_*.yaml "$src"/kwok/apis/crds/*.yaml "$dir.tmp/crds/"
  rm -rf "$dir"; mv "$dir.tmp" "$dir"   # atomic: an interrupted build never looks complete
fi
ln -sf "$dir/karpenter-kwok" "$bindir/karpenter-kwok"
ln -sfn "$dir/crds" "$bindir/../share/karpenter-crds"
