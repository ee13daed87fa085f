"""A trained nemo_hs2 reward model (``.nemo``) -> a Hugging Face ``*ForSequenceClassification`` directory.

The backbone goes through the importer's mapping tables in reverse (each rule's ``split``, ``nemo_hs2.hf.mapping``);
the architecture is derived back from the ``.nemo`` config and checked by running the importer's own
``nemo_arch_config`` over it, so an export the importer would read differently is refused. Any TP / PP layout of
the source is merged by loading it at TP = PP = 1 (dist-checkpoint resharding).

Head: NeMo-Aligner's ``RewardModelHead`` is a linear layer *with* bias reading the end-of-response token; the HF
classes' ``score`` is a linear layer *without* bias reading the last non-pad token. ``attributes`` mode keeps one
output per attribute, ``reward`` mode folds the reward weights in (``w @ W``, ``w @ b``). The bias is folded into the
final norm's bias where the backbone has one (Nemotron's LayerNorm1P: ``W @ delta = b``, solved exactly with full row
rank); Llama's RMSNorm has none, so there the bias is recorded in ``config.json`` (``nemo_hs2.score_bias``) and
must be added to the logits (a constant per output: rankings and preference accuracies do not change).

Padding: the classes find the last token as (first ``pad_token_id`` - 1). Our rows end with the end-of-response token
and templates may contain the tokenizer's eos / pad (ChatML's ``<|im_end|>``), so a dedicated pad token is added
(``PAD_TOKEN``) with ``padding_side=right``; its embedding row is zero (no row is ever read past it).

Tokenizer: the model's Hugging Face fast tokenizer, NeMo's byte-level one as a byte-level BPE, or a SentencePiece
model (NVIDIA's ``.nemo`` files) converted by ``nemo_hs2.hf.sentencepiece``; with the training template as its chat
template, ``model_input_names`` of a stock tokenizer (no ``token_type_ids``, which the classes' forward rejects) and
no tokens added by a plain call. Every export checks its tokenizer against the ``.nemo``'s on probe texts and its
chat template against the training renderer, and refuses one that differs.
"""

from __future__ import annotations

import json
import os
import resource
import time

import torch
from omegaconf import DictConfig, OmegaConf

from nemo_hs2.hf import mapping as hf
from nemo_hs2.hf.tokenizer import PAD_TOKEN, export_tokenizer
from nemo_hs2.megatron.rotary import hf_rope_scaling, model_scaling

HEADS = ("attributes", "reward")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SEQ_CLASS = {"llama": "LlamaForSequenceClassification", "nemotron": "NemotronForSequenceClassification",
              "gpt_neox": "GPTNeoXForSequenceClassification"}


