"""Hugging Face export: the stock transformers classes score exported reward models as RewardScorer does.

The parity worker (tests/parallel/hf_export_parity.py) imports tiny random Llama 3 / Llama 3.1 / Nemotron models,
gives them a random head with a nonzero bias, saves and reloads the RM .nemo, exports both head modes and compares
``AutoModelForSequenceClassification`` (through its chat template, right padding and its own last-token read) with
``nemo_hs2.megatron.scorer.RewardScorer`` on 24 conversations (1-3 turns, 60-700 tokens, batches of 8 with padding).
"""

import json
import os
import sys

import pytest
from omegaconf import OmegaConf

from nemo_hs2.core.attributes import HELPSTEER2_ATTRIBUTES
from nemo_hs2.core.conversation import Conversation
from nemo_hs2.core.render import DEFAULT_SYSTEM, Renderer, steerlm_chat_template
from nemo_hs2.hf import mapping as hf
from nemo_hs2.hf import exporter as hf_export
from nemo_hs2.hf import tokenizer as hf_tokenizer
from tests.hf import exports, tiny_models
from tests.hf.exports import FAMILIES, run as _run, worker as _worker

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-4


# ------------------------------------------------------------------------------------------------ fast
def test_steerlm_chat_template_renders_the_training_text():
    tok = tiny_models.tokenizer()
    tok.chat_template = steerlm_chat_template(DEFAULT_SYSTEM)
    renderer = Renderer("steerlm", tok)
    convs = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
             [{"role": "system", "content": "Be brief.\n"}, {"role": "user", "content": " a\n"},
              {"role": "assistant", "content": "b "}, {"role": "user", "content": "c"},
              {"role": "assistant", "content": "  d\n\n"}]]
    for conv in convs:
        assert tok.apply_chat_template(conv, tokenize=False) == renderer.text(Conversation.from_messages(conv))


def _nemo_cfg(**kw):
    return OmegaConf.create({"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 96, "num_attention_heads": 4,
                             "num_query_groups": 2, "kv_channels": 16, "normalization": "rmsnorm",
                             "layernorm_epsilon": 1e-5, "activation": "fast-swiglu", "bias": False,
                             "position_embedding_type": "rope", "rotary_percentage": 1.0, "rotary_base": 500000.0,
                             "rotary_interleaved": False, "scale_positional_embedding": True,
                             "max_position_embeddings": 131072, "mcore_gpt": True, **kw})


def test_architecture_round_trips_through_the_importer_reading():
    out = hf_export.hf_causal_config(_nemo_cfg())
    assert out["architectures"] == ["LlamaForCausalLM"] and out["rope_scaling"]["rope_type"] == "llama3"
    assert hf.nemo_arch_config(out)["num_query_groups"] == 2


@pytest.mark.parametrize("change, field", [({"activation": "gelu"}, "activation"),
                                           ({"rotary_interleaved": True}, "rotary_interleaved"),
                                           ({"rotary_percentage": 0.5}, "rotary_percentage")])
def test_unrepresentable_architecture_is_refused_naming_the_field(change, field):
    with pytest.raises(hf.UnsupportedModel, match=field):
        hf_export.hf_causal_config(_nemo_cfg(**change))


def test_shards_hold_every_tensor_once_within_the_size_and_are_indexed(tmp_path):
    import torch
    from safetensors.torch import load_file

    tensors = {f"t{i}": torch.full((n,), float(i)) for i, n in enumerate([100, 100, 300, 50, 50, 10])}
    written = hf_export.write_shards(iter(tensors.items()), str(tmp_path), max_shard_bytes=800)  # fp32: 4 B each
    # t0+t1 = 800 B; t2 (1200 B) alone above the limit; t3+t4+t5 = 440 B
    assert written == {"shards": 3, "total_bytes": 610 * 4}
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    assert index["metadata"]["total_size"] == 610 * 4
    files = sorted(p.name for p in tmp_path.glob("*.safetensors"))
    assert files == [f"model-0000{i}-of-00003.safetensors" for i in (1, 2, 3)]
    assert [sorted(k for k, f in index["weight_map"].items() if f == name) for name in files] == [
        ["t0", "t1"], ["t2"], ["t3", "t4", "t5"]]
    back = {k: v for name in files for k, v in load_file(str(tmp_path / name)).items()}
    assert back.keys() == tensors.keys() and all(torch.equal(back[k], tensors[k]) for k in tensors)

    one = tmp_path / "one"
    one.mkdir()
    assert hf_export.write_shards(iter(tensors.items()), str(one), 2**30)["shards"] == 1
    assert sorted(p.name for p in one.iterdir()) == ["model.safetensors"]


