"""Bad parallel layouts are rejected before any process group or model exists (rules: nemo_hs2/plan/rules.py)."""

import pytest
from hydra import compose, initialize_config_dir

from nemo_hs2.plan.checks import ConfigError, parallel_layout
from tests.conftest import CONF_DIR


def load(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="train_reward_model", overrides=list(overrides))


def test_default_config_is_valid():
    assert parallel_layout(load()) == {"world": 1, "tp": 1, "pp": 1, "dp": 1, "num_microbatches": 4}


def test_tp_pp_dp_layout():
    cfg = load("trainer.devices=8", "model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2",
               "model.global_batch_size=16", "model.micro_batch_size=2")
    assert parallel_layout(cfg) == {"world": 8, "tp": 2, "pp": 2, "dp": 2, "num_microbatches": 4}


@pytest.mark.parametrize("overrides, rule", [
    (["trainer.devices=3", "model.tensor_model_parallel_size=2"], "not divisible by TP x PP"),
    (["trainer.devices=2", "model.global_batch_size=6", "model.micro_batch_size=4"], "global_batch_size (6)"),
    (["trainer.devices=2", "model.pipeline_model_parallel_size=2", "model.num_layers=3"], "num_layers (3)"),
    (["trainer.devices=8", "model.tensor_model_parallel_size=8"], "num_attention_heads (4)"),
    (["model.hidden_size=66"], "hidden_size (66)"),
    (["trainer.devices=2", "model.tensor_model_parallel_size=2", "model.sequence_parallel=true"], "sequence_parallel"),
    (["data.seq_length=4096"], "exceeds model.encoder_seq_length"),
    (["model.regression.loss_func=scaled_bt"], "needs preference pairs"),
    (["trainer.devices=2", "model.tensor_model_parallel_size=2", "model.ffn_hidden_size=255"], "ffn_hidden_size (255)"),
    (["model.make_vocab_size_divisible_by=0"], "make_vocab_size_divisible_by (0)"),
    (["model.virtual_pipeline_model_parallel_size=2"], "virtual_pipeline_model_parallel_size (2) needs"),
    (["trainer.rm.save_interval=4", "trainer.rm.val_check_interval=12"], "save_interval (4) must be a multiple"),
])
def test_bad_layouts_name_the_rule(overrides, rule):
    with pytest.raises(ConfigError) as err:
        parallel_layout(load(*overrides))
    assert rule in str(err.value)


def test_every_broken_rule_is_listed():
    with pytest.raises(ConfigError) as err:
        parallel_layout(load("trainer.devices=3", "model.tensor_model_parallel_size=2", "model.hidden_size=66"))
    assert "not divisible by TP x PP" in str(err.value) and "hidden_size (66)" in str(err.value)


def test_training_entry_rejects_before_any_process_group(monkeypatch):
    import nemo_hs2.megatron.train_recipe as train

    # Other tests in this process may have a process group already; what matters is that the rejection comes
    # before the first step towards one (patching NeMo, then the trainer that starts the group).
    def too_late(*args, **kwargs):
        raise AssertionError("the training entry went past the config checks")

    monkeypatch.setattr(train.compat, "apply", too_late)
    cfg = load("trainer.devices=3", "model.tensor_model_parallel_size=2")
    with pytest.raises(ConfigError, match="not divisible by TP x PP"):
        train.run(cfg)
