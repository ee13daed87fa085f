"""Packing (data.packing): the layout, and the model's losses / gradients / predictions against unpacked.

The layout tests are plain tensors. The model tests run tests/parallel/harness.py (the real stack: Hydra config,
NeMo trainer, our model, megatron-core's local attention, gloo) with packing on and off on the same weights and
batch; TP=2 and PP=2 are checked in tests/test_parallel_equivalence.py with every other layout.
"""

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from nemo_hs2.data import packing
from tests.parallel.torchrun_io import torchrun

ROOT = Path(__file__).resolve().parents[1]
HARNESS = str(ROOT / "tests" / "parallel" / "harness.py")
TOL = 1e-5
# The parallel-equivalence batch: 8 rows of 9..39 tokens, micro-batches of 2 rows (one pair).
BASE = ["model.global_batch_size=8", "model.micro_batch_size=2", "model.hidden_size=32", "model.ffn_hidden_size=64",
        "model.encoder_seq_length=64", "model.num_attention_heads=4"]


def micro_batch(lengths, width=None):
    width = width or max(lengths)
    inputs = torch.zeros(len(lengths), width, dtype=torch.int64)
    for i, n in enumerate(lengths):
        inputs[i, :n] = torch.arange(1, n + 1) + 100 * i  # row i's tokens are 100i+1 .. 100i+n
    return {"inputs": inputs, "lengths": torch.tensor(lengths),
            "position_ids": torch.arange(width).expand(len(lengths), width).contiguous(),
            "labels": torch.arange(len(lengths), dtype=torch.float32).unsqueeze(1),
            "pair_ids": torch.arange(len(lengths)) // 2}


def test_first_fit_never_splits_a_row_and_respects_capacity():
    lengths = [30, 5, 17, 40, 9, 9, 25]
    bins = packing.first_fit(lengths, capacity=40)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 40 for b in bins)
    # first-fit decreasing: 40 | 30 | 25 | 17 open bins; 9 joins 30, the next 9 and 5 join 25
    assert bins == [[3], [0, 4], [1, 5, 6], [2]]
    assert packing.first_fit(lengths, capacity=None) == [list(range(len(lengths)))]
    assert packing.first_fit([50, 10], capacity=20) == [[0], [1]]  # longer than the capacity: a bin of its own
    with pytest.raises(ValueError, match="positive"):
        packing.first_fit(lengths, capacity=0)


def test_pack_lays_rows_end_to_end_with_ends_positions_and_segments():
    mb = micro_batch([5, 3, 4])
    out = packing.pack(mb, capacity=None, multiple=8)
    assert out["inputs"].shape == (1, 16)  # 12 tokens rounded up to 8
    assert out["inputs"][0, :12].tolist() == [1, 2, 3, 4, 5, 101, 102, 103, 201, 202, 203, 204]
    assert out["position_ids"][0, :12].tolist() == [0, 1, 2, 3, 4, 0, 1, 2, 0, 1, 2, 3]
    assert out["segments"][0].tolist() == [0] * 5 + [1] * 3 + [2] * 4 + [packing.PAD_SEGMENT] * 4
    assert out["ends"].tolist() == [[0, 4], [0, 7], [0, 11]]
    # the token at each row's end is that row's last token, as unpacked reads it at lengths - 1
    for i, (p, c) in enumerate(out["ends"].tolist()):
        assert out["inputs"][p, c] == mb["inputs"][i, mb["lengths"][i] - 1]
    for key in ("labels", "pair_ids", "lengths"):  # per-row fields keep their row order
        assert torch.equal(out[key], mb[key])


def test_pack_into_bins():
    mb = micro_batch([30, 5, 17, 40], width=40)
    out = packing.pack(mb, capacity=40, multiple=8)
    assert out["inputs"].shape == (3, 40)  # [40], [30 + 5], [17]: 92 real tokens in 120, not 160
    rows = {}
    for i, (p, c) in enumerate(out["ends"].tolist()):
        rows.setdefault(p, []).append(i)
        n = int(mb["lengths"][i])
        assert out["inputs"][p, c - n + 1:c + 1].tolist() == mb["inputs"][i, :n].tolist()
        assert out["position_ids"][p, c - n + 1:c + 1].tolist() == list(range(n))
    assert sorted(map(sorted, rows.values())) == sorted(map(sorted, packing.first_fit([30, 5, 17, 40], 40)))
    assert packing.packed_width([30, 5, 17, 40], 40, 8) == (3, 40)
    assert packing.packed_width([30, 5, 17, 40], None, 8) == (1, 96)


