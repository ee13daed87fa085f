"""benchmarks/smollm2_end_to_end.py's commands on SmolLM2 cut to 2 layers and 40 HelpSteer rows, 2 steps: the
split, import, recipe training, export and evaluation all run, and the exported model scores as the .nemo does."""

import json

import pytest

from benchmarks import smollm2_end_to_end as e2e
from tests.conftest import SHARED_DATA
from tests.test_smollm2 import smollm2_gguf

SAMPLE = SHARED_DATA / "helpsteer_sample_300.jsonl"


@pytest.mark.slow
def test_smollm2_end_to_end_smoke(tmp_path):
    if not SAMPLE.is_file():
        pytest.skip(f"shared sample not found at {SAMPLE} (../shared/data beside the repository)")
    work = tmp_path / "run"
    summary = e2e.main(["--workdir", str(work), "--gguf", smollm2_gguf(), "--data", str(SAMPLE), "--rows", "40",
                        "--layers", "2", "--train", "max_steps=2", "--train", "val_check_interval=2",
                        "--train", "save_interval=2", "--compare-nemo"])
    assert list(summary["stage_s"]) == ["split", "truncate", "import", "train", "export", "evaluate",
                                        "evaluate_nemo"]
    # no prompt on both sides, every row used
    train, val = (e2e_rows(work / f) for f in ("train.jsonl", "validation.jsonl"))
    assert {r["prompt"] for r in train}.isdisjoint({r["prompt"] for r in val})
    assert len(train) + len(val) == 40 == summary["split"]["rows"]
    assert summary["train"]["steps"] == 2

    config = json.loads((work / "hf" / "config.json").read_text())
    assert config["architectures"] == ["LlamaForSequenceClassification"] and config["num_hidden_layers"] == 2
    assert list(config["id2label"].values()) == list(e2e.ATTRIBUTES)

    # the training's validation, the exported model and the .nemo score the validation rows alike
    v = summary["validation"]
    assert v["rows"] == len(val)
    # a constant is never closer than the validation rows' own mean (the metrics' baseline)
    for a, mse in summary["constant_from_train"].items():
        assert mse >= v[f"{a}/baseline_mse"] - 1e-9
    hf, nemo = summary["evaluation"]["hf"], summary["evaluation"]["nemo"]
    for a in e2e.ATTRIBUTES:
        assert hf["helpsteer2"]["metrics"][f"{a}/mse"] == pytest.approx(v[f"{a}/mse"], abs=1e-3)
        assert hf["helpsteer2"]["metrics"][f"{a}/mse"] == pytest.approx(nemo["helpsteer2"]["metrics"][f"{a}/mse"],
                                                                          abs=1e-4)
    rb_hf, rb_nemo = (ev["rewardbench"]["unknown_subsets"]["helpsteer-heldout"] for ev in (hf, nemo))
    assert rb_hf == rb_nemo and rb_hf["total"] == summary["split"]["rewardbench_pairs"] > 0
    scores = [e2e_rows(work / f"eval_{m}" / "rewardbench_scores.jsonl") for m in ("hf", "nemo")]
    for a, b in zip(*scores):
        assert a["id"] == b["id"]
        assert a["reward_chosen"] == pytest.approx(b["reward_chosen"], abs=1e-4)
        assert a["reward_rejected"] == pytest.approx(b["reward_rejected"], abs=1e-4)


def e2e_rows(path):
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]
