"""The server's own options (the engine's are in lmserve.config)."""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from lmserve.errors import ConfigError

API_KEY_ENV = "LMSERVE_API_KEY"  # one key, or several separated by commas


@dataclass
class ServerConfig:
    """How the server listens, whom it lets in and how much load it accepts."""

    host: str = "127.0.0.1"
    port: int = 8000
    api_key: list[str] = field(default_factory=list)  # empty: no authentication
    served_model_name: str | None = None  # the name clients pass as `model`; default: the directory's name
    open_health_and_metrics: bool = True  # /health, /ready and /metrics need no API key
    max_waiting_requests: int = 256  # requests beyond the engine's max_num_seqs that may wait; past it, 429
    request_timeout: float | None = None  # seconds; a request still running then is aborted (408)
    max_request_body_bytes: int = 2 * 1024 * 1024
    drain_timeout: float = 30.0  # on SIGTERM, how long in-flight requests may take to finish
    log_format: str = "text"  # "text" or "json"
    log_requests: bool = False  # log prompts and outputs (off: they may be private)

    def __post_init__(self) -> None:
        if not self.api_key and os.environ.get(API_KEY_ENV):
            self.api_key = [key.strip() for key in os.environ[API_KEY_ENV].split(",") if key.strip()]
        if self.max_waiting_requests < 0:
            raise ConfigError(f"max_waiting_requests must be non-negative, got {self.max_waiting_requests}")
        if self.request_timeout is not None and self.request_timeout <= 0:
            raise ConfigError(f"request_timeout must be positive, got {self.request_timeout}")
        if self.log_format not in ("text", "json"):
            raise ConfigError(f"log_format must be 'text' or 'json', got {self.log_format!r}")
        if self.max_request_body_bytes < 1024:
            raise ConfigError(f"max_request_body_bytes must be at least 1024, got {self.max_request_body_bytes}")
