"""The planner's parts on their own: its options (one typed schema, validated), the layout read from a config (derived
sizes), each group of rules alone, and the one place that registers the configs' resolvers."""

import copy
from functools import lru_cache

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nemo_hs2.core.resolvers import register_resolvers
from nemo_hs2.plan import RULES, PlanOptions, layout_of
from nemo_hs2.plan.checks import ConfigError, parallel_layout
from nemo_hs2.plan.layout import LAYOUT_KEYS
from tests.conftest import CONF_DIR

CKPT = "init.restore_from_path=/models/base.nemo"


@lru_cache(maxsize=None)
def load(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="train_reward_model", overrides=list(overrides))


def edit(base: tuple, changes: dict):
    """A composed config with dotted keys changed (re-composing per case is the slow part)."""
    cfg = copy.deepcopy(load(*base))
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def test_plan_options_defaults_and_parsing():
    assert PlanOptions() == PlanOptions.parse({}) == PlanOptions.from_config(load())  # no plan node: the defaults
    assert (PlanOptions().gpu_memory_gb, PlanOptions().mfu, PlanOptions().format) == (80.0, 0.30, "table")
    # CLI strings and Hydra-typed values parse alike
    cli = PlanOptions.parse({"gpu_memory_gb": "141", "strict": "true", "train_rows": "5000", "json_out": "null"})
    typed = PlanOptions.from_config(load("++plan.gpu_memory_gb=141", "++plan.strict=true", "++plan.train_rows=5000"))
    assert cli == typed and (cli.gpu_memory_gb, cli.strict, cli.train_rows, cli.json_out) == (141.0, True, 5000, None)
    assert PlanOptions.from_config(load("++plan.mfu=0.5"), {"mfu": "0.4"}).mfu == 0.4  # overrides win
    assert list(PlanOptions().to_dict()) == ["format", "gpu_memory_gb", "peak_tflops", "mfu", "overhead_gb",
                                             "fragmentation", "train_rows", "strict", "json_out", "data_report"]


@pytest.mark.parametrize("values, message", [
    ({"nonsense": 1}, "unknown planner option(s) plan.nonsense; known: plan.format, plan.gpu_memory_gb"),
    ({"format": "xml"}, "plan.format='xml': expected one of table | json"),
    ({"gpu_memory_gb": "abc"}, "plan.gpu_memory_gb='abc': expected a number > 0 (default 80.0)"),
    ({"gpu_memory_gb": 0}, "plan.gpu_memory_gb=0: expected a number > 0"),
    ({"mfu": 1.5}, "plan.mfu=1.5: expected a number > 0 and <= 1"),
    ({"peak_tflops": "nan"}, "plan.peak_tflops='nan'"),
    ({"overhead_gb": -1}, "plan.overhead_gb=-1: expected a number >= 0"),
    ({"train_rows": "2.5"}, "plan.train_rows='2.5': expected a whole number >= 1, or null"),
    ({"train_rows": True}, "plan.train_rows=True"),
    ({"strict": "maybe"}, "plan.strict='maybe': expected true or false (default False)"),
    ({"data_report": ""}, "plan.data_report='': expected a path"),
])
def test_plan_options_name_the_bad_key(values, message):
    with pytest.raises(ValueError) as err:
        PlanOptions.parse(values)
    assert message in str(err.value)


def test_training_refuses_bad_plan_options():
    with pytest.raises(ConfigError, match=r"invalid planner options: plan\.mfu=2: expected a number > 0 and <= 1"):
        parallel_layout(load("++plan.mfu=2"))
    with pytest.raises(ConfigError, match="unknown planner option"):
        parallel_layout(load("++plan.gpu_memory=80"))


