"""Codecs of the probes: DNS, ICMP echo, HTTP/1.x responses, keepalived hex strings."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hactl.checks.wire import (
    _USUAL_HEAD,
    IncompleteResponse,
    WireError,
    _dechunk,
    check_dns_response,
    encode_dns_query,
    encode_echo_request,
    inet_checksum,
    match_reply,
    parse_echo_reply,
    parse_hex_pattern,
    parse_http_response,
    parse_http_status_body,
)


def answer(query: bytes, *, rcode: int = 0, qr: bool = True, qid: int | None = None) -> bytes:
    qid_, flags = struct.unpack_from("!HH", query)
    flags = (flags | (0x8000 if qr else 0) | 0x0080) & 0xFFF0 | rcode
    head = struct.pack("!HHHHHH", qid_ if qid is None else qid, flags, 1, 0, 0, 0)
    return head + query[12:]


class TestDns:
    def test_query_layout(self) -> None:
        q = encode_dns_query(0x1234, "www.example.org", "AAAA")
        assert q[:12] == bytes.fromhex("123401000001000000000000")
        assert q[12:] == b"\x03www\x07example\x03org\x00" + struct.pack("!HH", 28, 1)
        assert encode_dns_query(1, ".", "SOA")[12:] == b"\x00\x00\x06\x00\x01"

    def test_good_answer(self) -> None:
        q = encode_dns_query(7, "example.org", "A")
        check_dns_response(answer(q), q)
        # names compare case-insensitively (RFC 4343)
        check_dns_response(answer(q).replace(b"example", b"EXAMPLE"), q)

    @pytest.mark.parametrize(
        ("mangle", "reason"),
        [
            (lambda q: answer(q, rcode=3), "DNS rcode 3"),
            (lambda q: answer(q, qr=False), "DNS message is not a response"),
            (lambda q: answer(q, qid=99), "DNS id mismatch"),
            (lambda q: answer(q)[:11], "short DNS header"),
            (lambda q: answer(q)[:-3], "DNS question mismatch"),
        ],
    )
    def test_bad_answers(self, mangle, reason: str) -> None:  # type: ignore[no-untyped-def]
        q = encode_dns_query(7, "example.org", "A")
        with pytest.raises(WireError, match=reason):
            check_dns_response(mangle(q), q)

    def test_bad_label(self) -> None:
        with pytest.raises(WireError):
            encode_dns_query(1, "a" * 64 + ".org", "A")


class TestIcmp:
    def test_checksum_of_request_verifies(self) -> None:
        pkt = encode_echo_request(0xBEEF, 3, b"hello", v6=False)
        assert inet_checksum(pkt) == 0
        assert parse_echo_reply(pkt, v6=False, strip_ip=False) == (8, 0xBEEF, 3, b"hello")

    def test_v6_type_and_ip_header_strip(self) -> None:
        pkt = encode_echo_request(1, 2, b"x", v6=True)
        assert pkt[0] == 128
        ip = bytes([0x45]) + bytes(19)
        assert parse_echo_reply(ip + pkt, v6=True, strip_ip=True)[1:3] == (1, 2)
        with pytest.raises(WireError):
            parse_echo_reply(ip[:10], v6=False, strip_ip=True)


class TestHttp:
    RESP = b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nX-A: b\r\n\r\nhello"

    def test_content_length(self) -> None:
        r = parse_http_response(self.RESP + b"trailing", eof=False)
        assert (r.status, r.body) == (200, b"hello")
        assert ("x-a", "b") in r.headers

    def test_byte_at_a_time_is_incomplete_until_the_end(self) -> None:
        for i in range(len(self.RESP)):
            with pytest.raises(IncompleteResponse):
                parse_http_response(self.RESP[:i], eof=False)
            with pytest.raises(WireError):
                parse_http_response(self.RESP[:i], eof=True)
        assert parse_http_response(self.RESP, eof=False).body == b"hello"

    def test_chunked(self) -> None:
        data = (
            b"HTTP/1.1 500 E\r\nTransfer-Encoding: chunked\r\n\r\n"
            b"3;x=y\r\nabc\r\n2\r\nde\r\n0\r\n\r\n"
        )
        r = parse_http_response(data, eof=False)
        assert (r.status, r.body) == (500, b"abcde")
        with pytest.raises(IncompleteResponse):
            parse_http_response(data[:-12], eof=False)

    def test_body_until_close(self) -> None:
        data = b"HTTP/1.0 200 OK\r\n\r\nall of it"
        with pytest.raises(IncompleteResponse):
            parse_http_response(data, eof=False)
        assert parse_http_response(data, eof=True).body == b"all of it"

    def test_head_and_204_have_no_body(self) -> None:
        assert parse_http_response(self.RESP[:-5], eof=False, head=True).body == b""
        assert parse_http_response(b"HTTP/1.1 204 No\r\n\r\n", eof=False).status == 204

    @pytest.mark.parametrize(
        "data", [b"SSH-2.0-x\r\n\r\n", b"HTTP/1.1 abc\r\n\r\n", b"HTTP/1.1 200 OK\r\nbad\r\n\r\n"]
    )
    def test_malformed(self, data: bytes) -> None:
        with pytest.raises(WireError):
            parse_http_response(data, eof=True)

    @given(st.binary(max_size=64))
    def test_never_crashes(self, data: bytes) -> None:
        for eof in (False, True):
            with contextlib.suppress(WireError):
                parse_http_response(data, eof=eof)

    @pytest.mark.parametrize("code", ["\u00b2", "\u00b9\u00b3", "2\u00b3"])
    def test_superscript_status_digits_are_malformed(self, code: str) -> None:
        # str.isdigit accepts these latin-1 characters, int() does not: once a ValueError
        # that escaped the probe
        data = b"HTTP/1.1 " + code.encode("latin-1") + b" OK\r\n\r\n"
        with pytest.raises(WireError, match="bad HTTP status line"):
            parse_http_status_body(data, eof=True)

    @given(
        st.lists(
            st.sampled_from([
                b"HTTP/1.1 200 OK", b"HTTP/1.0 503 X", b"HTTP/1.1 204 N", b"HTTP/1.1 1xx",
                b"Content-Length: 3", b"content-length : 1", b"Content-Length: x",
                b"Transfer-Encoding: chunked", b"X-A: b", b"bad", b"\r\n", b"\r\n\r\n",
                b"2\r\nab\r\n0\r\n\r\n", b"abc", b" \xa0\x85", b":",
                # what the one-match reading of the usual head (_USUAL_HEAD) meets
                b"HTTP/1.1 200", b"HTTP/1.10 200  OK", b"HTTP/1.1 0200 OK",
                b"CONTENT-LENGTH:\t3\t", b"content-length: 02 ", b"Content-Length: 1_0",
                b"Content-Lengthy: 9", b"Transfer-Encoding: gzip", b"X-B:", b"X-C: a\rb",
                b"X-D: a\nb", b"Content-Length:\x0b2",
            ]),
            max_size=8,
        ),
        st.booleans(),
        st.booleans(),
    )
    def test_status_body_agrees_with_a_plain_parse(self, parts: list[bytes], eof: bool,
                                                   head: bool) -> None:
        """The probes' lean parser (and the full one, built on it) give the status and body
        of a plain, header-dict parse, or the same error."""
        data = b"\r\n".join(parts)
        try:
            want = reference_parse(data, eof=eof, head=head)
        except WireError as exc:
            for parse in (parse_http_status_body, parse_http_response):
                with pytest.raises(type(exc)) as got:
                    parse(data, eof=eof, head=head)
                assert str(got.value) == str(exc)
        else:
            assert parse_http_status_body(data, eof=eof, head=head) == want
            full = parse_http_response(data, eof=eof, head=head)
            assert (full.status, full.body) == want


@pytest.mark.parametrize("data", [
    b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 12\r\n\r\nbackend ok\r\n",
    b"HTTP/1.1 200 OK\r\nServer: nginx/1.24.0\r\nDate: Sun, 22 Nov 2026 12:00:00 GMT\r\n"
    b"Content-Type: text/html\r\nContent-Length: 10\r\nConnection: close\r\n"
    b"ETag: \"6560-a\"\r\n\r\nbackend ok",
    b"HTTP/1.1 503 Service Unavailable\r\ncontent-length: 0\r\n\r\n",
    b"HTTP/1.0 200 OK\r\n\r\nuntil close",
])
def test_usual_heads_take_the_one_match_path(data: bytes) -> None:
    """The answers of common servers are read by `_USUAL_HEAD`, not line by line, and both
    readings agree."""
    assert _USUAL_HEAD.match(data) is not None
    for eof in (False, True):
        try:
            want: tuple[int, bytes] | str = reference_parse(data, eof=eof, head=False)
        except WireError as exc:
            want = repr(exc)
        try:
            got: tuple[int, bytes] | str = parse_http_status_body(data, eof=eof)
        except WireError as exc:
            got = repr(exc)
        assert got == want


def reference_parse(data: bytes, *, eof: bool, head: bool) -> tuple[int, bytes]:
    """RFC 9112 framing the plain way: every header into a dict, then decide (the parser's
    earlier shape, with int() guarded)."""
    end = data.find(b"\r\n\r\n")
    if end < 0:
        raise (WireError if eof else IncompleteResponse)(
            "truncated HTTP header" if eof else "header")
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1.") or not parts[1].isdigit():
        raise WireError("bad HTTP status line")
    try:
        status = int(parts[1])
    except ValueError:
        raise WireError("bad HTTP status line") from None
    fields = {}
    for line in lines[1:]:
        name, sep, value = line.partition(":")
        if not sep:
            raise WireError("bad HTTP header line")
        fields[name.strip().lower()] = value.strip()
    rest = data[end + 4:]
    if head or status in (204, 304) or 100 <= status < 200:
        return status, b""
    try:
        if "chunked" in fields.get("transfer-encoding", "").lower():
            body = _dechunk(rest)
        elif "content-length" in fields:
            length = int(fields["content-length"])
            if len(rest) < length:
                raise IncompleteResponse("body")
            body = rest[:length]
        elif eof:
            body = rest
        else:
            raise IncompleteResponse("body until close")
    except IncompleteResponse:
        if eof:
            raise WireError("truncated HTTP body") from None
        raise
    except ValueError as exc:
        raise WireError(f"bad HTTP framing: {exc}") from None
    return status, body


class TestHex:
    def test_man_page_example(self) -> None:
        data, mask = parse_hex_pattern("Ab12f 3 456 546443123")
        assert data == bytes.fromhex("AB120F03450654644312 03".replace(" ", ""))
        assert mask == b"\xff" * len(data)

    def test_wildcards(self) -> None:
        data, mask = parse_hex_pattern("4x xX")
        assert (data, mask) == (b"\x40\x00", b"\xf0\x00")
        assert match_reply(b"\x4f\x99", data, mask)
        assert not match_reply(b"\x5f\x99", data, mask)
        # compared up to the shorter length
        assert match_reply(b"\x41", data, mask)

    def test_bad_digit(self) -> None:
        with pytest.raises(WireError):
            parse_hex_pattern("zz")
