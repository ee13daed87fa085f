"""RewardBench 2 scoring against hand-worked cases.

The rules are allenai/reward-bench's ``rewardbench/utils.py`` (read at commit 05a9005, 2026-01-31):
``reroll_and_score_dataset`` (best-of-N with the tie penalty), ``load_bon_dataset_v2`` (completions are
``chosen + rejected``, in order), ``_compute_prompt_stats`` / ``process_single_model`` (Ties), and
``scripts/run_v2.py`` (Ties chosen by ``subset.lower() == "ties"``, the others scored as mean of row results).
Every expected number below is worked out by hand in the comments, not by the code under test.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pytest

from nemo_hs2.data.sources import BadRowError
from nemo_hs2.evaluation import rewardbench2 as rb2
from tests.fake_scorers import TextScorer
from tests.test_rewardbench import cli_evaluation, demo_scorer

FIXTURE = Path(__file__).parent / "data" / "rewardbench2_sample.jsonl"

# Per fixture row (tests/data/rewardbench2_sample.jsonl), chosen first; the result each gets by hand.
FIXTURE_SCORES = {
    "f1": ([3, 1, 2, 0], 1.0),        # first is the unique top
    "f2": ([1, 3, 2, 0], 0.0),        # a rejected one is higher
    "p1": ([2, 2, 1, 0], 0.5),        # first tied at the top with one other: 1/2
    "p2": ([1, 1, 1, 1], 0.25),       # all four tied: 1/4
    "m1": ([5, 1, 1, 1], 1.0),
    "m2": ([0, 1, 0, 0], 0.0),
    "s1": ([2, 2, 2, 1], 1 / 3),      # three tied at the top
    "s2": ([4, 0, 0, 0], 1.0),
    "fo1": ([1, 2, 0, 0], 0.0),
    "fo2": ([1, 2, 2, 0], 0.0),       # a tie at the top that leaves the first out is still 0
    "ref:1": ([5, 2, 3, 1], None),    # Ties rows have no per-row result upstream
    "tied:1": ([4, 6, 5, 1, 3], None),
    "ref:2": ([1, 2, 0], None),
    "tied:2": ([3, 3.5, 3.2, 3.1, 0, -1], None),
}
# Ties by hand for the fixture's four rows:
#   ref:1  correct [5]        incorrect [2, 3, 1]  cim = 5 - 3 = 2     accurate
#   tied:1 correct [4, 6, 5]  incorrect [1, 3]     cim = 4 - 3 = 1     accurate   dcm = 6 - 4 = 2
#   ref:2  correct [1]        incorrect [2, 0]     cim = 1 - 2 = -1    not accurate
#   tied:2 correct [3 .. 3.5] incorrect [0, -1]    cim = 3 - 0 = 3     accurate   dcm = 0.5
#   ref_acc = 1/2, tied_acc = 2/2; prompts 1 and 2 are in both sets:
#   cp      = mean(1 > 2, 3 > 0.5)                         = 1/2
#   cp_hard = mean(min(2, 1) > 2, min(-1, 3) > 0.5)        = 0
#   margin  = mean(tanh(1 / 2 - 1), tanh(-1 / 0.5 - 1))    = (tanh(-0.5) + tanh(-3)) / 2
TIES_MARGIN = (math.tanh(-0.5) + math.tanh(-3.0)) / 2
TIES_SCORE = 0.30 * 1.0 + 0.30 * 0.5 + 0.20 * 0.5 + 0.20 * 0.0 + 0.01 * TIES_MARGIN
SUBSET_SCORES = {"Factuality": (1 + 0) / 2, "Precise IF": (0.5 + 0.25) / 2, "Math": (1 + 0) / 2,
                 "Safety": (1 / 3 + 1) / 2, "Focus": 0.0, "Ties": TIES_SCORE}


@pytest.mark.parametrize("scores, expected", [([3, 1, 2, 0], 1.0), ([1, 3, 2, 0], 0.0), ([3, 3, 1, 0], 0.5),
                                              ([3, 3, 3, 3], 0.25), ([2, 3, 3, 1], 0.0), ([0.5, -1], 1.0),
                                              ([math.nan, 1, 2], 0.0)])
def test_best_of_n_with_the_tie_penalty(scores, expected):
    assert rb2.best_of_n(scores) == pytest.approx(expected)


def test_ties_formula_by_hand():
    rows = [(i, 1 if i.startswith("ref") else len(s) - 2, s) for i, s in
            [("ref:1", [5, 2, 3, 1]), ("ref:2", [1, 2, 0])]]
    rows += [("tied:1", 3, [4, 6, 5, 1, 3]), ("tied:2", 4, [3, 3.5, 3.2, 3.1, 0, -1])]
    t = rb2.ties_score(rows)
    assert (t["ref_accuracy"], t["tied_accuracy"]) == (0.5, 1.0)
    assert (t["correctness_preferred"], t["correctness_preferred_hard"]) == (0.5, 0.0)
    assert t["correctness_margin"] == pytest.approx(TIES_MARGIN, abs=1e-12)
    assert t["score"] == pytest.approx(0.542714140445, abs=1e-9)  # 0.3 + 0.15 + 0.1 + 0.01 * -0.728586
    assert t["score"] == pytest.approx(TIES_SCORE, abs=1e-12)


def test_ties_unpaired_prompts_count_in_accuracy_only_and_zero_spreads():
    # tied:3 has no ref:3: it counts in tied_acc (not accurate: 1 - 5 < 0) but not in the margin terms.
    # Prompt 4: correct spread 0 with cim 1 -> 1 / 0 = inf -> tanh = 1; prompt 5: 0 / 0 = NaN -> 0 (nan_to_num).
    rows = [("ref:4", 1, [3, 1]), ("tied:4", 2, [2, 2, 1]),      # ref cim 2; tied cim 1, dcm 0: cp 1 > 0
            ("ref:5", 1, [2, 1]), ("tied:5", 2, [2, 2, 2]),      # ref cim 1; tied cim 0, dcm 0: cp 0 > 0 false
            ("tied:3", 2, [1, 2, 5])]
    t = rb2.ties_score(rows)
    assert t["tied_accuracy"] == pytest.approx(1 / 3)  # accurate: tied:4 only (tied:5's cim is 0, not > 0)
    assert t["ref_accuracy"] == 1.0 and t["prompts_in_both"] == 2
    assert t["correctness_preferred"] == 0.5 and t["correctness_preferred_hard"] == 0.5  # min(2,1)=1>0; min(1,0)>0 no
    assert t["correctness_margin"] == pytest.approx((1.0 + 0.0) / 2)
    assert t["score"] == pytest.approx(0.3 / 3 + 0.3 + 0.1 + 0.1 + 0.005)


def test_ties_rows_sharing_an_id_are_one_prompt():
    # As upstream's grouping: two rows "tied:7" merge into one prompt with correct [4, 6] and incorrect [1, 3].
    split = rb2.ties_score([("ref:7", 1, [5, 0]), ("tied:7", 1, [4, 1]), ("tied:7", 1, [6, 3])])
    whole = rb2.ties_score([("ref:7", 1, [5, 0]), ("tied:7", 2, [4, 6, 1, 3])])
    assert split == whole and split["tied_prompts"] == 1


def test_ties_without_a_prompt_in_both_sets_is_missing_and_one_correct_tied_is_an_error():
    assert rb2.ties_score([("ref:1", 1, [2, 1])])["score"] is None
    with pytest.raises(ValueError, match="tied:1 has one correct completion"):
        rb2.ties_score([("ref:1", 1, [2, 1]), ("tied:1", 1, [2, 1])])


def test_fixture_subsets_and_overall_by_hand():
    rows = rb2.read_file(FIXTURE)
    assert [r.id for r in rows] == list(FIXTURE_SCORES)
    summary, results = rb2.aggregate(rows, [FIXTURE_SCORES[r.id][0] for r in rows])
    assert results == pytest.approx([FIXTURE_SCORES[r.id][1] for r in rows])
    assert summary["subset_scores"] == pytest.approx(SUBSET_SCORES)
    assert summary["overall"] == pytest.approx(sum(SUBSET_SCORES.values()) / 6)  # 0.430730...
    assert summary["overall"] == pytest.approx(0.4307301345, abs=1e-9)
    assert summary["subsets"]["Precise IF"]["top_ties"] == 2 and summary["missing_subsets"] == []
    # Without Focus, Focus and the overall score are missing, not 0.
    partial, _ = rb2.aggregate([r for r in rows if r.subset != "Focus"],
                               [FIXTURE_SCORES[r.id][0] for r in rows if r.subset != "Focus"])
    assert partial["subset_scores"]["Focus"] is None and partial["missing_subsets"] == ["Focus"]
    assert partial["overall"] is None
    text = rb2.markdown(partial)
    assert "| Focus | missing | 0 |" in text and "(needs all six subsets)" in text
    assert f"| Ties | {100 * TIES_SCORE:.1f} | 4 |" in text
    assert f"| correctness_margin | {TIES_MARGIN:.3f} | 0.01 |" in text


def test_reads_parquet_like_jsonl(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    records = [json.loads(line) for line in FIXTURE.read_text().splitlines()]
    pq.write_table(pa.Table.from_pylist(records), tmp_path / "rb2.parquet")
    assert rb2.read_file(tmp_path / "rb2.parquet") == rb2.read_file(FIXTURE)


@pytest.mark.parametrize("change, field, detail", [
    ({"chosen": "text"}, "chosen", "expected a list of strings"),
    ({"rejected": []}, "rejected", "no completions"),
    ({"total_completions": 5}, "total_completions", "5, but chosen + rejected hold 4"),
    ({"subset": "Ties", "id": "7"}, "id", "Ties ids are ref:N or tied:N"),
    ({"subset": "Ties", "id": "tied:7", "num_correct": 4}, "num_correct", "at least one correct and one incorrect"),
])
def test_bad_rows_name_file_line_and_field(tmp_path, change, field, detail):
    lines = FIXTURE.read_text().splitlines()
    bad = {**json.loads(lines[1]), **change}
    path = tmp_path / "rb2.jsonl"
    path.write_text(lines[0] + "\n" + json.dumps(bad) + "\n")
    with pytest.raises(BadRowError, match=f"rb2.jsonl:2: {field}: .*{re.escape(detail)}"):
        rb2.read_file(path)


class _LengthScorer(TextScorer):
    """Reward = characters in the completion; counts the rows it is asked to score (``rows``)."""
    attributes, weights = ("helpfulness",), np.ones(1)

    def predict_response(self, response):
        return [float(len(response))]


def test_identical_completions_are_scored_once_and_tie():
    rows = rb2.read_file(FIXTURE)
    scorer = _LengthScorer()
    summary, records = rb2.evaluate(scorer, rows, progress=False)
    # tied:1 repeats three of ref:1's answers (Red., Green., Purple.) under the same prompt.
    total = sum(len(r.completions) for r in rows)
    assert scorer.rows == summary["distinct_completions"] == total - 3
    by_id = {r["id"]: r for r in records}
    assert by_id["p2"]["scores"] == [5, 5, 5, 12] and by_id["p2"]["result"] == 0.0  # "hello" ties "Hello", "HELLO"


@pytest.mark.slow
def test_evaluation_script_writes_rewardbench2_results(tmp_path_factory):
    """The demo checkpoint end to end: JSON, table, per-row scores, report.md; scores are the inference API's."""
    cli = cli_evaluation(tmp_path_factory)
    out = cli["out"]
    result = json.loads((out / "rewardbench2.json").read_text())
    records = [json.loads(line) for line in (out / "rewardbench2_scores.jsonl").read_text().splitlines()]
    rows = rb2.read_file(cli["rb2_file"])
    assert [r["id"] for r in records] == [r.id for r in rows] and result["rows"] == 14
    # The JSON is the hand-checked aggregation of the scores written beside it ...
    again, _ = rb2.aggregate(rows, [r["scores"] for r in records])
    assert again["subset_scores"] == result["subset_scores"] and again["overall"] == result["overall"]
    assert all(result["subset_scores"][s] is not None for s in rb2.SUBSETS)
    # ... and those scores are what RewardScorer gives each [user: prompt, assistant: completion].
    scorer = demo_scorer(tmp_path_factory)
    for row, rec in zip(rows[:3] + rows[-2:], records[:3] + records[-2:]):
        expected = [r["reward"] for r in scorer.score([rb2.conversation(row.prompt, c) for c in row.completions])]
        assert rec["scores"] == pytest.approx(expected, abs=1e-5)
    assert "| correctness_preferred_hard |" in (out / "rewardbench2.md").read_text()
    assert "## RewardBench 2" in (out / "report.md").read_text()
