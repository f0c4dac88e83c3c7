#!/usr/bin/env bash
# Install, then run the test suite (unit tests, fairseq CLI tests on a PTB slice, the
# import-layer contract) on TEST_WORKERS processes (pytest-xdist; default 2, one per
# core here; TEST_WORKERS=0 runs them in this process). Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
exec "${VENV:-.venv}/bin/python" -m pytest -q -n "${TEST_WORKERS:-2}" "$@"
