"""The control-line codec, without sockets."""

from __future__ import annotations

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from jetstream_server.errors import LineTooLong, MalformedRequest
from jetstream_server.protocol.lines import (
    LineDecoder,
    decode_request,
    encode_message,
    error_response,
    success_response,
)


def test_lines_split_across_chunks_are_joined() -> None:
    decoder = LineDecoder()
    assert decoder.feed(b'{"request": "get') == []
    assert decoder.feed(b'ServerInfo"}\n{"req') == [b'{"request": "getServerInfo"}']
    assert decoder.feed(b'uest": "x"}\r\n') == [b'{"request": "x"}']


@given(st.lists(st.binary(max_size=50).filter(lambda b: b"\n" not in b), max_size=20),
       st.data())
def test_any_chunking_gives_the_same_lines(lines: list[bytes], data: st.DataObject) -> None:
    stream = b"".join(line + b"\n" for line in lines)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(stream)), max_size=10)))
    decoder = LineDecoder()
    out: list[bytes] = []
    previous = 0
    for cut in [*cuts, len(stream)]:
        out += decoder.feed(stream[previous:cut])
        previous = cut
    assert out == [line[:-1] if line.endswith(b"\r") else line for line in lines]


def test_an_over_long_line_is_refused_even_before_its_newline() -> None:
    decoder = LineDecoder(max_line_bytes=10)
    with pytest.raises(LineTooLong, match="longer than 10 bytes"):
        decoder.feed(b"x" * 11)
    assert decoder.feed(b"\n{}\n") == []  # nothing more is accepted


def test_a_line_of_exactly_the_limit_is_accepted() -> None:
    assert LineDecoder(max_line_bytes=10).feed(b"y" * 10 + b"\n") == [b"y" * 10]


def test_request_fields_are_decoded() -> None:
    request = decode_request(b'{"request": "send.getManifest", "parameters": {"manifestId": '
                             b'"ab"}, "id": 7}')
    assert (request.name, request.parameters, request.id) == (
        "send.getManifest", {"manifestId": "ab"}, 7)
    assert decode_request(b'{"request": "getServerInfo"}').parameters == {}


@pytest.mark.parametrize(("line", "message"), [
    (b"{not json", "not valid JSON"),
    (b"[1, 2]", "must be a JSON object"),
    (b'{"parameters": {}}', "needs a 'request' string"),
    (b'{"request": 5}', "needs a 'request' string"),
    (b'{"request": "x", "parameters": [1]}', "'parameters' must be a JSON object"),
    (b'{"request": "x", "id": [1]}', "'id' must be"),
    (b'{"request": "x", "extra": 1}', "Unknown request field"),
    (b"\xff\xfe", "not valid JSON"),
])
def test_malformed_requests_are_refused_with_a_reason(line: bytes, message: str) -> None:
    with pytest.raises(MalformedRequest, match=message) as info:
        decode_request(line)
    assert info.value.code == "malformed_request"


def test_a_malformed_request_keeps_its_id_for_the_answer() -> None:
    with pytest.raises(MalformedRequest) as info:
        decode_request(b'{"request": 1, "id": "abc"}')
    assert info.value.request_id == "abc"


def test_responses_have_the_documented_fields() -> None:
    ok = orjson.loads(encode_message(success_response(3, "Done.", {"a": 1})))
    assert ok == {"id": 3, "status": "success", "message": "Done.", "result": {"a": 1}}
    bad = orjson.loads(encode_message(error_response(None, "not_found", "No such.")))
    assert bad == {"id": None, "status": "error", "message": "No such.", "result": None,
                   "code": "not_found"}
    assert encode_message(ok).endswith(b"\n") and encode_message(ok).count(b"\n") == 1
