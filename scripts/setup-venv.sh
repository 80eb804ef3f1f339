#!/usr/bin/env bash
# Create .venv (if missing) and install pystematic-torch into it, editable, with the extras
# named by the first argument, e.g. `bash scripts/setup-venv.sh test,docs,examples`.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
pip=(.venv/bin/python -m pip install --quiet --disable-pip-version-check)
# torch is pinned and installed first: an unpinned torch pulled in as a dependency would
# fetch the newest CUDA build (gigabytes). The package itself only asks for torch>=2.2.
"${pip[@]}" torch==2.13.0
"${pip[@]}" -e ".[${1:-examples}]"
