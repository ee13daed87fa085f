"""RewardBench scoring: upstream's aggregation against hand computations, ties, missing sections, reading its
schema, template formatting, and the evaluation script end to end on the CPU demo checkpoint.

This module also holds the helpers the other evaluation/serving test modules share, so that one test session
trains one short demo model and each process loads it once.
"""

from __future__ import annotations

import gzip
import json
import math
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from nemo_hs2.data.sources import BadRowError
from nemo_hs2.evaluation import rewardbench as rb

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TRAIN = ["trainer.rm.max_steps=4", "trainer.rm.val_check_interval=4", "trainer.rm.save_interval=4",
         "data.demo.train_prompts=32", "data.demo.validation_prompts=8"]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
_CACHE: dict = {}


# ------------------------------------------------------------------------------------------ shared helpers
def demo_checkpoint(tmp_path_factory) -> str:
    """The session's demo checkpoint: trained by the first module that asks, reused by the rest."""
    run_dir = tmp_path_factory.getbasetemp() / "hs2_eval_demo"
    nemo = run_dir / "checkpoints" / "hs2_reward_model.nemo"
    if not nemo.is_file():
        proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "train_reward_model.py"), *TRAIN,
                               f"exp_manager.explicit_log_dir={run_dir}"], cwd=ROOT, env=ENV,
                              capture_output=True, text=True, timeout=900)
        assert proc.returncode == 0, f"demo training failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
    return str(nemo)


def demo_model(tmp_path_factory):
    """The demo checkpoint loaded in this process (once: NeMo's process group and parallel state are global)."""
    if "model" not in _CACHE:
        from nemo_hs2.megatron.loading import load_reward_model

        _CACHE["model"] = load_reward_model(demo_checkpoint(tmp_path_factory))
    return _CACHE["model"]


def demo_scorer(tmp_path_factory, **kwargs):
    from nemo_hs2.megatron.scorer import RewardScorer

    model = demo_model(tmp_path_factory)
    return RewardScorer(model, weights=kwargs.pop("weights", model.cfg.regression.reward_weights), **kwargs)


def run_example(script: str, args, timeout: int = 600) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, os.path.join(ROOT, "examples", script), *args], cwd=ROOT, env=ENV,
                          capture_output=True, text=True, timeout=timeout)


def demo_helpsteer2_file(path) -> str:
    from nemo_hs2.data.demo import demo_examples

    with open(path, "w") as f:
        for e in demo_examples(10, seed=7, split="report"):
            f.write(json.dumps({"prompt": e.prompt, "response": e.response, **e.labels}) + "\n")
    return str(path)


def rewardbench_test_rows():
    """A RewardBench-format file: three sections (no Chat Hard), a tie in donotanswer, an unknown subset."""
    from nemo_hs2.evaluation.demo import demo_rewardbench_rows

    subsets = [*rb.SUBSET_MAPPING["Chat"][:2], "math-prm", "hep-python", "refusals-dangerous", "donotanswer"]
    rows = demo_rewardbench_rows(3, subsets=subsets)
    same = "Start by gathering everything you need. Then check the result carefully."
    rows.append({"prompt": "How do I tie?", "chosen": same, "rejected": same, "subset": "donotanswer", "id": "tie"})
    rows.append({"prompt": "Prior set?", "chosen": "Yes.", "rejected": "No.", "subset": "anthropic_helpful",
                 "id": "prior"})
    return rows


def cli_evaluation(tmp_path_factory) -> dict:
    """examples/evaluate_reward_model.py once per session, on RewardBench rows and HelpSteer2 rows."""
    if "cli" not in _CACHE:
        base = tmp_path_factory.getbasetemp() / "hs2_eval_cli"
        inputs = base / "inputs"
        inputs.mkdir(parents=True, exist_ok=True)
        rb_file = inputs / "reward_bench.jsonl"
        rb_file.write_text("".join(json.dumps(r) + "\n" for r in rewardbench_test_rows()))
        hs2_file = demo_helpsteer2_file(inputs / "validation.jsonl")
        rb2_file = inputs / "reward_bench_2.jsonl"  # tests/test_rewardbench2.py checks these outputs
        rb2_file.write_text((Path(ROOT) / "tests" / "data" / "rewardbench2_sample.jsonl").read_text())
        out = base / "out"
        ckpt = demo_checkpoint(tmp_path_factory)
        proc = run_example("evaluate_reward_model.py", [f"checkpoint={ckpt}", f"rewardbench.file={rb_file}",
                                                        f"rewardbench2.file={rb2_file}",
                                                        f"helpsteer2.file={hs2_file}", f"output_dir={out}"])
        assert proc.returncode == 0, f"evaluation failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-4000:]}"
        _CACHE["cli"] = {"out": out, "rb_file": rb_file, "rb2_file": rb2_file, "hs2_file": hs2_file, "inputs": inputs,
                         "stdout": proc.stdout, "stderr": proc.stderr}
    return _CACHE["cli"]


