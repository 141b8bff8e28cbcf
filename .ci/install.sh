#!/usr/bin/env bash
# Installs what cadel needs on a fresh Debian/Ubuntu machine: the Fashion-MNIST idx files (Debian package) and the
# Python packages (torch first, pinned to the build this machine type caches; elsewhere pip fetches it).
# Fails when the Fashion-MNIST files can be had neither from Debian nor from the Hugging Face Hub: the demo and the
# real-training tests need them.
set -euo pipefail
cd "$(dirname "$0")/.."
FMNIST=/usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz
if [ ! -f "$FMNIST" ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null || true
fi
if [ ! -f "$FMNIST" ]; then
  if ${PYTHON:-python3} -c "import socket; socket.create_connection(('huggingface.co', 443), timeout=5)" 2>/dev/null; then
    echo "dataset-fashion-mnist unavailable: Fashion-MNIST will be read from the Hugging Face Hub"
  else
    echo "error: Fashion-MNIST is neither installable from Debian (apt-get install dataset-fashion-mnist) nor" \
         "reachable on the Hugging Face Hub; install the package or put the idx files in $(dirname $FMNIST)" >&2
    exit 1
  fi
fi
PIP="${PYTHON:-python3} -m pip install -q --disable-pip-version-check"
$PIP "torch==2.14.1" "torchvision==0.29.1" 2>/dev/null || $PIP torch torchvision
if [ "${1:-}" = dev ]; then $PIP -e ".[dev]"; else $PIP -e .; fi
