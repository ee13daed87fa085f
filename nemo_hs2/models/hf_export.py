"""A trained nemo_hs2 reward model (``.nemo``) -> a Hugging Face ``*ForSequenceClassification`` directory.

The backbone goes through the importer's mapping tables in reverse (each rule's ``split``, ``nemo_hs2.models.hf``);
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
"""

from __future__ import annotations

import json
import os
import time

import torch
from omegaconf import DictConfig, OmegaConf

from nemo_hs2.data.template import DEFAULT_SYSTEM, END_OF_RESPONSE, SYSTEM_HEADER, TURN_HEADER
from nemo_hs2.models import hf
from nemo_hs2.models.rotary import LLAMA31_ROPE_SCALING

PAD_TOKEN = "<|nemo_hs2_pad|>"
HEADS = ("attributes", "reward")
DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
_SEQ_CLASS = {"llama": "LlamaForSequenceClassification", "nemotron": "NemotronForSequenceClassification"}


# ------------------------------------------------------------------------------------------------ architecture
def hf_causal_config(c) -> dict:
    """The HF ``*ForCausalLM`` config.json fields of a ``.nemo`` backbone; checked by the importer's reading."""
    common = {"hidden_size": int(c.hidden_size), "intermediate_size": int(c.ffn_hidden_size),
              "num_hidden_layers": int(c.num_layers), "num_attention_heads": int(c.num_attention_heads),
              "num_key_value_heads": int(c.get("num_query_groups") or c.num_attention_heads),
              "head_dim": int(c.kv_channels or c.hidden_size // c.num_attention_heads),
              "max_position_embeddings": int(c.max_position_embeddings), "rope_theta": float(c.rotary_base),
              "attention_bias": bool(c.bias), "mlp_bias": bool(c.bias), "tie_word_embeddings": False,
              "initializer_range": float(c.get("init_method_std", 0.02))}
    norm, act = c.get("normalization"), c.get("activation")
    if norm == "rmsnorm" and act == "fast-swiglu":
        out = {**common, "architectures": ["LlamaForCausalLM"], "model_type": "llama", "hidden_act": "silu",
               "rms_norm_eps": float(c.layernorm_epsilon),
               "rope_scaling": dict(LLAMA31_ROPE_SCALING) if c.get("scale_positional_embedding") else None}
    elif norm == "layernorm1p" and act == "squared-relu":
        out = {**common, "architectures": ["NemotronForCausalLM"], "model_type": "nemotron", "hidden_act": "relu2",
               "norm_eps": float(c.layernorm_epsilon), "partial_rotary_factor": float(c.rotary_percentage)}
    else:
        raise hf.UnsupportedModel(f"normalization={norm!r} with activation={act!r}: exportable are Llama (rmsnorm, "
                                  "fast-swiglu) and Nemotron (layernorm1p, squared-relu)")
    back = hf.nemo_arch_config(out, "the exported config")
    wrong = {k: (c.get(k), v) for k, v in back.items()
             if k not in ("share_embeddings_and_output_weights", "init_method_std", "bias_activation_fusion",
                          "apply_query_key_layer_scaling")
             and not _same(c.get(k), v) and not (k == "num_query_groups" and c.get(k) is None)}
    if wrong:
        raise hf.UnsupportedModel(f"the .nemo's {wrong} (nemo value, exported reading) cannot be represented in "
                                  f"{out['architectures'][0]}")
    return out


def _same(a, b) -> bool:
    if a is None and (b is False or b == 0.0):  # unset in the .nemo: NeMo's default
        return True
    if isinstance(b, float) or isinstance(a, float):
        return a is not None and b is not None and float(a) == float(b)
    return a == b


# ------------------------------------------------------------------------------------------------ chat template
def steerlm_chat_template(system: str) -> str:
    """Jinja rendering of ``nemo_hs2.data.template`` (format_context + format_response), default system included."""
    q = json.dumps  # Jinja string literals are JSON-compatible for these texts
    return ("{%- if messages[0]['role'] == 'system' -%}{%- set system = messages[0]['content'] -%}"
            "{%- set turns = messages[1:] -%}{%- else -%}{%- set system = " + q(system) + " -%}"
            "{%- set turns = messages -%}{%- endif -%}"
            "{{- " + q(SYSTEM_HEADER) + " + system + '\\n' -}}"
            "{%- for m in turns -%}"
            "{{- " + q(TURN_HEADER.format(role="User")) + " if m['role'] == 'user' else "
            + q(TURN_HEADER.format(role="Assistant")) + " -}}"
            "{{- m['content'] + '\\n' -}}"
            "{%- if loop.last and m['role'] == 'assistant' -%}{{- " + q(END_OF_RESPONSE) + " -}}{%- endif -%}"
            "{%- endfor -%}"
            "{%- if add_generation_prompt -%}{{- " + q(TURN_HEADER.format(role="Assistant")) + " -}}{%- endif -%}")


def with_default_system(template: str, system: str) -> str:
    """An HF chat template that gets ``system`` as its first message when the conversation has none."""
    return ("{%- if messages[0]['role'] != 'system' -%}{%- set messages = [{'role': 'system', 'content': "
            + json.dumps(system) + "}] + messages -%}{%- endif -%}" + template)


def export_tokenizer(model):
    """The model's HF tokenizer with the training template as ``chat_template`` and a dedicated right pad."""
    import copy

    inner = getattr(model.tokenizer, "tokenizer", None)
    lib = model.cfg.tokenizer.get("library")
    if lib != "huggingface" or not getattr(inner, "is_fast", False):
        raise hf.UnsupportedModel(f"model.tokenizer.library={lib!r}: export needs a checkpoint with a Hugging Face "
                                  "fast tokenizer (one imported with examples/import_hf.py); the demo's byte-level "
                                  "tokenizer has no Hugging Face counterpart")
    tok = copy.deepcopy(inner)
    template = model.cfg.get("template") or "steerlm"
    system = model.cfg.get("system_prompt")
    if template == "steerlm":
        tok.chat_template = steerlm_chat_template(DEFAULT_SYSTEM if system is None else system)
    elif template == "hf_chat":
        if not tok.chat_template:
            raise hf.UnsupportedModel("template=hf_chat but the packed tokenizer has no chat_template")
        if system is not None:
            tok.chat_template = with_default_system(tok.chat_template, system)
    else:
        raise hf.UnsupportedModel(f"unknown template {template!r} in the model config")
    if PAD_TOKEN in tok.get_vocab():
        raise hf.UnsupportedModel(f"the tokenizer already has {PAD_TOKEN}")
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.padding_side = "right"
    tok.truncation_side = "left"  # over-long rows keep their end, where the reward is read (as in training)
    tok.model_max_length = int(model.cfg.encoder_seq_length)
    return tok


# ------------------------------------------------------------------------------------------------ weights
def export_state_dict(module, causal: dict, vocab_rows: int, head: str, weights: torch.Tensor, dtype):
    """HF tensors of the backbone (the import rules split) and the folded head; the unfolded bias (or None)."""
    rules = hf.expand(hf.mapping_table(causal), causal["num_hidden_layers"])
    arch = hf.Arch(causal["num_attention_heads"], causal["num_key_value_heads"], causal["head_dim"])
    own = {k: v for k, v in module.state_dict().items() if "_extra_state" not in k}
    unknown = sorted(k for k in own if k not in rules and not k.startswith("rm_head."))
    if unknown:
        raise hf.UnsupportedModel(f"no mapping rule for Megatron parameters {unknown[:5]}")
    out = {}
    for name, rule in rules.items():
        if name == "output_layer.weight":  # the LM head: a sequence classifier has none
            continue
        for key, value in zip(rule.hf, rule.split(own[name].float(), arch)):
            if key == "model.embed_tokens.weight":  # drop the vocabulary padding, add rows up to the pad token
                value = value[:vocab_rows]
                if value.shape[0] < vocab_rows:
                    value = torch.cat([value, value.new_zeros(vocab_rows - value.shape[0], value.shape[1])])
            out[key] = value
    w_head, b_head = own["rm_head.weight"].double(), own["rm_head.bias"].double()
    if head == "reward":
        w_head, b_head = weights.double()[None] @ w_head, weights.double()[None] @ b_head
    bias = b_head
    if "model.norm.bias" in out:  # fold: W @ (beta + delta) = W @ beta + b
        delta = torch.linalg.lstsq(w_head, b_head[:, None]).solution[:, 0]
        if torch.allclose(w_head @ delta, b_head, atol=1e-9, rtol=1e-9):
            out["model.norm.bias"] = (out["model.norm.bias"].double() + delta).float()
            bias = None
    out["score.weight"] = w_head.float()
    return {k: v.to(dtype).contiguous() for k, v in out.items()}, bias


# ------------------------------------------------------------------------------------------------ directory
def export(model, output_dir: str, head: str = "attributes", dtype: str = "float32", source: str = "") -> dict:
    """Write ``output_dir`` from a loaded ``AttributeRewardModel`` (TP = PP = 1); returns a report."""
    from safetensors.torch import save_file
    from transformers import AutoConfig

    from nemo_hs2.reward import resolve_weights

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
    attributes = list(model.attributes)
    weights = torch.tensor(resolve_weights(dict(model.reward_weights), attributes), dtype=torch.float64)
    tensors, bias = export_state_dict(model.model, causal, len(tok), head, weights, DTYPES[dtype])
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
    config.save_pretrained(output_dir)
    save_file(tensors, os.path.join(output_dir, "model.safetensors"), metadata={"format": "pt"})
    tok.save_pretrained(output_dir)
    with open(os.path.join(output_dir, "README.md"), "w") as f:
        f.write(model_card(config, meta, source))
    return {"output_dir": output_dir, "architecture": config.architectures[0], "num_labels": len(labels),
            "labels": labels, "dtype": dtype, "vocab_size": len(tok), "pad_token_id": tok.pad_token_id,
            "bias_folded": bias is None, "tensors": len(tensors)}


def model_card(config, meta: dict, source: str) -> str:
    bias = meta["score_bias"]
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
the text the model was trained on ({meta['template']} template); the reward is read at its last token. Tokenize
with `apply_chat_template(..., tokenize=True)` or `tokenizer(text, add_special_tokens=False)`: no BOS/EOS is added
in training. Batches are padded on the right with the dedicated `{PAD_TOKEN}` (`pad_token_id={config.pad_token_id}`),
which the classifier uses to find each row's last token; never pad with another token.

```python
import torch
from transformers import AutoModelForSequenceClassification, AutoTokenizer

tok = AutoTokenizer.from_pretrained(D)
model = AutoModelForSequenceClassification.from_pretrained(D, torch_dtype=torch.float32)
texts = [tok.apply_chat_template(conv, tokenize=False) for conv in conversations]
batch = tok(texts, add_special_tokens=False, padding=True, return_tensors="pt")
scores = model(**batch).logits
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
    from nemo_hs2.models.loading import checkpoint_config, load_reward_model

    library = (checkpoint_config(checkpoint).get("tokenizer") or {}).get("library")
    if library != "huggingface":  # before the model loads
        raise hf.UnsupportedModel(f"{checkpoint}: model.tokenizer.library={library!r}: export needs a checkpoint with "
                                  "a Hugging Face fast tokenizer (one imported with examples/import_hf.py); the "
                                  "demo's byte-level tokenizer has no Hugging Face counterpart")
    trainer = OmegaConf.to_container(cfg.trainer, resolve=True) if cfg.get("trainer") else None
    model = load_reward_model(checkpoint, trainer, {"tensor_model_parallel_size": 1,
                                                    "pipeline_model_parallel_size": 1})
    loaded = time.time()
    report = export(model, output_dir, head, dtype, source=os.path.basename(str(checkpoint)))
    report["seconds"] = {"load": round(loaded - started, 1), "export": round(time.time() - loaded, 1)}
    return report
