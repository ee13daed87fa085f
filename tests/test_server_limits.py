"""The reward server's bounds, each reproducing a failure of the http.server version (issue 14): allocation from a
declared shape, a thread per trickling connection, waiters left hanging by a stalled or dead model loop, one large
request occupying the model, an open default bind; plus every configured limit answered with the status that names
it, and small load and fuzz runs of benchmarks/serve_load.py. The model is tests/serving_fake.py's closed form
(tests/test_server.py checks answers against the real checkpoint)."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import subprocess
import sys
import threading
import time
import tracemalloc

import numpy as np
import pytest
import yaml

from nemo_hs2 import serving
from tests.conftest import CONF_DIR, ROOT
from tests.serving_fake import FakeScorer

sys.path.insert(0, os.path.join(str(ROOT), "benchmarks"))
import serve_load  # noqa: E402

CONV = [{"role": "user", "content": "How do I plant tomatoes?"},
        {"role": "assistant", "content": "Set the pH between 6.0 and 6.8."}]
ENV = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=str(ROOT))
ENV.pop("NEMO_HS2_SERVER_TOKEN", None)


def request(port, method, path, body=b"", headers=None, timeout=60):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        if isinstance(body, (dict, list)):
            body = json.dumps(body).encode()
        conn.request(method, path, body=body, headers=headers or {})
        resp = conn.getresponse()
        raw = resp.read()
        return resp.status, dict(resp.getheaders()), json.loads(raw) if raw else None
    finally:
        conn.close()


class InProcess:
    """build_server around the fake model, the model loop in a background thread."""

    def __init__(self, settings=None, scorer=None):
        self.scorer = scorer or FakeScorer()
        self.server = serving.build_server(self.scorer, {"host": "127.0.0.1", "port": 0, **(settings or {})})
        self.port = self.server.start_http().address[1]
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self.server.serve, args=(self.stop,), daemon=True)
        self.thread.start()

    def close(self):
        self.stop.set()
        self.thread.join(timeout=30)


@pytest.fixture
def make_server():
    servers = []

    def make(settings=None, scorer=None):
        servers.append(InProcess(settings, scorer))
        return servers[-1]

    yield make
    for s in servers:
        s.close()


class Subprocess:
    """tests/serving_fake.py as its own process (its exit status and RSS are what some tests check)."""

    def __init__(self, *settings, env=None):
        self.proc = subprocess.Popen([sys.executable, "-m", "tests.serving_fake", *settings], cwd=ROOT,
                                     env=env or ENV, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        self.log = []
        self.port = None
        for line in self.proc.stdout:
            self.log.append(line)
            m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
            if m:
                self.port = int(m.group(1))
                break
        if self.port is None:
            self.proc.wait()
            pytest.fail("fake server did not start:\n" + "".join(self.log[-40:]))
        threading.Thread(target=lambda: self.log.extend(self.proc.stdout), daemon=True).start()

    def threads(self) -> int:
        return len(os.listdir(f"/proc/{self.proc.pid}/task"))

    def close(self):
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


# ------------------------------------------------------------------------------------------ issue 14 "Why"
def test_declared_shape_is_checked_before_any_allocation():
    """A 117-byte-class request declaring 2e7 / 1e10 BYTES elements: a 400/413 naming the problem, no allocation
    (the old parser built np.empty(count, object) first: 160 MB here, MemoryError -> 500 for 1e10)."""
    payload = b"\x05\x00\x00\x00hello"
    for count in (4 * 10 ** 6, 2 * 10 ** 7, 10 ** 10):  # under, over and far over server.max_tensor_elements
        header = {"inputs": [{"name": "sentences", "shape": [count], "datatype": "BYTES",
                              "parameters": {"binary_data_size": len(payload)}}]}
        tracemalloc.start()
        try:
            with pytest.raises(serving.RequestError) as err:
                serving.parse_kserve_request(header, payload)
            _, peak = tracemalloc.get_traced_memory()
        finally:
            tracemalloc.stop()
        assert peak < 1 << 20, f"{peak} bytes allocated for a {len(payload)}-byte payload declaring {count}"
        assert "server.max_tensor_elements" in str(err.value) or "cannot hold" in str(err.value)
        if count < serving.ServerConfig().max_tensor_elements:  # a shape lie is caught against the bytes sent
            assert f"cannot hold {count} BYTES elements" in str(err.value)


def test_trickling_connections_are_capped_not_one_thread_each():
    """80 clients that never finish their request head: the old server held a thread for each (and one more for
    every new one); now at most server.max_connections (default 64) are held, the rest get 503 naming the limit, and
    the thread count does not grow."""
    srv = Subprocess()
    socks = []
    try:
        base = srv.threads()
        for _ in range(80):
            s = socket.create_connection(("127.0.0.1", srv.port), timeout=10)
            s.sendall(b"POST /score HTTP/1.1\r\nHost: x\r\n")
            socks.append(s)
        time.sleep(1.0)
        assert srv.threads() <= base + 2, f"{srv.threads()} threads for 80 stalled connections (from {base})"
        refused = 0
        for s in socks:
            s.setblocking(False)  # the refusals were sent at accept time; the held connections have nothing
            try:
                answer = s.recv(4096)
            except OSError:
                continue
            if answer.startswith(b"HTTP/1.1 503") and b"server.max_connections" in answer:
                refused += 1
        assert refused == 80 - serving.ServerConfig().max_connections
    finally:
        for s in socks:
            s.close()
        srv.close()


def test_stalled_model_loop_fails_waiters_and_exits_nonzero():
    """A model call that never returns (a rank stuck in a dead collective): the request in it and the one queued
    behind it get 503 naming server.model_stall_timeout_s, and the process exits with EXIT_MODEL_FAILED instead of
    hanging forever."""
    srv = Subprocess("server.model_stall_timeout_s=2", "server.max_queue_delay_ms=0")
    results = {}
    hang = [{"role": "user", "content": "x"}, {"role": "assistant", "content": "__hang__"}]

    def send(name, conv):
        try:
            results[name] = request(srv.port, "POST", "/score", {"conversations": [conv]}, timeout=60)
        except OSError as e:
            results[name] = e

    try:
        threads = [threading.Thread(target=send, args=("stuck", hang))]
        threads[0].start()
        time.sleep(0.5)
        threads.append(threading.Thread(target=send, args=("queued", CONV)))
        threads[1].start()
        for t in threads:
            t.join(timeout=60)
        for name in ("stuck", "queued"):
            status, _, body = results[name]
            assert status == 503 and "server.model_stall_timeout_s" in body["error"], (name, results[name])
        assert srv.proc.wait(timeout=30) == serving.EXIT_MODEL_FAILED
    finally:
        srv.close()


def test_model_loop_errors_never_leave_a_request_waiting():
    """The old loop died on a bad model answer without failing its requests or closing: the request in the batch
    and every later one waited forever. Now the batch fails, the loop keeps serving, and after the loop ends a
    submit fails at once."""
    answers = iter([None])

    def predict(rows):
        bad = next(answers, "ok")
        return None if bad is None else np.array([[float(r)] for r in rows])

    b = serving.Batcher(predict, max_batch_rows=8, max_delay_s=0.0)
    stop = threading.Event()
    runner = threading.Thread(target=b.run, args=(stop,), daemon=True)
    runner.start()
    first = b.submit([1])
    assert not isinstance(first.exception(timeout=10), TimeoutError)  # an error, not a hang
    assert b.submit([2]).result(timeout=10).ravel().tolist() == [2.0]
    stop.set()
    runner.join(timeout=10)
    assert isinstance(b.submit([3]).exception(timeout=2), serving.ShuttingDown)


def test_a_failed_collective_ends_the_loop_and_fails_every_waiter():
    """Under torchrun (fatal_errors) a failed broadcast leaves the ranks out of step: the loop ends with
    ModelLoopFailed (the server then exits 70) and the running and queued requests fail with it, none left waiting.
    Checked by hand on TP=2 with rank 1 SIGKILLed: the next request got 503 in 0.3 s and the job exited."""
    release = threading.Event()

    def predict(rows):
        release.wait(10)
        raise RuntimeError("Connection reset by peer")

    b = serving.Batcher(predict, max_batch_rows=1, max_delay_s=0.0, fatal_errors=True)
    errors = []
    runner = threading.Thread(target=lambda: errors.append(pytest.raises(serving.ModelLoopFailed, b.run)),
                              daemon=True)
    running = b.submit([1])
    runner.start()
    time.sleep(0.2)
    queued = b.submit([2])
    release.set()
    runner.join(timeout=10)
    assert errors and not runner.is_alive()
    for f in (running, queued):
        assert isinstance(f.exception(timeout=5), serving.ModelLoopFailed)
    assert isinstance(b.submit([3]).exception(timeout=1), serving.ModelLoopFailed)


def test_one_large_request_is_split_and_interleaved():
    """max_batch_rows caps every model call; a 12-row request no longer runs as one batch ahead of everyone: a
    1-row request sent after it is answered after its first chunk."""
    calls, done = [], []

    def predict(rows):
        calls.append(len(rows))
        return np.array([[float(r)] for r in rows])

    b = serving.Batcher(predict, max_batch_rows=4, max_delay_s=0.0)
    big = b.submit(list(range(12)))
    small = b.submit([100])
    big.add_done_callback(lambda f: done.append("big"))
    small.add_done_callback(lambda f: done.append("small"))
    runner = threading.Thread(target=b.run, daemon=True)
    runner.start()
    assert big.result(timeout=10).ravel().tolist() == list(map(float, range(12)))
    assert small.result(timeout=10).ravel().tolist() == [100.0]
    b.close()
    runner.join(timeout=10)
    assert max(calls) <= 4 and sum(calls) == 13
    assert done == ["small", "big"]


def test_loopback_by_default_and_a_token_guards_scoring_and_stats(make_server, monkeypatch, tmp_path):
    """With a token, scoring, /info and /stats need it; health and Triton's metadata routes stay open, because
    pytriton's ModelClient reads those before its first inference without its token (pytriton 0.7.0
    client.py, _wait_and_init_model_config). A token header that is not ASCII is a 401, not a 500."""
    assert serving.ServerConfig().host == "127.0.0.1"
    with open(os.path.join(CONF_DIR, "serve_reward_model.yaml")) as f:
        assert yaml.safe_load(f)["server"]["host"] == "127.0.0.1"
    with pytest.raises(ValueError, match="never a setting"):
        serving.ServerConfig.from_mapping({"token": "s3cret"})
    monkeypatch.setenv("NEMO_HS2_SERVER_TOKEN", "s3cr\u00e9t")
    with pytest.raises(ValueError, match="printable ASCII"):
        serving.ServerConfig().load_token()
    monkeypatch.setenv("NEMO_HS2_SERVER_TOKEN", "s3cret")
    srv = make_server()
    guarded = [("GET", "/info"), ("GET", "/stats"), ("POST", "/score"), ("POST", "/v2/models/reward_model/infer")]
    for method, path in guarded:
        status, headers, body = request(srv.port, method, path, {"conversations": [CONV]})
        assert status == 401 and "bearer token" in body["error"] and headers["WWW-Authenticate"].startswith("Bearer")
        for bad in ({"Authorization": "Bearer wrong"}, {"Authorization": "Basic czNjcmV0"},
                    {"triton-access-token": "wrong"}):
            assert request(srv.port, method, path, {"conversations": [CONV]}, bad)[0] == 401
    for raw_value in (b"Bearer s3cr\xc3\xa9t", b"Bearer \xff\xfe", "Bearer s3cret\u2028".encode()):
        status, _ = serve_load.raw_exchange(srv.port, b"GET /info HTTP/1.1\r\nHost: x\r\nAuthorization: " + raw_value
                                            + b"\r\nConnection: close\r\n\r\n")
        assert status in (400, 401), raw_value
    for method, path in [("GET", "/v2/models/reward_model/config"), ("POST", "/v2/repository/index"),
                         ("GET", "/v2/models/reward_model"), ("GET", "/v2/models/reward_model/ready"),
                         ("GET", "/health"), ("GET", "/v2/health/live"), ("GET", "/v2/health/ready")]:
        assert request(srv.port, method, path)[0] == 200, path
    status, _, body = request(srv.port, "POST", "/score", {"conversations": [CONV]},
                              {"Authorization": "Bearer s3cret"})
    assert status == 200 and len(body["rewards"]) == 1
    assert request(srv.port, "GET", "/info", headers={"triton-access-token": "s3cret"})[0] == 200
    monkeypatch.delenv("NEMO_HS2_SERVER_TOKEN")
    token_file = tmp_path / "token"
    token_file.write_text("from-a-file\n")
    srv = make_server({"auth_token_file": str(token_file)})
    assert request(srv.port, "GET", "/info")[0] == 401
    assert request(srv.port, "GET", "/info", headers={"Authorization": "Bearer from-a-file"})[0] == 200


# ------------------------------------------------------------------------------------------ every other bound
def test_each_limit_is_answered_with_its_status_and_name(make_server):
    srv = make_server({"max_body_mb": 0.01, "max_request_tokens": 300, "max_request_rows": 3,
                       "max_tensor_elements": 1000, "body_timeout_s": 0.5, "header_timeout_s": 0.5})
    port = srv.port
    want = {  # body -> (status, the setting the error names)
        b"{" * 20000: (413, "server.max_body_mb"),
        json.dumps({"conversations": [CONV] * 4}).encode(): (400, "server.max_request_rows"),
        json.dumps({"conversations": [[CONV[0], {"role": "assistant", "content": "y" * 200}]] * 2}).encode():
            (400, "server.max_request_tokens"),
    }
    for body, (status, name) in want.items():
        got, _, answer = request(port, "POST", "/score", body)
        assert got == status and name in answer["error"], answer
    infer = {"inputs": [{"name": "tokens", "shape": [2, 501], "datatype": "INT64", "data": [1] * 1002}]}
    got, _, answer = request(port, "POST", "/v2/models/reward_model/infer", infer)
    assert got == 413 and "server.max_tensor_elements" in answer["error"]
    # a body that stops arriving: 408 naming the timeout
    status, took = serve_load.raw_exchange(port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 100\r\n\r\n{")
    assert status == 408 and took < 5
    # a request head that never completes: the connection is closed (there is no request to answer)
    status, took = serve_load.raw_exchange(port, b"POST /score HTTP/1.1\r\nHo", timeout=10)
    assert status is None and took < 5
    assert request(port, "POST", "/score", {"conversations": [CONV]})[0] == 200


def test_compressed_bodies_count_inflated(make_server):
    """tritonclient can gzip its requests (request_compression_algorithm) and aiohttp inflates them as they are
    read: a gzip body is scored, and one that inflates past max_body_mb (a 200 KB bomb of 20 MiB) is a 413."""
    import gzip

    srv = make_server({"max_body_mb": 1, "max_buffered_mb": 4})
    body = gzip.compress(json.dumps({"conversations": [CONV]}).encode())
    status, _, answer = request(srv.port, "POST", "/score", body, {"Content-Encoding": "gzip"})
    assert status == 200 and len(answer["rewards"]) == 1
    bomb = gzip.compress(b'{"conversations": [' + b" " * (20 << 20) + b"]}")
    status, _, answer = request(srv.port, "POST", "/score", bomb, {"Content-Encoding": "gzip"})
    assert status == 413 and "server.max_body_mb" in answer["error"] and len(bomb) < 100_000


def test_queue_depth_gives_503_with_retry_after_and_the_deadline_504(make_server):
    srv = make_server({"max_pending_requests": 2, "request_timeout_s": 2.0, "max_queue_delay_ms": 0},
                      FakeScorer(delay_s=0.8))
    results = [None] * 6
    barrier = threading.Barrier(6)

    def send(i):
        barrier.wait()
        results[i] = request(srv.port, "POST", "/score", {"conversations": [CONV]})

    threads = [threading.Thread(target=send, args=(i,)) for i in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    statuses = sorted(r[0] for r in results)
    assert statuses.count(200) >= 2 and 503 in statuses and set(statuses) <= {200, 503}, statuses
    for status, headers, body in results:
        if status == 503:
            assert headers["Retry-After"] == "1" and "server.max_pending_requests" in body["error"]
        else:
            assert body["rewards"][0] == pytest.approx(float(FakeScorer.expected(
                srv.scorer.tokenize(CONV)) @ srv.scorer.weights))
    slow = make_server({"request_timeout_s": 0.5}, FakeScorer(delay_s=2.0))
    status, _, body = request(slow.port, "POST", "/score", {"conversations": [CONV]})
    assert status == 504 and "server.request_timeout_s" in body["error"]


# ------------------------------------------------------------------------------------------ load and fuzz (small)
@pytest.mark.slow
def test_small_load_and_fuzz_runs():
    """benchmarks/serve_load.py, scaled down: every load request answered 200 with the fake model's values, >= 300
    hostile requests each answered with its specified status, the server up after, RSS within 256 MB."""
    srv = Subprocess("server.header_timeout_s=1", "server.body_timeout_s=1", "server.max_body_mb=2")
    try:
        load = serve_load.run_load(srv.port, clients=3, requests=8)
        assert load["errors"] == 0 and load["requests"] == 24, load
        fuzz = serve_load.run_fuzz(srv.port, n=300, pid=srv.proc.pid, rss_bound_mb=256)
        assert fuzz["unexpected"] == 0, fuzz["unexpected_samples"]
        assert fuzz["tried"] >= 300 and fuzz["alive"] and fuzz["score_after"] == 200
        assert fuzz["rss_within_bound"], fuzz
        assert srv.proc.poll() is None
    finally:
        srv.close()


@pytest.mark.slow
def test_worst_case_memory_stays_within_the_stated_bound():
    """benchmarks/serve_memory.py at reduced limits: every worst case it builds (the issue's empty-object body,
    tiny strings and empty objects up to max_json_values, deep arrays, a non-BMP string filling the body and
    max_text_mb, BYTES tensors of empty strings, INT64 tokens, large repository-index POSTs), sent by
    max_connections clients at once, is refused 4xx / 503, the server keeps scoring, and its peak RSS stays within
    idle + ServerConfig.memory_bound_mb(); its thread count does not grow with that load."""
    import serve_memory

    settings = {"max_body_mb": 2, "max_buffered_mb": 8, "max_json_values": 1 << 16, "max_text_mb": 0.5,
                "max_connections": 12, "parse_workers": 2}
    srv = Subprocess(*(f"server.{k}={v}" for k, v in settings.items()))
    try:
        idle_threads = srv.threads()
        out = serve_memory.run(srv.port, srv.proc.pid)
        assert out["bound_mb"] == pytest.approx(serving.ServerConfig(**settings).memory_bound_mb(), abs=0.1)
        for case in out["cases"]:
            assert case["ok"], case
            assert set(case["statuses"]) <= {"400", "413", "503"}, case
        assert srv.threads() <= idle_threads + settings["parse_workers"]
    finally:
        srv.close()
