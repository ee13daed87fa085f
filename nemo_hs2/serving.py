"""An HTTP reward server: NeMo-Aligner's reward-server interface plus per-attribute scores.

NeMo-Aligner 0.7.0 serves its reward model with PyTriton (``nemo_aligner/algorithms/reward_server.py``): one model
(default name ``reward_model``, port 5555) with optional inputs ``sentences`` (BYTES, fully formatted prompt +
response text), ``tokens`` (INT64 ``[B, T]``) and ``sequence_lengths`` (INT64 ``[B, 1]``), and one output
``rewards`` (FP32 ``[B, 1]``). Its PPO and rejection-sampling clients (``RemoteGPTRMClient``) and the SteerLM
annotation script reach it through PyTriton's ``ModelClient``, i.e. ``tritonclient.http`` speaking Triton's KServe
v2 HTTP protocol. This module answers that protocol's calls those clients make:

* ``GET /v2/health/live``, ``GET /v2/health/ready``, ``POST /v2/repository/index``,
  ``GET /v2/models/{name}[/versions/1]/ready``, ``GET /v2/models/{name}[/versions/1]/config`` (Triton's model
  config JSON, which PyTriton parses for inputs, outputs and ``max_batch_size``), ``GET /v2/models/{name}``;
* ``POST /v2/models/{name}[/versions/1]/infer`` with JSON tensors (``data``) or Triton's binary tensor extension
  (``Inference-Header-Content-Length``; BYTES as 4-byte little-endian length + bytes), answering in kind; errors are
  ``{"error": message}`` with a 4xx/5xx status, which tritonclient raises as ``InferenceServerException``.

Outputs: ``rewards`` (FP32 ``[B, 1]``, the weighted reward; ``server.rewards_output=attributes`` makes it
``[B, A]``, what NeMo-Aligner's regression RM returns unmerged and its SteerLM annotation script expects),
``attributes`` (FP32 ``[B, A]``, always) and ``exceeded`` (BOOL ``[B, 1]``: the input was longer than the model's
limit; the older annotation client reads it). ``add_EOS`` (BOOL) is accepted as that client sends it.

Plus a plain JSON API: ``POST /score`` with ``{"conversations": [[{"role", "content"}, ...], ...]}`` scores chats
with the checkpoint's own template (as ``nemo_hs2.inference.RewardScorer`` does) and returns per-attribute scores
and rewards; ``GET /health``, ``GET /info``, ``GET /stats``.

Concurrent requests are batched: handler threads parse, validate and tokenize, then queue their rows; one model
thread takes everything queued within ``max_queue_delay_ms`` of the first request (up to ``max_batch_rows``) and
runs it as one batch. Under torchrun (TP / PP), rank 0 serves and broadcasts each batch; the other ranks follow.

Over-length inputs are rejected by default (HTTP 400 naming the limit): a truncated input would be scored as a
different text than the one sent, and a reward that silently describes something else is worse than an error the
caller can act on. ``server.overlength=truncate`` keeps the end of the input instead (as training does, so the
end-of-response token the reward is read from survives) and reports it in ``exceeded`` / ``truncated``.
"""

from __future__ import annotations

import concurrent.futures
import dataclasses
import json
import logging
import queue
import struct
import threading
import time
from collections.abc import Mapping, Sequence
from http import HTTPStatus
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import urlsplit

import numpy as np

from nemo_hs2.reward import combine

log = logging.getLogger(__name__)

OVERLENGTH_POLICIES = ("reject", "truncate")
REWARDS_OUTPUTS = ("reward", "attributes")
MODEL_VERSION = "1"
OUTPUTS = ("rewards", "attributes", "exceeded")

_NP_OF = {"BOOL": np.bool_, "UINT8": np.uint8, "UINT16": np.uint16, "UINT32": np.uint32, "UINT64": np.uint64,
          "INT8": np.int8, "INT16": np.int16, "INT32": np.int32, "INT64": np.int64, "FP16": np.float16,
          "FP32": np.float32, "FP64": np.float64}
