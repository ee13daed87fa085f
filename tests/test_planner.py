"""The planner: presets and recipes compose, parameter counts match the published sizes, the published 70B recipe
fits 80 GB GPUs, and configs that cannot fit or divide are refused with the rule they break. No model is built."""

import copy
import json
import sys
from functools import lru_cache

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from nemo_hs2.plan import PlanOptions, check_rules, format_table, make_plan
from nemo_hs2.plan.arch import Arch, arch_of, parameter_counts
from nemo_hs2.plan.checks import ConfigError, parallel_layout
from nemo_hs2.plan.compute import compute_estimate, forward_flops, padded_width_distribution
from nemo_hs2.plan.layout import vocab_padding
from nemo_hs2.plan.memory import GIB, activation_bytes_per_layer, does_not_fit, memory_estimate
from tests.conftest import CONF_DIR, ROOT

CKPT = "init.restore_from_path=/models/base.nemo"


@lru_cache(maxsize=None)
def load(*overrides):
    with initialize_config_dir(config_dir=CONF_DIR, version_base=None):
        return compose(config_name="train_reward_model", overrides=list(overrides))


def preset(name):
    return load(f"model={name}", "trainer=gpu", "data=helpsteer2", "trainer.rm.max_steps=100")


PRESET_15B = ("model=nemotron4_15b", "trainer=gpu", "data=helpsteer2", "trainer.rm.max_steps=100")


def edit(base: tuple, changes: dict):
    """A composed config with dotted keys changed in place of re-composing (Hydra composition is the slow part)."""
    cfg = copy.deepcopy(load(*base))
    for key, value in changes.items():
        OmegaConf.update(cfg, key, value, force_add=True)
    return cfg


def plan(*overrides, **options):
    cfg = load(*overrides)
    return make_plan(cfg, PlanOptions.from_config(cfg, options))


# ------------------------------------------------------------------------------------------------ presets


@pytest.mark.parametrize("name, published, layers, hidden, heads, groups, ffn, vocab", [
    ("nemotron4_15b", 15.6e9, 32, 6144, 48, 8, 24576, 256000),
    ("nemotron4_340b", 341e9, 96, 18432, 96, 8, 73728, 256000),
    ("llama3_70b", 70.6e9, 80, 8192, 64, 8, 28672, 128256),
    ("llama3_1_70b", 70.6e9, 80, 8192, 64, 8, 28672, 128256),
])
def test_preset_parameter_counts_match_published_sizes(name, published, layers, hidden, heads, groups, ffn, vocab):
    cfg = preset(name)
    m = cfg.model
    assert (m.num_layers, m.hidden_size, m.num_attention_heads, m.num_query_groups, m.ffn_hidden_size) == \
        (layers, hidden, heads, groups, ffn)
    p = make_plan(cfg)
    c = p.params
    assert c["lm_with_output_layer"] == pytest.approx(published, rel=0.01)  # published sizes include the LM head
    assert c["lm_output_layer"] == vocab * hidden
    # the reward model drops the LM output layer for a 5-output head; training still allocates it (padded)
    assert c["reward_model"] == c["lm_with_output_layer"] - vocab * hidden + hidden * 5 + 5
    assert c["allocated_padded"] >= c["reward_model"] + vocab * hidden
    table = format_table(p)
    assert "LM incl. output layer (compare published sizes)" in table
    assert "LM output layer (allocated, unused by the head)" in table


def test_gpu_presets_are_gpu_settings():
    m = preset("nemotron4_15b").model
    assert (m.megatron_amp_O2, m.transformer_engine, m.precision) == (True, True, "bf16-mixed")
    assert (m.activation, m.normalization, m.rotary_percentage, m.bias) == ("squared-relu", "layernorm1p", 0.5, False)
    assert not m.bias_activation_fusion  # megatron-core cannot fuse squared-ReLU
    llama = preset("llama3_1_70b").model
    assert (llama.activation, llama.normalization, llama.rotary_base) == ("fast-swiglu", "rmsnorm", 500000)
    assert llama.scale_positional_embedding and not preset("llama3_70b").model.scale_positional_embedding


