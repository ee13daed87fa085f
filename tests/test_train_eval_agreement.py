"""Black-box agreement: for a checkpoint trained through ``examples/train_reward_model.py``, the final validation
numbers training writes (``metrics.json``) equal what ``examples/evaluate_reward_model.py`` computes on the same file
(<= 1e-5), for HelpSteer2 regression, HelpSteer2-Preference and HelpSteer3-Preference.

Files are written in the released datasets' formats from the demo generator (its texts, its labels / strengths), so
both sides read them with their real readers; nothing here shares code with either path but the files.
"""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest

from nemo_hs2.data import helpsteer3 as hs3
from nemo_hs2.data.demo import demo_examples, demo_pairs

pytestmark = pytest.mark.slow
ROOT = Path(__file__).resolve().parents[1]
TOL = 1e-5
STEPS = ["trainer.rm.max_steps=4", "trainer.rm.val_check_interval=4", "trainer.rm.save_interval=4",
         "data.cache_dir=null"]
BT = ["data.attributes=[helpfulness]", "model.regression.reward_weights=helpfulness_only"]


def _run(script: str, args: list[str]) -> None:
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / script), *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=900, env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}"


def _train_and_evaluate(tmp: Path, train_args: list[str], eval_key: str, eval_file: Path) -> tuple[dict, dict]:
    run = tmp / "run"
    _run("train_reward_model.py", [*train_args, *STEPS, f"exp_manager.explicit_log_dir={run}"])
    final = json.loads((run / "metrics.json").read_text())["final_validation"]
    nemo = next((run / "checkpoints").glob("*.nemo"))
    _run("evaluate_reward_model.py", [f"checkpoint={nemo}", f"{eval_key}.file={eval_file}",
                                      f"output_dir={tmp / 'eval'}", "progress=false"])
    return final, json.loads((tmp / "eval" / f"{eval_key}.json").read_text())


def _close(a, b) -> bool:
    return (a is None and (b is None or math.isnan(b))) or (b is not None and abs(a - b) <= TOL)


def test_helpsteer2_regression(tmp_path):
    # train.jsonl.gz / validation.jsonl.gz fields of nvidia/HelpSteer2: prompt, response, five 0-4 scores.
    for split, n in (("train", 48), ("validation", 16)):
        rows = [{"prompt": e.prompt, "response": e.response, **e.labels} for e in demo_examples(n, 7, split)]
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final, evaluated = _train_and_evaluate(
        tmp_path, ["data=helpsteer2", f"data.train_file={tmp_path / 'train.jsonl'}",
                   f"data.validation_file={tmp_path / 'validation.jsonl'}", "data.system_prompt=Demo."],
        "helpsteer2", tmp_path / "validation.jsonl")
    m = evaluated["metrics"]
    keys = ["mse", "baseline_mse", "pairwise_acc/reward", "pairs/reward", "pairwise_acc/helpfulness"]
    keys += [f"{a}/{k}" for a in evaluated["attributes"] for k in ("mse", "mae", "pearson", "rounded_acc", "count")]
    assert final["rows"] == evaluated["rows"] == 32
    diffs = {k: (final[k], m[k]) for k in keys if not _close(final[k], m[k])}
    assert not diffs, diffs


def test_helpsteer2_preference(tmp_path):
    # preference/preference.jsonl.gz: split train / val, negative preference_strength = response_1 better.
    lines = []
    for split, value, n in (("train", "train", 48), ("validation", "val", 16)):
        rows, strengths = demo_pairs(n, 7, split)
        for a, b, s in zip(rows[0::2], rows[1::2], strengths):
            lines.append({"split": value, "prompt": a.prompt, "response_1": a.response, "response_2": b.response,
                          "preference_strength": int(s), "preference_statement": "", "preference_elaboration": ""})
    path = tmp_path / "preference.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in lines))
    final, evaluated = _train_and_evaluate(
        tmp_path, ["data=helpsteer2_preference", f"data.preference_file={path}",
                   "model.regression.loss_func=scaled_bt", "model.global_batch_size=8", "model.micro_batch_size=2",
                   *BT], "helpsteer2_preference", path)
    m = evaluated["metrics"]
    assert m["pairs"] == 16 and evaluated["bt_loss_kind"] == "scaled_bt"
    for key in ("bt_loss", "preference_acc", "preference_pairs"):
        assert _close(final[key], m[key]), (key, final[key], m[key])


def test_helpsteer3_preference(tmp_path):
    for split, n in (("train", 48), ("validation", 16)):
        rows = hs3.demo_helpsteer3_rows(n, 7, split)
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    final, evaluated = _train_and_evaluate(
        tmp_path, ["data=helpsteer3_preference", f"data.train_file={tmp_path / 'train.jsonl'}",
                   f"data.validation_file={tmp_path / 'validation.jsonl'}", "model.regression.loss_func=regular_bt",
                   "model.global_batch_size=8", "model.micro_batch_size=2", *BT],
        "helpsteer3", tmp_path / "validation.jsonl")
    m = evaluated["metrics"]
    assert m["pairs"] == 16 and set(evaluated["domains"]) == set(hs3.DOMAINS)
    assert sum(d["pairs"] for d in evaluated["domains"].values()) == 16
    for key in ("bt_loss", "preference_acc", "preference_pairs"):
        assert _close(final[key], m[key]), (key, final[key], m[key])
