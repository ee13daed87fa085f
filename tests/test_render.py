"""nemo_hs2/core/render.py: the one conversation -> text -> ids path, both templates, the system prompt rule.

Expected texts are written out by hand from the formats' definitions: the SteerLM template of NeMo-Aligner's
HelpSteer2 recipe (``<extra_id_0>System``, ``<extra_id_1>User`` / ``Assistant`` headers, ``<extra_id_2>`` after the
rated response) and a Llama-3-shaped chat template built here (no hub).
"""

import json
from pathlib import Path

import pytest
from omegaconf import OmegaConf

from nemo_hs2.core.conversation import Conversation, ConversationError
from nemo_hs2.core.render import DEFAULT_SYSTEM, Renderer, system_turn
from nemo_hs2.data.build import build_datasets, make_renderer
from nemo_hs2.data.dataset import tokenize_examples
from nemo_hs2.data.rows import Example
from tests.tokenizers import LLAMA3_LIKE, tiny_tokenizer
from tests.conftest import data_config

ROOT = Path(__file__).resolve().parents[1]
MULTI_TURN = "Q1\n<extra_id_1>Assistant\nA1\n<extra_id_1>User\nQ2"


@pytest.fixture(scope="module")
def tok():
    return tiny_tokenizer()


def test_multi_turn_renders_exactly_with_roles_in_order(tok):
    conv = Conversation.from_helpsteer2(MULTI_TURN, "A2")
    assert [t.role for t in conv.turns] == ["user", "assistant", "user", "assistant"]
    assert Renderer("hf_chat", tok, "Be brief.").text(conv) == (
        "<|begin_of_text|>"
        "<|start_header_id|>system<|end_header_id|>\n\nBe brief.<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ1<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA1<|eot_id|>"
        "<|start_header_id|>user<|end_header_id|>\n\nQ2<|eot_id|>"
        "<|start_header_id|>assistant<|end_header_id|>\n\nA2<|eot_id|>"
    )
    assert Renderer("steerlm", tok, "Be brief.").text(conv) == (
        "<extra_id_0>System\nBe brief.\n<extra_id_1>User\nQ1\n<extra_id_1>Assistant\nA1\n"
        "<extra_id_1>User\nQ2\n<extra_id_1>Assistant\nA2\n<extra_id_2>")


def test_the_system_prompt_rule(tok):
    """None: the template's default (steerlm's DEFAULT_SYSTEM, no turn for hf_chat); a string, even empty, is the
    system turn; the conversation's own system turn always wins."""
    assert system_turn("steerlm", None) == DEFAULT_SYSTEM and system_turn("hf_chat", None) is None
    assert system_turn("steerlm", "") == "" and system_turn("hf_chat", "") == ""
    plain = Conversation.from_messages([{"role": "user", "content": "Hi?"}, {"role": "assistant", "content": "Hello."}])
    own = Conversation.from_messages([{"role": "system", "content": "Own."}, *plain.messages()])
    chat = "<|start_header_id|>user<|end_header_id|>\n\nHi?<|eot_id|><|start_header_id|>assistant<|end_header_id|>" \
           "\n\nHello.<|eot_id|>"
    empty_system = "<|start_header_id|>system<|end_header_id|>\n\n<|eot_id|>"
    assert Renderer("hf_chat", tok, None).text(plain) == "<|begin_of_text|>" + chat
    assert Renderer("hf_chat", tok, "").text(plain) == "<|begin_of_text|>" + empty_system + chat
    assert Renderer("hf_chat", tok, "Run's.").text(own).startswith(
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\nOwn.<|eot_id|>")
    assert Renderer("steerlm", tok, None).text(plain).startswith(f"<extra_id_0>System\n{DEFAULT_SYSTEM}\n")
    assert Renderer("steerlm", tok, "").text(plain).startswith("<extra_id_0>System\n\n<extra_id_1>User\n")
    assert Renderer("steerlm", tok, "Run's.").text(own).startswith("<extra_id_0>System\nOwn.\n<extra_id_1>User\n")


def test_reward_token_is_last_and_survives_truncation(tok):
    renderer = Renderer("hf_chat", tok, "Be brief.")
    ex = Example.rated(MULTI_TURN, "The answer is A2.", {"helpfulness": 3.0})
    full = renderer.ids(ex.conversation)
    eot = tok.convert_tokens_to_ids("<|eot_id|>")
    assert full[-1] == eot and full[0] == tok.bos_token_id
    assert full.count(tok.bos_token_id) == 1  # the template's BOS only; encode adds none
    ds, stats = tokenize_examples([ex], renderer, ["helpfulness"], max_length=30)
    assert stats.truncated == 1 and len(ds.tokens[0]) == 30
    assert ds.tokens[0].tolist() == full[-30:]
    assert tok.decode(ds.tokens[0].tolist()).endswith("\n\nThe answer is A2.<|eot_id|>")


def test_hf_chat_needs_a_hugging_face_tokenizer_with_a_template(tok):
    class Bytes:
        def text_to_ids(self, text):
            return list(text.encode())

    with pytest.raises(ValueError, match="Hugging Face tokenizer"):
        Renderer("hf_chat", Bytes())
    with pytest.raises(ValueError, match="no chat template"):
        Renderer("hf_chat", tiny_tokenizer(chat_template=None))

    class NemoLike:  # NeMo's AutoTokenizer keeps the Hugging Face tokenizer in .tokenizer
        tokenizer = tok

    assert Renderer("hf_chat", NemoLike()).hf is tok
    with pytest.raises(ValueError, match="template must be one of"):
        Renderer("chatml", tok)


def test_a_template_that_drops_the_rated_turn_is_rejected():
    generation_only = tiny_tokenizer("{% for m in messages[:-1] %}{{ m['content'] }}{% endfor %}")
    with pytest.raises(ValueError, match="last assistant turn"):
        Renderer("hf_chat", generation_only).text(Conversation.from_helpsteer2("Hi?", "Hello there."))


@pytest.mark.parametrize("messages, where", [
    ([], "empty conversation"),
    ([{"role": "user", "content": "Hi"}], "last turn must be the assistant"),
    ([{"role": "assistant", "content": "A"}], "turn 0: role 'assistant' where 'user'"),
    ([{"role": "user", "content": "Q"}, {"role": "system", "content": "S"}, {"role": "assistant", "content": "A"}],
     "turn 1: .*system turn is allowed only first"),
    ([{"role": "user", "content": "Q"}, {"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
     "turn 1: role 'user' where 'assistant'"),
    ([{"role": "tool", "content": "x"}, {"role": "assistant", "content": "A"}], "turn 0: role 'tool' is not one of"),
    ([{"role": "user", "content": 3}, {"role": "assistant", "content": "A"}], "turn 0: expected"),
    ("not a list", "expected a list"),
])
def test_conversation_rules_name_the_turn(messages, where):
    with pytest.raises(ConversationError, match=where):
        Conversation.from_messages(messages)


def test_template_choice_is_part_of_the_cache_key(tok, tmp_path):
    path = tmp_path / "rows.jsonl"
    path.write_text("".join(json.dumps({"prompt": p, "response": "A2", "helpfulness": 3}) + "\n"
                            for p in (MULTI_TURN, MULTI_TURN)))
    data = data_config("helpsteer2")
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
    data.system_prompt = ""
    _, s4 = build_datasets(data, tok, 512, progress=False)
    assert s4["train"].cache_path != s2["train"].cache_path  # an empty system turn is a different text
    with pytest.raises(ValueError, match="template must be one of"):
        make_renderer(OmegaConf.create({"template": "chatml"}), tok)
