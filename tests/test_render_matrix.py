"""One conversation, the same ids everywhere: training == scorer == server (chat and text routes) == the exported
tokenizer's chat template, for every template x tokenizer kind x data source.

Rows are written in the released datasets' own formats and read by the training readers; the conversations the
scorer, the server and the export get are written here by hand from the same raw fields, as a client would send
them, so the comparison also covers how each reader turns its format into turns. Mutations of the training path
(the old context / response split encoding, the old empty-system asymmetry) must make it fail: see the last tests.
"""

from __future__ import annotations

import functools
import json
import types
from pathlib import Path

import numpy as np
import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nemo_hs2.core.resolvers import register_resolvers
from tests.tokenizers import CHAT_KINDS, KINDS, nemo_tokenizer

ROOT = Path(__file__).resolve().parents[1]
# (template, system_prompt); hf_chat needs a Hugging Face tokenizer with a chat template.
TEMPLATES = [("steerlm", None), ("steerlm", ""), ("hf_chat", None), ("hf_chat", "Be brief."), ("hf_chat", "")]
SOURCES = ("helpsteer2", "helpsteer2_multi_turn", "helpsteer2_preference", "helpsteer3_system")

# HelpSteer2 train.jsonl.gz fields (dataset card of nvidia/HelpSteer2): prompt, response and the five 0-4 scores.
# Multi-turn prompts embed earlier turns as "\n<extra_id_1>Assistant\n" / "\n<extra_id_1>User\n" (same card).
HS2_ROW = {"prompt": "What's 12 + 30?  Explain.", "response": "It is 42: 12 + 30 = 42.", "helpfulness": 3,
           "correctness": 4, "coherence": 4, "complexity": 1, "verbosity": 1}
HS2_MULTI = {"prompt": "How do I bake bread?\n<extra_id_1>Assistant\nMix flour, water and yeast.\n"
                       "<extra_id_1>User\nHow long should it rise?",
             "response": " About 2 hours, until doubled.", "helpfulness": 4, "correctness": 4, "coherence": 4,
             "complexity": 1, "verbosity": 2}
# preference/preference.jsonl.gz (HelpSteer2-Preference): split is "train" or "val"; negative strength = response_1.
HS2P_ROW = {"split": "train", "prompt": "Name a prime number.", "response_1": "7", "response_2": "Nine is prime.",
            "preference_strength": -3, "preference_statement": "@Response 1 is better.",
            "preference_elaboration": "Nine is not prime.", "three_most_similar_preferences": [],
            "all_preferences_unprocessed": [-3, -3, -2]}
# HelpSteer3-Preference train.jsonl.gz (nvidia/HelpSteer3, config preference): context turns end with the user.
HS3_ROW = {"domain": "General", "language": "english",
           "context": [{"role": "system", "content": "Answer in short steps."},
                       {"role": "user", "content": "I need some help."},
                       {"role": "assistant", "content": "Of course. What with?"},
                       {"role": "user", "content": "Making tea  with\tloose leaves."}],
           "response1": "Boil water, steep 3 minutes, strain.", "response2": "Use a bag.",
           "overall_preference": -2, "individual_preference": [{"score": -2, "reasoning": "More complete."}]}


def _messages(source: str) -> list[list[dict]]:
    """The conversations a client sends for each row of a source (the rows' rated responses, in file order)."""
    user = lambda c: {"role": "user", "content": c}  # noqa: E731
    bot = lambda c: {"role": "assistant", "content": c}  # noqa: E731
    if source == "helpsteer2":
        return [[user(HS2_ROW["prompt"]), bot(HS2_ROW["response"])]]
    if source == "helpsteer2_multi_turn":
        return [[user("How do I bake bread?"), bot("Mix flour, water and yeast."), user("How long should it rise?"),
                 bot(HS2_MULTI["response"])]]
    if source == "helpsteer2_preference":
        return [[user(HS2P_ROW["prompt"]), bot(HS2P_ROW[r])] for r in ("response_1", "response_2")]
    return [[*HS3_ROW["context"], bot(HS3_ROW[r])] for r in ("response1", "response2")]


