"""Codecs the probes speak, as pure functions: DNS queries/responses (RFC 1035 §4.1),
ICMP/ICMPv6 echo (RFC 792, RFC 4443 §4), HTTP/1.x responses (RFC 9112 §4-§7), and
keepalived's free-form hex strings (UDP_CHECK payload / require_reply).

Decoders raise `WireError` (a ValueError) with a short reason; they never read past the
buffer. No I/O, no sockets.
"""

from __future__ import annotations

import re
import struct
from dataclasses import dataclass

__all__ = [
    "DNS_TYPES",
    "HttpResponse",
    "IncompleteResponse",
    "WireError",
    "check_dns_response",
    "encode_dns_query",
    "encode_echo_request",
    "inet_checksum",
    "match_reply",
    "parse_echo_reply",
    "parse_hex_pattern",
    "parse_http_response",
    "parse_http_status_body",
]

# RFC 1035 §3.2.2 and RFC 3596 §2.1 (AAAA).
DNS_TYPES = {"A": 1, "NS": 2, "CNAME": 5, "SOA": 6, "MX": 15, "TXT": 16, "AAAA": 28}
_DNS_HEADER = struct.Struct("!HHHHHH")


class WireError(ValueError):
    """Bytes that do not decode; `args[0]` is a short reason."""


class IncompleteResponse(WireError):
    """More bytes are needed (the HTTP response is not complete yet)."""


# -- DNS -------------------------------------------------------------------------------------


def _encode_name(name: str) -> bytes:
    name = name.rstrip(".")
    out = bytearray()
    if name:
        for label in name.split("."):
            raw = label.encode("idna") if not label.isascii() else label.encode("ascii")
            if not 0 < len(raw) < 64:
                raise WireError(f"bad DNS label {label!r}")
            out.append(len(raw))
            out += raw
    out.append(0)
    if len(out) > 255:
        raise WireError("DNS name too long")
    return bytes(out)


def encode_dns_query(query_id: int, name: str, qtype: str) -> bytes:
    """A recursion-desired query for (name, qtype, IN) (RFC 1035 §4.1.1-§4.1.2)."""
    header = _DNS_HEADER.pack(query_id & 0xFFFF, 0x0100, 1, 0, 0, 0)
    return header + _encode_name(name) + struct.pack("!HH", DNS_TYPES[qtype], 1)


def check_dns_response(data: bytes, query: bytes) -> None:
    """Accept `data` as the answer to `query` or raise WireError saying why not.

    Checked: same id, QR set, same opcode, RCODE NOERROR (RFC 1035 §4.1.1), and the
    question section echoed unchanged.
    """
    if len(data) < _DNS_HEADER.size:
        raise WireError("short DNS header")
    qid, flags, qdcount, _, _, _ = _DNS_HEADER.unpack_from(data)
    want_id, want_flags, _, _, _, _ = _DNS_HEADER.unpack_from(query)
    if qid != want_id:
        raise WireError("DNS id mismatch")
    if not flags & 0x8000:
        raise WireError("DNS message is not a response")
    if (flags >> 11) & 0xF != (want_flags >> 11) & 0xF:
        raise WireError("DNS opcode mismatch")
    rcode = flags & 0xF
    if rcode:
        raise WireError(f"DNS rcode {rcode}")
    question = query[_DNS_HEADER.size:]
    if qdcount != 1 or data[_DNS_HEADER.size:_DNS_HEADER.size + len(question)].lower() != (
        question.lower()
    ):
        raise WireError("DNS question mismatch")


# -- ICMP ------------------------------------------------------------------------------------


def inet_checksum(data: bytes) -> int:
    """The Internet checksum (RFC 1071)."""
    if len(data) % 2:
        data += b"\0"
    total: int = sum(struct.unpack(f"!{len(data) // 2}H", data))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def encode_echo_request(ident: int, seq: int, payload: bytes, *, v6: bool) -> bytes:
    """ICMP echo request (type 8) or ICMPv6 (type 128, checksum left to the kernel)."""
    kind = 128 if v6 else 8
    head = struct.pack("!BBHHH", kind, 0, 0, ident & 0xFFFF, seq & 0xFFFF)
    if v6:
        return head + payload
    csum = inet_checksum(head + payload)
    return struct.pack("!BBHHH", kind, 0, csum, ident & 0xFFFF, seq & 0xFFFF) + payload


def parse_echo_reply(data: bytes, *, v6: bool, strip_ip: bool) -> tuple[int, int, int, bytes]:
    """(type, ident, seq, payload) of an ICMP message; `strip_ip` skips an IPv4 header
    (raw IPv4 sockets deliver it)."""
    if strip_ip:
        if len(data) < 20:
            raise WireError("short IPv4 header")
        data = data[(data[0] & 0x0F) * 4:]
    if len(data) < 8:
        raise WireError("short ICMP message")
    kind, _, _, ident, seq = struct.unpack_from("!BBHHH", data)
    return kind, ident, seq, data[8:]


# -- HTTP ------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class HttpResponse:
    status: int
    headers: tuple[tuple[str, str], ...]
    body: bytes


def _dechunk(data: bytes) -> bytes:
    body = bytearray()
    pos = 0
    while True:
        end = data.find(b"\r\n", pos)
        if end < 0:
            raise IncompleteResponse("chunk size")
        size_text = data[pos:end].split(b";", 1)[0].strip()
        try:
            size = int(size_text, 16)
        except ValueError:
            raise WireError("bad chunk size") from None
        pos = end + 2
        if size == 0:
            return bytes(body)
        if len(data) < pos + size + 2:
            raise IncompleteResponse("chunk data")
        body += data[pos:pos + size]
        pos += size + 2


