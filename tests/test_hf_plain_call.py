"""Exported tokenizers behave like stock ones: the model card's snippet runs as written, and the plain
``model(**tokenizer(texts, padding=True, return_tensors="pt"))`` on a padded batch scores each row as the training
ids do, for every export kind: NeMo's byte-level, Hugging Face BPE (GPT-2-style; Llama-3-style with Llama 3's BOS
post-processor), GGUF-derived (SmolLM2; slow: a download) and SentencePiece.

Each kind's tokenizer goes through ``export_tokenizer`` (the exporter's own path) and is saved beside a small random
classifier of the family that kind exports as, with the exporter's model card. The weights' mapping is tested
against the ``.nemo`` in tests/test_hf_export.py; here the subject is what a consumer's call does with the tokens.
"""

from __future__ import annotations

import contextlib
import io
import re
import types

import pytest
import torch
from omegaconf import OmegaConf

from nemo_hs2.core.conversation import Conversation
from nemo_hs2.core.render import Renderer
from nemo_hs2.hf import exporter as hf_export
from nemo_hs2.hf import tokenizer as hf_tokenizer
from tests.tokenizers import as_nemo, llama3_bpe, nemo_tokenizer

ATTRIBUTES = ["helpfulness", "correctness"]
WEIGHTS = {"helpfulness": 0.7, "correctness": 0.3}
# kind -> (training template, the family it exports as); the Hugging Face kinds train with their chat template
KINDS = {"byte_level": ("steerlm", "gpt_neox"), "gpt2_bpe": ("hf_chat", "llama"),
         "llama3_bpe_bos": ("hf_chat", "llama"), "sentencepiece": ("steerlm", "nemotron"),
         "smollm2": ("hf_chat", "llama")}


def llama3_with_bos():
    """The Llama-3-style BPE with Llama 3's tokenizer.json post-processor (TemplateProcessing prepending
    <|begin_of_text|>), which makes a plain tokenizer(text) add a BOS the chat template already wrote."""
    from tokenizers import processors

    tok = llama3_bpe()
    bos = tok.convert_tokens_to_ids("<|begin_of_text|>")
    tok.backend_tokenizer.post_processor = processors.TemplateProcessing(
        single="<|begin_of_text|> $A", pair="<|begin_of_text|> $A <|begin_of_text|> $B:1",
        special_tokens=[("<|begin_of_text|>", bos)])
    assert tok("hi")["input_ids"][0] == bos  # as the real Llama 3 tokenizer does
    return as_nemo(tok), {"library": "huggingface"}


def classifier(family: str, tok, seed: int = 0):
    from transformers import AutoModelForSequenceClassification, GPTNeoXConfig, LlamaConfig, NemotronConfig

    common = dict(vocab_size=len(tok), hidden_size=32, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=64, max_position_embeddings=4096, num_labels=len(ATTRIBUTES),
                  num_key_value_heads=2, pad_token_id=tok.pad_token_id, id2label=dict(enumerate(ATTRIBUTES)),
                  problem_type="regression")
    config = {"llama": lambda: LlamaConfig(**common, architectures=["LlamaForSequenceClassification"]),
              "nemotron": lambda: NemotronConfig(**common, architectures=["NemotronForSequenceClassification"],
                                                 partial_rotary_factor=0.5),
              "gpt_neox": lambda: GPTNeoXConfig(**common, architectures=["GPTNeoXForSequenceClassification"],
                                                use_parallel_residual=False)}[family]()
    torch.manual_seed(seed)
    model = AutoModelForSequenceClassification.from_config(config).eval()
    with torch.no_grad():
        for p in model.parameters():  # sharp enough that a token more or less moves the scores well above 1e-5
            p.normal_(0.0, 0.3)
    return model