def test_gpu_presets_carry_every_key_of_tiny():
    """gpu_common repeats tiny's non-architecture keys: a key added to tiny must be added there too."""
    tiny = set(load().model.keys())
    for name in ("nemotron4_15b", "llama3_70b"):
        assert tiny - set(preset(name).model.keys()) == set(), name


@pytest.mark.parametrize("name, kept", [("nemotron4_340b", "model"), ("llama3_70b", "type")])
def test_presets_keep_the_checkpoint_tokenizer(name, kept):
    """NeMo-Aligner merges the .nemo's model config under ours: the preset must not null the tokenizer."""
    checkpoint = OmegaConf.create({"tokenizer": {"library": "x", "model": "nemo:abc_256k.model",
                                                 "type": "meta-llama/Meta-Llama-3-70B"}})
    merged = OmegaConf.merge(checkpoint, preset(name).model)
    assert merged.tokenizer[kept] == checkpoint.tokenizer[kept]


def test_vocab_padding():
    assert plan("+recipe=hs2_llama3_70b", CKPT).vocab.padded == 129024  # 128,256 to a multiple of 128 x TP 8
    assert plan().vocab.to_dict() == {"size": 259, "make_vocab_size_divisible_by": 256, "multiple": 256, "padded": 512,
                            "dummy_rows": 253}  # NeMo's byte-level tokenizer


# ------------------------------------------------------------------------------------------------ recipes


def test_published_70b_recipe_composes_as_published():
    cfg = load("+recipe=hs2_llama3_70b", CKPT)
    m, t = cfg.model, cfg.trainer
    assert (t.num_nodes, t.devices, t.accelerator, t.precision) == (8, 8, "gpu", "bf16-mixed")
    assert (m.tensor_model_parallel_size, m.pipeline_model_parallel_size) == (8, 2)
    assert (m.micro_batch_size, m.global_batch_size, cfg.data.seq_length) == (2, 128, 4096)
    assert m.optim.lr == m.optim.sched.min_lr == 2e-6 and m.optim.sched.warmup_steps == 10  # constant after warm-up
    assert (t.rm.max_epochs, t.rm.max_steps, m.optim.sched.max_steps) == (2, 317, 317)
    assert cfg.data.source == "files" and m.megatron_amp_O2
    assert parallel_layout(cfg) == {"world": 64, "tp": 8, "pp": 2, "dp": 4, "num_microbatches": 16}


def test_published_70b_recipe_fits_80gb():
    p = plan("+recipe=hs2_llama3_70b", CKPT, gpu_memory_gb=80)
    assert p.ok and p.memory["fits"] and p.memory["checked"]
    assert 40 < p.memory["peak"] <= 80
    first = p.memory["first_stage"]
    # the distributed optimizer and full recomputation are what make it fit
    assert first["optimizer_plain"] == pytest.approx(4 * first["optimizer_distributed"])
    assert first["activations_full"] < first["activations_selective"] <= first["activations_none"]
    assert p.compute["steps"] == 316 and p.compute["tokens_per_step"] == 128 * 4096
    assert p.compute["step_time_s"] > 0 and p.compute["model_flops_per_step"] > 1e17


@pytest.mark.parametrize("recipe, nodes, tp, pp", [
    ("hs2_nemotron4_15b", 1, 4, 1),
    ("hs2_nemotron4_340b", 24, 8, 24),
    ("hs2p_llama3_1_70b_helpfulness", 8, 8, 2),
    ("hs2p_llama3_1_70b_scaled_bt", 4, 8, 4),
    ("hs3_llama3_3_70b_scaled_bt", 4, 8, 4),
])
def test_every_recipe_fits_80gb(recipe, nodes, tp, pp):
    p = plan(f"+recipe={recipe}", CKPT)
    assert p.ok, p.errors
    assert (p.layout.nodes, p.layout.tp, p.layout.pp) == (nodes, tp, pp)
    assert p.memory["fits"] and p.memory["peak"] <= 80


