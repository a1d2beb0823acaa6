"""Server log formats: ``text`` (the CLI's default lines) or ``json`` (one object per line, for
log shippers), both passed through ``RedactingFilter`` so no bearer token reaches a log.

Request ids are checked with ``clean_request_id`` before they are logged or forwarded: a
caller-chosen id must not be able to forge log lines (newlines) or carry anything long.
"""

from __future__ import annotations

import json
import logging
import re
import time
from dataclasses import dataclass

from cbir.options import option
from cbir.rpc.auth import RedactingFilter

LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class LogOptions:
    log_format: str = option("text", choices=LOG_FORMATS, help="json = one JSON object per line")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")


def clean_request_id(value: str) -> str | None:
    """``value`` if it is a well-formed request id (1-64 of ``[A-Za-z0-9._:-]``), else None."""
    return value if _REQUEST_ID.fullmatch(value) else None


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created))
            + f".{int(record.msecs):03d}Z",
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        return json.dumps(entry, ensure_ascii=False)


def configure(log_format: str = "text") -> None:
    """Set the root handlers' format and add redaction (call once, at the entry point)."""
    root = logging.getLogger()
    if not root.handlers:
        logging.basicConfig()
    for handler in root.handlers:
        if log_format == "json":
            handler.setFormatter(JsonFormatter())
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
