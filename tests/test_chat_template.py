"""data.template=hf_chat (nemo_hs2/data/chat_template.py) with a tiny tokenizer built here (no hub)."""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_hs2.data.build import build_datasets, make_formatter
from nemo_hs2.data.chat_template import ChatTemplateFormat, chat_messages
from nemo_hs2.data.dataset import tokenize_examples
from nemo_hs2.data.examples import Example

ROOT = Path(__file__).resolve().parents[1]
SPECIAL = ["<|begin_of_text|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]
# The shape of Llama 3's template, without its date and tool-calling preamble.
LLAMA3_LIKE = (
    "{{ bos_token }}"
    "{% for m in messages %}"
    "<|start_header_id|>{{ m['role'] }}<|end_header_id|>\n\n{{ m['content'] | trim }}<|eot_id|>"
    "{% endfor %}"
    "{% if add_generation_prompt %}<|start_header_id|>assistant<|end_header_id|>\n\n{% endif %}"
)
MULTI_TURN = "Q1\n<extra_id_1>Assistant\nA1\n<extra_id_1>User\nQ2"


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


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_multi_turn_renders_exactly_with_roles_in_order(tok):
    text = ChatTemplateFormat(tok, system="Be brief.").render(MULTI_TURN, "A2")
    assert text == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ1<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ2<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA2<|eot_id|>"
    )
    assert "<extra_id" not in text
    roles = [m["role"] for m in chat_messages(MULTI_TURN, "A2")]
    assert roles == ["user", "assistant", "user", "assistant"]  # no system turn unless asked; never doubled


def test_single_turn_without_system(tok):
    assert ChatTemplateFormat(tok).render("Hi?", "Hello.") == (
        "<|begin_of_text|><|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nHello.<|eot_id|>")


def test_reward_token_is_last_and_survives_truncation(tok):
    fmt = ChatTemplateFormat(tok, system="Be brief.")
    ex = Example(MULTI_TURN, "The answer is A2.", {"helpfulness": 3.0})
    full = fmt.ids(ex)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert full[-1] == eot and full[0] == tok.bos_token_id
    assert full.count(tok.bos_token_id) == 1  # the template's BOS only; encode adds none
    ds, stats = tokenize_examples([ex], tok, ["helpfulness"], max_length=30, formatter=fmt)
    assert stats.truncated == 1 and len(ds.tokens[0]) == 30
    assert ds.tokens[0].tolist() == full[-30:]
    assert tok.decode(ds.tokens[0].tolist()).endswith("\n\nThe answer is A2.<|eot_id|>")


def test_hf_tokenizer_is_required(tok):
    class Bytes:
        def text_to_ids(self, text):
            return list(text.encode())

    with pytest.raises(ValueError, match="Hugging Face tokenizer"):
        ChatTemplateFormat(Bytes())
    with pytest.raises(ValueError, match="no chat template"):
        ChatTemplateFormat(tiny_tokenizer(chat_template=None))

    class NemoLike:  # NeMo's AutoTokenizer keeps the Hugging Face tokenizer in .tokenizer
        tokenizer = tok

    assert ChatTemplateFormat(NemoLike()).hf is tok


def test_a_template_that_drops_the_rated_turn_is_rejected():
    generation_only = tiny_tokenizer("{% for m in messages[:-1] %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ValueError, match="last assistant turn"):
        ChatTemplateFormat(generation_only).render("Hi?", "Hello there.")


def test_template_choice_is_part_of_the_cache_key(tok, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": "A2", "helpfulness": 3}) + "\n"
                            for p in (MULTI_TURN, MULTI_TURN)))
    data = OmegaConf.load(ROOT / "conf" / "data" / "helpsteer2.yaml")
    data.update({"train_file": str(path), "validation_file": str(path), "cache_dir": str(tmp_path / "c"),
                 "attributes": ["helpfulness"], "seq_length": 512})
    steerlm, s1 = build_datasets(data, tok, 512, progress=False)
    data.template = "hf_chat"
    chat, s2 = build_datasets(data, tok, 512, progress=False)
    assert s1["train"].cache_path != s2["train"].cache_path and not s2["train"].cache_hit
    assert tok.decode(chat["train"].tokens[0].tolist()).endswith("assistant<|end_header_id|>\n\nA2<|eot_id|>")
    assert tok.decode(steerlm["train"].tokens[0].tolist()).endswith("A2\n<extra_id_2>")
    tok.chat_template = LLAMA3_LIKE.replace("\n\n", "\n")
    _, s3 = build_datasets(data, tok, 512, progress=False)
    assert s3["train"].cache_path != s2["train"].cache_path
    tok.chat_template = LLAMA3_LIKE
    with pytest.raises(ValueError, match="data.template"):
        make_formatter(OmegaConf.create({"template": "chatml"}), tok)


def test_inference_messages_render_as_training_rows(tok):
    fmt = ChatTemplateFormat(tok, system="Be brief.")
    messages = chat_messages(MULTI_TURN, "A2", "Be brief.")
    assert fmt.render_messages(messages) == fmt.render(MULTI_TURN, "A2")
    with pytest.raises(ValueError, match="last message"):
        fmt.render_messages(messages[:-1])
