"""The server side of bearer tokens: an interceptor that refuses calls before any servicer code
runs - no or an unknown token, a token without the method's role, a privileged method on a
server without tokens, or an address locked out after failed authentications."""

from __future__ import annotations

import logging
import math
from collections.abc import Awaitable, Callable, Iterable, Sequence
from typing import Any

import grpc

from cbir.rpc.auth import (
    DEFAULT_EXEMPT_METHODS,
    DEFAULT_METHOD_ROLES,
    SEARCH,
    AuthConfig,
    allowed,
    parse_bearer,
)
from cbir.rpc.handlers import checked_handler, refusing_handler
from cbir.rpc.ratelimit import DEFAULT_FAILURE_LIMIT, FailureLimit, FailureLimiter, RefusalLog

# Refusals are logged under the name they always had (dashboards and tests grep for it).
log = logging.getLogger("cbir.rpc.auth")


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
        if not allowed(grant, role):
            return grpc.StatusCode.PERMISSION_DENIED, f"{grant.name} lacks the {role!r} role"
        return None

    def _refuse(self, method: str, code: grpc.StatusCode,
                message: str) -> Callable[[grpc.aio.ServicerContext], tuple[Any, str]]:
        def decide(context: grpc.aio.ServicerContext) -> tuple[grpc.StatusCode, str]:
            peer = context.peer()
            # A locked-out address learns nothing, not even that a token is known but lacks
            # the role (that would tell a guesser it found one).
            lockout = self._lockout(method, context) if self.auth is not None else None
            if code == grpc.StatusCode.UNAUTHENTICATED:  # a guess: counts towards the lockout
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
