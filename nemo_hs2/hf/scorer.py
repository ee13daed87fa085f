"""Score conversations with an exported Hugging Face reward model directory (``examples/export_hf.py``).

The ``nemo_hs2.core.scorer.Scorer`` protocol, as ``nemo_hs2.megatron.scorer.RewardScorer`` (``attributes``, ``weights``, ``batch_size``,
``max_length``, ``tokenize``, ``score``), so evaluation runs unchanged on either. Only the stock transformers class
and tokenizer are used: the chat template renders, the tokenizer pads on the right with the exported pad token, the
class reads each row's last non-pad token. ``config.nemo_hs2.score_bias`` (Llama exports) is added back.
"""

from __future__ import annotations

import os

import numpy as np

from nemo_hs2.core.reward_weights import resolve_weights, weights_for
from nemo_hs2.core.scorer import ScoresConversations, as_conversation


class HFRewardScorer(ScoresConversations):
    def __init__(self, directory: str, batch_size: int = 8, max_length: int | None = None, weights=None):
        import torch
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        if not os.path.isfile(os.path.join(directory, "config.json")):
            raise FileNotFoundError(f"hf_model={directory}: no config.json (an examples/export_hf.py directory?)")
        self.model = AutoModelForSequenceClassification.from_pretrained(directory, torch_dtype=torch.float32).eval()
        self.tokenizer = AutoTokenizer.from_pretrained(directory)
        meta = getattr(self.model.config, "nemo_hs2", None)
        if not meta:
            raise ValueError(f"hf_model={directory}: config.json has no nemo_hs2 section (not a nemo_hs2 export)")
        self.head = meta["head"]
        labels = [self.model.config.id2label[i] for i in range(self.model.config.num_labels)]
        self.attributes = tuple(labels)
        if self.head == "attributes":
            spec = meta["reward_weights"] if weights is None else weights
            self.weights = resolve_weights(weights_for(spec, self.attributes), self.attributes)
        else:
            if weights is not None:
                raise ValueError("a reward-head export has its weights folded in; reward_weights cannot change them")
            self.weights = np.ones(1)
        self.bias = np.zeros(len(labels)) if meta.get("score_bias") is None else np.asarray(meta["score_bias"])
        self.batch_size = max(1, int(batch_size))
        self.max_length = int(max_length or self.tokenizer.model_max_length)

    def tokenize(self, conversation, truncate: bool = True) -> np.ndarray:
        # The exported chat template renders it, as any transformers user would (the same turn rules as the .nemo).
        ids = self.tokenizer.apply_chat_template(as_conversation(conversation).messages(), tokenize=True)
        ids = ids[-self.max_length:] if truncate else ids
        return np.asarray(ids, dtype=np.int64)

    def predict_tokens(self, rows) -> np.ndarray:
        import torch

        out = []
        for start in range(0, len(rows), self.batch_size):
            batch = self.tokenizer.pad({"input_ids": [list(map(int, r)) for r in rows[start:start + self.batch_size]]},
                                       padding=True, return_tensors="pt")
            with torch.no_grad():
                out.append(self.model(**batch).logits.double().numpy() + self.bias)
        return np.concatenate(out) if out else np.zeros((0, len(self.attributes)))
