#!/usr/bin/env bash
# Install tarm_plugin and what it needs into a virtual environment (default .venv).
# Idempotent: a second run only checks (a stamp in the venv holds this checkout's path and
# a hash of setup.py, this script and the constraints; if they match and the plugin imports
# from here, nothing is reinstalled). Env: VENV (path), TORCH_SPEC (default
# torch==2.13.0, a CPU build; on GPU machines set e.g. TORCH_SPEC='torch==2.13.0'
# with your CUDA index, or install torch into the venv first), CONSTRAINTS (default
# constraints.txt: the tested versions of every package, torch 2.13.0 among them; empty:
# none; not applied when TORCH_SPEC or an installed torch asks for another torch).
set -euo pipefail
if [[ -n ${CONSTRAINTS:-} && $CONSTRAINTS != /* ]]; then CONSTRAINTS=$PWD/$CONSTRAINTS; fi  # the caller's path
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
[[ -x "$VENV/bin/python" ]] || python3 -m venv "$VENV"
PY="$VENV/bin/python"
STAMP="$VENV/.tarm-install"
CONSTRAINTS=${CONSTRAINTS-constraints.txt}
# the installed torch's version from its metadata: importing torch would add seconds to every call
HAVE_TORCH=$("$PY" -c "from importlib.metadata import version; print(version('torch').split('+')[0])" 2>/dev/null || true)
if [[ -n $CONSTRAINTS && ( ${TORCH_SPEC:-torch==2.13.0} != torch==2.13.0 || ( -n $HAVE_TORCH && $HAVE_TORCH != 2.13.0 ) ) ]]; then
    echo "install: ${TORCH_SPEC:-torch $HAVE_TORCH}, not the tested torch 2.13.0: $CONSTRAINTS not applied"
    CONSTRAINTS=
fi
if [[ -n $CONSTRAINTS && ! -f $CONSTRAINTS ]]; then
    echo "install: error: CONSTRAINTS=$CONSTRAINTS: no such file" >&2
    exit 2
fi
WANT="$(pwd) $(cat setup.py scripts/install.sh ${CONSTRAINTS:+"$CONSTRAINTS"} | sha1sum | cut -c1-40)"
if [[ -f "$STAMP" && "$(cat "$STAMP")" == "$WANT" ]] && "$PY" -c "
import os, sys, tarm_plugin
sys.exit(os.path.dirname(os.path.dirname(os.path.abspath(tarm_plugin.__file__))) != os.getcwd())" 2>/dev/null; then
    echo "install: tarm_plugin ready in $VENV (up to date)"
    exit 0
fi
PIP=("$PY" -m pip install -q --disable-pip-version-check ${CONSTRAINTS:+-c "$CONSTRAINTS"})
if ! "$PY" -c "import torch" 2>/dev/null; then
    echo "install: ${TORCH_SPEC:-torch==2.13.0}"
    "${PIP[@]}" "${TORCH_SPEC:-torch==2.13.0}"
fi
# fairseq compiles C extensions against torch and numpy: build it against the ones
# installed here (build isolation would fetch another, possibly CUDA, torch)
"${PIP[@]}" "numpy<2" cython setuptools wheel
if ! "$PY" -c "import fairseq" 2>/dev/null; then
    echo "install: fairseq (fairseq-fixed on Python >= 3.11; compiles for a few minutes)"
    "${PIP[@]}" --no-build-isolation "$("$PY" -c 'import sys; print("fairseq-fixed==0.12.3.1" if sys.version_info >= (3, 11) else "fairseq==0.12.2")')"
fi
"${PIP[@]}" --no-build-isolation -e ".[dev,data,plot,log]"
"$PY" -c "import tarm_plugin" && echo "$WANT" > "$STAMP" && echo "install: tarm_plugin ready in $VENV"
