"""Optional API keys with two scopes, sent as ``Authorization: Bearer <key>``.

With no keys configured every endpoint is open and callers are recorded as ``anonymous``.
Keys are compared in constant time: the presented key's SHA-256 against each configured
key's, every key every time, so neither a key's length nor which key nearly matched shows
in the timing. A key is never logged or stored; the audit trail records its ``name``.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from fastapi import Depends, Request
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer

from .errors import ServiceError
from .settings import ApiKey

Scope = Literal["read", "edit"]
_GRANTS: dict[str, set[str]] = {"read": {"read"}, "edit": {"read", "edit"}}
_bearer = HTTPBearer(auto_error=False, description="an API key (when the service has keys)")


@dataclass(frozen=True)
class Principal:
    """Who is calling: the key's name and what it may do."""

    name: str
    scope: Scope


ANONYMOUS = Principal("anonymous", "edit")


class KeyRing:
    """The configured keys, kept only as digests."""

    def __init__(self, keys: list[ApiKey]) -> None:
        self._keys = [(_digest(k.key.get_secret_value()), Principal(k.name, k.scope))
                      for k in keys]

    @property
    def enabled(self) -> bool:
        return bool(self._keys)

    def find(self, presented: str) -> Principal | None:
        digest, found = _digest(presented), None
        for known, principal in self._keys:
            if hmac.compare_digest(digest, known) and found is None:
                found = principal
        return found


def _digest(key: str) -> bytes:
    return hashlib.sha256(key.encode()).digest()


def require(scope: Scope) -> Callable[..., Principal]:
    """A dependency that admits callers whose key grants ``scope`` (401 / 403 otherwise)."""

    def check(request: Request,
              credentials: HTTPAuthorizationCredentials | None = Depends(_bearer)) -> Principal:
        api_keys: KeyRing = request.app.state.api_keys
        if not api_keys.enabled:
            return ANONYMOUS
        if credentials is None:
            raise ServiceError(401, "unauthenticated",
                               "send an API key as 'Authorization: Bearer <key>'")
        principal = api_keys.find(credentials.credentials)
        if principal is None:
            raise ServiceError(401, "unauthenticated", "the API key is not valid")
        if scope not in _GRANTS[principal.scope]:
            raise ServiceError(403, "forbidden", f"this key may not {scope}; its scope is "
                               f"{principal.scope!r}", {"needed": scope})
        return principal

    return check
