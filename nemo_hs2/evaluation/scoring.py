"""Scoring many conversations with a ``RewardScorer``, with progress and a count of over-long rows."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np


@dataclasses.dataclass
class Scored:
    pred: np.ndarray      # [rows, attributes], the model's raw outputs
    reward: np.ndarray    # [rows], the scorer's weighted reward
    lengths: np.ndarray   # [rows], tokens before truncation
    max_length: int

    @property
    def truncated(self) -> int:
        return int((self.lengths > self.max_length).sum())


def progress_bar(total: int, desc: str, enabled: bool = True):
    from tqdm import tqdm

    # Under a batch system stderr is a file: one line every 30 s instead of a carriage-return stream.
    interactive = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit="row", file=sys.stderr, disable=not enabled,
                mininterval=0.5 if interactive else 30.0, dynamic_ncols=interactive)


def token_lengths(scorer, conversations) -> np.ndarray:
    """Token count of each conversation as the scorer formats it, before it keeps only the last ``max_length``."""
    return np.array([len(scorer.tokenize(c, truncate=False)) for c in conversations], dtype=np.int64)


def score_conversations(scorer, conversations, desc: str = "scoring", progress: bool = True) -> Scored:
    """``scorer.score`` over all conversations in chunks (the same rows on every model-parallel rank)."""
    conversations = list(conversations)
    names = scorer.attributes
    pred = np.zeros((len(conversations), len(names)), dtype=np.float64)
    reward = np.zeros(len(conversations), dtype=np.float64)
    lengths = token_lengths(scorer, conversations)  # also validates every conversation before the first forward
    step = max(1, scorer.batch_size) * 8
    with progress_bar(len(conversations), desc, progress) as bar:
        for start in range(0, len(conversations), step):
            results = scorer.score(conversations[start:start + step])
            for i, r in enumerate(results, start=start):
                pred[i] = [r["attributes"][a] for a in names]
                reward[i] = r["reward"]
            bar.update(len(results))
    return Scored(pred=pred, reward=reward, lengths=lengths, max_length=int(scorer.max_length))