_INTEGER = ("UINT8", "UINT16", "UINT32", "UINT64", "INT8", "INT16", "INT32", "INT64")


class RequestError(Exception):
    """A request the server cannot answer; ``status`` is the HTTP status (400 unless said otherwise)."""

    def __init__(self, message: str, status: int = 400):
        super().__init__(message)
        self.status = status


@dataclasses.dataclass
class ServerConfig:
    host: str = "0.0.0.0"
    port: int = 5555
    model_name: str = "reward_model"
    max_queue_delay_ms: float = 2.0
    max_batch_rows: int = 64
    max_request_rows: int = 4096
    max_body_mb: float = 64.0
    overlength: str = "reject"
    rewards_output: str = "reward"

    def __post_init__(self):
        if self.overlength not in OVERLENGTH_POLICIES:
            raise ValueError(f"server.overlength must be one of {OVERLENGTH_POLICIES}, got '{self.overlength}'")
        if self.rewards_output not in REWARDS_OUTPUTS:
            raise ValueError(f"server.rewards_output must be one of {REWARDS_OUTPUTS}, got '{self.rewards_output}'")
        for name in ("max_batch_rows", "max_request_rows"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"server.{name} must be >= 1")

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> ServerConfig:
        values = dict(values or {})
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown server settings {unknown}")
        return cls(**values)


# ---------------------------------------------------------------------------------------------------- model side
class TokenScorer:
    """Token-level scoring with a ``RewardScorer``'s model, collate, weights and limits."""

    def __init__(self, scorer, distributed: bool = False):
        self.scorer = scorer
        self.attributes = tuple(scorer.attributes)
        self.weights = np.asarray(scorer.weights, dtype=np.float64)
        self.max_length = int(scorer.max_length)
        self.eos_id = int(scorer.model.tokenizer.eos_id)
        self.vocab_size = int(scorer.model.tokenizer.vocab_size)
        self.distributed = distributed

    def conversation_tokens(self, conversation) -> np.ndarray:
        return self.scorer.tokenize(conversation, truncate=False)  # over-length rows are detected, not cut

    def sentence_tokens(self, text: str, add_eos: bool = False) -> np.ndarray:
        """A fully formatted text, tokenized as training tokenizes it: whole (as NeMo-Aligner does)."""
        ids = list(self.scorer.encode(text))
        if add_eos:
            ids.append(self.eos_id)
        return np.asarray(ids, dtype=np.int64)

    def predict(self, rows: Sequence[np.ndarray]) -> np.ndarray:
        """``[rows, attributes]`` predictions (float64). On rank 0 of a multi-rank launch the rows are broadcast
        first, so the followers run the same forward."""
        if self.distributed:
            import torch

            torch.distributed.broadcast_object_list([list(rows)], src=0)
        return self._forward(rows)

    def _forward(self, rows) -> np.ndarray:
        return self.scorer.predict_tokens(rows)

    def follow(self) -> None:
        """Ranks > 0: run every batch rank 0 broadcasts, until it broadcasts None."""
        import torch

        while True:
            box = [None]
            torch.distributed.broadcast_object_list(box, src=0)
            if box[0] is None:
                return
            self._forward(box[0])

    def release_followers(self) -> None:
        if self.distributed:
            import torch

            try:
                torch.distributed.broadcast_object_list([None], src=0)
            except RuntimeError as e:  # a follower already gone: nothing left to release
                log.warning(f"could not release the other ranks: {e}")


@dataclasses.dataclass
class _Job:
    rows: list
    future: concurrent.futures.Future


class ShuttingDown(RuntimeError):
    pass


