"""The control-line codec, sans-I/O.

The control API is newline-delimited JSON both ways: one UTF-8 JSON object per line,
terminated by ``\\n``. :class:`LineDecoder` takes bytes as they arrive and returns complete
lines; a line longer than its limit is reported once as :class:`LineTooLong` (the caller
answers with an error and closes the connection, because the rest of the stream cannot be
re-synchronised reliably). :func:`decode_request` turns one line into a :class:`Request`,
and :func:`encode_message` turns a response into a line.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import orjson

from ..errors import LineTooLong, MalformedRequest

__all__ = [
    "MAX_LINE_BYTES",
    "LineDecoder",
    "Request",
    "decode_request",
    "encode_message",
    "error_response",
    "success_response",
]

#: Longest accepted request line, newline excluded. Longer lines get a ``line_too_long``
#: error and the connection is closed.
MAX_LINE_BYTES = 1024 * 1024


class LineDecoder:
    """Split a byte stream into lines of at most ``max_line_bytes`` bytes."""

    def __init__(self, max_line_bytes: int = MAX_LINE_BYTES) -> None:
        self.max_line_bytes = max_line_bytes
        self._buffer = bytearray()
        self._failed = False

    def feed(self, data: bytes) -> list[bytes]:
        """Return the complete lines in ``data`` (without their newline).

        Raises :class:`LineTooLong` when a line exceeds the limit; after that the decoder
        accepts nothing more.
        """
        if self._failed:
            return []
        self._buffer += data
        lines: list[bytes] = []
        start = 0
        while True:
            end = self._buffer.find(b"\n", start)
            if end < 0:
                break
            if end - start > self.max_line_bytes:
                self._fail()
            line = bytes(self._buffer[start:end])
            if line.endswith(b"\r"):
                line = line[:-1]
            lines.append(line)
            start = end + 1
        del self._buffer[:start]
        if len(self._buffer) > self.max_line_bytes:
            self._fail()
        return lines

    def _fail(self) -> None:
        self._failed = True
        self._buffer.clear()
        raise LineTooLong(
            f"Request line longer than {self.max_line_bytes} bytes; the connection is closed."
        )


@dataclass(frozen=True)
class Request:
    """One decoded API request."""

    name: str
    parameters: dict[str, Any] = field(default_factory=dict)
    id: Any = None


def decode_request(line: bytes) -> Request:
    """Decode one request line, or raise :class:`MalformedRequest`.

    The error carries the request ``id`` when it could be read, so the response can echo it.
    """
    try:
        obj = orjson.loads(line)
    except orjson.JSONDecodeError as exc:
        raise MalformedRequest(f"Request is not valid JSON: {exc}.") from None
    if not isinstance(obj, dict):
        raise MalformedRequest("Request must be a JSON object.")
    request_id = obj.get("id")
    if isinstance(request_id, bool) or not isinstance(request_id, (int, str, type(None))):
        raise MalformedRequest("Request 'id' must be an integer, a string or null.")
    try:
        return _decode_fields(obj, request_id)
    except MalformedRequest as error:
        error.request_id = request_id
        raise


def _decode_fields(obj: dict[str, Any], request_id: Any) -> Request:
    name = obj.get("request")
    if not isinstance(name, str) or not name:
        raise MalformedRequest("Request needs a 'request' string naming the command.")
    parameters = obj.get("parameters")
    if parameters is None:
        parameters = {}
    if not isinstance(parameters, dict):
        raise MalformedRequest("Request 'parameters' must be a JSON object.")
    unknown = set(obj) - {"request", "parameters", "id"}
    if unknown:
        raise MalformedRequest(f"Unknown request field(s): {', '.join(sorted(unknown))}.")
    return Request(name=name, parameters=parameters, id=request_id)


def success_response(request_id: Any, message: str, result: Any) -> dict[str, Any]:
    """The response line of a command that succeeded."""
    return {"id": request_id, "status": "success", "message": message, "result": result}


def error_response(request_id: Any, code: str, message: str) -> dict[str, Any]:
    """The response line of a command that failed, with its stable code."""
    return {"id": request_id, "status": "error", "message": message, "result": None,
            "code": code}


def encode_message(message: dict[str, Any]) -> bytes:
    """Encode one message as a JSON line."""
    return orjson.dumps(message) + b"\n"
