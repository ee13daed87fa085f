"""Build each model preset at reduced size in this process and run a forward; print one JSON report.

Run by tests/test_presets.py (one process: NeMo's parallel state is global). Each preset keeps its architecture
(norm, activation, bias, GQA, rotary fraction / base / scaling) and gets a small size, the CPU tokenizer, fp32 and
the GPU-only fusions off. ``--rope-pair`` also runs the llama3_1_70b model's weights with Llama 3.1's RoPE scaling on
and off (llama3_70b, the same architecture without it) on one long row.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SMALL = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 4,
         "encoder_seq_length": 256, "micro_batch_size": 1, "global_batch_size": 1, "tensor_model_parallel_size": 1,
         "pipeline_model_parallel_size": 1, "precision": 32}
CPU_ONLY = {"transformer_engine": False, "megatron_amp_O2": False, "use_cpu_initialization": True,
            "apply_rope_fusion": False, "persist_layer_norm": False, "bias_dropout_add_fusion": False,
            "masked_softmax_fusion": False, "gradient_accumulation_fusion": False, "bias_activation_fusion": False,
            "activations_checkpoint_granularity": None, "activations_checkpoint_method": None,
            "activations_checkpoint_num_layers": None}


def compose_preset(preset: str, **extra):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=[f"model={preset}", "trainer=cpu"])
    with open_dict(cfg):
        cfg.exp_manager = None
        m = cfg.model
        m.update(SMALL)
        m.update(CPU_ONLY)
        if m.get("num_query_groups"):  # keep grouped-query attention, at a size 4 heads can hold
            m.num_query_groups = 2
        m.tokenizer = {"library": "byte-level", "type": None, "model": None, "vocab_file": None, "merge_file": None}
        m.optim.name = "adamw"
        m.update(extra)
    return cfg


def batch(lengths):
    from nemo_hs2.data.dataset import Collator

    rng = np.random.default_rng(0)
    rows = [{"tokens": rng.integers(1, 250, size=n).astype(np.int32), "labels": np.full(5, np.nan, np.float32),
             "pair_id": -1} for n in lengths]
    return Collator(pad_id=0)(rows)


def describe(model, pred):
    module = model.model
    layer = module.decoder.layers[0]
    tc = module.config
    return {"input_layernorm": type(layer.input_layernorm).__name__,
            "pre_mlp_layernorm": type(layer.pre_mlp_layernorm).__name__,
            "final_layernorm": type(module.decoder.final_layernorm).__name__,
            "norm_weight_init": float(module.decoder.final_layernorm.weight.detach().abs().max()),
            "zero_centered_gamma": tc.layernorm_zero_centered_gamma, "normalization": tc.normalization,
            "activation": tc.activation_func.__name__, "gated_linear_unit": tc.gated_linear_unit,
            "add_bias_linear": tc.add_bias_linear, "num_query_groups": tc.num_query_groups,
            "kv_channels": tc.kv_channels, "inv_freq": module.rotary_pos_emb.inv_freq.tolist(),
            "pred": pred.tolist()}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out", required=True)
    p.add_argument("--rope-pair", action="store_true")
    p.add_argument("presets", nargs="+")
    args = p.parse_args()

    import torch

    from nemo_hs2.megatron import compat
    from nemo_hs2.megatron.build import seed_model_parallel_rng

    compat.apply()
    from nemo_aligner.utils.train_script_utils import init_distributed, resolve_and_create_trainer

    from nemo_hs2.megatron.reward_model import AttributeRewardModel

    trainer, report = None, {"compat": compat.applied(), "presets": {}}
    b = batch([17, 40, 9])

    def build(cfg):
        nonlocal trainer
        torch.manual_seed(0)
        if trainer is None:
            trainer = resolve_and_create_trainer(cfg, "rm")
        model = AttributeRewardModel(cfg.model, trainer)
        if not torch.distributed.is_initialized():
            init_distributed(trainer, model, False)
            seed_model_parallel_rng(0)
        return model.eval()

    for preset in args.presets:
        model = build(compose_preset(preset))
        report["presets"][preset] = describe(model, model.predict(b))

    if args.rope_pair:
        # Llama 3's head size (128: 64 frequency pairs), and larger weights than the presets' init so attention is
        # far from uniform and positions matter.
        pair = {"kv_channels": 128, "init_method_std": 0.5}
        scaled = build(compose_preset("llama3_1_70b", **pair))
        plain = build(compose_preset("llama3_70b", **pair))
        plain.model.load_state_dict(scaled.model.state_dict())
        long_row = batch([250])
        on, off = scaled.predict(long_row), plain.predict(long_row)
        report["rope_pair"] = {"scaled": on.tolist(), "unscaled": off.tolist(),
                               "max_abs_diff": float((on - off).abs().max()),
                               "scaled_inv_freq": scaled.model.rotary_pos_emb.inv_freq.tolist(),
                               "unscaled_inv_freq": plain.model.rotary_pos_emb.inv_freq.tolist()}
    if torch.distributed.get_rank() == 0:
        with open(args.out, "w") as f:
            json.dump(report, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