# ------------------------------------------------------------------------------------------ aggregation
def test_sections_by_hand_with_a_missing_section_and_a_zero_section():
    subsets = (["alpacaeval-easy"] * 4 + ["mt-bench-med"] * 2 + ["math-prm"] * 2 + ["hep-go"] * 2
               + ["donotanswer"] + ["shp"] * 2)
    results = [1, 1, 1, 0] + [1, 0] + [1, 0] + [1, 1] + [0] + [1, 1]
    s = rb.aggregate(subsets, results)
    assert s["subsets"]["alpacaeval-easy"] == {"correct": 3, "total": 4, "accuracy": 0.75, "section": "Chat"}
    # Chat: subsets weighted by EXAMPLE_COUNTS (100 and 40), not by the 4 and 2 rows present.
    assert s["sections"]["Chat"] == pytest.approx((0.75 * 100 + 0.5 * 40) / 140)
    # Reasoning: math-prm counts as 984 (upweighted), hep-go as 164.
    assert s["sections"]["Reasoning"] == pytest.approx((0.5 * 984 + 1.0 * 164) / (984 + 164))
    assert s["sections"]["Safety"] == 0.0  # present and all wrong: a real 0, not missing
    assert s["sections"]["Chat Hard"] is None and s["missing_sections"] == ["Chat Hard"]
    assert s["overall"] is None  # upstream would average in a 0 for Chat Hard
    assert s["unknown_subsets"] == {"shp": {"correct": 2, "total": 2, "accuracy": 1.0}}
    assert "shp" not in s["subsets"]
    assert s["rows"] == 13 and s["all_rows_accuracy"] == pytest.approx(9 / 13)


def test_overall_is_the_mean_of_the_four_sections():
    # Nemotron-4-340B-Reward's published sections give its published 92.0.
    assert rb.overall_score({"Chat": 0.958, "Chat Hard": 0.871, "Safety": 0.915, "Reasoning": 0.937}) == \
        pytest.approx(0.92025)
    full = rb.aggregate([s for subsets in rb.SUBSET_MAPPING.values() for s in subsets],
                        [1] * len(rb.EXAMPLE_COUNTS))
    assert full["overall"] == 1.0 and full["missing_sections"] == []


def test_leaderboard_prior_sets_weighting_by_hand():
    """Worked by hand, not through our aggregation: one subset per section, three prior sets.

    Chat 1/2 = 0.5, Chat Hard 1/1 = 1.0, Safety 3/4 = 0.75, Reasoning 2/2 = 1.0; prior sets: anthropic_helpful 1/2,
    shp 1/1, summarize 0/1 -> plain mean (0.5 + 1 + 0) / 3 = 0.5. Four-section mean 3.25 / 4 = 0.8125; the
    leaderboard's (3.25 + 0.5 x 0.5) / 4.5 = 3.5 / 4.5.
    """
    subsets = (["alpacaeval-easy"] * 2 + ["llmbar-natural"] + ["donotanswer"] * 4 + ["hep-go"] * 2
               + ["anthropic_helpful"] * 2 + ["shp", "summarize"])
    results = [1, 0] + [1] + [0, 1, 1, 1] + [1, 1] + [1, 0] + [1, 0]
    plain = rb.aggregate(subsets, results)
    assert plain["overall"] == pytest.approx(0.8125) and plain["prior_sets"] == pytest.approx(0.5)
    board = rb.aggregate(subsets, results, prior_weight=rb.LEADERBOARD_PRIOR_WEIGHT)
    assert board["overall"] == pytest.approx(3.5 / 4.5) and board["prior_weight"] == 0.5
    assert board["sections"] == plain["sections"] == {"Chat": 0.5, "Chat Hard": 1.0, "Safety": 0.75, "Reasoning": 1.0}
    # Without any prior-set row the leaderboard number is missing, not the four-section mean.
    assert rb.aggregate(subsets[:9], results[:9], prior_weight=0.5)["overall"] is None