def parse_http_response(data: bytes, *, eof: bool, head: bool = False) -> HttpResponse:
    """Parse a complete HTTP/1.x response from `data`.

    Raises IncompleteResponse while more bytes are needed (`eof` False) and WireError for a
    malformed or (at `eof`) truncated response. The body is delimited by chunked encoding,
    Content-Length, or the end of the connection (RFC 9112 §6.3).
    """
    headers: list[tuple[str, str]] = []
    status, body = _parse_http(data, eof, head, headers)
    return HttpResponse(status, tuple(headers), body)


def _nocase(word: bytes) -> bytes:
    """A pattern matching `word` in any letter case (no re.IGNORECASE: it slows the whole
    match down, and only two names need it)."""
    return b"".join(b"[%c%c]" % (c, c ^ 0x20) if 0x61 <= c <= 0x7A else re.escape(bytes([c]))
                    for c in word)


_CONTENT_LENGTH = _nocase(b"content-length:")
# The usual response head, in one match: a status line; header lines that are a token, a
# colon and a value without CR or LF; Content-Length (any case, digits between spaces or
# tabs) captured, the last one winning as in `_parse_http` (a repeated group keeps its last
# capture); no Transfer-Encoding. Whatever this accepts, `_parse_http` reads the same way
# (tests/unit/checks/test_checks_wire.py compares them); everything else goes to it.
_USUAL_HEAD = re.compile(
    rb"HTTP/1\.[^ \r\n]* ([0-9]+)(?: [^\r\n]*)?\r\n"
    rb"(?:(?:" + _CONTENT_LENGTH + rb"[ \t]*([0-9]+)[ \t]*"
    rb"|(?!" + _CONTENT_LENGTH + rb"|" + _nocase(b"transfer-encoding:") + rb")"
    rb"[-!#$%&'*+.^_`|~0-9A-Za-z]+:[^\r\n]*)\r\n)*"
    rb"\r\n"
)


def parse_http_status_body(data: bytes, *, eof: bool, head: bool = False) -> tuple[int, bytes]:
    """`parse_http_response` without the header list: (status, body), the same errors.

    What the probes need (status_code, digest and regex look at nothing else); it skips
    building a tuple per header line and the response object, and reads the usual head
    (`_USUAL_HEAD`) in one regular-expression match instead of line by line: about a
    quarter of the parse on a typical health-check answer.
    """
    m = _USUAL_HEAD.match(data)
    if m is None:
        return _parse_http(data, eof, head, None)
    status = int(m[1])
    if head or status in (204, 304) or 100 <= status < 200:
        return status, b""
    start = m.end()
    length = m[2]
    if length is not None:
        stop = start + int(length)
        if len(data) >= stop:
            return status, data[start:stop]
        if eof:
            raise WireError("truncated HTTP body")
        raise IncompleteResponse("body")
    if eof:
        return status, data[start:]
    raise IncompleteResponse("body until close")


def _parse_http(data: bytes, eof: bool, head: bool,
                headers: list[tuple[str, str]] | None) -> tuple[int, bytes]:
    end = data.find(b"\r\n\r\n")
    if end < 0:
        if eof:
            raise WireError("truncated HTTP header")
        raise IncompleteResponse("header")
    lines = data[:end].decode("latin-1").split("\r\n")
    parts = lines[0].split(" ", 2)
    # isascii: str.isdigit also accepts latin-1 superscripts, which int() refuses
    code = parts[1] if len(parts) > 1 else ""
    if not parts[0].startswith("HTTP/1.") or not (code.isascii() and code.isdigit()):
        raise WireError("bad HTTP status line")
    status = int(code)
    # Only the framing fields matter (RFC 9112 §6.3); the last of a repeated one wins.
    length: str | None = None
    coding = ""
    for i in range(1, len(lines)):
        name, sep, value = lines[i].partition(":")
        if not sep:
            raise WireError("bad HTTP header line")
        name = name.strip().lower()
        value = value.strip()
        if headers is not None:
            headers.append((name, value))
        if name == "content-length":
            length = value
        elif name == "transfer-encoding":
            coding = value
    if head or status in (204, 304) or 100 <= status < 200:
        return status, b""
    rest = data[end + 4:]
    try:
        if "chunked" in coding.lower():
            body = _dechunk(rest)
        elif length is not None:
            size = int(length)
            if len(rest) < size:
                raise IncompleteResponse("body")
            body = rest[:size]
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


# -- keepalived hex strings -------------------------------------------------------------------


def parse_hex_pattern(text: str) -> tuple[bytes, bytes]:
    """(bytes, mask) of a keepalived HEX_STR (man 5 keepalived.conf, UDP_CHECK).

    Whitespace separates groups; each group is read two digits at a time with a lone last
    digit standing for one byte ("Ab12f 3" -> AB 12 0F 03). X/x digits match anything: their
    mask bits are 0.
    """
    data = bytearray()
    mask = bytearray()
    for group in text.split():
        if len(group) % 2:
            group = group[:-1] + "0" + group[-1]
        for i in range(0, len(group), 2):
            byte = 0
            bits = 0
            for ch in group[i:i + 2]:
                byte <<= 4
                bits <<= 4
                if ch in "xX":
                    continue
                try:
                    byte |= int(ch, 16)
                except ValueError:
                    raise WireError(f"bad hex digit {ch!r}") from None
                bits |= 0xF
            data.append(byte)
            mask.append(bits)
    return bytes(data), bytes(mask)


def match_reply(reply: bytes, pattern: bytes, mask: bytes | None) -> bool:
    """Whether `reply` matches `pattern` over the shorter of the two lengths."""
    for i in range(min(len(reply), len(pattern))):
        m = 0xFF if mask is None else mask[i]
        if (reply[i] ^ pattern[i]) & m:
            return False
    return True
