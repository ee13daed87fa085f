"""Llama 3.1's RoPE frequency scaling in our reward model.

NeMo's ``MegatronGPTModel`` applies it after building the backbone (``mcore_model_customize`` with
``scale_positional_embedding: true``, what NeMo's Llama 3.1 converter writes). NeMo-Aligner 0.7.0's reward model
builds its own ``GPTRewardModel`` and never calls that, so a Llama 3.1 checkpoint would silently train and score
with Llama 3's frequencies. ``AttributeRewardModel.model_provider_func`` calls ``apply_rope_scaling`` instead.

NeMo 2.1 has one scaling, with Llama 3.1's constants fixed (``LLAMA31_ROPE_SCALING``); a Hugging Face config that
asks for other values cannot be represented and ``check_hf_rope_scaling`` refuses it.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping

# transformers' rope_scaling for Llama 3.1 (rope_type "llama3"); what nemo.collections.common.parts.utils.
# apply_rope_scaling and megatron-core's RotaryEmbedding(rope_scaling=True) hard-code.
LLAMA31_ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}


def check_hf_rope_scaling(rope_scaling: Mapping | None) -> bool:
    """Whether a Hugging Face ``rope_scaling`` asks for scaling (-> ``scale_positional_embedding``); refuses the
    scalings NeMo cannot apply."""
    if not rope_scaling:
        return False
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if kind in (None, "default"):
        return False
    wanted = {k: v for k, v in LLAMA31_ROPE_SCALING.items() if k != "rope_type"}
    got = {k: rope_scaling.get(k) for k in wanted}
    if kind != "llama3" or any(got[k] is None or float(got[k]) != float(v) for k, v in wanted.items()):
        raise ValueError(f"rope_scaling {dict(rope_scaling)} cannot be applied: NeMo's scale_positional_embedding "
                         f"implements only Llama 3.1's ({LLAMA31_ROPE_SCALING})")
    return True


def apply_rope_scaling(cfg: Mapping, model):
    """Scale ``model.rotary_pos_emb.inv_freq`` as NeMo's GPT model does when ``cfg.scale_positional_embedding``."""
    if not cfg.get("scale_positional_embedding", False):
        return model
    from megatron.core.models.gpt import GPTModel
    from nemo.collections.common.parts.utils import apply_rope_scaling as nemo_apply_rope_scaling
    from nemo_aligner.models.nlp.gpt.gpt_reward_model import GPTRewardModel

    rotary = getattr(model, "rotary_pos_emb", None)
    if cfg.get("position_embedding_type") != "rope" or rotary is None:
        raise ValueError("model.scale_positional_embedding=true (Llama 3.1's RoPE scaling) needs "
                         f"position_embedding_type=rope, got {cfg.get('position_embedding_type')}")
    if not isinstance(model, GPTModel) or "rope_scaling" in inspect.signature(GPTRewardModel.__init__).parameters:
        # A NeMo-Aligner that passes rope_scaling itself would have it applied twice.
        raise ValueError("this NeMo-Aligner's reward model may scale RoPE itself: re-check "
                         "nemo_hs2.megatron.rotary against it")
    rotary.inv_freq = nemo_apply_rope_scaling(rotary.inv_freq)
    return model
