"""Logging: one JSON object per line with `--log-format json`, every line tagged with its request id."""

from __future__ import annotations

import contextvars
import json
import logging
import sys
import time

logger = logging.getLogger("lmserve")
request_id_var: contextvars.ContextVar[str | None] = contextvars.ContextVar("request_id", default=None)


class _RequestIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        record.request_id = request_id_var.get()
        return True


class JsonFormatter(logging.Formatter):
    """Fields a log pipeline can index: time, level, logger, message, request id and any `extra`."""

    _STANDARD = set(logging.LogRecord("", 0, "", 0, "", None, None).__dict__) | {"message", "request_id"}

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
            "request_id": getattr(record, "request_id", None),
        }
        entry.update({key: value for key, value in record.__dict__.items() if key not in self._STANDARD})
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry, default=str)


def configure_logging(log_format: str, level: int = logging.INFO) -> None:
    """Route lmserve's and uvicorn's logs through one handler in the chosen format."""
    handler = logging.StreamHandler(sys.stderr)
    handler.addFilter(_RequestIdFilter())
    if log_format == "json":
        handler.setFormatter(JsonFormatter())
    else:
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s [%(request_id)s] %(message)s"))
    for name in ("lmserve", "uvicorn", "uvicorn.error"):
        named = logging.getLogger(name)
        named.handlers = [handler]
        named.setLevel(level)
        named.propagate = False
    logging.getLogger("uvicorn.access").disabled = True  # log_access below says the same, with the request id


def log_access(method: str, path: str, status: int, seconds: float) -> None:
    logger.info(
        "%s %s %d %.1fms", method, path, status, seconds * 1000,
        extra={"method": method, "path": path, "status": status, "duration_ms": round(seconds * 1000, 2)},
    )
