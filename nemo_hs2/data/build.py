"""Build the train/validation datasets a config asks for: tokenized once, cached when data.cache_dir is set."""

from __future__ import annotations

import hashlib
import json
import os
from collections import Counter
from pathlib import Path

from nemo_hs2.data import cache
from nemo_hs2.data.dataset import RewardDataset, SteerLMFormat, TokenizeStats, tokenize_examples
from nemo_hs2.data.demo import demo_examples
from nemo_hs2.data.template import DEFAULT_SYSTEM

SPLITS = ("train", "validation")
TEMPLATES = ("steerlm", "hf_chat")


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


def make_formatter(data_cfg, tokenizer):
    """The row formatter ``data.template`` names (``steerlm`` when unset)."""
    template = data_cfg.get("template") or "steerlm"
    system = data_cfg.get("system_prompt")
    if template == "steerlm":
        return SteerLMFormat(tokenizer, DEFAULT_SYSTEM if system is None else system)
    if template == "hf_chat":
        from nemo_hs2.data.chat_template import ChatTemplateFormat

        # No default system turn here: chat models come with their own conventions for it.
        return ChatTemplateFormat(tokenizer, system)
    raise ValueError(f"data.template must be one of {TEMPLATES}, got '{template}'")


def _examples_sha256(examples, skipped: Counter) -> str:
    h = hashlib.sha256()
    for ex in examples:
        h.update(json.dumps([ex.prompt, ex.response, sorted(ex.labels.items()), ex.pair_id]).encode())
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


def _default_progress() -> bool:
    # One bar per job, not one per rank.
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


def build_split(data_cfg, tokenizer, seq_length: int, split: str, progress: bool | None = None,
                loaded: tuple | None = None) -> tuple[RewardDataset, TokenizeStats]:
    """One split: from the cache when ``data.cache_dir`` holds it, else read, validate, tokenize (and cache).

    ``loaded``: the split's ``load_split`` result when the caller already read it (no second read).
    """
    formatter = make_formatter(data_cfg, tokenizer)
    attributes = list(data_cfg.attributes)
    cache_dir = data_cfg.get("cache_dir")
    if cache_dir:
        source = source_identity(data_cfg, split, loaded)
        if source is None:
            loaded = load_split(data_cfg, split)
            source = source_identity(data_cfg, split, loaded)
        components = cache.key_components(
            source=source, tokenizer=cache.tokenizer_identity(tokenizer), template=formatter.identity(),
            attributes=attributes, score_range=data_cfg.score_range, seq_length=seq_length,
            overlength=data_cfg.overlength, on_bad_row=data_cfg.on_bad_row)
        key = cache.cache_key(components)
        path = cache.entry_path(cache_dir, split, key)
        hit = cache.load(path, key)
        if hit is not None:
            return hit
    examples, skipped = loaded if loaded is not None else load_split(data_cfg, split)
    ds, st = tokenize_examples(examples, tokenizer, attributes, max_length=seq_length, overlength=data_cfg.overlength,
                               formatter=formatter, progress=_default_progress() if progress is None else progress,
                               desc=f"tokenizing {split}")
    st.skipped.update(skipped)
    st.rows += sum(skipped.values())
    if len(ds) == 0:
        raise ValueError(f"the {split} split has no usable rows (skipped: {dict(st.skipped)})")
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


def build_tokenizer(tokenizer_cfg):
    """The tokenizer ``model.tokenizer`` describes, as the Megatron model would build it, but without a model."""
    library = tokenizer_cfg.get("library")
    special = tokenizer_cfg.get("special_tokens", None)
    if library == "byte-level":
        # Imported directly: get_nmt_tokenizer lives in nemo.collections.nlp, which pulls in Megatron.
        from nemo.collections.common.tokenizers.bytelevel_tokenizers import ByteLevelTokenizer

        return ByteLevelTokenizer(special)
    from nemo.collections.nlp.modules.common.tokenizer_utils import get_nmt_tokenizer

    legacy = tokenizer_cfg.get("sentencepiece_legacy", library == "sentencepiece")
    tokenizer = get_nmt_tokenizer(
        library=library, model_name=tokenizer_cfg.get("type"), tokenizer_model=tokenizer_cfg.get("model"),
        vocab_file=tokenizer_cfg.get("vocab_file"), merges_file=tokenizer_cfg.get("merge_file"),
        use_fast=tokenizer_cfg.get("use_fast", False), delimiter=tokenizer_cfg.get("delimiter"),
        special_tokens=special, trust_remote_code=tokenizer_cfg.get("trust_remote_code", False), legacy=legacy,
        chat_template=tokenizer_cfg.get("chat_template"))
    if tokenizer_cfg.get("additional_special_tokens") is not None:
        tokenizer.add_special_tokens(list(tokenizer_cfg.additional_special_tokens))
    return tokenizer


def prepare(data_cfg, tokenizer, seq_length: int, output_dir: str | os.PathLike | None = None,
            progress: bool | None = None, loaded: dict | None = None) -> dict:
    """Validate every row, build (or reuse) the cache and return the data report; write it to ``output_dir``.

    ``loaded``: ``validate(data_cfg)``'s result, when the rows were already checked.
    """
    from nemo_hs2.data.report import data_report

    if loaded is None:
        loaded = validate(data_cfg)
    datasets, stats = build_datasets(data_cfg, tokenizer, seq_length, progress, loaded)
    formatter = make_formatter(data_cfg, tokenizer)
    settings = {
        "source": str(data_cfg.source),
        "files": {s: data_cfg.get(f"{s}_file") for s in SPLITS} if data_cfg.source == "files" else None,
        "template": formatter.identity(),
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
