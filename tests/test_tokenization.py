"""Whole-text tokenization, as NeMo-Aligner: training, scoring and serving give Aligner's ids on real tokenizers.

Two tokenizers are trained here with the `tokenizers` library (no hub): a byte-level BPE (GPT-2 / Llama 3 style)
and a Unigram with a Metaspace dummy prefix (SentencePiece style, as Nemotron's and Llama 2's), loaded through
NeMo's AutoTokenizer as the model loads a Hugging Face tokenizer. The reference is NeMo-Aligner 0.7.0's own
RegressionRewardModelDataset on the same rows in its "text" format. Encoding context and response apart (what
nemo_hs2 did before) gives different ids on these, which the first test shows, so the comparison can fail.
"""

import json

import pytest
from omegaconf import OmegaConf

from nemo_hs2.data.demo import demo_examples
from nemo_hs2.core.render import DEFAULT_SYSTEM, END_OF_RESPONSE, Renderer
from nemo_hs2.data.rows import Example

SYSTEM = DEFAULT_SYSTEM
# Llama 3's pre-tokenizer split (tokenizer.json of Meta-Llama-3): a newline run is one piece, so a response that
# opens with a newline merges with the header's own newline when the text is encoded whole.
LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _train(kind: str, texts, path):
    from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    if kind == "bpe":
        tok = Tokenizer(models.BPE())
        tok.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(LLAMA3_SPLIT), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=700, special_tokens=["<eos>"],
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        extra = {}
    else:
        tok = Tokenizer(models.Unigram())
        tok.pre_tokenizer = pre_tokenizers.Metaspace(replacement="\u2581", prepend_scheme="always")
        tok.decoder = decoders.Metaspace(replacement="\u2581", prepend_scheme="always")
        trainer = trainers.UnigramTrainer(vocab_size=500, special_tokens=["<eos>", "<unk>"], unk_token="<unk>")
        extra = {"unk_token": "<unk>"}
    tok.train_from_iterator(texts, trainer)
    PreTrainedTokenizerFast(tokenizer_object=tok, eos_token="<eos>", pad_token="<eos>", **extra).save_pretrained(path)
    from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer

    return AutoTokenizer(str(path), use_fast=True)


@pytest.fixture(scope="module")
def rows():
    examples = demo_examples(30, seed=7, split="validation")
    # Responses opening with a space or a newline: where BPE pieces can differ across the boundary.
    return [*examples, Example.rated("Say hi.", " Hi there.", {"helpfulness": 2.0}),
            Example.rated("Say hi.", "\nHi.", {"helpfulness": 1.0})]


def _text(r) -> str:
    """The SteerLM text of a row, written out as NeMo-Aligner's HelpSteer2 recipe formats it (single-turn rows)."""
    user = r.conversation.turns[0].content
    return (f"<extra_id_0>System\n{SYSTEM}\n<extra_id_1>User\n{user}\n<extra_id_1>Assistant\n{r.response}\n"
            f"{END_OF_RESPONSE}")


@pytest.fixture(scope="module", params=["bpe", "unigram"])
def tokenizer(request, rows, tmp_path_factory):
    texts = [_text(r) for r in rows]
    return _train(request.param, texts, tmp_path_factory.mktemp(request.param))


def _split_and_whole(tokenizer, rows):
    out = []
    for r in rows:
        text = _text(r)
        context, response = text[:text.rindex(r.response)], text[text.rindex(r.response):]
        out.append((tokenizer.text_to_ids(context) + tokenizer.text_to_ids(response), tokenizer.text_to_ids(text)))
    return out


def test_split_encoding_differs_on_real_tokenizers(tokenizer, rows):
    differ = sum(split != whole for split, whole in _split_and_whole(tokenizer, rows))
    assert differ > 0  # so the tests below would catch a return to split encoding


def _aligner_ids(tokenizer, rows, tmp_path, seq_length):
    from nemo_aligner.data.nlp.builders import build_train_valid_test_regression_rm_datasets

    jsonl = tmp_path / "aligner.jsonl"
    with open(jsonl, "w") as f:
        for r in rows:
            f.write(json.dumps({"text": _text(r),
                                "label": [-100.0] * 4 + [r.labels.get("helpfulness", -100.0)] + [-100.0] * 4}) + "\n")
    cfg = OmegaConf.create({"data": {"data_impl": "jsonl", "splits_string": None, "seq_length": seq_length,
                                     "index_mapping_dir": None}})
    prefix = OmegaConf.create({k: [str(jsonl)] for k in ("train", "validation", "test")})
    train, _, _ = build_train_valid_test_regression_rm_datasets(
        cfg=cfg, data_prefix=prefix, data_impl="jsonl", splits_string=None, train_valid_test_num_samples=[0, 0, 0],
        seq_length=seq_length, seed=1, tokenizer=tokenizer)
    return [train.encode(train.data[i]["text"])[0] for i in range(len(rows))]


def test_training_scoring_and_serving_give_aligners_ids(tokenizer, rows, tmp_path):
    from nemo_hs2.data.dataset import tokenize_examples
    from nemo_hs2.megatron.scorer import RewardScorer
    from nemo_hs2.serving import TokenScorer

    seq = 4096
    want = _aligner_ids(tokenizer, rows, tmp_path, seq)
    assert all(Renderer("steerlm", tokenizer, SYSTEM).text(r.conversation) == _text(r) for r in rows)
    ds, _ = tokenize_examples(rows, Renderer("steerlm", tokenizer, SYSTEM), ["helpfulness"], max_length=seq)
    assert [list(map(int, ds.tokens[i])) for i in range(len(rows))] == [list(w) for w in want]

    class Model:  # what RewardScorer reads of a loaded checkpoint, without building Megatron
        attributes = ("helpfulness",)
        cfg = OmegaConf.create({"system_prompt": SYSTEM, "template": "steerlm", "encoder_seq_length": seq,
                                "regression": {"reward_weights": {"helpfulness": 1.0}}})

    Model.tokenizer = tokenizer
    scorer = RewardScorer(Model())
    server = TokenScorer(scorer)
    for r, w in zip(rows, want):
        conversation = [{"role": "user", "content": r.conversation.turns[0].content},
                        {"role": "assistant", "content": r.response}]
        assert scorer.tokenize(conversation).tolist() == list(w)
        assert server.sentence_tokens(_text(r)).tolist() == list(w)