def test_layout_derives_its_sizes():
    good = layout_of(load("+recipe=hs2_llama3_70b", CKPT))
    assert (good.world, good.dp, good.num_microbatches, good.sequences_per_micro_batch) == (64, 4, 16, 2)
    assert good.distributed_optimizer and good.on_gpu and good.samples_are == "rows"
    assert list(good.to_dict()) == list(LAYOUT_KEYS)
    # what examples/slurm/submit.sh reads from the JSON plan
    assert {"nodes", "gpus_per_node", "tp", "pp", "accelerator"} <= set(good.to_dict())
    odd = layout_of(edit(("+recipe=hs2_llama3_70b", CKPT), {"trainer.devices": 7}))
    assert (odd.world, odd.dp, odd.num_microbatches) == (56, 0, 0)  # 56 is not a multiple of TP 8 x PP 2
    uneven = layout_of(edit(("+recipe=hs2_llama3_70b", CKPT), {"model.global_batch_size": 100}))
    assert (uneven.dp, uneven.num_microbatches) == (4, 0)
    pairs = layout_of(load("+recipe=hs2p_llama3_1_70b_scaled_bt", CKPT))
    assert (pairs.samples_are, pairs.sequences_per_micro_batch) == ("pairs", 2)


RULE_CASES = {  # rule -> (changes to the published 70B recipe, what it must say)
    "parallel_sizes": ({"trainer.devices": 7}, "not divisible by TP x PP = 8 x 2"),
    "batch_sizes": ({"model.global_batch_size": 100}, "global_batch_size (100) must be divisible"),
    "pipeline_layers": ({"model.pipeline_model_parallel_size": 3}, "num_layers (80) must be divisible"),
    "tensor_parallel_heads": ({"model.tensor_model_parallel_size": 16, "trainer.num_nodes": 16},
                              "num_query_groups (8) must be divisible"),
    "sequence_splitting": ({"model.sequence_parallel": True}, "sequence parallelism leaves split"),
    "sequence_length": ({"data.seq_length": 8192}, "exceeds model.encoder_seq_length"),
    "loss_needs_pairs": ({"model.regression.loss_func": "scaled_bt"}, "needs preference pairs"),
    "epochs_need_shuffling": ({"trainer.rm.train_random_sampler": False, "trainer.rm.max_epochs": 2},
                              "repeats the same order every epoch"),
    "checkpoint_interval": ({"trainer.rm.save_interval": 5, "trainer.rm.val_check_interval": 2},
                            "save_interval (5) must be a multiple"),
    "fusions": ({"model.activation": "squared-relu", "model.bias_activation_fusion": True},
                "fuses only gelu and swiglu"),
    "optimizer": ({"trainer.accelerator": "cpu"}, "distributed_fused_adam needs NVIDIA apex"),
    "recomputation": ({"model.activations_checkpoint_num_layers": None}, "granularity=full needs"),
    "vocabulary": ({"model.make_vocab_size_divisible_by": 0}, "make_vocab_size_divisible_by (0) must be >= 1"),
    "run_readiness": ({"init.restore_from_path": None}, "init.restore_from_path is not set"),
}


def test_every_rule_group_has_a_case():
    assert [r.__name__ for r in RULES] == list(RULE_CASES)


@pytest.mark.parametrize("name", list(RULE_CASES))
def test_each_rule_group_finds_its_own(name):
    """Each rule function alone: silent on the published recipe, and names the broken rule on its case."""
    rule = {r.__name__: r for r in RULES}[name]
    base = load("+recipe=hs2_llama3_70b", CKPT)
    assert rule(base, layout_of(base)) == []
    changes, message = RULE_CASES[name]
    cfg = edit(("+recipe=hs2_llama3_70b", CKPT), changes)
    found = rule(cfg, layout_of(cfg))
    assert any(message in f.message for f in found), found
    assert {f.level for f in found} == ({"readiness"} if name == "run_readiness" else {"error"})


def test_register_resolvers_is_idempotent():
    register_resolvers()
    register_resolvers()  # a second entry point in the same process must not fail
    cfg = OmegaConf.create({"a": "${multiply:3,4}", "b": "${int_div:7,2}"})
    assert (cfg.a, cfg.b) == (12, 3)


def test_packing_under_pipeline_parallelism_needs_shape_exchange():
    """A packed micro-batch has its own width; the stages pass it on only with variable widths."""
    rule = {r.__name__: r for r in RULES}["pipeline_layers"]
    cfg = edit(("+recipe=hs2_llama3_70b", CKPT), {"data.packing": True, "model.variable_micro_batch_widths": False})
    assert any("needs model.variable_micro_batch_widths=true" in f.message for f in rule(cfg, layout_of(cfg)))
    cfg = edit(("+recipe=hs2_llama3_70b", CKPT), {"data.packing": True})
    assert rule(cfg, layout_of(cfg)) == []