class Batcher:
    """Requests queued within ``max_delay_s`` of the first one are scored as one batch.

    ``run`` is the model loop and runs in the thread that owns the model: the one that built it (NeMo's CPU
    stand-ins for CUDA, like CUDA's current device, are per thread), normally the main thread, while HTTP handler
    threads only ``submit``.
    """

    def __init__(self, predict, max_batch_rows: int, max_delay_s: float):
        self.predict = predict
        self.max_batch_rows = int(max_batch_rows)
        self.max_delay_s = float(max_delay_s)
        self._queue: queue.Queue = queue.Queue()
        self._lock = threading.Lock()
        self._closed = threading.Event()
        self.stats = {"requests": 0, "rows": 0, "batches": 0, "largest_batch_rows": 0, "failed_batches": 0}

    def submit(self, rows) -> concurrent.futures.Future:
        job = _Job(list(rows), concurrent.futures.Future())
        if self._closed.is_set():
            job.future.set_exception(ShuttingDown("the server is shutting down"))
        else:
            self._queue.put(job)
        return job.future

    def close(self) -> None:
        self._closed.set()
        self._queue.put(None)

    def run(self, stop: threading.Event | None = None) -> None:
        """Score batches until ``close()`` (or ``stop`` is set); then fail whatever is still queued."""
        stop = stop or threading.Event()
        while not (stop.is_set() or self._closed.is_set()):
            try:
                job = self._queue.get(timeout=0.2)  # wakes up to notice ``stop``
            except queue.Empty:
                continue
            if job is None:
                break
            jobs, rows = [job], len(job.rows)
            deadline = time.monotonic() + self.max_delay_s
            while rows < self.max_batch_rows:
                try:
                    nxt = self._queue.get(timeout=max(0.0, deadline - time.monotonic()))
                except queue.Empty:
                    break
                if nxt is None:
                    self._closed.set()
                    break
                jobs.append(nxt)
                rows += len(nxt.rows)
            self._run(jobs, rows)
        self._closed.set()
        while True:
            try:
                job = self._queue.get_nowait()
            except queue.Empty:
                return
            if job is not None:
                job.future.set_exception(ShuttingDown("the server is shutting down"))

    def _run(self, jobs, rows):
        try:
            pred = self.predict([r for j in jobs for r in j.rows])
        except Exception as e:  # the requests fail, the server does not
            log.exception("scoring a batch failed")
            with self._lock:
                self.stats["failed_batches"] += 1
            for j in jobs:
                j.future.set_exception(e)
            return
        with self._lock:
            self.stats["requests"] += len(jobs)
            self.stats["rows"] += rows
            self.stats["batches"] += 1
            self.stats["largest_batch_rows"] = max(self.stats["largest_batch_rows"], rows)
        start = 0
        for j in jobs:
            j.future.set_result(pred[start:start + len(j.rows)])
            start += len(j.rows)


# ---------------------------------------------------------------------------------------------------- KServe v2
def _decode_bytes_tensor(raw: bytes, count: int, name: str) -> list[bytes]:
    items, offset = [], 0
    for _ in range(count):
        if offset + 4 > len(raw):
            raise RequestError(f"input '{name}': binary BYTES data ends early")
        (size,) = struct.unpack_from("<I", raw, offset)
        offset += 4
        if offset + size > len(raw):
            raise RequestError(f"input '{name}': binary BYTES data ends early")
        items.append(raw[offset:offset + size])
        offset += size
    if offset != len(raw):
        raise RequestError(f"input '{name}': {len(raw) - offset} bytes of binary data beyond its {count} elements")
    return items


def _encode_bytes_tensor(values) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def _flatten(data):
    flat = []
    stack = [data]
    while stack:  # iterative: a deeply nested body must not hit the recursion limit
        item = stack.pop()
        if isinstance(item, list):
            stack.extend(reversed(item))
        else:
            flat.append(item)
    return flat