def test_tokenizer_without_a_hugging_face_form_is_refused():
    from nemo.collections.common.tokenizers.bytelevel_tokenizers import ByteLevelTokenizer

    class Model:
        tokenizer = ByteLevelTokenizer()
        cfg = OmegaConf.create({"tokenizer": {"library": "tiktoken"}, "encoder_seq_length": 512})

    with pytest.raises(hf.UnsupportedModel, match="library='tiktoken'"):
        hf_tokenizer.export_tokenizer(Model())


def test_byte_level_tokenizer_gives_nemos_byte_level_ids():
    from nemo.collections.common.tokenizers.bytelevel_tokenizers import ByteLevelTokenizer

    nemo, tok = ByteLevelTokenizer(), hf_tokenizer.byte_level_tokenizer()
    texts = ["plain ascii", "<extra_id_0>System\nA chat.\n<extra_id_1>User\nHi?\n", "  two  spaces\ttab",
             "naïve café — 東京 🙂", "\x00\x01\x7f control"]
    for text in texts:
        ids = tok(text, add_special_tokens=False)["input_ids"]
        assert ids == nemo.text_to_ids(text), text
        assert tok.decode(ids) == text
    assert tok.convert_tokens_to_ids(list(hf_tokenizer.BYTE_LEVEL_SPECIALS)) == [nemo.pad_id, nemo.bos_id, nemo.eos_id]
    assert tok.eos_token_id == nemo.eos_id and len(tok) == 259


def test_exported_classifier_reads_back_as_its_family_with_the_score_as_head():
    config = {**hf_export.hf_causal_config(_nemo_cfg()), "architectures": ["LlamaForSequenceClassification"]}
    rules = {r.megatron: r.hf for r in hf.mapping_table(config)["top"]}
    assert rules["rm_head.weight"] == ("score.weight",)
    assert rules["output_layer.weight"] == ("model.embed_tokens.weight",)  # no lm_head in a classifier
    with pytest.raises(hf.UnsupportedModel, match="export.head=attributes"):
        hf_export.imported_reward_model_config(OmegaConf.create({}), {"nemo_hs2": {"head": "reward"}}, "D/config.json")


# ------------------------------------------------------------------------------------------------ parity
@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    return exports.families(tmp_path_factory)  # shared with tests/test_ecosystem.py


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", hf_export.HEADS)
def test_exported_model_scores_as_the_nemo(parity, family, head):
    _, parity = parity
    r = parity[family]
    e = r[head]
    print(f"{family} {head} ({r['template']}): reward {e['reward_diff']:.2e} attributes {e.get('attr_diff')}")
    assert r["conversations"] >= 20 and len(r["tokens"]) >= 20  # different lengths, padded in batches
    assert e["class"] == {"nemotron": "NemotronForSequenceClassification"}.get(family, "LlamaForSequenceClassification")
    assert e["same_tokens"]  # the exported chat template renders what training tokenized
    assert e["reward_diff"] <= TOL and e.get("attr_diff", 0.0) <= TOL
    # the model card's own snippet, run as written: the .nemo's scores (with the recorded bias where unfolded)
    assert e["card_reward_diff"] <= TOL and e.get("card_attr_diff", 0.0) <= TOL
    assert e["num_labels"] == (5 if head == "attributes" else 1)
    assert e["shards"] == 1 if head == "attributes" else e["shards"] > 3  # reward mode: sharded, loaded via the index
    assert max(abs(b) for b in r["bias"]) > 0.1  # the head bias is really exercised
    if family == "nemotron":
        assert e["bias_folded"]  # into the final LayerNorm1P bias: the logits are the scores
    else:  # RMSNorm has no bias and the HF score layer none: the raw logits are off by the recorded bias
        assert not e["bias_folded"] and e["raw_logit_offset"] > 1e-2
    assert parity["llama31"]["template"] == "hf_chat" and parity["llama3"]["template"] == "steerlm"
    assert parity["llama32"]["template"] == "hf_chat"  # Llama 3.2's factor-32 RoPE, tied embeddings


