"""Holding out validation by prompt, and RewardBench-schema pairs from held-out rated rows (nemo_hs2/data/split.py)."""

import json
import math

import pytest

from nemo_hs2.data.records import BadRowError
from nemo_hs2.data.split import read_prompted_rows, rewardbench_pairs, split_by_prompt
from nemo_hs2.evaluation import rewardbench as rb
from nemo_hs2.evaluation.outputs import write_jsonl
from tests.conftest import SHARED_DATA

SAMPLE = SHARED_DATA / "helpsteer_sample_300.jsonl"


def rows_for(prompts_and_counts):
    rows = []
    for p, n in prompts_and_counts:
        for k in range(n):
            rows.append({"prompt": p, "response": f"{p} answer {k}", "helpfulness": k % 5, "extra": [k]})
    return rows


def test_split_keeps_every_row_once_and_no_prompt_on_both_sides():
    rows = rows_for([(f"p{i}", 1 + i % 4) for i in range(30)])
    train, val = split_by_prompt(rows, 0.2, seed=0)
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in val})
    assert len({r["prompt"] for r in val}) == math.ceil(0.2 * 30)
    # every row exactly once, unchanged, each side in the input's order
    assert sorted(map(json.dumps, train + val)) == sorted(map(json.dumps, rows))
    assert train == [r for r in rows if r in train] and val == [r for r in rows if r in val]


def test_split_depends_on_prompts_and_seed_only():
    rows = rows_for([(f"p{i}", 2) for i in range(20)])
    _, val = split_by_prompt(rows, 0.25, seed=0)
    _, val_reversed = split_by_prompt(rows[::-1], 0.25, seed=0)
    assert {r["prompt"] for r in val} == {r["prompt"] for r in val_reversed}
    _, val_other_seed = split_by_prompt(rows, 0.25, seed=1)
    assert {r["prompt"] for r in val} != {r["prompt"] for r in val_other_seed}


def test_split_rejects_what_it_cannot_split():
    with pytest.raises(ValueError, match="validation_fraction"):
        split_by_prompt(rows_for([("a", 1), ("b", 1)]), 1.0)
    with pytest.raises(ValueError, match="1 distinct prompt"):
        split_by_prompt(rows_for([("a", 3)]), 0.5, source="f.jsonl")
    # a tiny fraction still leaves a training side
    train, val = split_by_prompt(rows_for([("a", 1), ("b", 1)]), 0.99)
    assert len(train) == 1 and len(val) == 1


def test_reading_names_file_and_line(tmp_path):
    f = tmp_path / "rows.jsonl"
    f.write_text('{"prompt": "a"}\n\n[1, 2]\n')
    with pytest.raises(BadRowError, match=r"rows.jsonl:3: -: expected a JSON object"):
        read_prompted_rows(f)
    f.write_text('{"prompt": "a"}\n{"prompt": \n')
    with pytest.raises(BadRowError, match=r"rows.jsonl:2: -: malformed JSON"):
        read_prompted_rows(f)
    f.write_text('{"prompt": "a"}\n\n{"response": "x"}\n')  # the blank line still counts
    with pytest.raises(BadRowError, match=r"rows.jsonl:3: prompt: a string prompt is needed"):
        read_prompted_rows(f)


def test_rewardbench_pairs_hand_computed_and_readable_by_the_evaluation(tmp_path):
    rows = [{"prompt": "q1", "response": "a", "helpfulness": 3},
            {"prompt": "q1", "response": "b", "helpfulness": 1},
            {"prompt": "q1", "response": "c", "helpfulness": 3},   # ties with "a": no pair
            {"prompt": "q1", "response": "d"},                      # unrated: no pair
            {"prompt": "q2", "response": "e", "helpfulness": 0},
            {"prompt": "q2", "response": "f", "helpfulness": 4}]
    pairs = rewardbench_pairs(rows)
    assert [(p["prompt"], p["chosen"], p["rejected"]) for p in pairs] == [
        ("q1", "a", "b"), ("q1", "c", "b"), ("q2", "f", "e")]
    assert len({p["id"] for p in pairs}) == 3
    path = tmp_path / "rb.jsonl"
    write_jsonl(str(path), pairs)
    read = rb.read_file(path)
    assert [(r.prompt, r.chosen, r.rejected, r.subset) for r in read] == [
        (p["prompt"], p["chosen"], p["rejected"], "helpsteer-heldout") for p in pairs]
    # not a RewardBench subset: reported by name, in no section
    summary = rb.aggregate([r.subset for r in read], [1, 0, 1])
    assert summary["unknown_subsets"]["helpsteer-heldout"]["accuracy"] == pytest.approx(2 / 3)
    assert summary["missing_sections"] == list(rb.SECTIONS)


def test_split_of_the_shared_sample(tmp_path):
    if not SAMPLE.is_file():
        pytest.skip(f"shared sample not found at {SAMPLE} (../shared/data beside the repository)")
    raw = [json.loads(line) for line in SAMPLE.read_text().splitlines() if line.strip()]
    rows = read_prompted_rows(SAMPLE)
    assert rows == raw
    train, val = split_by_prompt(rows, 0.2, seed=0)
    assert len(train) + len(val) == len(raw) == 300
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in val})
    assert len({r["prompt"] for r in val}) == math.ceil(0.2 * len({r["prompt"] for r in raw}))
    write_jsonl(str(tmp_path / "v.jsonl"), val)
    assert read_prompted_rows(tmp_path / "v.jsonl") == val
    # each pair's chosen response was rated more helpful than its rejected one in the raw file
    rating = {(r["prompt"], r["response"]): r["helpfulness"] for r in raw}
    pairs = rewardbench_pairs(val)
    assert pairs and all(rating[(p["prompt"], p["chosen"])] > rating[(p["prompt"], p["rejected"])] for p in pairs)