def _write(tmp: Path, source: str) -> list[str]:
    """The file(s) and the Hydra overrides that make training read them."""
    if source in ("helpsteer2", "helpsteer2_multi_turn"):
        path = tmp / "rows.jsonl"
        path.write_text(json.dumps(HS2_ROW if source == "helpsteer2" else HS2_MULTI) + "\n")
        return ["data=helpsteer2", f"data.train_file={path}", f"data.validation_file={path}"]
    if source == "helpsteer2_preference":
        path = tmp / "preference.jsonl"
        path.write_text(json.dumps(HS2P_ROW) + "\n" + json.dumps({**HS2P_ROW, "split": "val"}) + "\n")
        return ["data=helpsteer2_preference", f"data.preference_file={path}"]
    path = tmp / "hs3.jsonl"
    path.write_text(json.dumps(HS3_ROW) + "\n")
    return ["data=helpsteer3_preference", f"data.train_file={path}", f"data.validation_file={path}"]


@functools.lru_cache(maxsize=None)
def _tokenizer(kind: str):
    return nemo_tokenizer(kind)


def _train_config(overrides: list[str]):
    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=overrides)
    return cfg


def training_ids(tmp: Path, source: str, template: str, system, tokenizer) -> list[list[int]]:
    """Through the training data path: the real reader, the renderer training builds, the tokenized dataset."""
    from nemo_hs2.data.build import build_run_data

    loss = "regression" if source.startswith("helpsteer2") and "preference" not in source else "scaled_bt"
    overrides = [*_write(tmp, source), f"data.template={template}", "data.cache_dir=null",
                 "model.encoder_seq_length=4096", "model.global_batch_size=1", "model.micro_batch_size=1",
                 f"model.regression.loss_func={loss}", "++data.system_prompt=" + ("null" if system is None else
                                                                                  repr(system))]
    cfg = _train_config(overrides)
    data = build_run_data(cfg.data, tokenizer, 1, loss, progress=False)
    ds = data.datasets["train"]
    rows = ds.rows if hasattr(ds, "strengths") else ds
    return [rows.tokens[i].tolist() for i in range(len(rows))]


def _model(tokenizer, tok_cfg: dict, template: str, system):
    """What the scorer, the server and the exporter read of a loaded model: its config and tokenizer."""
    cfg = OmegaConf.create({"template": template, "system_prompt": system, "encoder_seq_length": 4096,
                            "tokenizer": tok_cfg, "regression": {"reward_weights": {"helpfulness": 1.0}}})
    return types.SimpleNamespace(cfg=cfg, tokenizer=tokenizer, attributes=("helpfulness",))


def scorer_and_server_ids(model, conversations) -> tuple[list, list, list]:
    from nemo_hs2.megatron.scorer import RewardScorer
    from nemo_hs2.serving import RewardService, ServerConfig, TokenScorer

    scorer = RewardScorer(model, max_length=4096)
    service = RewardService(TokenScorer(scorer), ServerConfig())
    scored = [scorer.tokenize(c).tolist() for c in conversations]
    served = [r.tolist() for r in service.prepare_score({"conversations": json.loads(json.dumps(conversations))}).rows]
    return scored, served, scorer


def exported(model):
    """The exported tokenizer (every kind exports; a refusal fails the cell)."""
    from nemo_hs2.hf.tokenizer import export_tokenizer

    return export_tokenizer(model)


def sentence_ids(scorer, texts: list[str]) -> list[list[int]]:
    """NeMo-Aligner's text route (KServe ``sentences``, BYTES): the client formatted the text."""
    from nemo_hs2.serving import RewardService, ServerConfig, TokenScorer

    service = RewardService(TokenScorer(scorer), ServerConfig())
    header = {"inputs": [{"name": "sentences", "datatype": "BYTES", "shape": [len(texts), 1],
                          "data": [[t] for t in texts]}]}
    return [r.tolist() for r in service.prepare_infer(header, b"").rows]


def cells():
    for kind in KINDS:
        for template, system in TEMPLATES:
            if template == "hf_chat" and kind not in CHAT_KINDS:
                continue
            for source in SOURCES:
                marks = [pytest.mark.slow] if kind == "smollm2" else []
                yield pytest.param(kind, template, system, source, marks=marks,
                                   id=f"{kind}-{template}-{'none' if system is None else repr(system)}-{source}")