def test_preference_recipe_counts_pairs():
    cfg = load("+recipe=hs2p_llama3_1_70b_scaled_bt", CKPT)
    assert cfg.model.regression.loss_func == "scaled_bt" and cfg.init.mode == "reward_model"
    p = make_plan(cfg)
    assert p.layout.samples_are == "pairs" and p.layout.sequences_per_micro_batch == 2
    assert p.compute["tokens_per_step"] == 64 * 2 * 4096


def test_helpsteer3_recipe_composes():
    cfg = load("+recipe=hs3_llama3_3_70b_scaled_bt", CKPT)
    assert (cfg.data.source, cfg.data.format, list(cfg.data.domains)) == ("preference", "helpsteer3",
                                                                          ["General", "STEM", "Code"])
    assert cfg.model.regression.loss_func == "scaled_bt" and cfg.init.mode == "base"
    assert cfg.model.scale_positional_embedding and cfg.model.encoder_seq_length == 4096
    p = make_plan(cfg)
    assert p.layout.samples_are == "pairs" and p.compute["steps"] == 600


# ------------------------------------------------------------------------------------------------ refusals


def test_340b_on_12_nodes_does_not_fit():
    cfg = edit(("+recipe=hs2_nemotron4_340b", CKPT),
               {"trainer.num_nodes": 12, "model.pipeline_model_parallel_size": 12})
    with pytest.raises(ConfigError) as err:
        parallel_layout(cfg)
    assert "does not fit" in str(err.value) and "plan.gpu_memory_gb=80" in str(err.value)
    # ... but it does on 141 GiB GPUs (H200)
    assert make_plan(cfg, PlanOptions.from_config(cfg, {"gpu_memory_gb": 141})).ok


def test_memory_is_checked_only_on_gpu():
    assert parallel_layout(load("++plan.gpu_memory_gb=0.001"))["world"] == 1  # CPU demo: no memory check
    with pytest.raises(ConfigError, match="does not fit"):
        parallel_layout(edit((), {"plan.gpu_memory_gb": 0.001, "trainer.accelerator": "gpu"}))


@pytest.mark.parametrize("changes, rule", [
    ({"model.pipeline_model_parallel_size": 3}, "num_layers (80) must be divisible by pipeline_model_parallel_size"),
    ({"model.tensor_model_parallel_size": 16, "trainer.num_nodes": 16}, "num_query_groups (8) must be divisible"),
    ({"model.global_batch_size": 100}, "global_batch_size (100) must be divisible by micro_batch_size x DP = 2 x 4"),
    ({"trainer.devices": 7}, "not divisible by TP x PP = 8 x 2"),
    ({"model.virtual_pipeline_model_parallel_size": 3}, "PP x virtual PP = 2 x 3"),
    ({"model.virtual_pipeline_model_parallel_size": 5, "model.global_batch_size": 120}, "multiple of"),
    ({"model.context_parallel_size": 2, "trainer.num_nodes": 16}, "context_parallel_size (2)"),
    ({"model.sequence_parallel": True}, "sequence parallelism leaves split"),
    ({"model.activations_checkpoint_method": None}, "granularity=full needs"),
    ({"trainer.rm.max_steps": -1}, "the LR schedule needs a length"),
    ({"model.make_vocab_size_divisible_by": 0}, "make_vocab_size_divisible_by (0)"),
    ({"model.micro_batch_size": 8}, "does not fit"),
])
def test_bad_70b_configs_name_the_rule(changes, rule):
    with pytest.raises(ConfigError) as err:
        parallel_layout(edit(("+recipe=hs2_llama3_70b", CKPT), changes))
    assert rule in str(err.value)


