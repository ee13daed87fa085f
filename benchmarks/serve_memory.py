"""The reward server's worst-case memory against its stated bound (``ServerConfig.memory_bound_mb``).

    # the closed-form stand-in model (tests/serving_fake.py), default settings
    .venv/bin/python benchmarks/serve_memory.py
    # the demo checkpoint, or any settings (server.KEY=VALUE)
    .venv/bin/python benchmarks/serve_memory.py --checkpoint results/.../hs2_reward_model.nemo server.max_body_mb=8

Each case is a body built at the server's own limits to make parsing allocate as much as it can: JSON of empty
objects filling the body (the issue's 32 MiB case), tiny strings and empty objects up to ``max_json_values``, arrays
nested as deep as the value limit allows, one string with a character outside the BMP (4 bytes a character once
decoded) filling the body or filling ``max_text_mb`` for the tokenizer, BYTES tensors of empty strings (binary and
JSON), INT64 tokens filling the body, and 16 MiB POSTs to /v2/repository/index. Each is sent by ``max_connections``
clients at once. Printed per case: the statuses, and the server's peak RSS (VmHWM, reset before each case) minus
its RSS when idle; the run fails (exit 1) when a peak exceeds idle + the bound, a request gets a 5xx other than the
admission 503, or the server stops answering.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import socket
import struct
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from serve_load import call, read_status, start_server  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
INFER = "/v2/models/reward_model/infer"
CONV = [{"role": "user", "content": "How do I plant tomatoes?"},
        {"role": "assistant", "content": "Set the pH between 6.0 and 6.8."}]


def _fill(prefix: bytes, item: bytes, suffix: bytes, size: int, count: int | None = None) -> bytes:
    n = count if count is not None else max(1, (size - len(prefix) - len(suffix)) // (len(item) + 1))
    return prefix + b",".join([item] * n) + suffix


def _binary(inputs) -> tuple[bytes, dict]:
    specs = [{"name": n, "datatype": d, "shape": s, "parameters": {"binary_data_size": len(r)}}
             for n, d, s, r in inputs]
    text = json.dumps({"inputs": specs}).encode()
    return text + b"".join(r for *_, r in inputs), {"Inference-Header-Content-Length": str(len(text))}


def cases(info) -> list[tuple[str, str, bytes, dict]]:
    """(label, path, body, headers), each at this server's limits."""
    lim = info["limits"]
    body = int(lim["max_body_mb"] * 2 ** 20) - 64  # room for the request's own framing
    values = lim["max_json_values"] - 16
    text = int(lim["max_text_mb"] * 2 ** 20) - 4096
    emoji = "\U0001F600"
    long_turn = lambda n: json.dumps({"conversations": [[CONV[0], {  # noqa: E731
        "role": "assistant", "content": emoji + "a" * (n - 4)}]]}).encode()
    tokens = max(1, (body - 4096) // 8)
    out = [
        ("empty objects filling the body", "/score", _fill(b'{"conversations":[', b"{}", b"]}", body), {}),
        ("empty objects, max_json_values", "/score", _fill(b'{"conversations":[', b"{}", b"]}", 0, values // 2), {}),
        ("tiny strings, max_json_values", "/score", _fill(b'{"conversations":[', b'"ab"', b"]}", 0, values), {}),
        ("deep arrays", INFER, b'{"inputs":' + b"[" * min(values, body // 2) + b"]" * min(values, body // 2) + b"}",
         {}),
        ("non-BMP string filling the body", "/score", long_turn(body - 200), {}),
        ("non-BMP text filling max_text_mb", "/score", long_turn(text), {}),
        ("BYTES of empty strings, binary", INFER,
         *_binary([("sentences", "BYTES", [body // 4], bytes(body // 4 * 4))])),
        ("BYTES of empty strings, JSON", INFER, _fill(
            b'{"inputs":[{"name":"sentences","datatype":"BYTES","shape":[' + str(values).encode() + b'],"data":[',
            b'""', b"]}]}", 0, values), {}),
        ("INT64 tokens filling the body", INFER, *_binary([
            ("tokens", "INT64", [1, tokens], struct.pack("<q", 1) * tokens),
            ("sequence_lengths", "INT64", [1, 1], struct.pack("<q", tokens))])),
        ("16 MiB POSTs to the repository index", "/v2/repository/index", b" " * (16 << 20), {}),
    ]
    return out


def exchange(port, path, body, headers, timeout=120.0):
    """POST on a raw socket, the body sent from another thread while the answer is read: a server that refuses
    before reading the body (admission) answers at once. The status, or None for a connection closed unanswered."""
    head = f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {len(body)}\r\nConnection: close\r\n"
    head += "".join(f"{k}: {v}\r\n" for k, v in headers.items()) + "\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        def send():
            try:
                s.sendall(head.encode() + body)
            except OSError:
                pass  # refused before the body was read

        sender = threading.Thread(target=send, daemon=True)
        sender.start()
        data = b""
        try:
            while b"\r\n\r\n" not in data and (chunk := s.recv(65536)):
                data += chunk
        except OSError:
            pass
        sender.join(timeout)
    m = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return int(m.group(1)) if m else None


def reset_peak(pid):
    with open(f"/proc/{pid}/clear_refs", "w") as f:
        f.write("5")  # VmHWM := VmRSS (Linux >= 4.0)


def run(port, pid, clients=None, only=None, token=None) -> dict:
    info = json.loads(call(port, "GET", "/info", token=token)[2])
    bound = info["memory_bound_mb"]
    clients = clients or info["limits"]["max_connections"]
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    for _ in range(3):  # warm: parse workers, tokenizer, first forward
        call(port, "POST", "/score", json.dumps({"conversations": [CONV] * 4}).encode(), token=token)
    time.sleep(0.5)
    idle = read_status(pid)["VmRSS"] / 1024
    results = []
    for label, path, body, extra in cases(info):
        if only and only not in label:
            continue
        reset_peak(pid)
        t0 = time.monotonic()
        with ThreadPoolExecutor(clients) as pool:
            statuses = list(pool.map(lambda _: exchange(port, path, body, {**headers, **extra}), range(clients)))
        status = read_status(pid)
        alive = call(port, "POST", "/score", json.dumps({"conversations": [CONV]}).encode(), token=token)[0] == 200
        counts = {str(s): statuses.count(s) for s in sorted(set(statuses), key=str)}
        bad = [s for s in statuses if s is not None and s >= 500 and s != 503]
        results.append({"case": label, "body_mb": round(len(body) / 2 ** 20, 2), "clients": clients,
                        "statuses": counts, "peak_growth_mb": round(status["VmHWM"] / 1024 - idle, 1),
                        "rss_after_mb": round(status["VmRSS"] / 1024, 1), "seconds": round(time.monotonic() - t0, 1),
                        "alive": alive, "ok": alive and not bad and status["VmHWM"] / 1024 - idle <= bound})
    return {"idle_rss_mb": round(idle, 1), "bound_mb": bound, "threads": read_status(pid)["Threads"],
            "cases": results, "ok": all(r["ok"] for r in results)}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--checkpoint", help="serve this checkpoint (examples/serve_reward_model.py); default: the "
                                         "closed-form stand-in (tests/serving_fake.py)")
    ap.add_argument("--clients", type=int, help="concurrent senders per case (default: server.max_connections)")
    ap.add_argument("--only", help="run the cases whose label contains this")
    ap.add_argument("--json", help="write the results here too")
    ap.add_argument("settings", nargs="*", help="server.KEY=VALUE")
    args = ap.parse_args(argv)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONPATH=ROOT)
    if args.checkpoint:
        cmd = [sys.executable, os.path.join(ROOT, "examples", "serve_reward_model.py"),
               f"checkpoint={args.checkpoint}", "server.port=0", *args.settings]
    else:
        cmd = [sys.executable, "-m", "tests.serving_fake", *args.settings]
    proc, port = start_server(cmd, env=env)
    try:
        out = run(port, proc.pid, args.clients, args.only, os.environ.get("NEMO_HS2_SERVER_TOKEN") or None)
    finally:
        proc.terminate()
        proc.wait(timeout=60)
    print(f"idle RSS {out['idle_rss_mb']} MiB, bound: idle + {out['bound_mb']} MiB, threads {out['threads']}, "
          f"load average {open('/proc/loadavg').read().split()[:3]}")
    for r in out["cases"]:
        print(f"{r['case']:<40} {r['body_mb']:>6} MiB x {r['clients']:<3} {json.dumps(r['statuses']):<28} "
              f"peak +{r['peak_growth_mb']:>7} MiB  after {r['rss_after_mb']:>7} MiB  {r['seconds']:>5} s  "
              f"{'ok' if r['ok'] else 'FAIL'}")
    if args.json:
        with open(args.json, "w") as f:
            json.dump(out, f, indent=1)
    return 0 if out["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
