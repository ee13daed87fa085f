"""Training throughput: our data path vs NeMo-Aligner 0.7.0's stock regression dataset, same model, same rows.

    .venv/bin/python benchmarks/train_throughput.py [--bpe-file gpt2.tiktoken] [--seq-length 4096] [--steps 4]
    .venv/bin/python benchmarks/train_throughput.py --device cuda --size 1b --bpe-file ...   # a GPU node

One process builds the reward model once and trains it for the same steps on the same rows (the shared HelpSteer
sample by default, in one fixed random order) in two modes:

* stock: rows from ``RegressionRewardModelDataset`` (NeMo-Aligner's builder, legacy 9-slot labels), every row padded
  to seq_length, and the model runs on the full width, as 0.7.0 trains;
* ours: rows from ``nemo_hs2.data`` (tokenized once), each micro-batch cut to its longest row (rounded to 8).

Both use the same ``AttributeRewardModel`` training step (forward, backward, AdamW step). Real tokens are the rows'
own tokens (the stock dataset's replacement rows count as real: it trains on them); padded tokens are what the
model ran on. On CUDA it also reports achieved TFLOP/s and MFU against ``--peak-tflops`` (bf16 dense), counting the
5-output head and not an LM output layer.

``--bpe-file``: GPT-2 BPE from a local ``gpt2.tiktoken`` (r50k_base; e.g. ``whisper/assets/gpt2.tiktoken`` in the
``openai-whisper`` sdist) with ``tiktoken`` importable. Byte-level tokens are ~4.3x longer than BPE ones, which makes
the stock layout look much better than it is for real users (see README, "Performance").
"""

from __future__ import annotations

import argparse
import os
import resource
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "helpsteer_sample_300.jsonl"
SIZES = {  # model overrides; "1b" is 24 layers x 2048 (~1.2B parameters with the BPE embedding)
    "tiny": ["model.num_layers=2", "model.hidden_size=256", "model.ffn_hidden_size=1024", "model.num_attention_heads=4"],
    "1b": ["model.num_layers=24", "model.hidden_size=2048", "model.ffn_hidden_size=8192",
           "model.num_attention_heads=16"],
}


def gpt2_bpe(path: str):
    import tiktoken
    from tiktoken.load import load_tiktoken_bpe
    from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

    from benchmarks.data_pipeline import TiktokenAdapter

    enc = tiktoken.Encoding(name="gpt2-local", pat_str=r50k_pat_str, mergeable_ranks=load_tiktoken_bpe(path),
                            special_tokens={ENDOFTEXT: 50256})
    return TiktokenAdapter(enc)


def build_model(args, vocab_size: int, extra_overrides=()):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
    overrides = [*SIZES[args.size], f"model.encoder_seq_length={args.seq_length}",
                 f"model.micro_batch_size={args.micro_batch}",
                 f"model.global_batch_size={args.micro_batch * args.micro_batches}"]
    if args.device == "cuda":  # torch AdamW: the lent GPU machine has no apex
        overrides += ["trainer=gpu", "trainer.devices=1", "trainer.rm.max_steps=100",
                      "model.use_cpu_initialization=false", "model.optim.name=adamw"]
        overrides += (["trainer.precision=32"] if getattr(args, "precision", "bf16") == "fp32"
                      else ["model.megatron_amp_O2=true", "trainer.precision=bf16-mixed"])
    overrides += list(extra_overrides)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=overrides)
    with open_dict(cfg):
        cfg.exp_manager = None
        cfg.model.override_vocab_size = int(np.ceil(vocab_size / 128) * 128)

    from nemo_hs2 import compat

    compat.apply()
    import torch
    from nemo_aligner.utils.train_script_utils import init_distributed, resolve_and_create_trainer

    from nemo_hs2.models.reward_model import AttributeRewardModel

    trainer = resolve_and_create_trainer(cfg, "rm")
    model = AttributeRewardModel(cfg.model, trainer)
    init_distributed(trainer, model, False)
    compat.seed_model_parallel_rng(cfg.model.seed)
    model.prepare_for_training_step()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    return cfg, model, optimizer


