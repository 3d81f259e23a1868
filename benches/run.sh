#!/usr/bin/env bash
# make bench: every benchmark against its reference, table into docs/benchmarks.md (see benches/run.py).
#   bash benches/run.sh [--repeats N] [--quick] [--only feeding,tta] [--no-write] [--no-compile]
set -euo pipefail
cd "$(dirname "$0")/.."
export NO_ALBUMENTATIONS_UPDATE=1
PY=python
[ -x .venv/bin/python ] && PY=.venv/bin/python
exec "$PY" benches/run.py "$@"