def parse_kserve_request(header: Mapping, binary: bytes = b"") -> tuple[dict[str, tuple[str, np.ndarray]], dict,
                                                                        str | None]:
    """Inputs (name -> (datatype, array); BYTES as an object array of bytes), requested outputs (name -> binary?;
    "*" for the default) and the request id."""
    if not isinstance(header, dict):
        raise RequestError("the request body must be a JSON object")
    inputs = header.get("inputs")
    if not isinstance(inputs, list) or not inputs:
        raise RequestError("'inputs' must be a non-empty list of tensors")
    params = header.get("parameters") or {}
    if not isinstance(params, dict):
        raise RequestError("'parameters' must be an object")
    arrays: dict[str, tuple[str, np.ndarray]] = {}
    offset = 0
    for i, spec in enumerate(inputs):
        if not isinstance(spec, dict):
            raise RequestError(f"inputs[{i}] must be an object with name, shape, datatype")
        name, shape, dtype = spec.get("name"), spec.get("shape"), spec.get("datatype")
        if not isinstance(name, str) or not name:
            raise RequestError(f"inputs[{i}]: 'name' must be a non-empty string")
        if name in arrays:
            raise RequestError(f"input '{name}' is given twice")
        if not isinstance(shape, list) or not all(isinstance(d, int) and not isinstance(d, bool) and d >= 0
                                                  for d in shape):
            raise RequestError(f"input '{name}': 'shape' must be a list of non-negative integers")
        if dtype != "BYTES" and dtype not in _NP_OF:
            raise RequestError(f"input '{name}': unsupported datatype {dtype!r}")
        count = int(np.prod(shape)) if shape else 1
        in_params = spec.get("parameters") or {}
        size = in_params.get("binary_data_size") if isinstance(in_params, dict) else None
        if size is not None:
            if not isinstance(size, int) or size < 0 or offset + size > len(binary):
                raise RequestError(f"input '{name}': binary_data_size {size!r} does not fit the binary data sent")
            raw = binary[offset:offset + size]
            offset += size
            if dtype == "BYTES":
                values = np.empty(count, dtype=object)
                values[:] = _decode_bytes_tensor(raw, count, name)
            else:
                item = np.dtype(_NP_OF[dtype]).newbyteorder("<")
                if size != count * item.itemsize:
                    raise RequestError(f"input '{name}': {size} bytes for {count} {dtype} elements")
                values = np.frombuffer(raw, dtype=item).astype(_NP_OF[dtype])
        else:
            if "data" not in spec:
                raise RequestError(f"input '{name}': no 'data' and no binary_data_size")
            flat = _flatten(spec["data"])
            if len(flat) != count:
                raise RequestError(f"input '{name}': {len(flat)} values for shape {shape}")
            if dtype == "BYTES":
                if not all(isinstance(v, str) for v in flat):
                    raise RequestError(f"input '{name}': BYTES data must be strings")
                values = np.empty(count, dtype=object)
                values[:] = [v.encode("utf-8") for v in flat]
            elif dtype == "BOOL":
                if not all(isinstance(v, bool) for v in flat):
                    raise RequestError(f"input '{name}': BOOL data must be true/false")
                values = np.asarray(flat, dtype=np.bool_)
            elif dtype in _INTEGER:
                if not all(isinstance(v, int) and not isinstance(v, bool) for v in flat):
                    raise RequestError(f"input '{name}': {dtype} data must be integers")
                try:
                    values = np.asarray(flat, dtype=_NP_OF[dtype])
                except OverflowError:
                    raise RequestError(f"input '{name}': a value does not fit {dtype}") from None
            else:
                if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in flat):
                    raise RequestError(f"input '{name}': {dtype} data must be numbers")
                values = np.asarray(flat, dtype=_NP_OF[dtype])
        arrays[name] = (dtype, values.reshape(shape))
    if offset != len(binary):
        raise RequestError(f"{len(binary) - offset} bytes of binary data beyond the inputs' binary_data_size")
    default_binary = bool(params.get("binary_data_output", False))
    requested: dict[str, bool] = {}
    outputs = header.get("outputs")
    if outputs is not None:
        if not isinstance(outputs, list):
            raise RequestError("'outputs' must be a list")
        for i, spec in enumerate(outputs):
            if not isinstance(spec, dict) or not isinstance(spec.get("name"), str):
                raise RequestError(f"outputs[{i}] must be an object with a name")
            out_params = spec.get("parameters") or {}
            requested[spec["name"]] = bool(out_params.get("binary_data", default_binary)) \
                if isinstance(out_params, dict) else default_binary
    request_id = header.get("id")
    if request_id is not None and not isinstance(request_id, str):
        raise RequestError("'id' must be a string")
    requested["*"] = default_binary  # the format for every output when none is named
    return arrays, requested, request_id


