"""Hugging Face causal LMs <-> the Megatron GPT backbone: architecture fields and per-family weight mapping tables.

One place for both directions: ``import_weights`` (HF -> Megatron, used by ``examples/import_hf.py``) reads each
Megatron parameter's HF sources through a mapping table; an exporter walks the same tables with each rule's
``split``. Megatron names are those of megatron-core's local layer spec (what ``state_dict()`` of the model built on
CPU shows); the dist-ckpt inside a ``.nemo`` stores them under the TE names, which NeMo translates itself.

Architecture fields come from the HF ``config.json`` only (``nemo_arch_config``), never from a preset; anything a
rule does not know how to represent exactly is refused with the field named.
"""

from __future__ import annotations

import dataclasses
import json
import os
from collections.abc import Callable, Iterable, Mapping

import torch

from nemo_hs2.megatron.rotary import hf_llama3_scaling

class UnsupportedModel(ValueError):
    """The HF checkpoint is not one this importer can represent exactly."""


# ------------------------------------------------------------------------------------------------ architecture
def _require(cfg: Mapping, key: str, allowed, where: str):
    value = cfg.get(key)
    if value not in allowed:
        raise UnsupportedModel(f"{where}: {key}={value!r} is not supported (supported: {list(allowed)})")
    return value


def _rope_scaling(cfg: Mapping, where: str) -> dict:
    """``scale_positional_embedding`` and ``rope_scaling`` (nemo_hs2.megatron.rotary) of a Llama config."""
    try:
        params = hf_llama3_scaling(cfg.get("rope_scaling"))
    except ValueError as e:
        raise UnsupportedModel(f"{where}: {e}") from None
    return {"scale_positional_embedding": params is not None, "rope_scaling": params}


def _common(cfg: Mapping, where: str) -> dict:
    heads = cfg["num_attention_heads"]
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // heads
    attention_bias, mlp_bias = bool(cfg.get("attention_bias", False)), bool(cfg.get("mlp_bias", False))
    if attention_bias != mlp_bias:  # megatron-core has one switch (add_bias_linear) for every linear layer
        raise UnsupportedModel(f"{where}: attention_bias={attention_bias} with mlp_bias={mlp_bias}: Megatron needs "
                               "both equal")
    return {
        "num_layers": cfg["num_hidden_layers"], "hidden_size": cfg["hidden_size"],
        "ffn_hidden_size": cfg["intermediate_size"], "num_attention_heads": heads,
        "num_query_groups": cfg.get("num_key_value_heads") or heads, "kv_channels": head_dim,
        "bias": attention_bias, "position_embedding_type": "rope", "rotary_base": cfg.get("rope_theta", 10000.0),
        "rotary_interleaved": False, "max_position_embeddings": cfg["max_position_embeddings"],
        "share_embeddings_and_output_weights": bool(cfg.get("tie_word_embeddings", False)),
        "init_method_std": cfg.get("initializer_range", 0.02), "mcore_gpt": True,
        "apply_query_key_layer_scaling": False, "bias_activation_fusion": False,
    }


def _llama_arch(cfg: Mapping, where: str) -> dict:
    _require(cfg, "hidden_act", ("silu",), where)
    return {**_common(cfg, where), "normalization": "rmsnorm", "layernorm_epsilon": cfg["rms_norm_eps"],
            "activation": "fast-swiglu", "rotary_percentage": 1.0, **_rope_scaling(cfg, where)}


def _nemotron_arch(cfg: Mapping, where: str) -> dict:
    _require(cfg, "hidden_act", ("relu2",), where)
    if cfg.get("rope_scaling"):
        raise UnsupportedModel(f"{where}: rope_scaling={cfg['rope_scaling']!r} is not supported for Nemotron")
    return {**_common(cfg, where), "normalization": "layernorm1p", "layernorm_epsilon": cfg["norm_eps"],
            "activation": "squared-relu", "rotary_percentage": cfg.get("partial_rotary_factor", 1.0),
            "scale_positional_embedding": False, "rope_scaling": None}


