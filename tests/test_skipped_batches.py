"""A global batch with nothing to learn (every pair a tie, for a Bradley-Terry loss) is skipped and counted, never
fatal: no weight update at all, so the next batch sees exactly the weights the skipped one saw."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]


def _pairs(path: Path, train: list[tuple[str, int]]) -> Path:
    # preference/preference.jsonl.gz fields (nvidia/HelpSteer2 dataset card); split train / val.
    rows = [{"split": "train", "prompt": f"How do I do task {tag}?", "response_1": f"Step one, then two ({tag}).",
             "response_2": f"No idea {tag}.", "preference_strength": s} for tag, s in train]
    rows += [{"split": "val", "prompt": f"Q{i}?", "response_1": "Yes.", "response_2": "No, never.",
              "preference_strength": -1} for i in range(4)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _train(tmp: Path, name: str, strengths: list[tuple[str, int]], steps: int) -> dict:
    run = tmp / name
    args = ["data=helpsteer2_preference", f"data.preference_file={_pairs(tmp / f'{name}.jsonl', strengths)}",
            "data.cache_dir=null", "model.regression.loss_func=regular_bt", "data.attributes=[helpfulness]",
            "model.regression.reward_weights=helpfulness_only", "model.global_batch_size=4", "model.optim.weight_decay=0.1",
            "model.micro_batch_size=2", "trainer.rm.train_random_sampler=false", "trainer.rm.max_epochs=1",
            f"trainer.rm.max_steps={steps}",
            f"trainer.rm.val_check_interval={steps}", f"trainer.rm.save_interval={steps}",
            f"exp_manager.explicit_log_dir={run}"]
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "train_reward_model.py"), *args], cwd=ROOT,
                          capture_output=True, text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"
    return json.loads((run / "metrics.json").read_text())


def test_an_all_tie_batch_is_skipped_counted_and_changes_nothing(tmp_path):
    useful = [("a", -2), ("b", 1), ("c", -3), ("d", 2)]
    ties = [(f"tie{i}", 0) for i in range(8)]
    skipping = _train(tmp_path, "ties_first", [*ties[:4], *useful, *ties[4:]], steps=3)
    plain = _train(tmp_path, "no_ties", useful, steps=1)
    assert skipping["skipped_steps"] == 2 and plain["skipped_steps"] == 0
    history = [r for r in skipping["train_history"]]  # steps 0, 1, 2: ties, useful, ties
    assert [r["loss"] for r in history[0::2]] == [0.0, 0.0] and [r["grad_norm"] for r in history[0::2]] == [0.0, 0.0]
    # The weights at the second step are the initial ones: the same loss, bit for bit, as a run whose first batch is
    # that batch (an Adam step on zero gradients would still have moved them through weight decay or momentum).
    assert history[1]["loss"] == plain["train_history"][0]["loss"] and history[1]["loss"] > 0
