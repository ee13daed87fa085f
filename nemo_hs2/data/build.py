"""Build the train/validation datasets a training config asks for."""

from __future__ import annotations

from nemo_hs2.data.dataset import RewardDataset, TokenizeStats, tokenize_examples
from nemo_hs2.data.demo import demo_examples
from nemo_hs2.data.template import DEFAULT_SYSTEM

SPLITS = ("train", "validation")


def load_split(data_cfg, split: str):
    """Examples of one split, from the source ``data.source`` names."""
    source = data_cfg.source
    if source == "demo":
        prompts = data_cfg.demo[f"{split}_prompts"]
        return demo_examples(prompts, seed=data_cfg.demo.seed, split=split), {}
    if source == "files":
        from nemo_hs2.data.sources import read_examples

        path = data_cfg.get(f"{split}_file")
        if not path:
            raise ValueError(f"data.source=files needs data.{split}_file=PATH (.jsonl, .jsonl.gz or .parquet)")
        return read_examples(path, list(data_cfg.attributes), score_range=tuple(data_cfg.score_range),
                             on_bad_row=data_cfg.on_bad_row)
    if source == "hub":
        from nemo_hs2.data.sources import read_hub

        return read_hub(data_cfg.hub_dataset, split=split, attributes=list(data_cfg.attributes),
                        score_range=tuple(data_cfg.score_range), on_bad_row=data_cfg.on_bad_row)
    raise ValueError(f"data.source must be demo, files or hub, got '{source}'")


def build_datasets(data_cfg, tokenizer, seq_length: int) -> tuple[dict[str, RewardDataset], dict[str, TokenizeStats]]:
    datasets, stats = {}, {}
    system = data_cfg.get("system_prompt")
    for split in SPLITS:
        examples, skipped = load_split(data_cfg, split)
        ds, st = tokenize_examples(examples, tokenizer, list(data_cfg.attributes), max_length=seq_length,
                                   overlength=data_cfg.overlength, system=DEFAULT_SYSTEM if system is None else system)
        st.skipped.update(skipped)
        if len(ds) == 0:
            raise ValueError(f"the {split} split has no usable rows (skipped: {dict(st.skipped)})")
        datasets[split], stats[split] = ds, st
    return datasets, stats
