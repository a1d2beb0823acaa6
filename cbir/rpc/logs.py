"""Server log formats: ``text`` (the CLI's default lines) or ``json`` (one object per line, for
log shippers), both passed through ``SafeLogFilter`` so no bearer token and no terminal control
character reaches a log.

Anything read from storage (a pointer file, a manifest's version string) or sent by a caller is
untrusted text: ``safe_text`` escapes control characters (CR, ESC, the C1 set, bidi overrides)
and bounds the length before such text is logged or echoed in an error, so it can neither
forge log lines nor drive the operator's terminal.

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
from cbir.rpc.auth import RedactingFilter, redact_text

LOG_FORMATS = ("text", "json")


@dataclass(frozen=True)
class LogOptions:
    log_format: str = option("text", choices=LOG_FORMATS, help="json = one JSON object per line")
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:\-]{1,64}")
# C0 controls but TAB, DEL, C1 controls, line/paragraph separators and bidi overrides/isolates.
_UNSAFE = re.compile("[\x00-\x08\x0a-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069]")
SAFE_TEXT_CHARS = 256


def _escape(match: re.Match[str]) -> str:
    code = ord(match.group())
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def safe_text(value: str, limit: int = SAFE_TEXT_CHARS) -> str:
    """``value`` with control characters escaped (``\\x1b``) and cut to ``limit`` characters
    (``...(N chars)`` says how long it was): safe in a log line or an error message."""
    cut = value if len(value) <= limit else f"{value[:limit]}...({len(value)} chars)"
    return _UNSAFE.sub(_escape, cut)


def has_control_chars(value: str) -> bool:
    return _UNSAFE.search(value) is not None


class SafeLogFilter(RedactingFilter):
    """Redacts bearer tokens and escapes control characters in a record's final message (its
    traceback, formatted separately, keeps its newlines)."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = _UNSAFE.sub(_escape, redact_text(message))
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True


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
        if not any(isinstance(f, SafeLogFilter) for f in handler.filters):
            handler.addFilter(SafeLogFilter())
