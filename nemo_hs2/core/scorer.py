"""What evaluation, annotation and serving need from a reward model: the ``Scorer`` protocol.

Two implementations: ``nemo_hs2.megatron.scorer.RewardScorer`` (a ``.nemo`` on the Megatron stack) and
``nemo_hs2.hf.scorer.HFRewardScorer`` (an exported Hugging Face directory, scored with the stock classes). Both take
conversations as ``[{"role", "content"}, ...]`` ending with the rated assistant turn.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Protocol

import numpy as np

from nemo_hs2.core.conversation import Conversation
from nemo_hs2.core.reward_weights import combine


class Scorer(Protocol):
    attributes: tuple[str, ...]
    weights: np.ndarray  # one per attribute; the reward is ``attributes @ weights``
    batch_size: int
    max_length: int

    def tokenize(self, conversation, truncate: bool = True) -> np.ndarray:
        """Token ids as the model reads them; ``truncate=False`` keeps an over-long row whole (to detect it)."""

    def predict_tokens(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """``[rows, outputs]`` predictions (float64) for tokenized rows."""

    def score(self, conversations) -> list[dict]:
        """Per-conversation ``{"attributes": {name: value}, "reward": float}``."""


@dataclasses.dataclass(frozen=True)
class BTSettings:
    """What a checkpoint's Bradley-Terry loss compares and how (its ``model.regression``): evaluation on preference
    sets reports the loss the recipe trained with."""

    weights: np.ndarray  # over the scorer's attributes
    kind: str  # regular_bt | margin_bt | scaled_bt
    ties: str  # drop | aligner
    source: str  # where the weights come from, for the report


def as_conversation(conversation) -> Conversation:
    return conversation if isinstance(conversation, Conversation) else Conversation.from_messages(conversation)


class ScoresConversations:
    """``score`` for a scorer that has ``tokenize`` and ``predict_tokens``: one implementation for both scorers."""

    def score(self, conversations) -> list[dict]:
        pred = self.predict_tokens([self.tokenize(c) for c in conversations])
        return [{"attributes": dict(zip(self.attributes, row.tolist())), "reward": float(combine(row, self.weights))}
                for row in pred]