def test_block_causal_mask():
    segments = torch.tensor([[0, 0, 1, 1, 1, -1]])
    masked = packing.block_causal_mask(segments)
    assert masked.shape == (1, 1, 6, 6) and masked.dtype == torch.bool
    allowed = (~masked[0, 0]).int().tolist()
    assert allowed == [[1, 0, 0, 0, 0, 0],
                       [1, 1, 0, 0, 0, 0],
                       [0, 0, 1, 0, 0, 0],   # row 1 starts: it sees nothing of row 0
                       [0, 0, 1, 1, 0, 0],
                       [0, 0, 1, 1, 1, 0],
                       [0, 0, 0, 0, 0, 1]]   # padding: its own segment


def test_thd_cu_seqlens():
    out = packing.pack(micro_batch([5, 3, 4]), capacity=None, multiple=8)
    cu, longest = packing.thd_cu_seqlens(out["segments"])
    assert cu.dtype == torch.int32 and cu.tolist() == [0, 5, 8, 12, 16] and longest == 5
    with pytest.raises(ValueError, match="one sequence"):
        packing.thd_cu_seqlens(torch.zeros(2, 4, dtype=torch.int64))


def test_empty_row_is_refused():
    with pytest.raises(ValueError, match="at least one token"):
        packing.pack(micro_batch([3, 0], width=3), None, 8)


def run_harness(tmp_path, *extra, port=29471):
    (result,) = torchrun(HARNESS, 1, ["--packing-only", *extra, *BASE], tmp_path / "packing.json", port, timeout=600)
    return result["packing"]


@pytest.mark.slow
def test_packed_equals_unpacked_and_a_broken_mask_or_end_index_is_caught(tmp_path):
    """TP=1: packed (default bins, bins of 48 tokens, one row per micro-batch) == unpacked within 1e-5 for the
    regression and the Bradley-Terry loss (losses, predictions, every gradient, and inference); with the block-diagonal mask
    replaced by a plain causal one, or the head reading one token early, the same check fails."""
    good = run_harness(tmp_path)
    for label, res in good.items():
        assert res["grad_tensors"] > 0 and {"regression/grads", "regular_bt/grads", "inference/pred"} <= res["diffs"].keys()
        assert max(res["diffs"].values()) <= TOL, (label, res)
    assert set(good) == {"default", "bins", "one_row"}
    assert all(s[0] == 1 for s in good["one_row"]["packed_shapes"])
    assert any(s[0] == 1 for s in good["bins"]["packed_shapes"])  # a pair sharing a packed row (the mask matters)
    assert any(s[0] > 1 for s in good["bins"]["packed_shapes"])   # and one split over two
    # the default never packs wider than trimming would cut (micro-batch rows 9..39 tokens: at most 40)
    assert all(s[1] <= 40 for s in good["default"]["packed_shapes"])
    for mutation in ("mask", "ends"):
        broken = run_harness(tmp_path, "--packing-mutation", mutation)
        for label, res in broken.items():
            if mutation == "mask" and res["max_rows_sharing"] == 1:
                continue  # no packed row holds two rows: nothing for the mask to separate
            worst = max(v for k, v in res["diffs"].items() if k.endswith("/train_loss") or k.endswith("/grads"))
            assert worst > 100 * TOL, (mutation, label, res)
        assert broken["one_row"]["max_rows_sharing"] > 1


@pytest.mark.slow
def test_packed_training_resumes_exactly(tmp_path):
    """A packed Bradley-Terry run stopped at step 2 and resumed gives the uninterrupted run's losses bit for bit."""
    script = str(ROOT / "examples" / "train_reward_model.py")
    common = ["data=demo_preference", "data.demo.train_prompts=24", "data.demo.validation_prompts=4",
              "model.regression.loss_func=regular_bt", "model.micro_batch_size=2", "model.global_batch_size=4",
              "data.packing=true", "trainer.rm.val_check_interval=2", "trainer.rm.save_interval=2",
              "exp_manager.checkpoint_callback_params.monitor=step", "exp_manager.checkpoint_callback_params.mode=max"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")

    def train(log_dir, steps):
        proc = subprocess.run([sys.executable, script, *common, f"trainer.rm.max_steps={steps}",
                               f"exp_manager.explicit_log_dir={log_dir}"], cwd=ROOT, env=env, capture_output=True,
                              text=True, timeout=900)
        assert proc.returncode == 0, proc.stderr[-4000:]
        doc = json.loads((Path(log_dir) / "metrics.json").read_text())
        return [(r["step"], r["loss"]) for r in doc["train_history"]]

    whole = train(tmp_path / "whole", 4)
    train(tmp_path / "split", 2)
    resumed = train(tmp_path / "split", 4)
    assert [s for s, _ in whole] == [0, 1, 2, 3]
    assert resumed == whole
