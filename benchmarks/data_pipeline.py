"""Our data pipeline vs NeMo-Aligner 0.7.0's ``RegressionRewardModelDataset`` on the same rows.

    .venv/bin/python benchmarks/data_pipeline.py [--data PATH.jsonl] [--seq-lengths 4096 2048] [--micro-batch 4]

For each tokenizer and seq_length it reports

* build rows/s: ours = read + validate + template + tokenize (cold, no cache) and, separately, a warm start from
  the cache; stock = NeMo-Aligner's builder (``build_train_valid_test_regression_rm_datasets``) on a jsonl of
  {"text", "label"} in its legacy 9-slot layout (HelpSteer scores in slots 4..8, -100 elsewhere), plus
  ``__getitem__`` over every row, which is where the stock dataset tokenizes and pads;
* real-token fraction: mean over micro-batches (``--micro-batch`` rows, the same random order for both) of real
  tokens / tokens the model runs on. Stock pads every row to seq_length; ours pads a micro-batch to its longest
  row rounded up to 8; "ours, length-grouped" draws its micro-batches with ``LengthGroupedBatchSampler``;
* distinct rows used in one pass: the stock ``__getitem__`` replaces a row longer than seq_length with the next
  row that fits (so some rows are trained on several times and the long ones never); ours truncates the context
  from the left and keeps every row once.

The GPT-2 BPE tokenizer is used only where ``tiktoken`` is importable and has its ``gpt2`` file offline.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "helpsteer_sample_300.jsonl"


class RecordingRows(list):
    """The stock dataset's row list; remembers the last index read, i.e. the row ``__getitem__`` ended up using."""

    last = None

    def __getitem__(self, idx):
        self.last = idx
        return super().__getitem__(idx)


class TiktokenAdapter:
    def __init__(self, enc):
        self.enc = enc
        self.eos_id = enc.eot_token
        self.vocab_size = enc.n_vocab

    def text_to_ids(self, text):
        return self.enc.encode_ordinary(text)


def tokenizers() -> tuple[list[tuple[str, object]], list[str]]:
    from nemo.collections.common.tokenizers.bytelevel_tokenizers import ByteLevelTokenizer

    found, notes = [("byte-level", ByteLevelTokenizer())], []
    try:
        import tiktoken
    except ImportError:
        notes.append("GPT-2 BPE skipped: tiktoken is not importable in this environment (nothing was installed)")
        return found, notes
    try:
        found.append(("gpt2-bpe", TiktokenAdapter(tiktoken.get_encoding("gpt2"))))
    except Exception as e:  # offline without the gpt2 file in TIKTOKEN_CACHE_DIR
        notes.append(f"GPT-2 BPE skipped: tiktoken could not load 'gpt2' offline ({type(e).__name__}: {e})")
    return found, notes


def legacy_jsonl(examples, path: Path) -> None:
    """NeMo-Aligner 0.7.0's regression format: SteerLM text, labels in 9 slots (4 dead OpenAssistant slots)."""
    from nemo_hs2.core.attributes import HELPSTEER2_ATTRIBUTES
    from nemo_hs2.core.render import steerlm_text, system_turn

    with open(path, "w") as f:
        for ex in examples:
            label = [-100.0] * 4 + [ex.labels.get(a, -100.0) for a in HELPSTEER2_ATTRIBUTES]
            text = steerlm_text(ex.conversation, system_turn("steerlm", None))
            f.write(json.dumps({"text": text, "label": label}) + "\n")


def stock_pass(jsonl: Path, tokenizer, seq_length: int, seed: int):
    from omegaconf import OmegaConf
    from nemo_aligner.data.nlp.builders import build_train_valid_test_regression_rm_datasets

    cfg = OmegaConf.create({"data": {"data_impl": "jsonl", "splits_string": None, "seq_length": seq_length,
                                     "index_mapping_dir": None}})
    started = time.perf_counter()
    train, _, _ = build_train_valid_test_regression_rm_datasets(
        cfg=cfg, data_prefix=OmegaConf.create({"train": [str(jsonl)], "validation": [str(jsonl)],
                                               "test": [str(jsonl)]}),
        data_impl="jsonl", splits_string=None, train_valid_test_num_samples=[0, 0, 0], seq_length=seq_length,
        seed=seed, tokenizer=tokenizer)
    train.data = RecordingRows(train.data)
    lengths, used = [], []
    for idx in range(len(train)):
        item = train[idx]
        lengths.append(int(item["lengths"]))
        used.append(train.data.last)
        assert item["inputs"].shape[0] == seq_length
    elapsed = time.perf_counter() - started
    return {"seconds": elapsed, "lengths": np.asarray(lengths), "used": used}


def ours_pass(data: Path, tokenizer, seq_length: int, cache_dir: Path):
    from omegaconf import OmegaConf

    from nemo_hs2.data.build import build_split

    cfg = OmegaConf.load(ROOT / "conf" / "data" / "helpsteer2.yaml")
    cfg.update({"train_file": str(data), "validation_file": str(data), "seq_length": seq_length, "cache_dir": None})
    started = time.perf_counter()
    ds, stats = build_split(cfg, tokenizer, seq_length, "train", progress=False)
    cold = time.perf_counter() - started
    cfg.cache_dir = str(cache_dir)
    build_split(cfg, tokenizer, seq_length, "train", progress=False)  # fill the cache
    started = time.perf_counter()
    ds_warm, warm_stats = build_split(cfg, tokenizer, seq_length, "train", progress=False)
    warm = time.perf_counter() - started
    assert warm_stats.cache_hit and len(ds_warm) == len(ds)
    return {"seconds": cold, "warm_seconds": warm, "dataset": ds, "stats": stats}


