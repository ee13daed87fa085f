"""Llama 3's RoPE frequency scaling (transformers' ``rope_type: llama3``) in our reward model, for any parameters.

NeMo's ``MegatronGPTModel`` applies it after building the backbone when ``scale_positional_embedding: true`` (what
NeMo's Llama 3.1 converter writes), with Llama 3.1's constants hard-coded (``nemo.collections.common.parts.utils.
apply_rope_scaling``: factor 8, low / high frequency factors 1 / 4, original context 8192). NeMo-Aligner 0.7.0's
reward model builds its own ``GPTRewardModel`` and never calls it, so ``AttributeRewardModel.model_provider_func``
calls ``apply_rope_scaling`` here instead.

The formula takes its four numbers as parameters (Meta's ``apply_scaling``; transformers'
``_compute_llama3_parameters``), and Llama 3.2 uses other ones (factor 32). So the model config carries them:
``scale_positional_embedding: true`` switches the scaling on (NeMo's key, kept so NeMo's own tools still see a
scaled model) and ``rope_scaling`` (nemo_hs2's key, transformers' field names) gives the parameters; without it the
switch means Llama 3.1's, as in NeMo. Import writes both, export writes transformers' ``rope_scaling`` back.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Mapping

# transformers' rope_scaling for Llama 3.1 (rope_type "llama3"); what NeMo's apply_rope_scaling hard-codes and what
# scale_positional_embedding alone means.
LLAMA31_ROPE_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                        "original_max_position_embeddings": 8192}
# Meta's Llama-3.2-1B / 3B config.json
LLAMA32_ROPE_SCALING = {**LLAMA31_ROPE_SCALING, "factor": 32.0}
PARAMETERS = ("factor", "low_freq_factor", "high_freq_factor", "original_max_position_embeddings")


def llama3_parameters(rope_scaling: Mapping, where: str = "rope_scaling") -> dict:
    """The four llama3 parameters of a mapping, checked (the model config's ``rope_scaling`` form)."""
    missing = [k for k in PARAMETERS if rope_scaling.get(k) is None]
    if missing:
        raise ValueError(f"{where} {dict(rope_scaling)} lacks {missing} (rope_type llama3 needs {list(PARAMETERS)})")
    out = {k: float(rope_scaling[k]) for k in PARAMETERS[:3]}
    out["original_max_position_embeddings"] = int(rope_scaling["original_max_position_embeddings"])
    if out["factor"] < 1.0 or out["low_freq_factor"] <= 0 or out["high_freq_factor"] <= out["low_freq_factor"] \
            or out["original_max_position_embeddings"] <= 0:
        raise ValueError(f"{where} {dict(rope_scaling)}: llama3 scaling needs factor >= 1, 0 < low_freq_factor < "
                         "high_freq_factor and original_max_position_embeddings > 0")
    return out


def hf_llama3_scaling(rope_scaling: Mapping | None) -> dict | None:
    """A Hugging Face ``rope_scaling`` as the model config's ``rope_scaling`` (None: no scaling); any scaling other
    than ``llama3`` is refused (megatron-core's rotary embedding has no other)."""
    if not rope_scaling:
        return None
    kind = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if kind in (None, "default"):
        return None
    if kind != "llama3":
        raise ValueError(f"rope_scaling {dict(rope_scaling)} cannot be applied: only rope_type 'llama3' (Llama 3.1 / "
                         "3.2 / 3.3) is implemented")
    return llama3_parameters(rope_scaling)


def check_hf_rope_scaling(rope_scaling: Mapping | None) -> bool:
    """Whether a Hugging Face ``rope_scaling`` asks for scaling (-> ``scale_positional_embedding``)."""
    return hf_llama3_scaling(rope_scaling) is not None


def model_scaling(cfg: Mapping) -> dict | None:
    """The llama3 parameters a NeMo model config applies (None: unscaled). ``scale_positional_embedding`` without
    ``rope_scaling`` is Llama 3.1's, as NeMo applies it; ``rope_scaling`` without the switch is refused."""
    params = cfg.get("rope_scaling")
    if not cfg.get("scale_positional_embedding", False):
        if params:
            raise ValueError(f"model.rope_scaling={dict(params)} is set but model.scale_positional_embedding is not "
                             "true: set both (as examples/import_hf.py writes them) or neither")
        return None
    return llama3_parameters(params or LLAMA31_ROPE_SCALING, "model.rope_scaling")


def hf_rope_scaling(cfg: Mapping) -> dict | None:
    """transformers' ``rope_scaling`` for a NeMo model config (what export writes to config.json)."""
    params = model_scaling(cfg)
    return None if params is None else {"rope_type": "llama3", **params}


def scale_inv_freq(inv_freq, params: Mapping):
    """Llama 3's rescaling of rotary inverse frequencies: wavelengths shorter than ``original / high_freq_factor``
    are kept, longer than ``original / low_freq_factor`` divided by ``factor``, and the band between interpolated."""
    import torch

    factor, low, high = params["factor"], params["low_freq_factor"], params["high_freq_factor"]
    original = params["original_max_position_embeddings"]
    wavelen = 2 * math.pi / inv_freq
    smooth = ((original / wavelen - low) / (high - low)).clamp(0.0, 1.0)
    out = (1 - smooth) * inv_freq / factor + smooth * inv_freq
    out = torch.where(wavelen > original / low, inv_freq / factor, out)
    return torch.where(wavelen < original / high, inv_freq, out)


def apply_rope_scaling(cfg: Mapping, model):
    """Scale ``model.rotary_pos_emb.inv_freq`` by the config's llama3 parameters when ``scale_positional_embedding``."""
    params = model_scaling(cfg)
    if params is None:
        return model
    from megatron.core.models.gpt import GPTModel
    from nemo_aligner.models.nlp.gpt.gpt_reward_model import GPTRewardModel

    rotary = getattr(model, "rotary_pos_emb", None)
    if cfg.get("position_embedding_type") != "rope" or rotary is None:
        raise ValueError("model.scale_positional_embedding=true (Llama 3's RoPE scaling) needs "
                         f"position_embedding_type=rope, got {cfg.get('position_embedding_type')}")
    if not isinstance(model, GPTModel) or "rope_scaling" in inspect.signature(GPTRewardModel.__init__).parameters:
        # A NeMo-Aligner that passes rope_scaling itself would have it applied twice.
        raise ValueError("this NeMo-Aligner's reward model may scale RoPE itself: re-check "
                         "nemo_hs2.megatron.rotary against it")
    rotary.inv_freq = scale_inv_freq(rotary.inv_freq, params).to(rotary.inv_freq.dtype)
    return model