def encode_kserve_response(model_name: str, tensors: Mapping[str, tuple[str, np.ndarray]],
                           requested: Mapping[str, bool], request_id: str | None) -> tuple[bytes, dict[str, str]]:
    """Body and headers of an infer response; ``tensors``: name -> (datatype, array)."""
    names = [n for n in requested if n != "*"] or list(tensors)
    unknown = [n for n in names if n not in tensors]
    if unknown:
        raise RequestError(f"unknown output(s) {unknown}; this model has {list(tensors)}")
    outputs, chunks = [], []
    for name in names:
        datatype, array = tensors[name]
        entry = {"name": name, "datatype": datatype, "shape": list(array.shape)}
        if requested.get(name, requested.get("*", False)):
            raw = array.astype(array.dtype.newbyteorder("<")).tobytes()
            entry["parameters"] = {"binary_data_size": len(raw)}
            chunks.append(raw)
        else:
            entry["data"] = array.reshape(-1).tolist()
        outputs.append(entry)
    body = {"model_name": model_name, "model_version": MODEL_VERSION, "outputs": outputs}
    if request_id is not None:
        body["id"] = request_id
    text = json.dumps(body).encode()
    if not chunks:
        return text, {"Content-Type": "application/json"}
    return text + b"".join(chunks), {"Content-Type": "application/octet-stream",
                                     "Inference-Header-Content-Length": str(len(text))}


