#!/usr/bin/env bash
# Installs what cadel needs on a fresh Debian/Ubuntu machine: the Fashion-MNIST idx files (Debian package) and the
# Python packages at the exact versions the test suite passed with (constraints.txt; `make test-latest` tries the
# newest releases instead, `make update-constraints` moves the pins).
# Fails when the Fashion-MNIST files can be had neither from Debian nor from the Hugging Face Hub: the demo and the
# real-training tests need them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null || true
fi
if [ ! -f "$FMNIST" ]; then
  if "$PY" -c "import socket; socket.create_connection(('huggingface.co', 443), timeout=5)" 2>/dev/null; then
    echo "dataset-fashion-mnist unavailable: Fashion-MNIST will be read from the Hugging Face Hub"
  else
    echo "error: Fashion-MNIST is neither installable from Debian (apt-get install dataset-fashion-mnist) nor" \
         "reachable on the Hugging Face Hub; install the package or put the idx files in $(dirname "$FMNIST")" >&2
    exit 1
  fi
fi
# CONSTRAINTS= (empty) installs the newest releases that setup.cfg allows (what .ci/latest.sh does)
CONSTRAINTS=${CONSTRAINTS-constraints.txt}
# an array, not a string: an interpreter or constraints path with spaces stays one word
PIP=("$PY" -m pip install -q --disable-pip-version-check)
if [ -n "$CONSTRAINTS" ]; then PIP+=(-c "$CONSTRAINTS"); fi
"${PIP[@]}" torch torchvision  # first and alone: the largest download, and the build the constraints name
if [ "${1:-}" = dev ]; then "${PIP[@]}" -e ".[dev]"; else "${PIP[@]}" -e .; fi
