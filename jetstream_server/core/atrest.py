"""The destination passwords the server stores, sealed with a key kept outside the
database.

:class:`SecretBox` seals a stored secret with AES-256-GCM (``cryptography``, that is
  OpenSSL), under a 256-bit key read from the secret key file (``--secret-key-file``,
  made at first start). A copy of the state database alone gives no password; the key
  file must not be readable by others, or the server refuses to start.
"""

from __future__ import annotations

import base64
import secrets
from pathlib import Path

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from ..errors import ConfigError, UnreadableSecret
from .private import private_secret

__all__ = ["SecretBox"]

_SEALED_PREFIX = "aes256gcm:"
_NONCE_BYTES = 12


class SecretBox:
    """Seals and opens stored secrets with AES-256-GCM under one key."""
    def __init__(self, key: bytes) -> None:
        self._aead = AESGCM(key)

    @classmethod
    def from_key_file(cls, path: Path) -> SecretBox:
        """The box of the key in ``path``, made (64 hex digits, mode 0600) if it does not
        exist. Raises :class:`ConfigError` when it cannot be read, is malformed, or is
        readable by anyone but its owner."""
        raw = private_secret(path, "the secret key file",
                             lambda: (secrets.token_hex(32) + "\n").encode())
        try:
            key = bytes.fromhex(raw.decode("ascii").strip())
        except (UnicodeDecodeError, ValueError):
            key = b""
        if len(key) != 32:
            raise ConfigError(f"The secret key file {path} must hold 64 hexadecimal digits "
                              "(remove it to have a new one made; stored destination "
                              "passwords must then be given again).")
        return cls(key)

    def seal(self, secret: str, context: str) -> str:
        """``secret`` encrypted and authenticated, bound to ``context`` (the id of what
        holds it, so a sealed value moved to another row does not open)."""
        nonce = secrets.token_bytes(_NONCE_BYTES)
        sealed = self._aead.encrypt(nonce, secret.encode("utf-8", "surrogatepass"),
                                    context.encode())
        return _SEALED_PREFIX + base64.b64encode(nonce + sealed).decode()

    def open(self, sealed: str, context: str) -> str:
        """The secret :meth:`seal` made; raises :class:`UnreadableSecret`."""
        if not sealed.startswith(_SEALED_PREFIX):
            raise UnreadableSecret("not a sealed value")
        try:
            raw = base64.b64decode(sealed[len(_SEALED_PREFIX):], validate=True)
            plain = self._aead.decrypt(raw[:_NONCE_BYTES], raw[_NONCE_BYTES:],
                                       context.encode())
        except (ValueError, InvalidTag):
            raise UnreadableSecret("the secret key does not open it") from None
        return plain.decode("utf-8", "surrogatepass")
