#!/usr/bin/env bash
# Builds .venv-ecosystem/ (git-ignored; $ECOSYSTEM_ENV overrides; prints its python last): today's Hugging Face
# stack, where users consume an exported reward model, for tests/test_ecosystem.py:
#   PY=$(bash scripts/ecosystem_env.sh | tail -1); $PY tests/hf/ecosystem_check.py ...
# transformers 5.x and TRL 1.x cannot live in .venv: NeMo 2.1 / NeMo-Aligner 0.7.0 need transformers 4.48 (see
# requirements/cpu.lock). torch is .venv's (2.13.0, the CPU wheel on local disk; an unpinned torch pulls a CUDA
# build), so both stacks run the same kernels; transformers and TRL are pinned, the rest is pip's resolution of
# them (written to .venv-ecosystem/freeze.txt). Re-uses a complete build (stamp = hash of the pins).
# Also the TRL side of benchmarks/peer_bt.py (the same job through TRL's RewardTrainer).
set -euo pipefail
cd "$(dirname "$0")/.."
PINS="transformers==5.25.0 trl==1.16.0 torch==2.13.0"
want=$(echo "$PINS" | sha256sum | cut -d' ' -f1)
DEST=${ECOSYSTEM_ENV:-$PWD/.venv-ecosystem}
STAMP="$DEST/.nemo_hs2-ecosystem"
# One build at a time: .ci/run starts this in the background while the tests run, and a test that needs it waits
# here for that build, then re-uses it.
mkdir -p "$(dirname "$DEST")"
exec 9>"$DEST.lock"
flock 9

if [ -f "$STAMP" ] && [ "$(cat "$STAMP")" = "$want" ] && "$DEST/bin/python" -c "import transformers, trl" 2>/dev/null
then
  echo "ecosystem_env: re-using $DEST" >&2
  echo "$DEST/bin/python"
  exit 0
fi
start=$(date +%s)
rm -rf "$DEST"
# The same interpreter as .venv (3.11), so that only the libraries differ between the two stacks.
base=$(sed -n 's/^executable = //p' .venv/pyvenv.cfg 2>/dev/null || true)
"${base:-python3.11}" -m venv "$DEST"
# shellcheck disable=SC2086  # one word per pin
"$DEST/bin/python" -m pip install --quiet --disable-pip-version-check --no-compile $PINS 2>&1 \
  | { grep -v "is ignored: it is neither a file nor a directory" || true; } >&2
"$DEST/bin/python" -m pip freeze --disable-pip-version-check > "$DEST/freeze.txt"
"$DEST/bin/python" -c "import torch, transformers, trl; assert torch.__version__.startswith('2.13.0'), torch.__version__
print('ecosystem_env: transformers', transformers.__version__, 'trl', trl.__version__, 'torch', torch.__version__)" >&2
echo "$want" > "$STAMP"
echo "ecosystem_env: built $DEST in $(( $(date +%s) - start )) s ($(du -sh "$DEST" | cut -f1))" >&2
echo "$DEST/bin/python"
