#!/usr/bin/env bash
# Installs the Debian packages the tests need, only when something is missing.
set -euo pipefail
need=()
command -v prometheus >/dev/null || need+=(prometheus)
command -v promtool >/dev/null || need+=(prometheus)
command -v openssl >/dev/null || need+=(openssl)
# real worker nodes (r1ctl dev up --real-nodes): runc, CNI plugins, iptables for pod masquerading
[ -x /usr/sbin/runc ] || need+=(runc)
[ -x /usr/lib/cni/bridge ] || need+=(containernetworking-plugins)
command -v iptables >/dev/null || need+=(iptables)
[ -x /usr/sbin/ipset ] || need+=(ipset)   # kube-router's NetworkPolicy firewall
# images without a registry: podman builds the Dockerfile on a base that mmdebstrap makes from Debian's packages
command -v podman >/dev/null || need+=(podman)
command -v mmdebstrap >/dev/null || need+=(mmdebstrap)
[ ${#need[@]} -eq 0 ] && exit 0
sudo=""; [ "$(id -u)" -ne 0 ] && sudo="sudo"
echo "installing Debian packages: ${need[*]}" >&2
$sudo apt-get update -qq
DEBIAN_FRONTEND=noninteractive $sudo apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
# The package starts a system service; the tests run their own instances.
(command -v systemctl >/dev/null && $sudo systemctl disable --now prometheus prometheus-node-exporter) >/dev/null 2>&1 || true
pkill -x prometheus-node-exporter 2>/dev/null || true
