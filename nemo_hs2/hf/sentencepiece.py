"""NeMo's SentencePiece tokenizer (``model.tokenizer.library: sentencepiece``, as NVIDIA's ``.nemo`` files carry
Nemotron-4's) as a Hugging Face fast tokenizer with the same ids.

The conversion is transformers' own ``LlamaConverter`` (Unigram or BPE model, byte fallback, the ``▁`` decoder)
with the ``.nemo``'s ids and three corrections for what SentencePiece does and the converter does not:

* **Dummy prefix once, at the start of the text.** SentencePiece prepends ``▁`` to the whole text and then matches
  its user-defined symbols (Nemotron's ``<extra_id_0>`` ... template markers) inside it, so
  ``"<extra_id_0>System"`` is ``▁``, ``<extra_id_0>``, ``System``. The converter makes those symbols added tokens,
  which transformers cuts out *before* normalising: the ``▁`` is lost (non-legacy) or repeated after every symbol
  (legacy). Here the normaliser prepends ``▁`` to the whole text and a ``Split`` pre-tokenizer isolates the symbols,
  which the model then reads as the single pieces they are (score 0 in a Unigram; looked up whole in a BPE).
* **The ``.nemo``'s ids.** The converter assumes Llama's unk / bos / eos at ids 0-2; the pieces are taken as they
  are, ``unk_id`` from the model.
* **NeMo's legacy special tokens** (``sentencepiece_legacy: true`` with ``additional_special_tokens``): NeMo encodes
  the text between them apart, each part with its own dummy prefix; transformers does the same with added tokens
  that are not normalised, at the ids NeMo gave them.

Every conversion is checked against NeMo's tokenizer on ``PROBES`` (and the caller's texts) and refused when one
id differs. One known difference remains: the literal names of control and byte pieces (``<s>``, ``</s>``,
``<0x0A>``) written in a text are one token in transformers and their characters in SentencePiece.
"""

from __future__ import annotations

import json
import re
import types

from nemo_hs2.hf.mapping import UnsupportedModel

MODEL_INPUT_NAMES = ["input_ids", "attention_mask"]
# Text of the kinds a reward model reads: the SteerLM template's markers, whitespace runs, tabs and newlines,
# digits, punctuation, code, accents, CJK, Cyrillic, Arabic, Devanagari and emoji (byte fallback).
PROBES = (
    "<extra_id_0>System\nA chat between a curious user and an artificial intelligence assistant.\n"
    "<extra_id_1>User\nWhat is 12 + 30?\n<extra_id_1>Assistant\nIt is 42.\n<extra_id_2>",
    "<extra_id_1>User\n\n<extra_id_1>Assistant\n \n<extra_id_2>",
    "Hello world! The year 2024 had 366 days; 3.14159 ≈ π, 1,000,000 and 0x1F.",
    "  leading spaces,   three spaces\ttab\t\ttwo tabs\nnew line\n\n\nthree newlines   ",
    "def add(a, b):\n    return a + b  # four-space indent\n",
    "naïve café, Ünïcödé, façade — “quotes” and ‘single’ … ellipsis",
    "日本語のテキストと中文文本。数学 123。",
    "Привет, как дела? Это тест.",
    "مرحبا بالعالم. नमस्ते दुनिया।",
    "emoji 🙂🚀 and symbols ©®™ ✓ ∑∫√",
    " a", "a ", " ", "\n", "x<extra_id_2>", "<extra_id_1><extra_id_2>\n<extra_id_0> <extra_id_1>  x",
)


def _proto(sp_processor):
    """The processor's model as a protobuf (transformers' own copy of the schema: sentencepiece 0.2.x ships one
    generated for a newer protobuf than the pinned stack's, which transformers would import first)."""
    from transformers.utils import sentencepiece_model_pb2_new as pb

    proto = pb.ModelProto()
    proto.ParseFromString(sp_processor.serialized_model_proto())
    return proto


def _converter_class():
    from transformers.convert_slow_tokenizer import Converter, LlamaConverter

    class NemoSentencePieceConverter(LlamaConverter):
        def __init__(self, original_tokenizer, proto):  # the proto given: no file, no sentencepiece_model_pb2
            Converter.__init__(self, original_tokenizer)
            self.proto = proto

        def vocab(self, proto):  # every piece at its own id (LlamaConverter fixes ids 0-2 as Llama's)
            return [(p.piece, p.score) for p in proto.pieces]

        def unk_id(self, proto):
            return proto.trainer_spec.unk_id

    return NemoSentencePieceConverter


