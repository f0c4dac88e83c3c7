#!/usr/bin/env bash
# Install, then run the test suite (unit tests + fairseq CLI tests on a PTB slice).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${VENV:-.venv}/bin/python" -m pytest -q "$@"