def real_fraction_fixed(lengths, order, mbs, seq_length):
    fractions = [lengths[b].sum() / (len(b) * seq_length) for b in batches_of(order, mbs)]
    return float(np.mean(fractions))


def real_fraction_dynamic(lengths, order, mbs, multiple=8):
    from nemo_hs2.data.dataset import pad_length

    fractions = [lengths[b].sum() / (len(b) * pad_length(int(lengths[b].max()), multiple))
                 for b in batches_of(order, mbs)]
    return float(np.mean(fractions))


def batches_of(order, mbs):
    return [np.asarray(order[i:i + mbs]) for i in range(0, len(order) - mbs + 1, mbs)]


def grouped_order(lengths, mbs, seed):
    from nemo_hs2.megatron.sampler import LengthGroupedBatchSampler

    gbs = 4 * mbs
    sampler = LengthGroupedBatchSampler(len(lengths), 0, mbs, gbs, 0, 1, drop_last=True, seed=seed, lengths=lengths)
    return [i for batch in sampler for i in batch]


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA)
    parser.add_argument("--seq-lengths", type=int, nargs="+", default=[4096, 2048])
    parser.add_argument("--micro-batch", type=int, default=4)
    parser.add_argument("--seed", type=int, default=1234)
    args = parser.parse_args(argv)
    if not args.data.is_file():
        print(f"skipped: no data at {args.data} (the shared sample lives in ../shared/data beside the repository; "
              f"pass --data PATH)")
        return 0

    from nemo.utils import logging as nemo_logging

    # The stock dataset logs one warning per replaced row.
    nemo_logging.setLevel(nemo_logging.ERROR)

    from nemo_hs2.data.sources import read_examples

    examples, _ = read_examples(args.data)
    n = len(examples)
    order = np.random.default_rng(args.seed).permutation(n)
    found, notes = tokenizers()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        jsonl = tmp / "regression.jsonl"
        legacy_jsonl(examples, jsonl)
        for tok_name, tok in found:
            for seq_length in args.seq_lengths:
                stock = stock_pass(jsonl, tok, seq_length, args.seed)
                ours = ours_pass(args.data, tok, seq_length, tmp / f"cache-{tok_name}")
                our_lengths = ours["dataset"].lengths()
                uses = Counter(stock["used"])
                stock_row = {
                    "tokenizer": tok_name, "seq_length": seq_length, "pipeline": "stock (pads to seq_length)",
                    "build_rows_s": n / stock["seconds"], "warm_rows_s": None,
                    "distinct": len(uses), "max_uses": max(uses.values()),
                    "over_length": sum(1 for i in range(n) if stock["used"][i] != i), "fraction":
                    real_fraction_fixed(stock["lengths"], order, args.micro_batch, seq_length)}
                # Ours keeps row i at index i (truncate policy), so the same order picks the same rows.
                assert len(our_lengths) == n
                ours_row = {
                    "tokenizer": tok_name, "seq_length": seq_length, "pipeline": "ours (pad to longest, x8)",
                    "build_rows_s": n / ours["seconds"], "warm_rows_s": n / ours["warm_seconds"],
                    "distinct": len(ours["dataset"]), "max_uses": 1, "over_length": ours["stats"].truncated,
                    "fraction": real_fraction_dynamic(our_lengths, order, args.micro_batch)}
                grouped = grouped_order(our_lengths, args.micro_batch, args.seed)
                grouped_row = {**ours_row, "pipeline": "ours, length-grouped sampler",
                               "distinct": len(set(grouped)),
                               "fraction": real_fraction_dynamic(our_lengths, grouped, args.micro_batch)}
                rows += [stock_row, ours_row, grouped_row]

    print(f"\n{n} rows from {args.data}; micro-batch {args.micro_batch}; random order seed {args.seed}")
    header = ("| tokenizer | seq_length | pipeline | build rows/s | warm-cache rows/s | rows over seq_length "
              "| distinct rows used | max uses of one row | real-token fraction |")
    print(header)
    print("|---|---:|---|---:|---:|---:|---:|---:|---:|")
    for r in rows:
        warm = f"{r['warm_rows_s']:,.0f}" if r["warm_rows_s"] else "-"
        over = f"{r['over_length']} ({'replaced' if r['pipeline'].startswith('stock') else 'truncated'})"
        print(f"| {r['tokenizer']} | {r['seq_length']} | {r['pipeline']} | {r['build_rows_s']:,.0f} | {warm} | "
              f"{over} | {r['distinct']} / {n} | {r['max_uses']} | {r['fraction']:.3f} |")
    for note in notes:
        print(f"note: {note}")
    print("note: the length-grouped row draws one epoch (drop_last), so it may use a few rows fewer than the total")
    return 0


if __name__ == "__main__":
    sys.exit(main())
