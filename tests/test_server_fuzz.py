"""Property-based fuzz of the reward server's request parsers and header handling: whatever a client sends, the
answer is a 2xx, or a 4xx / 503 / 504 with a JSON error naming the problem; never a 500, never a logged traceback.

The parsers are fuzzed directly (fast: thousands of bodies), then the HTTP layer on loopback with hostile request
heads (methods, paths, Authorization / Content-Length / Inference-Header-Content-Length values of any bytes). The
model is tests/serving_fake.py's closed form; the raw-socket cases of benchmarks/serve_load.py (oversize, chunked,
slow senders) run in tests/test_server_limits.py."""

from __future__ import annotations

import json
import logging
import struct

import numpy as np
import pytest
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from nemo_hs2 import serving
from nemo_hs2.serving.batching import TokenScorer
from nemo_hs2.serving.service import RewardService
from tests.serving_fake import FakeScorer
from tests.test_server_limits import InProcess, serve_load

LIMITS = {"max_request_rows": 8, "max_request_tokens": 4000, "max_tensor_elements": 4096, "max_json_values": 2000,
          "max_text_mb": 0.004, "max_body_mb": 0.06, "max_buffered_mb": 1, "header_timeout_s": 2,
          "body_timeout_s": 2}
SERVICE = RewardService(TokenScorer(FakeScorer(max_length=300)), serving.ServerConfig.from_mapping(LIMITS))
REFUSALS = (400, 401, 404, 405, 408, 413, 431, 503, 504)
DTYPES = ["BYTES", "INT64", "INT32", "UINT8", "UINT64", "BOOL", "FP32", "FP16", "FP64", "COMPLEX", 7, None]
NAMES = ["sentences", "tokens", "sequence_lengths", "add_EOS", "prompts", "", 3]

json_scalar = st.one_of(st.none(), st.booleans(), st.integers(-2 ** 70, 2 ** 70), st.floats(allow_nan=True),
                        st.text(max_size=20))
json_value = st.recursive(json_scalar, lambda inner: st.one_of(
    st.lists(inner, max_size=6), st.dictionaries(st.text(max_size=8), inner, max_size=5)), max_leaves=40)
dim = st.one_of(st.integers(0, 6), st.integers(-3, 2 ** 70), st.sampled_from([2 ** 63, 2 ** 64, 0]), json_scalar)
shape = st.one_of(st.lists(dim, max_size=4), st.lists(st.integers(0, 3), max_size=10), json_value)
turn = st.fixed_dictionaries({"role": st.sampled_from(["user", "assistant", "system", "bot", ""]),
                              "content": st.text(max_size=60)})
text = st.text(st.characters(codec="utf-8"), min_size=1, max_size=40)
# well-formed chats of arbitrary text (user / assistant alternating, the assistant last), so the fuzz also reaches
# tokenizing, batching and the answer, not only the refusals
chat = st.builds(lambda pairs, system: ([{"role": "system", "content": system}] if system else []) + [
    {"role": role, "content": c} for u, a in pairs for role, c in (("user", u), ("assistant", a))],
    st.lists(st.tuples(text, text), min_size=1, max_size=3), st.one_of(st.none(), text))
conversation = st.one_of(chat, chat, st.lists(turn, max_size=5), st.lists(st.one_of(turn, json_value), max_size=4),
                         json_value)


@st.composite
def tensor(draw):
    spec = {"name": draw(st.sampled_from(NAMES)), "datatype": draw(st.sampled_from(DTYPES)), "shape": draw(shape)}
    kind = draw(st.sampled_from(["data", "binary", "both", "neither", "junk"]))
    tail = b""
    if kind in ("data", "both"):
        spec["data"] = draw(st.one_of(json_value, st.lists(st.integers(-5, 300), max_size=12),
                                      st.lists(st.text(max_size=10), max_size=6)))
    if kind in ("binary", "both"):
        tail = draw(st.one_of(st.binary(max_size=64), st.lists(st.binary(max_size=9), max_size=5).map(
            lambda items: b"".join(struct.pack("<I", len(i)) + i for i in items))))
        spec["parameters"] = {"binary_data_size": draw(st.one_of(st.just(len(tail)), json_scalar))}
    if kind == "junk":
        spec["parameters"] = draw(json_value)
    return spec, tail


@st.composite
def token_rows(draw):
    """tokens [B, T] + sequence_lengths [B, 1] as RemoteGPTRMClient sends them, lengths and ids drawn freely."""
    rows = draw(st.lists(st.lists(st.integers(-2, 260), min_size=1, max_size=12), min_size=1, max_size=4))
    width = max(map(len, rows))
    flat = [t for r in rows for t in r + [0] * (width - len(r))]
    lengths = [draw(st.one_of(st.just(len(r)), st.integers(-1, width + 2))) for r in rows]
    binary = draw(st.booleans())
    specs = []
    for name, shape, values in (("tokens", [len(rows), width], flat), ("sequence_lengths", [len(rows), 1], lengths)):
        if binary:
            raw = struct.pack(f"<{len(values)}q", *values)
            specs.append(({"name": name, "datatype": "INT64", "shape": shape,
                           "parameters": {"binary_data_size": len(raw)}}, raw))
        else:
            specs.append(({"name": name, "datatype": "INT64", "shape": shape, "data": values}, b""))
    return specs


