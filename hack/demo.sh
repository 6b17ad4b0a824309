#!/usr/bin/env bash
# The main flow on the local cluster. Run through `make demo` (which sets up first).
set -euo pipefail
exec "$(dirname "$0")/../.venv/bin/python" "$(dirname "$0")/demo.py"
