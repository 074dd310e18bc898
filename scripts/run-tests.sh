#!/usr/bin/env bash
# Set up, then run the test suite (CPU; GUI tests in a real napari window on Xvfb).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh testing
# Two worker processes (pytest-xdist), a test file each at a time: every test computes on one
# thread (tests/conftest.py), so one process left a 2-core machine half idle.
# SEG3D_TEST_WORKERS=0 runs the suite in this one process (e.g. to debug a test).
exec .venv/bin/python -m pytest -n "${SEG3D_TEST_WORKERS:-2}" --dist loadfile "$@"
