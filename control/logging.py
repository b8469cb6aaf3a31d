"""structlog JSON logging for the whole process, the stdlib's loggers included.

Every line carries the request id (bound per request in api.request_context).
Authorization headers and tokens are never passed to a logger; a last processor
also masks anything shaped like an API key, in case a future log call slips.
"""

from __future__ import annotations

import logging
import re
import sys
from typing import Any

import structlog

_TOKEN = re.compile(r"mrg_live_key_[0-9a-z]{26}_[A-Za-z0-9_-]+")


def _mask_tokens(_logger: Any, _name: str, event: dict[str, Any]) -> dict[str, Any]:
    for key, value in event.items():
        if isinstance(value, str) and "mrg_live_" in value:
            event[key] = _TOKEN.sub("mrg_live_[redacted]", value)
    return event


_SHARED: list[Any] = [
    structlog.contextvars.merge_contextvars,
    structlog.stdlib.add_log_level,
    structlog.stdlib.add_logger_name,
    structlog.processors.TimeStamper(fmt="iso", utc=True),
    structlog.processors.format_exc_info,
    _mask_tokens,
]


def _handler(stream: Any, fmt: str) -> logging.Handler:
    renderer = structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(
        structlog.stdlib.ProcessorFormatter(
            foreign_pre_chain=_SHARED,
            processors=[structlog.stdlib.ProcessorFormatter.remove_processors_meta, renderer],
        )
    )
    return handler


def attach_stream(stream: Any, fmt: str = "json") -> logging.Handler:
    """Send every log line to one more stream too (tests and tools read them back)."""
    handler = _handler(stream, fmt)
    logging.getLogger().addHandler(handler)
    return handler


def configure_logging(level: str = "info", fmt: str = "json", stream: Any = None) -> None:
    structlog.configure(
        processors=[*_SHARED, structlog.stdlib.ProcessorFormatter.wrap_for_formatter],
        logger_factory=structlog.stdlib.LoggerFactory(),
        wrapper_class=structlog.stdlib.BoundLogger,
        cache_logger_on_first_use=False,
    )
    root = logging.getLogger()
    root.handlers[:] = [_handler(stream or sys.stderr, fmt)]
    root.setLevel(level.upper())
    # uvicorn's access log would duplicate ours (and log query strings); ours is enough.
    logging.getLogger("uvicorn.access").disabled = True
    # httpx logs every request it sends at INFO: one line per gateway call to a node (the
    # gateway logs the failures itself) and per heartbeat, and a formatted JSON line costs
    # more than the rest of the call's bookkeeping.
    logging.getLogger("httpx").setLevel(max(logging.WARNING, root.level))
    for name in ("uvicorn", "uvicorn.error"):
        logging.getLogger(name).handlers[:] = []
        logging.getLogger(name).propagate = True
