"""Bearer tokens: the allowed-token file, the server-side check, the client-side attachment and
log redaction.

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
import math
import re
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from cbir import errors
from cbir.rpc.handlers import checked_handler, refusing_handler
from cbir.rpc.ratelimit import DEFAULT_FAILURE_LIMIT, FailureLimit, FailureLimiter, RefusalLog

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


def _allowed(grant: TokenGrant, role: str) -> bool:
    return role in grant.roles or ADMIN in grant.roles


def no_token_refusal(method: str, role: str) -> tuple[grpc.StatusCode, str]:
    return grpc.StatusCode.PERMISSION_DENIED, (
        f"{method} needs the {role!r} role and this server has no bearer tokens: call it on the "
        "loopback admin port (--admin-port) or configure --auth-token-file with such a token")


class BearerTokenInterceptor(grpc.aio.ServerInterceptor):
    """Refuse calls without a known bearer token (UNAUTHENTICATED) or whose token lacks the
    method's role (PERMISSION_DENIED), before the request reaches any servicer.

    ``auth=None`` (no tokens configured) still guards the privileged methods (role other than
    ``search``): they are refused unless ``trusted`` (the loopback-only admin port, where
    reaching the port is the credential). Peers that keep failing authentication are refused
    with RESOURCE_EXHAUSTED for the rest of the window (``limit``), and refusals are logged
    once per interval with a count (``cbir.rpc.ratelimit``)."""

    def __init__(self, auth: AuthConfig | None,
                 exempt_methods: Iterable[str] = DEFAULT_EXEMPT_METHODS, *,
                 trusted: bool = False, limit: FailureLimit = DEFAULT_FAILURE_LIMIT,
                 method_roles: Iterable[tuple[str, str]] | None = None) -> None:
        self.auth = auth
        self.exempt_methods = frozenset(exempt_methods)
        self.trusted = trusted
        roles = method_roles if method_roles is not None else (
            auth.method_roles if auth is not None else DEFAULT_METHOD_ROLES)
        self.method_roles = dict(roles)
        self.limiter = FailureLimiter(limit)
        self.refusals = RefusalLog(log, limit.interval_s or 10.0)

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[grpc.RpcMethodHandler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> grpc.RpcMethodHandler:
        method = handler_call_details.method
        handler = await continuation(handler_call_details)
        if handler is None or method in self.exempt_methods:
            return handler
        refusal = self.refusal(method, handler_call_details.invocation_metadata)
        if refusal is not None:
            return refusing_handler(handler, self._refuse(method, *refusal))
        if self.auth is not None and self.limiter.any_blocked():
            # Someone is locked out: look at this call's peer (only a handler sees it).
            return checked_handler(handler, lambda context: self._lockout(method, context))
        return handler

    def required_role(self, method: str) -> str:
        return self.method_roles.get(method, SEARCH)

    def refusal(
        self, method: str, metadata: Sequence[tuple[str, Any]] | None
    ) -> tuple[grpc.StatusCode, str] | None:
        """None when the call may proceed, else the status and a message free of secrets."""
        role = self.required_role(method)
        if self.auth is None:
            return None if role == SEARCH or self.trusted else no_token_refusal(method, role)
        token = parse_bearer(metadata)
        if token is None:
            return grpc.StatusCode.UNAUTHENTICATED, "missing or malformed bearer token"
        grant = self.auth.match(token)
        if grant is None:
            return grpc.StatusCode.UNAUTHENTICATED, "invalid bearer token"
        if not _allowed(grant, role):
            return grpc.StatusCode.PERMISSION_DENIED, f"{grant.name} lacks the {role!r} role"
        return None

    def _refuse(self, method: str, code: grpc.StatusCode,
                message: str) -> Callable[[grpc.aio.ServicerContext], tuple[Any, str]]:
        def decide(context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str]:
            peer = context.peer()
            if code == grpc.StatusCode.UNAUTHENTICATED:  # a guess: counts towards the lockout
                lockout = self._lockout(method, context)
                self.limiter.failed(peer)
                if lockout is not None:
                    return lockout
            self.refusals.refused(method, message, peer)
            return code, message

        return decide

    def _lockout(self, method: str,
                 context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str] | None:
        peer = context.peer()
        wait = self.limiter.blocked_for(peer)
        if wait <= 0:
            return None
        self.refusals.refused(method, "locked out after failed authentications", peer)
        return grpc.StatusCode.RESOURCE_EXHAUSTED, (
            f"too many failed authentications from this address; retry in {math.ceil(wait)} s")


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