def _gpt_neox_arch(cfg: Mapping, where: str) -> dict:
    """GPT-NeoX with sequential residuals is Megatron's classic GPT: LayerNorm, GELU, biases, partial RoPE."""
    _require(cfg, "hidden_act", ("gelu",), where)
    _require(cfg, "use_parallel_residual", (False,), where)  # Megatron's layers are sequential
    _require(cfg, "attention_bias", (True,), where)  # GPT-NeoX's MLP always has biases: Megatron has one switch
    if cfg.get("rope_scaling"):
        raise UnsupportedModel(f"{where}: rope_scaling={cfg['rope_scaling']!r} is not supported for GPT-NeoX")
    heads = cfg["num_attention_heads"]
    return {
        "num_layers": cfg["num_hidden_layers"], "hidden_size": cfg["hidden_size"],
        "ffn_hidden_size": cfg["intermediate_size"], "num_attention_heads": heads, "num_query_groups": heads,
        "kv_channels": cfg["hidden_size"] // heads, "bias": True, "position_embedding_type": "rope",
        "rotary_base": cfg.get("rotary_emb_base", 10000), "rotary_interleaved": False,
        "max_position_embeddings": cfg["max_position_embeddings"],
        "share_embeddings_and_output_weights": bool(cfg.get("tie_word_embeddings", False)),
        "init_method_std": cfg.get("initializer_range", 0.02), "mcore_gpt": True,
        "apply_query_key_layer_scaling": False, "bias_activation_fusion": False,
        "normalization": "layernorm", "layernorm_epsilon": cfg.get("layer_norm_eps", 1e-5), "activation": "gelu",
        "rotary_percentage": cfg.get("rotary_pct", 1.0), "scale_positional_embedding": False, "rope_scaling": None,
    }


# ------------------------------------------------------------------------------------------------ weight rules
@dataclasses.dataclass(frozen=True)
class Arch:
    heads: int
    groups: int
    head_dim: int

    @classmethod
    def from_nemo(cls, c: Mapping) -> "Arch":
        return cls(int(c["num_attention_heads"]), int(c["num_query_groups"]), int(c["kv_channels"]))


def _copy(tensors, arch):
    return tensors[0]


def _copy_split(tensor, arch):
    return [tensor]


def _qkv(tensors, arch: Arch):
    """Separate q / k / v -> Megatron's fused linear_qkv, laid out per query group: its q heads, its k, its v."""
    q, k, v = tensors
    rest = q.shape[1:]
    per_group = arch.heads // arch.groups * arch.head_dim
    return torch.cat([q.reshape(arch.groups, per_group, *rest), k.reshape(arch.groups, arch.head_dim, *rest),
                      v.reshape(arch.groups, arch.head_dim, *rest)], 1).reshape(-1, *rest)


def _qkv_split(tensor, arch: Arch):
    rest = tensor.shape[1:]
    per_group = arch.heads // arch.groups * arch.head_dim
    grouped = tensor.reshape(arch.groups, per_group + 2 * arch.head_dim, *rest)
    q, k, v = grouped.split([per_group, arch.head_dim, arch.head_dim], 1)
    return [q.reshape(-1, *rest), k.reshape(-1, *rest), v.reshape(-1, *rest)]


def _gate_up(tensors, arch):
    """SwiGLU: Megatron's linear_fc1 is [gate; up] (the first half goes through the activation)."""
    return torch.cat(tensors, 0)


def _gate_up_split(tensor, arch):
    return list(tensor.chunk(2, 0))


@dataclasses.dataclass(frozen=True)
class Rule:
    megatron: str              # ``{i}`` = layer index
    hf: tuple[str, ...]
    merge: Callable = _copy    # HF tensors -> the Megatron tensor
    split: Callable = _copy_split  # the inverse, for export


def _norm(megatron, hf, bias):
    rules = [Rule(f"{megatron}.weight", (f"{hf}.weight",))]
    return rules + [Rule(f"{megatron}.bias", (f"{hf}.bias",))] if bias else rules


