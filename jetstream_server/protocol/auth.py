"""The password proof of the data protocol's login, sans-I/O.

The users file stores, per user, ``V = scrypt(password, salt, N=2^log2_n, r, p, dklen=32)``
(see ``jetstream_server.core.users``); the API checks a password by deriving it again, and a
sender proves it knows the password by deriving ``V`` under the salt and parameters the
receiver's CHALLENGE gives, then sending ``HMAC-SHA256(V, nonce || session || transfer
id)``. One function derives ``V`` for all three, so that a password that logs in to the API
also authorizes a transfer.
"""

from __future__ import annotations

import hashlib
import hmac
import struct

__all__ = ["MAX_SCRYPT_BYTES", "auth_proof", "derive_verifier", "scrypt_bytes"]

#: The most memory a derivation may take (128 x r x N x p bytes): 16 times the default
#: parameters' 16 MiB. Parameters that need more are refused (ValueError).
MAX_SCRYPT_BYTES = 256 * 1024 * 1024


def scrypt_bytes(log2_n: int, r: int, p: int) -> int:
    """The memory scrypt takes with these parameters."""
    return 128 * r * (1 << log2_n) * p


def derive_verifier(password: str, salt: bytes, log2_n: int, r: int, p: int) -> bytes:
    """The password's verifier (blocking, about 0.1 s of CPU with the default
    parameters); ValueError when the parameters are out of range."""
    if not (1 <= log2_n <= 30 and r >= 1 and p >= 1) or \
            scrypt_bytes(log2_n, r, p) > MAX_SCRYPT_BYTES:
        raise ValueError(f"scrypt parameters ln={log2_n}, r={r}, p={p} need more than "
                         f"{MAX_SCRYPT_BYTES} bytes")
    return hashlib.scrypt(password.encode("utf-8", "surrogatepass"), salt=salt,
                          n=1 << log2_n, r=r, p=p, maxmem=MAX_SCRYPT_BYTES + 1024 * 1024,
                          dklen=32)


def auth_proof(verifier: bytes, nonce: bytes, session: int, transfer_id: bytes) -> bytes:
    """What proves the sender knows the password: HMAC-SHA256 keyed with the verifier."""
    message = nonce + struct.pack("!I", session) + transfer_id
    return hmac.new(verifier, message, hashlib.sha256).digest()