def export_dir(kind: str, directory) -> tuple[str, object, Renderer, list[float] | None]:
    tokenizer, tok_cfg = llama3_with_bos() if kind == "llama3_bpe_bos" else nemo_tokenizer(kind)
    template, family = KINDS[kind]
    cfg = OmegaConf.create({"template": template, "system_prompt": None, "encoder_seq_length": 4096,
                            "tokenizer": tok_cfg})
    tok = hf_tokenizer.export_tokenizer(types.SimpleNamespace(cfg=cfg, tokenizer=tokenizer))
    model = classifier(family, tok)
    bias = [0.5, -1.25] if family == "llama" else None  # Llama exports record the head bias the class cannot hold
    meta = {"head": "attributes", "attributes": ATTRIBUTES, "reward_weights": WEIGHTS, "template": template,
            "system_prompt": None, "score_bias": bias}
    model.config.nemo_hs2 = meta
    model.save_pretrained(directory)
    tok.save_pretrained(directory)
    (directory / "README.md").write_text(hf_export.model_card(model.config, meta, "test.nemo", str(directory)))
    return str(directory), model, Renderer(template, tokenizer), bias


def card_snippet(directory) -> str:
    (code,) = re.findall(r"```python\n(.*?)```", (directory / "README.md").read_text(), re.S)
    return code


def check_kind(kind: str, tmp_path):
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    directory, model, renderer, bias = export_dir(kind, tmp_path)
    namespace = {}
    with contextlib.redirect_stdout(io.StringIO()) as printed:
        exec(card_snippet(tmp_path), namespace)  # the card's own code, as written
    assert "tensor(" in printed.getvalue()
    conversations = namespace["conversations"]
    # reference: each conversation alone (no padding), from the training renderer's ids
    rows = [renderer.ids(Conversation.from_messages(c)) for c in conversations]
    assert len({len(r) for r in rows}) > 1  # the batch really is padded
    with torch.no_grad():
        want = torch.cat([model(input_ids=torch.tensor([r])).logits for r in rows])
    want = want + (torch.tensor(bias) if bias else 0.0)
    assert torch.allclose(namespace["scores"], want, atol=1e-5, rtol=0), kind
    expected_reward = want @ torch.tensor([WEIGHTS[a] for a in ATTRIBUTES])
    assert torch.allclose(namespace["reward"], expected_reward, atol=1e-5, rtol=0)

    # the plain call, with nothing but defaults: the keys the forward takes, the training ids, the same scores
    tok = AutoTokenizer.from_pretrained(directory)
    loaded = AutoModelForSequenceClassification.from_pretrained(directory).eval()
    texts = [tok.apply_chat_template(c, tokenize=False) for c in conversations]
    batch = tok(texts, padding=True, return_tensors="pt")
    assert sorted(batch) == ["attention_mask", "input_ids"]
    assert [tok(t)["input_ids"] for t in texts] == rows  # nothing added: no second BOS, no EOS
    with torch.no_grad():
        plain = loaded(**batch).logits
    assert torch.allclose(plain + (torch.tensor(bias) if bias else 0.0), want, atol=1e-5, rtol=0), kind


@pytest.mark.parametrize("kind", [k if k != "smollm2" else pytest.param(k, marks=pytest.mark.slow) for k in KINDS])
def test_the_model_cards_snippet_and_the_plain_call_score_as_training(kind, tmp_path):
    check_kind(kind, tmp_path)


def test_without_model_input_names_the_plain_call_fails_as_reported(tmp_path, monkeypatch):
    """Issue 26's report, reproduced: a PreTrainedTokenizerFast's default names add token_type_ids, which the
    forward rejects. The export's names are what make the plain call work."""
    from transformers import PreTrainedTokenizerFast

    monkeypatch.setattr("nemo_hs2.hf.sentencepiece.MODEL_INPUT_NAMES", PreTrainedTokenizerFast.model_input_names)
    directory, model, _, _ = export_dir("byte_level", tmp_path)
    with pytest.raises(TypeError, match="token_type_ids"):
        exec(card_snippet(tmp_path), {})