# ---------------------------------------------------------------------------------------------------- the service
class RewardService:
    """Request handling independent of HTTP: validation, tokenization, batching and response shapes."""

    def __init__(self, token_scorer: TokenScorer, config: ServerConfig):
        self.ts = token_scorer
        self.config = config
        self.batcher = Batcher(token_scorer.predict, config.max_batch_rows, config.max_queue_delay_ms / 1000.0)

    # ----------------------------------------------------------- shared
    def _limit(self, rows: list[np.ndarray], what: str) -> tuple[list[np.ndarray], list[bool]]:
        if len(rows) > self.config.max_request_rows:
            raise RequestError(f"{len(rows)} {what}s in one request; the limit is {self.config.max_request_rows} "
                               "(server.max_request_rows)")
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
            out.append(r[-limit:] if over else r)
            exceeded.append(over)
        return out, exceeded

    def _score(self, rows: list[np.ndarray]) -> np.ndarray:
        return self.batcher.submit(rows).result()

    # ----------------------------------------------------------- POST /score
    def score_json(self, body) -> dict:
        if not isinstance(body, dict):
            raise RequestError('the body must be a JSON object: {"conversations": [[{"role": ..., "content": ...}, '
                               "...], ...]}")
        convs = body.get("conversations")
        if convs is None and "conversation" in body:
            convs = [body["conversation"]]
        if not isinstance(convs, list) or not convs:
            raise RequestError("'conversations' must be a non-empty list of conversations (lists of turns)")
        if len(convs) > self.config.max_request_rows:
            raise RequestError(f"{len(convs)} conversations in one request; the limit is "
                               f"{self.config.max_request_rows} (server.max_request_rows)")
        rows = []
        for i, conv in enumerate(convs):
            if not isinstance(conv, list):
                raise RequestError(f"conversation {i}: expected a list of turns, got {type(conv).__name__}")
            for j, turn in enumerate(conv):
                if not isinstance(turn, dict) or set(turn) - {"role", "content"} or \
                        not isinstance(turn.get("role"), str) or not isinstance(turn.get("content"), str):
                    raise RequestError(f"conversation {i}, turn {j}: expected {{\"role\": str, \"content\": str}}")
            try:
                rows.append(self.ts.conversation_tokens(conv))
            except ValueError as e:
                raise RequestError(f"conversation {i}: {e}") from None
        rows, exceeded = self._limit(rows, "conversation")
        pred = self._score(rows)
        rewards = combine(pred, self.ts.weights)
        return {"rewards": [float(r) for r in rewards],
                "attributes": [dict(zip(self.ts.attributes, p.tolist())) for p in pred],
                "truncated": exceeded, "attribute_names": list(self.ts.attributes),
                "reward_weights": dict(zip(self.ts.attributes, self.ts.weights.tolist()))}

    # ----------------------------------------------------------- KServe v2
    def model_config(self) -> dict:
        c = self.config
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
                           "reward_weights": {"string_value": json.dumps(
                               dict(zip(self.ts.attributes, self.ts.weights.tolist())))},
                           "max_length": {"string_value": str(self.ts.max_length)}},
        }

    def model_metadata(self) -> dict:
        cfg = self.model_config()

        def tensor(t):
            dtype = t["data_type"].split("_", 1)[1]
            return {"name": t["name"], "datatype": "BYTES" if dtype == "STRING" else dtype, "shape": [-1, *t["dims"]]}

        return {"name": cfg["name"], "versions": [MODEL_VERSION], "platform": "python",
                "inputs": [tensor(t) for t in cfg["input"]], "outputs": [tensor(t) for t in cfg["output"]]}

    def infer(self, header, binary: bytes) -> tuple[bytes, dict[str, str]]:
        arrays, requested, request_id = parse_kserve_request(header, binary)
        known = {"sentences", "tokens", "sequence_lengths", "add_EOS"}
        given = set(arrays)
        unexpected = sorted(given - known)
        if unexpected:
            raise RequestError(f"unexpected input(s) {unexpected}; this model takes {sorted(known)}")
        unknown = sorted(set(requested) - {"*", *OUTPUTS})
        if unknown:
            raise RequestError(f"unknown output(s) {unknown}; this model has {list(OUTPUTS)}")
        if "sentences" in given and "tokens" in given:
            raise RequestError("give either 'sentences' or 'tokens' + 'sequence_lengths', not both")
        add_eos = None
        if "add_EOS" in given:
            dtype, values = arrays["add_EOS"]
            if dtype not in ("BOOL", *_INTEGER):
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
        pred = self._score(rows)
        reward = combine(pred, self.ts.weights).astype(np.float32).reshape(-1, 1)
        tensors = {"rewards": ("FP32", reward if self.config.rewards_output == "reward" else pred.astype(np.float32)),
                   "attributes": ("FP32", pred.astype(np.float32)),
                   "exceeded": ("BOOL", np.asarray(exceeded, dtype=np.bool_).reshape(-1, 1))}
        return encode_kserve_response(self.config.model_name, tensors, requested, request_id)

    @staticmethod
    def _batch_dim(array, name) -> np.ndarray:
        if array.ndim == 2 and array.shape[1] == 1:
            return array.reshape(-1)
        if array.ndim == 1:
            return array
        raise RequestError(f"input '{name}' must have shape [B] or [B, 1], got {list(array.shape)}")

    def _eos_flags(self, add_eos, batch: int):
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
        rows = []
        for i, (raw, eos) in enumerate(zip(sentences, self._eos_flags(add_eos, len(sentences)))):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise RequestError(f"sentence {i} is not valid UTF-8 ({e.reason} at byte {e.start})") from None
            if not text.strip():
                raise RequestError(f"sentence {i} is empty")
            rows.append(self.ts.sentence_tokens(text, eos))
        return rows

    def _token_rows(self, arrays, add_eos) -> list[np.ndarray]:
        if "sequence_lengths" not in arrays:
            raise RequestError("input 'tokens' needs 'sequence_lengths' (INT64 [B] or [B, 1])")
        for name in ("tokens", "sequence_lengths"):
            if arrays[name][0] not in _INTEGER:
                raise RequestError(f"input '{name}' must be an integer tensor (INT64), got {arrays[name][0]}")
        tokens = arrays["tokens"][1]
        if tokens.ndim != 2:
            raise RequestError(f"input 'tokens' must have shape [B, T], got {list(tokens.shape)}")
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
                raise RequestError(f"row {i}: token id {int(bad[0])} outside the vocabulary (0..{self.ts.vocab_size - 1})")
            rows.append(np.append(row, self.ts.eos_id) if eos else row)
        return rows

    def info(self) -> dict:
        return {"model_name": self.config.model_name, "attributes": list(self.ts.attributes),
                "reward_weights": dict(zip(self.ts.attributes, self.ts.weights.tolist())),
                "max_length": self.ts.max_length, "overlength": self.config.overlength,
                "template": self.ts.scorer.template, "rewards_output": self.config.rewards_output}


