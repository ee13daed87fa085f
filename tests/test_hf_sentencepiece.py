"""A SentencePiece ``.nemo`` tokenizer as a Hugging Face fast tokenizer (nemo_hs2.hf.sentencepiece), id for id.

The reference is NeMo's own ``SentencePieceTokenizer`` built as a ``.nemo`` builds it (``build_tokenizer``), over
SentencePiece models trained here with Nemotron-4's settings (``library: sentencepiece``, ``sentencepiece_legacy:
false``, identity normalisation, dummy prefix, byte fallback, the SteerLM markers as user-defined symbols) as
Unigram and as BPE, plus an NFKC model that removes extra whitespace and NeMo's legacy added special tokens. Texts:
the converter's probes, the tests' corpus, RewardBench 2 sample rows and, where ../shared/data has them, 300 real
HelpSteer rows rendered in the SteerLM template. The end-to-end export of a NeMo-Aligner SentencePiece checkpoint is
in tests/test_hf_export.py (slow).
"""

from __future__ import annotations

import functools
import io
import json
import tempfile
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_hs2.core.conversation import Conversation
from nemo_hs2.core.render import Renderer
from nemo_hs2.hf import sentencepiece as hf_sp
from nemo_hs2.hf.mapping import UnsupportedModel
from tests.conftest import SHARED_DATA
from tests.tokenizers import CORPUS, sentencepiece_model

ROOT = Path(__file__).resolve().parents[1]
MARKERS = ["<extra_id_0>", "<extra_id_1>", "<extra_id_2>"]
LEGACY_SPECIALS = ["<|im_start|>", "<|im_end|>"]


def _train(**options) -> bytes:
    import sentencepiece as spm

    model = io.BytesIO()
    args = dict(sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=400, hard_vocab_limit=False,
                model_type="unigram", add_dummy_prefix=True, normalization_rule_name="identity",
                remove_extra_whitespaces=False, byte_fallback=True, minloglevel=2, user_defined_symbols=MARKERS)
    spm.SentencePieceTrainer.train(**{**args, **options})
    return model.getvalue()


MODELS = {
    "unigram": sentencepiece_model,  # tests/tokenizers.py's: the render matrix's SentencePiece kind
    "bpe": lambda: _train(model_type="bpe"),
    "nfkc_strip": lambda: _train(normalization_rule_name="nmt_nfkc", remove_extra_whitespaces=True),
    "no_markers": lambda: _train(user_defined_symbols=[]),
}


@functools.lru_cache(maxsize=None)
def nemo(kind: str, legacy: bool = False):
    from nemo_hs2.megatron.tokenizer import build_tokenizer

    path = tempfile.mkdtemp(prefix="nemo_hs2_test_spm_") + "/tokenizer.model"
    with open(path, "wb") as f:
        f.write(MODELS[kind]())
    cfg = {"library": "sentencepiece", "model": path, "sentencepiece_legacy": legacy}
    if legacy:  # NeMo's older SFT configs: special tokens NeMo adds after the SentencePiece vocabulary
        cfg["additional_special_tokens"] = LEGACY_SPECIALS
    return build_tokenizer(OmegaConf.create(cfg))


