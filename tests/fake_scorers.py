"""Scorers for evaluation and annotation tests: the ``Scorer`` protocol (nemo_hs2/core/scorer.py) with the real
renderer over bytes, and predictions computed from the rated response's text instead of a model."""

from __future__ import annotations

import numpy as np

from nemo_hs2.core.render import Renderer
from nemo_hs2.core.scorer import ScoresConversations, as_conversation

_BYTES = type("Bytes", (), {"text_to_ids": staticmethod(str.encode)})()
_HEADER, _END = "<extra_id_1>Assistant\n", "\n<extra_id_2>"


class TextScorer(ScoresConversations):
    batch_size = 4
    max_length = 10 ** 6

    def __init__(self):
        self.renderer = Renderer("steerlm", _BYTES, "S")
        self.calls = self.rows = 0

    def tokenize(self, conversation, truncate=True):
        ids = self.renderer.ids(as_conversation(conversation))
        return np.asarray(ids[-self.max_length:] if truncate else ids, dtype=np.int64)

    def predict_tokens(self, rows):
        self.calls += 1
        self.rows += len(rows)
        responses = [bytes(int(i) for i in r).decode().rsplit(_HEADER, 1)[1].removesuffix(_END) for r in rows]
        return np.asarray([self.predict_response(r) for r in responses], dtype=np.float64).reshape(len(rows), -1)

    def predict_response(self, response: str):
        raise NotImplementedError
