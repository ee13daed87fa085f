"""nemo_hs2.cli.console: what the console holds back, what it never does, and the demo's closing summary."""

import io
import json
import logging

import pytest

from nemo_hs2.cli import console as quiet
from nemo_hs2.cli import run_summary


@pytest.fixture
def console():
    """A third-party logger and nemo_hs2's, both writing to one console stream through a QuietFilter."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    flt = quiet.QuietFilter()
    flt.rank = 0
    handler.addFilter(flt)
    loggers = [logging.getLogger("third_party_test"), logging.getLogger("nemo_hs2.test")]
    for lg in loggers:
        lg.addHandler(handler)
        lg.setLevel(logging.DEBUG)
        lg.propagate = False
    yield loggers[0], loggers[1], stream, flt
    for lg in loggers:
        lg.removeHandler(handler)


def test_benign_warnings_and_third_party_info_are_held_back_and_counted(console):
    other, own, stream, flt = console
    other.warning("The model: M() does not have field.name: moe_router_topk in its cfg. Add this key ...")
    other.warning("The model: M() does not have field.name: fp8_wgrad in its cfg. Add this key ...")
    other.info("Rank 0 has data parallel group : [0]")
    other.warning("something nobody has seen before")          # not on the list: shown
    own.info("train: 128 rows read")                           # ours: shown
    text = stream.getvalue()
    assert "does not have field.name" not in text and "data parallel group" not in text
    assert "something nobody has seen before" in text and "train: 128 rows read" in text
    assert flt.hidden == {"config-mapping": 2} and flt.info == 1
    line = flt.summary()
    assert line.startswith("quiet: held back 2 known-benign warning(s) (config-mapping 2) and 1 third-party info")
    assert "verbose=true" in line


def test_errors_are_never_held_back(console):
    other, _, stream, flt = console
    other.error("There were no checkpoints found in checkpoint_dir: but logged as an error")
    other.critical("does not have field.name: x in its cfg")
    assert "logged as an error" in stream.getvalue() and "field.name: x" in stream.getvalue()
    assert not flt.hidden and flt.summary() is None


def test_other_ranks_keep_only_warnings(console):
    _, own, stream, flt = console
    flt.rank = 1
    own.info("validation: 24 rows read")
    own.warning("rank 1 saw something")
    assert stream.getvalue() == "rank 1 saw something\n"


def test_a_record_is_counted_once_across_handlers(console):
    other, _, stream, flt = console
    second = logging.StreamHandler(io.StringIO())
    second.addFilter(flt)
    other.addHandler(second)
    try:
        other.warning("`<class 'x.MegatronPretrainingRandomBatchSampler'>` is experimental and not ready")
    finally:
        other.removeHandler(second)
    assert flt.hidden == {"experimental-sampler": 1}


def test_verbose_installs_nothing():
    assert quiet.install(verbose=True) is None


def test_every_benign_pattern_matches_what_the_stack_says():
    """The messages as the pinned NeMo / Lightning write them (copied from a verbose demo run)."""
    said = {
        "config-mapping": "The model: AttributeRewardModel() does not have field.name: barrier_with_L1_time in its "
                          "cfg. Add this key to cfg or config_mapping to make to make it configurable.",
        "fresh-run": "There were no checkpoints found in checkpoint_dir or no checkpoint folder at checkpoint_dir "
                     ":results/hs2_reward_model/checkpoints. Training from scratch.",
        "monitor-before-epoch": "The checkpoint callback was told to monitor a validation value and trainer's "
                                "max_steps was set to 240. Please ensure that max_steps will run for at least 1 "
                                "epochs to ensure that checkpointing will not error out.",
        "experimental-sampler": "`<class 'nemo.collections.nlp.data.language_modeling.megatron.megatron_batch_"
                                "samplers.MegatronPretrainingRandomBatchSampler'>` is experimental and not ready "
                                "for production yet. Use at your own risk.",
        "manual-optimization": "/x/lightning/pytorch/core/optimizer.py:316: The lr scheduler dict contains the "
                               "key(s) ['monitor', 'reduce_on_plateau'], but the keys will be ignored.",
    }
    assert set(said) == {b.name for b in quiet.BENIGN}
    for name, regex in quiet._BENIGN_RE:
        assert regex.search(said[name]), name
        assert all(not regex.search(text) for other, text in said.items() if other != name)


def test_run_summary_table(tmp_path):
    (tmp_path / "checkpoints").mkdir()
    (tmp_path / "checkpoints" / "hs2_reward_model.nemo").write_bytes(b"")
    final = {"step": 240, "rows": 128, "mse": 0.5, "baseline_mse": 1.6, "pairwise_acc/reward": 0.75,
             "pairs/reward": 47}
    for a, (mse, base, r) in {"helpfulness": (0.4, 1.5, 0.8), "verbosity": (0.6, 1.7, 0.9)}.items():
        final.update({f"{a}/mse": mse, f"{a}/baseline_mse": base, f"{a}/pearson": r})
    path = tmp_path / "metrics.json"
    path.write_text(json.dumps({"final_validation": final}))
    text = run_summary.run_summary({"final_validation": final, "attributes": ["helpfulness", "verbosity"],
                              "metrics_path": str(path), "preempted": False})
    lines = text.splitlines()
    assert lines[0] == "final validation (step 240, 128 rows)"
    assert lines[2].split() == ["helpfulness", "0.400", "1.500", "0.800"]
    assert lines[4].split() == ["all", "0.500", "1.600"]
    assert "0.750 over 47 response pairs" in text
    assert f"metrics      {path}" in text and "hs2_reward_model.nemo" in text
