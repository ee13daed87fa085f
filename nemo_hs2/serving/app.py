"""The HTTP layer: aiohttp's low-level server in a background thread, the model loop in the caller's thread.

Per connection: at most ``max_connections`` open (more get a canned 503 and are closed), a complete request head
within ``header_timeout_s`` (also the keep-alive idle limit), header lines within ``max_header_bytes``. Per request:
bearer token (all routes but health), at most ``max_pending_requests`` admitted (503 + Retry-After beyond), the
body within ``max_body_mb`` (413, checked on Content-Length before reading) and ``body_timeout_s`` (408), parsing
and tokenizing in a bounded worker pool, an answer within ``request_timeout_s`` of admission (504). A model call
running longer than ``model_stall_timeout_s``, or a failed collective under torchrun, fails every waiting request
(503), and the process exits with ``EXIT_MODEL_FAILED``.
"""

from __future__ import annotations

import asyncio
import concurrent.futures
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
from nemo_hs2.serving.config import ServerConfig
from nemo_hs2.serving.protocol import MODEL_VERSION, RequestError, loads, split_infer_body
from nemo_hs2.serving.service import RewardService

log = logging.getLogger(__name__)
EXIT_MODEL_FAILED = 70  # EX_SOFTWARE
HEALTH = ("/health", "/v2/health/live", "/v2/health/ready")


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
        self._token = token.encode() if token else None
        self._on_fatal = on_fatal
        self._pool = concurrent.futures.ThreadPoolExecutor(config.parse_workers, thread_name_prefix="reward-parse")
        self._pending = 0
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
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not hmac.compare_digest(value.strip().encode(), self._token):
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
        self._check_token(request)
        parts = [p for p in path.split("/") if p]
        if method == "GET" and path == "/info":
            return _json(200, svc.info())
        if method == "GET" and path == "/stats":
            return _json(200, {**self.batcher.stats, "pending_requests": self._pending,
                               "open_connections": self._open, "http": dict(self.http_stats)})
        if method == "GET" and path == "/v2":
            from nemo_hs2 import __version__

            return _json(200, {"name": "nemo_hs2", "version": __version__, "extensions": ["binary_tensor_data"]})
        if method == "POST" and path == "/v2/repository/index":
            await self._read_body(request)
            return _json(200, [{"name": c.model_name, "version": MODEL_VERSION, "state": "READY"}])
        if method == "POST" and path == "/score":
            return await self._scored(request, lambda raw: svc.prepare_score(loads(raw, "the body")))
        if len(parts) >= 3 and parts[:2] == ["v2", "models"]:
            action = self._model_route(parts)
            if method == "GET" and action == "":
                return _json(200, svc.model_metadata())
            if method == "GET" and action == "ready":
                return web.Response(status=200 if self._failed is None else 503)
            if method == "GET" and action == "config":
                return _json(200, svc.model_config())
            if method == "POST" and action == "infer":
                length = request.headers.get("Inference-Header-Content-Length")
                return await self._scored(request, lambda raw: svc.prepare_infer(*split_infer_body(raw, length)))
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

    async def _read_body(self, request) -> bytes:
        limit = self.config.max_body_bytes
        if request.content_length is not None and request.content_length > limit:
            raise RequestError(f"a {request.content_length}-byte body is over the limit of {limit} bytes "
                               "(server.max_body_mb)", 413)
        buf = bytearray()
        try:
            async with asyncio.timeout(self.config.body_timeout_s):
                while chunk := await request.content.readany():
                    buf += chunk
                    if len(buf) > limit:
                        raise RequestError(f"the body is over the limit of {limit} bytes (server.max_body_mb)", 413)
        except TimeoutError:
            raise RequestError(f"the body was not received within {self.config.body_timeout_s:g} s "
                               "(server.body_timeout_s)", 408) from None
        except (ConnectionError, ValueError) as e:  # aiohttp's payload errors (bad chunked encoding, ...)
            raise RequestError(f"the body could not be read: {e}") from None
        return bytes(buf)

    async def _scored(self, request, prepare) -> web.Response:
        c = self.config
        if self._failed is not None:
            raise RequestError(str(self._failed), 503)
        if self._pending >= c.max_pending_requests:
            raise RequestError(f"{self._pending} requests are waiting; the limit is {c.max_pending_requests} "
                               "(server.max_pending_requests): retry later", 503,
                               {"Retry-After": str(c.retry_after_s)})
        self._pending += 1  # only this (the event loop's) thread touches it
        loop = asyncio.get_running_loop()
        deadline = loop.time() + c.request_timeout_s
        try:
            raw = await self._read_body(request)
            prepared = await asyncio.wait_for(loop.run_in_executor(self._pool, prepare, raw),
                                              max(0.0, deadline - loop.time()))
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
            self._pending -= 1


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
