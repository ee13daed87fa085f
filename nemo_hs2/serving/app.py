"""The HTTP layer: aiohttp's low-level server in a background thread, the model loop in the caller's thread.

Per connection: at most ``max_connections`` open (more get a canned 503 and are closed), a complete request head
within ``header_timeout_s`` (also the keep-alive idle limit), header lines within ``max_header_bytes``. Per request:
bearer token (inference, /info and /stats), and admission before any body is read, on every route that reads one:
at most ``max_pending_requests`` admitted, and their bodies and token rows within ``max_buffered_mb`` together
(503 + Retry-After beyond either); the body within ``max_body_mb`` (413, checked on Content-Length before reading)
and ``body_timeout_s`` (408), parsing and tokenizing in ``parse_workers`` threads, an answer within
``request_timeout_s`` of admission (504). A model call running longer than ``model_stall_timeout_s``, or a failed
collective under torchrun, fails every waiting request (503), and the process exits with ``EXIT_MODEL_FAILED``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import contextlib
import ctypes
import hmac
import json
import logging
import os
import sys
import threading
import time
from collections import Counter

from aiohttp import web
from aiohttp.web_protocol import RequestHandler

from nemo_hs2.serving.batching import Batcher, ModelLoopFailed, ShuttingDown, TokenScorer
from nemo_hs2.serving.config import INDEX_BODY_BYTES, ServerConfig
from nemo_hs2.serving.protocol import MODEL_VERSION, RequestError
from nemo_hs2.serving.service import RewardService

log = logging.getLogger(__name__)
EXIT_MODEL_FAILED = 70  # EX_SOFTWARE
HEALTH = ("/health", "/v2/health/live", "/v2/health/ready")
TRITON_TOKEN_HEADER = "triton-access-token"  # what pytriton's ModelClient(access_token=...) sends on inference


def _name_thread(name: str) -> None:
    """Name the calling OS thread (shown in /proc/PID/task/*/comm, top -H), so each thread can be told apart."""
    try:
        ctypes.CDLL(None).prctl(15, name.encode()[:15], 0, 0, 0)  # PR_SET_NAME; Linux only, harmless elsewhere
    except (OSError, AttributeError):
        pass


def _json(status: int, obj, headers=None) -> web.Response:
    return web.Response(status=status, body=json.dumps(obj).encode(), headers=headers,
                        content_type="application/json")


class _Refuse(asyncio.Protocol):
    """Over ``max_connections``: answer 503 at once, half-close, close once the request has arrived (closing with
    unread data would reset the connection, and the client could lose the answer) or after a second."""

    def __init__(self, raw: bytes):
        self.raw = raw

    def connection_made(self, transport):
        self.transport = transport
        transport.write(self.raw)
        if transport.can_write_eof():
            transport.write_eof()
        self.timer = asyncio.get_running_loop().call_later(1.0, transport.close)

    def data_received(self, data):
        self.timer.cancel()
        self.timer = asyncio.get_running_loop().call_later(0.05, self.transport.close)

    def connection_lost(self, exc):
        self.timer.cancel()


class _CountedHandler(RequestHandler):
    """aiohttp's connection handler, counted from creation to loss (the server's own list lags behind accepts)."""

    def __init__(self, *args, on_lost, **kwargs):
        super().__init__(*args, **kwargs)
        self._on_lost = on_lost

    def connection_lost(self, exc):
        if self._on_lost is not None:
            self._on_lost()
            self._on_lost = None
        super().connection_lost(exc)


class _QuietProtocolErrors(logging.LoggerAdapter):
    """aiohttp logs every malformed request with a traceback; at debug level here, so hostile traffic cannot flood
    the log (the client gets its 400 either way)."""

    def exception(self, msg, *args, exc_info=True, **kwargs):
        self.debug(msg, *args, exc_info=exc_info, **kwargs)


def _exit_process(code: int) -> None:
    sys.stderr.write(f"reward server: exiting with status {code}\n")
    sys.stderr.flush()
    os._exit(code)  # the model thread is stuck in a call that never returns: no orderly shutdown can reach it


class RewardServer:
    def __init__(self, service: RewardService, batcher: Batcher, config: ServerConfig, token: str | None = None,
                 on_fatal=_exit_process):
        self.service, self.batcher, self.config = service, batcher, config
        self._token = bytes(token, "ascii") if token else None  # printable ASCII: ServerConfig checks it
        self._on_fatal = on_fatal
        self._pool = concurrent.futures.ThreadPoolExecutor(config.parse_workers, thread_name_prefix="reward-parse",
                                                           initializer=_name_thread, initargs=("reward-parse",))
        self._pending = 0
        self._buffered = 0  # bytes reserved by admitted requests: their bodies, then their token rows
        self.peak_buffered = 0
        self._failed: ModelLoopFailed | None = None
        self.http_stats: Counter = Counter()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._start_error: BaseException | None = None
        self._address: tuple[str, int] | None = None
        body = json.dumps({"error": f"too many open connections; the limit is {config.max_connections} "
                                    "(server.max_connections)"}).encode()
        self._refusal = (f"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
                         f"Retry-After: {config.retry_after_s}\r\nConnection: close\r\n"
                         f"Content-Length: {len(body)}\r\n\r\n").encode() + body

    # ----------------------------------------------------------------------------------------- lifecycle
    @property
    def address(self) -> tuple[str, int]:
        return self._address

    def start_http(self) -> RewardServer:
        """Accept connections (requests queue up until ``serve`` runs the model loop)."""
        if self._thread is None:
            self._thread = threading.Thread(target=self._http_main, name="reward-http", daemon=True)
            self._thread.start()
            self._ready.wait()
            if self._start_error is not None:
                raise self._start_error
        return self

    def _http_main(self):
        _name_thread("reward-http")
        self._loop = loop = asyncio.new_event_loop()
        try:
            loop.run_until_complete(self._start())
        except BaseException as e:  # e.g. the port is taken: the caller sees it
            self._start_error = e
            self._ready.set()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(self._stop())
        loop.close()

    async def _start(self):
        c = self.config
        self._handler_args = dict(keepalive_timeout=c.header_timeout_s, lingering_time=0, access_log=None,
                                  logger=_QuietProtocolErrors(logging.getLogger("aiohttp.server"), {}),
                                  max_line_size=c.max_header_bytes, max_field_size=c.max_header_bytes)
        self._web = web.Server(self._handle, **self._handler_args)
        self._open = 0
        loop = asyncio.get_running_loop()
        # asyncio's default executor (used once, to resolve the bind address) would otherwise keep an unnamed
        # thread; aiohttp inflates compressed bodies in place, not there.
        loop.set_default_executor(concurrent.futures.ThreadPoolExecutor(
            1, thread_name_prefix="reward-resolve", initializer=_name_thread, initargs=("reward-resolve",)))
        self._tcp = await loop.create_server(self._connection, c.host, int(c.port), backlog=c.max_connections)
        self._address = self._tcp.sockets[0].getsockname()[:2]
        self._watchdog = loop.create_task(self._watch())

    async def _stop(self):
        self._watchdog.cancel()
        self._tcp.close()
        await self._web.shutdown(timeout=2.0)

    def serve(self, stop: threading.Event | None = None) -> None:
        """Run the model loop in this thread until ``stop`` is set; then shut everything down. Raises
        ``ModelLoopFailed`` when the model loop died (the caller should exit non-zero)."""
        self.start_http()
        try:
            self.batcher.run(stop)
            if self._failed is not None:  # the watchdog gave up on a call that returned after all
                raise self._failed
        except Exception as e:
            error = e if isinstance(e, ModelLoopFailed) else ModelLoopFailed(f"the model loop died: {e}")
            self._fail(error, exit_process=False)  # a no-op when the watchdog got there first
            raise error from (None if error is e else e)
        finally:
            self.shutdown()

    def shutdown(self) -> None:
        self.batcher.close()
        if self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
        self._pool.shutdown(wait=False, cancel_futures=True)
        if self._failed is None:
            self.service.ts.release_followers()

    def _fail(self, error: ModelLoopFailed, exit_process: bool = True) -> None:
        if self._failed is not None:
            return
        self._failed = error
        log.error(f"reward server: {error}")
        self.batcher.close(error)  # every waiting request is answered 503 now
        if exit_process and self._loop is not None:
            self._loop.call_later(1.0, self._on_fatal, EXIT_MODEL_FAILED)  # time for those answers to go out

    async def _watch(self):
        limit = self.config.model_stall_timeout_s
        while True:
            await asyncio.sleep(min(1.0, limit / 4))
            busy = self.batcher.busy_since
            if busy is not None and time.monotonic() - busy > limit and self._failed is None:
                self._fail(ModelLoopFailed(
                    f"a model call has run for more than {limit:g} s (server.model_stall_timeout_s): the model loop "
                    "is stalled (e.g. a torchrun rank died mid-collective); the server exits"))

    def _connection(self):
        if self._open >= self.config.max_connections:
            self.http_stats["refused: server.max_connections"] += 1
            return _Refuse(self._refusal)
        self._open += 1
        return _CountedHandler(self._web, loop=self._loop, on_lost=self._lost, **self._handler_args)

    def _lost(self):
        self._open -= 1

    # ----------------------------------------------------------------------------------------- requests
    async def _handle(self, request: web.BaseRequest) -> web.StreamResponse:
        try:
            return await self._dispatch(request)
        except RequestError as e:
            self.http_stats[str(e.status)] += 1
            return _json(e.status, {"error": str(e)}, e.headers)
        except Exception as e:  # a bug or a failed forward: report it, keep serving
            log.exception("request failed")
            self.http_stats["500"] += 1
            return _json(500, {"error": f"internal error: {type(e).__name__}: {e}"})

    def _check_token(self, request) -> None:
        if self._token is None:
            return
        scheme, _, value = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() != "bearer":
            value = request.headers.get(TRITON_TOKEN_HEADER, "")
        try:  # aiohttp keeps undecodable header bytes as lone surrogates: no token can match them
            given = value.strip(" \t").encode("ascii")
        except UnicodeEncodeError:
            given = b""
        if not hmac.compare_digest(given, self._token):
            raise RequestError("missing or wrong bearer token (Authorization: Bearer ...)", 401,
                               {"WWW-Authenticate": 'Bearer realm="nemo_hs2"'})

    async def _dispatch(self, request) -> web.StreamResponse:
        method = "GET" if request.method == "HEAD" else request.method
        path = request.path.rstrip("/") or "/"
        svc, c = self.service, self.config
        if method == "GET" and path in HEALTH:
            if path == "/v2/health/live":
                return web.Response(status=200)
            if self._failed is not None:
                return _json(503, {"error": str(self._failed)})
            return web.Response(status=200) if path.startswith("/v2") else _json(200, {"status": "ok"})
        # Triton's metadata routes are open, like health: pytriton's ModelClient reads them before its first
        # inference without sending its access token (pytriton 0.7.0 client.py, _wait_and_init_model_config).
        parts = [p for p in path.split("/") if p]
        if method == "GET" and path == "/v2":
            from nemo_hs2 import __version__

            return _json(200, {"name": "nemo_hs2", "version": __version__, "extensions": ["binary_tensor_data"]})
        if method == "POST" and path == "/v2/repository/index":
            async with self._admitted(request, INDEX_BODY_BYTES):
                await self._read_body(request, INDEX_BODY_BYTES, "POST /v2/repository/index takes {\"ready\": bool}")
            return _json(200, [{"name": c.model_name, "version": MODEL_VERSION, "state": "READY"}])
        action = self._model_route(parts) if len(parts) >= 3 and parts[:2] == ["v2", "models"] else None
        if method == "GET" and action == "":
            return _json(200, svc.model_metadata())
        if method == "GET" and action == "ready":
            return web.Response(status=200 if self._failed is None else 503)
        if method == "GET" and action == "config":
            return _json(200, svc.model_config())
        self._check_token(request)
        if method == "GET" and path == "/info":
            return _json(200, svc.info())
        if method == "GET" and path == "/stats":
            return _json(200, {**self.batcher.stats, "pending_requests": self._pending,
                               "buffered_bytes": self._buffered, "peak_buffered_bytes": self.peak_buffered,
                               "open_connections": self._open, "http": dict(self.http_stats)})
        if method == "POST" and path == "/score":
            return await self._scored(request, svc.score_request)
        if method == "POST" and action == "infer":
            length = request.headers.get("Inference-Header-Content-Length")
            return await self._scored(request, lambda raw: svc.infer_request(raw, length))
        if request.method not in ("GET", "HEAD", "POST"):
            raise RequestError(f"method {request.method} not allowed", 405)
        raise RequestError(f"no {method} {path} here: see /info, POST /score or POST /v2/models/"
                           f"{c.model_name}/infer", 404)

    def _model_route(self, parts: list[str]) -> str | None:
        """For /v2/models/NAME[/versions/V][/ACTION]: the action ('' for metadata), after checking name and version."""
        name, rest = parts[2], parts[3:]
        if name != self.config.model_name:
            raise RequestError(f"unknown model '{name}'; this server serves '{self.config.model_name}'", 404)
        if rest[:1] == ["versions"]:
            if len(rest) < 2 or rest[1] != MODEL_VERSION:
                raise RequestError(f"model '{name}' has only version {MODEL_VERSION}", 404)
            rest = rest[2:]
        if len(rest) > 1:
            return None
        return rest[0] if rest else ""

    # ----------------------------------------------------------------------------------------- admission
    def _busy(self, why: str) -> RequestError:
        return RequestError(f"{why}: retry later", 503, {"Retry-After": str(self.config.retry_after_s)})

    def _reserve(self, n: int, why: str) -> None:
        """Count ``n`` more bytes against server.max_buffered_mb, or refuse (only the event loop's thread calls)."""
        if self._buffered + n > self.config.max_buffered_bytes:
            raise self._busy(f"{self._buffered} bytes of admitted requests are buffered and {why} needs {n} more; "
                             f"the limit is {self.config.max_buffered_bytes} (server.max_buffered_mb)")
        self._buffered += n
        self.peak_buffered = max(self.peak_buffered, self._buffered)

    @contextlib.asynccontextmanager
    async def _admitted(self, request, limit: int):
        """Admission, before a byte of the body is read: a pending slot, and the body's declared size (``limit``
        when it is sent chunked) reserved in the buffer budget; ``yield`` gives a callback that moves the
        reservation to another size (the parsed rows). Everything is released when the request is answered."""
        c = self.config
        if self._failed is not None:
            raise RequestError(str(self._failed), 503)
        declared = request.content_length
        if declared is not None and declared > limit:
            raise RequestError(f"a {declared}-byte body is over the limit of {limit} bytes"
                               + (" (server.max_body_mb)" if limit == c.max_body_bytes else ""), 413)
        if self._pending >= c.max_pending_requests:
            raise self._busy(f"{self._pending} requests are waiting; the limit is {c.max_pending_requests} "
                             "(server.max_pending_requests)")
        size = _exact_size(request)
        chunked = "chunked" in request.headers.get("Transfer-Encoding", "").lower()
        # A chunked or compressed body (aiohttp inflates it) may grow to the limit; no length and neither: no body.
        held = [size if size is not None else limit if chunked or declared is not None else 0]
        self._reserve(held[0], "this request's body")
        self._pending += 1

        def move(n: int) -> None:
            self._buffered -= held[0]
            held[0] = 0
            self._reserve(n, "its token rows")
            held[0] = n

        try:
            yield move
        finally:
            self._pending -= 1
            self._buffered -= held[0]

    async def _read_body(self, request, limit: int, what: str = "server.max_body_mb") -> bytearray:
        declared = _exact_size(request)
        buf = bytearray(declared) if declared is not None else bytearray()
        size = 0
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                while chunk := await request.content.readany():
                    if size + len(chunk) > (limit if declared is None else declared):
                        raise RequestError(f"the body is over the limit of {limit} bytes ({what}; a compressed "
                                           "body counts as inflated)", 413)
                    buf[size:size + len(chunk)] = chunk  # in place: a declared body is never copied to grow
                    size += len(chunk)
        except TimeoutError:
            raise RequestError(f"the body was not received within {self.config.body_timeout_s:g} s "
                               "(server.body_timeout_s)", 408) from None
        except (ConnectionError, ValueError) as e:  # aiohttp's payload errors (bad chunked encoding, ...)
            raise RequestError(f"the body could not be read: {e}") from None
        if declared is not None and size != declared:
            raise RequestError(f"the body ended after {size} of its {declared} bytes")
        return buf

    async def _scored(self, request, prepare) -> web.Response:
        c = self.config
        loop = asyncio.get_running_loop()
        deadline = loop.time() + c.request_timeout_s
        async with self._admitted(request, c.max_body_bytes) as move:
            box = []  # the body, for the worker to take: a request that gives up empties it, freeing the body
            try:
                box.append(await self._read_body(request, c.max_body_bytes))
                work = loop.run_in_executor(self._pool, _take_and_prepare, prepare, box)
                prepared = await asyncio.wait_for(work, max(0.0, deadline - loop.time()))
                move(prepared.nbytes)  # the body is gone; its rows wait for the model
                future = self.batcher.submit(prepared.rows)
                pred = await asyncio.wait_for(asyncio.wrap_future(future), max(0.0, deadline - loop.time()))
                body, headers = prepared.respond(pred)
                return web.Response(status=200, body=body, headers=headers)
            except TimeoutError:
                raise RequestError(f"no answer within {c.request_timeout_s:g} s (server.request_timeout_s)",
                                   504) from None
            except (ShuttingDown, ModelLoopFailed) as e:
                raise RequestError(str(e), 503) from None
            finally:
                box.clear()


def _exact_size(request) -> int | None:
    """The body's size as it will be read, when known before reading: its Content-Length, unless it is compressed
    (tritonclient's request_compression_algorithm), which aiohttp inflates as it reads."""
    encoding = request.headers.get("Content-Encoding", "").strip().lower()
    return request.content_length if encoding in ("", "identity") else None


def _take_and_prepare(prepare, box: list):
    if not box:  # the request timed out while this waited for a worker
        raise RequestError("the request was abandoned before it was parsed", 504)
    raw = box.pop()
    large, prepared, error = len(raw) > TRIM_AFTER_BYTES, None, None
    try:
        prepared = prepare(raw)
    except RequestError as e:  # a copy without the traceback, whose frames hold the parsed body
        error = RequestError(str(e), e.status, e.headers)
    del raw
    if large:
        _trim()
    if error is not None:
        raise error
    return prepared


TRIM_AFTER_BYTES = 1 << 20


def _trim() -> None:
    """Give freed heap pages back to the system after a large request: glibc keeps them otherwise, and the RSS a
    rejected 16 MiB body of tiny JSON values raised would stay raised."""
    try:
        ctypes.CDLL(None).malloc_trim(0)
    except (OSError, AttributeError):  # not glibc
        pass


def build_server(scorer, config: ServerConfig | dict | None = None, distributed: bool = False,
                 on_fatal=_exit_process) -> RewardServer:
    if not isinstance(config, ServerConfig):
        config = ServerConfig.from_mapping(config)
    token = config.load_token()
    if token is None and not config.is_loopback():
        log.warning(f"reward server: binding {config.host} without a bearer token: anyone who can reach this port "
                    f"can use the model (set {config.auth_token_env or 'server.auth_token_file'})")
    ts = TokenScorer(scorer, distributed)
    batcher = Batcher(ts.predict, config.max_batch_rows, config.max_queue_delay_ms / 1000.0,
                      fatal_errors=distributed)
    return RewardServer(RewardService(ts, config), batcher, config, token, on_fatal)