@pytest.mark.parametrize("cfg, rule", [
    (lambda: edit(PRESET_15B, {"init.restore_from_path": "/x.nemo", "model.bias_activation_fusion": True}),
     "fuses only gelu and swiglu"),
    (lambda: edit((), {"model.optim.name": "distributed_fused_adam"}), "needs NVIDIA apex"),
    (lambda: load("+recipe=hs2_llama3_70b"), "init.restore_from_path is not set"),
    (lambda: load(*PRESET_15B), "model.tokenizer (sentencepiece) names no"),
])
def test_other_rules(cfg, rule):
    with pytest.raises(ConfigError) as err:
        parallel_layout(cfg())
    assert rule in str(err.value)


def test_run_readiness_is_a_note_for_the_planner_and_an_error_for_training():
    p = plan("+recipe=hs2_llama3_70b")
    assert p.ok and any("init.restore_from_path" in n for n in p.notes)
    assert not plan("+recipe=hs2_llama3_70b", strict=True).ok


# ------------------------------------------------------------------------------------------------ the formula


def test_activation_formula_reproduces_korthikanti_table_2():
    """GPT (4h MLP, multi-head attention): per-layer activations of Korthikanti et al. 2022, table 2."""
    s, b, h, a, t = 2048, 1, 12288, 96, 8
    gpt = Arch(layers=1, hidden=h, ffn=4 * h, heads=a, groups=a, head_dim=h // a, vocab=None,
                       padded_vocab=None, gated=False, norm=2 * h, bias=True, learned_pos=0, attributes=1)
    act = lambda **kw: activation_bytes_per_layer(gpt, seq=s, seqs=b, tp=t, **kw)  # noqa: E731
    assert act(sp=False, keep_scores=True) == pytest.approx(s * b * h * (10 + 24 / t + 5 * a * s / (h * t)))
    assert act(sp=True, keep_scores=True) == pytest.approx(s * b * h / t * (34 + 5 * a * s / h))
    assert act(sp=False, keep_scores=False) == pytest.approx(s * b * h * (10 + 24 / t))  # selective
    assert act(sp=True, keep_scores=False) == pytest.approx(34 * s * b * h / t)


# ------------------------------------------------------------------------------------------------ the CLI