def _backend(proto, vocab_file: str):
    """The ``tokenizers.Tokenizer`` for a SentencePiece model (see the module docstring)."""
    from tokenizers import Regex, Tokenizer, normalizers, pre_tokenizers

    norm = proto.normalizer_spec
    if proto.trainer_spec.treat_whitespace_as_suffix:
        raise UnsupportedModel("the SentencePiece model treats whitespace as a suffix, which transformers' "
                               "converters do not implement")
    symbols = [p.piece for p in proto.pieces if p.type == 4]  # USER_DEFINED
    converted = type(proto)()
    converted.CopyFrom(proto)
    for piece in converted.pieces:  # kept as ordinary pieces: the converter would make them added tokens
        if piece.type == 4:
            piece.type = 1
    original = types.SimpleNamespace(vocab_file=vocab_file, legacy=True, add_prefix_space=norm.add_dummy_prefix)
    backend = _converter_class()(original, converted).converted()
    # SentencePiece's order: the rule's character map, extra whitespace removed, the dummy prefix, spaces -> ▁.
    steps = [normalizers.Precompiled(norm.precompiled_charsmap)] if norm.precompiled_charsmap else []
    if norm.remove_extra_whitespaces:
        steps += [normalizers.Strip(), normalizers.Replace(Regex(" {2,}"), " ")]
    steps += [normalizers.Prepend("▁")] if norm.add_dummy_prefix else []
    backend.normalizer = normalizers.Sequence([*steps, normalizers.Replace(" ", "▁")])
    if symbols:
        alternatives = "|".join(re.escape(s.replace(" ", "▁")) for s in sorted(symbols, key=len, reverse=True))
        backend.pre_tokenizer = pre_tokenizers.Split(Regex(alternatives), behavior="isolated")
        state = json.loads(backend.to_str())
        if state["model"]["type"] == "BPE":  # no merge builds a user-defined symbol: look it up whole
            state["model"]["ignore_merges"] = True
            backend = Tokenizer.from_str(json.dumps(state))
    return backend


def fast_tokenizer(nemo_tokenizer, check_texts=()):
    """A ``PreTrainedTokenizerFast`` giving ``nemo_tokenizer``'s ids (NeMo's ``SentencePieceTokenizer``); checked on
    ``PROBES`` and ``check_texts``, refused (``UnsupportedModel``) naming the first text whose ids differ."""
    import os
    import tempfile

    from transformers import PreTrainedTokenizerFast

    sp = getattr(nemo_tokenizer, "tokenizer", None)
    if sp is None or not hasattr(sp, "serialized_model_proto"):
        raise UnsupportedModel(f"{type(nemo_tokenizer).__name__} is not NeMo's SentencePieceTokenizer")
    proto = _proto(sp)
    with tempfile.TemporaryDirectory(prefix="nemo_hs2_spm_") as tmp:
        vocab_file = os.path.join(tmp, "tokenizer.model")  # read by the BPE merge extractor only
        with open(vocab_file, "wb") as f:
            f.write(sp.serialized_model_proto())
        backend = _backend(proto, vocab_file)
    piece = lambda i: proto.pieces[i].piece if 0 <= i < len(proto.pieces) else None  # noqa: E731
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token=piece(sp.unk_id()), bos_token=piece(sp.bos_id()),
                                  eos_token=piece(sp.eos_id()), clean_up_tokenization_spaces=False,
                                  model_input_names=MODEL_INPUT_NAMES)
    legacy = dict(getattr(nemo_tokenizer, "special_token_to_id", None) or {}) if nemo_tokenizer.legacy else {}
    if legacy:
        from tokenizers import AddedToken

        for token, idx in sorted(legacy.items(), key=lambda kv: kv[1]):  # NeMo numbers them in this order
            tok.add_tokens([AddedToken(token, normalized=False, special=True)], special_tokens=True)
            if tok.convert_tokens_to_ids(token) != idx:
                raise UnsupportedModel(f"NeMo's special token {token!r} has id {idx}, transformers gives it "
                                       f"{tok.convert_tokens_to_ids(token)}")
    check_same_ids(nemo_tokenizer, tok, (*PROBES, *check_texts))
    return tok


def check_same_ids(nemo_tokenizer, tok, texts) -> None:
    """``tok`` gives NeMo's ``text_to_ids`` on every text (no special tokens added)."""
    from nemo_hs2.core.render import encode

    for text in texts:
        want, got = encode(nemo_tokenizer, text), tok(text, add_special_tokens=False)["input_ids"]
        if want != got:
            at = next((i for i, (a, b) in enumerate(zip(want, got)) if a != b), min(len(want), len(got)))
            raise UnsupportedModel(f"the converted tokenizer differs from NeMo's on {text[:60]!r} at token {at}: "
                                   f"NeMo {want[at:at + 6]}, transformers {got[at:at + 6]}")
