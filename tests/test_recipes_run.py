"""Every published recipe's data / loss / reward-weight settings train and validate at tiny size on CPU.

The recipes target 8-192 GPUs; what can break on a CPU is everything but the layout: the attribute subset, the
loss, the reward weights and the data kind. Each recipe is composed as a user would (``+recipe=NAME``), those
settings are read from it and run on the tiny model with demo data, through training and one validation.
"""

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from tests.conftest import CONF_DIR, ROOT

RECIPES = sorted(p.stem for p in (ROOT / "conf" / "recipe").glob("*.yaml"))
SCRIPT = str(ROOT / "examples" / "train_reward_model.py")
TINY = ["trainer.rm.max_steps=2", "trainer.rm.val_check_interval=2", "trainer.rm.save_interval=100",
        "data.demo.train_prompts=8", "data.demo.validation_prompts=4", "model.global_batch_size=4",
        "model.micro_batch_size=2", "model.num_layers=1", "model.hidden_size=32", "model.ffn_hidden_size=64",
        "model.encoder_seq_length=256"]


def recipe_settings(name: str) -> list[str]:
    """The recipe's data / loss / weights settings as overrides of the default (tiny, CPU, demo) job."""
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=[f"+recipe={name}"])
    reg = cfg.model.regression
    data = "demo_preference" if cfg.data.source == "preference" else "demo"
    as_yaml = lambda v: json.dumps(OmegaConf.to_container(v, resolve=True) if OmegaConf.is_config(v) else v)
    return [f"data={data}", f"data.attributes={as_yaml(cfg.data.attributes)}",
            f"model.regression.loss_func={reg.loss_func}", f"model.regression.bt_ties={reg.bt_ties}",
            f"model.regression.bt_reward={as_yaml(reg.bt_reward)}",
            f"model.regression.reward_weights={as_yaml(reg.reward_weights)}"]


def test_every_recipe_states_its_weights():
    published = {"hs2_llama3_70b": "llama3_70b", "hs2_nemotron4_340b": "nemotron_340b",
                 "hs2p_llama3_1_70b_helpfulness": "helpfulness_only", "hs2p_llama3_1_70b_scaled_bt": "helpfulness_only",
                 "hs3_llama3_3_70b_scaled_bt": "helpfulness_only"}
    for name in RECIPES:
        settings = dict(s.split("=", 1) for s in recipe_settings(name))
        assert json.loads(settings["model.regression.reward_weights"]) == published.get(name, "nemotron_340b"), name


def train(overrides, log_dir: Path) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
    proc = subprocess.run([sys.executable, SCRIPT, *TINY, *overrides, f"exp_manager.explicit_log_dir={log_dir}"],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, f"{overrides} failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-5000:]}"
    return json.loads((log_dir / "metrics.json").read_text())


def _cases() -> dict[str, tuple[list[str], list[str]]]:
    """id -> (overrides, the recipes and cases they stand for). Recipes whose settings are the same train the same
    tiny job (several differ only in layout), so each distinct setting runs once, for all of them."""
    groups: dict[tuple, list[str]] = {}
    for name in RECIPES:
        groups.setdefault(tuple(recipe_settings(name)), []).append(name)
    cases = {names[0]: (list(settings), names) for settings, names in groups.items()}
    cases["readme_subset"] = (["data.attributes=[helpfulness,verbosity]"], ["readme_subset"])
    return cases


CASES = _cases()
# What each run must have saved in its checkpoint as its reward: the published numbers, restricted by hand.
SAVED_WEIGHTS = {
    "hs2_llama3_70b": {"helpfulness": 0.65, "correctness": 0.8, "coherence": 0.45, "complexity": 0.55,
                       "verbosity": -0.4},
    "hs2_nemotron4_340b": {"helpfulness": 0.3, "correctness": 0.74, "coherence": 0.46, "complexity": 0.47,
                           "verbosity": -0.33},
    "hs2p_llama3_1_70b_helpfulness": {"helpfulness": 1.0},
    "hs2p_llama3_1_70b_scaled_bt": {"helpfulness": 1.0},
    "readme_subset": {"helpfulness": 0.3, "verbosity": -0.33},  # the default preset, restricted
}


def saved_model_config(nemo) -> dict:
    import tarfile

    import yaml

    with tarfile.open(nemo) as tar:
        member = next(m for m in tar.getmembers() if m.name.endswith("model_config.yaml"))
        return yaml.safe_load(tar.extractfile(member))


@pytest.mark.slow
@pytest.mark.parametrize("case", list(CASES))
def test_recipe_settings_train_and_validate(case, tmp_path):
    overrides, names = CASES[case]
    metrics = train(overrides, tmp_path)
    final = metrics["final_validation"]
    assert metrics["steps"] == 2 and final["step"] == 2 and final["rows"] > 0
    assert math.isfinite(final["loss"])
    # The reward validation used: the recipe's preset over the attributes the run has.
    assert final["pairs/reward"] > 0 if "pairs/reward" in final else final["preference_pairs"] > 0
    # ... and the checkpoint carries it, for scoring, evaluation and serving to default to.
    saved = saved_model_config(next((tmp_path / "checkpoints").glob("*.nemo")))["regression"]["reward_weights"]
    for name in set(names) & set(SAVED_WEIGHTS):
        assert saved == pytest.approx(SAVED_WEIGHTS[name]), name
