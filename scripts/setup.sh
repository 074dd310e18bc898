#!/usr/bin/env bash
# Set up napari-seg3d in ./.venv with pinned versions (constraints.txt). Idempotent.
#   scripts/setup.sh            the package (napari with Qt 6 included)
#   scripts/setup.sh testing    plus the test tools
# On Debian/Ubuntu as root it also installs Xvfb and the X/GL libraries Qt needs, so a machine
# without a display can run napari in a virtual one.
set -euo pipefail
cd "$(dirname "$0")/.."
extra="${1:-testing}"

if ! command -v Xvfb >/dev/null 2>&1 || ! ldconfig -p 2>/dev/null | grep -q libxcb-icccm.so.4; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    echo "== Installing Xvfb and the X libraries Qt 6 needs (apt-get)"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq >/dev/null || true
    apt-get install -y -qq --no-install-recommends xvfb xauth libxcb-cursor0 libxcb-icccm4 \
      libxcb-image0 libxcb-keysyms1 libxcb-randr0 libxcb-render-util0 libxcb-xinerama0 \
      libxcb-shape0 libxcb-xkb1 libxkbcommon-x11-0 libgl1 libegl1 libgl1-mesa-dri libdbus-1-3 \
      libfontconfig1 libglib2.0-0 >/dev/null
  elif ! command -v Xvfb >/dev/null 2>&1; then
    echo "Note: Xvfb is not installed; GUI tests and the headless demo need it (apt-get install xvfb libxcb-cursor0)."
  fi
fi

PY="${PYTHON:-python3}"
if [ ! -x .venv/bin/python ]; then
  echo "== Creating .venv"
  "$PY" -m venv .venv
fi
.venv/bin/python -m pip install -q --upgrade pip
echo "== Installing napari-seg3d[$extra] (pinned by constraints.txt)"
# torch first and alone: the pinned CPU/CUDA wheel, never a surprise multi-GB download.
.venv/bin/python -m pip install -q -c constraints.txt torch
.venv/bin/python -m pip install -q -c constraints.txt -e ".[$extra]"
