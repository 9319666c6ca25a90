"""Access control: bearer tokens, off unless READ_TOKENS or WRITE_TOKENS is set.

A write token may read and write, a read token only read. Tokens are compared as SHA-256
digests with ``hmac.compare_digest`` against every configured token, so neither the comparison
nor the number of tokens checked reveals how much of a guess was right. Only the Authorization
header is read: no cookie ever authenticates, so a cross-site form or script cannot ride on a
user's credentials. The probes, the API description and the page's static files stay open.
"""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from flask import Flask, current_app, g, request

from errors import ApiError

# Open to anyone even with tokens on: probes, the API description, the page's stylesheet.
PUBLIC_ENDPOINTS = {"api.healthz", "api.readyz", "api.openapi", "static"}
READ_METHODS = {"GET", "HEAD", "OPTIONS"}
_EXTENSION = "var_keeper.tokens"


@dataclass(frozen=True, slots=True)
class Tokens:
    """The SHA-256 digests of the configured tokens."""

    read: tuple[bytes, ...]
    write: tuple[bytes, ...]


def init_app(app: Flask) -> None:
    """Require a token on every request but the public ones, if any token is configured."""
    tokens = Tokens(
        read=tuple(_digest(t) for t in app.config["READ_TOKENS"]),
        write=tuple(_digest(t) for t in app.config["WRITE_TOKENS"]),
    )
    if not tokens.read and not tokens.write:
        return
    app.extensions[_EXTENSION] = tokens
    app.before_request(require_token)


def require_token() -> None:
    if request.endpoint in PUBLIC_ENDPOINTS:
        return
    tokens: Tokens = current_app.extensions[_EXTENSION]
    challenge = {"WWW-Authenticate": 'Bearer realm="var_keeper"'}
    scheme, _, token = request.headers.get("Authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not token.strip():
        raise ApiError(401, "unauthorized", "send Authorization: Bearer <token>", challenge)
    candidate = _digest(token.strip())
    may_write = _matches(candidate, tokens.write)
    if not may_write and not _matches(candidate, tokens.read):
        challenge["WWW-Authenticate"] += ', error="invalid_token"'
        raise ApiError(401, "invalid_token", "the token is not valid", challenge)
    # Who made a change, in the change log: an identifier that reveals nothing of the token.
    g.actor = candidate.hex()[:8]
    if request.method not in READ_METHODS and not may_write:
        raise ApiError(403, "forbidden", "this token may read but not write")


def _digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


def _matches(candidate: bytes, digests: tuple[bytes, ...]) -> bool:
    """Whether ``candidate`` is one of ``digests``, comparing with every one of them."""
    found = False
    for digest in digests:
        found |= hmac.compare_digest(candidate, digest)
    return found
