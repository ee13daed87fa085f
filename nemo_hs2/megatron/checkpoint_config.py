"""The model config of a run that starts from a checkpoint: architecture and tokenizer from the checkpoint.

NeMo-Aligner merges the run's model config over the checkpoint's, so the default preset's architecture (``tiny``:
2 layers, byte-level tokenizer) would silently replace the checkpoint's. Here the checkpoint decides every
architecture field; the run decides everything else (parallel layout, batch, optimizer, sequence length up to the
checkpoint's positions). An architecture value the user asked for (``model.KEY=...`` on the command line, or a
preset chosen with ``model=NAME`` / a recipe) must equal the checkpoint's, or the run stops naming the field.
"""

from __future__ import annotations

import math

from omegaconf import DictConfig, OmegaConf, open_dict

# Fields of the NeMo model config that define the network (and so must come from the checkpoint).
ARCH_KEYS = ("num_layers", "hidden_size", "ffn_hidden_size", "num_attention_heads", "num_query_groups",
             "kv_channels", "normalization", "layernorm_epsilon", "layernorm_zero_centered_gamma", "activation",
             "bias", "position_embedding_type", "rotary_percentage", "rotary_base", "rotary_interleaved",
             "seq_len_interpolation_factor", "scale_positional_embedding", "rope_scaling",
             "share_embeddings_and_output_weights",
             "max_position_embeddings", "apply_query_key_layer_scaling", "normalize_attention_scores",
             "num_moe_experts", "mcore_gpt", "tokenizer")


DEFAULT_PRESET = "tiny"
# Presets derive these from run settings (max_position_embeddings: ${.encoder_seq_length}) or only describe them
# for the planner (tokenizer.vocab_size), so a chosen preset's values are not compared for them.
_NOT_FROM_PRESET = ("max_position_embeddings", "tokenizer")
# Tokenizer keys that locate files (e.g. a local copy on an offline node) rather than define the vocabulary.
_TOKENIZER_LOCATION = ("type", "model", "vocab_file", "merge_file")
# megatron-core / NeMo defaults of architecture keys a checkpoint may leave out.
_DEFAULTS = {"scale_positional_embedding": False, "rope_scaling": None, "rotary_percentage": 1.0,
             "rotary_interleaved": False, "layernorm_zero_centered_gamma": False,
             "apply_query_key_layer_scaling": False, "normalize_attention_scores": True, "seq_len_interpolation_factor": None, "num_moe_experts": None,
             "bias": True, "normalization": "layernorm", "activation": "gelu", "rotary_base": 10000,
             "position_embedding_type": "learned_absolute", "share_embeddings_and_output_weights": True,
             "layernorm_epsilon": 1e-5, "mcore_gpt": True}
_SAME_ACTIVATION = {"fast-swiglu": "swiglu", "fast-geglu": "geglu", "fast-reglu": "reglu"}


def _normalized(key: str, value, cfg) -> object:
    if key == "kv_channels" and value is None:
        return int(cfg["hidden_size"]) // int(cfg["num_attention_heads"])
    if key == "num_query_groups" and value is None:
        return int(cfg["num_attention_heads"])
    if key == "activation":
        return _SAME_ACTIVATION.get(value, value)
    if key in ("scale_positional_embedding", "rope_scaling"):  # what is applied (nemo_hs2.megatron.rotary)
        from nemo_hs2.megatron.rotary import model_scaling

        return model_scaling({**cfg, key: value})
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, (int, float)):
        return float(value)
    return value


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-9)
    return a == b


def explicit_choices() -> tuple[set[str], bool]:
    """(``model.*`` keys set on the command line, whether a model preset other than the default was chosen)."""
    from hydra.core.hydra_config import HydraConfig

    if not HydraConfig.initialized():
        return set(), False
    hc = HydraConfig.get()
    keys = set()
    for override in hc.overrides.task:
        key = override.split("=", 1)[0].lstrip("+~")
        if key.startswith("model."):
            keys.add(key[len("model."):])
    return keys, hc.runtime.choices.get("model") not in (None, DEFAULT_PRESET)


def resolve(run_model: DictConfig, saved: DictConfig, path: str, explicit_keys=(), preset_chosen: bool = False
            ) -> DictConfig:
    """The run's model config with every architecture field (and the tokenizer) left to the checkpoint.

    Returns a copy of ``run_model`` to merge over the checkpoint's config (NeMo-Aligner's
    ``load_and_override_model_config``). Raises ``ValueError`` naming the field on a contradiction.
    """
    explicit_keys = set(explicit_keys)
    out = OmegaConf.create(OmegaConf.to_container(run_model, resolve=True))
    asked = OmegaConf.to_container(out)
    merged_saved = {k: saved.get(k, _DEFAULTS.get(k)) for k in ARCH_KEYS}
    for key in ARCH_KEYS:
        if key == "tokenizer":
            continue
        explicit = key in explicit_keys or (preset_chosen and key not in _NOT_FROM_PRESET)
        if explicit and key in out:
            want, have = _normalized(key, asked[key], asked), _normalized(key, merged_saved[key], saved)
            if not _same(want, have):
                raise ValueError(f"model.{key}={out[key]!r} contradicts the checkpoint {path} "
                                 f"({key}={merged_saved[key]!r}); the architecture comes from the checkpoint: "
                                 f"drop the override{' or choose a matching model preset' if preset_chosen else ''}")
        with open_dict(out):
            out.pop(key, None)
    # The tokenizer is the checkpoint's; explicit location overrides (a local copy of its files) are kept.
    run_tok = out.get("tokenizer") or {}
    saved_tok = saved.get("tokenizer") or {}
    kept = {}
    for sub in run_tok:
        if f"tokenizer.{sub}" not in explicit_keys:
            continue
        if sub in _TOKENIZER_LOCATION:
            kept[sub] = run_tok[sub]
        elif run_tok[sub] != saved_tok.get(sub):
            raise ValueError(f"model.tokenizer.{sub}={run_tok[sub]!r} contradicts the checkpoint {path} "
                             f"(tokenizer.{sub}={saved_tok.get(sub)!r}); the tokenizer comes from the checkpoint")
    with open_dict(out):
        out.pop("tokenizer", None)
        if kept:
            out.tokenizer = kept
    positions = saved.get("max_position_embeddings")
    seq = out.get("encoder_seq_length")
    if positions is not None and seq is not None and int(seq) > int(positions):
        raise ValueError(f"model.encoder_seq_length={seq} exceeds the checkpoint's max_position_embeddings="
                         f"{positions} ({path})")
    return out
