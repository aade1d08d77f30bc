"""The Noise IK handshake, sans-I/O, on ``cryptography``'s X25519, HKDF-SHA256 and AEADs.

This is the Noise Protocol Framework (revision 34, noiseprotocol.org) for the one pattern
the data protocol uses, ``Noise_IK_25519_<cipher>_SHA256``::

    IK:
      <- s
      ...
      -> e, es, s, ss
      <- e, ee, se

The initiator (the sending server) knows the responder's (the receiving server's) static
public key before it starts; message 1 carries the initiator's static key encrypted and
authenticated; message 2 completes the exchange, and :meth:`Handshake.split` gives one key
for each direction. Both static keys are authenticated, and the ephemeral keys give forward
secrecy. Every primitive is ``cryptography``'s (OpenSSL): nothing here is a cipher, a hash
or a curve of its own, only the Noise state machine that joins them, checked against the
published test vectors and an independent implementation (``tests/test_noise.py``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import struct
from collections.abc import Callable
from dataclasses import dataclass

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers.aead import AESGCM, ChaCha20Poly1305
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from ..errors import Garbage, Truncated, Unauthenticated

__all__ = ["CIPHERS", "DH_LEN", "TAG_LEN", "Cipher", "Handshake", "KeyPair", "public_key_bytes",
           "public_key_text"]

DH_LEN = 32
TAG_LEN = 16
_HASH_LEN = 32
_MAX_NONCE = 2**64 - 1

Aead = AESGCM | ChaCha20Poly1305
_BIG_NONCE, _LITTLE_NONCE = struct.Struct("!4xQ"), struct.Struct("<4xQ")


@dataclass(frozen=True)
class Cipher:
    """An AEAD as Noise names it, and how it turns a counter into a nonce."""

    #: the name in the Noise protocol name
    noise_name: str
    #: the name operators type and read
    name: str
    #: its number on the wire (the HELLO's cipher byte)
    code: int

    def aead(self, key: bytes) -> Aead:
        """The AEAD keyed with ``key`` (32 bytes)."""
        return AESGCM(key) if self.noise_name == "AESGCM" else ChaCha20Poly1305(key)

    def nonce(self, n: int) -> bytes:
        """Noise's 96-bit nonce of counter ``n``: 4 zero bytes, then ``n`` as 64 bits,
        big-endian for AES-GCM, little-endian for ChaCha20-Poly1305."""
        return self.nonce_maker(n)

    @property
    def nonce_maker(self) -> Callable[[int], bytes]:
        """:meth:`nonce` as one call (a channel makes one per message)."""
        return (_BIG_NONCE if self.noise_name == "AESGCM" else _LITTLE_NONCE).pack

    def rekey(self, key: bytes) -> bytes:
        """Noise's REKEY: the next key, ``ENCRYPT(k, 2^64-1, "", 32 zero bytes)[:32]``."""
        return self.aead(key).encrypt(self.nonce(_MAX_NONCE), bytes(32), b"")[:32]


AES_256_GCM = Cipher("AESGCM", "aes-256-gcm", 1)
CHACHA20_POLY1305 = Cipher("ChaChaPoly", "chacha20-poly1305", 2)
#: The ciphers by operator name (the first is the default).
CIPHERS = {c.name: c for c in (AES_256_GCM, CHACHA20_POLY1305)}
_BY_CODE = {c.code: c for c in CIPHERS.values()}


def cipher_by_code(code: int) -> Cipher:
    """The cipher of a HELLO's cipher byte; Garbage for an unknown one."""
    try:
        return _BY_CODE[code]
    except KeyError:
        raise Garbage("unknown cipher") from None


class KeyPair:
    """An X25519 key pair: a server's long-term identity, or an ephemeral key."""

    def __init__(self, private: X25519PrivateKey) -> None:
        self.private = private
        #: the 32-byte public key
        self.public = private.public_key().public_bytes_raw()

    @classmethod
    def generate(cls) -> KeyPair:
        """A fresh random key pair."""
        return cls(X25519PrivateKey.generate())

    @classmethod
    def from_private_bytes(cls, raw: bytes) -> KeyPair:
        """The key pair of a 32-byte private key."""
        return cls(X25519PrivateKey.from_private_bytes(raw))

    def dh(self, public: bytes) -> bytes:
        """X25519 with a peer's public key; Garbage when the result is all zeros (a
        low-order point: no shared secret)."""
        try:
            return self.private.exchange(X25519PublicKey.from_public_bytes(public))
        except ValueError:
            raise Garbage("bad public key") from None


def public_key_text(public: bytes) -> str:
    """A public key as users copy it: 44 characters of base64, as WireGuard shows keys."""
    return base64.b64encode(public).decode()


def public_key_bytes(text: str) -> bytes:
    """The 32 bytes of a public key written by :func:`public_key_text`; ValueError if it is
    not one."""
    try:
        raw = base64.b64decode(text.strip(), validate=True)
    except (binascii.Error, ValueError):
        raw = b""
    if len(raw) != DH_LEN:
        raise ValueError("a public key is 44 characters of base64 (32 bytes)")
    return raw


def _hkdf(chaining_key: bytes, material: bytes, outputs: int) -> list[bytes]:
    """Noise's HKDF: RFC 5869 HKDF-SHA256 with the chaining key as salt and no info."""
    okm = HKDF(hashes.SHA256(), _HASH_LEN * outputs, chaining_key, b"").derive(material)
    return [okm[i:i + _HASH_LEN] for i in range(0, len(okm), _HASH_LEN)]


