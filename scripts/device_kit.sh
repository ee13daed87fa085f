#!/usr/bin/env bash
# Builds .whl/ (git-ignored): what a lent GPU machine lacks for nemo_hs2, as Python 3.12 wheels, <= 60 MiB; then
# checks its size and that every dependency is in the kit or the device image. Details: scripts/device_kit.py.
# On the device, in the same `run` that carries .whl:  source scripts/device_install.sh
set -euo pipefail
cd "$(dirname "$0")/.."
exec .venv/bin/python scripts/device_kit.py build "$@"
