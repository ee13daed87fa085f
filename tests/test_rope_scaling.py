"""Llama 3's RoPE scaling with any parameters (nemo_hs2.megatron.rotary) against transformers' and NeMo's.

transformers' ``ROPE_INIT_FUNCTIONS["llama3"]`` is the reference for every parameter set; NeMo's hard-coded
``apply_rope_scaling`` for Llama 3.1's. The model-level checks (a Llama 3.2-shaped model's hidden states and rewards
equal transformers') are in tests/test_hf_import.py and tests/test_hf_export.py (slow).
"""

from __future__ import annotations

import pytest
import torch
from omegaconf import OmegaConf

from nemo_hs2.hf import exporter as hf_export
from nemo_hs2.megatron import checkpoint_config, rotary

CUSTOM = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
          "original_max_position_embeddings": 2048}
SCALINGS = {"llama3.1": rotary.LLAMA31_ROPE_SCALING, "llama3.2": rotary.LLAMA32_ROPE_SCALING, "custom": CUSTOM}


def transformers_inv_freq(head_dim: int, base: float, scaling=None) -> torch.Tensor:
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    config = LlamaConfig(hidden_size=head_dim * 4, num_attention_heads=4, rope_theta=base, rope_scaling=scaling,
                         max_position_embeddings=131072)
    return ROPE_INIT_FUNCTIONS["llama3" if scaling else "default"](config, "cpu")[0]


@pytest.mark.parametrize("name", sorted(SCALINGS))
@pytest.mark.parametrize("head_dim, base", [(128, 500000.0), (64, 500000.0), (16, 10000.0)])  # 3B / 1B / tiny
def test_scaled_frequencies_equal_transformers_exactly(name, head_dim, base):
    plain = transformers_inv_freq(head_dim, base)
    ours = rotary.scale_inv_freq(plain, rotary.llama3_parameters(SCALINGS[name]))
    assert torch.equal(ours, transformers_inv_freq(head_dim, base, SCALINGS[name]))
    assert (ours != plain).sum() >= 2  # the scaling changes some frequencies at every size tested


def test_llama31_parameters_equal_nemos_hard_coded_scaling():
    from nemo.collections.common.parts.utils import apply_rope_scaling

    plain = transformers_inv_freq(128, 500000.0)
    assert torch.equal(rotary.scale_inv_freq(plain, rotary.llama3_parameters(rotary.LLAMA31_ROPE_SCALING)),
                       apply_rope_scaling(plain))
    # and Llama 3.2's factor really differs from what NeMo would apply
    assert not torch.allclose(rotary.scale_inv_freq(plain, rotary.llama3_parameters(rotary.LLAMA32_ROPE_SCALING)),
                              apply_rope_scaling(plain))


def test_the_model_config_switch_and_parameters():
    assert rotary.model_scaling({"scale_positional_embedding": False}) is None
    # NeMo's switch alone means Llama 3.1's constants, as NeMo applies them
    assert rotary.model_scaling({"scale_positional_embedding": True})["factor"] == 8.0
    llama32 = {"scale_positional_embedding": True, "rope_scaling": dict(rotary.LLAMA32_ROPE_SCALING)}
    assert rotary.model_scaling(OmegaConf.create(llama32))["factor"] == 32.0
    with pytest.raises(ValueError, match="scale_positional_embedding is not true"):
        rotary.model_scaling({"rope_scaling": {"factor": 32.0}})
    with pytest.raises(ValueError, match="lacks"):
        rotary.model_scaling({"scale_positional_embedding": True, "rope_scaling": {"factor": 32.0}})


