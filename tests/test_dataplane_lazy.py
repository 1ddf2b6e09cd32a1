"""Request headers as routing reads them: built only when a rule reads one (no sockets)."""

from __future__ import annotations

from proxy import headers as hdr
from proxy.dataplane.exchange import _nominated
from proxy.dataplane.types import LazyHeaders, header_dict

RAW = [
    (b"host", b"Host", b"example"),
    (b"x-tenant", b"X-Tenant", b"a"),
    (b"cookie", b"Cookie", b"v=1"),
    (b"x-tenant", b"x-tenant", b"b"),
]


def test_lazy_headers_read_like_the_dict_routing_gets() -> None:
    lazy = LazyHeaders(RAW)
    assert lazy.get("x-tenant") == "a, b"  # repeated fields joined, as header_dict does
    assert lazy.get("missing") is None
    assert lazy.get("missing", "d") == "d"
    assert lazy["cookie"] == "v=1"
    assert "host" in lazy and "Host" not in lazy
    assert dict(lazy) == header_dict(RAW)
    assert len(lazy) == 3


def test_lazy_headers_build_nothing_until_read() -> None:
    lazy = LazyHeaders(RAW)
    assert lazy._d is None
    lazy.get("host")
    assert lazy._d == header_dict(RAW)


def test_nominated_cache_answers_as_the_rule() -> None:
    for values in ([b"keep-alive"], [b"close, X-Secret"], [b"Host, te", b"x-a"]):
        assert _nominated(values) == hdr.nominated(values)
        assert _nominated(list(values)) == hdr.nominated(values)  # from the cache