def _table(gated: bool, norm_bias: bool, linear_bias: bool, tied: bool) -> dict[str, list[Rule]]:
    """The rules of one family: ``top`` (once) and ``layer`` (per decoder layer, ``{i}`` in both names)."""
    m, h = "decoder.layers.{i}.", "model.layers.{i}."
    layer = [*_norm(m + "input_layernorm", h + "input_layernorm", norm_bias),
             Rule(m + "self_attention.linear_qkv.weight",
                  tuple(h + f"self_attn.{x}_proj.weight" for x in "qkv"), _qkv, _qkv_split),
             Rule(m + "self_attention.linear_proj.weight", (h + "self_attn.o_proj.weight",)),
             *_norm(m + "pre_mlp_layernorm", h + "post_attention_layernorm", norm_bias),
             Rule(m + "mlp.linear_fc1.weight", (h + "mlp.gate_proj.weight", h + "mlp.up_proj.weight"), _gate_up,
                  _gate_up_split) if gated else Rule(m + "mlp.linear_fc1.weight", (h + "mlp.up_proj.weight",)),
             Rule(m + "mlp.linear_fc2.weight", (h + "mlp.down_proj.weight",))]
    if linear_bias:
        layer += [Rule(m + "self_attention.linear_qkv.bias", tuple(h + f"self_attn.{x}_proj.bias" for x in "qkv"),
                       _qkv, _qkv_split),
                  Rule(m + "self_attention.linear_proj.bias", (h + "self_attn.o_proj.bias",)),
                  Rule(m + "mlp.linear_fc1.bias", (h + "mlp.gate_proj.bias", h + "mlp.up_proj.bias"), _gate_up,
                       _gate_up_split) if gated else Rule(m + "mlp.linear_fc1.bias", (h + "mlp.up_proj.bias",)),
                  Rule(m + "mlp.linear_fc2.bias", (h + "mlp.down_proj.bias",))]
    top = [Rule("embedding.word_embeddings.weight", ("model.embed_tokens.weight",)),
           *_norm("decoder.final_layernorm", "model.norm", norm_bias),
           # NeMo-Aligner's reward model never ties: a tied HF model's embedding is copied into the output layer.
           Rule("output_layer.weight", ("model.embed_tokens.weight",) if tied else ("lm_head.weight",))]
    return {"top": top, "layer": layer}


def _gpt_neox_table(tied: bool) -> dict[str, list[Rule]]:
    """GPT-NeoX fuses q/k/v per head ([q; k; v] of head 0, then head 1, ...): Megatron's layout with one query
    group per head, so the fused tensors copy as they are."""
    m, h = "decoder.layers.{i}.", "gpt_neox.layers.{i}."
    pairs = [("input_layernorm", "input_layernorm"), ("self_attention.linear_qkv", "attention.query_key_value"),
             ("self_attention.linear_proj", "attention.dense"), ("pre_mlp_layernorm", "post_attention_layernorm"),
             ("mlp.linear_fc1", "mlp.dense_h_to_4h"), ("mlp.linear_fc2", "mlp.dense_4h_to_h")]
    layer = [Rule(f"{m}{a}.{p}", (f"{h}{b}.{p}",)) for a, b in pairs for p in ("weight", "bias")]
    top = [Rule("embedding.word_embeddings.weight", ("gpt_neox.embed_in.weight",)),
           *_norm("decoder.final_layernorm", "gpt_neox.final_layer_norm", True),
           Rule("output_layer.weight", ("gpt_neox.embed_in.weight",) if tied else ("embed_out.weight",))]
    return {"top": top, "layer": layer}


@dataclasses.dataclass(frozen=True)
class Family:
    name: str
    arch: Callable[[Mapping, str], dict]
    table: Callable[[dict, bool], dict[str, list[Rule]]]  # (the arch fields, tied) -> rules


