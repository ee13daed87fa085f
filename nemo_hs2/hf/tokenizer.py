"""A Hugging Face fast tokenizer staged as the files a ``.nemo`` carries (``model.tokenizer.hf_files``).

NeMo 2.1 records an HF tokenizer as an absolute directory path and packs nothing; ``stage`` writes the files and
``model_config`` names them, and ``nemo_hs2.megatron.tokenizer.materialize`` packs them as ``.nemo`` artifacts.
"""

from __future__ import annotations

import json
import os

from nemo_hs2.megatron.tokenizer import HF_FILES


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
