"""Tokenized reward-model rows and a collate function that pads each batch only to its longest row."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from nemo_hs2.data.examples import Example
from nemo_hs2.data.template import DEFAULT_SYSTEM, format_example

OVERLENGTH_POLICIES = ("truncate", "drop")


@dataclasses.dataclass
class TokenizeStats:
    rows: int = 0
    used: int = 0
    truncated: int = 0
    skipped: Counter = dataclasses.field(default_factory=Counter)


class RewardDataset(torch.utils.data.Dataset):
    """Token ids per row, a label matrix (NaN = missing) and pair ids; indexable by Megatron's batch samplers."""

    def __init__(self, tokens: Sequence[np.ndarray], labels: np.ndarray, pair_ids: np.ndarray,
                 attributes: Sequence[str]):
        if len(tokens) != len(labels) or len(tokens) != len(pair_ids):
            raise ValueError("tokens, labels and pair_ids must have one entry per row")
        if labels.ndim != 2 or labels.shape[1] != len(attributes):
            raise ValueError(f"labels must be [rows, {len(attributes)}], got {labels.shape}")
        self.tokens = list(tokens)
        self.labels = labels.astype(np.float32)
        self.pair_ids = pair_ids.astype(np.int64)
        self.attributes = tuple(attributes)

    def __len__(self):
        return len(self.tokens)

    def __getitem__(self, idx):
        if idx == -1:  # Megatron's batch sampler pads the last validation batch with -1: a row with no labels
            return {"tokens": self.tokens[0][-1:], "labels": np.full(len(self.attributes), np.nan, np.float32),
                    "pair_id": -1}
        return {"tokens": self.tokens[idx], "labels": self.labels[idx], "pair_id": self.pair_ids[idx]}

    def lengths(self) -> np.ndarray:
        return np.array([len(t) for t in self.tokens], dtype=np.int64)


def tokenize_examples(examples: Iterable[Example], tokenizer, attributes: Sequence[str], max_length: int,
                      overlength: str = "truncate", system: str = DEFAULT_SYSTEM) -> tuple[RewardDataset, TokenizeStats]:
    """Template and tokenize rows once.

    The context and the response are tokenized separately so that an over-long row can lose context from the
    left while the response end and the end-of-response token (where the reward is read) always survive.
    """
    if overlength not in OVERLENGTH_POLICIES:
        raise ValueError(f"data.overlength must be one of {OVERLENGTH_POLICIES}, got '{overlength}'")
    stats = TokenizeStats()
    tokens, labels, pair_ids = [], [], []
    for ex in examples:
        stats.rows += 1
        context, response = format_example(ex.prompt, ex.response, system)
        ctx_ids = tokenizer.text_to_ids(context)
        resp_ids = tokenizer.text_to_ids(response)
        ids = ctx_ids + resp_ids
        if len(ids) > max_length:
            if overlength == "drop":
                stats.skipped["overlength"] += 1
                continue
            ids = ids[len(ids) - max_length:]
            stats.truncated += 1
        tokens.append(np.asarray(ids, dtype=np.int32))
        labels.append([ex.labels.get(a, math.nan) for a in attributes])
        pair_ids.append(ex.pair_id)
        stats.used += 1
    labels = np.asarray(labels, dtype=np.float32).reshape(len(tokens), len(attributes))
    return RewardDataset(tokens, labels, np.asarray(pair_ids, dtype=np.int64), attributes), stats


def pad_length(longest: int, multiple: int) -> int:
    return int(math.ceil(longest / multiple) * multiple)


class Collator:
    """Pads a batch to its longest row rounded up to ``pad_to_multiple``; never to the configured seq_length."""

    def __init__(self, pad_id: int, pad_to_multiple: int = 8):
        self.pad_id = int(pad_id)
        self.pad_to_multiple = int(pad_to_multiple)

    def __call__(self, rows):
        lengths = torch.tensor([len(r["tokens"]) for r in rows], dtype=torch.int64)
        width = pad_length(int(lengths.max()), self.pad_to_multiple)
        inputs = torch.full((len(rows), width), self.pad_id, dtype=torch.int64)
        for i, r in enumerate(rows):
            inputs[i, : len(r["tokens"])] = torch.from_numpy(np.asarray(r["tokens"], dtype=np.int64))
        labels = torch.from_numpy(np.stack([r["labels"] for r in rows]).astype(np.float32))
        label_mask = ~torch.isnan(labels)
        return {
            "inputs": inputs,
            "lengths": lengths,
            "position_ids": torch.arange(width, dtype=torch.int64).unsqueeze(0).expand(len(rows), -1).contiguous(),
            "labels": torch.nan_to_num(labels, nan=0.0),
            "label_mask": label_mask,
            "pair_ids": torch.tensor([int(r["pair_id"]) for r in rows], dtype=torch.int64),
        }