FAMILIES = {
    "LlamaForCausalLM": Family("llama", _llama_arch, lambda a, tied: _table(True, False, a["bias"], tied)),
    "NemotronForCausalLM": Family("nemotron", _nemotron_arch, lambda a, tied: _table(False, True, a["bias"], tied)),
    "GPTNeoXForCausalLM": Family("gpt_neox", _gpt_neox_arch, lambda a, tied: _gpt_neox_table(tied)),
}
# Buffers some HF checkpoints carry that are recomputed, not learned.
_IGNORED_SUFFIXES = ("rotary_emb.inv_freq",)


# A reward model exported by examples/export_hf.py reads back as its backbone's family, ``score`` as the head.
SEQ_CLASSIFIERS = {"LlamaForSequenceClassification": "LlamaForCausalLM",
                   "NemotronForSequenceClassification": "NemotronForCausalLM",
                   "GPTNeoXForSequenceClassification": "GPTNeoXForCausalLM"}


def is_reward_model(hf_config: Mapping) -> bool:
    return (hf_config.get("architectures") or [None])[0] in SEQ_CLASSIFIERS


def family_of(hf_config: Mapping, where: str = "config.json") -> Family:
    archs = [SEQ_CLASSIFIERS.get(a, a) for a in hf_config.get("architectures") or [None]]
    if len(archs) != 1 or archs[0] not in FAMILIES:
        raise UnsupportedModel(f"{where}: architecture {archs} is not supported; nemo_hs2 imports "
                               f"{sorted(FAMILIES)} and their exported *ForSequenceClassification")
    return FAMILIES[archs[0]]


def rope_view(hf_config: Mapping, where: str = "config.json") -> Mapping:
    """A config.json as transformers 4.x writes its RoPE fields (``rope_theta``, ``rope_scaling``,
    ``partial_rotary_factor`` / ``rotary_pct``, ``rotary_emb_base``). transformers 5 writes them all into one
    ``rope_parameters`` dict instead (``{"rope_type", "rope_theta", "partial_rotary_factor", ...}``), which it also
    prefers when both are present; a model saved by it (e.g. an export trained further with TRL) reads the same."""
    params = hf_config.get("rope_parameters")
    if not params:
        return hf_config
    if any(isinstance(v, Mapping) for v in params.values()):
        raise UnsupportedModel(f"{where}: rope_parameters per layer type {sorted(params)} is not supported")
    out = dict(hf_config)
    if params.get("rope_theta") is not None:
        out["rope_theta"] = out["rotary_emb_base"] = params["rope_theta"]
    if params.get("partial_rotary_factor") is not None:
        out["partial_rotary_factor"] = out["rotary_pct"] = params["partial_rotary_factor"]
    scaling = {k: v for k, v in params.items() if k not in ("rope_theta", "partial_rotary_factor")}
    out["rope_scaling"] = scaling if scaling.get("rope_type", scaling.get("type")) not in (None, "default") else None
    return out


def nemo_arch_config(hf_config: Mapping, where: str = "config.json") -> dict:
    """The NeMo model-config fields that define the network, from an HF ``config.json`` dict."""
    return family_of(hf_config, where).arch(rope_view(hf_config, where), where)


def mapping_table(hf_config: Mapping, where: str = "config.json") -> dict[str, list[Rule]]:
    fam = family_of(hf_config, where)
    arch = fam.arch(rope_view(hf_config, where), where)
    if not is_reward_model(hf_config):
        return fam.table(arch, arch["share_embeddings_and_output_weights"])
    # No LM head: the (unused) output layer gets the embedding, as for a tied model.
    table = fam.table(arch, True)
    return {**table, "top": [*table["top"], Rule("rm_head.weight", ("score.weight",))]}


def expand(table: Mapping[str, list[Rule]], num_layers: int) -> dict[str, Rule]:
    """Megatron parameter name -> its rule with the layer index filled in."""
    out = {r.megatron: r for r in table["top"]}
    for i in range(num_layers):
        for r in table["layer"]:
            out[r.megatron.format(i=i)] = Rule(r.megatron.format(i=i), tuple(k.format(i=i) for k in r.hf),
                                               r.merge, r.split)
    return out


