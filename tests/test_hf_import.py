"""Hugging Face import: architecture from config.json, refusals, and parity with transformers at TP1 / TP2 / PP2.

The parity check writes a tiny random-init model of each family with ``save_pretrained`` (tests/hf/tiny_models.py),
imports it with the importer behind ``examples/import_hf.py`` (same Hydra config, ``conf/import_hf.yaml``), starts a
run from the ``.nemo`` as training does (default preset, ``init.restore_from_path``) and compares the backbone's
final hidden state and the LM logits with transformers' own forward, in fp32 over gloo.
"""

import json
import os
import subprocess
import sys

import pytest
import torch
from omegaconf import OmegaConf

from nemo_hs2.megatron import checkpoint_config
from nemo_hs2.hf import mapping as hf
from tests.hf import tiny_models
from tests.parallel.torchrun_io import torchrun as launch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "parallel", "hf_parity.py")
TOL = 1e-4
HF_FILES = ["config.json", "generation_config.json", "model.safetensors", "special_tokens_map.json",
            "tokenizer.json", "tokenizer_config.json"]


# ------------------------------------------------------------------------------------------------ fast
def _llama(**kw):
    return {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64, "intermediate_size": 96,
            "num_attention_heads": 4, "num_key_value_heads": 2, "rms_norm_eps": 1e-5, "rope_theta": 500000.0,
            "hidden_act": "silu", "max_position_embeddings": 8192, "vocab_size": 300, **kw}


def test_llama_architecture_comes_from_the_config():
    arch = hf.nemo_arch_config(_llama(head_dim=32, tie_word_embeddings=True,
                                      rope_scaling=dict(tiny_models.LLAMA31_SCALING)))
    assert arch["kv_channels"] == 32 and arch["num_query_groups"] == 2 and arch["ffn_hidden_size"] == 96
    assert arch["share_embeddings_and_output_weights"] and arch["scale_positional_embedding"]
    assert arch["normalization"] == "rmsnorm" and arch["activation"] == "fast-swiglu" and arch["rotary_base"] == 5e5


@pytest.mark.parametrize("change, field", [
    ({"architectures": ["MistralForCausalLM"]}, "MistralForCausalLM"),
    ({"hidden_act": "gelu"}, "hidden_act"),
    ({"attention_bias": True}, "mlp_bias"),
    ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0, "original_max_position_embeddings": 8192}}, "yarn"),
    ({"rope_scaling": {"type": "linear", "factor": 2.0}}, "rope_scaling"),
    ({"rope_scaling": {**tiny_models.LLAMA31_SCALING, "low_freq_factor": None}}, "low_freq_factor"),
    ({"rope_scaling": {**tiny_models.LLAMA31_SCALING, "high_freq_factor": 0.5}}, "high_freq_factor"),
])
def test_unsupported_configs_are_refused_naming_the_field(change, field):
    with pytest.raises(hf.UnsupportedModel, match=field):
        hf.nemo_arch_config(_llama(**change), "x/config.json")


def test_any_llama3_rope_scaling_is_read_with_its_parameters():
    """Llama 3.2's factor 32 (and any other llama3 parameters) is kept, not refused or replaced by Llama 3.1's."""
    custom = {"rope_type": "llama3", "factor": 4.0, "low_freq_factor": 2.0, "high_freq_factor": 8.0,
              "original_max_position_embeddings": 2048}
    for scaling in (tiny_models.LLAMA31_SCALING, tiny_models.LLAMA32_SCALING, custom):
        arch = hf.nemo_arch_config(_llama(rope_scaling=dict(scaling), max_position_embeddings=131072))
        assert arch["scale_positional_embedding"] is True
        assert arch["rope_scaling"] == {k: v for k, v in scaling.items() if k != "rope_type"}
    assert hf.nemo_arch_config(_llama())["rope_scaling"] is None


# transformers 5.25's LlamaConfig(...).save_pretrained writes no rope_theta / rope_scaling, only this.
TRANSFORMERS5_ROPE = {"rope_parameters": {"factor": 32.0, "high_freq_factor": 4.0, "low_freq_factor": 1.0,
                                          "original_max_position_embeddings": 8192, "rope_theta": 500000.0,
                                          "rope_type": "llama3"}}


