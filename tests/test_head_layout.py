"""NVIDIA's NeMo-Aligner reward models by name: a 9-output positional head read through ``head_layout``.

The reference is NeMo-Aligner 0.7.0's own ``MegatronGPTRegressionRewardModel`` (``num_attributes: 9``, no names,
as the published Nemotron-4-340B-Reward / Llama3-70B-SteerLM-RM are), saved to ``.nemo`` and scored with its own
``infer``: our named scores must equal its slots 4-8 (helpfulness ... verbosity) for evaluation / serving /
annotation loading, and for a training run started from it with ``init.mode=reward_model``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from omegaconf import OmegaConf

from nemo_hs2.core.attributes import HELPSTEER2_ATTRIBUTES as HS2
from nemo_hs2.megatron.head_layout import ALIGNER_9SLOT, head_attributes, resolve_layout

ROOT = Path(__file__).resolve().parents[1]
WORKER = str(ROOT / "tests" / "workers" / "aligner_rm.py")
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
ALIGNER = {"num_attributes": 9, "merge_attributes": False}


def run(args, timeout=900):
    proc = subprocess.run([sys.executable, *args], cwd=ROOT, env=ENV, capture_output=True, text=True, timeout=timeout)
    assert proc.returncode == 0, f"{args} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-6000:]}"


# ------------------------------------------------------------------------------------------ fast: the mapping
def test_aligner_9slot_is_nemo_aligners_slot_order():
    assert ALIGNER_9SLOT == ("quality", "toxicity", "humor", "creativity", "helpfulness", "correctness",
                             "coherence", "complexity", "verbosity")
    assert ALIGNER_9SLOT[4:] == HS2
    assert head_attributes(ALIGNER, "x.nemo", "aligner_9slot", None) == (ALIGNER_9SLOT, HS2)  # the trained five
    assert head_attributes(ALIGNER, "x.nemo", "aligner_9slot", ["verbosity", "quality"])[1] == ("verbosity", "quality")


def test_an_explicit_list_names_outputs_and_leaves_others_unnamed():
    names, keep = head_attributes({"num_attributes": 3}, "x.nemo", OmegaConf.create([None, "helpfulness", "b"]), None)
    assert keep == ("helpfulness", "b") and names[1:] == ("helpfulness", "b") and names[0] not in ("helpfulness", "b")


@pytest.mark.parametrize("regression, layout, wanted, message", [
    (ALIGNER, None, None, "9-output head without attribute names.*head_layout=aligner_9slot"),
    (ALIGNER, "aligner_10slot", None, "unknown head_layout 'aligner_10slot'"),
    ({"num_attributes": 5, "merge_attributes": False}, "aligner_9slot", None, "9 outputs but x.nemo's head has 5"),
    ({"num_attributes": 5, "attributes": list(HS2)}, "aligner_9slot", None, "already names its head outputs"),
    (ALIGNER, "aligner_9slot", ["helpfulness", "harmlessness"], r"\['harmlessness'\] are not in head_layout"),
    (ALIGNER, [None, "a", "a"], None, "listed twice"),
    ({"num_attributes": 5, "attributes": list(HS2)}, None, ["verbosity"], "predicts attributes .* asks for"),
])
def test_a_layout_that_cannot_name_the_head_is_refused(regression, layout, wanted, message):
    with pytest.raises(ValueError, match=message):
        head_attributes(regression, "x.nemo", layout, wanted)


def test_head_layout_needs_a_reward_model_start(tmp_path):
    from nemo_hs2.megatron.train_recipe import check_init

    ckpt = tmp_path / "m.nemo"
    ckpt.write_bytes(b"")
    cfg = OmegaConf.create({"init": {"restore_from_path": str(ckpt), "mode": "base", "head_layout": "aligner_9slot"}})
    with pytest.raises(ValueError, match="init.head_layout .* needs init.mode=reward_model"):
        check_init(cfg)
    assert resolve_layout(None) is None


# ------------------------------------------------------------------------------------------ NeMo-Aligner's own model
@pytest.fixture(scope="module")
def results(tmp_path_factory):
    d = tmp_path_factory.mktemp("aligner_rm")
    run([WORKER, "write", str(d)])
    aligner = d / "aligner.nemo"
    # Stage 2 from stage 1: start training from it by name, at lr 0 so the saved model is the loaded one.
    run([str(ROOT / "examples" / "train_reward_model.py"), f"init.restore_from_path={aligner}",
         "init.mode=reward_model", "init.head_layout=aligner_9slot", "data.attributes=[verbosity,helpfulness]",
         "data.system_prompt=null", "model.regression.reward_weights=helpfulness_only", "trainer.rm.max_steps=1",
         "trainer.rm.val_check_interval=1", "trainer.rm.save_interval=1", "model.optim.lr=0",
         "model.optim.sched.min_lr=0", "model.optim.sched.warmup_steps=0", "data.demo.train_prompts=8",
         # NeMo keeps one global batch size per process: the loads below share one, so these match the source's
         "model.global_batch_size=4", "model.micro_batch_size=1",
         "data.demo.validation_prompts=4", f"exp_manager.explicit_log_dir={d / 'run'}"])
    trained = d / "run" / "checkpoints" / "hs2_reward_model.nemo"
    listed = json.dumps([None, None, None, None, "helpfulness", "correctness", None, None, "verbosity"])
    specs = [f"{aligner}|aligner_9slot|", f"{aligner}|{listed}|verbosity,helpfulness", f"{trained}|none|",
             f"eval|{aligner}|aligner_9slot|{d / 'eval'}", f"{aligner}|none|"]
    run([WORKER, "load", str(d / "loaded.json"), *specs])
    reference = json.loads((d / "reference.json").read_text())
    return np.array(reference["rewards"]), reference["tokens"], json.loads((d / "loaded.json").read_text())


def named(result, attributes):
    return np.array([[row[a] for a in attributes] for row in result["scores"]])


@pytest.mark.slow
def test_named_scores_equal_aligner_slots_4_to_8(results):
    ref, tokens, loaded = results
    assert ref.shape == (5, 9)
    r = loaded[0]
    assert r["attributes"] == list(HS2) and r["cfg_attributes"] == list(HS2) and r["num_attributes"] == 5
    assert r["head_shape"][0] == 5
    assert r["tokens"] == tokens  # the scorer formats conversations exactly as the reference was fed
    np.testing.assert_allclose(named(r, HS2), ref[:, 4:9], atol=1e-5, rtol=0)
    assert np.abs(named(r, HS2) - ref[:, 0:5]).max() > 0.1  # the slots are far apart: a shift would show


@pytest.mark.slow
def test_an_explicit_layout_and_a_subset_in_any_order(results):
    ref, _, loaded = results
    r = loaded[1]
    assert r["attributes"] == ["verbosity", "helpfulness"] and r["head_shape"][0] == 2
    np.testing.assert_allclose(named(r, ["verbosity", "helpfulness"]), ref[:, [8, 4]], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_training_starts_from_it_by_name_and_saves_the_names(results):
    ref, tokens, loaded = results
    r = loaded[2]  # the checkpoint the lr-0 run saved, loaded as an ordinary nemo_hs2 model (no layout)
    assert r["attributes"] == ["verbosity", "helpfulness"] and r["head_shape"][0] == 2
    assert r["tokens"] == tokens
    np.testing.assert_allclose(named(r, ["verbosity", "helpfulness"]), ref[:, [8, 4]], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_evaluation_reads_it_by_name(results):
    ref, _, loaded = results
    np.testing.assert_allclose(named(loaded[3], HS2), ref[:, 4:9], atol=1e-5, rtol=0)


@pytest.mark.slow
def test_loading_it_without_a_layout_names_the_fix(results):
    assert "head_layout=aligner_9slot" in results[2][4]["error"]