def real_texts() -> list[str]:
    """RewardBench 2 sample rows, HelpSteer3 sample contexts and (if present) HelpSteer rows in the SteerLM template."""
    texts = []
    for line in (ROOT / "tests" / "data" / "rewardbench2_sample.jsonl").read_text().splitlines():
        row = json.loads(line)
        texts += [row["prompt"], *row["chosen"], *row["rejected"]]
    for line in (ROOT / "tests" / "data" / "helpsteer3_sample.jsonl").read_text().splitlines():
        row = json.loads(line)
        context = row["context"]  # a list of turns, or a plain string in some rows
        texts += ([context] if isinstance(context, str) else [m["content"] for m in context])
        texts += [row["response1"], row["response2"]]
    sample = SHARED_DATA / "helpsteer_sample_300.jsonl"
    if sample.exists():
        renderer = Renderer("steerlm", object())
        for line in sample.read_text().splitlines():
            row = json.loads(line)
            texts.append(renderer.text(Conversation.from_helpsteer2(row["prompt"], row["response"])))
    return texts


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_converted_tokenizer_gives_nemos_ids(kind):
    tok = hf_sp.fast_tokenizer(nemo(kind))  # itself refuses on the first probe whose ids differ
    texts = [*hf_sp.PROBES, *CORPUS[:6], *real_texts()]
    hf_sp.check_same_ids(nemo(kind), tok, texts)
    sp = nemo(kind).tokenizer
    assert len(tok) == sp.get_piece_size() and tok.model_input_names == ["input_ids", "attention_mask"]
    assert (tok.unk_token_id, tok.bos_token_id, tok.eos_token_id) == (sp.unk_id(), sp.bos_id(), sp.eos_id())
    for text in texts[:40]:  # decoding gives SentencePiece's text back
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert tok.decode(ids) == sp.decode(ids), text


def test_the_steerlm_markers_keep_sentencepieces_dummy_prefix():
    """SentencePiece: '<extra_id_0>System' is ▁, <extra_id_0>, System... transformers' converter loses the ▁."""
    tok = hf_sp.fast_tokenizer(nemo("unigram"))
    text = "<extra_id_0>System\nHi"
    pieces = tok.convert_ids_to_tokens(tok(text, add_special_tokens=False)["input_ids"])
    assert pieces[:2] == ["▁", "<extra_id_0>"] == nemo("unigram").text_to_tokens(text)[:2]


def test_legacy_special_tokens_are_cut_out_as_nemo_cuts_them():
    tokenizer = nemo("unigram", legacy=True)
    tok = hf_sp.fast_tokenizer(tokenizer)
    assert tok.convert_tokens_to_ids(LEGACY_SPECIALS) == [tokenizer.special_token_to_id[t] for t in LEGACY_SPECIALS]
    texts = ["<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n Hello<|im_end|>", "a<|im_end|>b  c"]
    hf_sp.check_same_ids(tokenizer, tok, texts)
    assert len(tok) == tokenizer.vocab_size


def test_the_check_refuses_transformers_unmodified_conversion(monkeypatch):
    """The verification is what makes the export safe: transformers' LlamaConverter as it is (markers as added
    tokens, cut out before the dummy prefix) gives other ids on every SteerLM text, and the export refuses it."""
    import types

    from transformers.convert_slow_tokenizer import LlamaConverter

    def stock(proto, vocab_file):
        converter = hf_sp._converter_class()(types.SimpleNamespace(vocab_file=vocab_file, legacy=False,
                                                                   add_prefix_space=True), proto)
        return LlamaConverter.converted(converter)

    monkeypatch.setattr(hf_sp, "_backend", stock)
    with pytest.raises(UnsupportedModel, match="differs from NeMo's on '<extra_id_0>System"):
        hf_sp.fast_tokenizer(nemo("unigram"))


def test_what_cannot_be_converted_is_refused():
    from transformers.utils import sentencepiece_model_pb2_new as pb

    proto = pb.ModelProto()
    proto.ParseFromString(sentencepiece_model())
    proto.trainer_spec.treat_whitespace_as_suffix = True
    with pytest.raises(UnsupportedModel, match="whitespace as a suffix"):
        hf_sp._backend(proto, "unused")
    with pytest.raises(UnsupportedModel, match="not NeMo's SentencePieceTokenizer"):
        hf_sp.fast_tokenizer(object())


def test_the_known_difference_is_the_literal_names_of_control_pieces():
    """Documented in the module and README: '</s>' written in a text is the control token in transformers (as in
    every Hugging Face SentencePiece tokenizer) and its characters in SentencePiece."""
    tokenizer = nemo("unigram")
    tok = hf_sp.fast_tokenizer(tokenizer)
    text = "a </s> b"
    assert tokenizer.eos_id in tok(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.eos_id not in tokenizer.text_to_ids(text)
