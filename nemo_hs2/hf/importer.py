"""Import a Hugging Face causal LM (directory or GGUF file) as a base ``.nemo`` for ``init.restore_from_path``.

The model is built once, at TP = PP = 1 on CPU in fp32, with the architecture derived from the HF config
(``nemo_hs2.hf.mapping``), and filled one parameter at a time from lazily read safetensors shards: peak memory is
the Megatron model plus the largest single tensor, not two models. The tokenizer (fast, with chat template and
special tokens) is staged in a temporary directory and packed into the ``.nemo``; the HF directory is only read.
"""

from __future__ import annotations

import functools
import json
import os
import resource
import tempfile
import time

from omegaconf import DictConfig, OmegaConf, open_dict

from nemo_hs2.core.render import encode
from nemo_hs2.hf import mapping as hf
from nemo_hs2.megatron.checkpoint_config import ARCH_KEYS
from nemo_hs2.hf import tokenizer as hf_tokenizer

# Sentences the importer checks the packed tokenizer on (ids must equal the HF tokenizer's).
TOKENIZER_PROBES = ("Hello world! The year 2024 had 366 days.", "  leading spaces\nnew line\ttab",
                    "naïve café ☕ 日本語")


# ------------------------------------------------------------------------------------------------ sources
def _gguf_metadata(path: str) -> dict:
    from gguf import GGUFReader

    out = {}
    for key, field in GGUFReader(path).fields.items():
        if not key.startswith(("tokenizer.ggml.", "general.architecture")) or not field.data:
            continue
        if key in ("tokenizer.ggml.tokens", "tokenizer.ggml.merges", "tokenizer.ggml.token_type",
                   "tokenizer.ggml.scores"):
            continue
        value = field.parts[field.data[0]]
        out[key] = bytes(value).decode() if field.types and field.types[0].name == "STRING" else value.tolist()[0]
    return out


def fix_gguf_tokenizer(tok, gguf_path: str):
    """transformers 4.48.3's GGUF tokenizer conversion, corrected from the GGUF's own metadata.

    It sets eos to the wrong token (SmolLM2: ``<|im_start|>`` where the GGUF says id 2, ``<|im_end|>``), prepends a
    BOS the GGUF says not to add, and keeps the whole GGUF as ``tokenizer.model`` (not carried: only
    ``tokenizer.json`` and its configs are). For byte-level BPE it also loses llama.cpp's pre-tokenizer
    (``smollm``: digits split one by one) and uses a sentencepiece decoder; both are rebuilt here.
    """
    from tokenizers import Tokenizer
    from transformers import PreTrainedTokenizerFast

    meta = _gguf_metadata(gguf_path)
    where = f"{gguf_path}: tokenizer.ggml"
    state = json.loads(tok.backend_tokenizer.to_str())
    if meta.get("tokenizer.ggml.model") == "gpt2":
        pre = meta.get("tokenizer.ggml.pre")
        if pre != "smollm":  # llama.cpp's other pre-tokenizers are regexes of their own; not verified here
            raise hf.UnsupportedModel(f"{where}.pre={pre!r}: only byte-level BPE with pre 'smollm' is supported")
        byte_level = {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True, "use_regex": True}
        state["normalizer"] = None
        state["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [
            {"type": "Digits", "individual_digits": True}, byte_level]}
        state["decoder"] = dict(byte_level)
        state["post_processor"] = dict(byte_level, trim_offsets=False)
    elif meta.get("tokenizer.ggml.add_bos_token") is False:
        state["post_processor"] = None
    tokens = tok.convert_ids_to_tokens
    special = {}
    for name in ("bos", "eos", "unknown", "padding"):
        idx = meta.get(f"tokenizer.ggml.{name}_token_id")
        if idx is not None:
            special[{"unknown": "unk", "padding": "pad"}.get(name, name) + "_token"] = tokens(int(idx))
    special.setdefault("pad_token", special.get("eos_token"))
    fixed = PreTrainedTokenizerFast(tokenizer_object=Tokenizer.from_str(json.dumps(state)), **special,
                                    add_bos_token=bool(meta.get("tokenizer.ggml.add_bos_token", False)),
                                    add_eos_token=bool(meta.get("tokenizer.ggml.add_eos_token", False)),
                                    clean_up_tokenization_spaces=False, model_max_length=tok.model_max_length,
                                    model_input_names=["input_ids", "attention_mask"])  # as the GGUF's model takes
    fixed.chat_template = tok.chat_template
    return fixed


@functools.lru_cache(maxsize=1)
def load_gguf(path: str):
    """transformers' model from a GGUF file, dequantized to fp32 (kept for a reference forward in the same process)."""
    import torch
    from transformers import AutoModelForCausalLM

    directory, name = os.path.split(os.path.abspath(path))
    return AutoModelForCausalLM.from_pretrained(directory, gguf_file=name, torch_dtype=torch.float32).eval()


