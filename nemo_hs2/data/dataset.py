"""Tokenized reward-model rows and a collate function that pads each batch only to its longest row."""

from __future__ import annotations

import dataclasses
import math
from collections import Counter
from collections.abc import Iterable, Sequence

import numpy as np
import torch

from nemo_hs2.data.rows import Example

OVERLENGTH_POLICIES = ("truncate", "drop")


@dataclasses.dataclass
class TokenizeStats:
    rows: int = 0  # rows read, bad ones included: rows == used + sum(skipped.values())
    used: int = 0
    truncated: int = 0
    unpaired: int = 0  # rows kept whose pair partner was dropped (overlength=drop): their pair_id is -1
    skipped: Counter = dataclasses.field(default_factory=Counter)
    cache_path: str | None = None  # the cache directory this split was read from or written to
    cache_hit: bool = False

    def to_dict(self) -> dict:
        return {"rows": self.rows, "used": self.used, "truncated": self.truncated, "unpaired": self.unpaired,
                "skipped": dict(self.skipped)}

    @classmethod
    def from_dict(cls, d: dict) -> TokenizeStats:
        return cls(rows=int(d["rows"]), used=int(d["used"]), truncated=int(d["truncated"]),
                   unpaired=int(d.get("unpaired", 0)),
                   skipped=Counter({str(k): int(v) for k, v in d["skipped"].items()}))


class TokenRows(Sequence):
    """Row ``i`` of a flat token array cut by ``offsets``; a view, so a memmapped cache is never copied whole."""

    def __init__(self, flat: np.ndarray, offsets: np.ndarray):
        self._flat = flat
        self._offsets = offsets

    def __len__(self):
        return len(self._offsets) - 1

    def __getitem__(self, i):
        n = len(self)
        if not isinstance(i, (int, np.integer)):
            raise TypeError("TokenRows takes one integer index")
        if i < 0:
            i += n
        if not 0 <= i < n:
            raise IndexError(f"row {i} of {n}")
        return self._flat[self._offsets[i]:self._offsets[i + 1]]


class RewardDataset(torch.utils.data.Dataset):
    """Token ids per row, a label matrix (NaN = missing) and pair ids; indexable by Megatron's batch samplers.

    Rows live in one flat int32 array cut by ``offsets`` (``rows + 1`` entries), which may be a read-only
    memmap of the tokenized cache (``from_arrays``).
    """

    def __init__(self, tokens: Sequence[np.ndarray], labels: np.ndarray, pair_ids: np.ndarray,
                 attributes: Sequence[str], full_lengths: np.ndarray | None = None):
        lengths = np.fromiter((len(t) for t in tokens), dtype=np.int64, count=len(tokens))
        offsets = np.zeros(len(tokens) + 1, dtype=np.int64)
        np.cumsum(lengths, out=offsets[1:])
        flat = np.concatenate([np.asarray(t, dtype=np.int32) for t in tokens]) if len(tokens) else np.zeros(0, np.int32)
        self._init(flat, offsets, labels, pair_ids, attributes, full_lengths)

    @classmethod
    def from_arrays(cls, flat: np.ndarray, offsets: np.ndarray, labels: np.ndarray, pair_ids: np.ndarray,
                    attributes: Sequence[str], full_lengths: np.ndarray | None = None,
                    reopen=None) -> RewardDataset:
        """``reopen``: a picklable no-argument callable returning the arrays again (by the cache's array names),
        so that a pickled dataset carries the way to its memmaps instead of their contents."""
        self = cls.__new__(cls)
        self._init(flat, offsets, labels, pair_ids, attributes, full_lengths)
        self._reopen = reopen
        return self

    def _init(self, flat, offsets, labels, pair_ids, attributes, full_lengths):
        rows = len(offsets) - 1
        if len(labels) != rows or len(pair_ids) != rows:
            raise ValueError("tokens, labels and pair_ids must have one entry per row")
        if labels.ndim != 2 or labels.shape[1] != len(attributes):
            raise ValueError(f"labels must be [rows, {len(attributes)}], got {labels.shape}")
        if offsets[0] != 0 or offsets[-1] != len(flat):
            raise ValueError("offsets must start at 0 and end at the number of tokens")
        # np.asarray keeps a memmap a memmap when the dtype already matches (the cache writes these dtypes).
        self._flat = np.asarray(flat, dtype=np.int32)
        self._offsets = np.asarray(offsets, dtype=np.int64)
        self.labels = np.asarray(labels, dtype=np.float32)
        self.pair_ids = np.asarray(pair_ids, dtype=np.int64)
        self.attributes = tuple(attributes)
        self.full_lengths = None if full_lengths is None else np.asarray(full_lengths, dtype=np.int64)
        self._reopen = None

    @property
    def tokens(self) -> TokenRows:
        return TokenRows(self._flat, self._offsets)

    @property
    def flat_tokens(self) -> np.ndarray:
        return self._flat

    @property
    def offsets(self) -> np.ndarray:
        return self._offsets

    def __len__(self):
        return len(self._offsets) - 1

    def __getitem__(self, idx):
        if idx == -1:  # Megatron's batch sampler pads the last validation batch with -1: a row with no labels
            end = int(self._offsets[1])
            return {"tokens": self._flat[end - 1:end], "labels": np.full(len(self.attributes), np.nan, np.float32),
                    "pair_id": -1}
        start, end = self._offsets[idx], self._offsets[idx + 1]
        return {"tokens": self._flat[start:end], "labels": self.labels[idx], "pair_id": self.pair_ids[idx]}

    def lengths(self) -> np.ndarray:
        return np.diff(self._offsets)

    def __getstate__(self):
        # A memmap pickles as its whole contents; a spawned DataLoader worker can re-open the cache instead.
        state = dict(self.__dict__)
        if self._reopen is not None:
            for key in ("_flat", "_offsets", "labels", "pair_ids", "full_lengths"):
                state[key] = None
        return state

    def __setstate__(self, state):
        self.__dict__.update(state)
        if self._reopen is not None and self._flat is None:
            arrays = self._reopen()
            self._flat, self._offsets = arrays["tokens"], arrays["offsets"]
            self.labels, self.pair_ids, self.full_lengths = arrays["labels"], arrays["pair_ids"], arrays["full_lengths"]