def test_export_writes_the_checkpoints_parameters_back():
    base = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 96, "num_attention_heads": 4,
            "num_query_groups": 2, "kv_channels": 16, "normalization": "rmsnorm", "layernorm_epsilon": 1e-5,
            "activation": "fast-swiglu", "bias": False, "position_embedding_type": "rope", "rotary_percentage": 1.0,
            "rotary_base": 500000.0, "rotary_interleaved": False, "max_position_embeddings": 131072,
            "mcore_gpt": True}
    out = hf_export.hf_causal_config(OmegaConf.create({**base, "scale_positional_embedding": True,
                                                        "rope_scaling": dict(CUSTOM)}))
    assert out["rope_scaling"] == CUSTOM
    nemo31 = hf_export.hf_causal_config(OmegaConf.create({**base, "scale_positional_embedding": True}))
    assert nemo31["rope_scaling"] == rotary.LLAMA31_ROPE_SCALING  # a .nemo from NeMo's own Llama 3.1 converter
    assert hf_export.hf_causal_config(OmegaConf.create(base))["rope_scaling"] is None


def test_a_preset_and_a_checkpoint_agree_on_what_is_applied():
    saved = OmegaConf.create({"scale_positional_embedding": True, "rope_scaling": dict(rotary.LLAMA31_ROPE_SCALING)})
    same = OmegaConf.create({"scale_positional_embedding": True})  # the llama3_1_70b preset: the switch alone
    assert "scale_positional_embedding" not in checkpoint_config.resolve(same, saved, "x.nemo", preset_chosen=True)
    llama32 = OmegaConf.create({"scale_positional_embedding": True,
                                "rope_scaling": dict(rotary.LLAMA32_ROPE_SCALING)})
    with pytest.raises(ValueError, match="contradicts the checkpoint"):
        checkpoint_config.resolve(llama32, saved, "x.nemo", preset_chosen=True)


# Meta's Llama-3.2-1B-Instruct config.json (as mirrored by unsloth/Llama-3.2-1B-Instruct); 3B differs where shown.
LLAMA32_1B = {"architectures": ["LlamaForCausalLM"], "attention_bias": False, "head_dim": 64, "hidden_act": "silu",
              "hidden_size": 2048, "initializer_range": 0.02, "intermediate_size": 8192,
              "max_position_embeddings": 131072, "mlp_bias": False, "model_type": "llama", "num_attention_heads": 32,
              "num_hidden_layers": 16, "num_key_value_heads": 8, "rms_norm_eps": 1e-05,
              "rope_scaling": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                               "original_max_position_embeddings": 8192, "rope_type": "llama3"},
              "rope_theta": 500000.0, "tie_word_embeddings": True, "vocab_size": 128256}
LLAMA32_3B = {**LLAMA32_1B, "head_dim": 128, "hidden_size": 3072, "num_attention_heads": 24, "num_hidden_layers": 28}


@pytest.mark.parametrize("name, hf_config", [("llama3_2_1b", LLAMA32_1B), ("llama3_2_3b", LLAMA32_3B)])
def test_llama32_presets_are_what_the_import_writes(name, hf_config):
    """A run with model=llama3_2_* from an imported Llama 3.2 .nemo: the preset agrees with the checkpoint on every
    architecture field (otherwise the run stops naming it), RoPE scaling parameters included."""
    from hydra import compose, initialize_config_dir

    from nemo_hs2.hf.mapping import nemo_arch_config
    from tests.conftest import CONF_DIR

    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        run = compose(config_name="train_reward_model", overrides=[f"model={name}", "trainer=gpu"]).model
    saved = OmegaConf.create(nemo_arch_config(hf_config))
    checkpoint_config.resolve(run, saved, "llama-3.2.nemo", preset_chosen=True)  # raises on any contradiction
    assert rotary.model_scaling(run)["factor"] == 32.0 and run.share_embeddings_and_output_weights


def test_the_llama32_recipe_fits_one_gpu():
    from tests.test_planner import CKPT, load, make_plan

    p = make_plan(load("+recipe=hs2_llama3_2_1b", CKPT))
    assert p.ok, p.errors
    assert (p.layout.nodes, p.layout.tp, p.layout.pp) == (1, 1, 1) and p.memory["fits"] and p.memory["peak"] <= 80
    assert p.params["reward_model"] == pytest.approx(1.236e9, rel=0.01)  # Llama-3.2-1B's 1.24B (tied embeddings)
