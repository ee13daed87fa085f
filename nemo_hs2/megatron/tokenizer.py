"""The tokenizer a model config (or a ``.nemo``) describes, built as NeMo builds it but without building a model.

Training reads, renders and checks its data with this tokenizer before any model or process group exists, so a
split that cannot fill one global batch fails in seconds; the model later builds its own from the same files, and
``train_recipe`` checks the two agree. It also carries a Hugging Face tokenizer inside a ``.nemo``: NeMo 2.1 records
one as ``tokenizer.type: <directory>`` (an absolute path) and packs nothing, so ``model.tokenizer.hf_files`` names the
files (``nemo_hs2.hf.tokenizer`` stages them) and ``materialize`` registers them as artifacts when the model builds
its tokenizer (compat patch ``hf-tokenizer-in-nemo``).
"""

from __future__ import annotations

import atexit
import os
import shutil
import tarfile
import tempfile

from omegaconf import DictConfig, OmegaConf, open_dict

# config key under model.tokenizer.hf_files -> file name in the tokenizer directory
HF_FILES = {"tokenizer_json": "tokenizer.json", "tokenizer_config": "tokenizer_config.json",
            "special_tokens_map": "special_tokens_map.json"}
_ARTIFACT_KEYS = ("model", "vocab_file", "merge_file")
_NEMO_PREFIX = "nemo:"


def _scratch(prefix: str) -> str:
    directory = tempfile.mkdtemp(prefix=prefix)
    atexit.register(shutil.rmtree, directory, True)
    return directory


def build_tokenizer(tokenizer_cfg):
    """The tokenizer ``model.tokenizer`` describes (paths already local), as ``MegatronBaseModel._build_tokenizer``."""
    library = tokenizer_cfg.get("library")
    special = tokenizer_cfg.get("special_tokens", None)
    if library == "byte-level":
        # Imported directly: get_nmt_tokenizer lives in nemo.collections.nlp, which pulls in Megatron.
        from nemo.collections.common.tokenizers.bytelevel_tokenizers import ByteLevelTokenizer

        return ByteLevelTokenizer(special)
    from nemo.collections.nlp.modules.common.tokenizer_utils import get_nmt_tokenizer

    if library == "huggingface" and tokenizer_cfg.get("hf_files"):
        tokenizer_cfg = _with_hf_directory(tokenizer_cfg, dict(tokenizer_cfg.hf_files))
    legacy = tokenizer_cfg.get("sentencepiece_legacy", library == "sentencepiece")
    tokenizer = get_nmt_tokenizer(
        library=library, model_name=tokenizer_cfg.get("type"), tokenizer_model=tokenizer_cfg.get("model"),
        vocab_file=tokenizer_cfg.get("vocab_file"), merges_file=tokenizer_cfg.get("merge_file"),
        use_fast=tokenizer_cfg.get("use_fast", False), delimiter=tokenizer_cfg.get("delimiter"),
        special_tokens=special, trust_remote_code=tokenizer_cfg.get("trust_remote_code", False), legacy=legacy,
        chat_template=tokenizer_cfg.get("chat_template"))
    if tokenizer_cfg.get("additional_special_tokens") is not None:
        tokenizer.add_special_tokens(list(tokenizer_cfg.additional_special_tokens))
    return tokenizer


def _with_hf_directory(tokenizer_cfg, files: dict) -> DictConfig:
    """A copy of ``tokenizer_cfg`` whose ``type`` is a directory holding the ``hf_files``."""
    directory = _scratch("nemo_hs2_tokenizer_")
    for key, name in HF_FILES.items():
        if not files.get(key):
            raise ValueError(f"model.tokenizer.hf_files.{key} is missing (needs {sorted(HF_FILES)})")
        shutil.copy(files[key], os.path.join(directory, name))
    out = OmegaConf.create(OmegaConf.to_container(tokenizer_cfg, resolve=True))
    with open_dict(out):
        out.type, out.use_fast = directory, True
    return out


def checkpoint_tokenizer(path: str | os.PathLike, tokenizer_cfg=None):
    """The tokenizer packed in a ``.nemo`` (file or extracted directory), reading only its tokenizer files.

    ``tokenizer_cfg``: the checkpoint's ``model.tokenizer`` when the caller already loaded its config."""
    path = os.fspath(path)
    if tokenizer_cfg is None:
        from nemo_aligner.utils.utils import load_checkpoint_model_config

        tokenizer_cfg = load_checkpoint_model_config(path).tokenizer
    cfg = OmegaConf.create(OmegaConf.to_container(tokenizer_cfg, resolve=True))
    wanted = {}  # config key -> artifact name inside the archive
    for key in _ARTIFACT_KEYS:
        if isinstance(cfg.get(key), str) and cfg[key].startswith(_NEMO_PREFIX):
            wanted[key] = cfg[key][len(_NEMO_PREFIX):]
    for key, value in (cfg.get("hf_files") or {}).items():
        if isinstance(value, str) and value.startswith(_NEMO_PREFIX):
            wanted[f"hf_files.{key}"] = value[len(_NEMO_PREFIX):]
    local = _artifacts(path, set(wanted.values()))
    with open_dict(cfg):
        for key, name in wanted.items():
            OmegaConf.update(cfg, key, local[name], merge=False)
    return build_tokenizer(cfg)


def _artifacts(path: str, names: set[str]) -> dict[str, str]:
    if not names:
        return {}
    if os.path.isdir(path):
        found = {n: os.path.join(path, n) for n in names if os.path.exists(os.path.join(path, n))}
    else:
        out = _scratch("nemo_hs2_nemo_tokenizer_")
        found = {}
        with tarfile.open(path, "r:*") as tar:
            for member in tar:  # one pass over the headers; only the tokenizer files are read
                name = os.path.basename(member.name)
                if member.isfile() and name in names and name not in found:
                    with tar.extractfile(member) as src, open(os.path.join(out, name), "wb") as dst:
                        shutil.copyfileobj(src, dst)
                    found[name] = os.path.join(out, name)
    missing = sorted(names - set(found))
    if missing:
        raise FileNotFoundError(f"{path}: the tokenizer files {missing} named by its model_config.yaml are not in it")
    return found


def materialize(model) -> None:
    """Register ``tokenizer.hf_files`` as artifacts and point ``tokenizer.type`` at a directory holding them."""
    tok = model._cfg.get("tokenizer")
    files = tok.get("hf_files") if tok is not None else None
    if not files or tok.get("library") != "huggingface":
        return
    directory = _scratch("nemo_hs2_tokenizer_")
    for key, name in HF_FILES.items():
        if not files.get(key):
            raise ValueError(f"model.tokenizer.hf_files.{key} is missing (needs {sorted(HF_FILES)})")
        src = model.register_artifact(f"tokenizer.hf_files.{key}", files[key])
        shutil.copy(src, os.path.join(directory, name))
    with open_dict(model._cfg):
        model._cfg.tokenizer.type = directory
        model._cfg.tokenizer.use_fast = True