def tokenize_examples(examples: Iterable[Example], renderer, attributes: Sequence[str], max_length: int,
                      overlength: str = "truncate", progress: bool = False,
                      desc: str = "tokenizing") -> tuple[RewardDataset, TokenizeStats]:
    """Render and tokenize rows once, through ``renderer`` (``nemo_hs2.core.render.Renderer``: the path scoring,
    serving and export take too). An over-long row either loses tokens from the left, so the response end
    and the end-of-response token (where the reward is read) always survive, or is dropped and counted; it is
    never replaced by another row. A dropped row's pair partner stays as an unpaired row (pair id -1; its labels
    still train the regression), counted in ``stats.unpaired``, so pairwise metrics only see whole pairs.
    """
    if overlength not in OVERLENGTH_POLICIES:
        raise ValueError(f"data.overlength must be one of {OVERLENGTH_POLICIES}, got '{overlength}'")
    stats = TokenizeStats()
    tokens, labels, pair_ids, full_lengths = [], [], [], []
    broken_pairs = set()
    if progress:
        from tqdm.auto import tqdm

        total = len(examples) if hasattr(examples, "__len__") else None
        examples = tqdm(examples, total=total, desc=desc, unit="row", mininterval=0.5, dynamic_ncols=True)
    for ex in examples:
        stats.rows += 1
        ids = renderer.ids(ex.conversation)
        full = len(ids)
        if full > max_length:
            if overlength == "drop":
                stats.skipped["overlength"] += 1
                if ex.pair_id >= 0:
                    broken_pairs.add(ex.pair_id)
                continue
            ids = ids[full - max_length:]
            stats.truncated += 1
        tokens.append(np.asarray(ids, dtype=np.int32))
        labels.append([ex.labels.get(a, math.nan) for a in attributes])
        pair_ids.append(ex.pair_id)
        full_lengths.append(full)
        stats.used += 1
    labels = np.asarray(labels, dtype=np.float32).reshape(len(tokens), len(attributes))
    pair_ids = np.asarray(pair_ids, dtype=np.int64)
    if broken_pairs:
        partners = np.isin(pair_ids, np.fromiter(broken_pairs, dtype=np.int64))
        pair_ids[partners] = -1
        stats.unpaired = int(partners.sum())
    ds = RewardDataset(tokens, labels, pair_ids, attributes,
                       full_lengths=np.asarray(full_lengths, dtype=np.int64))
    return ds, stats


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
