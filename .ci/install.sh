#!/usr/bin/env bash
# Installs what cadel needs on a fresh Debian/Ubuntu machine: the Fashion-MNIST idx files (Debian package) and the
# Python packages (torch first, pinned to the build this machine type caches; elsewhere pip fetches it).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && command -v apt-get >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo"
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq dataset-fashion-mnist >/dev/null \
    || echo "dataset-fashion-mnist unavailable: Fashion-MNIST will be read from the Hugging Face Hub"
fi
PIP="${PYTHON:-python3} -m pip install -q --disable-pip-version-check"
$PIP "torch==2.14.1" "torchvision==0.29.1" 2>/dev/null || $PIP torch torchvision
if [ "${1:-}" = dev ]; then $PIP -e ".[dev]"; else $PIP -e .; fi
