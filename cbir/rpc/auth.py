"""Bearer tokens: the allowed-token file, roles, the client-side attachment and log redaction
(the server-side check is ``cbir.rpc.guard.BearerTokenInterceptor``).

Security rules this module keeps:
- tokens are compared in constant time (``hmac.compare_digest`` over SHA-256 digests, so even the
  length of a known token does not leak through timing) and never kept in plain form server-side;
- no token, and no line of a token file, ever enters a log record, an exception message or a
  ``repr`` (``Secret`` hides the client's copy);
- the health service (and, by default, reflection) stays reachable without a token so that
  Kubernetes probes and ``grpcurl list`` work.
"""

from __future__ import annotations

import hashlib
import hmac
import logging
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cbir import errors

log = logging.getLogger(__name__)

SEARCH = "search"
WRITE = "write"
ADMIN = "admin"
KNOWN_ROLES = frozenset({SEARCH, WRITE, ADMIN})
MIN_TOKEN_CHARS = 16

HEALTH_METHODS = ("/grpc.health.v1.Health/Check", "/grpc.health.v1.Health/Watch")
REFLECTION_METHODS = (
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
)
DEFAULT_EXEMPT_METHODS = (*HEALTH_METHODS, *REFLECTION_METHODS)
# Methods needing more than the default "search" role; everything else needs "search". The
# write methods are the live index's (Upsert/Delete); listed before they exist so that they are
# never served unguarded, whichever lands first.
ADMIN_METHODS = ("/cbir.v1.Shard/LoadIndex",)
WRITE_METHODS = ("/cbir.v1.Coordinator/Upsert", "/cbir.v1.Coordinator/Delete")
DEFAULT_METHOD_ROLES = (*((m, ADMIN) for m in ADMIN_METHODS),
                        *((m, WRITE) for m in WRITE_METHODS))

SENSITIVE_METADATA = frozenset({"authorization", "cookie", "x-api-key", "proxy-authorization"})
REDACTED = "<redacted>"
_TOKEN_CHARS = re.compile(r"^[\x21-\x7e]+$")  # visible ASCII: what an HTTP/2 header can carry
_BEARER_IN_TEXT = re.compile(r"(?i)\b(bearer)\s+[^\s'\",)]+")