# ---------------------------------------------------------------------------------------------------- HTTP
class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, as tritonclient's connection pool expects
    server_version = "nemo_hs2-reward-server"
    timeout = 120  # a client that stops sending mid-body loses its connection, not a thread forever

    service: RewardService  # set on the subclass the server builds

    def log_message(self, fmt, *args):  # route http.server's access log through logging
        log.debug("%s - %s", self.address_string(), fmt % args)

    def _send(self, status: int, body: bytes = b"", headers: Mapping[str, str] | None = None, close=False):
        self.send_response(status)
        headers = dict(headers or {})
        if body and "Content-Type" not in headers:
            headers["Content-Type"] = "application/json"
        for k, v in headers.items():
            self.send_header(k, v)
        self.send_header("Content-Length", str(len(body)))
        if close:
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _json(self, status: int, obj, close=False):
        self._send(status, json.dumps(obj).encode(), close=close)

    def _error(self, status: int, message: str, close=False):
        self._json(status, {"error": message}, close=close)

    def _body(self) -> bytes:
        if self.headers.get("Transfer-Encoding"):
            raise RequestError("chunked bodies are not supported: send a Content-Length", HTTPStatus.LENGTH_REQUIRED)
        length = self.headers.get("Content-Length")
        if length is None:  # neither length nor chunked: the request has no body
            return b""
        try:
            length = int(length)
        except ValueError:
            raise RequestError(f"bad Content-Length {length!r}") from None
        limit = int(self.service.config.max_body_mb * 2 ** 20)
        if length < 0 or length > limit:
            raise RequestError(f"a {length}-byte body is over the limit of {limit} bytes (server.max_body_mb)",
                               HTTPStatus.REQUEST_ENTITY_TOO_LARGE)
        return self.rfile.read(length)

    def _model_route(self, parts: list[str]) -> str | None:
        """For /v2/models/NAME[/versions/V][/ACTION]: the action ('' for metadata), after checking name and version."""
        name, rest = parts[2], parts[3:]
        if name != self.service.config.model_name:
            raise RequestError(f"unknown model '{name}'; this server serves '{self.service.config.model_name}'",
                               HTTPStatus.NOT_FOUND)
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or rest[1] != MODEL_VERSION:
                raise RequestError(f"model '{name}' has only version {MODEL_VERSION}", HTTPStatus.NOT_FOUND)
            rest = rest[2:]
        if len(rest) > 1:
            return None
        return rest[0] if rest else ""

    def _dispatch(self, method: str):
        path = urlsplit(self.path).path.rstrip("/") or "/"
        parts = [p for p in path.split("/") if p]
        svc = self.service
        body_read = False
        try:
            if method == "GET" and path in ("/health", "/v2/health/live", "/v2/health/ready"):
                return self._send(200) if path.startswith("/v2") else self._json(200, {"status": "ok"})
            if method == "GET" and path == "/info":
                return self._json(200, svc.info())
            if method == "GET" and path == "/stats":
                return self._json(200, dict(svc.batcher.stats))
            if method == "GET" and path == "/v2":
                from nemo_hs2 import __version__

                return self._json(200, {"name": "nemo_hs2", "version": __version__,
                                        "extensions": ["binary_tensor_data"]})
            if method == "POST" and path == "/v2/repository/index":
                self._body()
                body_read = True
                return self._json(200, [{"name": svc.config.model_name, "version": MODEL_VERSION, "state": "READY"}])
            if method == "POST" and path == "/score":
                raw = self._body()
                body_read = True
                try:
                    payload = json.loads(raw)
                except (json.JSONDecodeError, UnicodeDecodeError) as e:
                    raise RequestError(f"the body is not valid JSON ({e})") from None
                return self._json(200, svc.score_json(payload))
            if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
                action = self._model_route(parts)
                if method == "GET" and action == "":
                    return self._json(200, svc.model_metadata())
                if method == "GET" and action == "ready":
                    return self._send(200)
                if method == "GET" and action == "config":
                    return self._json(200, svc.model_config())
                if method == "POST" and action == "infer":
                    raw = self._body()
                    body_read = True
                    return self._infer(raw)
            raise RequestError(f"no {method} {path} here: see /info, POST /score or POST /v2/models/"
                               f"{svc.config.model_name}/infer", HTTPStatus.NOT_FOUND)
        except ShuttingDown as e:
            return self._error(503, str(e), close=True)
        except RequestError as e:
            # An unread body would be taken for the next request on this connection: close it instead.
            close = method == "POST" and not body_read
            return self._error(e.status, str(e), close=close)
        except Exception as e:  # a bug or a failed forward: report it, keep serving
            log.exception("request failed")
            return self._error(500, f"internal error: {type(e).__name__}: {e}", close=not body_read)

    def _infer(self, raw: bytes):
        header_length = self.headers.get("Inference-Header-Content-Length")
        if header_length is not None:
            try:
                n = int(header_length)
            except ValueError:
                raise RequestError(f"bad Inference-Header-Content-Length {header_length!r}") from None
            if not 0 <= n <= len(raw):
                raise RequestError(f"Inference-Header-Content-Length {n} is outside the {len(raw)}-byte body")
            text, binary = raw[:n], raw[n:]
        else:
            text, binary = raw, b""
        try:
            header = json.loads(text)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise RequestError(f"the inference request header is not valid JSON ({e})") from None
        body, headers = self.service.infer(header, binary)
        return self._send(200, body, headers)

    def do_GET(self):
        self._dispatch("GET")

    def do_POST(self):
        self._dispatch("POST")

    def do_HEAD(self):
        self._dispatch("GET")

    def do_PUT(self):
        self._error(405, "method not allowed", close=True)

    do_DELETE = do_PATCH = do_PUT


