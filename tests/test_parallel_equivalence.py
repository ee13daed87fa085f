"""TP / PP / DP / micro-batching give the same predictions, losses and gradients as one process (fp32, gloo).

Each layout runs tests/parallel/harness.py under torchrun against the same reference weights and batch, for every
loss variant. A head or loss sharded or normalised wrongly shows up as a difference far above the tolerance. Every
layout also runs the batch packed (data.packing) and compares it with itself unpacked (tests/test_packing.py breaks
the packed path on purpose to show that comparison fails).
"""

import os

import pytest

from tests.parallel.torchrun_io import torchrun as launch

pytestmark = pytest.mark.slow  # torchrun layouts against a reference: minutes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
HARNESS = os.path.join(ROOT, "tests", "parallel", "harness.py")
TOL = 1e-5
# 8 rows: at DP=2 each rank gets 4, at micro-batch 2 that is 2 micro-batches (exercises the loss normaliser).
BASE = ["model.global_batch_size=8", "model.micro_batch_size=2", "model.hidden_size=32", "model.ffn_hidden_size=64",
        "model.encoder_seq_length=64", "model.num_attention_heads=4"]


def torchrun(nproc, args, tmp_path, name):
    return launch(HARNESS, nproc, args, tmp_path / f"{name}.json", 29400 + (abs(hash(name)) % 500), timeout=600)


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("ref")
    ref = tmp / "ref.pt"
    (result,) = torchrun(1, ["--save", str(ref), *BASE], tmp, "tp1")
    return ref, tmp, result


def test_dynamic_padding_matches_full_padding(reference):
    """Rows cut to the batch's longest row give NeMo-Aligner's full-seq_length outputs and loss."""
    padding = reference[2]["padding"]
    assert padding["widths"][0] < padding["widths"][1] == 64  # really less padding
    assert padding["pred_gap"] <= TOL and padding["loss_gap"] <= TOL


def test_inference_api_matches_the_training_path(reference):
    """RewardScorer formats and tokenizes like training: same rows give the validation forward's predictions."""
    inference = reference[2]["inference"]
    assert inference["training_path_gap"] <= TOL
    assert inference["batch_size_gap"] <= TOL  # batches of 2 (with a filled-up last one) vs one batch of 9
    assert inference["reward_gap"] <= 1e-9


def check_packing(results, losses):
    """Packed (one row per micro-batch, and bins) == unpacked at this layout: losses, predictions, every gradient."""
    for rank_result in results:
        for label, res in rank_result["packing"].items():
            diffs = res["diffs"]
            assert res["grad_tensors"] > 0 and "inference/pred" in diffs
            assert all(f"{loss}/grads" in diffs and f"{loss}/train_loss" in diffs for loss in losses), diffs
            assert max(diffs.values()) <= TOL, (rank_result["layout"], label, res)
            print(f"packed ({label}, shapes {res['packed_shapes']}) vs unpacked at {rank_result['layout']}: "
                  f"max |diff| {max(diffs.values()):.2e}")
    assert any("regression/pred" in res["diffs"] for r in results for res in r["packing"].values())


def test_packing_single_process(reference):
    check_packing([reference[2]], ("regression", "regular_bt"))


def check_absolute_loss(results):
    """Reported loss == numpy masked MSE of the model's own predictions (on the ranks that hold them)."""
    checked = [r["absolute"] for r in results if r["absolute"] is not None]
    assert checked, "no rank reported predictions"
    for a in checked:
        assert a["rows"] == 8
        assert abs(a["val_loss"] - a["numpy_mse"]) <= 1e-5 * max(1.0, a["numpy_mse"]), a
        assert abs(a["train_loss"] - a["numpy_mse"]) <= 1e-5 * max(1.0, a["numpy_mse"]), a


def test_absolute_loss_single_process(reference):
    check_absolute_loss([reference[2]])


LAYOUTS = {
    "tp2": (2, ["trainer.devices=2", "model.tensor_model_parallel_size=2"]),
    "pp2": (2, ["trainer.devices=2", "model.pipeline_model_parallel_size=2"]),
    "dp2": (2, ["trainer.devices=2"]),
    "tp2pp2": (4, ["trainer.devices=4", "model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2"]),
    "mbs1": (1, ["model.micro_batch_size=1"]),  # 8 micro-batches of 1 vs 4 of 2: gradient accumulation
    "mbs8": (1, ["model.micro_batch_size=8"]),
}


@pytest.mark.parametrize("layout", list(LAYOUTS))
def test_layout_matches_single_process(reference, layout):
    ref, tmp, _ = reference
    nproc, overrides = LAYOUTS[layout]
    results = torchrun(nproc, ["--compare", str(ref), *BASE, *overrides], tmp, layout)
    seen = {}
    for rank_result in results:
        assert rank_result["inference"]["batch_size_gap"] <= TOL
        for key, diff in rank_result["diffs"].items():
            seen[key] = max(seen.get(key, 0.0), diff)
    print(f"\n{layout}: max |diff| = {max(seen.values()):.3e}")
    check_absolute_loss(results)  # e.g. tp2pp2: the last pipeline stage's TP ranks
    check_packing(results, ("regression",) if layout == "mbs1" else ("regression", "regular_bt"))
    # Every loss variant was compared, and the gradients of the head and of a backbone layer were among them.
    losses = ("regression",) if layout == "mbs1" else ("regression", "regular_bt", "margin_bt", "scaled_bt",
                                                        "regression+bt")
    for loss in losses:
        assert f"{loss}/pred" in seen and f"{loss}/train_loss" in seen
        assert f"{loss}/grad:rm_head.weight" in seen
        assert f"{loss}/grad:decoder.layers.1.self_attention.linear_qkv.weight" in seen
    assert "inference/pred" in seen
    bad = {k: v for k, v in seen.items() if not v <= TOL}
    assert not bad, f"{layout} differs from TP=PP=DP=1 beyond {TOL}: {bad}"
    if "pp" in layout:  # per-micro-batch widths under PP (shapes exchanged) vs every micro-batch at the batch width
        for rank_result in results:
            fixed = rank_result["fixed_width"]
            assert len(set(fixed["widths"])) > 1 and max(fixed["widths"]) == fixed["batch_width"]
            print(f"{layout} variable vs fixed widths {fixed['widths']} / {fixed['batch_width']}: {fixed['diffs']}")
            assert fixed["grad_tensors"] > 0 and max(fixed["diffs"].values()) <= TOL, fixed
        assert any("pred" in r["fixed_width"]["diffs"] for r in results)  # the last stage compared predictions