def stock_batches(examples, tokenizer, seq_length, order, gbs, tmp: Path):
    """Global batches from NeMo-Aligner's RegressionRewardModelDataset, converted to the model's batch keys."""
    import torch
    from omegaconf import OmegaConf
    from nemo_aligner.data.nlp.builders import build_train_valid_test_regression_rm_datasets

    from benchmarks.data_pipeline import legacy_jsonl

    jsonl = tmp / "stock.jsonl"
    legacy_jsonl(examples, jsonl)
    cfg = OmegaConf.create({"data": {"data_impl": "jsonl", "splits_string": None, "seq_length": seq_length,
                                     "index_mapping_dir": None}})
    prefix = OmegaConf.create({"train": [str(jsonl)], "validation": [str(jsonl)], "test": [str(jsonl)]})
    ds, _, _ = build_train_valid_test_regression_rm_datasets(
        cfg=cfg, data_prefix=prefix, data_impl="jsonl", splits_string=None, train_valid_test_num_samples=[0, 0, 0],
        seq_length=seq_length, seed=1234, tokenizer=tokenizer)
    for start in range(0, len(order) - gbs + 1, gbs):
        items = [ds[int(i)] for i in order[start:start + gbs]]
        labels = torch.stack([it["labels"][4:9] for it in items])  # slots 4..8 hold the HelpSteer attributes
        yield {"inputs": torch.stack([it["inputs"] for it in items]),
               "lengths": torch.tensor([int(it["lengths"]) for it in items]),
               "position_ids": torch.stack([it["position_ids"] for it in items]),
               "labels": torch.where(labels == -100, 0.0, labels), "label_mask": labels != -100,
               "pair_ids": torch.full((gbs,), -1)}


def our_batches(examples, tokenizer, seq_length, order, gbs):
    from nemo_hs2.attributes import HELPSTEER2_ATTRIBUTES
    from nemo_hs2.data.dataset import Collator, tokenize_examples

    ds, _ = tokenize_examples(examples, tokenizer, list(HELPSTEER2_ATTRIBUTES), max_length=seq_length)
    collate = Collator(tokenizer.eos_id, pad_to_multiple=8)
    for start in range(0, len(order) - gbs + 1, gbs):
        yield collate([ds[int(i)] for i in order[start:start + gbs]])


def padded_tokens(batch, mbs, multiple):
    """Tokens the model runs on when each micro-batch is cut to its longest row rounded up to ``multiple``."""
    total = 0
    for start in range(0, len(batch["lengths"]), mbs):
        longest = int(batch["lengths"][start:start + mbs].max())
        total += mbs * min(int(np.ceil(longest / multiple) * multiple), batch["inputs"].shape[1])
    return total


def train_flops(batch, mbs, multiple, cfg, num_attributes):
    """Model FLOPs of one training step (fwd + bwd = 3x fwd) on the padded micro-batches; no LM output layer."""
    h, layers, ffn = cfg.model.hidden_size, cfg.model.num_layers, cfg.model.ffn_hidden_size
    per_token_layer = 2 * (4 * h * h + 2 * h * ffn)  # QKV + proj, two FFN matmuls
    flops = 0
    for start in range(0, len(batch["lengths"]), mbs):
        longest = int(batch["lengths"][start:start + mbs].max())
        s = min(int(np.ceil(longest / multiple) * multiple), batch["inputs"].shape[1])
        fwd = mbs * s * layers * per_token_layer + mbs * layers * 2 * 2 * s * s * h + mbs * 2 * h * num_attributes
        flops += 3 * fwd
    return flops


