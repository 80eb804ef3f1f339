#!/usr/bin/env bash
# Install pystematic-torch into .venv and train the quick-start digits classifier end to
# end. Arguments go to the experiment, e.g. `bash scripts/run-example.sh --epochs 20`.
set -euo pipefail
cd "$(dirname "$0")/.."
python="${PYTHON:-python3}"
[ -x .venv/bin/python ] || "$python" -m venv .venv
.venv/bin/python -m pip install --quiet --disable-pip-version-check torch==2.13.0
.venv/bin/python -m pip install --quiet --disable-pip-version-check -e ".[examples]"
exec .venv/bin/python examples/quickstart.py --epochs 5 "$@"
