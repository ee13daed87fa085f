"""One process of the HF-import parity check; run under torchrun by tests/test_hf_import.py.

For each ``NAME=NEMO:HF_DIR``: start a run from the imported ``.nemo`` exactly as training does (default preset,
``init.restore_from_path``, ``init.mode=base``; the architecture and tokenizer come from the checkpoint) at the
layout given by the overrides, run fixed token rows through the pipeline, and compare the backbone's final hidden
state and the LM logits (output layer, gathered over TP) with transformers' model read from HF_DIR.
"""

from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def rows(vocab_size: int, seq: int = 64, count: int = 2):
    import torch

    return torch.randint(0, vocab_size, (count, seq), generator=torch.Generator().manual_seed(1))


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--model", action="append", default=[], help="NAME=NEMO:HF_DIR")
    p.add_argument("--import-first", action="store_true",
                   help="import each HF_DIR to NEMO here first (TP=PP=1) where NEMO does not exist yet")
    p.add_argument("--text", action="append", default=[], help="score these sentences (tokenized by the packed "
                   "tokenizer) instead of random ids; HF_DIR may then be a .gguf file")
    p.add_argument("overrides", nargs="*")
    args = p.parse_args()

    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
    from nemo_hs2.megatron import compat
    from nemo_hs2.megatron.build import seed_model_parallel_rng

    compat.apply()
    from megatron.core import parallel_state as ps
    from megatron.core.tensor_parallel import gather_from_tensor_model_parallel_region
    from nemo_aligner.utils.train_script_utils import init_distributed, resolve_and_create_trainer
    from transformers import AutoModelForCausalLM

    from nemo_hs2.megatron.train_recipe import build_model

    results = {}
    for spec in args.model:
        name, rest = spec.split("=", 1)
        nemo, hf_dir = rest.split(":", 1)
        imported = None
        if args.import_first and not os.path.exists(nemo):
            from nemo_hs2.hf.importer import run as import_hf

            with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
                source = f"input_gguf={hf_dir}" if hf_dir.endswith(".gguf") else f"input={hf_dir}"
                icfg = compose(config_name="import_hf", overrides=[source, f"output={nemo}"])
            imported = import_hf(icfg)
        with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
            cfg = compose(config_name="train_reward_model",
                          overrides=[*args.overrides, f"init.restore_from_path={nemo}", "model.micro_batch_size=1",
                                     "model.global_batch_size=1", "model.encoder_seq_length=256"])
        with open_dict(cfg):
            cfg.exp_manager = None
        trainer = resolve_and_create_trainer(cfg, "rm")
        model = build_model(cfg, trainer)
        init_distributed(trainer, model, False)
        seed_model_parallel_rng(int(cfg.model.seed))
        module = model.model
        if hf_dir.endswith(".gguf"):
            from nemo_hs2.hf.importer import load_gguf

            hf = load_gguf(hf_dir)  # transformers' own GGUF load; the one the import used, if it ran here
        else:
            hf = AutoModelForCausalLM.from_pretrained(hf_dir, torch_dtype=torch.float32).eval()
        if args.text:  # padded with eos on the right; causal attention leaves each row's prefix exact
            tokens = [model.tokenizer.text_to_ids(t) for t in args.text]
            lengths = torch.tensor([len(t) for t in tokens])
            ids = torch.full((len(tokens), int(lengths.max())), model.tokenizer.eos_id)
            for i, t in enumerate(tokens):
                ids[i, : len(t)] = torch.tensor(t)
        else:
            ids = rows(hf.config.vocab_size)
            lengths = torch.full((ids.shape[0],), ids.shape[1])
        valid = (torch.arange(ids.shape[1])[None, :] < lengths[:, None])[..., None]
        captured = []  # one [s, b, h] per micro-batch
        hook = None
        if ps.is_pipeline_last_stage():
            hook = module.decoder.register_forward_hook(lambda m, a, o: captured.append(o))
        batch = {"inputs": ids, "lengths": lengths,
                 "position_ids": torch.arange(ids.shape[1]).expand_as(ids)}
        model.predict(batch)
        result = {"layout": {"tp": ps.get_tensor_model_parallel_world_size(),
                             "pp": ps.get_pipeline_model_parallel_world_size()},
                  "arch": {k: model.cfg.get(k) for k in ("num_layers", "hidden_size", "normalization", "activation",
                                                         "scale_positional_embedding", "rotary_percentage",
                                                         "share_embeddings_and_output_weights")},
                  "rope_scaling": OmegaConf.to_container(model.cfg.rope_scaling)
                  if model.cfg.get("rope_scaling") is not None else None}
        if hook is not None:
            hook.remove()
            with torch.no_grad():
                # Each micro-batch ran at its own width (rows padded to the longest of that micro-batch only).
                width = ids.shape[1]
                hidden = torch.cat([torch.nn.functional.pad(c, (0, 0, 0, 0, 0, width - c.shape[0])) for c in captured], 1)
                logits, _ = module.output_layer(hidden)
                logits = gather_from_tensor_model_parallel_region(logits)
                ref = hf(ids, output_hidden_states=True)
            vocab = hf.config.vocab_size
            result["hidden"] = float(((hidden.transpose(0, 1) - ref.hidden_states[-1]).abs() * valid).max())
            result["logits"] = float(((logits.transpose(0, 1)[..., :vocab] - ref.logits).abs() * valid).max())
            result["hidden_absmax"] = float(ref.hidden_states[-1].abs().max())
            result["tokens"] = lengths.tolist()
            result["tokenizer_eos"] = int(model.tokenizer.eos_id)
        if imported is not None:
            result["import"] = {k: imported[k] for k in ("seconds", "peak_rss_gib", "parameters", "output_gib")}
        results[name] = result
    from torchrun_io import write_gathered  # beside this script, which torchrun puts first on sys.path

    write_gathered(results, args.out)


if __name__ == "__main__":
    sys.exit(main())