def test_plan_cli_prints_a_table_and_json(capsys, tmp_path):
    sys.path.insert(0, str(ROOT / "examples"))
    try:
        import plan as plan_cli
    finally:
        sys.path.remove(str(ROOT / "examples"))
    out = tmp_path / "plan.json"
    assert plan_cli.main(["+recipe=hs2_llama3_70b", "plan.format=json", f"plan.json_out={out}"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc == json.loads(out.read_text())
    assert doc["ok"] and doc["choices"]["model"] == "llama3_70b" and doc["layout"]["dp"] == 4
    assert doc["memory"]["fits"] and doc["run"]["name"] == "hs2_llama3_70b"

    assert plan_cli.main(["+recipe=hs2_llama3_70b", "model.pipeline_model_parallel_size=3"]) == 1
    table = capsys.readouterr().out
    assert "checks: FAILED" in table and "num_layers (80)" in table
    assert plan_cli.main(["model=no_such_preset"]) == 2
    assert plan_cli.main(["plan.nonsense=1"]) == 2


# ------------------------------------------------------------------------------------------------ the parts


def test_check_rules_reads_the_layout_and_lists_broken_rules():
    good = check_rules(load("+recipe=hs2_llama3_70b", CKPT))
    assert not good.errors and (good.layout.dp, good.layout.num_microbatches) == (4, 16)
    assert good.vocab.padded == vocab_padding(128256, 128, 8)
    bad = check_rules(edit(("+recipe=hs2_llama3_70b", CKPT), {"model.pipeline_model_parallel_size": 3}))
    assert bad.layout.dp == 0 and any("num_layers (80) must be divisible" in e for e in bad.errors)
    # run readiness: a note for the planner, an error when strict (training)
    assert check_rules(load("+recipe=hs2_llama3_70b")).notes
    assert check_rules(load("+recipe=hs2_llama3_70b"), strict=True).errors


def test_parameter_counts_match_transformers():
    """A small Llama (gated MLP, grouped-query attention, RMSNorm, no bias, untied output layer) built by
    transformers has exactly the planner's 'LM incl. output layer' count."""
    import transformers

    arch = Arch(layers=3, hidden=32, ffn=80, heads=4, groups=2, head_dim=8, vocab=100, padded_vocab=128,
                        gated=True, norm=32, bias=False, learned_pos=0, attributes=5)
    llama = transformers.LlamaForCausalLM(transformers.LlamaConfig(
        vocab_size=100, hidden_size=32, intermediate_size=80, num_hidden_layers=3, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=False))
    counts = parameter_counts(arch)
    assert counts["lm_with_output_layer"] == sum(p.numel() for p in llama.parameters())
    assert counts["reward_model"] == counts["lm_with_output_layer"] - 100 * 32 + 32 * 5 + 5
    assert counts["allocated_padded"] == counts["lm_with_output_layer"] + 2 * 28 * 32 + 32 * 5 + 5


def test_parameter_counts_are_printed_whatever_the_layout():
    p = make_plan(load("model=nemotron4_340b"))  # TP 8 on one CPU process: the layout is wrong
    assert not p.ok and p.params["lm_with_output_layer"] == pytest.approx(341.03e9, rel=1e-4)
    assert not p.memory and "341.03 B" in format_table(p)


def test_memory_estimate_adds_up():
    checks = check_rules(load("+recipe=hs2_llama3_70b", CKPT))
    arch = arch_of(load("+recipe=hs2_llama3_70b", CKPT).model, checks.layout, checks.vocab)
    opts = PlanOptions()
    mem = memory_estimate(arch, checks.layout, opts)
    first = mem["first_stage"]
    params = 40 * arch.layer_params(8) + checks.vocab.padded * 8192 / 8  # 80 layers / PP 2, embedding / TP 8
    assert first["params"] == round(params)
    assert first["weights"] == pytest.approx(params * 2 / GIB)                   # bf16 O2
    assert first["optimizer"] == pytest.approx(params * 12 / 4 / GIB)            # distributed over DP 4
    tensors = first["weights"] + first["gradients"] + first["optimizer"] + first["activations_full"]
    assert first["total"] == pytest.approx(tensors * 1.1 + 5)
    assert mem["fits"] and mem["peak"] == max(first["total"], mem["last_stage"]["total"])
    assert "does not fit: " in does_not_fit(mem, checks.layout)
    bad = check_rules(edit(("+recipe=hs2_llama3_70b", CKPT), {"trainer.devices": 7}))
    assert memory_estimate(arch, bad.layout, opts) is None  # no data-parallel size: nothing to size


def test_padded_width_distribution_matches_enumeration():
    import itertools

    hist = {"bin_width": 8, "counts": {"16": 3, "24": 1, "64": 2, "4104": 1}}  # one row past seq_length 4096
    rows = [16] * 3 + [24] + [64] * 2 + [4096]
    for k in (1, 2, 3):
        widths = padded_width_distribution(hist, k, 4096)
        draws = list(itertools.product(rows, repeat=k))
        for w in (16, 24, 64, 4096):
            assert widths[w] == pytest.approx(sum(max(d) == w for d in draws) / len(draws))
    assert padded_width_distribution(hist, 4, 4096, length_grouped=True) == \
        padded_width_distribution(hist, 1, 4096)


def test_compute_estimate_by_hand():
    cfg = load("+recipe=hs2_llama3_70b", CKPT)
    checks = check_rules(cfg)
    arch = arch_of(cfg.model, checks.layout, checks.vocab)
    opts = PlanOptions()
    s, L, h = 4096, 80, 8192
    fwd = 2 * s * L * (h * (64 + 16) * 128 + 64 * 128 * h + 3 * h * 28672) + 4 * s * s * 64 * 128 * L + 2 * h * 5
    c = compute_estimate(arch, checks.layout, opts, train_rows=20324, max_steps=-1, epochs=2)
    assert c["model_flops_per_step"] == pytest.approx(3 * fwd * 128)
    assert c["step_time_s"] == c["step_time_at_seq_length_s"] == pytest.approx(3 * fwd * 128 / (64 * 989e12 * 0.3))
    assert (c["steps_per_epoch"], c["steps"]) == (158, 316)
    # at the data's widths: every micro-batch 1000 or 2000 tokens wide, equally likely
    w = compute_estimate(arch, checks.layout, opts, widths={1000: 0.5, 2000: 0.5})
    at = lambda n: forward_flops(arch, n) * 3 * 128 / (64 * 989e12 * 0.3)  # noqa: E731
    assert w["expected_padded_length"] == 1500 and w["step_time_s"] == pytest.approx((at(1000) + at(2000)) / 2)
    assert w["step_time_at_seq_length_s"] == c["step_time_s"]


def test_plan_reads_the_data_report(tmp_path):
    report = tmp_path / "data_report.json"
    report.write_text(json.dumps({"settings": {"seq_length": 4096}, "splits": {"train": {
        "used": 1000, "length_histogram": {"bin_width": 8, "counts": {"512": 600, "1024": 400}}}}}))
    p = plan("+recipe=hs2_llama3_70b", CKPT, "data.length_grouped=false", data_report=str(report))
    c = p.compute
    # random batches, 2 rows per micro-batch: P(both <= 512) = 0.36
    assert c["expected_padded_length"] == pytest.approx(0.36 * 512 + 0.64 * 1024)
    # length-grouped batches: each row pads to about its own length
    grouped = plan("+recipe=hs2_llama3_70b", CKPT, "data.length_grouped=true", data_report=str(report)).compute
    assert grouped["expected_padded_length"] == pytest.approx(0.6 * 512 + 0.4 * 1024)
    assert c["step_time_s"] < c["step_time_at_seq_length_s"] and c["train_rows"] == 1000
    table = format_table(p)
    assert "(every row at seq_length 4,096)" in table and "expected padded length" in table
    assert not plan("+recipe=hs2_llama3_70b", CKPT, data_report=str(tmp_path / "none.json")).ok


def test_plan_cli_runs_without_torch_or_nemo(tmp_path):
    """examples/plan.py runs on a login node: with torch, NeMo, Megatron, transformers (and numpy) unimportable."""
    import subprocess

    blocker = tmp_path / "blocked.py"
    blocker.write_text(
        "import runpy, sys\n"
        "BLOCKED = {'torch', 'nemo', 'megatron', 'nemo_aligner', 'lightning', 'pytorch_lightning', 'transformers',\n"
        "           'apex', 'transformer_engine', 'numpy'}\n"
        "class Blocker:\n"
        "    def find_spec(self, name, path=None, target=None):\n"
        "        if name.split('.')[0] in BLOCKED:\n"
        "            raise ImportError(f'blocked: {name}')\n"
        "sys.meta_path.insert(0, Blocker())\n"
        "sys.argv = ['plan.py', *sys.argv[1:]]\n"
        f"runpy.run_path({str(ROOT / 'examples' / 'plan.py')!r}, run_name='__main__')\n")
    proc = subprocess.run([sys.executable, str(blocker), "+recipe=hs2_llama3_70b", CKPT], capture_output=True,
                          text=True, timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "checks: OK" in proc.stdout and "peak 57.6 GiB (first stage)" in proc.stdout
