"""Score conversations with a trained reward model (``.nemo``): per-attribute predictions and the weighted reward.

Used by evaluation, annotation and serving. Conversations are rendered by the same ``Renderer`` (template and system
prompt saved in the checkpoint) and truncated from the left as in training, so a row scores the same here as in
validation.
"""

from __future__ import annotations

import numpy as np

from nemo_hs2.core.render import Renderer
from nemo_hs2.core.config import RegressionConfig
from nemo_hs2.core.reward_weights import resolve_weights, weights_for
from nemo_hs2.core.scorer import BTSettings, ScoresConversations, as_conversation
from nemo_hs2.data.dataset import Collator


def model_renderer(model) -> Renderer:
    """The renderer a checkpoint was trained with (``model.template`` and ``model.system_prompt`` travel in it)."""
    return Renderer(model.cfg.get("template") or "steerlm", model.tokenizer, model.cfg.get("system_prompt"))


class RewardScorer(ScoresConversations):
    """Batched scoring with an ``AttributeRewardModel`` (every model-parallel rank calls ``score`` alike)."""

    def __init__(self, model, weights=None, batch_size: int = 8, max_length: int | None = None,
                 pad_to_multiple: int = 8):
        self.model = model
        self.attributes = tuple(model.attributes)
        if weights is None:  # the checkpoint's own: what it validated with (resolved to its attributes in training)
            weights = RegressionConfig.from_cfg(model.cfg.regression).reward_weights
        self.weights = resolve_weights(weights_for(weights, self.attributes), self.attributes)
        self.batch_size = max(1, int(batch_size))
        self.renderer = model_renderer(model)
        self.template = self.renderer.template
        self.max_length = int(max_length or model.cfg.encoder_seq_length)
        self.collate = Collator(model.tokenizer.eos_id, pad_to_multiple)
        self.bt = None  # the Bradley-Terry settings the checkpoint trained with, if it did
        if getattr(model, "loss_name", "regression") != "regression":
            self.bt = BTSettings(model.bt_weights.double().numpy(), model.bt_kind, model.bt_ties,
                                 f"model.regression.bt_reward {dict(model.cfg.regression.bt_reward)}")

    def tokenize(self, conversation, truncate: bool = True) -> np.ndarray:
        """Token ids as training would see them; ``truncate=False`` keeps over-long rows whole (to detect them)."""
        ids = self.renderer.ids(as_conversation(conversation))
        ids = ids[-self.max_length:] if truncate else ids  # keep the end, where the reward is read
        return np.asarray(ids, dtype=np.int32)

    def predict_tokens(self, rows) -> np.ndarray:
        """``[rows, attributes]`` predictions (float64) for already tokenized rows, ``batch_size`` at a time."""
        empty = np.full(len(self.attributes), np.nan, np.float32)
        out = []
        for start in range(0, len(rows), self.batch_size):
            batch = self.collate([{"tokens": np.asarray(r, dtype=np.int32), "labels": empty, "pair_id": -1}
                                  for r in rows[start:start + self.batch_size]])
            out.append(self.model.predict(batch).cpu().numpy().astype(np.float64))
        return np.concatenate(out) if out else np.zeros((0, len(self.attributes)))
