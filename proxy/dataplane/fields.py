"""The request's header fields as routing reads them: lower-case str names to str values.

`LazyHeaders` builds that mapping on first read, so a table whose rules read no header (a
plain weighted split) never pays for it. It is a native class in the compiled build (made
once per request, it costs an allocation, not an interpreted `__init__`), registered as a
`Mapping` rather than inheriting one, which a native class cannot.
"""

from __future__ import annotations

from collections.abc import ItemsView, Iterator, KeysView, Mapping, ValuesView
from typing import Any

from proxy import headers as hdr


def header_dict(headers: list[hdr.Header]) -> dict[str, str]:
    """Lower-case name -> value (repeated fields joined with ", "), as routing reads them."""
    out: dict[str, str] = {}
    for lname, _, value in headers:
        name = lname.decode("latin-1")
        v = value.decode("latin-1")
        out[name] = out[name] + ", " + v if name in out else v
    return out


class LazyHeaders:
    """`header_dict` of the request's fields, built on first use; reads as a Mapping."""

    __slots__ = ("_raw", "_d")

    def __init__(self, raw: list[hdr.Header]) -> None:
        self._raw = raw
        self._d: dict[str, str] | None = None

    def _dict(self) -> dict[str, str]:
        d = self._d
        if d is None:
            d = self._d = header_dict(self._raw)
        return d

    def get(self, key: str, default: Any = None) -> Any:
        return self._dict().get(key, default)

    def __getitem__(self, key: str) -> str:
        return self._dict()[key]

    def __contains__(self, key: object) -> bool:
        return key in self._dict()

    def __iter__(self) -> Iterator[str]:
        return iter(self._dict())

    def __len__(self) -> int:
        return len(self._dict())

    def keys(self) -> KeysView[str]:
        return self._dict().keys()

    def items(self) -> ItemsView[str, str]:
        return self._dict().items()

    def values(self) -> ValuesView[str]:
        return self._dict().values()


Mapping.register(LazyHeaders)


def as_mapping(raw: list[hdr.Header]) -> Mapping[str, str]:
    """A LazyHeaders, typed as the Mapping it reads as."""
    return LazyHeaders(raw)  # type: ignore[return-value]
