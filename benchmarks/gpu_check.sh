#!/usr/bin/env bash
# The prepared GPU check for a lent single-GPU machine (no apex, no Transformer Engine, no network there).
# Here, first:   bash scripts/device_kit.sh          (builds .whl/, <= 60 MiB, with the benchmark rows)
# Then one device `run` with carry [".whl"]:   bash benchmarks/gpu_check.sh
# It prints one JSON block and one table (benchmarks/gpu_check.py): stages env, train, parity and packed (data.packing:
# packed == unpacked on the GPU, THD too where Transformer Engine is importable; trimmed vs packed throughput);
# `--device cpu` runs the same stages here, tiny; `--stages packed` runs one.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  # shellcheck source=scripts/device_install.sh
  source scripts/device_install.sh
  [ -f .whl/data/helpsteer_sample_300.jsonl ] && export NEMO_HS2_DATA=.whl/data/helpsteer_sample_300.jsonl
fi
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
PY=python3
[ -x .venv/bin/python ] && [ ! -d .whl ] && PY=.venv/bin/python
PYTHONUNBUFFERED=1 exec "$PY" benchmarks/gpu_check.py "$@"
