"""Hugging Face export: the stock transformers classes score exported reward models as RewardScorer does.

The parity worker (tests/parallel/hf_export_parity.py) imports tiny random Llama 3 / Llama 3.1 / Nemotron models,
gives them a random head with a nonzero bias, saves and reloads the RM .nemo, exports both head modes and compares
``AutoModelForSequenceClassification`` (through its chat template, right padding and its own last-token read) with
``nemo_hs2.inference.RewardScorer`` on 24 conversations (1-3 turns, 60-700 tokens, batches of 8 with padding).
"""

import json
import os
import subprocess
import sys

import pytest
from omegaconf import OmegaConf

from nemo_hs2.data.template import DEFAULT_SYSTEM
from nemo_hs2.inference import conversation_to_text
from nemo_hs2.models import hf, hf_export
from tests.hf import tiny_models

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "parallel", "hf_export_parity.py")
TOL = 1e-4
FAMILIES = ("llama3", "llama31", "nemotron")


# ------------------------------------------------------------------------------------------------ fast
def test_steerlm_chat_template_renders_the_training_text():
    tok = tiny_models.tokenizer()
    tok.chat_template = hf_export.steerlm_chat_template(DEFAULT_SYSTEM)
    convs = [[{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}],
             [{"role": "system", "content": "Be brief.\n"}, {"role": "user", "content": " a\n"},
              {"role": "assistant", "content": "b "}, {"role": "user", "content": "c"},
              {"role": "assistant", "content": "  d\n\n"}]]
    for conv in convs:
        assert tok.apply_chat_template(conv, tokenize=False) == "".join(conversation_to_text(conv))


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


def test_byte_level_tokenizer_is_refused():
    class Model:
        tokenizer = object()
        cfg = OmegaConf.create({"tokenizer": {"library": "byte-level"}})

    with pytest.raises(hf.UnsupportedModel, match="byte-level tokenizer has no Hugging Face counterpart"):
        hf_export.export_tokenizer(Model())


# ------------------------------------------------------------------------------------------------ parity
@pytest.fixture(scope="module")
def parity(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("export")
    out = tmp / "parity.json"
    cmd = [sys.executable, WORKER, "--out", str(out), "--tmp", str(tmp), *[a for f in FAMILIES for a in ("--family", f)],
           "--hf-chat", "llama31"]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    return json.loads(out.read_text())


@pytest.mark.slow
@pytest.mark.parametrize("family", FAMILIES)
@pytest.mark.parametrize("head", hf_export.HEADS)
def test_exported_model_scores_as_the_nemo(parity, family, head):
    r = parity[family]
    e = r[head]
    print(f"{family} {head} ({r['template']}): reward {e['reward_diff']:.2e} attributes {e.get('attr_diff')}")
    assert r["conversations"] >= 20 and len(r["tokens"]) >= 20  # different lengths, padded in batches
    assert e["class"] == {"nemotron": "NemotronForSequenceClassification"}.get(family, "LlamaForSequenceClassification")
    assert e["same_tokens"]  # the exported chat template renders what training tokenized
    assert e["reward_diff"] <= TOL and e.get("attr_diff", 0.0) <= TOL
    assert e["num_labels"] == (5 if head == "attributes" else 1)
    assert max(abs(b) for b in r["bias"]) > 0.1  # the head bias is really exercised
    if family == "nemotron":
        assert e["bias_folded"]  # into the final LayerNorm1P bias: the logits are the scores
    else:  # RMSNorm has no bias and the HF score layer none: the raw logits are off by the recorded bias
        assert not e["bias_folded"] and e["raw_logit_offset"] > 1e-2
    assert parity["llama31"]["template"] == "hf_chat" and parity["llama3"]["template"] == "steerlm"
