"""SIP passwords at rest: Fernet (AES-128-CBC + HMAC-SHA256, from `cryptography`).

The key comes from the config (`storage.secret_key` / `secret_key_file`, or
PBXBOT_STORAGE__SECRET_KEY); a local install without one gets a key file
generated under the data directory on first start, readable by its owner only.
A password is kept only until its plan ends; then the row is erased.
"""

from __future__ import annotations

import hmac
import os
from collections.abc import Iterable, Mapping
from pathlib import Path

from cryptography.fernet import Fernet, InvalidToken

from bot.errors import VaultError

KEY_FILE = "secret.key"


def check_key(key: str | bytes) -> bool:
    """True for a usable Fernet key (config validation asks before anything is sealed)."""
    try:
        Fernet(key.encode() if isinstance(key, str) else key)
    except (ValueError, TypeError):
        return False
    return True


class Vault:
    def __init__(self, key: str | bytes, *, where: str = "storage.secret_key"):
        try:
            self._fernet = Fernet(key.encode() if isinstance(key, str) else key)
        except (ValueError, TypeError):
            raise VaultError("vault_bad_key", where=where) from None

    def __repr__(self) -> str:
        return "Vault(<key hidden>)"

    @classmethod
    def from_file(cls, path: Path, *, create: bool = True) -> Vault:
        """The key in `path`; with `create`, a new key written there (mode 0600, its directory
        0700) when missing."""
        try:
            if not path.exists() and create:
                path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
                fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                with os.fdopen(fd, "wb") as file:
                    file.write(Fernet.generate_key())
            key = path.read_bytes().strip()
        except OSError as exc:
            raise VaultError(
                "vault_unreadable", path=str(path), error=exc.strerror or type(exc).__name__
            ) from None
        return cls(key, where=str(path))

    def seal(self, value: str) -> str:
        return self._fernet.encrypt(value.encode()).decode()

    def open(self, token: str) -> str:
        try:
            return self._fernet.decrypt(token.encode()).decode()
        except InvalidToken as exc:
            raise VaultError("vault_wrong_key") from exc

    def matches(self, token: str, candidates: Iterable[str]) -> bool:
        """Whether one of `candidates` is the sealed value, each compared in constant time."""
        secret = self.open(token).encode()
        found = False
        for candidate in candidates:
            found |= hmac.compare_digest(secret, candidate.encode())
        return found

    def seal_all(self, values: Mapping[str, str]) -> dict[str, str]:
        return {k: self.seal(v) for k, v in values.items()}

    def open_all(self, tokens: Mapping[str, str]) -> dict[str, str]:
        return {k: self.open(v) for k, v in tokens.items()}
