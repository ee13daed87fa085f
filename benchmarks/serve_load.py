"""Load test and fuzz run against a reward server on loopback (bounded: N clients x M requests, K fuzz cases).

    # start the server on the demo checkpoint itself (port 0, short timeouts for the slow-sender cases), then both runs
    .venv/bin/python benchmarks/serve_load.py --checkpoint results/hs2_reward_model/checkpoints/hs2_reward_model.nemo
    # or against a running server (its pid for RSS)
    .venv/bin/python benchmarks/serve_load.py --url http://127.0.0.1:5555 --pid 12345 --load 8x50

Load: each client sends its requests one after another, cycling through /score (JSON conversations), KServe v2
JSON sentences, binary tokens (as NeMo-Aligner's RemoteGPTRMClient sends them) and binary sentences, with 1-4 rows of
mixed lengths; one line per run (``--load 4x25,8x100``: clients x requests each): rows/s, p50 / p99 latency, errors
(any answer but 200) and the server's peak RSS during the run. Fuzz: malformed and hostile
requests (bad JSON, wrong dtypes, shape lies, huge declared sizes, bad UTF-8, oversize bodies, garbage, slow senders)
each of which must get its specified status; the server must stay up and its peak RSS during the run (VmHWM,
reset first) must stay within ``--rss-bound-mb`` of its RSS before the run. Exit status 1 when any of that fails.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import random
import re
import socket
import struct
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

WORDS = ("the plant needs water and light so check the soil every morning before noon then add compost "
         "carefully because roots rot when wet").split()
INFER = "/v2/models/{model}/infer"


# ------------------------------------------------------------------------------------------------ client
def call(port, method, path, body=b"", headers=None, token=None, timeout=60.0):
    headers = dict(headers or {})
    if token:
        headers["Authorization"] = f"Bearer {token}"
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request(method, path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, dict(resp.getheaders()), resp.read()
    finally:
        conn.close()


def raw_exchange(port, data: bytes, pause_s: float = 0.0, trickle: bytes = b"", timeout=30.0):
    """Send ``data`` (then ``trickle`` one byte per ``pause_s``) on a raw socket; the status (None: closed with no
    answer) and the time it took."""
    t0 = time.monotonic()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        try:
            s.sendall(data)
            for b in trickle:
                time.sleep(pause_s)
                s.sendall(bytes([b]))
        except OSError:
            pass  # the server hung up on us: what it answered (if anything) is read below
        chunks = []
        try:
            while chunk := s.recv(65536):
                chunks.append(chunk)
                if b"\r\n\r\n" in b"".join(chunks):
                    break
        except OSError:
            pass
    m = re.match(rb"HTTP/1\.[01] (\d{3})", b"".join(chunks))
    return (int(m.group(1)) if m else None), time.monotonic() - t0


def bytes_tensor(values) -> bytes:
    return b"".join(struct.pack("<I", len(v)) + v for v in values)


def binary_body(inputs):
    specs, chunks = [], []
    for name, datatype, shape, raw in inputs:
        specs.append({"name": name, "datatype": datatype, "shape": shape, "parameters": {"binary_data_size": len(raw)}})
        chunks.append(raw)
    text = json.dumps({"inputs": specs, "outputs": [{"name": "rewards", "parameters": {"binary_data": True}}]}).encode()
    return text + b"".join(chunks), {"Inference-Header-Content-Length": str(len(text)),
                                     "Content-Type": "application/octet-stream"}


def read_status(pid) -> dict:
    out = {}
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key in ("VmRSS", "VmHWM", "Threads"):
                out[key] = int(value.split()[0])
    return out


# ------------------------------------------------------------------------------------------------ load
def _text(rng, lo, hi):
    return " ".join(rng.choice(WORDS) for _ in range(rng.randint(lo, hi)))


def _load_request(rng, kind, info):
    rows = rng.randint(1, 4)
    budget = max(8, info["max_length"] // 6)  # characters ~ tokens for byte-level; well inside the limit for BPE
    if kind == "score":
        convs = [[{"role": "user", "content": _text(rng, 2, budget // 12)},
                  {"role": "assistant", "content": _text(rng, 2, budget // 6)}] for _ in range(rows)]
        return "POST", "/score", json.dumps({"conversations": convs}).encode(), {}, rows
    if kind == "json_sentences":
        texts = [_text(rng, 2, budget // 6) for _ in range(rows)]
        body = {"inputs": [{"name": "sentences", "shape": [rows, 1], "datatype": "BYTES", "data": texts}]}
        return "POST", INFER.format(model=info["model_name"]), json.dumps(body).encode(), {}, rows
    if kind == "binary_tokens":
        lengths = [rng.randint(4, min(info["max_length"], 4 * budget)) for _ in range(rows)]
        width = max(lengths)
        flat = []
        for n in lengths:
            flat += [rng.randrange(info["vocab_size"]) for _ in range(n)] + [0] * (width - n)
        body, headers = binary_body([("tokens", "INT64", [rows, width], struct.pack(f"<{len(flat)}q", *flat)),
                                     ("sequence_lengths", "INT64", [rows, 1], struct.pack(f"<{rows}q", *lengths))])
        return "POST", INFER.format(model=info["model_name"]), body, headers, rows
    texts = [_text(rng, 2, budget // 6).encode() for _ in range(rows)]
    body, headers = binary_body([("sentences", "BYTES", [rows, 1], bytes_tensor(texts))])
    return "POST", INFER.format(model=info["model_name"]), body, headers, rows


KINDS = ("score", "json_sentences", "binary_tokens", "binary_sentences")


def run_load(port, clients=4, requests=10, seed=0, token=None, pid=None, kinds=KINDS) -> dict:
    info = json.loads(call(port, "GET", "/info", token=token)[2])
    if pid:
        _reset_peak(pid)
    latencies, errors, rows_done = [], [], [0]
    lock = threading.Lock()

    def client(c):
        rng = random.Random(seed * 1000 + c)
        for i in range(requests):
            method, path, body, headers, rows = _load_request(rng, kinds[(c + i) % len(kinds)], info)
            t0 = time.monotonic()
            try:
                status, _, raw = call(port, method, path, body, headers, token)
            except OSError as e:
                status, raw = None, str(e).encode()
            dt = time.monotonic() - t0
            with lock:
                latencies.append(dt)
                if status == 200:
                    rows_done[0] += rows
                else:
                    errors.append((status, raw[:200].decode(errors="replace")))

    t0 = time.monotonic()
    with ThreadPoolExecutor(clients) as pool:
        list(pool.map(client, range(clients)))
    wall = time.monotonic() - t0
    latencies.sort()

    def pct(p):
        return latencies[min(len(latencies) - 1, int(p * len(latencies)))] * 1000

    out = {"clients": clients, "requests": len(latencies), "rows": rows_done[0], "seconds": round(wall, 2),
           "rows_per_s": round(rows_done[0] / wall, 1), "p50_ms": round(pct(0.50), 1),
           "p99_ms": round(pct(0.99), 1), "errors": len(errors), "error_samples": errors[:5]}
    if pid:
        status = read_status(pid)
        out.update(peak_rss_mb=round(status["VmHWM"] / 1024, 1), threads=status["Threads"])
    return out


def _reset_peak(pid) -> None:
    try:  # reset the peak-RSS mark (Linux >= 4.0), so VmHWM afterwards is this run's peak
        with open(f"/proc/{pid}/clear_refs", "w") as f:
            f.write("5")
    except OSError:
        pass  # then VmHWM is the peak over the server's life, an upper bound


# ------------------------------------------------------------------------------------------------ fuzz
def _fuzz_case(rng, i, info):
    """(label, method, path, body, headers, allowed statuses)."""
    infer = INFER.format(model=info["model_name"])
    lim = info["limits"]
    big = lim["max_tensor_elements"] + 1
    cases = [
        ("bad JSON", "POST", rng.choice(["/score", infer]),
         rng.choice([b'{"conversations": [', b"{'a': 1}", b"\x00\xff\xfe", b"[" * 50, b"nul"]), {}, {400}),
        ("not an object", "POST", rng.choice(["/score", infer]), json.dumps(rng.choice([[1], 3, "x", None])).encode(),
         {}, {400}),
        ("wrong dtype", "POST", infer, json.dumps({"inputs": [rng.choice([
            {"name": "sentences", "shape": [1], "datatype": "INT64", "data": [3]},
            {"name": "tokens", "shape": [1, 2], "datatype": "FP32", "data": [1.0, 2.0]},
            {"name": "tokens", "shape": [1, 2], "datatype": "INT64", "data": ["a", "b"]},
            {"name": "sentences", "shape": [1], "datatype": "COMPLEX", "data": ["x"]},
            {"name": "sentences", "shape": [1], "datatype": "BYTES", "data": [7]}])]}).encode(), {}, {400}),
        ("JSON shape lie", "POST", infer, json.dumps({"inputs": [
            {"name": "sentences", "shape": [rng.randint(2, 50), 1], "datatype": "BYTES", "data": ["a"]}]}).encode(),
         {}, {400}),
        ("huge declared size", "POST", infer, *binary_body([rng.choice([
            ("sentences", "BYTES", [rng.choice([10 ** 8, 10 ** 10, 2 ** 62, big])], b"\x05\x00\x00\x00hello"),
            ("tokens", "INT64", [rng.choice([10 ** 6, 10 ** 9]), 10 ** 4], b"\x01" * 16),
            ("sentences", "BYTES", [big, 1], b"")])]), {413}),
        ("binary shape lie", "POST", infer, *binary_body([rng.choice([
            ("sentences", "BYTES", [rng.randint(2, 1000)], bytes_tensor([b"hello"])),
            ("tokens", "INT64", [1, rng.randint(3, 1000)], b"\x01" * 16),
            ("sentences", "BYTES", [1], b"\xff\xff\xff\x7fabc")])]), {400}),
        ("bad UTF-8", "POST", infer, *binary_body([("sentences", "BYTES", [1, 1], bytes_tensor(
            [rng.choice([b"caf\xe9", b"\xc3\x28", b"\xed\xa0\x80", b"ok\xff"])]))]), {400}),
        ("lone surrogate", "POST", rng.choice(["/score", infer]), rng.choice([
            b'{"conversations": [[{"role": "user", "content": "\\ud800"}, {"role": "assistant", "content": "x"}]]}',
            b'{"inputs": [{"name": "sentences", "shape": [1], "datatype": "BYTES", "data": ["a\\udfff"]}]}']),
         {}, {400}),
        ("too many rows", "POST", "/score", json.dumps({"conversations": [[
            {"role": "user", "content": "a"}, {"role": "assistant", "content": "b"}]] * (
            lim["max_request_rows"] + 1)}).encode(), {}, {400, 413}),
        ("bad header length", "POST", infer, b'{"inputs": []}',
         {"Inference-Header-Content-Length": rng.choice(["-1", "99999", "x", "1"])}, {400}),
        ("garbage", "POST", rng.choice(["/score", infer]), rng.randbytes(rng.randint(1, 2000)), {}, {400}),
        ("deep nesting", "POST", infer, b'{"inputs": [{"name": "tokens", "shape": [1], "datatype": "INT64", "data": '
         + b"[" * 100000 + b"]" * 100000 + b"}]}", {}, {400}),
        ("impossible shape", "POST", infer, json.dumps({"inputs": [{"name": "tokens", "datatype": "INT64", "data": [],
                                                                    "shape": rng.choice([[0, 2 ** 70], [2 ** 64, 0]])}]
                                                        }).encode(), {}, {413}),
        ("4,301-digit number", "POST", rng.choice(["/score", infer]), b'{"inputs": [' + b"7" * 4301 + b"]}", {},
         {400}),
        ("JSON values over the limit", "POST", rng.choice(["/score", infer]),
         b'{"conversations": [' + b"{}," * (lim.get("max_json_values", 1 << 20) // 2 + 1) + b"{}]}", {}, {413}),
        ("unknown route", rng.choice(["GET", "POST", "PUT", "DELETE"]),
         rng.choice(["/v1/score", "/v2/models/critic/infer", "/../../etc/passwd", "/v2/models/x/versions/9/infer"]),
         b"", {}, {404, 405}),
    ]
    return cases[i % len(cases)]


def _raw_cases(port, info):
    """Cases a normal client cannot send: oversize bodies, broken request heads, slow senders."""
    lim = info["limits"]
    limit = int(lim["max_body_mb"] * 2 ** 20)
    out = []
    head = f"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: {limit + 1}\r\n\r\n".encode()
    out.append(("oversize body (declared)", raw_exchange(port, head + b"{" * 1000)[0], {413}))
    chunked = b"POST /score HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
    chunk = b"{" * 65536
    body = (f"{len(chunk):x}\r\n".encode() + chunk + b"\r\n") * (limit // len(chunk) + 2) + b"0\r\n\r\n"
    out.append(("oversize body (chunked)", raw_exchange(port, chunked + body)[0], {413}))
    index = f"POST /v2/repository/index HTTP/1.1\r\nHost: x\r\nContent-Length: {limit}\r\n\r\n".encode()
    out.append(("large repository-index body", raw_exchange(port, index + b" " * 1000)[0], {413}))
    auth = b"GET /info HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer \xc3\xa9\xff\r\nConnection: close\r\n\r\n"
    out.append(("non-ASCII Authorization", raw_exchange(port, auth)[0], {200, 401}))  # 200: no token configured
    for bad in (b"GARBAGE\r\n\r\n", b"GET /" + b"a" * 20000 + b" HTTP/1.1\r\n\r\n",
                b"GET / HTTP/1.1\r\nX: " + b"b" * 20000 + b"\r\n\r\n",
                b"POST /score HTTP/1.1\r\nContent-Length: -5\r\n\r\n"):
        out.append(("bad request head", raw_exchange(port, bad)[0], {400, 413, 431}))
    # slow senders: a head that never completes is closed without an answer; a body that trickles gets 408
    slow = []
    with ThreadPoolExecutor(4) as pool:
        for _ in range(2):
            slow.append(("slow head", pool.submit(raw_exchange, port, b"POST /score HTTP/1.1\r\nHo", 0.5, b"st: x" * 40,
                                                  lim["header_timeout_s"] + 30), {None}, lim["header_timeout_s"]))
            slow.append(("slow body", pool.submit(
                raw_exchange, port, b"POST /score HTTP/1.1\r\nHost: x\r\nContent-Length: 5000\r\n\r\n{", 0.5,
                b" " * 200, lim["body_timeout_s"] + 30), {408}, lim["body_timeout_s"]))
        for label, fut, allowed, limit_s in slow:
            status, took = fut.result()
            out.append((label, status if took < limit_s + 5 else f"{status} after {took:.0f} s", allowed))
    return out


def run_fuzz(port, n=1000, seed=0, pid=None, rss_bound_mb=512.0, token=None, workers=4) -> dict:
    info = json.loads(call(port, "GET", "/info", token=token)[2])
    if pid:
        _reset_peak(pid)
    before = read_status(pid) if pid else None
    rng = random.Random(seed)
    cases = [_fuzz_case(rng, i, info) for i in range(n)]
    results = []

    def send(case):
        label, method, path, body, headers, allowed = case
        try:
            status = call(port, method, path, body, headers, token)[0]
        except OSError as e:  # a reset before any answer
            status = f"no answer ({type(e).__name__})"
        return label, status, allowed

    with ThreadPoolExecutor(workers) as pool:
        results = list(pool.map(send, cases))
    results += _raw_cases(port, info)
    alive = call(port, "GET", "/v2/health/ready", token=token)[0] == 200
    ok_after = call(port, "POST", "/score", json.dumps({"conversations": [[
        {"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hello."}]]}).encode(), token=token)[0]
    after = read_status(pid) if pid else None
    unexpected = [(label, status, sorted(map(str, allowed))) for label, status, allowed in results
                  if status not in allowed]
    counts: dict = {}
    for label, status, _ in results:
        counts.setdefault(label, {}).setdefault(str(status), 0)
        counts[label][str(status)] += 1
    out = {"tried": len(results), "unexpected": len(unexpected), "unexpected_samples": unexpected[:10],
           "alive": alive, "score_after": ok_after, "by_case": counts}
    if pid:
        out.update(rss_before_mb=round(before["VmRSS"] / 1024, 1), peak_rss_mb=round(after["VmHWM"] / 1024, 1),
                   rss_after_mb=round(after["VmRSS"] / 1024, 1), rss_bound_mb=rss_bound_mb,
                   rss_within_bound=after["VmHWM"] / 1024 <= before["VmRSS"] / 1024 + rss_bound_mb,
                   threads_after=after["Threads"])
    return out


# ------------------------------------------------------------------------------------------------ main
def start_server(cmd, env=None):
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env)
    deadline = time.monotonic() + 600
    for line in proc.stdout:
        m = re.search(r"listening on http://127\.0\.0\.1:(\d+)", line)
        if m:
            threading.Thread(target=lambda: [None for _ in proc.stdout], daemon=True).start()  # keep draining
            return proc, int(m.group(1))
        if time.monotonic() > deadline:
            break
    proc.kill()
    raise SystemExit("the server did not start")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--url", help="a running server, http://127.0.0.1:PORT (loopback only)")
    ap.add_argument("--pid", type=int, help="its process id, for RSS")
    ap.add_argument("--checkpoint", help="start examples/serve_reward_model.py on this checkpoint instead")
    ap.add_argument("--load", default="4x25,8x100", help="load runs, CLIENTSxREQUESTS (per client), comma-separated")
    ap.add_argument("--kinds", default=",".join(KINDS), help=f"request kinds to cycle through, of {','.join(KINDS)}")
    ap.add_argument("--fuzz", type=int, default=1000, help="fuzz requests (plus the raw-socket cases)")
    ap.add_argument("--rss-bound-mb", type=float, default=512.0)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", help="write the results here too")
    args = ap.parse_args(argv)
    token = os.environ.get("NEMO_HS2_SERVER_TOKEN") or None
    proc = None
    if args.checkpoint:
        root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
        proc, port = start_server([sys.executable, os.path.join(root, "examples", "serve_reward_model.py"),
                                   f"checkpoint={args.checkpoint}", "server.port=0", "server.header_timeout_s=2",
                                   "server.body_timeout_s=2"], env=dict(os.environ, OMP_NUM_THREADS="1"))
        pid = proc.pid
    else:
        m = re.fullmatch(r"http://(127\.0\.0\.1|localhost):(\d+)/?", args.url or "")
        if not m:
            ap.error("--url must be http://127.0.0.1:PORT (this tool only talks to loopback)")
        port, pid = int(m.group(2)), args.pid
    try:
        loads = []
        for run in args.load.split(","):
            clients, requests = map(int, run.split("x"))
            loads.append(run_load(port, clients, requests, args.seed, token, pid, args.kinds.split(",")))
            r = loads[-1]
            print(f"load {clients} x {requests}: {r['rows_per_s']} rows/s, p50 {r['p50_ms']} ms, p99 {r['p99_ms']} ms, "
                  f"errors {r['errors']}, peak RSS {r.get('peak_rss_mb', '?')} MiB, threads {r.get('threads', '?')} "
                  f"({r['requests']} requests, {r['rows']} rows, {r['seconds']} s; load average "
                  f"{' '.join(open('/proc/loadavg').read().split()[:3])})", flush=True)
        fuzz = run_fuzz(port, args.fuzz, args.seed, pid, args.rss_bound_mb, token)
        print("fuzz:", json.dumps({k: v for k, v in fuzz.items() if k != "by_case"}))
        print("fuzz cases:", json.dumps(fuzz["by_case"]))
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=60)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"load": loads, "fuzz": fuzz}, f, indent=1)
    ok = all(r["errors"] == 0 for r in loads) and fuzz["unexpected"] == 0 and fuzz["alive"] \
        and fuzz["score_after"] == 200 \
        and fuzz.get("rss_within_bound", True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
