"""The benchmark's options as one dataclass; each field is one flag of `lmserve bench serve` (see cli.py)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from lmserve.errors import ConfigError

SLO_METRICS = ("ttft", "tpot", "e2el")


@dataclass
class BenchConfig:
    """Where requests go, what they hold, when they are sent, and where the results are written."""

    base_url: str = "http://127.0.0.1:8000"
    endpoint: str = "completions"  # or "chat"
    model: str | None = None  # None: the first model the server's /v1/models lists
    api_key: str | None = None
    dataset: str | None = None  # a JSONL file; None: random prompts
    num_prompts: int | None = None  # None: the whole dataset, or DEFAULT_NUM_RANDOM_PROMPTS random ones
    random_input_len: int = 256
    random_output_len: int = 128
    fixed_output_len: bool = True
    seed: int = 0
    request_rate: list[float] = field(default_factory=lambda: [math.inf])
    burstiness: float = 1.0
    max_concurrency: int | None = None
    goodput: dict[str, float] = field(default_factory=dict)  # SLO name -> limit in milliseconds
    result_file: str | None = None
    plot_file: str | None = None  # None: beside result_file, with the suffix .png
    timeout: float = 600.0

    def __post_init__(self) -> None:
        checks = [
            (self.endpoint in ("completions", "chat"), f"--endpoint must be completions or chat, got {self.endpoint}"),
            (self.num_prompts is None or self.num_prompts >= 1, "--num-prompts must be at least 1"),
            (self.random_input_len >= 1, "--random-input-len must be at least 1"),
            (self.random_output_len >= 1, "--random-output-len must be at least 1"),
            (len(self.request_rate) >= 1, "--request-rate needs at least one value"),
            (all(rate > 0 for rate in self.request_rate), "--request-rate values must be positive (or inf)"),
            (0 < self.burstiness < math.inf, "--burstiness must be a positive number"),
            (self.max_concurrency is None or self.max_concurrency >= 1, "--max-concurrency must be at least 1"),
            (set(self.goodput) <= set(SLO_METRICS), f"--goodput takes only {', '.join(SLO_METRICS)}"),
            (self.timeout > 0, "--timeout must be positive"),
        ]
        for ok, message in checks:
            if not ok:
                raise ConfigError(message)

    @property
    def api_base(self) -> str:
        """The server's root, whether --base-url was given with or without /v1."""
        return self.base_url.rstrip("/").removesuffix("/v1")