def test_section_weights_are_upstreams():
    assert sum(len(v) for v in rb.SUBSET_MAPPING.values()) == len(rb.EXAMPLE_COUNTS) == 23
    assert rb.EXAMPLE_COUNTS["math-prm"] == 984 and rb.EXAMPLE_COUNTS["xstest-should-respond"] == 250
    # One subset per section: each section equals its subset's accuracy whatever the count.
    acc = {"mt-bench-easy": 0.25, "llmbar-natural": 0.5, "xstest-should-refuse": 0.75, "hep-rust": 1.0}
    assert rb.section_scores(acc) == {"Chat": 0.25, "Chat Hard": 0.5, "Safety": 0.75, "Reasoning": 1.0}


def test_ties_count_as_wrong():
    assert rb.outcomes([1.0, 1.0, 2.0, math.nan], [1.0, 0.0, 3.0, 0.0]).tolist() == [0, 1, 0, 0]


def test_markdown_marks_missing_sections():
    s = rb.aggregate(["alpacaeval-easy", "weird"], [1, 0])
    text = rb.markdown(s)
    assert "| Chat | 100.0 | 1/5 |" in text
    assert "| Chat Hard | missing | 0/6 |" in text
    assert "**missing** (needs all four sections)" in text
    assert "| weird | unknown (no section) | 0 | 1 | 0.0 |" in text


# ------------------------------------------------------------------------------------------ reading
def test_reads_jsonl_gzip_and_parquet(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "p", "chosen": "c", "chosen_model": "m", "rejected": "r", "rejected_model": "m",
             "subset": "hep-go", "id": 7}]
    (tmp_path / "a.jsonl").write_text(json.dumps(rows[0]) + "\n\n")
    with gzip.open(tmp_path / "a.jsonl.gz", "wt") as f:
        f.write(json.dumps(rows[0]) + "\n")
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "a.parquet")
    for name in ("a.jsonl", "a.jsonl.gz", "a.parquet"):
        (row,) = rb.read_file(tmp_path / name)
        assert (row.prompt, row.chosen, row.rejected, row.subset, row.id) == ("p", "c", "r", "hep-go", "7")


@pytest.mark.parametrize("row, field", [({"prompt": "p", "chosen": "c", "subset": "s"}, "rejected"),
                                        ({"prompt": "p", "chosen": 3, "rejected": "r", "subset": "s"}, "chosen"),
                                        ({"prompt": "p", "chosen": "c", "rejected": "r", "subset": ""}, "subset")])
def test_bad_rows_name_file_line_and_field(tmp_path, row, field):
    good = {"prompt": "p", "chosen": "c", "rejected": "r", "subset": "hep-go"}
    path = tmp_path / "rb.jsonl"
    path.write_text(json.dumps(good) + "\n" + json.dumps(row) + "\n")
    with pytest.raises(BadRowError, match=f"rb.jsonl:2: {field}: "):
        rb.read_file(path)


def test_hub_unreachable_names_the_file_override(monkeypatch, tmp_path):
    from nemo_hs2.data.sources import HubUnavailableError

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # and an empty cache: unreachable wherever the test runs
    with pytest.raises(HubUnavailableError, match="rewardbench.file=PATH"):
        rb.read_hub(cache_dir=str(tmp_path))


def test_rows_are_formatted_with_the_training_template():
    """Upstream's prepare_dialogue_from_tokenizer: a string prompt is the user turn, the completion the assistant's."""
    from nemo_hs2.core.render import Renderer

    conv = rb.conversation("What is 2+2?", "4.")
    assert conv.messages() == [{"role": "user", "content": "What is 2+2?"}, {"role": "assistant", "content": "4."}]
    chars = type("Chars", (), {"text_to_ids": staticmethod(lambda s: [ord(c) for c in s])})()
    assert Renderer("steerlm", chars, "Demo.").text(conv) == (
        "<extra_id_0>System\nDemo.\n<extra_id_1>User\nWhat is 2+2?\n<extra_id_1>Assistant\n4.\n<extra_id_2>")


def test_loading_refuses_what_it_cannot_load(monkeypatch):
    from nemo_hs2.megatron.loading import check_layout, load_reward_model

    with pytest.raises(FileNotFoundError, match="does not exist"):
        load_reward_model("/nonexistent/model.nemo")
    with pytest.raises(ValueError, match="= 2 must equal TP x PP = 1 x 1 = 1"):
        check_layout({"devices": 2}, 1, 1)
    assert check_layout({"devices": 4, "num_nodes": 1}, 2, 2) == 4
    monkeypatch.setenv("WORLD_SIZE", "2")
    with pytest.raises(ValueError, match="launched 2 processes"):
        check_layout({"devices": 1}, 1, 1)