class Handshake:
    """One side of a Noise IK handshake (see the module's docstring).

    The initiator writes message 1 and reads message 2; the responder reads message 1
    (learning the initiator's static key, :attr:`remote_static`) and writes message 2.
    Then :meth:`split` gives (initiator-to-responder key, responder-to-initiator key).
    A message that does not authenticate raises Unauthenticated (one cut short,
    Truncated; a key that gives no shared secret, Garbage); the handshake is then
    unusable.
    """

    def __init__(self, cipher: Cipher, static: KeyPair, prologue: bytes, *,
                 remote_static: bytes | None = None, ephemeral: KeyPair | None = None
                 ) -> None:
        self.cipher = cipher
        self.initiator = remote_static is not None
        name = f"Noise_IK_25519_{cipher.noise_name}_SHA256".encode()
        self.h = name.ljust(_HASH_LEN, b"\0") if len(name) <= _HASH_LEN else \
            hashlib.sha256(name).digest()
        self.ck = self.h
        self._k: bytes | None = None
        self._n = 0
        self.static = static
        self.ephemeral = ephemeral  # (given only by tests, for the published vectors)
        self.remote_static = remote_static
        self.remote_ephemeral: bytes | None = None
        self._mix_hash(prologue)
        self._mix_hash(remote_static if remote_static is not None else static.public)

    # -- the symmetric state (Noise section 5.2) ------------------------------------------

    def _mix_hash(self, data: bytes) -> None:
        self.h = hashlib.sha256(self.h + data).digest()

    def _mix_key(self, material: bytes) -> None:
        self.ck, self._k = _hkdf(self.ck, material, 2)
        self._n = 0

    def _encrypt_and_hash(self, plaintext: bytes) -> bytes:
        assert self._k is not None
        out = self.cipher.aead(self._k).encrypt(self.cipher.nonce(self._n), plaintext,
                                                self.h)
        self._n += 1
        self._mix_hash(out)
        return out

    def _decrypt_and_hash(self, ciphertext: bytes) -> bytes:
        assert self._k is not None
        try:
            out = self.cipher.aead(self._k).decrypt(self.cipher.nonce(self._n), ciphertext,
                                                    self.h)
        except InvalidTag:
            raise Unauthenticated("handshake does not authenticate") from None
        self._n += 1
        self._mix_hash(ciphertext)
        return out

    def _new_ephemeral(self) -> KeyPair:
        if self.ephemeral is None:
            self.ephemeral = KeyPair.generate()
        self._mix_hash(self.ephemeral.public)
        return self.ephemeral

    # -- the messages ---------------------------------------------------------------------

    def write_message_1(self, payload: bytes) -> bytes:
        """Initiator: ``e, es, s, ss`` and the encrypted payload."""
        assert self.initiator and self.remote_static is not None
        e = self._new_ephemeral()
        self._mix_key(e.dh(self.remote_static))
        encrypted_static = self._encrypt_and_hash(self.static.public)
        self._mix_key(self.static.dh(self.remote_static))
        return e.public + encrypted_static + self._encrypt_and_hash(payload)

    def read_message_1(self, message: bytes) -> bytes:
        """Responder: the payload of message 1 (and :attr:`remote_static`); Garbage if it
        does not authenticate (another responder key, or damaged)."""
        assert not self.initiator
        message = bytes(message)
        if len(message) < DH_LEN + DH_LEN + 2 * TAG_LEN:
            raise Truncated("short handshake")
        self.remote_ephemeral = message[:DH_LEN]
        self._mix_hash(self.remote_ephemeral)
        self._mix_key(self.static.dh(self.remote_ephemeral))
        self.remote_static = self._decrypt_and_hash(message[DH_LEN:2 * DH_LEN + TAG_LEN])
        self._mix_key(self.static.dh(self.remote_static))
        return self._decrypt_and_hash(message[2 * DH_LEN + TAG_LEN:])

    def write_message_2(self, payload: bytes) -> bytes:
        """Responder: ``e, ee, se`` and the encrypted payload."""
        assert not self.initiator and self.remote_ephemeral is not None
        assert self.remote_static is not None
        e = self._new_ephemeral()
        self._mix_key(e.dh(self.remote_ephemeral))
        self._mix_key(e.dh(self.remote_static))
        return e.public + self._encrypt_and_hash(payload)

    def read_message_2(self, message: bytes) -> bytes:
        """Initiator: the payload of message 2; Garbage if it does not authenticate, and
        the handshake is as it was (a damaged copy does not spoil the next, good one)."""
        assert self.initiator and self.ephemeral is not None
        message = bytes(message)
        if len(message) < DH_LEN + TAG_LEN:
            raise Truncated("short handshake")
        state = self.h, self.ck, self._k, self._n
        try:
            self.remote_ephemeral = message[:DH_LEN]
            self._mix_hash(self.remote_ephemeral)
            self._mix_key(self.ephemeral.dh(self.remote_ephemeral))
            self._mix_key(self.static.dh(self.remote_ephemeral))
            return self._decrypt_and_hash(message[DH_LEN:])
        except Garbage:
            self.h, self.ck, self._k, self._n = state
            self.remote_ephemeral = None
            raise

    def split(self) -> tuple[bytes, bytes]:
        """(initiator-to-responder key, responder-to-initiator key), once both messages
        are done."""
        first, second = _hkdf(self.ck, b"", 2)
        return first, second
