#!/usr/bin/env bash
# Set up, then run the whole workflow on the bundled nuclei sample: with a display, napari opens
# with the sample and the Train widget; without one, the same workflow runs scripted in a real
# napari window on a virtual display, saves a screenshot and the prediction, and prints the Dice.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh testing
exec .venv/bin/napari-seg3d demo "$@"
