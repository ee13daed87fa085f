"""Preference pairs (HelpSteer2-Preference) for the Bradley-Terry losses.

A sample is a whole pair, so Megatron's batch samplers can never put its two responses into different
micro-batches or data-parallel ranks; the collate lays each pair out as two consecutive rows, which is what
``nemo_hs2.core.losses.bradley_terry_sum`` reads. ``model.micro_batch_size`` / ``global_batch_size`` count pairs.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np
import torch

from nemo_hs2.data.dataset import Collator, tokenize_examples
from nemo_hs2.data.demo import demo_pairs
from nemo_hs2.data.rows import Example


class PairDataset(torch.utils.data.Dataset):
    def __init__(self, rows, strengths: np.ndarray):
        if len(rows) != 2 * len(strengths):
            raise ValueError("a pair dataset needs exactly two rows per preference")
        self.rows = rows  # a RewardDataset whose rows 2i and 2i+1 are response_1 and response_2 of pair i
        self.strengths = strengths.astype(np.float32)
        self.attributes = rows.attributes

    def __len__(self):
        return len(self.strengths)

    def __getitem__(self, idx):
        if idx == -1:  # the sampler's padding: two unlabelled rows without a preference
            pad = self.rows[-1]
            return {"rows": (pad, pad), "preference": math.nan, "pair_id": -1}
        return {"rows": (self.rows[2 * idx], self.rows[2 * idx + 1]), "preference": float(self.strengths[idx]),
                "pair_id": idx}

    def lengths(self) -> np.ndarray:
        return self.rows.lengths().reshape(-1, 2).max(axis=1)


class PairCollator(Collator):
    def __call__(self, pairs):
        rows = []
        for p in pairs:
            for r in p["rows"]:
                rows.append({**r, "pair_id": p["pair_id"]})
        batch = super().__call__(rows)
        batch["preference"] = torch.tensor([p["preference"] for p in pairs for _ in range(2)], dtype=torch.float32)
        return batch


def file_pairs(data_cfg, split: str) -> tuple[list[Example], list[float]]:
    from nemo_hs2.data.sources import read_preference

    path = data_cfg.get("preference_file")
    if not path:
        raise ValueError("data.source=preference needs data.preference_file=PATH (HelpSteer2 preference.jsonl.gz)")
    return pair_rows(read_preference(path, split=data_cfg.splits[split], on_bad_row=data_cfg.on_bad_row))


def pair_rows(pairs) -> tuple[list[Example], list[float]]:
    """HelpSteer2-Preference pairs as two rows each (response_1, response_2) and their strengths."""
    from nemo_hs2.data.sources import helpsteer2_conversation

    rows = [Example(helpsteer2_conversation(p.prompt, r), {}, source=p.source, line=p.line, pair_id=i)
            for i, p in enumerate(pairs) for r in (p.response_1, p.response_2)]
    return rows, [float(p.strength) for p in pairs]


def load_pairs(data_cfg, split: str) -> tuple[list[Example], list[float], Counter]:
    """Rows (two per pair), strengths and the skipped / filtered counts (per pair) of one split."""
    if data_cfg.get("format") == "helpsteer3":
        from nemo_hs2.data.helpsteer3 import load_pairs as hs3_pairs
        from nemo_hs2.data.helpsteer3 import pair_examples

        pairs = hs3_pairs(data_cfg, split)
        rows, strengths = pair_examples(pairs)
        return rows, strengths, pairs.skipped + Counter({f"filtered_{k}": v for k, v in pairs.filtered.items()})
    if data_cfg.get("preference_file"):
        return (*file_pairs(data_cfg, split), Counter())
    return (*demo_pairs(data_cfg.demo[f"{split}_prompts"], data_cfg.demo.seed, split), Counter())


def build_pair_datasets(data_cfg, renderer, seq_length: int, loaded: dict | None = None):
    """``loaded``: ``{split: load_pairs(...)}`` when the caller already read the splits."""
    datasets, stats = {}, {}
    for split in ("train", "validation"):
        rows, strengths, skipped = (loaded or {}).get(split) or load_pairs(data_cfg, split)
        # Both responses must survive tokenization, so over-long pairs are truncated, never dropped alone.
        ds, st = tokenize_examples(rows, renderer, list(data_cfg.attributes), max_length=seq_length,
                                   overlength="truncate")
        datasets[split] = PairDataset(ds, np.asarray(strengths))
        if skipped:  # bad or filtered pairs, counted as two rows each like the kept ones
            st.skipped.update({k: 2 * v for k, v in skipped.items()})
            st.rows += 2 * sum(skipped.values())
        stats[split] = st
    return datasets, stats
