"""Hugging Face tokenizers inside a ``.nemo``.

NeMo 2.1 records an HF tokenizer as ``tokenizer.type: <directory>`` (an absolute path) and packs nothing, so a
``.nemo`` copied elsewhere cannot be restored. ``model.tokenizer.hf_files`` names the files of a fast tokenizer
(``tokenizer.json`` with its config, chat template and special tokens); ``nemo_hs2.compat`` registers them as
``.nemo`` artifacts when the model builds its tokenizer and points ``tokenizer.type`` at a temporary directory
holding them, on save and on restore alike.
"""

from __future__ import annotations

import atexit
import json
import os
import shutil
import tempfile

from omegaconf import open_dict

# config key under model.tokenizer.hf_files -> file name in the tokenizer directory
HF_FILES = {"tokenizer_json": "tokenizer.json", "tokenizer_config": "tokenizer_config.json",
            "special_tokens_map": "special_tokens_map.json"}


def stage(tokenizer, directory: str) -> dict[str, str]:
    """Write a fast tokenizer's files to ``directory``; returns ``{hf_files key: path}`` for the model config."""
    if not getattr(tokenizer, "is_fast", False):
        raise ValueError(f"{type(tokenizer).__name__} is not a fast tokenizer (no tokenizer.json to carry)")
    os.makedirs(directory, exist_ok=True)
    tokenizer.save_pretrained(directory)
    config_path = os.path.join(directory, HF_FILES["tokenizer_config"])
    with open(config_path) as f:
        config = json.load(f)
    # Loaded from tokenizer.json alone: a model-specific class could want its slow files (tokenizer.model).
    config["tokenizer_class"] = "PreTrainedTokenizerFast"
    with open(config_path, "w") as f:
        json.dump(config, f, indent=1, ensure_ascii=False)
    files = {k: os.path.join(directory, v) for k, v in HF_FILES.items()}
    absent = [p for p in files.values() if not os.path.exists(p)]
    if absent:
        raise FileNotFoundError(f"tokenizer.save_pretrained wrote no {absent}")
    return files


def model_config(files: dict[str, str]) -> dict:
    """The ``model.tokenizer`` section for a staged tokenizer."""
    return {"library": "huggingface", "type": os.path.dirname(next(iter(files.values()))), "model": None,
            "vocab_file": None, "merge_file": None, "use_fast": True, "hf_files": dict(files)}


def materialize(model) -> None:
    """Register ``tokenizer.hf_files`` as artifacts and point ``tokenizer.type`` at a directory holding them."""
    tok = model._cfg.get("tokenizer")
    files = tok.get("hf_files") if tok is not None else None
    if not files or tok.get("library") != "huggingface":
        return
    directory = tempfile.mkdtemp(prefix="nemo_hs2_tokenizer_")
    atexit.register(shutil.rmtree, directory, True)
    for key, name in HF_FILES.items():
        if not files.get(key):
            raise ValueError(f"model.tokenizer.hf_files.{key} is missing (needs {sorted(HF_FILES)})")
        src = model.register_artifact(f"tokenizer.hf_files.{key}", files[key])
        shutil.copy(src, os.path.join(directory, name))
    with open_dict(model._cfg):
        model._cfg.tokenizer.type = directory
        model._cfg.tokenizer.use_fast = True
