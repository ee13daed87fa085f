"""Build the train/validation datasets a config asks for: tokenized once, cached when data.cache_dir is set."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from nemo_hs2.core.losses import LOSS_NAMES
from nemo_hs2.core.rank import is_main_rank
from nemo_hs2.core.render import Renderer
from nemo_hs2.data import cache
from nemo_hs2.data.dataset import RewardDataset, TokenizeStats, tokenize_examples
from nemo_hs2.data.demo import demo_examples

SPLITS = ("train", "validation")


def load_split(data_cfg, split: str):
    """Examples of one split, from the source ``data.source`` names, and a Counter of bad rows skipped."""
    source = data_cfg.source
    if source == "demo":
        prompts = data_cfg.demo[f"{split}_prompts"]
        return demo_examples(prompts, seed=data_cfg.demo.seed, split=split), Counter()
    if source == "files":
        from nemo_hs2.data.sources import read_examples

        return read_examples(_split_file(data_cfg, split), list(data_cfg.attributes),
                             score_range=tuple(data_cfg.score_range), on_bad_row=data_cfg.on_bad_row)
    if source == "hub":
        from nemo_hs2.data.sources import read_hub

        return read_hub(data_cfg.hub_dataset, split=split, attributes=list(data_cfg.attributes),
                        score_range=tuple(data_cfg.score_range), on_bad_row=data_cfg.on_bad_row)
    raise ValueError(f"data.source must be demo, files or hub, got '{source}'")


def _split_file(data_cfg, split: str) -> str:
    path = data_cfg.get(f"{split}_file")
    if not path:
        raise ValueError(f"data.source=files needs data.{split}_file=PATH (.jsonl, .jsonl.gz or .parquet; "
                         "data=demo for the generated demo set)")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"data.{split}_file={path}: no such file (set data.{split}_file=PATH)")
    return str(path)


def make_renderer(data_cfg, tokenizer) -> Renderer:
    """The renderer ``data.template`` and ``data.system_prompt`` name (the model saves both for its scorer)."""
    return Renderer(data_cfg.get("template") or "steerlm", tokenizer, data_cfg.get("system_prompt"))


def _examples_sha256(examples, skipped: Counter) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.conversation.messages(), sorted(ex.labels.items()), ex.pair_id]).encode())
    h.update(json.dumps(sorted(skipped.items())).encode())
    return h.hexdigest()


def source_identity(data_cfg, split: str, loaded=None) -> dict | None:
    """What the split's rows are made from; None when only the rows themselves can tell (the hub)."""
    source = data_cfg.source
    if source == "demo":
        from nemo_hs2.data import demo

        # The generator's own source is part of the key: editing demo.py changes the rows.
        return {"kind": "demo", "split": split, "prompts": int(data_cfg.demo[f"{split}_prompts"]),
                "seed": int(data_cfg.demo.seed), "generator_sha256": cache.sha256_file(demo.__file__)}
    if source == "files":
        path = _split_file(data_cfg, split)
        return {"kind": "files", "sha256": cache.sha256_file(path)}
    if source == "hub":
        if loaded is None:
            return None
        return {"kind": "hub", "dataset": str(data_cfg.hub_dataset), "split": split,
                "rows_sha256": _examples_sha256(*loaded)}
    raise ValueError(f"data.source must be demo, files or hub, got '{source}'")


def build_split(data_cfg, tokenizer, seq_length: int, split: str, progress: bool | None = None,
                loaded: tuple | None = None) -> tuple[RewardDataset, TokenizeStats]:
    """One split: from the cache when ``data.cache_dir`` holds it, else read, validate, tokenize (and cache).

    ``loaded``: the split's ``load_split`` result when the caller already read it (no second read).
    """
    renderer = make_renderer(data_cfg, tokenizer)
    attributes = list(data_cfg.attributes)
    cache_dir = data_cfg.get("cache_dir")
    if cache_dir:
        source = source_identity(data_cfg, split, loaded)
        if source is None:
            loaded = load_split(data_cfg, split)
            source = source_identity(data_cfg, split, loaded)
        components = cache.key_components(
            source=source, tokenizer=cache.tokenizer_identity(tokenizer), template=renderer.identity(),
            attributes=attributes, score_range=data_cfg.score_range, seq_length=seq_length,
            overlength=data_cfg.overlength, on_bad_row=data_cfg.on_bad_row)
        key = cache.cache_key(components)
        path = cache.entry_path(cache_dir, split, key)
        hit = cache.load(path, key)
        if hit is not None:
            return hit
    examples, skipped = loaded if loaded is not None else load_split(data_cfg, split)
    ds, st = tokenize_examples(examples, renderer, attributes, max_length=seq_length, overlength=data_cfg.overlength,
                               progress=is_main_rank() if progress is None else progress,
                               desc=f"tokenizing {split}")
    st.skipped.update(skipped)
    st.rows += sum(skipped.values())
    if cache_dir:
        cache.save(path, key, components, ds, st)
        # Serve the memmapped copy, so that a cold start behaves (and uses memory) exactly like a warm one.
        reopened = cache.load(path, key)
        if reopened is not None:
            ds = reopened[0]
        st.cache_path = str(path)
    return ds, st


def build_datasets(data_cfg, tokenizer, seq_length: int, progress: bool | None = None, loaded: dict | None = None
                   ) -> tuple[dict[str, RewardDataset], dict[str, TokenizeStats]]:
    """Train and validation RewardDatasets and their TokenizeStats (``rows`` counts bad rows too)."""
    datasets, stats = {}, {}
    for split in SPLITS:
        datasets[split], stats[split] = build_split(data_cfg, tokenizer, seq_length, split, progress,
                                                    (loaded or {}).get(split))
    return datasets, stats


