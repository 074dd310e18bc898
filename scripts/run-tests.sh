#!/usr/bin/env bash
# Set up, then run the test suite (CPU; GUI tests in a real napari window on Xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh testing
exec .venv/bin/python -m pytest "$@"