def open_hf(input_dir: str | None = None, input_gguf: str | None = None):
    """(HF config dict, weight source, fast tokenizer, description) for an HF directory or a GGUF file."""
    from transformers import AutoTokenizer

    if bool(input_dir) == bool(input_gguf):
        raise ValueError("give exactly one of input=HF_DIR and input_gguf=FILE.gguf")
    if input_dir:
        config_path = os.path.join(input_dir, "config.json")
        if not os.path.exists(config_path):
            raise FileNotFoundError(f"input={input_dir}: no config.json (a Hugging Face model directory?)")
        with open(config_path) as f:
            config = json.load(f)
        hf.nemo_arch_config(config, config_path)  # refuse before anything is loaded
        tok = AutoTokenizer.from_pretrained(input_dir, use_fast=True)
        return config, hf.SafetensorsSource(input_dir), tok, config_path
    if not os.path.isfile(input_gguf):
        raise FileNotFoundError(f"input_gguf={input_gguf} does not exist")
    directory, name = os.path.split(os.path.abspath(input_gguf))
    model = load_gguf(input_gguf)
    config = model.config.to_dict()
    config["architectures"] = [type(model).__name__]
    state = model.state_dict()
    if config.get("tie_word_embeddings") and "lm_head.weight" in state:
        state.pop("lm_head.weight")  # the same tensor as the embedding
    tok = fix_gguf_tokenizer(AutoTokenizer.from_pretrained(directory, gguf_file=name), input_gguf)
    return config, hf.DictSource(state), tok, input_gguf


# ------------------------------------------------------------------------------------------------ import
def model_config(cfg: DictConfig, arch: dict, tokenizer_files: dict) -> DictConfig:
    """The run's model config (non-architecture settings) with the HF architecture and the packed tokenizer."""
    model = OmegaConf.create(OmegaConf.to_container(cfg.model, resolve=True))
    with open_dict(model):
        for key in ARCH_KEYS:
            model.pop(key, None)
        model.update(arch)
        model.tokenizer = hf_tokenizer.model_config(tokenizer_files)
        model.encoder_seq_length = min(int(cfg.encoder_seq_length), int(arch["max_position_embeddings"]))
        model.make_vocab_size_divisible_by = int(cfg.make_vocab_size_divisible_by)
        model.tensor_model_parallel_size = model.pipeline_model_parallel_size = 1
        model.micro_batch_size = model.global_batch_size = 1
        model.precision = 32
    return model


def run(cfg: DictConfig) -> dict:
    """``examples/import_hf.py``: returns a report (architecture, counts, seconds, peak RSS)."""
    started = time.time()
    output = cfg.get("output")
    if not output:
        raise ValueError("output=OUT.nemo is required")
    if os.path.exists(output) and not cfg.get("overwrite", False):
        raise FileExistsError(f"output={output} exists (overwrite=true to replace it)")
    if cfg.get("input") and os.path.abspath(output).startswith(os.path.abspath(cfg.input) + os.sep):
        raise ValueError(f"output={output} is inside the input directory, which the importer never writes")

    config, source, tok, where = open_hf(cfg.get("input"), cfg.get("input_gguf"))
    arch = hf.nemo_arch_config(config, where)
    loaded = time.time()

    import torch

    from nemo_hs2.megatron.build import standalone_model

    with tempfile.TemporaryDirectory(prefix="nemo_hs2_import_") as staging:
        files = hf_tokenizer.stage(tok, os.path.join(staging, "tokenizer"))
        run_cfg = OmegaConf.create({"trainer": OmegaConf.to_container(cfg.trainer, resolve=True),
                                    "model": model_config(cfg, arch, files), "exp_manager": None})
        if hf.is_reward_model(config):  # an examples/export_hf.py directory: its attributes, weights, template
            from nemo_hs2.hf import exporter as hf_export

            hf_export.imported_reward_model_config(run_cfg.model, config, where)
        torch.manual_seed(int(run_cfg.model.seed))
        model = standalone_model(run_cfg)
        check_tokenizer(model.tokenizer, tok)
        if int(config["vocab_size"]) > model.padded_vocab_size:
            raise hf.UnsupportedModel(f"{where}: vocab_size={config['vocab_size']} exceeds the padded tokenizer "
                                      f"vocabulary {model.padded_vocab_size}")
        if hf.is_reward_model(config):
            counts = hf.import_weights(model.model, source, config, skip_prefixes=("rm_head.bias",))
            hf_export.load_head_bias(model, config)
        else:
            counts = hf.import_weights(model.model, source, config)
        built = time.time()
        model.save_to(output)
    report = {"output": output, "source": where, "architecture": config["architectures"][0],
              "arch": arch, **counts, "padded_vocab_size": model.padded_vocab_size,
              "seconds": {"read_hf": round(loaded - started, 1), "start_build_convert": round(built - loaded, 1),
                          "save": round(time.time() - built, 1), "total": round(time.time() - started, 1)},
              "peak_rss_gib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20, 2),
              "output_gib": round(os.path.getsize(output) / 2**30, 3)}
    return report


def check_tokenizer(nemo_tokenizer, hf_tok) -> None:
    """The tokenizer NeMo built from the packed files gives the HF tokenizer's ids and special tokens."""
    for text in TOKENIZER_PROBES:
        got, want = encode(nemo_tokenizer, text), hf_tok(text, add_special_tokens=False).input_ids
        if got != want:
            raise RuntimeError(f"the packed tokenizer gives {got[:12]} for {text!r}, the HF tokenizer {want[:12]}")
    if hf_tok.eos_token_id is not None and nemo_tokenizer.eos_id != hf_tok.eos_token_id:
        raise RuntimeError(f"packed tokenizer eos id {nemo_tokenizer.eos_id} != HF eos id {hf_tok.eos_token_id}")
