"""Fuzzing the control API's JSON bodies, path keys and query parameters (issue 9, hostile
input): hypothesis drives the real aiohttp app (`make_app`) over a `FakeDirector` through an
aiohttp test server, and every answer must be a JSON object; every refusal a 4xx `Error`
that says what is wrong (`message`) and where (`where`: `body:LINE:COL`, `body.FIELD...`,
`path.vs`, `query.NAME`), never a 500 and never a traceback.

The default run is bounded (a few hundred examples, seconds); `--run-soak` runs the same
properties with many more examples (tools/reliability.sh passes it).
"""

from __future__ import annotations

import asyncio
import json
import string
from collections.abc import Coroutine, Iterator
from typing import Any
from urllib.parse import quote

import pytest
from aiohttp.test_utils import TestClient, TestServer
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from hactl.api.client import real_server_path
from hactl.api.operations import Operations
from hactl.api.overrides import MESSAGE_TYPE, MESSAGE_VERSION, OverrideStore
from hactl.api.server import MAX_BODY, make_app
from hactl.clock import LoopClock
from tests.shell.api.api_support import RS1, RS3, TOKEN, VS, VS_TEXT, make_director
from tests.testbed import record
from tests.testbed.load import Summary

pytestmark = pytest.mark.timeout(600)

AUTH = {"Authorization": f"Bearer {TOKEN}"}
RS1_PATH = real_server_path(VS, RS1)
RS3_PATH = real_server_path(VS, RS3)
ERROR_CODES = {
    "bad_request",
    "not_found",
    "method_not_allowed",
    "body_too_large",
    "unsupported_media_type",
}

# (method, path, body fields the handler reads): every route that takes a body.
BODY_ROUTES: list[tuple[str, str, tuple[str, ...]]] = [
    ("POST", RS1_PATH + "/drain", ("wait", "timeout", "expire_templates", "remove")),
    ("POST", RS3_PATH + "/drain", ("wait", "timeout", "expire_templates", "remove")),
    ("POST", RS1_PATH + "/enable", ()),
    ("POST", RS1_PATH + "/disable", ("reason",)),
    ("PUT", RS1_PATH + "/weight", ("weight", "reason")),
    ("POST", "/api/v1/reload", ("dry_run",)),
    ("POST", "/api/v1/peer/overrides", ("type", "version", "origin", "entries")),
]

