"""A stand-in for RewardScorer (byte-level tokens, a closed-form "model"), and a server around it for tests and
fuzzing that need no checkpoint: ``python -m tests.serving_fake [server.KEY=VALUE ...]``.

A row whose text contains ``__hang__`` makes the model call block forever (a stalled model loop); ``__boom__``
makes it raise; ``FAKE_DELAY_S`` slows every call."""

from __future__ import annotations

import os
import sys
import threading
import time
import types

import numpy as np

from nemo_hs2.core.render import Renderer
from nemo_hs2.core.scorer import as_conversation

ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")
HANG, BOOM = list(b"__hang__"), list(b"__boom__")


def _contains(row, needle) -> bool:
    row = list(row)
    return any(row[i:i + len(needle)] == needle for i in range(len(row) - len(needle) + 1))


class ByteTokenizer:
    """NeMo's ByteLevelTokenizer as the demo checkpoint has it: one id per UTF-8 byte, EOS after the 256 bytes."""
    eos_id, vocab_size = 256, 257

    def text_to_ids(self, text: str) -> list[int]:
        return list(text.encode("utf-8"))


class FakeScorer:
    """RewardScorer's interface (nemo_hs2/megatron/scorer.py): the same Renderer and tokenize, a closed-form model."""

    def __init__(self, max_length: int = 1024, delay_s: float = 0.0):
        self.attributes = ATTRIBUTES
        self.weights = np.array([0.3, 0.74, 0.46, 0.47, -0.33])
        self.max_length = max_length
        self.delay_s = delay_s
        self.model = types.SimpleNamespace(tokenizer=ByteTokenizer())
        self.renderer = Renderer("steerlm", self.model.tokenizer)
        self.template = self.renderer.template
        self.calls: list[int] = []

    def encode(self, text: str) -> list[int]:
        return self.renderer.encode(text)

    def tokenize(self, conversation, truncate: bool = True) -> np.ndarray:
        ids = self.renderer.ids(as_conversation(conversation))
        return np.asarray(ids[-self.max_length:] if truncate else ids, dtype=np.int32)

    @staticmethod
    def expected(row) -> np.ndarray:
        r = np.asarray(row, dtype=np.float64)
        return np.array([len(r), r.mean(), r[-1], r.max(), r.min()]) / 100.0

    def predict_tokens(self, rows) -> np.ndarray:
        self.calls.append(len(rows))
        if self.delay_s:
            time.sleep(self.delay_s)
        if any(_contains(r, HANG) for r in rows):
            threading.Event().wait()  # forever: what a rank stuck in a dead collective looks like
        if any(_contains(r, BOOM) for r in rows):
            raise RuntimeError("forward failed")
        return np.stack([self.expected(r) for r in rows])


def main(argv):
    from nemo_hs2.serving import build_server

    import yaml

    settings = {"host": "127.0.0.1", "port": 0}
    for arg in argv:  # server.KEY=VALUE, as the Hydra entry takes them
        key, _, value = arg.partition("=")
        settings[key.removeprefix("server.")] = yaml.safe_load(value)
    server = build_server(FakeScorer(delay_s=float(os.environ.get("FAKE_DELAY_S", 0))), settings).start_http()
    host, port = server.address
    print(f"fake reward server listening on http://{host}:{port}", flush=True)
    import signal

    stop = threading.Event()
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda *_: stop.set())
    server.serve(stop)
    print("reward server stopped", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
