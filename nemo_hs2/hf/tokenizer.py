"""Hugging Face tokenizers in and out of a ``.nemo``.

In (import): NeMo 2.1 records an HF tokenizer as an absolute directory path and packs nothing; ``stage`` writes the
files and ``model_config`` names them, and ``nemo_hs2.megatron.tokenizer.materialize`` packs them as ``.nemo``
artifacts. Out (export): ``export_tokenizer`` gives the model's tokenizer as a stock Hugging Face one (see
``nemo_hs2.hf.exporter``).
"""

from __future__ import annotations

import json
import os

from nemo_hs2.core.render import export_chat_template
from nemo_hs2.hf import mapping as hf
from nemo_hs2.megatron.tokenizer import HF_FILES

PAD_TOKEN = "<|nemo_hs2_pad|>"
# NeMo's ByteLevelTokenizer: ids 0-255 are the UTF-8 bytes, then pad, bos, eos; none is ever in a training row.
BYTE_LEVEL_SPECIALS = ("<|byte_level_pad|>", "<|byte_level_bos|>", "<|byte_level_eos|>")


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


# ------------------------------------------------------------------------------------------------ export
def byte_level_tokenizer():
    """NeMo's ``ByteLevelTokenizer`` as a Hugging Face fast tokenizer: every UTF-8 byte its own token, id = the byte
    (a byte-level BPE without merges), then its pad / bos / eos at 256-258."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast
    from transformers.models.gpt2.tokenization_gpt2 import bytes_to_unicode

    vocab = {char: byte for byte, char in bytes_to_unicode().items()}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend)
    tok.add_special_tokens({"additional_special_tokens": list(BYTE_LEVEL_SPECIALS)})
    tok.bos_token, tok.eos_token = BYTE_LEVEL_SPECIALS[1], BYTE_LEVEL_SPECIALS[2]
    if tok.convert_tokens_to_ids(list(BYTE_LEVEL_SPECIALS)) != [256, 257, 258]:
        raise RuntimeError("the byte-level specials did not land at NeMo's ids 256-258")
    return tok


# Conversations the export checks its chat template on (ids equal to training's renderer), with PROBES' texts.
CHECK_CONVERSATIONS = (
    [{"role": "user", "content": "What is 12 + 30?"}, {"role": "assistant", "content": "It is 42.  Sure:\n\n- 42"}],
    [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Привет! 日本語?"},
     {"role": "assistant", "content": " Hi 🙂"}, {"role": "user", "content": "\tAgain\n"},
     {"role": "assistant", "content": "def f(x):\n    return x"}],
)


def export_tokenizer(model):
    """The model's HF tokenizer with the training template as ``chat_template``, a dedicated right pad, and nothing
    added by a plain ``tokenizer(text)`` call; checked to give the training ids."""
    import copy

    from nemo_hs2.core.conversation import Conversation
    from nemo_hs2.core.render import Renderer
    from nemo_hs2.hf import sentencepiece

    inner = getattr(model.tokenizer, "tokenizer", None)
    lib = model.cfg.tokenizer.get("library")
    template, system_prompt = model.cfg.get("template") or "steerlm", model.cfg.get("system_prompt")
    renderer = Renderer(template, model.tokenizer, system_prompt)
    conversations = [Conversation.from_messages(c) for c in CHECK_CONVERSATIONS]
    if lib == "byte-level":
        tok = byte_level_tokenizer()
    elif lib == "huggingface" and getattr(inner, "is_fast", False):
        tok = copy.deepcopy(inner)
    elif lib == "sentencepiece":
        tok = sentencepiece.fast_tokenizer(model.tokenizer, [renderer.text(c) for c in conversations])
    else:
        raise hf.UnsupportedModel(f"model.tokenizer.library={lib!r}: export needs a Hugging Face fast tokenizer (one "
                                  "imported with examples/import_hf.py), NeMo's byte-level one or a SentencePiece "
                                  "model")
    try:  # the one renderer's template, as a Jinja chat template (nemo_hs2.core.render)
        tok.chat_template = export_chat_template(template, system_prompt, tok.chat_template)
    except ValueError as e:
        raise hf.UnsupportedModel(str(e)) from None
    if PAD_TOKEN in tok.get_vocab():
        raise hf.UnsupportedModel(f"the tokenizer already has {PAD_TOKEN}")
    tok.add_special_tokens({"pad_token": PAD_TOKEN})
    tok.padding_side = "right"
    tok.truncation_side = "left"  # over-long rows keep their end, where the reward is read (as in training)
    tok.model_max_length = int(model.cfg.encoder_seq_length)
    # Stock tokenizers return only what the model's forward takes; PreTrainedTokenizerFast's default adds
    # token_type_ids, which model(**tokenizer(texts)) then rejects. Saved through init_kwargs.
    tok.model_input_names = tok.init_kwargs["model_input_names"] = list(sentencepiece.MODEL_INPUT_NAMES)
    _add_nothing(tok)
    sentencepiece.check_same_ids(model.tokenizer, tok, sentencepiece.PROBES)
    for conversation in conversations:
        got = list(tok.apply_chat_template(conversation.messages(), tokenize=True))
        if got != renderer.ids(conversation):
            raise hf.UnsupportedModel("the exported chat template does not give the training ids "
                                      f"({got[:8]}... against {renderer.ids(conversation)[:8]}...)")
    return tok


def _add_nothing(tok) -> None:
    """Drop the post-processor's added tokens (Llama 3's BOS template), so that ``tokenizer(text)`` equals
    ``tokenizer(text, add_special_tokens=False)``: the chat template already writes any BOS training saw, and
    RewardBench-style callers tokenize its text with the defaults."""
    from tokenizers import Tokenizer

    state = json.loads(tok.backend_tokenizer.to_str())
    post = state.get("post_processor")
    if post is None:
        return
    members = post["processors"] if post["type"] == "Sequence" else [post]
    kept = [p for p in members if p["type"] == "ByteLevel"]  # offsets only; every other kind adds tokens
    if len(kept) == len(members):
        return
    state["post_processor"] = None if not kept else kept[0] if len(kept) == 1 else {"type": "Sequence",
                                                                                   "processors": kept}
    tok._tokenizer = Tokenizer.from_str(json.dumps(state))
    if tok("a b")["input_ids"] != tok("a b", add_special_tokens=False)["input_ids"]:
        raise hf.UnsupportedModel("the tokenizer still adds tokens on a plain call")