class Secret:
    """A string that never shows itself in ``repr``/``str``/logs; call ``reveal()`` to use it."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret(<redacted>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and hmac.compare_digest(
            self._value.encode(), other._value.encode()
        )

    def __hash__(self) -> int:
        return hash(_digest(self._value))


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode("utf-8")).digest()


@dataclass(frozen=True)
class TokenGrant:
    """One allowed token (its SHA-256 only) and the roles it carries; ``name`` is safe to log."""

    digest: bytes = field(repr=False)
    roles: frozenset[str]
    name: str


@dataclass(frozen=True)
class AuthConfig:
    """Allowed bearer tokens and which role each method needs."""

    grants: tuple[TokenGrant, ...]
    method_roles: tuple[tuple[str, str], ...] = DEFAULT_METHOD_ROLES
    default_role: str = SEARCH
    source: str = ""  # where the tokens came from (a path), for messages

    @classmethod
    def from_tokens(
        cls, tokens: Iterable[tuple[str, Iterable[str]]], source: str = "<memory>"
    ) -> AuthConfig:
        grants = []
        seen: set[bytes] = set()
        for number, (token, roles) in enumerate(tokens, start=1):
            where = f"{source}: token #{number}"
            _check_token(token, where)
            grant = TokenGrant(_digest(token), _check_roles(roles, where), f"token#{number}")
            if grant.digest in seen:
                raise errors.InvalidArgument(f"{where} repeats an earlier token")
            seen.add(grant.digest)
            grants.append(grant)
        if not grants:
            raise errors.InvalidArgument(f"{source}: no bearer token defined")
        return cls(grants=tuple(grants), source=source)

    @classmethod
    def from_file(cls, path: str | Path, default_roles: Iterable[str] = (SEARCH,)) -> AuthConfig:
        """Read ``<token> [role,role...]`` lines ('#' comments and blank lines ignored). A
        Kubernetes Secret mounted as a file with one bare token per line works as is."""
        text = read_secret_file(path, "auth token").decode("utf-8", errors="replace")
        entries: list[tuple[str, Iterable[str]]] = []
        for line in text.splitlines():
            fields = line.split("#", 1)[0].split()
            if not fields:
                continue
            if len(fields) > 2:
                raise errors.InvalidArgument(
                    f"{path}: token #{len(entries) + 1}: expected '<token> [role,role]'"
                )
            roles = fields[1].split(",") if len(fields) == 2 else list(default_roles)
            entries.append((fields[0], roles))
        return cls.from_tokens(entries, source=str(path))

    def required_role(self, method: str) -> str:
        return dict(self.method_roles).get(method, self.default_role)

    def match(self, token: str) -> TokenGrant | None:
        """The grant of ``token``; every grant is compared so the time does not say which."""
        given = _digest(token)
        found: TokenGrant | None = None
        for grant in self.grants:
            if hmac.compare_digest(given, grant.digest):
                found = grant
        return found


def _check_token(token: str, where: str) -> None:
    if not _TOKEN_CHARS.match(token):
        raise errors.InvalidArgument(f"{where}: a token must be visible ASCII without spaces")
    if len(token) < MIN_TOKEN_CHARS:
        raise errors.InvalidArgument(
            f"{where} is shorter than {MIN_TOKEN_CHARS} characters "
            "(generate one with `openssl rand -hex 32`)"
        )


def _check_roles(roles: Iterable[str], where: str) -> frozenset[str]:
    wanted = frozenset(r.strip() for r in roles if r.strip())
    unknown = wanted - KNOWN_ROLES
    if unknown or not wanted:
        raise errors.InvalidArgument(
            f"{where}: roles must be among {sorted(KNOWN_ROLES)}, got {sorted(unknown) or 'none'}"
        )
    return wanted


def read_secret_file(path: str | Path, what: str) -> bytes:
    """The bytes of a credential file; errors name the file, never its content."""
    p = Path(path)
    try:
        data = p.read_bytes()
    except FileNotFoundError:
        raise errors.NotFound(f"{what} file not found: {p}") from None
    except IsADirectoryError:
        raise errors.InvalidArgument(f"{what} file is a directory: {p}") from None
    except OSError as exc:
        raise errors.InvalidArgument(f"{what} file unreadable: {p} ({exc.strerror})") from None
    if not data.strip():
        raise errors.InvalidArgument(f"{what} file is empty: {p}")
    return data


def parse_bearer(metadata: Sequence[tuple[str, Any]] | None) -> str | None:
    """The token of exactly one well-formed ``authorization: Bearer <token>`` header, else None."""
    values = [v for k, v in metadata or () if k.lower() == "authorization"]
    if len(values) != 1 or not isinstance(values[0], str):
        return None
    scheme, _, token = values[0].strip().partition(" ")
    token = token.strip()
    if scheme.lower() != "bearer" or not token or " " in token:
        return None
    return token


def allowed(grant: TokenGrant, role: str) -> bool:
    """Whether ``grant`` may call a method needing ``role`` (``admin`` may call anything)."""
    return role in grant.roles or ADMIN in grant.roles


# ------------------------------------------------------------------ client side


def bearer_metadata(token: Secret | str) -> tuple[tuple[str, str], ...]:
    """Per-call metadata carrying the token (``stub.Method(req, metadata=...)``)."""
    value = token.reveal() if isinstance(token, Secret) else token
    return (("authorization", f"Bearer {value}"),)


def token_call_credentials(token: Secret) -> grpc.CallCredentials:
    """Call credentials for TLS channels; gRPC refuses to send them over plaintext."""
    return grpc.access_token_call_credentials(token.reveal())


def _with_token(metadata: Sequence[tuple[str, Any]] | None, token: Secret) -> list[Any]:
    kept = [(k, v) for k, v in metadata or () if k.lower() != "authorization"]
    return [*kept, *bearer_metadata(token)]


class _AioTokenAdder:
    def __init__(self, token: Secret) -> None:
        self._token = token

    def _details(self, details: grpc.aio.ClientCallDetails) -> grpc.aio.ClientCallDetails:
        metadata = grpc.aio.Metadata(*_with_token(details.metadata, self._token))
        return details._replace(metadata=metadata)


# grpc.aio files an interceptor under the first call kind it subclasses only, so each kind
# needs its own class.
class _AioUnaryUnary(_AioTokenAdder, grpc.aio.UnaryUnaryClientInterceptor):
    async def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioUnaryStream(_AioTokenAdder, grpc.aio.UnaryStreamClientInterceptor):
    async def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return await continuation(self._details(details), request)


class _AioStreamUnary(_AioTokenAdder, grpc.aio.StreamUnaryClientInterceptor):
    async def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


class _AioStreamStream(_AioTokenAdder, grpc.aio.StreamStreamClientInterceptor):
    async def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return await continuation(self._details(details), requests)


def aio_token_interceptors(token: Secret) -> list[grpc.aio.ClientInterceptor]:
    """Interceptors adding the bearer token to every call of a grpc.aio channel (plaintext
    local development; over TLS use call credentials instead)."""
    return [
        cls(token) for cls in (_AioUnaryUnary, _AioUnaryStream, _AioStreamUnary, _AioStreamStream)
    ]


class SyncTokenInterceptor(
    grpc.UnaryUnaryClientInterceptor,
    grpc.UnaryStreamClientInterceptor,
    grpc.StreamUnaryClientInterceptor,
    grpc.StreamStreamClientInterceptor,
):
    """The same for a synchronous channel (``grpc.intercept_channel``)."""

    def __init__(self, token: Secret) -> None:
        self._token = token

    def _details(self, details: Any) -> Any:
        return details._replace(metadata=_with_token(details.metadata, self._token))

    def intercept_unary_unary(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_unary_stream(self, continuation: Any, details: Any, request: Any) -> Any:
        return continuation(self._details(details), request)

    def intercept_stream_unary(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)

    def intercept_stream_stream(self, continuation: Any, details: Any, requests: Any) -> Any:
        return continuation(self._details(details), requests)


# ------------------------------------------------------------------ redaction


def redact_metadata(metadata: Iterable[tuple[str, Any]] | None) -> list[tuple[str, Any]]:
    """Metadata safe to log: credential-bearing keys keep their name, lose their value."""
    return [(k, REDACTED if k.lower() in SENSITIVE_METADATA else v) for k, v in metadata or ()]


def redact_text(text: str) -> str:
    """``Bearer <anything>`` → ``Bearer <redacted>`` in free text."""
    return _BEARER_IN_TEXT.sub(lambda m: f"{m.group(1)} {REDACTED}", text)


class RedactingFilter(logging.Filter):
    """Defence in depth for handlers: scrubs bearer tokens from a record's final message."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        cleaned = redact_text(message)
        if cleaned != message:
            record.msg, record.args = cleaned, None
        return True