def _check(r, head):
    e = r[head]
    assert e["same_tokens"] and e["reward_diff"] <= TOL and e.get("attr_diff", 0.0) <= TOL, (head, r)
    assert e["card_reward_diff"] <= TOL and e.get("card_attr_diff", 0.0) <= TOL, (head, r)


@pytest.mark.slow
def test_tp2_and_pp2_trained_sources_are_merged_on_export(parity):
    """A few training steps at TP=2 (Llama 3.2: factor-32 RoPE, tied embeddings) and PP=2 (Nemotron) from the
    imported models, then export."""
    tmp, _ = parity
    nemos = []
    for family, layout, port in (("llama32", "model.tensor_model_parallel_size=2", 29941),
                                 ("nemotron", "model.pipeline_model_parallel_size=2", 29942)):
        log_dir = tmp / f"train_{family}"
        _run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port", str(port),
              os.path.join(ROOT, "examples", "train_reward_model.py"), "trainer.devices=2", layout,
              f"init.restore_from_path={tmp / family / 'base.nemo'}", "trainer.rm.max_steps=2",
              "trainer.rm.val_check_interval=2", "trainer.rm.save_interval=2", "data.demo.train_prompts=16",
              "data.demo.validation_prompts=4", f"exp_manager.explicit_log_dir={log_dir}"])
        layout_seen = json.loads((log_dir / "metrics.json").read_text())["layout"]
        assert layout_seen["tp" if "tensor" in layout else "pp"] == 2
        nemos += ["--nemo", f"{family}_trained={log_dir / 'checkpoints' / 'hs2_reward_model.nemo'}"]
    results = _worker(tmp, tmp / "trained.json", nemos)
    for name, r in results.items():
        for head in hf_export.HEADS:
            print(f"{name} {head}: reward {r[head]['reward_diff']:.2e} attributes {r[head].get('attr_diff')}")
            _check(r, head)


@pytest.mark.slow
def test_demo_rm_exports_as_gpt_neox(tmp_path_factory):
    """The default job's model (Megatron's classic GPT: LayerNorm, GELU, biases, RoPE; NeMo's byte-level tokenizer)
    is GPT-NeoX with sequential residuals: exported, scored by the stock class, and imported back."""
    _, r = exports.demo(tmp_path_factory)
    for head in hf_export.HEADS:
        print(f"demo {head}: reward {r[head]['reward_diff']:.2e} attributes {r[head].get('attr_diff')}")
        _check(r, head)
        assert r[head]["class"] == "GPTNeoXForSequenceClassification"
        assert r[head]["bias_folded"]  # into the final LayerNorm's bias: the logits are the scores
    # bytes: the longer conversations are cut to the demo's 512 positions (their start dropped, as in training)
    assert r["template"] == "steerlm" and r["conversations"] >= 20 and len(r["tokens"]) >= 10
    assert max(r["tokens"]) == 512
    rt = r["round_trip"]
    print(f"demo round trip: reward {rt['reward_diff']:.2e} attributes {rt['attr_diff']:.2e}")
    assert rt["reward_diff"] <= TOL and rt["attr_diff"] <= TOL


