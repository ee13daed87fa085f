#!/usr/bin/env bash
# Creates .venv in the repo root with the pinned CPU stack and nemo_hs2 (editable); re-uses a complete one.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
LOCK=requirements/cpu.lock
STAMP=.venv/.nemo_hs2-installed
want=$(cat "$LOCK" setup.py | sha256sum | cut -d' ' -f1)

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] \
   && .venv/bin/python -c "import nemo_hs2, nemo_aligner, megatron.core, nemo" 2>/dev/null; then
  echo "setup: re-using complete .venv"
  exit 0
fi

"$PYTHON" -c 'import sys; assert sys.version_info[:2] == (3, 11), "the lock is for Python 3.11 (torch 2.13 cp311)"'
start=$(date +%s)
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
# --no-deps: the lock is a complete, tested set. Resolving NeMo's own requirements pulls transformers 5,
# numpy 2, torchvision and mamba-ssm, each of which breaks NeMo 2.1 (see README, "Pinned stack").
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps -r "$LOCK"
.venv/bin/python -m pip install --quiet --disable-pip-version-check --no-deps --no-build-isolation -e .
echo "$want" > "$STAMP"
echo "setup: installed in $(( $(date +%s) - start )) s, .venv is $(du -sh .venv | cut -f1)"
