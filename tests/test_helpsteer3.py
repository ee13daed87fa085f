"""HelpSteer3-Preference pairs (nemo_hs2/data/helpsteer3.py) on a hand-written fixture (tests/data/
helpsteer3_sample.jsonl, not real rows), and a CPU training run on HelpSteer3-format demo pairs."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch

from nemo_hs2.data import helpsteer3 as hs3
from nemo_hs2.data.sources import BadRowError
from nemo_hs2.core.losses import bradley_terry_sum
from nemo_hs2.core.render import Renderer

ROOT = Path(__file__).resolve().parents[1]
FIXTURE = ROOT / "tests" / "data" / "helpsteer3_sample.jsonl"
PHYSICS = [{"role": "system", "content": "You are a physics tutor."}, {"role": "user", "content": "What is g?"},
           {"role": "assistant", "content": "It is the gravitational acceleration."},
           {"role": "user", "content": "What is its value on Earth?"}]


def test_reads_every_field_of_the_fixture():
    pairs = hs3.read_helpsteer3(FIXTURE)
    assert [p.strength for p in pairs] == [-2, 3, 0, -3, 1, -1]
    assert [p.domain for p in pairs] == ["General", "STEM", "Code", "Multilingual", "Multilingual", "Code"]
    assert [p.language for p in pairs] == ["english", "english", "python", "french", "chinese", "javascript"]
    assert list(pairs[1].messages) == PHYSICS  # the system turn is kept, first
    assert list(pairs[2].messages) == [{"role": "user", "content": "Reverse a list in Python."}]  # a plain string
    assert pairs[4].response_1 == "我很好，谢谢！" and pairs[3].line == 4
    rows, strengths = hs3.pair_examples(pairs)
    assert [r.response for r in rows[:2]] == [pairs[0].response_1, pairs[0].response_2]
    assert [r.pair_id for r in rows] == [0, 0, 1, 1, 2, 2, 3, 3, 4, 4, 5, 5] and strengths[1] == 3.0


def test_overall_preference_sign_is_the_bt_losses_convention():
    """Row 1: overall_preference -2, response1 better. The strength goes in unchanged, so the scaled BT loss is
    2 * -log(sigmoid(r1 - r2)): by hand, 2 * log(1 + e^-1) = 0.626523 when r1 = 1, r2 = 0; it falls as r1 rises."""
    (pair,) = hs3.read_helpsteer3(FIXTURE)[:1]
    _, strengths = hs3.pair_examples([pair])
    preference = torch.tensor([strengths[0]] * 2)
    loss, n = bradley_terry_sum(torch.tensor([[1.0], [0.0]]), preference, [1.0], "scaled_bt")
    assert n == 1 and float(loss) == pytest.approx(2 * math.log(1 + math.exp(-1)), abs=1e-6)
    swapped, _ = bradley_terry_sum(torch.tensor([[0.0], [1.0]]), preference, [1.0], "scaled_bt")
    assert float(swapped) == pytest.approx(2 * math.log(1 + math.exp(1)), abs=1e-6) and swapped > loss


def test_a_tie_reaches_the_loss_as_a_strength_zero_pair():
    from nemo_hs2.data.dataset import tokenize_examples
    from nemo_hs2.data.preference import PairCollator, PairDataset

    pairs = hs3.read_helpsteer3(FIXTURE, domains=["Code"])
    rows, strengths = hs3.pair_examples(pairs)
    tok = type("Bytes", (), {"text_to_ids": staticmethod(lambda t: list(t.encode())), "eos_id": 0})()
    ds, _ = tokenize_examples(rows, Renderer("steerlm", tok), ["helpfulness"], max_length=4096)
    batch = PairCollator(0)([PairDataset(ds, np.asarray(strengths))[i] for i in range(2)])
    assert batch["preference"].tolist() == [0.0, 0.0, -1.0, -1.0]  # the tie is a pair like any other
    assert batch["pair_ids"].tolist() == [0, 0, 1, 1]


def test_domain_and_language_filters():
    assert [p.line for p in hs3.read_helpsteer3(FIXTURE, domains=["Code", "STEM"])] == [2, 3, 6]
    only = hs3.read_helpsteer3(FIXTURE, languages=["french", "chinese"], domains=["Multilingual", "General"])
    assert [p.line for p in only] == [4, 5] and only.filtered == {"domain": 3, "language": 1}
    with pytest.raises(ValueError, match=r"data.domains: \['code'\] not among"):
        hs3.read_helpsteer3(FIXTURE, domains=["code"])
    with pytest.raises(ValueError, match="keep no rows"):
        hs3.read_helpsteer3(FIXTURE, languages=[])


@pytest.mark.parametrize("change, field, detail", [
    ({"overall_preference": 4}, "overall_preference", "preference 4 is outside [-3, 3]"),
    ({"overall_preference": "2"}, "overall_preference", "expected an integer, got a string"),
    ({"overall_preference": None}, "overall_preference", "field is missing"),
    ({"response2": ""}, "response2", "empty or whitespace-only text"),
    ({"domain": "Math"}, "domain", "'Math' is not one of"),
    ({"language": 3}, "language", "expected a string, got a number"),
    ({"context": []}, "context", "an empty array"),
    ({"context": PHYSICS[1:] + [{"role": "system", "content": "Be nice."}, {"role": "user", "content": "Hi"}]},
     "context", "turn 3: role 'system' where 'assistant' was expected (a system turn is allowed only first)"),
    ({"context": PHYSICS[:3]}, "context", "must end with a user turn"),
    ({"context": [{"role": "tool", "content": "x"}]}, "context", "turn 0: role 'tool' is not one of"),
    ({"individual_preference": "3"}, "individual_preference", "expected an array"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, change, field, detail):
    lines = FIXTURE.read_text(encoding="utf-8").splitlines()
    path = tmp_path / "hs3.jsonl"
    path.write_text("\n".join([lines[0], json.dumps({**json.loads(lines[1]), **change}), *lines[2:]]) + "\n",
                    encoding="utf-8")
    with pytest.raises(BadRowError) as e:
        hs3.read_helpsteer3(path)
    message = str(e.value)
    assert message.startswith(f"{path}:2: {field}: ") and detail in message
    skipped = hs3.read_helpsteer3(path, on_bad_row="skip")
    assert len(skipped) == 5 and sum(skipped.skipped.values()) == 1


def test_multi_turn_context_with_a_system_turn_renders_by_hand():
    tok = type("Chars", (), {"text_to_ids": staticmethod(lambda t: [ord(c) for c in t]), "eos_id": 0})()
    row = hs3.pair_examples(hs3.read_helpsteer3(FIXTURE)[1:2])[0][0]
    text = "".join(map(chr, Renderer("steerlm", tok).ids(row.conversation)))
    assert text == ("<extra_id_0>System\nYou are a physics tutor.\n<extra_id_1>User\nWhat is g?\n"
                    "<extra_id_1>Assistant\nIt is the gravitational acceleration.\n<extra_id_1>User\n"
                    "What is its value on Earth?\n<extra_id_1>Assistant\nAbout 10.\n<extra_id_2>")
    plain = hs3.pair_examples(hs3.read_helpsteer3(FIXTURE)[:1])[0][0]  # no system turn: the configured one
    assert "".join(map(chr, Renderer("steerlm", tok, "Sys.").ids(plain.conversation))).startswith(
        "<extra_id_0>System\nSys.\n<extra_id_1>User\nSuggest a weekend hobby.\n")


@pytest.mark.slow
def test_scaled_bt_training_on_helpsteer3_pairs_through_validation(tmp_path):
    """The real entry point on HelpSteer3-format demo pairs, the Multilingual domain filtered out."""
    for split, n in (("train", 32), ("validation", 12)):
        rows = hs3.demo_helpsteer3_rows(n, 1234, split)
        (tmp_path / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    kept = [r for r in hs3.demo_helpsteer3_rows(12, 1234, "validation") if r["domain"] != "Multilingual"]
    log_dir = tmp_path / "run"
    args = ["data=helpsteer3_preference", f"data.train_file={tmp_path / 'train.jsonl'}",
            f"data.validation_file={tmp_path / 'validation.jsonl'}", "data.domains=[General,STEM,Code]",
            "data.cache_dir=null", "model.regression.loss_func=scaled_bt", "data.attributes=[helpfulness]",
            "model.regression.reward_weights=helpfulness_only", "trainer.rm.max_steps=3",
            "trainer.rm.val_check_interval=3", "trainer.rm.save_interval=3", f"exp_manager.explicit_log_dir={log_dir}"]
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "train_reward_model.py"), *args], cwd=ROOT,
                          env=dict(os.environ, OMP_NUM_THREADS="1"), capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    metrics = json.loads((log_dir / "metrics.json").read_text())
    assert metrics["data"]["validation"]["used"] == 2 * len(kept)  # two sequences per kept pair
    assert metrics["data"]["validation"]["skipped"] == {"filtered_domain": 2 * (12 - len(kept))}
    final = metrics["final_validation"]
    # Strength-0 pairs carry no order for BT: the validation pairs scored are the kept non-ties.
    assert final["preference_pairs"] == sum(r["overall_preference"] != 0 for r in kept) > 0
    assert math.isfinite(final["bt_loss"]) and final["loss"] == final["bt_loss"]
    assert all(math.isfinite(r["bt_loss"]) for r in metrics["train_history"])
