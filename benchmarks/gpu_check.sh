#!/usr/bin/env bash
# One prepared GPU check for a lent single-GPU machine (no apex, no Transformer Engine there): install the pinned
# stack from wheels carried in .whl/ (see the device README), then train a ~1.2B-parameter reward model at
# seq_length 4096 in bf16 (megatron_amp_O2) for a handful of steps in both modes and print the throughput table.
#   bash benchmarks/gpu_check.sh [extra args for benchmarks/train_throughput.py]
set -euo pipefail
cd "$(dirname "$0")/.."
if [ -d .whl ]; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site:$PWD
fi
nvidia-smi --query-gpu=name,memory.total --format=csv,noheader
python3 -c "from nemo_hs2 import compat; print('compat patches on this machine:', compat.apply())"
bpe=${NEMO_HS2_GPT2_TIKTOKEN:-.whl/gpt2.tiktoken}
args=(--device cuda --pp 1 --size 1b --seq-length 4096 --micro-batch 2 --micro-batches 2 --steps 5 --warmup 2)
[ -f "$bpe" ] && args+=(--bpe-file "$bpe")
python3 benchmarks/train_throughput.py "${args[@]}" "$@"
