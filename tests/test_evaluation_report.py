"""The HelpSteer2 validation report: metrics wiring, confusion matrices, plots that exist and show something,
report.md embedding them, and the evaluation script's report on the CPU demo checkpoint."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest

from nemo_hs2.data.rows import Example
from nemo_hs2.evaluation import report
from nemo_hs2.core.metrics import regression_metrics
from tests.fake_scorers import TextScorer
from tests.test_rewardbench import cli_evaluation, demo_scorer

ATTRS = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
PNG = b"\x89PNG\r\n\x1a\n"


class FakeScorer(TextScorer):
    """Predictions read off the response text: 'h=3 c=1 o=4 x=0 v=2'."""

    attributes = ATTRS
    weights = np.array([0.3, 0.74, 0.46, 0.47, -0.33])
    max_length = 64

    def predict_response(self, response):
        values = dict(re.findall(r"(\w)=(-?[\d.]+)", response))
        return [float(values.get(key, 2.0)) for key in "hcoxv"]


def _examples():
    # Two pairs; pair 1's second row is multi-turn, and complexity is missing on one row.
    rows = [("Q1", "h=3 c=4 o=4 x=1 v=2", {"helpfulness": 3, "correctness": 4, "coherence": 4, "complexity": 1,
                                           "verbosity": 2}),
            ("Q1", "h=1.4 c=2.6 o=3 x=0 v=1", {"helpfulness": 2, "correctness": 3, "coherence": 3,
                                               "verbosity": 1}),
            ("Q2\n<extra_id_1>Assistant\nA1\n<extra_id_1>User\nQ3", "h=0.2 c=0 o=4.6 x=2 v=-1",
             {"helpfulness": 0, "correctness": 0, "coherence": 4, "complexity": 2, "verbosity": 0}),
            ("Q2\n<extra_id_1>Assistant\nA1\n<extra_id_1>User\nQ3", "h=4 c=4 o=4 x=2 v=3",
             {"helpfulness": 4, "correctness": 4, "coherence": 4, "complexity": 3, "verbosity": 3})]
    return [Example.rated(p, r, labels, pair_id=i // 2) for i, (p, r, labels) in enumerate(rows)]


def test_metrics_and_confusion_by_hand():
    result = report.evaluate_helpsteer2(FakeScorer(), _examples(), progress=False)
    m = result["metrics"]
    assert result["rows"] == 4 and result["pairs"] == 2
    # helpfulness: predictions 3, 1.4, 0.2, 4 against 3, 2, 0, 4.
    assert m["helpfulness/mse"] == pytest.approx((0 + 0.36 + 0.04 + 0) / 4)
    assert m["helpfulness/rounded_acc"] == pytest.approx(3 / 4)  # 1.4 rounds to 1, not 2
    assert m["complexity/count"] == 3  # the missing label is not a 0
    assert result["confusion"]["helpfulness"][2] == [0, 1, 0, 0, 0]  # true 2 predicted 1
    assert result["confusion"]["coherence"][4] == [0, 0, 0, 0, 3]  # 4.6 is clipped to 4
    assert sum(map(sum, result["confusion"]["complexity"])) == 3
    # Both pairs ordered right by the reward: row 0 beats row 1, row 3 beats row 2.
    assert m["pairwise_acc/reward"] == 1.0 and m["pairs/reward"] == 1  # row 1 lacks complexity: pair 0 dropped
    assert m["pairwise_acc/helpfulness"] == 1.0 and m["pairs/helpfulness"] == 2
    assert m == regression_metrics(result["pred"], result["target"], ATTRS) | {
        k: v for k, v in m.items() if k.startswith("pair")}


def _png_has_content(path):
    import matplotlib.image as mpimg

    data = open(path, "rb").read()
    assert data.startswith(PNG) and len(data) > 2000, path
    pixels = mpimg.imread(path)
    assert pixels.shape[0] > 100 and pixels.shape[1] > 100
    assert float(np.std(pixels[..., :3])) > 0.01  # not a blank canvas


def test_plots_and_report(tmp_path):
    result = report.evaluate_helpsteer2(FakeScorer(), _examples(), progress=False)
    plots = report.write_plots(result, str(tmp_path))
    assert set(plots["pred_vs_true"]) == set(ATTRS)
    for rel in [*plots["pred_vs_true"].values(), plots["score_distributions"]]:
        _png_has_content(tmp_path / rel)
    text = report.helpsteer2_markdown(result, plots, "val.jsonl")
    for rel in [*plots["pred_vs_true"].values(), plots["score_distributions"]]:
        assert f"]({rel})" in text
    assert "| helpfulness | 4 | 0.100 |" in text and "| true \\ predicted | 0 | 1 | 2 | 3 | 4 |" in text
    clean = report.json_ready(result)
    assert "pred" not in clean and json.dumps(clean, allow_nan=False)


def test_attribute_without_labels_gets_no_plot(tmp_path):
    examples = [Example.rated("Q", "h=1", {"helpfulness": 1}, pair_id=-1),
                Example.rated("Q", "h=3", {"helpfulness": 3})]
    result = report.evaluate_helpsteer2(FakeScorer(), examples, progress=False)
    plots = report.write_plots(result, str(tmp_path))
    assert list(plots["pred_vs_true"]) == ["helpfulness"]
    assert math.isnan(result["metrics"]["verbosity/mse"])
    text = report.helpsteer2_markdown(result, plots, "f")
    assert "verbosity: no labels, no plot." in text


# ------------------------------------------------------------------------------------------ with the demo model
@pytest.mark.slow  # the evaluation script loads the checkpoint in its own process: ~30 s CPU
def test_evaluation_script_writes_the_report(tmp_path_factory):
    cli = cli_evaluation(tmp_path_factory)
    out = cli["out"]
    hs2 = json.loads((out / "helpsteer2.json").read_text())
    assert hs2["rows"] == 20 and hs2["pairs"] == 10
    for a in ATTRS:
        for key in ("mse", "mae", "pearson", "rounded_acc"):
            assert f"{a}/{key}" in hs2["metrics"]
        assert sum(map(sum, hs2["confusion"][a])) == hs2["metrics"][f"{a}/count"]
    assert 0.0 <= hs2["metrics"]["pairwise_acc/reward"] <= 1.0
    pngs = sorted((out / "plots").glob("*.png"))
    assert {p.name for p in pngs} == {f"pred_vs_true_{a}.png" for a in ATTRS} | {"score_distributions.png"}
    for p in pngs:
        _png_has_content(p)
    text = (out / "report.md").read_text()
    for p in pngs:
        assert f"](plots/{p.name})" in text
    assert "## RewardBench" in text and "## HelpSteer2 validation" in text
    # Outputs only in output_dir; the inputs' directory holds just the inputs.
    assert sorted(p.name for p in cli["inputs"].iterdir()) == ["reward_bench.jsonl", "reward_bench_2.jsonl", "validation.jsonl"]


def test_report_predictions_match_the_offline_inference_api(tmp_path_factory):
    cli = cli_evaluation(tmp_path_factory)
    preds = [json.loads(line) for line in (cli["out"] / "helpsteer2_predictions.jsonl").read_text().splitlines()]
    from nemo_hs2.data.sources import read_examples

    examples, _ = read_examples(cli["hs2_file"])
    scorer = demo_scorer(tmp_path_factory)
    offline = scorer.score([e.conversation for e in examples])
    for p, o in zip(preds, offline):
        assert p["reward"] == pytest.approx(o["reward"], abs=1e-5)
        assert list(p["pred"].values()) == pytest.approx(list(o["attributes"].values()), abs=1e-5)