@pytest.mark.slow
def test_evaluating_the_export_gives_the_nemo_numbers(parity):
    """examples/evaluate_reward_model.py hf_model=D on the files the worker evaluated the .nemo on."""
    tmp, _ = parity
    nemo_out, hf_out = tmp / "llama31" / "eval_nemo", tmp / "eval_hf"
    _run([sys.executable, os.path.join(ROOT, "examples", "evaluate_reward_model.py"),
          f"hf_model={tmp / 'llama31' / 'hf_attributes'}", f"rewardbench.file={tmp / 'rb.jsonl'}",
          f"rewardbench2.file={os.path.join(ROOT, 'tests', 'data', 'rewardbench2_sample.jsonl')}",
          f"helpsteer2.file={tmp / 'hs2.jsonl'}", "helpsteer2.plots=false", f"output_dir={hf_out}"], timeout=600)
    for name, keys in (("rewardbench.json", ("overall", "sections", "rows")),
                       ("rewardbench2.json", ("overall", "subset_scores", "rows"))):
        want, got = (json.loads((d / name).read_text()) for d in (nemo_out, hf_out))
        for k in keys:  # accuracies exactly; RewardBench 2's Ties term is a raw margin, equal to the tolerance
            assert got[k] == (want[k] if k == "rows" else pytest.approx(want[k], abs=TOL)), (name, k)
    for name, field in (("rewardbench_scores.jsonl", ("reward_chosen", "reward_rejected")),):
        want, got = ([json.loads(x) for x in (d / name).read_text().splitlines()] for d in (nemo_out, hf_out))
        assert len(want) == len(got) > 10
        for a, b in zip(want, got):
            assert a["id"] == b["id"] and all(abs(a[f] - b[f]) <= TOL for f in field)
    want, got = (json.loads((d / "helpsteer2.json").read_text())["metrics"] for d in (nemo_out, hf_out))
    for k in ("mse", "pairwise_acc/reward"):
        assert got[k] == pytest.approx(want[k], abs=TOL)
    # The reward-head export (what RewardBench's own scripts would load) gives the same RewardBench result.
    from nemo_hs2.evaluation.run import run

    reward_out = tmp / "eval_hf_reward"
    run(OmegaConf.create({"hf_model": str(tmp / "llama31" / "hf_reward"), "output_dir": str(reward_out),
                          "progress": False, "rewardbench": {"file": str(tmp / "rb.jsonl")}}))
    want, got = (json.loads((d / "rewardbench.json").read_text()) for d in (nemo_out, reward_out))
    assert got["sections"] == pytest.approx(want["sections"], abs=TOL) and got["rows"] == want["rows"]


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
def test_round_trip_import_of_the_export_scores_the_same(parity, family):
    """examples/import_hf.py input=<attributes export>, then loaded with init.mode=reward_model, as RewardScorer."""
    _, results = parity
    rt = results[family]["round_trip"]
    print(f"{family} round trip: reward {rt['reward_diff']:.2e} attributes {rt['attr_diff']:.2e}")
    assert rt["reward_diff"] <= TOL and rt["attr_diff"] <= TOL


@pytest.mark.slow
def test_nemo_aligner_sentencepiece_rm_exports_and_scores_as_the_nemo(tmp_path_factory, tmp_path):
    """NVIDIA's kind of .nemo RM: NeMo-Aligner's own 9-slot regression model, Nemotron-4's architecture and
    SentencePiece tokenizer (tests/hf/aligner_sentencepiece.py), exported with head_layout=aligner_9slot."""
    source, r = exports.aligner_sentencepiece(tmp_path_factory)
    nemo = source / "aligner_sp.nemo"
    assert r["tokenizer_library"] == "sentencepiece" and r["template"] == "steerlm"
    assert r["attribute_names"] == list(HELPSTEER2_ATTRIBUTES)  # slots 4-8, by name
    # our .nemo scoring reads what NeMo-Aligner's infer computes, on the same ids
    assert r["aligner_tokens_equal"] and r["nemo_vs_aligner"] <= TOL
    print(f"sp: nemo vs NeMo-Aligner {r['nemo_vs_aligner']:.2e}, tokens {r['tokens'][0]}-{r['tokens'][-1]}")
    for head in hf_export.HEADS:
        e = r[head]
        print(f"sp {head}: reward {e['reward_diff']:.2e} attributes {e.get('attr_diff')} "
              f"vs NeMo-Aligner {e.get('aligner_diff')}")
        _check(r, head)
        assert e["class"] == "NemotronForSequenceClassification" and e["bias_folded"]
    assert r["attributes"]["aligner_diff"] <= TOL  # the export's scores are NeMo-Aligner's own
    rt = r["round_trip"]  # imported back: a .nemo with the converted (Hugging Face) tokenizer
    assert rt["reward_diff"] <= TOL and rt["attr_diff"] <= TOL
    # The command users run, with the head read by name: the same export as the worker's.
    cli = tmp_path / "cli_reward"
    _run([sys.executable, os.path.join(ROOT, "examples", "export_hf.py"), f"checkpoint={nemo}",
          f"output_dir={cli}", "head_layout=aligner_9slot", "export.head=reward"], timeout=600)
    import torch
    from safetensors.torch import load_file

    shards = sorted((source / "sp" / "hf_reward").glob("*.safetensors"))
    mine = {k: v for f in shards for k, v in load_file(f).items()}
    theirs = load_file(str(cli / "model.safetensors"))
    assert mine.keys() == theirs.keys() and all(torch.equal(mine[k], theirs[k]) for k in mine)
    assert (cli / "tokenizer.json").read_text() == (source / "sp" / "hf_reward" / "tokenizer.json").read_text()
