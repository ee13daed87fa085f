"""Score conversations with a trained reward model: per-attribute predictions and the weighted reward.

Used by evaluation and serving. Conversations are lists of ``{"role", "content"}`` turns (roles ``system``,
``user``, ``assistant``) ending with the assistant response to be scored; they are formatted with the same
template and truncation as training, so a row scores the same here as in validation.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from nemo_hs2.data.dataset import Collator, encoder_of
from nemo_hs2.data.template import DEFAULT_SYSTEM, Turn, format_context, format_response
from nemo_hs2.reward import combine, resolve_weights, weights_for

_ROLES = {"user": "User", "assistant": "Assistant"}


def conversation_to_text(conversation: Sequence[Mapping[str, str]], system: str = DEFAULT_SYSTEM) -> tuple[str, str]:
    """(context, response) in the SteerLM template; the last turn must be the assistant's."""
    turns = list(conversation)
    if not turns:
        raise ValueError("empty conversation")
    for i, t in enumerate(turns):
        if not isinstance(t, Mapping) or not isinstance(t.get("content"), str) or "role" not in t:
            raise ValueError(f"turn {i}: expected {{'role': ..., 'content': str}}")
    if turns[0]["role"] == "system":
        system, turns = turns[0]["content"], turns[1:]
    if not turns or turns[-1]["role"] != "assistant":
        raise ValueError("the last turn must be the assistant response to score")
    expected = ["user", "assistant"]
    for i, t in enumerate(turns):
        if t["role"] != expected[i % 2]:
            raise ValueError(f"turn {i}: role '{t['role']}' where '{expected[i % 2]}' was expected "
                             "(user and assistant turns alternate, starting with the user)")
    context = format_context([Turn(_ROLES[t["role"]], t["content"]) for t in turns[:-1]], system)
    return context, format_response(turns[-1]["content"])


class RewardScorer:
    """Batched scoring with an ``AttributeRewardModel`` (every model-parallel rank calls ``score`` alike)."""

    def __init__(self, model, weights=None, batch_size: int = 8, system: str | None = None,
                 max_length: int | None = None, pad_to_multiple: int = 8):
        self.model = model
        self.attributes = tuple(model.attributes)
        if weights is None:  # the checkpoint's own: what it validated with (resolved to its attributes in training)
            weights = model.cfg.regression.get("reward_weights") or "nemotron_340b"
        self.weights = resolve_weights(weights_for(weights, self.attributes), self.attributes)
        self.batch_size = max(1, int(batch_size))
        if system is None:  # the prompt and template the model was trained with travel in its config
            system = model.cfg.get("system_prompt")
        self.system_given = system is not None
        self.template = model.cfg.get("template") or "steerlm"
        if self.template not in ("steerlm", "hf_chat"):
            raise ValueError(f"unknown template '{self.template}' in the model config")
        self.system = DEFAULT_SYSTEM if system is None else system
        self.encode = encoder_of(model.tokenizer)
        if self.template == "hf_chat":
            from nemo_hs2.data.chat_template import ChatTemplateFormat

            self.chat = ChatTemplateFormat(model.tokenizer, system)
        self.max_length = int(max_length or model.cfg.encoder_seq_length)
        self.collate = Collator(model.tokenizer.eos_id, pad_to_multiple)

    def tokenize(self, conversation, truncate: bool = True) -> np.ndarray:
        """Token ids as training would see them; ``truncate=False`` keeps over-long rows whole (to detect them)."""
        context, response = conversation_to_text(conversation, self.system)  # also validates the turns
        if self.template == "hf_chat":
            messages = list(conversation)
            if self.system_given and messages[0]["role"] != "system":
                messages = [{"role": "system", "content": self.system}, *messages]
            ids = self.encode(self.chat.render_messages(messages))
        else:  # the whole text, as nemo_hs2.data.dataset.SteerLMFormat does in training (and NeMo-Aligner)
            ids = list(self.encode(context + response))
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

    def score(self, conversations) -> list[dict]:
        pred = self.predict_tokens([self.tokenize(c) for c in conversations])
        return [{"attributes": dict(zip(self.attributes, row.tolist())), "reward": float(combine(row, self.weights))}
                for row in pred]