def validate(data_cfg) -> dict[str, tuple]:
    """Read and check every row of both splits (``data.on_bad_row``), before any tokenizer exists.

    Returns ``{split: (examples, skipped Counter)}`` for ``build_datasets(..., loaded=...)``; raises
    ``BadRowError`` (``file:line: field: detail``) in error mode.
    """
    if data_cfg.source not in ("demo", "files", "hub"):
        raise ValueError(f"prepare_data handles rated rows (data.source=demo, files or hub), got '{data_cfg.source}'")
    return {split: load_split(data_cfg, split) for split in SPLITS}


def prepare(data_cfg, tokenizer, seq_length: int, output_dir: str | os.PathLike | None = None,
            progress: bool | None = None, loaded: dict | None = None) -> dict:
    """Validate every row, build (or reuse) the cache and return the data report; write it to ``output_dir``.

    ``loaded``: ``validate(data_cfg)``'s result, when the rows were already checked.
    """
    from nemo_hs2.data.report import data_report

    if loaded is None:
        loaded = validate(data_cfg)
    datasets, stats = build_datasets(data_cfg, tokenizer, seq_length, progress, loaded)
    check_batches(datasets, stats, 1, None, False)  # a split with no row left is an error here too
    settings = {
        "source": str(data_cfg.source),
        "files": {s: data_cfg.get(f"{s}_file") for s in SPLITS} if data_cfg.source == "files" else None,
        "template": make_renderer(data_cfg, tokenizer).identity(),
        "tokenizer": cache.tokenizer_identity(tokenizer),
        "seq_length": int(seq_length),
        "overlength": str(data_cfg.overlength),
        "on_bad_row": str(data_cfg.on_bad_row),
        "cache_dir": data_cfg.get("cache_dir"),
    }
    report = data_report(datasets, stats, attributes=list(data_cfg.attributes),
                         score_range=tuple(data_cfg.score_range), settings=settings,
                         length_bin=int(data_cfg.get("pad_to_multiple", 8)))
    if output_dir is not None:
        out = Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        tmp = out / ".data_report.json.tmp"
        tmp.write_text(json.dumps(report, indent=2) + "\n")
        os.replace(tmp, out / "data_report.json")
    return report


# ------------------------------------------------------------------------------------------------ a training run's data
class DataError(ValueError):
    """The data a run asks for cannot train it: found before any model or process group exists."""


def _why(st: TokenizeStats) -> str:
    gone = dict(st.skipped)
    if st.truncated:
        gone["truncated (kept)"] = st.truncated
    return ", ".join(f"{k} {v}" for k, v in sorted(gone.items())) or "none left out"


def check_batches(datasets: dict, stats: dict, global_batch_size: int, loss: str | None,
                  drop_last_validation: bool) -> None:
    """Every split can fill what the trainer asks of it, and has something for the loss to learn from (``loss``:
    ``model.regression.loss_func``; None checks only that each split keeps a row)."""
    bt = loss in LOSS_NAMES and loss != "regression"
    regression = loss in ("regression", "regression+bt")
    for split, ds in datasets.items():
        unit = "pairs" if hasattr(ds, "strengths") else "rows"
        st = stats[split]
        kept = len(ds)
        if kept == 0 or (kept < global_batch_size and (split == "train" or drop_last_validation)):
            raise DataError(
                f"the {split} split keeps {kept} {unit} ({st.rows} rows read; left out: {_why(st)}), fewer than one "
                f"global batch of {global_batch_size} {unit} (model.global_batch_size). Add data, lower "
                "model.global_batch_size (and micro_batch_size), or keep more rows (e.g. data.overlength=truncate, "
                "a larger model.encoder_seq_length)")
        if bt and unit == "pairs" and not (ds.strengths != 0).any():
            raise DataError(f"the {split} split has no preference pair with nonzero strength ({kept} pairs, all "
                            "ties): a Bradley-Terry loss has nothing to learn from it")
        labels = ds.rows.labels if unit == "pairs" else ds.labels
        if regression and not (labels == labels).any():
            raise DataError(f"the {split} split has no present label for data.attributes={list(ds.attributes)}: the "
                            "regression loss has nothing to learn from it (check the attribute names)")


@dataclasses.dataclass
class RunData:
    tokenizer: object
    datasets: dict  # train / validation: RewardDataset (rated rows) or PairDataset (preference pairs)
    stats: dict
    collate: object


def build_run_data(data_cfg, tokenizer, global_batch_size: int, loss: str, progress: bool | None = None) -> RunData:
    """Read, check, render and tokenize both splits of a training run, and check they can train it."""
    from nemo_hs2.data.dataset import Collator
    from nemo_hs2.data.preference import PairCollator, build_pair_datasets

    if data_cfg.source == "preference":  # samples are whole pairs; batch sizes count pairs
        datasets, stats = build_pair_datasets(data_cfg, make_renderer(data_cfg, tokenizer), int(data_cfg.seq_length))
        collate = PairCollator(tokenizer.eos_id, data_cfg.pad_to_multiple)
    else:
        datasets, stats = build_datasets(data_cfg, tokenizer, int(data_cfg.seq_length), progress)
        collate = Collator(tokenizer.eos_id, data_cfg.pad_to_multiple)
    check_batches(datasets, stats, global_batch_size, loss, bool(data_cfg.get("validation_drop_last", False)))
    return RunData(tokenizer, datasets, stats, collate)
