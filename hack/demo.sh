#!/usr/bin/env bash
# The main flow on the local cluster. Run through `make demo` (which sets up first).
set -euo pipefail
echo "==> starting the local cluster (real control plane, simulated GPU nodes)"
KUBECONFIG="$(r1ctl dev up)"
export KUBECONFIG
echo "    kubeconfig: $KUBECONFIG"
echo "==> nodes and their GPU capacity"
kubectl get nodes -o custom-columns='NAME:.metadata.name,READY:.status.conditions[?(@.type=="Ready")].status,GPUS:.status.allocatable.nvidia\.com/gpu,GPU-MEMORY-MIB:.metadata.labels.nvidia\.com/gpu\.memory,PRODUCT:.metadata.labels.nvidia\.com/gpu\.product,MEMORY:.status.allocatable.memory'
echo "==> done; the cluster keeps running. Stop it with: .venv/bin/r1ctl dev down"
