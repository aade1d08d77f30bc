"""TLS over bytes that someone else moves, sans-I/O: the control port's encryption.

:class:`TlsPipe` wraps Python's ``ssl.SSLObject`` over two memory BIOs (the way asyncio's
own SSL transport is built), so that a connection whose first bytes have already been
read (to tell TLS from plain JSON and from a data stream) can still become a TLS one:
:meth:`TlsPipe.receive` takes what arrived and gives the plaintext, :meth:`TlsPipe.send`
takes plaintext, and :meth:`TlsPipe.data_to_send` gives what must go on the wire. The
context decides the rest (the server's: TLS 1.3 only, with its certificate).
"""

from __future__ import annotations

import base64
import hashlib
import ssl

__all__ = ["TLS_RECORD_HANDSHAKE", "TlsPipe", "certificate_fingerprint",
           "normalize_fingerprint"]

#: The first byte of a TLS connection (a handshake record): JSON starts with ``{`` or
#: white space, a data stream with ``J``.
TLS_RECORD_HANDSHAKE = 0x16


class TlsPipe:
    """One TLS connection's state (see the module's docstring). ssl.SSLError from
    :meth:`receive` means the peer's TLS failed (a bad handshake or record): close."""

    def __init__(self, context: ssl.SSLContext, server_side: bool = True,
                 server_hostname: str | None = None) -> None:
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self._tls = context.wrap_bio(self._incoming, self._outgoing, server_side=server_side,
                                     server_hostname=server_hostname)
        self.handshake_done = False
        #: the peer ended its side (close_notify)
        self.closed = False
        self._waiting: list[bytes] = []  # plaintext sent before the handshake was done

    def receive(self, data: bytes) -> bytes:
        """The plaintext of ``data`` (what arrived); b"" while the handshake goes on."""
        self._incoming.write(data)
        if not self.handshake_done:
            try:
                self._tls.do_handshake()
            except ssl.SSLWantReadError:
                return b""
            self.handshake_done = True
            for plaintext in self._waiting:
                self._tls.write(plaintext)
            self._waiting.clear()
        chunks: list[bytes] = []
        while True:
            try:
                chunk = self._tls.read(65536)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                chunk = b""
            if not chunk:  # (only at the end: else it would want more to read)
                self.closed = True
                break
            chunks.append(chunk)
        return b"".join(chunks)

    def send(self, plaintext: bytes) -> None:
        """Encrypt ``plaintext`` (once the handshake is done)."""
        if self.handshake_done:
            self._tls.write(plaintext)
        else:
            self._waiting.append(plaintext)

    def data_to_send(self) -> bytes:
        """What must go on the wire now."""
        return self._outgoing.read()

    def close(self) -> None:
        """End this side (close_notify), if the handshake was done."""
        if self.handshake_done:
            try:
                self._tls.unwrap()
            except ssl.SSLError:
                pass


def certificate_fingerprint(der: bytes) -> str:
    """``SHA256:`` and the base64 (unpadded, as ssh writes it) of a certificate's SHA-256:
    how a control port's certificate is pinned."""
    return "SHA256:" + base64.b64encode(hashlib.sha256(der).digest()).decode().rstrip("=")


def normalize_fingerprint(text: str) -> str:
    """A fingerprint as :func:`certificate_fingerprint` writes it, from that form or from
    hexadecimal (``openssl x509 -fingerprint -sha256`` prints it with colons); ValueError
    if it is neither."""
    text = text.strip()
    if text.upper().startswith("SHA256:"):
        body = text[7:]
        try:
            digest = base64.b64decode(body + "=" * (-len(body) % 4), validate=True)
        except ValueError:
            digest = b""
    else:
        try:
            digest = bytes.fromhex(text.replace(":", ""))
        except ValueError:
            digest = b""
    if len(digest) != 32:
        raise ValueError(f"{text!r} is not a SHA-256 fingerprint (SHA256:... as "
                         "getServerInfo's certificateFingerprint shows it, or 64 hex digits)")
    return "SHA256:" + base64.b64encode(digest).decode().rstrip("=")
