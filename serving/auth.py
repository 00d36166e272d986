"""API keys: callers are recognised by the SHA-256 digest of their key, never the key."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import dataclass

from videorec.config import ApiKeyConfig


@dataclass(frozen=True)
class Caller:
    """An authenticated caller: its configured name and scopes."""

    name: str
    scopes: frozenset[str]


class Keyring:
    """The configured keys, looked up by digest in constant time per key."""

    def __init__(self, keys: list[ApiKeyConfig]) -> None:
        self._keys = [(bytes.fromhex(k.sha256), Caller(k.name, frozenset(k.scopes))) for k in keys]

    def caller(self, presented: str | None) -> Caller | None:
        """The caller whose key is ``presented``, or None."""
        if not presented:
            return None
        digest = hashlib.sha256(presented.encode()).digest()
        found = None
        for stored, caller in self._keys:  # every key compared: no early exit to time
            if hmac.compare_digest(stored, digest):
                found = caller
        return found