def run_mode(name, batches, model, optimizer, args, cfg, multiple):
    import torch

    cuda = args.device == "cuda"
    model.pad_to_multiple = multiple
    if cuda:
        torch.cuda.reset_peak_memory_stats()
    times, real, padded, flops = [], 0, 0, 0
    for step, batch in enumerate(batches):
        if step == args.warmup + args.steps:
            break
        if cuda:
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        model.get_loss_and_metrics(batch, forward_only=False)
        model.finish_training_step()
        optimizer.step()
        if cuda:
            torch.cuda.synchronize()
        if step >= args.warmup:
            times.append(time.perf_counter() - t0)
            real += int(batch["lengths"].sum())
            padded += padded_tokens(batch, args.micro_batch, multiple)
            flops += train_flops(batch, args.micro_batch, multiple, cfg, 5)
        print(f"  {name} step {step}: {time.perf_counter() - t0:.2f} s", flush=True)
    total = sum(times)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    row = {"mode": name, "step_s": statistics.median(times), "real_tok_s": real / total,
           "padded_tok_s": padded / total, "real_frac": real / padded, "peak_gib": peak}
    if cuda:
        row["tflops"] = flops / total / 1e12
        row["mfu"] = row["tflops"] / args.peak_tflops
    return row


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--micro-batches", type=int, default=2, help="micro-batches per global batch")
    p.add_argument("--steps", type=int, default=4)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--bpe-file", default=os.environ.get("NEMO_HS2_GPT2_TIKTOKEN"))
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    p.add_argument("--seed", type=int, default=1234)
    args = p.parse_args(argv)
    if not Path(args.data).is_file():
        print(f"no data at {args.data} (the shared HelpSteer sample); pass --data", file=sys.stderr)
        return 2

    from nemo_hs2.attributes import HELPSTEER2_ATTRIBUTES
    from nemo_hs2.data.sources import read_examples

    examples, _ = read_examples(args.data, list(HELPSTEER2_ATTRIBUTES))
    if args.bpe_file:
        tokenizer, tok_name = gpt2_bpe(args.bpe_file), "GPT-2 BPE"
    else:
        from nemo.collections.common.tokenizers.bytelevel_tokenizers import ByteLevelTokenizer

        tokenizer, tok_name = ByteLevelTokenizer(), "byte-level"
    cfg, model, optimizer = build_model(args, tokenizer.vocab_size)
    gbs = args.micro_batch * args.micro_batches
    order = np.random.default_rng(args.seed).permutation(len(examples))
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run_mode("ours", our_batches(examples, tokenizer, args.seq_length, order, gbs), model, optimizer,
                             args, cfg, multiple=8))
        rows.append(run_mode("stock", stock_batches(examples, tokenizer, args.seq_length, order, gbs, Path(tmp)),
                             model, optimizer, args, cfg, multiple=args.seq_length))
    params = sum(p.numel() for p in model.parameters())
    print(f"\n{args.size} model ({params / 1e6:.1f}M parameters incl. embedding), {tok_name}, seq_length "
          f"{args.seq_length}, micro-batch {args.micro_batch} x {args.micro_batches}, {args.steps} measured steps "
          f"after {args.warmup} warm-up, {args.device}, {len(examples)} rows from {args.data}")
    cols = ["mode", "step_s", "real_tok_s", "padded_tok_s", "real_frac", "peak_gib"]
    cols += ["tflops", "mfu"] if args.device == "cuda" else []
    print("| " + " | ".join(cols) + " |")
    print("|" + "---|" * len(cols))
    for r in rows:
        print("| " + " | ".join(f"{r[c]:.3f}" if isinstance(r[c], float) else str(r[c]) for c in cols) + " |")
    ours, stock = rows
    print(f"ours/stock real tokens/s: {ours['real_tok_s'] / stock['real_tok_s']:.2f}x"
          + ("" if args.device == "cuda" else "  (peak_gib on CPU is the process's max RSS so far)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