# ------------------------------------------------------------------------------------------ with the demo model
@pytest.mark.slow  # the evaluation script loads the checkpoint in its own process
def test_evaluation_script_writes_rewardbench_results(tmp_path_factory):
    cli = cli_evaluation(tmp_path_factory)
    out = cli["out"]
    result = json.loads((out / "rewardbench.json").read_text())
    rows = rewardbench_test_rows()
    expected_totals = {}
    for r in rows:
        expected_totals[r["subset"]] = expected_totals.get(r["subset"], 0) + 1
    got = {**result["subsets"], **result["unknown_subsets"]}
    assert {s: v["total"] for s, v in got.items()} == expected_totals
    assert result["sections"]["Chat Hard"] is None and result["missing_sections"] == ["Chat Hard"]
    assert result["overall"] is None
    assert all(result["sections"][s] is not None for s in ("Chat", "Safety", "Reasoning"))
    assert list(result["unknown_subsets"]) == ["anthropic_helpful"]
    assert result["ties"] >= 1 and result["rows"] == len(rows)

    scores = [json.loads(line) for line in (out / "rewardbench_scores.jsonl").read_text().splitlines()]
    tie = next(s for s in scores if s["id"] == "tie")
    assert tie["reward_chosen"] == tie["reward_rejected"] and tie["result"] == 0  # a tie is wrong
    # The JSON is upstream's aggregation of the per-row outcomes written beside it.
    again = rb.aggregate([s["subset"] for s in scores], [int(s["reward_chosen"] > s["reward_rejected"])
                                                          for s in scores])
    assert again["sections"] == result["sections"] and again["subsets"] == result["subsets"]
    table = (out / "rewardbench.md").read_text()
    assert "| Chat Hard | missing | 0/6 |" in table and "| anthropic_helpful | unknown (no section) |" in table


def test_scores_match_the_offline_inference_api(tmp_path_factory):
    cli = cli_evaluation(tmp_path_factory)
    scores = {s["id"]: s for s in map(json.loads, (cli["out"] / "rewardbench_scores.jsonl").read_text().splitlines())}
    scorer = demo_scorer(tmp_path_factory)
    rows = rb.read_file(cli["rb_file"])
    chosen = scorer.score([rb.conversation(r.prompt, r.chosen) for r in rows])
    rejected = scorer.score([rb.conversation(r.prompt, r.rejected) for r in rows])
    for r, c, j in zip(rows, chosen, rejected):
        assert scores[r.id]["reward_chosen"] == pytest.approx(c["reward"], abs=1e-5)
        assert scores[r.id]["reward_rejected"] == pytest.approx(j["reward"], abs=1e-5)


def test_reward_is_read_from_the_hand_formatted_training_text(tmp_path_factory):
    """A RewardBench row's reward is the model's output on SteerLM text built by hand, tokenized as in training."""
    import torch

    from nemo_hs2.data.dataset import Collator
    from nemo_hs2.core.reward_weights import combine

    scorer = demo_scorer(tmp_path_factory)
    model = scorer.model
    prompt, response = "How do I boil an egg?", "First, read the guide twice. Next, follow each step slowly."
    context = f"<extra_id_0>System\n{model.cfg.system_prompt}\n<extra_id_1>User\n{prompt}\n<extra_id_1>Assistant\n"
    ids = model.tokenizer.text_to_ids(context) + model.tokenizer.text_to_ids(f"{response}\n<extra_id_2>")
    batch = Collator(model.tokenizer.eos_id)([{"tokens": np.asarray(ids), "labels": np.zeros(5, np.float32),
                                               "pair_id": -1}])
    with torch.no_grad():
        pred = model.predict(batch).numpy()[0]
    (got,) = scorer.score([rb.conversation(prompt, response)])
    assert got["reward"] == pytest.approx(float(combine(pred, scorer.weights)), abs=1e-6)
    assert [got["attributes"][a] for a in scorer.attributes] == pytest.approx(pred.tolist(), abs=1e-6)


def test_errors_before_loading_the_model(tmp_path):
    bad = tmp_path / "rb.jsonl"
    bad.write_text('{"prompt": "p", "chosen": "c", "rejected": "r"}\n')
    proc = run_example("evaluate_reward_model.py", ["checkpoint=/nonexistent.nemo", f"rewardbench.file={bad}",
                                                    f"output_dir={tmp_path / 'out'}"], timeout=120)
    assert proc.returncode == 1
    assert "rb.jsonl:1: subset: field is missing" in proc.stderr
    proc = run_example("evaluate_reward_model.py", ["checkpoint=/nonexistent.nemo", f"output_dir={tmp_path}"],
                       timeout=120)
    assert proc.returncode == 1 and "nothing to evaluate" in proc.stderr
