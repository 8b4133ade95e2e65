"""Codecs of the probes: DNS, ICMP echo, HTTP/1.x responses, keepalived hex strings."""

from __future__ import annotations

import contextlib
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from hactl.checks.wire import (
    IncompleteResponse,
    WireError,
    check_dns_response,
    encode_dns_query,
    encode_echo_request,
    inet_checksum,
    match_reply,
    parse_echo_reply,
    parse_hex_pattern,
    parse_http_response,
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