def check_cell(tmp: Path, kind: str, template: str, system, source: str) -> dict:
    tokenizer, tok_cfg = _tokenizer(kind)
    model = _model(tokenizer, tok_cfg, template, system)
    conversations = _messages(source)
    trained = training_ids(tmp, source, template, system, tokenizer)
    scored, served, scorer = scorer_and_server_ids(model, conversations)
    assert trained == scored, "training ids != scorer ids"
    assert served == scored, "server /score ids != scorer ids"
    tok = exported(model)
    if tok is not None:
        texts = [tok.apply_chat_template(c, tokenize=False) for c in conversations]
        assert [list(tok.apply_chat_template(c, tokenize=True)) for c in conversations] == scored, \
            "exported chat template ids != scorer ids"
        assert sentence_ids(scorer, texts) == scored, "server sentences ids != scorer ids"
    return {"rows": len(trained), "tokens": int(np.sum([len(r) for r in trained])), "export": tok is not None}


@pytest.mark.parametrize("kind, template, system, source", list(cells()))
def test_one_conversation_same_ids_everywhere(tmp_path, kind, template, system, source):
    result = check_cell(tmp_path, kind, template, system, source)
    assert result["export"]  # every kind exports, SentencePiece (converted, nemo_hs2.hf.sentencepiece) included


# ------------------------------------------------------------------------------------------------ mutations
def _mutated_cells(tmp: Path, monkeypatch, patch) -> list[str]:
    """The cells (fast kinds) that fail once ``patch`` changes the training path only."""
    import nemo_hs2.data.build as build

    patch(monkeypatch, build)
    failed = []
    for kind in KINDS[:-1]:
        for template, system in TEMPLATES:
            if template == "hf_chat" and kind not in CHAT_KINDS:
                continue
            for source in SOURCES:
                (tmp / kind / template / str(system) / source).mkdir(parents=True)
                try:
                    check_cell(tmp / kind / template / str(system) / source, kind, template, system, source)
                except AssertionError:
                    failed.append(f"{kind}-{template}-{system!r}-{source}")
    return failed


def test_the_matrix_fails_when_training_encodes_context_and_response_apart(tmp_path, monkeypatch):
    """Before issue 24, HelpSteer3 rows were encoded as encode(context) + encode(response)."""
    from nemo_hs2.core.render import END_OF_RESPONSE, Renderer

    class SplitEncoding(Renderer):
        def ids(self, conversation):
            text = self.text(conversation)
            at = text.rfind(conversation.response)
            return self.encode(text[:at]) + self.encode(text[at:])

    def patch(mp, build):
        mp.setattr(build, "make_renderer", lambda data_cfg, tok: SplitEncoding(
            data_cfg.get("template") or "steerlm", tok, data_cfg.get("system_prompt")))

    failed = _mutated_cells(tmp_path, monkeypatch, patch)
    assert END_OF_RESPONSE  # the SteerLM response ends with it, so the split point is inside the text
    # SentencePiece's dummy prefix makes every steerlm cell differ; BPE merges across the boundary some others.
    assert any(f.startswith("sentencepiece-steerlm") for f in failed), failed
    assert len([f for f in failed if f.startswith("sentencepiece-steerlm")]) == 2 * len(SOURCES), failed


def test_the_matrix_fails_when_training_drops_an_empty_system_prompt(tmp_path, monkeypatch):
    """Before issue 24, training dropped an empty hf_chat system prompt that scoring, serving and export added."""
    from nemo_hs2.core.render import Renderer

    def patch(mp, build):
        mp.setattr(build, "make_renderer", lambda data_cfg, tok: Renderer(
            data_cfg.get("template") or "steerlm", tok, data_cfg.get("system_prompt") or None))

    failed = _mutated_cells(tmp_path, monkeypatch, patch)
    empty_hf = {f"{k}-hf_chat-''-{s}" for k in CHAT_KINDS[:-1] for s in SOURCES if s != "helpsteer3_system"}
    assert empty_hf <= set(failed), sorted(set(failed) ^ empty_hf)