@st.composite
def sentence_rows(draw):
    texts = draw(st.lists(text, min_size=1, max_size=3))
    if draw(st.booleans()):
        raw = b"".join(struct.pack("<I", len(t.encode())) + t.encode() for t in texts)
        return [({"name": "sentences", "datatype": "BYTES", "shape": [len(texts), 1],
                  "parameters": {"binary_data_size": len(raw)}}, raw)]
    return [({"name": "sentences", "datatype": "BYTES", "shape": [len(texts)], "data": texts}, b"")]


@st.composite
def infer_body(draw):
    specs = draw(st.one_of(st.lists(tensor(), max_size=4), token_rows(), sentence_rows()))
    header = {"inputs": [s for s, _ in specs]}
    for key in ("outputs", "parameters", "id"):
        if draw(st.booleans()):
            header[key] = draw(st.one_of(json_value, st.lists(st.fixed_dictionaries(
                {"name": st.sampled_from(["rewards", "attributes", "exceeded", "values"])}), max_size=3)))
    text = json.dumps(draw(st.one_of(st.just(header), json_value))).encode()
    tail = b"".join(t for _, t in specs)
    length = draw(st.one_of(st.none(), st.just(str(len(text))), st.text(max_size=6)))
    return (text + tail if length is not None else text), length


def check_outcome(call):
    """``call()`` prepares a request: it must give rows the model can score and an answer for them, or refuse with
    a RequestError that names the problem; anything else escaping is a 500 in the server."""
    try:
        prepared = call()
    except serving.RequestError as e:
        assert e.status in (400, 413) and str(e), e
        event(f"refused {e.status}")  # --hypothesis-show-statistics counts each outcome
        return "refused"
    event("answered")
    assert prepared.rows and all(r.dtype == np.int32 and r.ndim == 1 and len(r) for r in prepared.rows)
    pred = np.stack([FakeScorer.expected(r) for r in prepared.rows])
    try:
        body, headers = prepared.respond(pred)
    except serving.RequestError as e:  # an unknown output is found when the answer is built
        assert e.status == 400 and "output" in str(e)
        return "refused"
    assert body and headers["Content-Type"]
    return "answered"


@settings(max_examples=250, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.one_of(
    st.binary(max_size=300),
    st.builds(lambda v: json.dumps(v).encode(), json_value),
    st.builds(lambda c: json.dumps({"conversations": c}).encode(), st.lists(conversation, max_size=4)),
    st.builds(lambda c: json.dumps({"conversation": c}).encode(), conversation)))
def test_score_parser_answers_or_refuses_every_body(raw):
    check_outcome(lambda: SERVICE.score_request(raw))


