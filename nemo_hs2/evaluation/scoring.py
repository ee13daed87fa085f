"""Scoring many conversations with a ``RewardScorer``, with progress and a count of over-long rows."""

from __future__ import annotations

import dataclasses
import sys

import numpy as np

from nemo_hs2.core.reward_weights import combine


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


def score_conversations(scorer, conversations, desc: str = "scoring", progress: bool = True) -> Scored:
    """Every conversation through ``scorer`` (a ``nemo_hs2.core.scorer.Scorer``) in chunks, tokenized once; the same
    rows on every model-parallel rank. Rows longer than ``max_length`` keep their end, as in training, and are
    counted."""
    conversations = list(conversations)
    # All rows first: every conversation is validated before the first forward.
    rows = [scorer.tokenize(c, truncate=False) for c in conversations]
    lengths = np.array([len(r) for r in rows], dtype=np.int64)
    max_length = int(scorer.max_length)
    pred = np.zeros((len(rows), len(scorer.attributes)), dtype=np.float64)
    step = max(1, scorer.batch_size) * 8
    with progress_bar(len(rows), desc, progress) as bar:
        for start in range(0, len(rows), step):
            chunk = [r[-max_length:] for r in rows[start:start + step]]
            pred[start:start + len(chunk)] = scorer.predict_tokens(chunk)
            bar.update(len(chunk))
    reward = combine(pred, scorer.weights)
    return Scored(pred=pred, reward=reward, lengths=lengths, max_length=max_length)