# ------------------------------------------------------------------------------------------------ architecture
def hf_causal_config(c) -> dict:
    """The HF ``*ForCausalLM`` config.json fields of a ``.nemo`` backbone; checked by the importer's reading."""
    common = {"hidden_size": int(c.hidden_size), "intermediate_size": int(c.ffn_hidden_size),
              "num_hidden_layers": int(c.num_layers), "num_attention_heads": int(c.num_attention_heads),
              "num_key_value_heads": int(c.get("num_query_groups") or c.num_attention_heads),
              "head_dim": int(c.get("kv_channels") or c.hidden_size // c.num_attention_heads),
              "max_position_embeddings": int(c.max_position_embeddings),
              "rope_theta": float(c.get("rotary_base", 10000)),
              "attention_bias": bool(c.bias), "mlp_bias": bool(c.bias), "tie_word_embeddings": False,
              "initializer_range": float(c.get("init_method_std", 0.02))}
    norm, act = c.get("normalization", "layernorm"), c.get("activation")
    if norm == "rmsnorm" and act == "fast-swiglu":
        out = {**common, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
               "rms_norm_eps": float(c.layernorm_epsilon),
               "rope_scaling": hf_rope_scaling(c)}
    elif norm == "layernorm1p" and act == "squared-relu":
        out = {**common, "architectures": ["NemotronForCausalLM"], "model_type": "nemotron", "hidden_act": "relu2",
               "norm_eps": float(c.layernorm_epsilon), "partial_rotary_factor": float(c.rotary_percentage)}
    elif norm == "layernorm" and act == "gelu" and c.get("position_embedding_type") == "rope":
        # Megatron's classic GPT (the demo model): GPT-NeoX with sequential residuals
        out = {k: common[k] for k in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads",
                                      "max_position_embeddings", "attention_bias", "tie_word_embeddings",
                                      "initializer_range")}
        out.update({"architectures": ["GPTNeoXForCausalLM"], "model_type": "gpt_neox", "hidden_act": "gelu",
                    "layer_norm_eps": float(c.get("layernorm_epsilon", 1e-5)), "use_parallel_residual": False,
                    "rotary_pct": float(c.get("rotary_percentage", 1.0)),
                    "rotary_emb_base": float(c.get("rotary_base", 10000))})
    else:
        raise hf.UnsupportedModel(f"normalization={norm!r} with activation={act!r}: exportable are Llama (rmsnorm, "
                                  "fast-swiglu), Nemotron (layernorm1p, squared-relu) and GPT-NeoX (layernorm, "
                                  "gelu, rope)")
    back = hf.nemo_arch_config(out, "the exported config")
    wrong = {k: (c.get(k, NEMO_DEFAULTS.get(k)), v) for k, v in back.items()
             if k not in ("share_embeddings_and_output_weights", "init_method_std", "bias_activation_fusion",
                          "apply_query_key_layer_scaling", "rope_scaling")
             and not _same(c.get(k, NEMO_DEFAULTS.get(k)), v)
             and not (k in ("num_query_groups", "kv_channels") and c.get(k) is None)}
    if model_scaling(c) != back["rope_scaling"]:  # what is applied (Llama 3.1's where only the switch is set)
        wrong["rope_scaling"] = (model_scaling(c), back["rope_scaling"])
    if wrong:
        raise hf.UnsupportedModel(f"the .nemo's {wrong} (nemo value, exported reading) cannot be represented in "
                                  f"{out['architectures'][0]}")
    return out


# What NeMo's GPT uses for a field the config leaves out (megatron_gpt_model.py's cfg.get defaults).
NEMO_DEFAULTS = {"rotary_percentage": 1.0, "rotary_base": 10000, "layernorm_epsilon": 1e-5, "normalization": "layernorm"}


def _same(a, b) -> bool:
    if a is None and (b is False or b == 0.0):  # unset in the .nemo: NeMo's default
        return True
    if isinstance(b, float) or isinstance(a, float):
        return a is not None and b is not None and float(a) == float(b)
    return a == b


# ------------------------------------------------------------------------------------------------ weights
def export_tensors(module, causal: dict, vocab_rows: int, head: str, weights: torch.Tensor, dtype):
    """(HF tensors one at a time: the backbone by the import rules' split, then the folded head; the bias left
    unfolded, or None). Each tensor is made when it is consumed, so a sharded writer holds one shard at a time."""
    rules = hf.expand(hf.mapping_table(causal), causal["num_hidden_layers"])
    arch = hf.Arch.from_nemo(hf.nemo_arch_config(causal))
    own = {k: v for k, v in module.state_dict().items() if "_extra_state" not in k}
    unknown = sorted(k for k in own if k not in rules and not k.startswith("rm_head."))
    if unknown:
        raise hf.UnsupportedModel(f"no mapping rule for Megatron parameters {unknown[:5]}")
    w_head, b_head = own["rm_head.weight"].double(), own["rm_head.bias"].double()
    if head == "reward":
        w_head, b_head = weights.double()[None] @ w_head, weights.double()[None] @ b_head
    embedding = rules["embedding.word_embeddings.weight"].hf[0]
    norm_bias = rules["decoder.final_layernorm.bias"].hf[0] if "decoder.final_layernorm.bias" in rules else None
    bias, norm_delta = b_head, None
    if norm_bias is not None:  # fold: W @ (beta + delta) = W @ beta + b
        delta = torch.linalg.lstsq(w_head, b_head[:, None]).solution[:, 0]
        if torch.allclose(w_head @ delta, b_head, atol=1e-9, rtol=1e-9):
            bias, norm_delta = None, delta

    def tensors():
        for name, rule in rules.items():
            if name == "output_layer.weight":  # the LM head: a sequence classifier has none
                continue
            for key, value in zip(rule.hf, rule.split(own[name].float(), arch)):
                if key == embedding:  # drop the vocabulary padding; the pad token (the last row) gets zeros
                    value = value[:vocab_rows - 1]
                    value = torch.cat([value, value.new_zeros(vocab_rows - value.shape[0], value.shape[1])])
                elif key == norm_bias and norm_delta is not None:
                    value = (value.double() + norm_delta).float()
                yield key, value.to(dtype).contiguous()
        yield "score.weight", w_head.float().to(dtype).contiguous()

    return tensors(), bias


