"""Security configuration: token files, CLI flags, env fallbacks, clear errors that name files
but never echo their contents, and redaction helpers."""

from __future__ import annotations

import argparse
import logging
from pathlib import Path

import pytest

from cbir import errors
from cbir.rpc.auth import (
    ADMIN,
    SEARCH,
    AuthConfig,
    RedactingFilter,
    Secret,
    parse_bearer,
    redact_metadata,
    redact_text,
)
from cbir.rpc.security import (
    TlsConfig,
    add_security_arguments,
    client_security_from_args,
    server_credentials,
    server_security_from_args,
)
from tests.rpc.conftest import ADMIN_TOKEN, SEARCH_TOKEN
from tests.rpc.pki import Pki

KEY_TEXT = "SUPERSECRETKEYMATERIAL0123456789"


def parse(argv: list[str], server: bool, prefix: str = "") -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_security_arguments(parser, server=server, prefix=prefix)
    return parser.parse_args(argv)


def test_token_file_roles_comments_and_defaults(token_file: Path) -> None:
    auth = AuthConfig.from_file(token_file)
    search, admin = auth.match(SEARCH_TOKEN), auth.match(ADMIN_TOKEN)
    assert search is not None and search.roles == {SEARCH}
    assert admin is not None and admin.roles == {ADMIN}
    assert auth.match("not-a-known-token-at-all") is None
    assert auth.required_role("/cbir.v1.Shard/LoadIndex") == ADMIN
    assert auth.required_role("/cbir.v1.Coordinator/Search") == SEARCH
    # Only digests are kept: the config's repr cannot leak a token.
    assert SEARCH_TOKEN not in repr(auth) and ADMIN_TOKEN not in repr(auth)


@pytest.mark.parametrize(
    ("content", "complaint"),
    [
        ("", "empty"),
        ("# only a comment\n", "no bearer token"),
        ("short\n", "shorter than 16"),
        (f"{KEY_TEXT} superuser\n", "roles must be among"),
        (f"{KEY_TEXT}\n{KEY_TEXT} admin\n", "repeats an earlier token"),
        (f"{KEY_TEXT} admin extra\n", "expected '<token> [role,role]'"),
    ],
)
def test_bad_token_files_are_refused_without_echoing_them(
    tmp_path: Path, content: str, complaint: str
) -> None:
    path = tmp_path / "tokens"
    path.write_text(content)
    with pytest.raises(errors.InvalidArgument) as info:
        AuthConfig.from_file(path)
    assert complaint in str(info.value)
    assert KEY_TEXT not in str(info.value)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(errors.NotFound, match="auth token file not found"):
        AuthConfig.from_file(tmp_path / "absent")
    with pytest.raises(errors.InvalidArgument, match="is a directory"):
        AuthConfig.from_file(tmp_path)
    # Any other OS error is "unreadable", named but not echoed. A path under a regular file
    # fails with ENOTDIR for every user; a chmod 000 file would not fail for root (as CI runs).
    not_a_dir = tmp_path / "plain"
    not_a_dir.write_text(f"{KEY_TEXT}\n")
    with pytest.raises(errors.InvalidArgument, match="unreadable") as info:
        AuthConfig.from_file(not_a_dir / "tokens")
    assert KEY_TEXT not in str(info.value)


def test_non_pem_key_is_refused_by_name_not_content(pki: Pki, tmp_path: Path) -> None:
    bad_key = tmp_path / "tls.key"
    bad_key.write_text(KEY_TEXT)
    with pytest.raises(errors.InvalidArgument) as info:
        server_credentials(TlsConfig(pki.server.cert, bad_key))
    assert str(bad_key) in str(info.value) and KEY_TEXT not in str(info.value)
    with pytest.raises(errors.InvalidArgument, match="not a PEM certificate"):
        server_credentials(TlsConfig(pki.server.key, pki.server.key))