@settings(max_examples=350, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(infer_body())
def test_infer_parser_answers_or_refuses_every_body(case):
    raw, length = case
    check_outcome(lambda: SERVICE.infer_request(bytearray(raw), length))


def test_the_issue_cases_are_refused_by_the_parsers():
    """The two 500s of issue 25 (a zero-element shape with a dimension no array can have) and the value count."""
    for shape in ([0, 2 ** 70], [2 ** 70, 0], [0, 2 ** 63]):
        body = json.dumps({"inputs": [{"name": "tokens", "shape": shape, "datatype": "INT64", "data": []}]})
        with pytest.raises(serving.RequestError, match="server.max_tensor_elements") as err:
            SERVICE.infer_request(body.encode(), None)
        assert err.value.status == 413
    with pytest.raises(serving.RequestError, match="server.max_json_values"):
        SERVICE.score_request(b'{"conversations": [' + b"{}," * 3000 + b"{}]}")
    # 10 values and keys (outer object, a, list, 1, the string, inner object, b, [], c, 2); counted: 1 + 2 '{' +
    # 2 '[' + 3 ',' + 3 ':' outside the strings, none of those inside "x,y:[{" or the escaped key
    assert serving.protocol.json_values(b'{"a": [1, "x,y:[{", {"b": []}], "c\\"": 2}') == 11


# ------------------------------------------------------------------------------------------ the HTTP layer
class Collect(logging.Handler):
    def __init__(self):
        super().__init__(logging.DEBUG)
        self.records = []

    def emit(self, record):
        self.records.append(record)


@pytest.fixture(scope="module")
def http_server(monkeypatch_module):
    monkeypatch_module.setenv("NEMO_HS2_SERVER_TOKEN", "s3cret")
    collect = Collect()
    loggers = [logging.getLogger(n) for n in ("nemo_hs2", "aiohttp", "asyncio")]
    for lg in loggers:
        lg.addHandler(collect)
    srv = InProcess(LIMITS, FakeScorer(max_length=300))
    yield srv, collect
    srv.close()
    for lg in loggers:
        lg.removeHandler(collect)


@pytest.fixture(scope="module")
def monkeypatch_module():
    mp = pytest.MonkeyPatch()
    yield mp
    mp.undo()


header_bytes = st.one_of(st.binary(max_size=40).map(lambda b: b.replace(b"\r", b"").replace(b"\n", b"")),
                         st.text(max_size=30).map(lambda t: t.encode("utf-8", "surrogatepass")
                                                  .replace(b"\r", b"").replace(b"\n", b"")))
PATHS = ["/score", "/v2/models/reward_model/infer", "/v2/models/reward_model/versions/1/infer", "/info", "/stats",
         "/v2/repository/index", "/v2/models/reward_model/config", "/v2/models/x/infer", "/%ff%00", "/v2/models//",
         "/v2/models/reward_model/versions/1/a/b", "/health"]


@st.composite
def http_request(draw):
    method = draw(st.sampled_from([b"GET", b"POST", b"HEAD", b"PUT", b"DELETE", b"OPTIONS", b"G\xffT"]))
    path = draw(st.one_of(st.sampled_from(PATHS).map(str.encode),
                          header_bytes.map(lambda b: b"/" + b.replace(b" ", b""))))
    body = draw(st.one_of(st.binary(max_size=200), infer_body().map(lambda c: c[0]),
                          st.builds(lambda c: json.dumps({"conversations": c}).encode(), st.lists(conversation,
                                                                                                  max_size=3))))
    headers = [b"Host: x", b"Connection: close"]
    auth = draw(st.one_of(st.just(b"Bearer s3cret"), st.just(None), header_bytes.map(lambda b: b"Bearer " + b),
                          header_bytes))
    if auth is not None:
        headers.append(draw(st.sampled_from([b"Authorization: ", b"triton-access-token: "])) + auth)
    length = draw(st.one_of(st.just(str(len(body)).encode()), header_bytes, st.none()))
    if length is not None:
        headers.append(b"Content-Length: " + length)
    ihcl = draw(st.one_of(st.none(), header_bytes, st.integers(-5, 300).map(lambda n: str(n).encode())))
    if ihcl is not None:
        headers.append(b"Inference-Header-Content-Length: " + ihcl)
    for _ in range(draw(st.integers(0, 2))):
        headers.append(draw(header_bytes).replace(b":", b"") + b": " + draw(header_bytes))
    return method + b" " + path + b" HTTP/1.1\r\n" + b"\r\n".join(headers) + b"\r\n\r\n" + body


def exchange(port, data: bytes) -> tuple[int | None, bytes]:
    import socket

    with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
        try:  # no half-close: aiohttp takes the client's EOF for a disconnect and drops the request
            s.sendall(data)
        except OSError:
            pass
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
        except OSError:
            pass
    answer = b"".join(chunks)
    status = int(answer[9:12]) if answer.startswith(b"HTTP/1.") and answer[9:12].isdigit() else None
    return status, answer.partition(b"\r\n\r\n")[2]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow,
                                                                   HealthCheck.function_scoped_fixture])
@given(http_request())
def test_http_answers_every_request_head_and_body_without_a_500(http_server, data):
    srv, collect = http_server
    status, body = exchange(srv.port, data)
    event(f"HTTP {status}")
    assert status is not None, data[:200]  # an unparseable head is answered 400 by aiohttp, not dropped
    assert status < 300 or status in REFUSALS, (status, data[:300], body[:300])
    if status in REFUSALS and status not in (400, 431) and data.split(b" ", 1)[0] != b"HEAD":
        assert json.loads(body)["error"], body  # our errors are JSON naming the problem (aiohttp's own 400s are text)
    errors = [r for r in collect.records if r.levelno >= logging.ERROR or (
        r.exc_info and r.name.startswith("nemo_hs2"))]
    assert not errors, [r.getMessage() for r in errors]


def test_http_server_still_answers_after_the_fuzz(http_server):
    srv, collect = http_server
    body = json.dumps({"conversations": [[{"role": "user", "content": "Hi"},
                                          {"role": "assistant", "content": "Hello."}]]}).encode()
    status, answer = exchange(srv.port, b"POST /score HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer s3cret\r\n"
                              + f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
    assert status == 200 and len(json.loads(answer)["rewards"]) == 1, answer
    stats = json.loads(serve_load.call(srv.port, "GET", "/stats", token="s3cret")[2])
    assert "500" not in stats["http"], stats["http"]