FAST = settings(
    max_examples=150,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
LONG = settings(FAST, max_examples=2000)


# ---- strategies ------------------------------------------------------------------------

_scalars = (
    st.none()
    | st.booleans()
    | st.integers()
    | st.integers(-(10**400), 10**400)
    | st.floats(allow_nan=True, allow_infinity=True)
    | st.text(max_size=40)
)
json_values = st.recursive(
    _scalars,
    lambda inner: (
        st.lists(inner, max_size=5) | st.dictionaries(st.text(max_size=12), inner, max_size=5)
    ),
    max_leaves=20,
)


def _dump(value: Any) -> bytes:
    # allow_nan: Python's json accepts NaN/Infinity, so a hostile client can send them.
    try:
        return json.dumps(value, allow_nan=True).encode()
    except ValueError:  # ints beyond the str conversion limit
        return b"1" * 5000


def _nested(depth: int) -> bytes:
    return b"[" * depth + b"]" * depth


def _entry(draw: st.DrawFn) -> Any:
    """A peer-message entry: mostly well-formed, with one field replaced by anything."""
    entry: dict[str, Any] = {
        "vs": VS_TEXT,
        "rs": f"{RS1[0]}:{RS1[1]}",
        "override": {"kind": "drain", "reason": ""},
        "updated_at": 1_700_000_000.0,
        "origin": "lb2",
        "drain": {
            "timeout": None,
            "expire_templates": False,
            "remove": True,
            "started_at": 1_700_000_000.0,
            "outcome": None,
        },
    }
    key = draw(
        st.sampled_from(
            [
                *entry,
                "override.kind",
                "override.weight",
                "drain.timeout",
                "drain.outcome",
                "drain.started_at",
                None,
            ]
        )
    )
    if key is None:
        return draw(json_values)
    value = draw(json_values | st.sampled_from(["drain", "weight", "disable", "bogus"]))
    if "." in key:
        outer, inner = key.split(".")
        if isinstance(entry[outer], dict):
            entry[outer][inner] = value
    elif draw(st.booleans()):
        entry[key] = value
    else:
        del entry[key]
    return entry


@st.composite
def bodies(draw: st.DrawFn, fields: tuple[str, ...]) -> bytes:
    kind = draw(st.sampled_from(["fields", "fields", "fields", "json", "bytes", "text", "deep"]))
    if kind == "bytes":
        return draw(st.binary(max_size=200))
    if kind == "text":
        return draw(st.text(alphabet=string.printable, max_size=80)).encode()
    if kind == "deep":
        return _nested(draw(st.integers(1, 30_000)))
    if kind == "json" or not fields:
        return _dump(draw(json_values))
    doc: dict[str, Any] = {}
    if "type" in fields:  # a peer message: mostly the right envelope
        doc = {
            "type": MESSAGE_TYPE,
            "version": MESSAGE_VERSION,
            "origin": "lb2",
            "entries": [_entry(draw) for _ in range(draw(st.integers(0, 3)))],
        }
    for name in draw(st.lists(st.sampled_from([*fields, "unknown"]), max_size=4)):
        doc[name] = draw(json_values)
    return _dump(doc)


_segment = st.text(alphabet=string.ascii_letters + string.digits + ":.[]%-_ ", max_size=30)
path_keys = st.one_of(
    _segment,
    st.builds(
        lambda p, a, n: f"{p}:{a}:{n}",
        st.sampled_from(["tcp", "udp", "sctp", "TCP", "x"]),
        st.sampled_from(["10.0.0.1", "[::1]", "::1", "10.0.0.256", "[10.0.0.1]", ""]),
        st.sampled_from(["80", "0", "65535", "65536", "-1", "", "1e3", "٣"]),
    ),
    st.builds(
        lambda p, n: f"{p}:{n}",
        st.sampled_from(["fwm", "fwm6", "FWM"]),
        st.sampled_from(["0", "1", "4294967295", "4294967296", "", "x"]),
    ),
)


# ---- the app ---------------------------------------------------------------------------


class Fuzzer:
    """The app on an aiohttp test server in a private event loop; `request` is synchronous
    so hypothesis can drive it."""

    def __init__(self) -> None:
        self.loop = asyncio.new_event_loop()
        self.director = make_director()
        self.ops = Operations(
            self.director,
            OverrideStore("lb1"),
            clock=LoopClock(),
            wall=lambda: 1_700_000_100.0,
            state_path=None,
            poll_interval=0.01,
        )
        # Over TCP, with the token: refusals are about the input, not the credentials.
        app = make_app(self.ops, token=TOKEN, poll_interval=0.01)
        self.client = TestClient(TestServer(app), loop=self.loop)
        self.run(self.client.start_server())
        self.requests = 0
        self.statuses: dict[int, int] = {}

    def run(self, coro: Coroutine[Any, Any, Any]) -> Any:
        return self.loop.run_until_complete(asyncio.wait_for(coro, 30))

    def request(self, method: str, path: str, body: bytes | None) -> tuple[int, str, bytes]:
        async def go() -> tuple[int, str, bytes]:
            async with self.client.request(method, path, data=body, headers=AUTH) as r:
                return r.status, r.content_type, await r.read()

        self.requests += 1
        status, ctype, raw = self.run(go())
        self.statuses[status] = self.statuses.get(status, 0) + 1
        return status, ctype, raw

    def record(self, scenario: str) -> None:
        """The run's line in the reliability table (only reached when every answer passed)."""
        statuses = ", ".join(f"{n}x{code}" for code, n in sorted(self.statuses.items()))
        record(
            scenario,
            Summary(self.requests, 0, 0.0, ()),
            bound="no_5xx,_4xx_says_where",
            passed=True,
            detail=f"{self.requests} requests: {statuses}",
        )

    def close(self) -> None:
        self.run(self.ops.aclose())
        self.run(self.client.close())
        self.loop.close()


@pytest.fixture
def fuzzer() -> Iterator[Fuzzer]:
    f = Fuzzer()
    try:
        yield f
    finally:
        f.close()


def check_answer(status: int, ctype: str, raw: bytes, *, what: str) -> dict[str, Any] | None:
    """The invariants every answer keeps; returns the error object of a refusal."""
    assert status < 500, (what, status, raw[:300])
    if 200 <= status < 300:
        assert ctype in ("application/json", "application/x-ndjson"), (what, ctype)
        for line in raw.splitlines():
            json.loads(line)
        return None
    assert 400 <= status < 500, (what, status)
    assert ctype == "application/json", (what, ctype, raw[:200])
    doc = json.loads(raw)
    err = doc["error"]
    assert err["status"] == status and err["code"] in ERROR_CODES, (what, err)
    message = err["message"]
    assert isinstance(message, str) and message.strip(), (what, err)
    for leak in ("Traceback", 'File "', "Error(", "object at 0x"):
        assert leak not in message, (what, err)
    if err["code"] == "bad_request":
        where = err.get("where")
        assert isinstance(where, str) and where, ("bad_request without where", what, err)
        assert where.split(".")[0].split(":")[0] in ("body", "path", "query"), (what, err)
    return dict(err)


def _body_property(fuzzer: Fuzzer, route: int, body: bytes) -> None:
    method, path, _ = BODY_ROUTES[route]
    status, ctype, raw = fuzzer.request(method, path, body)
    err = check_answer(status, ctype, raw, what=f"{method} {path} {body[:80]!r}")
    if err is not None and err["code"] == "bad_request":
        where = err["where"]
        assert where.startswith("body"), (body[:80], err)
        field = where.partition(".")[2].split(".")[0].split("[")[0]
        if field:  # the message names the field it is about
            assert field in err["message"], err


def _route_and_body() -> st.SearchStrategy[tuple[int, bytes]]:
    return st.integers(0, len(BODY_ROUTES) - 1).flatmap(
        lambda i: st.tuples(st.just(i), bodies(BODY_ROUTES[i][2]))
    )


def _path_property(fuzzer: Fuzzer, method: str, suffix: str, vs: str, rs: str) -> None:
    path = (
        f"/api/v1/virtual-servers/{quote(vs, safe=':[]')}"
        f"/real-servers/{quote(rs, safe=':[]')}{suffix}"
    )
    status, ctype, raw = fuzzer.request(method, path, b"{}" if method != "GET" else None)
    check_answer(status, ctype, raw, what=f"{method} {path}")


_PATHS = st.tuples(
    st.sampled_from(
        [
            ("GET", ""),
            ("POST", "/drain"),
            ("GET", "/drain"),
            ("DELETE", "/drain"),
            ("POST", "/enable"),
            ("POST", "/disable"),
            ("PUT", "/weight"),
        ]
    ),
    path_keys | st.just(VS_TEXT),
    path_keys | st.just(f"{RS1[0]}:{RS1[1]}"),
)

_QUERIES = st.dictionaries(
    st.sampled_from(["view", "format", "exact", "nosort", "service", "persistent_conn", "x"]),
    st.text(alphabet=string.ascii_letters + string.digits + ":.[]-", max_size=20),
    max_size=4,
)


def _query_property(fuzzer: Fuzzer, query: dict[str, str]) -> None:
    status, ctype, raw = fuzzer.request(
        "GET", "/api/v1/ipvs/text?" + "&".join(f"{k}={quote(v)}" for k, v in query.items()), None
    )
    if status == 200:
        assert ctype == "text/plain"
        return
    check_answer(status, ctype, raw, what=f"ipvs/text {query}")


# ---- default (bounded) run -------------------------------------------------------------


def _fuzz_bodies(fuzzer: Fuzzer, run: settings, name: str) -> None:
    @run
    @given(_route_and_body())
    def prop(case: tuple[int, bytes]) -> None:
        _body_property(fuzzer, *case)

    prop()
    fuzzer.record(name)


def _fuzz_paths_and_queries(
    fuzzer: Fuzzer, *, paths_run: settings, queries_run: settings, name: str
) -> None:
    @paths_run
    @given(_PATHS)
    def paths(case: tuple[tuple[str, str], str, str]) -> None:
        (method, suffix), vs, rs = case
        _path_property(fuzzer, method, suffix, vs, rs)

    @queries_run
    @given(_QUERIES)
    def queries(query: dict[str, str]) -> None:
        _query_property(fuzzer, query)

    paths()
    queries()
    fuzzer.record(name)


def test_fuzz_bodies(fuzzer: Fuzzer) -> None:
    _fuzz_bodies(fuzzer, FAST, "api_fuzz_bodies")


def test_fuzz_path_keys_and_queries(fuzzer: Fuzzer) -> None:
    _fuzz_paths_and_queries(
        fuzzer,
        paths_run=settings(FAST, max_examples=80),
        queries_run=settings(FAST, max_examples=60),
        name="api_fuzz_paths_queries",
    )


def test_known_hostile_bodies(fuzzer: Fuzzer) -> None:
    """The cases that once answered 500, kept as a table (each must be a 400 with where)."""
    cases: list[tuple[str, str, bytes, str]] = [
        ("POST", RS1_PATH + "/drain", _nested(20_000), "body"),
        ("POST", RS1_PATH + "/drain", b'{"timeout": ' + b"9" * 400 + b"}", "body.timeout"),
        ("PUT", RS1_PATH + "/weight", b'{"weight": ' + b"9" * 400 + b"}", "body.weight"),
        ("POST", RS1_PATH + "/drain", b'{"timeout": "soon"}', "body.timeout"),
        ("POST", RS1_PATH + "/drain", b'{"timeout": NaN}', "body.timeout"),
        ("POST", RS1_PATH + "/drain", b'{"wait": 1}', "body.wait"),
        ("POST", RS1_PATH + "/drain", b'{"wait": tru}', "body:1:10"),
        ("POST", RS1_PATH + "/drain", b"\xff\xfe{}", "body"),
        ("POST", "/api/v1/reload", b"[]", "body"),
        ("POST", "/api/v1/peer/overrides", _nested(20_000), "body"),
        (
            "POST",
            "/api/v1/peer/overrides",
            json.dumps(
                {
                    "type": MESSAGE_TYPE,
                    "version": MESSAGE_VERSION,
                    "origin": "lb2",
                    "entries": [{"vs": VS_TEXT}],
                }
            ).encode(),
            "body.entries[0]",
        ),
        (
            "POST",
            "/api/v1/peer/overrides",
            json.dumps(
                {
                    "type": MESSAGE_TYPE,
                    "version": MESSAGE_VERSION,
                    "origin": "lb2",
                    "entries": [
                        {
                            "vs": VS_TEXT,
                            "rs": "10.0.1.2:80",
                            "override": None,
                            "updated_at": 1.0,
                            "origin": "lb2",
                            "drain": [1],
                        }
                    ],
                }
            ).encode(),
            "body.entries[0]",
        ),
    ]
    for method, path, body, where in cases:
        status, ctype, raw = fuzzer.request(method, path, body)
        err = check_answer(status, ctype, raw, what=f"{method} {path} {body[:60]!r}")
        assert err is not None and status == 400, (body[:60], status, raw[:200])
        assert err["where"].startswith(where), (body[:60], err)
    # Just over the limit: 413 with JSON, before anything is parsed.
    status, ctype, raw = fuzzer.request("POST", RS1_PATH + "/drain", b" " * (MAX_BODY + 1))
    err = check_answer(status, ctype, raw, what="too large")
    assert status == 413 and err is not None


# ---- soak (long) run -------------------------------------------------------------------


@pytest.mark.soak
def test_fuzz_bodies_long(fuzzer: Fuzzer) -> None:
    _fuzz_bodies(fuzzer, LONG, "api_fuzz_bodies_long")


@pytest.mark.soak
def test_fuzz_path_keys_and_queries_long(fuzzer: Fuzzer) -> None:
    _fuzz_paths_and_queries(
        fuzzer, paths_run=LONG, queries_run=LONG, name="api_fuzz_paths_queries_long"
    )
