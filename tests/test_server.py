"""The reward server on loopback: NeMo-Aligner's KServe v2 interface (JSON and binary tensors, as tritonclient sends
them), the JSON /score endpoint, answers equal to the offline inference API, batching of concurrent requests, and
clear errors for bad requests after which the server keeps serving."""

from __future__ import annotations

import http.client
import json
import os
import queue
import re
import signal
import struct
import subprocess
import sys
import threading

import numpy as np
import pytest

from nemo_hs2 import serving
from nemo_hs2.core.scorer import as_conversation
from tests.test_rewardbench import ENV, ROOT, demo_checkpoint, demo_scorer

MAX_REQUEST_ROWS = 16
CONV = [{"role": "user", "content": "How do I plant tomatoes?"},
        {"role": "assistant", "content": "First, read the guide twice. Set the pH between 6.0 and 6.8."}]
MULTI = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi"},
         {"role": "assistant", "content": "Hello."}, {"role": "user", "content": "Bake bread?"},
         {"role": "assistant", "content": "Start by gathering everything you need."}]


# ------------------------------------------------------------------------------------------ client helpers
def request(port, method, path, body=b"", headers=None):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def as_json(result):
    status, _, body = result
    return status, json.loads(body) if body else None


def bytes_tensor(values) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def binary_infer(inputs, outputs=None):
    """A request body as tritonclient.http builds it: JSON header, then each input's raw little-endian bytes."""
    specs, chunks = [], []
    for name, datatype, shape, raw in inputs:
        specs.append({"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}})
        chunks.append(raw)
    header = {"id": "42", "inputs": specs}
    if outputs is None:
        header["parameters"] = {"binary_data_output": True}
    else:
        header["outputs"] = [{"name": n, "parameters": {"binary_data": True}} for n in outputs]
    text = json.dumps(header).encode()
    return text + b"".join(chunks), {"Inference-Header-Content-Length": str(len(text)),
                                     "Content-Type": "application/octet-stream"}


def decode_binary_response(headers, body):
    """What tritonclient's InferResult.as_numpy does with a binary response."""
    n = int(headers["Inference-Header-Content-Length"])
    header = json.loads(body[:n])
    offset, arrays = n, {}
    dtypes = {"FP32": np.float32, "BOOL": np.bool_}
    for out in header["outputs"]:
        size = out["parameters"]["binary_data_size"]
        arrays[out["name"]] = np.frombuffer(body[offset:offset + size], dtype=dtypes[out["datatype"]]).reshape(
            out["shape"])
        offset += size
    assert offset == len(body)
    return header, arrays


# ------------------------------------------------------------------------------------------ fixtures
class ServerProcess:
    """examples/serve_reward_model.py (or torchrun of it) in a subprocess, with its output drained and kept."""

    def __init__(self, cmd):
        self.proc = subprocess.Popen(cmd, cwd=ROOT, env=ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
        self.log: list[str] = []
        lines: queue.Queue = queue.Queue()

        def drain():  # keep reading, or a full pipe would block the server
            for line in self.proc.stdout:
                self.log.append(line)
                lines.put(line)
            lines.put(None)

        threading.Thread(target=drain, daemon=True).start()
        self.port = None
        while self.port is None:
            try:
                line = lines.get(timeout=300)
            except queue.Empty:
                break
            if line is None:
                break
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            self.port = int(m.group(1)) if m else None
        if self.port is None:
            self.proc.kill()
            self.proc.wait()
            pytest.fail("server did not start:\n" + "".join(self.log[-60:]))

    def stop(self) -> str:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        return "".join(self.log)


def serve_command(ckpt, *overrides):
    return [os.path.join(ROOT, "examples", "serve_reward_model.py"), f"checkpoint={ckpt}", "server.host=127.0.0.1",
            "server.port=0", *overrides]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    srv = ServerProcess([sys.executable, *serve_command(demo_checkpoint(tmp_path_factory),
                                                       "server.max_queue_delay_ms=300",
                                                       f"server.max_request_rows={MAX_REQUEST_ROWS}")])
    yield srv.port
    assert "reward server stopped" in srv.stop()


@pytest.fixture(scope="module")
def scorer(tmp_path_factory):
    return demo_scorer(tmp_path_factory)


def steerlm_text(conv, scorer):
    return scorer.renderer.text(as_conversation(conv))  # the fully formatted text NeMo-Aligner's clients send


# ------------------------------------------------------------------------------------------ good requests
def test_score_endpoint_matches_the_offline_api(server, scorer):
    status, got = as_json(request(server, "POST", "/score", {"conversations": [CONV, MULTI]}))
    assert status == 200
    offline = scorer.score([CONV, MULTI])
    assert got["attribute_names"] == list(scorer.attributes)
    for reward, attrs, want in zip(got["rewards"], got["attributes"], offline):
        assert reward == pytest.approx(want["reward"], abs=1e-5)
        assert attrs == pytest.approx(want["attributes"], abs=1e-5)
    assert got["truncated"] == [False, False]


def test_kserve_json_sentences(server, scorer):
    texts = [steerlm_text(CONV, scorer), steerlm_text(MULTI, scorer)]
    body = {"id": "a1", "inputs": [{"name": "sentences", "shape": [2, 1], "datatype": "BYTES", "data": texts}]}
    status, got = as_json(request(server, "POST", "/v2/models/reward_model/infer", body))
    assert status == 200 and got["id"] == "a1" and got["model_name"] == "reward_model"
    outs = {o["name"]: o for o in got["outputs"]}
    assert outs["rewards"]["shape"] == [2, 1] and outs["rewards"]["datatype"] == "FP32"
    assert outs["attributes"]["shape"] == [2, 5] and outs["exceeded"]["data"] == [False, False]
    offline = scorer.score([CONV, MULTI])
    assert outs["rewards"]["data"] == pytest.approx([o["reward"] for o in offline], abs=1e-5)


def test_kserve_binary_tokens_as_the_ppo_client_sends_them(server, scorer):
    """RemoteGPTRMClient.infer_rm: tokens [B, T] padded with 0, sequence_lengths [B, 1], both INT64, binary."""
    rows = [scorer.tokenize(CONV), scorer.tokenize(MULTI)]
    width = max(map(len, rows)) + 5
    tokens = np.zeros((2, width), dtype=np.int64)
    for i, r in enumerate(rows):
        tokens[i, :len(r)] = r
    lengths = np.array([[len(r)] for r in rows], dtype=np.int64)
    body, headers = binary_infer([("tokens", "INT64", [2, width], tokens.astype("<i8").tobytes()),
                                  ("sequence_lengths", "INT64", [2, 1], lengths.astype("<i8").tobytes())],
                                 outputs=["rewards"])
    status, resp_headers, raw = request(server, "POST", "/v2/models/reward_model/versions/1/infer", body, headers)
    assert status == 200, raw
    header, arrays = decode_binary_response(resp_headers, raw)
    assert [o["name"] for o in header["outputs"]] == ["rewards"] and header["id"] == "42"
    assert arrays["rewards"].shape == (2, 1) and arrays["rewards"].dtype == np.float32  # what get_future_result reads
    offline = scorer.score([CONV, MULTI])
    assert arrays["rewards"][:, 0] == pytest.approx([o["reward"] for o in offline], abs=1e-5)


def test_kserve_binary_sentences_with_add_eos(server, scorer):
    """The SteerLM annotation client: binary BYTES sentences [B, 1] plus add_EOS; every output in binary."""
    texts = [steerlm_text(CONV, scorer).encode()]
    body, headers = binary_infer([("sentences", "BYTES", [1, 1], bytes_tensor(texts)),
                                  ("add_EOS", "BOOL", [1, 1], b"\x00")])
    status, resp_headers, raw = request(server, "POST", "/v2/models/reward_model/infer", body, headers)
    assert status == 200, raw
    _, arrays = decode_binary_response(resp_headers, raw)
    (offline,) = scorer.score([CONV])
    assert float(arrays["rewards"][0, 0]) == pytest.approx(offline["reward"], abs=1e-5)
    assert arrays["attributes"][0] == pytest.approx([offline["attributes"][a] for a in scorer.attributes], abs=1e-5)
    assert arrays["exceeded"].tolist() == [[False]]


def test_triton_model_endpoints_pytriton_reads(server):
    assert request(server, "GET", "/v2/health/live")[0] == 200
    assert request(server, "GET", "/v2/health/ready")[0] == 200
    assert request(server, "GET", "/v2/models/reward_model/ready")[0] == 200
    status, index = as_json(request(server, "POST", "/v2/repository/index", b""))
    assert status == 200 and index == [{"name": "reward_model", "version": "1", "state": "READY"}]
    status, cfg = as_json(request(server, "GET", "/v2/models/reward_model/config"))
    assert status == 200 and cfg["name"] == "reward_model" and cfg["max_batch_size"] == MAX_REQUEST_ROWS
    # The fields PyTriton's ModelConfigParser needs: TYPE_* data types and non-empty dims.
    assert {i["name"]: (i["data_type"], i["optional"]) for i in cfg["input"]} == {
        "sentences": ("TYPE_STRING", True), "tokens": ("TYPE_INT64", True),
        "sequence_lengths": ("TYPE_INT64", True), "add_EOS": ("TYPE_BOOL", True)}
    assert {o["name"]: (o["data_type"], o["dims"]) for o in cfg["output"]} == {
        "rewards": ("TYPE_FP32", [1]), "attributes": ("TYPE_FP32", [5]), "exceeded": ("TYPE_BOOL", [1])}
    assert cfg["parameters"]["attribute_names"]["string_value"].split(",")[0] == "helpfulness"
    status, meta = as_json(request(server, "GET", "/v2/models/reward_model"))
    assert status == 200 and meta["versions"] == ["1"]


def test_concurrent_requests_are_batched(server, scorer):
    _, before = as_json(request(server, "GET", "/stats"))
    convs = [[CONV[0], {"role": "assistant", "content": "Next, follow each step slowly. " * (i + 1)}]
             for i in range(6)]
    barrier = threading.Barrier(len(convs))
    results = [None] * len(convs)

    def send(i):
        barrier.wait()
        results[i] = as_json(request(server, "POST", "/score", {"conversations": [convs[i]]}))

    threads = [threading.Thread(target=send, args=(i,)) for i in range(len(convs))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    offline = scorer.score(convs)
    for (status, got), want in zip(results, offline):
        assert status == 200
        assert got["rewards"][0] == pytest.approx(want["reward"], abs=1e-5)
    _, after = as_json(request(server, "GET", "/stats"))
    assert after["requests"] - before["requests"] == len(convs)
    assert after["batches"] - before["batches"] < len(convs)  # at least two requests shared a forward


# ------------------------------------------------------------------------------------------ bad requests
def _infer(inputs, **extra):
    return {"inputs": inputs, **extra}


LONG = [{"role": "user", "content": "x" * 600}, {"role": "assistant", "content": "y"}]
BAD = {
    "malformed JSON": ("/score", b'{"conversations": [', 400, "not valid JSON"),
    "not an object": ("/score", [1, 2], 400, "must be a JSON object"),
    "conversations not a list": ("/score", {"conversations": "hi"}, 400, "non-empty list"),
    "no conversations": ("/score", {"conversations": []}, 400, "non-empty list"),
    "empty conversation": ("/score", {"conversations": [[]]}, 400, "conversation 0: empty conversation"),
    "content not a string": ("/score", {"conversations": [[{"role": "user", "content": 3}]]}, 400, "turn 0"),
    "ends with the user": ("/score", {"conversations": [[CONV[0]]]}, 400, "last turn must be the assistant"),
    "unknown role": ("/score", {"conversations": [[{"role": "bot", "content": "x"}, CONV[1]]]}, 400, "role 'bot'"),
    "over-length": ("/score", {"conversations": [LONG]}, 400, "over the limit of 512 tokens"),
    "too many rows": ("/score", {"conversations": [CONV] * (MAX_REQUEST_ROWS + 1)}, 400,
                      f"the limit is {MAX_REQUEST_ROWS}"),
    "no inputs": ("/v2/models/reward_model/infer", _infer([]), 400, "'inputs' must be a non-empty list"),
    "sentences as INT64": ("/v2/models/reward_model/infer",
                           _infer([{"name": "sentences", "shape": [1], "datatype": "INT64", "data": [3]}]), 400,
                           "'sentences' must be BYTES"),
    "wrong data type": ("/v2/models/reward_model/infer",
                        _infer([{"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": ["a", "b"]}]), 400,
                        "INT64 data must be integers"),
    "shape mismatch": ("/v2/models/reward_model/infer",
                       _infer([{"name": "sentences", "shape": [2, 1], "datatype": "BYTES", "data": ["a"]}]), 400,
                       "1 values for shape [2, 1]"),
    "tokens without lengths": ("/v2/models/reward_model/infer",
                               _infer([{"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]}]),
                               400, "needs 'sequence_lengths'"),
    "token outside vocabulary": ("/v2/models/reward_model/infer", _infer([
        {"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": [1, 99999]},
        {"name": "sequence_lengths", "shape": [1, 1], "datatype": "INT64", "data": [2]}]), 400,
        "outside the vocabulary"),
    "zero length": ("/v2/models/reward_model/infer", _infer([
        {"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": [1, 2]},
        {"name": "sequence_lengths", "shape": [1], "datatype": "INT64", "data": [0]}]), 400, "outside 1..2"),
    "empty sentence": ("/v2/models/reward_model/infer",
                       _infer([{"name": "sentences", "shape": [1], "datatype": "BYTES", "data": [""]}]), 400,
                       "sentence 0 is empty"),
    "unknown input": ("/v2/models/reward_model/infer",
                      _infer([{"name": "prompts", "shape": [1], "datatype": "BYTES", "data": ["x"]}]), 400,
                      "unexpected input(s) ['prompts']"),
    "unknown output": ("/v2/models/reward_model/infer",
                       _infer([{"name": "sentences", "shape": [1], "datatype": "BYTES", "data": ["x"]}],
                              outputs=[{"name": "values"}]), 400, "unknown output(s) ['values']"),
    "unknown model": ("/v2/models/critic/infer", _infer([]), 404, "unknown model 'critic'"),
    "unknown path": ("/v1/score", {}, 404, "no POST /v1/score"),
}


@pytest.mark.parametrize("case", list(BAD))
def test_bad_requests_get_a_clear_error_and_the_server_stays_up(server, case):
    path, body, want_status, fragment = BAD[case]
    status, headers, raw = request(server, "POST", path, body)
    assert status == want_status, raw
    assert headers["Content-Type"] == "application/json"
    assert fragment in json.loads(raw)["error"]  # tritonclient raises InferenceServerException(msg=error)
    assert request(server, "GET", "/v2/health/ready")[0] == 200
    status, got = as_json(request(server, "POST", "/score", {"conversations": [CONV]}))
    assert status == 200 and len(got["rewards"]) == 1


def test_bad_binary_requests(server):
    text = "caf\xe9".encode("latin-1")  # not UTF-8
    body, headers = binary_infer([("sentences", "BYTES", [1, 1], bytes_tensor([text]))])
    status, _, raw = request(server, "POST", "/v2/models/reward_model/infer", body, headers)
    assert status == 400 and "not valid UTF-8" in json.loads(raw)["error"]
    body, headers = binary_infer([("tokens", "INT64", [1, 2], b"\x01" * 8)])  # 8 bytes for 2 INT64 values
    status, _, raw = request(server, "POST", "/v2/models/reward_model/infer", body, headers)
    assert status == 400 and "8 bytes for 2 INT64 elements" in json.loads(raw)["error"]
    headers["Inference-Header-Content-Length"] = "100000"
    status, _, raw = request(server, "POST", "/v2/models/reward_model/infer", body, headers)
    assert status == 400 and "outside the" in json.loads(raw)["error"]
    assert request(server, "GET", "/v2/health/live")[0] == 200


def test_tensor_parallel_server_under_torchrun(tmp_path_factory, scorer):
    """TP=2: rank 0 serves and broadcasts each batch, rank 1 follows; answers equal the single-process model's."""
    srv = ServerProcess([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
                         "29761", *serve_command(demo_checkpoint(tmp_path_factory), "trainer.devices=2",
                                                 "model.tensor_model_parallel_size=2")])
    try:
        status, got = as_json(request(srv.port, "POST", "/score", {"conversations": [CONV, MULTI]}))
        texts = [steerlm_text(CONV, scorer)]
        body = {"inputs": [{"name": "sentences", "shape": [1, 1], "datatype": "BYTES", "data": texts}]}
        infer_status, infer = as_json(request(srv.port, "POST", "/v2/models/reward_model/infer", body))
    finally:
        log = srv.stop()
    assert status == 200 and infer_status == 200, log[-3000:]
    offline = scorer.score([CONV, MULTI])
    assert got["rewards"] == pytest.approx([o["reward"] for o in offline], abs=1e-5)
    assert infer["outputs"][0]["data"] == pytest.approx([offline[0]["reward"]], abs=1e-5)
    assert "reward server stopped" in log  # rank 0 released rank 1 and both left the forward loop


# ------------------------------------------------------------------------------------------ in process
def test_truncate_policy_keeps_the_end_and_flags_it(scorer):
    """server.overlength=truncate: an over-long conversation is scored on its last max_length tokens, as training
    truncates, and reported. The model loop runs in this (the model's) thread; the client in another."""
    srv = serving.build_server(scorer, {"host": "127.0.0.1", "port": 0, "overlength": "truncate"})
    port = srv.start_http().address[1]
    stop, got = threading.Event(), {}

    def client():
        try:
            got["score"] = as_json(request(port, "POST", "/score", {"conversations": [LONG, CONV]}))
            body = {"inputs": [{"name": "sentences", "shape": [1], "datatype": "BYTES",
                                "data": [steerlm_text(LONG, scorer)]}]}
            got["infer"] = as_json(request(port, "POST", "/v2/models/reward_model/infer", body))
        finally:
            stop.set()

    threading.Thread(target=client).start()
    srv.serve(stop)
    status, body = got["score"]
    assert status == 200 and body["truncated"] == [True, False]
    offline = scorer.score([LONG, CONV])  # RewardScorer keeps the last max_length tokens too
    assert body["rewards"] == pytest.approx([o["reward"] for o in offline], abs=1e-5)
    status, body = got["infer"]
    outs = {o["name"]: o for o in body["outputs"]}
    assert status == 200 and outs["exceeded"]["data"] == [True]
    assert outs["rewards"]["data"][0] == pytest.approx(offline[0]["reward"], abs=1e-5)


def test_kserve_codec_round_trip():
    texts = ["héllo".encode(), b"", b"x" * 300]
    raw = bytes_tensor(texts)
    header = {"inputs": [{"name": "sentences", "shape": [3, 1], "datatype": "BYTES",
                          "parameters": {"binary_data_size": len(raw)}},
                         {"name": "n", "shape": [2], "datatype": "INT32", "data": [[1], [2]]}],
              "outputs": [{"name": "a", "parameters": {"binary_data": True}}, {"name": "b"}]}
    arrays, requested, rid = serving.parse_kserve_request(header, raw)
    assert arrays["sentences"][0] == "BYTES" and arrays["sentences"][1].reshape(-1).tolist() == texts
    assert arrays["n"][1].tolist() == [1, 2] and rid is None
    body, headers = serving.encode_kserve_response(
        "m", {"a": ("FP32", np.array([[1.5], [2.5]], dtype=np.float32)), "b": ("BOOL", np.array([True]))},
        requested, "7")
    n = int(headers["Inference-Header-Content-Length"])
    head = json.loads(body[:n])
    assert head["id"] == "7" and head["outputs"][1] == {"name": "b", "datatype": "BOOL", "shape": [1], "data": [True]}
    assert np.frombuffer(body[n:], dtype="<f4").tolist() == [1.5, 2.5]
    with pytest.raises(serving.RequestError, match="binary BYTES data ends early"):
        serving.parse_kserve_request({"inputs": [{"name": "s", "shape": [2], "datatype": "BYTES",
                                                  "parameters": {"binary_data_size": 10}}]}, raw[:10])


def test_batcher_groups_queued_requests_and_survives_failures():
    calls = []

    def predict(rows):
        calls.append(len(rows))
        if any(r == "boom" for r in rows):
            raise RuntimeError("forward failed")
        return np.array([[float(r)] for r in rows])

    b = serving.Batcher(predict, max_batch_rows=100, max_delay_s=0.5)
    futures = [b.submit([1, 2]), b.submit([3]), b.submit([4, 5, 6])]  # queued before the loop starts
    runner = threading.Thread(target=b.run)
    runner.start()
    assert [f.result(timeout=30).ravel().tolist() for f in futures] == [[1, 2], [3], [4, 5, 6]]
    assert calls == [6]
    bad = b.submit(["boom"])
    with pytest.raises(RuntimeError, match="forward failed"):
        bad.result(timeout=30)
    assert b.submit([7]).result(timeout=30).ravel().tolist() == [7]  # still serving
    b.close()
    runner.join(timeout=30)
    with pytest.raises(serving.ShuttingDown):
        b.submit([8]).result(timeout=5)
    assert b.stats["failed_batches"] == 1 and b.stats["requests"] == 4
