#!/usr/bin/env bash
# Builds a side virtual environment (default ~/.cache/nemo_hs2/trl-<pins hash>; $TRL_ENV overrides; prints its python
# last) with TRL's current release and the transformers it asks for, for benchmarks/peer_bt.py:
#   PEER_PY=$(bash scripts/trl_env.sh | tail -1)
# Why not .venv: TRL 1.x needs transformers >= 4.56 (5.x here) and accelerate/datasets releases that NeMo 2.1 and
# NeMo-Aligner 0.7.0 (pinned at transformers 4.48 in requirements/cpu.lock) were never run with. torch is pinned to
# .venv's (2.13.0, the CPU wheel on local disk), so both systems run the same kernels; everything else is pip's own
# resolution of `trl` at the pinned release. Re-uses a complete build.
set -euo pipefail
cd "$(dirname "$0")/.."
TRL_VERSION=${TRL_VERSION:-1.16.0}
PINS="trl==$TRL_VERSION torch==2.13.0"
want=$(echo "$PINS" | sha256sum | cut -d' ' -f1)
DEST=${TRL_ENV:-${XDG_CACHE_HOME:-$HOME/.cache}/nemo_hs2/trl-${want:0:12}}
STAMP="$DEST/.nemo_hs2-trl"

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ]; then
  echo "trl_env: re-using $DEST" >&2
  echo "$DEST/bin/python"
  exit 0
fi
start=$(date +%s)
rm -rf "$DEST"
# The same interpreter as .venv (3.11), so that only the libraries differ between the two systems.
base=$(sed -n 's/^executable = //p' .venv/pyvenv.cfg)
"${base:-python3.11}" -m venv "$DEST"
# shellcheck disable=SC2086  # one word per pin
"$DEST/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile $PINS 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
"$DEST/bin/python" -c "import torch, transformers, trl; print('trl_env:', 'trl', trl.__version__, 'transformers',
      transformers.__version__, 'torch', torch.__version__)" >&2
echo "$want" > "$STAMP"
echo "trl_env: built $DEST in $(( $(date +%s) - start )) s ($(du -sh "$DEST" | cut -f1))" >&2
echo "$DEST/bin/python"