def test_a_transformers5_config_reads_as_its_transformers4_form():
    four = _llama(rope_scaling=dict(tiny_models.LLAMA32_SCALING), max_position_embeddings=131072)
    five = {k: v for k, v in four.items() if k not in ("rope_theta", "rope_scaling")} | TRANSFORMERS5_ROPE
    assert hf.nemo_arch_config(five) == hf.nemo_arch_config(four)
    assert hf.nemo_arch_config(five)["rotary_base"] == 500000.0  # not the 10000 default a missing rope_theta gives
    nemotron = {"architectures": ["NemotronForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64,
                "intermediate_size": 128, "num_attention_heads": 4, "hidden_act": "relu2", "norm_eps": 1e-5,
                "max_position_embeddings": 4096, "vocab_size": 300,
                "rope_parameters": {"partial_rotary_factor": 0.5, "rope_theta": 20000.0, "rope_type": "default"}}
    arch = hf.nemo_arch_config(nemotron)
    assert arch["rotary_percentage"] == 0.5 and arch["rotary_base"] == 20000.0 and arch["rope_scaling"] is None


@pytest.mark.parametrize("change, field", [
    ({"use_parallel_residual": True}, "use_parallel_residual"),  # Pythia's layers: not Megatron's GPT
    ({"attention_bias": False}, "attention_bias"),
    ({"hidden_act": "gelu_new"}, "hidden_act"),
])
def test_gpt_neox_is_megatrons_classic_gpt_or_refused(change, field):
    cfg = {"architectures": ["GPTNeoXForCausalLM"], "num_hidden_layers": 2, "hidden_size": 64,
           "intermediate_size": 128, "num_attention_heads": 4, "hidden_act": "gelu", "rotary_pct": 0.25,
           "rotary_emb_base": 10000, "layer_norm_eps": 1e-5, "use_parallel_residual": False, "attention_bias": True,
           "max_position_embeddings": 2048, "vocab_size": 300}
    arch = hf.nemo_arch_config(cfg)
    assert (arch["normalization"], arch["activation"], arch["bias"]) == ("layernorm", "gelu", True)
    assert arch["num_query_groups"] == 4 and arch["kv_channels"] == 16 and arch["rotary_percentage"] == 0.25
    with pytest.raises(hf.UnsupportedModel, match=field):
        hf.nemo_arch_config({**cfg, **change}, "x/config.json")


def test_importer_refuses_an_unknown_architecture_before_loading_anything(tmp_path):
    from nemo_hs2.hf.importer import run

    (tmp_path / "config.json").write_text(json.dumps({"architectures": ["GPT2LMHeadModel"]}))
    cfg = OmegaConf.create({"input": str(tmp_path), "input_gguf": None, "output": str(tmp_path.parent / "o.nemo")})
    with pytest.raises(hf.UnsupportedModel, match="GPT2LMHeadModel"):
        run(cfg)
    assert sorted(os.listdir(tmp_path)) == ["config.json"]  # the HF directory is never written


def test_qkv_and_gate_up_mappings_invert():
    arch = hf.Arch(heads=8, groups=2, head_dim=4)
    q, k, v = torch.randn(32, 16), torch.randn(8, 16), torch.randn(8, 16)
    fused = hf._qkv([q, k, v], arch)
    # per query group: 4 q heads, then its k head, then its v head
    assert torch.equal(fused[:16], q[:16]) and torch.equal(fused[16:20], k[:4]) and torch.equal(fused[20:24], v[:4])
    assert all(torch.equal(a, b) for a, b in zip(hf._qkv_split(fused, arch), (q, k, v)))
    gate, up = torch.randn(6, 4), torch.randn(6, 4)
    assert all(torch.equal(a, b) for a, b in zip(hf._gate_up_split(hf._gate_up([gate, up], arch), arch), (gate, up)))


SAVED = OmegaConf.create({"num_layers": 80, "hidden_size": 8192, "ffn_hidden_size": 28672, "num_attention_heads": 64,
                          "num_query_groups": 8, "kv_channels": 128, "normalization": "rmsnorm",
                          "layernorm_epsilon": 1e-5, "activation": "fast-swiglu", "bias": False,
                          "position_embedding_type": "rope", "rotary_percentage": 1.0, "rotary_base": 500000,
                          "scale_positional_embedding": False, "share_embeddings_and_output_weights": False,
                          "max_position_embeddings": 8192, "mcore_gpt": True,
                          "tokenizer": {"library": "huggingface", "type": "/tmp/tok", "hf_files": {"a": "b"}}})


def _run_model(preset="tiny", overrides=()):
    from hydra import compose, initialize_config_dir

    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        return compose(config_name="train_reward_model", overrides=[f"model={preset}", *overrides]).model


def test_default_preset_does_not_spoil_the_checkpoint_architecture():
    run = _run_model(overrides=["model.tensor_model_parallel_size=2", "model.encoder_seq_length=4096"])
    out = checkpoint_config.resolve(run, SAVED, "ckpt.nemo")
    merged = OmegaConf.merge(SAVED, out)
    assert merged.num_layers == 80 and merged.hidden_size == 8192 and merged.normalization == "rmsnorm"
    assert merged.tokenizer.library == "huggingface" and merged.tokenizer.hf_files == {"a": "b"}
    assert merged.tensor_model_parallel_size == 2 and merged.encoder_seq_length == 4096  # not architecture
    assert merged.optim.lr == run.optim.lr


def test_explicit_contradiction_is_an_error_naming_the_field():
    run = _run_model(overrides=["model.num_layers=4"])
    with pytest.raises(ValueError, match=r"model.num_layers=4 contradicts the checkpoint ckpt.nemo \(num_layers=80\)"):
        checkpoint_config.resolve(run, SAVED, "ckpt.nemo", explicit_keys={"num_layers"})
    ok = _run_model(overrides=["model.num_layers=80"])  # agreeing is fine
    assert "num_layers" not in checkpoint_config.resolve(ok, SAVED, "ckpt.nemo", explicit_keys={"num_layers"})
    run = _run_model(overrides=["model.tokenizer.library=sentencepiece"])
    with pytest.raises(ValueError, match="model.tokenizer.library"):
        checkpoint_config.resolve(run, SAVED, "ckpt.nemo", explicit_keys={"tokenizer.library"})


def test_a_chosen_gpu_preset_must_match_the_checkpoint():
    same = checkpoint_config.resolve(_run_model("llama3_70b"), SAVED, "ckpt.nemo", preset_chosen=True)
    assert "num_layers" not in same and "tokenizer" not in same
    with pytest.raises(ValueError, match="scale_positional_embedding"):  # a Llama 3 checkpoint under the 3.1 preset
        checkpoint_config.resolve(_run_model("llama3_1_70b"), SAVED, "ckpt.nemo", preset_chosen=True)
    with pytest.raises(ValueError, match="model.num_layers=32"):
        checkpoint_config.resolve(_run_model("nemotron4_15b"), SAVED, "ckpt.nemo", preset_chosen=True)


def test_sequence_length_is_capped_by_the_checkpoint_positions():
    run = _run_model(overrides=["model.encoder_seq_length=16384"])
    with pytest.raises(ValueError, match="encoder_seq_length=16384 exceeds .*max_position_embeddings=8192"):
        checkpoint_config.resolve(run, SAVED, "ckpt.nemo")


# ------------------------------------------------------------------------------------------------ parity
def torchrun(nproc, args, out, port):
    return launch(WORKER, nproc, args, out, port)


@pytest.fixture(scope="module")
def imported(tmp_path_factory):
    """Every family written, imported and checked at TP=PP=1 in one launch; returns its results and model args."""
    tmp = tmp_path_factory.mktemp("hf")
    models = []
    for i, family in enumerate(tiny_models.FAMILIES):
        hf_dir = tiny_models.write(family, str(tmp / f"hf_{family}"), seed=i)
        models += ["--model", f"{family}={tmp / (family + '.nemo')}:{hf_dir}"]
    # One family through the command line; the others through the same importer and config inside the TP=1
    # launch (each separate import would cost a NeMo start-up).
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    proc = subprocess.run([sys.executable, "examples/import_hf.py", f"input={tmp / 'hf_llama3'}",
                           f"output={tmp / 'llama3.nemo'}"], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-4000:]
    assert sorted(os.listdir(tmp / "hf_llama3")) == sorted(HF_FILES)  # the HF directory is never written
    results = torchrun(1, ["--import-first", *models], tmp / "tp1.json", 29811)
    return tmp, models, results


def check(results, layout):
    seen = {}
    for rank in results:
        for family, r in rank.items():
            if "hidden" in r:  # last pipeline stage
                seen[family] = r
    assert sorted(seen) == sorted(tiny_models.FAMILIES)
    for family, r in seen.items():
        print(f"{layout} {family}: hidden {r['hidden']:.2e} logits {r['logits']:.2e}")
        assert r["hidden"] <= TOL and r["logits"] <= TOL, (layout, family, r)
        assert r["tokenizer_eos"] == 2  # <|im_end|>, from the packed tokenizer
    assert seen["llama31"]["arch"]["scale_positional_embedding"] is True
    # Llama 3.2: its own factor (32) recorded and applied, and the tied embedding read
    assert seen["llama32"]["rope_scaling"]["factor"] == 32.0 and seen["llama32"]["arch"]["scale_positional_embedding"]
    assert seen["llama31"]["rope_scaling"]["factor"] == 8.0 and seen["llama3"]["rope_scaling"] is None
    assert seen["nemotron"]["arch"]["normalization"] == "layernorm1p"
    assert seen["nemotron"]["arch"]["rotary_percentage"] == 0.5
    return seen


@pytest.mark.slow
def test_tp1_matches_transformers(imported):
    _, _, results = imported
    seen = check(results, "tp1")
    assert all(r["layout"] == {"tp": 1, "pp": 1} for r in seen.values())
    assert seen["llama3"]["arch"]["num_layers"] == 2  # from the checkpoint, not from the default preset


@pytest.mark.slow
@pytest.mark.parametrize("layout, port", [("tp2", 29812), ("pp2", 29813)])
def test_parallel_layouts_match_transformers(imported, layout, port):
    tmp, models, _ = imported
    size = {"tp2": "model.tensor_model_parallel_size=2", "pp2": "model.pipeline_model_parallel_size=2"}[layout]
    seen = check(torchrun(2, [*models, "trainer.devices=2", size], tmp / f"{layout}.json", port), layout)
    key = "tp" if layout == "tp2" else "pp"
    assert all(r["layout"][key] == 2 for r in seen.values())
