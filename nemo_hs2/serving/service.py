"""Requests to rows and predictions to answers, independent of HTTP: validation, tokenization, response shapes.

Each request is prepared (parsed, checked against the per-request limits, tokenized) into a ``Prepared``: the
rows to score and how to turn their predictions into the response body.
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable

import numpy as np

from nemo_hs2.core.reward_weights import combine
from nemo_hs2.serving.batching import TokenScorer
from nemo_hs2.serving.config import ServerConfig
from nemo_hs2.serving.protocol import (INTEGER, MODEL_VERSION, RequestError, encode_kserve_response, loads,
                                       parse_kserve_request, split_infer_body)

OUTPUTS = ("rewards", "attributes", "exceeded")


@dataclasses.dataclass
class Prepared:
    rows: list[np.ndarray]  # int32 token ids, each its own array (no view keeps a larger one alive)
    respond: Callable[[np.ndarray], tuple[bytes, dict[str, str]]]  # predictions -> (body, headers)

    @property
    def nbytes(self) -> int:
        """What the rows hold while they wait for the model (an ndarray's header is ~112 bytes)."""
        return sum(r.nbytes + 112 for r in self.rows)


def _json_answer(obj) -> tuple[bytes, dict[str, str]]:
    return json.dumps(obj).encode(), {"Content-Type": "application/json"}


class RewardService:
    def __init__(self, token_scorer: TokenScorer, config: ServerConfig):
        self.ts = token_scorer
        self.config = config

    def _check_text(self, n: int) -> None:
        if n > self.config.max_text_bytes:
            raise RequestError(f"{n} bytes of text in one request; the limit is {self.config.max_text_bytes} "
                               "(server.max_text_mb), checked before tokenizing", 413)

    def _check_rows(self, n: int, what: str) -> None:
        if n > self.config.max_request_rows:
            raise RequestError(f"{n} {what}s in one request; the limit is {self.config.max_request_rows} "
                               "(server.max_request_rows)")

    def _limit(self, rows: list[np.ndarray], what: str) -> tuple[list[np.ndarray], list[bool]]:
        self._check_rows(len(rows), what)
        total = sum(len(r) for r in rows)
        if total > self.config.max_request_tokens:
            raise RequestError(f"{total} tokens in one request; the limit is {self.config.max_request_tokens} "
                               "(server.max_request_tokens)")
        limit = self.ts.max_length
        out, exceeded = [], []
        for i, r in enumerate(rows):
            if len(r) == 0:
                raise RequestError(f"{what} {i} is empty")
            over = len(r) > limit
            if over and self.config.overlength == "reject":
                raise RequestError(f"{what} {i} is {len(r)} tokens, over the limit of {limit} tokens (the model's "
                                   "max_length); shorten it, or start the server with server.overlength=truncate "
                                   "to keep its last tokens")
            out.append(r[-limit:].copy() if over else r)
            exceeded.append(over)
        return out, exceeded

    # ----------------------------------------------------------- POST /score
    def score_request(self, raw) -> Prepared:
        return self.prepare_score(loads(raw, "the body", self.config.max_json_values))

    def prepare_score(self, body) -> Prepared:
        if not isinstance(body, dict):
            raise RequestError('the body must be a JSON object: {"conversations": [[{"role": ..., "content": ...}, '
                               "...], ...]}")
        convs = body.get("conversations")
        if convs is None and "conversation" in body:
            convs = [body["conversation"]]
        if not isinstance(convs, list) or not convs:
            raise RequestError("'conversations' must be a non-empty list of conversations (lists of turns)")
        self._check_rows(len(convs), "conversation")
        text = 0
        for i, conv in enumerate(convs):  # every turn checked, and the text counted, before anything is tokenized
            if not isinstance(conv, list):
                raise RequestError(f"conversation {i}: expected a list of turns, got {type(conv).__name__}")
            for j, turn in enumerate(conv):
                if not isinstance(turn, dict) or set(turn) - {"role", "content"} or \
                        not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
                    raise RequestError(f"conversation {i}, turn {j}: expected {{\"role\": str, \"content\": str}}")
                try:
                    text += len(turn["content"].encode("utf-8")) + len(turn["role"].encode("utf-8"))
                except UnicodeEncodeError:
                    raise RequestError(f"conversation {i}, turn {j}: not valid Unicode (a lone surrogate)") from None
                self._check_text(text)
        rows = []
        for i, conv in enumerate(convs):
            try:
                rows.append(np.asarray(self.ts.conversation_tokens(conv), dtype=np.int32))
            except ValueError as e:
                raise RequestError(f"conversation {i}: {e}") from None
        rows, exceeded = self._limit(rows, "conversation")

        def respond(pred):
            rewards = combine(pred, self.ts.weights)
            return _json_answer({"rewards": [float(r) for r in rewards],
                                 "attributes": [dict(zip(self.ts.attributes, p.tolist())) for p in pred],
                                 "truncated": exceeded, "attribute_names": list(self.ts.attributes),
                                 "reward_weights": dict(zip(self.ts.attributes, self.ts.weights.tolist()))})

        return Prepared(rows, respond)

    # ----------------------------------------------------------- KServe v2
    def infer_request(self, raw, header_length: str | None) -> Prepared:
        return self.prepare_infer(*split_infer_body(raw, header_length, self.config.max_json_values))

    def input_limits(self) -> dict[str, tuple[int, str]]:
        """Per input: the most elements a request can need, checked before it is decoded (a BYTES tensor of 4M
        empty strings would be 4M objects)."""
        rows = (self.config.max_request_rows, "server.max_request_rows")
        return {"sentences": rows, "sequence_lengths": rows, "add_EOS": rows,
                "tokens": (self.config.max_tensor_elements, "server.max_tensor_elements")}

    def prepare_infer(self, header, binary=b"") -> Prepared:
        arrays, requested, request_id = parse_kserve_request(header, binary, limits=self.input_limits())
        given = set(arrays)
        unknown = sorted(set(requested) - {"*", *OUTPUTS})
        if unknown:
            raise RequestError(f"unknown output(s) {unknown}; this model has {list(OUTPUTS)}")
        if "sentences" in given and "tokens" in given:
            raise RequestError("give either 'sentences' or 'tokens' + 'sequence_lengths', not both")
        add_eos = None
        if "add_EOS" in given:
            dtype, values = arrays["add_EOS"]
            if dtype not in ("BOOL", *INTEGER):
                raise RequestError("input 'add_EOS' must be BOOL")
            add_eos = values.reshape(-1).astype(bool)
        if "sentences" in given:
            rows = self._sentence_rows(arrays, add_eos)
        elif "tokens" in given:
            rows = self._token_rows(arrays, add_eos)
        else:
            raise RequestError("no input: give 'sentences' (BYTES [B] or [B, 1]) or 'tokens' (INT64 [B, T]) with "
                               "'sequence_lengths' (INT64 [B] or [B, 1])")
        rows, exceeded = self._limit(rows, "row")

        def respond(pred):
            reward = combine(pred, self.ts.weights).astype(np.float32).reshape(-1, 1)
            attrs = pred.astype(np.float32)
            tensors = {"rewards": ("FP32", reward if self.config.rewards_output == "reward" else attrs),
                       "attributes": ("FP32", attrs),
                       "exceeded": ("BOOL", np.asarray(exceeded, dtype=np.bool_).reshape(-1, 1))}
            return encode_kserve_response(self.config.model_name, tensors, requested, request_id)

        return Prepared(rows, respond)

    @staticmethod
    def _batch_dim(array, name) -> np.ndarray:
        if array.ndim == 2 and array.shape[1] == 1:
            return array.reshape(-1)
        if array.ndim == 1:
            return array
        raise RequestError(f"input '{name}' must have shape [B] or [B, 1], got {list(array.shape)}")

    @staticmethod
    def _eos_flags(add_eos, batch: int):
        if add_eos is None:
            return [False] * batch
        if len(add_eos) == 1:
            return [bool(add_eos[0])] * batch
        if len(add_eos) != batch:
            raise RequestError(f"input 'add_EOS' has {len(add_eos)} values for {batch} rows")
        return add_eos.tolist()

    def _sentence_rows(self, arrays, add_eos) -> list[np.ndarray]:
        dtype, values = arrays["sentences"]
        if dtype != "BYTES":
            raise RequestError("input 'sentences' must be BYTES (UTF-8 text)")
        sentences = self._batch_dim(values, "sentences")
        self._check_rows(len(sentences), "row")
        self._check_text(sum(len(raw) for raw in sentences))
        rows = []
        for i, (raw, eos) in enumerate(zip(sentences, self._eos_flags(add_eos, len(sentences)))):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RequestError(f"sentence {i} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not text.strip():
                raise RequestError(f"sentence {i} is empty")
            rows.append(np.asarray(self.ts.sentence_tokens(text, eos), dtype=np.int32))
        return rows

    def _token_rows(self, arrays, add_eos) -> list[np.ndarray]:
        if "sequence_lengths" not in arrays:
            raise RequestError("input 'tokens' needs 'sequence_lengths' (INT64 [B] or [B, 1])")
        for name in ("tokens", "sequence_lengths"):
            if arrays[name][0] not in INTEGER:
                raise RequestError(f"input '{name}' must be an integer tensor (INT64), got {arrays[name][0]}")
        tokens = arrays["tokens"][1]
        if tokens.ndim != 2:
            raise RequestError(f"input 'tokens' must have shape [B, T], got {list(tokens.shape)}")
        self._check_rows(tokens.shape[0], "row")
        lengths = self._batch_dim(arrays["sequence_lengths"][1], "sequence_lengths")
        if len(lengths) != tokens.shape[0]:
            raise RequestError(f"{len(lengths)} sequence_lengths for {tokens.shape[0]} rows of tokens")
        rows = []
        for i, (n, eos) in enumerate(zip(lengths.tolist(), self._eos_flags(add_eos, len(lengths)))):
            if not 0 < n <= tokens.shape[1]:
                raise RequestError(f"row {i}: sequence_length {n} outside 1..{tokens.shape[1]} (the tokens' width)")
            row = tokens[i, :n].astype(np.int64)
            bad = row[(row < 0) | (row >= self.ts.vocab_size)]
            if bad.size:
                raise RequestError(f"row {i}: token id {int(bad[0])} outside the vocabulary "
                                   f"(0..{self.ts.vocab_size - 1})")
            rows.append((np.append(row, self.ts.eos_id) if eos else row).astype(np.int32))
        return rows

    # ----------------------------------------------------------- metadata
    def model_config(self) -> dict:
        c = self.config
        weights = json.dumps(dict(zip(self.ts.attributes, self.ts.weights.tolist())))
        return {
            "name": c.model_name, "platform": "", "backend": "python", "max_batch_size": c.max_request_rows,
            "input": [
                {"name": "sentences", "data_type": "TYPE_STRING", "dims": [-1], "optional": True},
                {"name": "tokens", "data_type": "TYPE_INT64", "dims": [-1], "optional": True},
                {"name": "sequence_lengths", "data_type": "TYPE_INT64", "dims": [-1], "optional": True},
                {"name": "add_EOS", "data_type": "TYPE_BOOL", "dims": [-1], "optional": True},
            ],
            "output": [
                {"name": "rewards", "data_type": "TYPE_FP32",
                 "dims": [1] if c.rewards_output == "reward" else [len(self.ts.attributes)]},
                {"name": "attributes", "data_type": "TYPE_FP32", "dims": [len(self.ts.attributes)]},
                {"name": "exceeded", "data_type": "TYPE_BOOL", "dims": [1]},
            ],
            "dynamic_batching": {"max_queue_delay_microseconds": int(c.max_queue_delay_ms * 1000),
                                 "preferred_batch_size": [c.max_batch_rows]},
            "parameters": {"attribute_names": {"string_value": ",".join(self.ts.attributes)},
                           "reward_weights": {"string_value": weights},
                           "max_length": {"string_value": str(self.ts.max_length)}},
        }

    def model_metadata(self) -> dict:
        cfg = self.model_config()

        def tensor(t):
            dtype = t["data_type"].split("_", 1)[1]
            return {"name": t["name"], "datatype": "BYTES" if dtype == "STRING" else dtype, "shape": [-1, *t["dims"]]}

        return {"name": cfg["name"], "versions": [MODEL_VERSION], "platform": "python",
                "inputs": [tensor(t) for t in cfg["input"]], "outputs": [tensor(t) for t in cfg["output"]]}

    def info(self) -> dict:
        c = self.config
        return {"model_name": c.model_name, "attributes": list(self.ts.attributes),
                "reward_weights": dict(zip(self.ts.attributes, self.ts.weights.tolist())),
                "max_length": self.ts.max_length, "vocab_size": self.ts.vocab_size, "overlength": c.overlength,
                "template": self.ts.scorer.template, "rewards_output": c.rewards_output,
                "limits": {k: getattr(c, k) for k in (
                    "max_body_mb", "max_json_values", "max_text_mb", "max_buffered_mb", "max_request_rows",
                    "max_request_tokens", "max_tensor_elements", "max_connections", "max_pending_requests",
                    "parse_workers", "header_timeout_s", "body_timeout_s", "request_timeout_s",
                    "model_stall_timeout_s")},
                "memory_bound_mb": round(c.memory_bound_mb(), 1)}
