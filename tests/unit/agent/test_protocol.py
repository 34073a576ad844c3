"""The wire format: every bad line becomes a ProtocolError with a class, never a crash."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from agent import protocol


def test_a_request_round_trips() -> None:
    line = protocol.request("freeze", {"label": "nightly"}, id=7)
    req = protocol.parse_request(line)
    assert (req.execute, req.arguments, req.id) == ("freeze", {"label": "nightly"}, 7)


@pytest.mark.parametrize(
    "line, error_class",
    [
        (b"not json", protocol.BAD_REQUEST),
        (b"[1, 2]", protocol.BAD_REQUEST),
        (b'{"arguments": {}}', protocol.BAD_REQUEST),
        (b'{"execute": 5}', protocol.BAD_REQUEST),
        (b'{"execute": "ping", "arguments": []}', protocol.BAD_REQUEST),
        (b'{"execute": "ping", "extra": 1}', protocol.BAD_REQUEST),
        (b'{"execute": "reboot"}', protocol.UNKNOWN_COMMAND),
        (b"\xff\xfe", protocol.BAD_REQUEST),
        (b'{"execute": "' + b"a" * protocol.MAX_LINE + b'"}', protocol.LINE_TOO_LONG),
    ],
)
def test_bad_lines_get_a_named_error_class(line: bytes, error_class: str) -> None:
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.parse_request(line)
    assert err.value.error_class == error_class


@given(st.binary(max_size=300))
def test_arbitrary_bytes_never_escape_as_another_exception(data: bytes) -> None:
    try:
        protocol.parse_request(data)
    except protocol.ProtocolError:
        pass


@given(
    st.recursive(
        st.none() | st.booleans() | st.integers() | st.text(max_size=10),
        lambda c: st.lists(c, max_size=3) | st.dictionaries(st.text(max_size=8), c, max_size=3),
        max_leaves=10,
    )
)
def test_arbitrary_json_never_escapes_as_another_exception(value: object) -> None:
    try:
        protocol.parse_request(json.dumps(value).encode())
    except protocol.ProtocolError:
        pass


def test_replies_are_parsed_and_garbage_is_refused() -> None:
    ok = json.loads(protocol.encode(protocol.success({"a": 1}, 3)))
    assert protocol.parse_reply(json.dumps(ok).encode())["return"] == {"a": 1}
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_reply(b'{"hello": 1}')
    with pytest.raises(protocol.ProtocolError):
        protocol.parse_reply(b'{"error": "x"}')


def test_lines_split_across_reads_come_out_whole_and_blank_lines_are_dropped() -> None:
    lines = protocol.LineBuffer()
    assert lines.feed(b'{"execute": "pi') == []
    assert lines.feed(b'ng"}\n\n  \n{"execute": "status"}\n{"exe') == [
        b'{"execute": "ping"}',
        b'{"execute": "status"}',
    ]
    assert lines.take_rest() == b'{"exe' and lines.take_rest() == b""


def test_a_line_longer_than_the_limit_is_refused_whole_or_in_pieces() -> None:
    lines = protocol.LineBuffer(limit=16)
    with pytest.raises(protocol.ProtocolError) as err:
        lines.feed(b"x" * 17)
    assert err.value.error_class == protocol.LINE_TOO_LONG
    with pytest.raises(protocol.ProtocolError):
        lines.feed(b"y" * 20 + b"\n")
    assert lines.feed(b"ok\n") == [b"ok"]  # what was buffered is gone, the stream goes on


def test_another_command_set_speaks_the_same_format() -> None:
    control = ("ping", "snapshot-create")
    req = protocol.parse_request(b'{"execute": "snapshot-create", "id": 3}', control)
    assert (req.execute, req.id) == ("snapshot-create", 3)
    with pytest.raises(protocol.ProtocolError) as err:
        protocol.parse_request(b'{"execute": "freeze"}', control)
    assert err.value.error_class == protocol.UNKNOWN_COMMAND and "snapshot-create" in err.value.desc


def test_consistency_levels_travel_as_plain_strings() -> None:
    line = protocol.encode({"consistency": protocol.Consistency.APPLICATION})
    assert json.loads(line) == {"consistency": "application"}


def test_endpoints_parse_or_say_what_is_wrong() -> None:
    assert str(protocol.parse_endpoint("unix:/run/a.sock")) == "unix:/run/a.sock"
    ep = protocol.parse_endpoint("vsock:3:5000")
    assert (ep.kind, ep.cid, ep.port) == ("vsock", 3, 5000)
    for bad in ("/run/a.sock", "tcp:1.2.3.4:5", "vsock:3", "vsock:x:1", "unix:"):
        with pytest.raises(protocol.EndpointError, match="unix:PATH|vsock:CID:PORT"):
            protocol.parse_endpoint(bad)


def test_the_ceiling_is_never_taken_above_sixty_seconds() -> None:
    assert protocol.ceiling_of({"ceiling_seconds": 5}) == 5
    assert protocol.ceiling_of({"ceiling_seconds": 600}) == 60
    assert protocol.ceiling_of({}) == 60
