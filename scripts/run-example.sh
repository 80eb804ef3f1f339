#!/usr/bin/env bash
# Install pystematic-torch into .venv and train the quick-start digits classifier end to
# end. Arguments go to the experiment, e.g. `bash scripts/run-example.sh --epochs 20`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup-venv.sh examples
exec .venv/bin/python examples/quickstart.py --epochs 5 "$@"