class RewardServer:
    """The HTTP server around a ``RewardService``: HTTP in background threads, the model loop in ``serve``'s."""

    def __init__(self, service: RewardService, host: str, port: int):
        handler = type("Handler", (_Handler,), {"service": service})
        self.service = service
        self.httpd = ThreadingHTTPServer((host, port), handler)
        self.httpd.daemon_threads = True
        self._http_thread = threading.Thread(target=self.httpd.serve_forever, name="reward-http", daemon=True)

    @property
    def address(self) -> tuple[str, int]:
        host, port = self.httpd.server_address[:2]
        return str(host), int(port)

    def start_http(self) -> RewardServer:
        """Accept connections (requests queue up until ``serve`` runs the model loop)."""
        if not self._http_thread.is_alive():
            self._http_thread.start()
        return self

    def serve(self, stop: threading.Event | None = None) -> None:
        """Run the model loop in this thread until ``stop`` is set; then shut everything down."""
        self.start_http()
        try:
            self.service.batcher.run(stop)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.service.batcher.close()
        self.httpd.shutdown()
        self.httpd.server_close()
        self.service.ts.release_followers()


def build_server(scorer, config: ServerConfig | Mapping | None = None, distributed: bool = False) -> RewardServer:
    if not isinstance(config, ServerConfig):
        config = ServerConfig.from_mapping(config)
    service = RewardService(TokenScorer(scorer, distributed), config)
    return RewardServer(service, config.host, int(config.port))
