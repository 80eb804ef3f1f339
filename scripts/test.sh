#!/usr/bin/env bash
# Install pystematic-torch with its test extras into .venv and run the whole test suite:
# unit, multi-process (gloo), subprocess CLI runs, examples, lint and the docs build.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k context`.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
# torch is pinned and installed first: an unpinned torch pulled in as a dependency would
# fetch the newest CUDA build (gigabytes). The package itself only asks for torch>=2.2.
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[test,docs,examples]"
exec .venv/bin/python -m pytest "$@"
