"""Server settings: every bound the server enforces, and where the bearer token comes from."""

from __future__ import annotations

import dataclasses
import ipaddress
import os
from collections.abc import Mapping

OVERLENGTH_POLICIES = ("reject", "truncate")
REWARDS_OUTPUTS = ("reward", "attributes")
TOKEN_ENV = "NEMO_HS2_SERVER_TOKEN"


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
    max_body_mb: float = 32.0
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
                     "max_header_bytes", "max_connections", "max_pending_requests", "parse_workers"):
            if int(getattr(self, name)) < 1:
                raise ValueError(f"server.{name} must be >= 1, got {getattr(self, name)}")
        for name in ("max_body_mb", "header_timeout_s", "body_timeout_s", "request_timeout_s",
                     "model_stall_timeout_s"):
            if not float(getattr(self, name)) > 0:
                raise ValueError(f"server.{name} must be > 0, got {getattr(self, name)}")

    @property
    def max_body_bytes(self) -> int:
        return int(self.max_body_mb * 2 ** 20)

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
            return token
        if self.auth_token_env:
            return os.environ.get(self.auth_token_env, "").strip() or None
        return None

    def is_loopback(self) -> bool:
        if self.host == "localhost":
            return True
        try:
            return ipaddress.ip_address(self.host).is_loopback
        except ValueError:
            return False
