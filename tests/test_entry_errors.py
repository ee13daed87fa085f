"""User errors in the entry points: refused before any model or process group, in one line naming what is wrong,
exit status 1 and no traceback (``verbose=true`` adds it). The training entry is driven in this process through
the same task function ``examples/train_reward_model.py`` runs under Hydra."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir

from nemo_hs2.core.resolvers import register_resolvers

ROOT = Path(__file__).resolve().parents[1]


def _entry(name: str):
    spec = importlib.util.spec_from_file_location(f"entry_{name}", ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_entry(name: str, overrides: list[str], capsys, config: str | None = None) -> tuple[int, str]:
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name=config or name, overrides=overrides)
    with pytest.raises(SystemExit) as stop:
        _entry(name).task(cfg)
    return stop.value.code, capsys.readouterr().err


def assert_one_line_error(err: str, entry: str, *needles: str):
    lines = [line for line in err.splitlines() if line.startswith(f"{entry}: error:")]
    assert len(lines) == 1, err
    assert "Traceback" not in err, err
    for needle in needles:  # the message may list several broken rules, one per line
        assert needle in err, err


def _hs2p(path: Path, strengths: list[int]) -> Path:
    # preference/preference.jsonl.gz fields (nvidia/HelpSteer2 dataset card, preference/); split is train or val.
    rows = [{"split": split, "prompt": f"Question {i}?", "response_1": f"Answer {i}.", "response_2": f"Reply {i}!",
             "preference_strength": s, "preference_statement": "", "preference_elaboration": "",
             "three_most_similar_preferences": [], "all_preferences_unprocessed": [s]}
            for split in ("train", "val") for i, s in enumerate(strengths)]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_preference_data_with_the_regression_loss_is_refused_before_the_model(capsys, tmp_path):
    code, err = run_entry("train_reward_model", ["data=demo_preference",
                                                  f"exp_manager.explicit_log_dir={tmp_path}"], capsys)
    assert code == 1
    assert_one_line_error(err, "train_reward_model", "preference pairs", "model.regression.loss_func=scaled_bt")
    assert not (tmp_path / "checkpoints").exists()


def test_rated_rows_with_a_bt_loss_are_refused(capsys, tmp_path):
    code, err = run_entry("train_reward_model", ["model.regression.loss_func=scaled_bt",
                                                  f"exp_manager.explicit_log_dir={tmp_path}"], capsys)
    assert code == 1
    assert_one_line_error(err, "train_reward_model", "needs preference pairs", "data=helpsteer2_preference")


def test_too_few_rows_for_one_global_batch_names_split_rows_why_and_batch(capsys, tmp_path):
    """Before: Lightning's setup died with ZeroDivisionError in NeMo's batch sampler."""
    code, err = run_entry("train_reward_model", ["data.overlength=drop", "model.encoder_seq_length=148",
                                                  f"exp_manager.explicit_log_dir={tmp_path}"], capsys)
    assert code == 1
    assert_one_line_error(err, "train_reward_model", "the train split keeps", "overlength", "global batch of 16")


def test_a_split_of_only_ties_is_refused_for_bt(capsys, tmp_path):
    path = _hs2p(tmp_path / "pref.jsonl", [0] * 20)
    code, err = run_entry("train_reward_model", ["data=helpsteer2_preference", f"data.preference_file={path}",
                                                  "data.cache_dir=null", "model.regression.loss_func=scaled_bt",
                                                  "data.attributes=[helpfulness]",
                                                  "model.regression.reward_weights=helpfulness_only",
                                                  f"exp_manager.explicit_log_dir={tmp_path / 'run'}"], capsys)
    assert code == 1
    assert_one_line_error(err, "train_reward_model", "no preference pair with nonzero strength", "20 pairs")


def test_a_split_value_the_file_does_not_use_lists_the_ones_it_has(capsys, tmp_path):
    path = _hs2p(tmp_path / "pref.jsonl", [1, -2])
    code, err = run_entry("train_reward_model", ["data=helpsteer2_preference", f"data.preference_file={path}",
                                                  "data.splits.validation=validation", "data.cache_dir=null",
                                                  "model.regression.loss_func=scaled_bt",
                                                  "data.attributes=[helpfulness]",
                                                  "model.regression.reward_weights=helpfulness_only",
                                                  f"exp_manager.explicit_log_dir={tmp_path / 'run'}"], capsys)
    assert code == 1
    assert_one_line_error(err, "train_reward_model", "no pair has split 'validation'", "'train': 2", "'val': 2")


def test_verbose_shows_the_traceback(capsys, tmp_path):
    code, err = run_entry("train_reward_model", ["data=demo_preference", "verbose=true",
                                                  f"exp_manager.explicit_log_dir={tmp_path}"], capsys)
    assert code == 1 and "Traceback" in err and "ConfigError" in err


def test_an_unsupported_hugging_face_model_is_one_line(capsys, tmp_path):
    (tmp_path / "hf").mkdir()
    (tmp_path / "hf" / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"],
                                                             "model_type": "gpt2"}))
    code, err = run_entry("import_hf", [f"input={tmp_path / 'hf'}", f"output={tmp_path / 'o.nemo'}"], capsys)
    assert code == 1
    assert_one_line_error(err, "import_hf", "GPT2LMHeadModel")


def test_evaluation_with_nothing_to_do_is_one_line(capsys, tmp_path):
    code, err = run_entry("evaluate_reward_model", ["checkpoint=x.nemo", f"output_dir={tmp_path}"], capsys)
    assert code == 1
    assert_one_line_error(err, "evaluate_reward_model", "nothing to evaluate", "helpsteer3.file=PATH")
