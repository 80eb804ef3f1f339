#!/usr/bin/env bash
# Install pystematic-torch with its test extras into .venv and run the whole test suite:
# unit, multi-process (gloo), subprocess CLI runs, examples, lint and the docs build.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -k context`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh test,docs,examples
exec .venv/bin/python -m pytest "$@"