def write_shards(items, output_dir: str, max_shard_bytes: int) -> dict:
    """Write (name, tensor) pairs as safetensors shards of at most ``max_shard_bytes`` (a larger single tensor gets
    a shard of its own), named and indexed as ``save_pretrained`` does; one shard is plain ``model.safetensors``."""
    from safetensors.torch import save_file

    shards, weight_map, total, pending, pending_bytes = [], {}, 0, {}, 0

    def flush():
        nonlocal pending, pending_bytes
        name = f"model-{len(shards) + 1:05d}.partial.safetensors"
        save_file(pending, os.path.join(output_dir, name), metadata={"format": "pt"})
        shards.append((name, list(pending)))
        pending, pending_bytes = {}, 0

    for key, value in items:
        size = value.numel() * value.element_size()
        if pending and pending_bytes + size > max_shard_bytes:
            flush()
        pending[key] = value
        pending_bytes += size
        total += size
    if pending:
        flush()
    if len(shards) == 1:
        os.replace(os.path.join(output_dir, shards[0][0]), os.path.join(output_dir, "model.safetensors"))
        return {"shards": 1, "total_bytes": total}
    for i, (partial, keys) in enumerate(shards, 1):
        final = f"model-{i:05d}-of-{len(shards):05d}.safetensors"
        os.replace(os.path.join(output_dir, partial), os.path.join(output_dir, final))
        weight_map.update({k: final for k in keys})
    with open(os.path.join(output_dir, "model.safetensors.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f, indent=2)
    return {"shards": len(shards), "total_bytes": total}


# ------------------------------------------------------------------------------------------------ directory
def export(model, output_dir: str, head: str = "attributes", dtype: str = "float32", source: str = "",
           max_shard_gb: float = 5.0) -> dict:
    """Write ``output_dir`` from a loaded ``AttributeRewardModel`` (TP = PP = 1); returns a report."""
    from transformers import AutoConfig

    from nemo_hs2.core.reward_weights import resolve_weights

    if head not in HEADS:
        raise ValueError(f"export.head={head!r}: one of {HEADS}")
    if dtype not in DTYPES:
        raise ValueError(f"export.dtype={dtype!r}: one of {sorted(DTYPES)}")
    c = model.cfg
    if int(c.get("tensor_model_parallel_size", 1)) != 1 or int(c.get("pipeline_model_parallel_size", 1)) != 1:
        raise ValueError("export loads the model at TP = PP = 1 (any saved layout is merged on load)")
    causal = hf_causal_config(c)
    family = hf.family_of(causal).name
    tok = export_tokenizer(model)
    if tok.pad_token_id != len(tok) - 1:
        raise RuntimeError(f"the pad token has id {tok.pad_token_id}, not the last ({len(tok) - 1})")
    attributes = list(model.attributes)
    weights = torch.tensor(resolve_weights(dict(model.reward_weights), attributes), dtype=torch.float64)
    tensors, bias = export_tensors(model.model, causal, len(tok), head, weights, DTYPES[dtype])
    labels = attributes if head == "attributes" else ["reward"]
    meta = {"head": head, "attributes": attributes, "reward_weights": dict(zip(attributes, weights.tolist())),
            "template": c.get("template") or "steerlm", "system_prompt": c.get("system_prompt"), "source": source,
            "score_bias": None if bias is None else [float(x) for x in bias.tolist()],
            "end_of_response": "the last token of the chat template's text; read at the last non-pad token"}
    config = {k: v for k, v in causal.items() if k != "architectures"}
    config = AutoConfig.for_model(**config, vocab_size=len(tok), architectures=[_SEQ_CLASS[family]],
                                  num_labels=len(labels), id2label=dict(enumerate(labels)),
                                  label2id={n: i for i, n in enumerate(labels)}, problem_type="regression",
                                  pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                                  eos_token_id=tok.eos_token_id, torch_dtype=dtype, nemo_hs2=meta)
    os.makedirs(output_dir, exist_ok=True)
    for stale in os.listdir(output_dir):  # an overwritten export's shards must not mix with these
        if stale.startswith("model") and (stale.endswith(".safetensors") or stale.endswith(".safetensors.index.json")):
            os.remove(os.path.join(output_dir, stale))
    written = write_shards(tensors, output_dir, int(max_shard_gb * 2**30))
    config.save_pretrained(output_dir)
    tok.save_pretrained(output_dir)
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write(model_card(config, meta, source, output_dir))
    return {"output_dir": output_dir, "architecture": config.architectures[0], "num_labels": len(labels),
            "labels": labels, "dtype": dtype, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
            "bias_folded": bias is None, **written}


def model_card(config, meta: dict, source: str, directory: str) -> str:
    bias = meta["score_bias"]
    bias_code = "" if bias is None else '\n    scores += torch.tensor(model.config.nemo_hs2["score_bias"])'
    if meta["head"] == "attributes":
        bias_code += ('\nweights = model.config.nemo_hs2["reward_weights"]\n'
                      'reward = scores @ torch.tensor([weights[model.config.id2label[i]] '
                      'for i in range(model.config.num_labels)])')
    bias_text = ("The head's bias is folded into the weights: the logits are the scores." if bias is None else
                 f"The head's bias cannot be represented in `{config.architectures[0]}` (its `score` layer has none): "
                 f"add `config.nemo_hs2['score_bias']` = `{bias}` to the logits to get the training-time scores "
                 "(a constant per output: rankings and pairwise accuracies are unaffected).")
    what = ("one logit per attribute (`config.id2label`); the reward is their weighted sum with "
            f"`config.nemo_hs2['reward_weights']` = `{meta['reward_weights']}`" if meta["head"] == "attributes" else
            "one logit, the weighted reward (`num_labels=1`), for TRL / OpenRLHF / RewardBench / vLLM")
    return f"""---
library_name: transformers
pipeline_tag: text-classification
tags: [reward-model, nemo_hs2]
---
# nemo_hs2 reward model ({config.architectures[0]})

Exported by `examples/export_hf.py` from `{source}`. Outputs: {what}.

{bias_text}

## Scoring

The tokenizer's `chat_template` renders a conversation (ending with the assistant response to score) into exactly
the text the model was trained on ({meta['template']} template); the reward is read at its last token. The
tokenizer adds nothing to that text (any BOS is the template's), so `tokenizer(texts)` and
`apply_chat_template(..., tokenize=True)` give the training ids, and it returns only `input_ids` and
`attention_mask`. Batches are padded on the right with the dedicated `{PAD_TOKEN}`
(`pad_token_id={config.pad_token_id}`), which the classifier uses to find each row's last token; never pad with
another token (TRL's GRPOTrainer keeps this pad token: it sets one only where a tokenizer has none).

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

D = {json.dumps(os.path.abspath(directory))}  # this directory, where examples/export_hf.py wrote it
conversations = [[{{"role": "user", "content": "What is 12 + 30?"}}, {{"role": "assistant", "content": "42."}}],
                 [{{"role": "user", "content": "Name a prime."}}, {{"role": "assistant", "content": "Seven: no divisor "
                                                                                 "but 1 and itself."}}]]
tok = AutoTokenizer.from_pretrained(D)
model = AutoModelForSequenceClassification.from_pretrained(D).float()
texts = [tok.apply_chat_template(conv, tokenize=False) for conv in conversations]
with torch.no_grad():
    scores = model(**tok(texts, padding=True, return_tensors="pt")).logits{bias_code}
print(scores)
```
"""


# ------------------------------------------------------------------------------------------------ import back
def imported_reward_model_config(model_cfg, hf_config, where: str) -> None:
    """Set the attributes, reward weights, template and system prompt of an exported directory being imported."""
    from omegaconf import open_dict

    meta = hf_config.get("nemo_hs2") or {}
    if meta.get("head") != "attributes":
        raise hf.UnsupportedModel(f"{where}: only an export.head=attributes export can be imported back (it has "
                                  f"nemo_hs2.head={meta.get('head')!r}; a folded reward head has no attribute names)")
    labels = [hf_config["id2label"][str(i)] if str(i) in hf_config["id2label"] else hf_config["id2label"][i]
              for i in range(len(hf_config["id2label"]))]
    with open_dict(model_cfg):
        model_cfg.regression.attributes = labels
        model_cfg.regression.reward_weights = dict(meta["reward_weights"])
        model_cfg.template = meta.get("template") or "steerlm"
        model_cfg.system_prompt = meta.get("system_prompt")


def load_head_bias(model, hf_config) -> None:
    """The head bias an export could not fold (Llama); zero where it was folded into the final norm (Nemotron)."""
    bias = (hf_config.get("nemo_hs2") or {}).get("score_bias")
    with torch.no_grad():
        head = model.model.rm_head.bias
        head.copy_(torch.tensor(bias, dtype=head.dtype) if bias is not None else torch.zeros_like(head))


def run(cfg: DictConfig) -> dict:
    """``examples/export_hf.py``: load the ``.nemo`` at TP = PP = 1 on CPU and write the HF directory."""
    started = time.time()
    checkpoint, output_dir = cfg.get("checkpoint"), cfg.get("output_dir")
    if not checkpoint or not output_dir:
        raise ValueError("checkpoint=RM.nemo and output_dir=DIR are required")
    if os.path.exists(output_dir) and os.listdir(output_dir) and not cfg.get("overwrite", False):
        raise FileExistsError(f"output_dir={output_dir} is not empty (overwrite=true to write into it)")
    exp = cfg.get("export") or {}
    head, dtype = str(exp.get("head", "attributes")), str(exp.get("dtype", "float32"))
    if head not in HEADS or dtype not in DTYPES:  # before the model loads
        raise ValueError(f"export.head={head!r} (one of {HEADS}), export.dtype={dtype!r} (one of {sorted(DTYPES)})")
    from nemo_hs2.megatron.loading import checkpoint_config, load_reward_model

    head_layout = cfg.get("head_layout")
    if head_layout is not None and not isinstance(head_layout, str):
        head_layout = OmegaConf.to_container(head_layout, resolve=True)
    # before the model loads: the tokenizer kind, and a positional head without names (NeMo-Aligner's)
    library = (checkpoint_config(checkpoint, head_layout).get("tokenizer") or {}).get("library")
    if library not in ("huggingface", "byte-level", "sentencepiece"):
        raise hf.UnsupportedModel(f"{checkpoint}: model.tokenizer.library={library!r}: export needs a Hugging Face "
                                  "fast tokenizer (one imported with examples/import_hf.py), NeMo's byte-level one "
                                  "or a SentencePiece model")
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True) if cfg.get("trainer") else None
    model = load_reward_model(checkpoint, trainer, {"tensor_model_parallel_size": 1,
                                                    "pipeline_model_parallel_size": 1}, head_layout=head_layout)
    loaded = time.time()
    report = export(model, output_dir, head, dtype, source=os.path.basename(str(checkpoint)),
                    max_shard_gb=float(exp.get("max_shard_gb", 5.0)))
    report["seconds"] = {"load": round(loaded - started, 1), "export": round(time.time() - loaded, 1)}
    report["peak_rss_gib"] = round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2)
    return report