def test_server_flags_build_the_configs(pki: Pki, token_file: Path) -> None:
    args = parse(
        [
            *("--tls-cert", str(pki.server.cert), "--tls-key", str(pki.server.key)),
            *("--tls-ca", str(pki.ca), "--tls-require-client-cert"),
            *("--auth-token-file", str(token_file)),
        ],
        server=True,
    )
    security = server_security_from_args(args)
    assert security.tls == TlsConfig(pki.server.cert, pki.server.key, pki.ca, True)
    assert security.auth is not None and security.auth.match(ADMIN_TOKEN) is not None
    assert server_security_from_args(parse([], server=True)).tls is None


@pytest.mark.parametrize(
    ("argv", "complaint"),
    [
        (["--tls-cert", "{cert}"], "both --tls-cert and --tls-key"),
        (["--tls-cert", "{cert}", "--tls-key", "{key}", "--tls-require-client-cert"], "--tls-ca"),
        (["--tls-cert", "{cert}", "--tls-key", "/nonexistent/tls.key"], "not found"),
    ],
)
def test_server_flag_mistakes_are_clear(pki: Pki, argv: list[str], complaint: str) -> None:
    filled = [a.format(cert=pki.server.cert, key=pki.server.key) for a in argv]
    with pytest.raises(errors.CbirError, match=complaint):
        server_security_from_args(parse(filled, server=True))


def test_client_flags_with_prefix_and_env_token(
    pki: Pki, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """The coordinator dials shards with --shard-* flags; the token can come from the env."""
    monkeypatch.setenv("CBIR_SHARD_AUTH_TOKEN", SEARCH_TOKEN)
    monkeypatch.setenv("CBIR_SHARD_TLS_CA", str(pki.ca))
    args = parse(
        ["--shard-tls-cert", str(pki.client.cert), "--shard-tls-key", str(pki.client.key)],
        server=False,
        prefix="shard-",
    )
    security = client_security_from_args(args, prefix="shard-")
    assert security.tls == TlsConfig(pki.client.cert, pki.client.key, pki.ca)
    assert security.token == Secret(SEARCH_TOKEN)
    assert SEARCH_TOKEN not in repr(security)

    token_file = tmp_path / "token"
    token_file.write_text(f"{ADMIN_TOKEN}\n")
    args = parse(["--auth-token-file", str(token_file)], server=False)
    plain = client_security_from_args(args)
    assert plain.tls is None and plain.token == Secret(ADMIN_TOKEN)


def test_client_system_roots_and_half_client_cert(pki: Pki) -> None:
    assert client_security_from_args(parse(["--tls"], server=False)).tls == TlsConfig()
    with pytest.raises(errors.InvalidArgument, match="both --tls-cert and --tls-key"):
        client_security_from_args(parse(["--tls-cert", str(pki.client.cert)], server=False))


def test_parse_bearer() -> None:
    assert parse_bearer([("authorization", f"Bearer {SEARCH_TOKEN}")]) == SEARCH_TOKEN
    assert parse_bearer([("Authorization", f"bearer  {SEARCH_TOKEN} ")]) == SEARCH_TOKEN
    assert parse_bearer([("authorization", "Bearer a b")]) is None
    assert parse_bearer([("x-other", "1")]) is None
    assert parse_bearer(None) is None


def test_redaction_helpers(caplog: pytest.LogCaptureFixture) -> None:
    metadata = [("authorization", f"Bearer {SEARCH_TOKEN}"), ("x-request-id", "r1")]
    assert redact_metadata(metadata) == [("authorization", "<redacted>"), ("x-request-id", "r1")]
    assert redact_text(f"header 'Bearer {SEARCH_TOKEN}' sent") == "header 'Bearer <redacted>' sent"

    logger = logging.getLogger("tests.rpc.redaction")
    logger.addFilter(RedactingFilter())
    with caplog.at_level(logging.INFO, logger="tests.rpc.redaction"):
        logger.info("upstream said %s", f"authorization: Bearer {ADMIN_TOKEN}")
    assert ADMIN_TOKEN not in caplog.text and "Bearer <redacted>" in caplog.text