# ------------------------------------------------------------------------------------------------ weight sources
class SafetensorsSource:
    """Tensors of an HF directory's ``*.safetensors`` shards, read one at a time (memory-mapped, never all loaded)."""

    def __init__(self, directory: str):
        from safetensors import safe_open

        index = os.path.join(directory, "model.safetensors.index.json")
        if os.path.exists(index):
            with open(index) as f:
                files = sorted(set(json.load(f)["weight_map"].values()))
        else:
            files = sorted(p for p in os.listdir(directory) if p.endswith(".safetensors"))
        if not files:
            raise FileNotFoundError(f"{directory}: no *.safetensors weights (save the model with "
                                    "save_pretrained(..., safe_serialization=True))")
        self._handles, self._where = [], {}
        for name in files:
            handle = safe_open(os.path.join(directory, name), framework="pt")
            self._handles.append(handle)
            for key in handle.keys():
                self._where[key] = handle

    def keys(self) -> Iterable[str]:
        return self._where.keys()

    def get(self, key: str) -> torch.Tensor:
        return self._where[key].get_tensor(key)


class DictSource:
    """An in-memory state dict (a model transformers has loaded, e.g. dequantized from GGUF)."""

    def __init__(self, state_dict: Mapping[str, torch.Tensor]):
        self._sd = state_dict

    def keys(self):
        return self._sd.keys()

    def get(self, key):
        return self._sd[key]


# ------------------------------------------------------------------------------------------------ import
def import_weights(module: torch.nn.Module, source, hf_config: Mapping, skip_prefixes=("rm_head.",)) -> dict:
    """Fill ``module`` (a TP = PP = 1 megatron-core GPT) from ``source``, one parameter at a time.

    Every Megatron parameter except ``skip_prefixes`` must get a value and every HF tensor must be used; the
    padded vocabulary rows beyond the HF embedding are set to zero. Returns counts for the import report.
    """
    arch_cfg = nemo_arch_config(hf_config)
    rules = expand(mapping_table(hf_config), arch_cfg["num_layers"])
    arch = Arch.from_nemo(arch_cfg)
    own = {k: v for k, v in module.state_dict(keep_vars=True).items() if "_extra_state" not in k}
    targets = {k: v for k, v in own.items() if not k.startswith(tuple(skip_prefixes))}
    missing = sorted(set(targets) - set(rules))
    if missing:
        raise UnsupportedModel(f"no mapping rule for Megatron parameters {missing[:5]} ({len(missing)} in all)")
    available, used = set(source.keys()), set()
    for name, param in targets.items():
        rule = rules[name]
        absent = [k for k in rule.hf if k not in available]
        if absent:
            raise UnsupportedModel(f"HF checkpoint lacks {absent} (needed for {name})")
        value = rule.merge([source.get(k) for k in rule.hf], arch)
        used.update(rule.hf)
        with torch.no_grad():
            if name in ("embedding.word_embeddings.weight", "output_layer.weight") and value.shape[0] < param.shape[0]:
                param.zero_()  # padded vocabulary rows
                param[: value.shape[0]].copy_(value)
            elif tuple(value.shape) != tuple(param.shape):
                raise UnsupportedModel(f"{name}: HF {rule.hf} give shape {tuple(value.shape)}, Megatron expects "
                                       f"{tuple(param.shape)}")
            else:
                param.copy_(value)
        del value
    ignored = _IGNORED_SUFFIXES + (("lm_head.weight",) if arch_cfg["share_embeddings_and_output_weights"] else ())
    unused = sorted(k for k in available - used if not k.endswith(ignored))  # a tied lm_head may be stored too
    if unused:
        raise UnsupportedModel(f"HF tensors with no place in the Megatron model: {unused[:5]} ({len(unused)} in all)")
    return {"parameters": len(targets), "hf_tensors": len(used),
            "elements": int(sum(p.numel() for p in targets.values()))}
