#!/usr/bin/env bash
# The newest releases that setup.cfg allows, in a throw-away virtual environment (.venv-latest, rebuilt each time):
#   bash .ci/latest.sh test     run the suite on them (`make test-latest`: before a release, and after moving pins)
#   bash .ci/latest.sh freeze   write their versions to constraints.txt (`make update-constraints`), then `make test`
# A failure on new releases is fixed in the code, not pinned around, unless the release itself is broken: then
# exclude it in constraints.txt with a comment naming the upstream issue.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=$(realpath -m "${LATEST_VENV:-.venv-latest}")  # absolute: PATH below must not depend on the working folder
rm -rf "$VENV"
python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install -q --disable-pip-version-check -U pip
CONSTRAINTS="" PYTHON="$VENV/bin/python" bash .ci/install.sh dev
"$VENV/bin/python" -m pip list --disable-pip-version-check 2>/dev/null \
  | grep -iE "^(torch|torchvision|timm|accelerate|transformers|datasets|evaluate|huggingface.hub|safetensors|numpy|pillow) "
case "${1:-test}" in
  test)   CADEL_LATEST_RELEASES=1 PATH="$VENV/bin:$PATH" HF_HUB_OFFLINE=1 "$VENV/bin/python" -m pytest -n 2 -q ;;
  freeze) "$VENV/bin/python" tools/freeze_constraints.py --output constraints.txt
          echo "constraints.txt updated: run 'make test' (a fresh install with the new pins) before committing it" ;;
  *)      echo "usage: bash .ci/latest.sh [test|freeze]" >&2; exit 2 ;;
esac
