"""Server settings: every bound the server enforces, and where the bearer token comes from."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping

OVERLENGTH_POLICIES = ("reject", "truncate")
REWARDS_OUTPUTS = ("reward", "attributes")
TOKEN_ENV = "NEMO_HS2_SERVER_TOKEN"
# The constants of the memory bound (``memory_bound_mb``), each above the worst case benchmarks/serve_memory.py
# constructs: one parse allocates at most PARSE_BODY_FACTOR x its body (the JSON text decoded to str, 4 bytes a
# character once one character is outside the BMP, and the strings parsed from it: 6x measured), plus
# PARSE_VALUE_BYTES per JSON value (a 2-character string in a list: 77 measured), plus TOKENIZE_TEXT_FACTOR x the
# text it tokenizes (byte-level: a Python list of ids and its int32 array per text byte); an open connection
# buffers at most CONNECTION_BYTES of a request nobody reads (aiohttp pauses the socket above its read buffer's
# high-water mark).
PARSE_BODY_FACTOR = 8
PARSE_VALUE_BYTES = 96
TOKENIZE_TEXT_FACTOR = 40
CONNECTION_BYTES = 320 << 10
INDEX_BODY_BYTES = 64 << 10  # POST /v2/repository/index takes {"ready": bool} at most


@dataclasses.dataclass
class ServerConfig:
    host: str = "127.0.0.1"  # loopback unless the operator says otherwise
    port: int = 5555
    model_name: str = "reward_model"
    max_queue_delay_ms: float = 2.0
    max_batch_rows: int = 64  # rows per model call; a larger request is split and interleaved with others
    max_request_rows: int = 1024
    max_request_tokens: int = 1 << 20  # summed over a request's rows
    max_tensor_elements: int = 1 << 22  # per declared input tensor, checked before anything is allocated
    max_body_mb: float = 16.0
    max_json_values: int = 1 << 20  # values + keys in one JSON body, counted before parsing
    max_text_mb: float = 4.0  # UTF-8 text one request gives the tokenizer (contents or sentences), checked before
    max_buffered_mb: float = 256.0  # bodies and token rows of all admitted requests together
    max_header_bytes: int = 8190  # request line and each header field
    max_connections: int = 64
    max_pending_requests: int = 32  # admitted and not yet answered; beyond it: 503 + Retry-After
    retry_after_s: int = 1
    header_timeout_s: float = 10.0  # a connection must send a complete request head within this (also idle keep-alive)
    body_timeout_s: float = 30.0
    request_timeout_s: float = 120.0  # from admission to answer; 504 beyond it
    model_stall_timeout_s: float = 600.0  # one model call longer than this: the loop is declared dead, exit non-zero
    parse_workers: int = 2
    auth_token_env: str | None = TOKEN_ENV  # name of the environment variable holding the bearer token
    auth_token_file: str | None = None  # or a file holding it (first line); the token itself is never an option
    overlength: str = "reject"
    rewards_output: str = "reward"

    def __post_init__(self):
        if self.overlength not in OVERLENGTH_POLICIES:
            raise ValueError(f"server.overlength must be one of {OVERLENGTH_POLICIES}, got '{self.overlength}'")
        if self.rewards_output not in REWARDS_OUTPUTS:
            raise ValueError(f"server.rewards_output must be one of {REWARDS_OUTPUTS}, got '{self.rewards_output}'")
        for name in ("max_batch_rows", "max_request_rows", "max_request_tokens", "max_tensor_elements",
                     "max_json_values", "max_header_bytes", "max_connections", "max_pending_requests",
                     "parse_workers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"server.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_body_mb", "max_buffered_mb", "max_text_mb", "header_timeout_s", "body_timeout_s",
                     "request_timeout_s", "model_stall_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"server.{name} must be > 0, got {getattr(self, name)}")
        if self.max_buffered_mb < self.max_body_mb:
            raise ValueError(f"server.max_buffered_mb ({self.max_buffered_mb:g}) must be >= server.max_body_mb "
                             f"({self.max_body_mb:g}), or a largest body could never be admitted")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2 ** 20)

    @property
    def max_buffered_bytes(self) -> int:
        return int(self.max_buffered_mb * 2 ** 20)

    @property
    def max_text_bytes(self) -> int:
        return int(self.max_text_mb * 2 ** 20)

    def memory_bound_mb(self) -> float:
        """The most request handling can add to the server's resident memory, in MiB: the admitted requests'
        bodies and rows (``max_buffered_mb``), plus what the ``parse_workers`` parses running at once allocate
        beyond those, plus what every open connection may buffer. (README "Reward server: limits and exposure".)"""
        parse = (PARSE_BODY_FACTOR * self.max_body_bytes + PARSE_VALUE_BYTES * self.max_json_values
                 + TOKENIZE_TEXT_FACTOR * min(self.max_text_bytes, self.max_body_bytes))
        total = self.max_buffered_bytes + self.parse_workers * parse + self.max_connections * CONNECTION_BYTES
        return total / 2 ** 20

    @classmethod
    def from_mapping(cls, values: Mapping | None) -> ServerConfig:
        values = dict(values or {})
        if "token" in values or "auth_token" in values:
            raise ValueError("the bearer token is never a setting (it would show in the process list): put it in "
                             f"the environment variable named by server.auth_token_env ({TOKEN_ENV}) or a file "
                             "named by server.auth_token_file")
        unknown = sorted(set(values) - {f.name for f in dataclasses.fields(cls)})
        if unknown:
            raise ValueError(f"unknown server settings {unknown}")
        return cls(**values)

    def load_token(self) -> str | None:
        """The bearer token, or None when none is configured (then only loopback should be bound)."""
        if self.auth_token_file:
            try:
                with open(self.auth_token_file) as f:
                    token = f.readline().strip()
            except OSError as e:
                raise ValueError(f"server.auth_token_file: cannot read {self.auth_token_file}: {e}") from None
            if not token:
                raise ValueError(f"server.auth_token_file: {self.auth_token_file} holds no token")
            return _checked(token, f"the token in {self.auth_token_file}")
        if self.auth_token_env:
            token = os.environ.get(self.auth_token_env, "").strip()
            return _checked(token, f"${self.auth_token_env}") if token else None
        return None

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False


def _checked(token: str, where: str) -> str:
    if not (token.isascii() and token.isprintable()) or any(ch.isspace() for ch in token):
        raise ValueError(f"{where}: a bearer token is printable ASCII without spaces (an HTTP header carries it)")
    return token
