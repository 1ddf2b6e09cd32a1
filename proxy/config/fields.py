"""Field readers for config validation: each checks one value and records its error by path.

Pure: no YAML, no I/O. A reader is `read(ctx, value, path) -> parsed value | BAD`; BAD
means the error is already in `ctx.errors`, so callers only drop the value and go on,
which is how one pass reports every error in the file. Readers compose: `refine` adds a
check, `mapped` a conversion, `record` builds a dataclass from a mapping of readers.
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import re
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from proxy.config import schema as s
from proxy.routing.regex import regex_error

Error = tuple[str, str]
Lines = Callable[[str], int | None] | Mapping[str, int] | None


class _Bad:
    """Marks a value that failed validation (its error is already recorded)."""


BAD: Any = _Bad()

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h)")
_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0}
_TOKEN = re.compile(r"^[!#$%&'*+\-.^_`|~0-9A-Za-z]+$")
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]*$")
_ENV = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
_HOST = re.compile(r"^[A-Za-z0-9_]([A-Za-z0-9_.\-]*[A-Za-z0-9_])?$")
_URL = re.compile(r"^https?://[^\s/]+")


def parse_duration(value: object) -> float:
    """`500ms`, `2s`, `1m`, `1h`, `1m30s` or a bare number of seconds -> float seconds >= 0.

    Raises ValueError with a message for the user.
    """
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError("must be a duration like 500ms, 2s, 1m30s")
    if isinstance(value, str):
        text = value.strip()
        parts = _DURATION.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            return sum(float(n) * _UNITS[u] for n, u in parts)
        try:
            value = float(text)
        except ValueError:
            raise ValueError(f"invalid duration {text!r}: use e.g. 500ms, 2s, 1m30s, 1h") from None
    seconds = _finite(value)
    if seconds is None or seconds < 0:
        raise ValueError("must be a duration >= 0")
    return seconds


def _finite(value: int | float) -> float | None:
    try:
        f = float(value)  # an int beyond 1e308 overflows
    except OverflowError:
        return None
    return f if math.isfinite(f) else None


def join(path: str, key: object) -> str:
    """`routes[0]` + `name` -> `routes[0].name`; the top level has the empty path."""
    return f"{path}.{key}" if path else str(key)


def did_you_mean(key: str, allowed: Sequence[str]) -> str:
    """A ` (did you mean "x"?)` hint for the closest allowed word, or ""."""
    close = difflib.get_close_matches(key, list(allowed), n=1, cutoff=0.6)
    return f' (did you mean "{close[0]}"?)' if close else ""


class Ctx:
    """Collects errors and the names that references must resolve to."""

    def __init__(self) -> None:
        self.errors: list[Error] = []
        self.upstreams: list[str] = []
        self.routes: dict[str, s.Route] = {}
        self.listeners: list[str] = ["default"]  # names routes may refer to
        self.document: object = None  # the whole document, for rules across sections

    def err(self, path: str, message: str) -> Any:
        self.errors.append((path, message))
        return BAD

    def mapping(
        self, value: object, path: str, allowed: Sequence[str], required: Sequence[str] = ()
    ) -> dict[str, Any] | None:
        """The mapping, after reporting unknown and missing keys; None if not a mapping."""
        if not isinstance(value, dict):
            self.err(path, "must be a mapping")
            return None
        for key in value:
            if key not in allowed:
                hint = did_you_mean(str(key), allowed)
                self.err(join(path, key), f'unknown key "{key}"{hint}')
        for key in required:
            if key not in value:
                self.err(join(path, key), "is required")
        return value

    def seq(self, value: object, path: str) -> list[Any] | None:
        if not isinstance(value, list):
            self.err(path, "must be a list")
            return None
        return value


Reader = Callable[[Ctx, object, str], Any]


def read_keys(
    ctx: Ctx, m: Mapping[str, Any], path: str, readers: Mapping[str, Reader]
) -> dict[str, Any]:
    """Read the keys of `m` that have a reader; keep only the values that passed."""
    out: dict[str, Any] = {}
    for key, read in readers.items():
        if key in m:
            value = read(ctx, m[key], join(path, key))
            if value is not BAD:
                out[key] = value
    return out


def build(
    ctx: Ctx,
    value: object,
    path: str,
    cls: type,
    readers: Mapping[str, Reader],
    required: Sequence[str] = (),
    defaults: Mapping[str, Any] | None = None,
) -> Any:
    """A dataclass from a mapping whose keys equal the field names; BAD if not a mapping."""
    m = ctx.mapping(value, path, list(readers), required)
    if m is None:
        return BAD
    kw = dict(defaults or {})
    kw.update(read_keys(ctx, m, path, readers))
    for key in required:
        kw.setdefault(key, "")  # placeholder: the error is recorded, the result discarded
    return cls(**kw)


def record(cls: type, readers: Mapping[str, Reader], required: Sequence[str] = ()) -> Reader:
    """A reader that `build`s `cls` from a mapping read by `readers`."""

    def read(ctx: Ctx, value: object, path: str) -> Any:
        return build(ctx, value, path, cls, readers, required)

    return read


def refine(read: Reader, ok: Callable[[Any], object], message: str) -> Reader:
    """`read`, then an error unless `ok(value)`; `{}` in `message` stands for the value."""

    def check(ctx: Ctx, value: object, path: str) -> Any:
        v = read(ctx, value, path)
        if v is not BAD and not ok(v):
            return ctx.err(path, message.format(v))
        return v

    return check


def mapped(read: Reader, convert: Callable[[Any], Any]) -> Reader:
    """`read`, then `convert` the value that passed."""

    def read_and_convert(ctx: Ctx, value: object, path: str) -> Any:
        v = read(ctx, value, path)
        return v if v is BAD else convert(v)

    return read_and_convert


def report_repeats(ctx: Ctx, names: Sequence[str], path: str, noun: str) -> None:
    """An error at `path[i].name` for every name that an earlier item already took."""
    seen: set[str] = set()
    for i, n in enumerate(names):
        if n in seen:
            ctx.err(f"{path}[{i}].name", f'duplicate {noun} name "{n}"')
        seen.add(n)


# ---- scalars -----------------------------------------------------------------------------


def string(ctx: Ctx, value: object, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, str | int):
        hint = " (quote it)" if isinstance(value, bool | float) else ""
        return ctx.err(path, f"must be a string{hint}")
    return str(value)


def number(ctx: Ctx, value: object, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return ctx.err(path, "must be a number")
    f = _finite(value)
    return ctx.err(path, "must be a finite number") if f is None else f


def integer_(ctx: Ctx, value: object, path: str) -> Any:
    if isinstance(value, bool) or not isinstance(value, int):
        return ctx.err(path, "must be an integer")
    return value


def boolean(ctx: Ctx, value: object, path: str) -> Any:
    if not isinstance(value, bool):
        return ctx.err(path, "must be true or false")
    return value


def duration(ctx: Ctx, value: object, path: str) -> Any:
    try:
        return parse_duration(value)
    except ValueError as exc:
        return ctx.err(path, str(exc))


def _no_control(text: str) -> bool:
    return not ("\r" in text or "\n" in text or "\0" in text)


nonempty = refine(string, bool, "must not be empty")
name = refine(string, _NAME.match, "must be a name of letters, digits, '.', '_' or '-'")
header_name = mapped(refine(string, _TOKEN.match, '"{}" is not a valid header name'), str.lower)
header_value = refine(string, _no_control, "must not contain CR, LF or NUL")
method = mapped(refine(string, _TOKEN.match, '"{}" is not a valid HTTP method'), str.upper)
cookie_name = refine(nonempty, _TOKEN.match, '"{}" is not a valid cookie name')
abs_path = refine(string, lambda text: text.startswith("/"), 'must start with "/"')
url = refine(string, _URL.match, "must be an http:// or https:// URL")
env_name = refine(string, _ENV.match, "must be an environment variable name")
positive_duration = refine(duration, lambda v: v > 0, "must be a duration > 0")
seconds_int = mapped(duration, int)
status_code = refine(
    integer_, lambda v: 200 <= v <= 599, "must be an HTTP status code between 200 and 599"
)


def at_least(low: float, integer: bool = False) -> Reader:
    """A number (or integer) >= `low`."""
    return refine(integer_ if integer else number, lambda v: v >= low, f"must be >= {low:g}")


def between(low: float, high: float) -> Reader:
    """A number in `[low, high]`."""
    return refine(number, lambda v: low <= v <= high, f"must be between {low:g} and {high:g}")


percent = between(0, 100)


def one_of(*choices: str) -> Reader:
    """One of the `choices` words; any other is an error with the closest one as a hint."""

    def read(ctx: Ctx, value: object, path: str) -> Any:
        text = string(ctx, value, path)
        if text is not BAD and text not in choices:
            hint = did_you_mean(text, choices)
            return ctx.err(
                path, f'unknown value "{text}"{hint}; expected one of {", ".join(choices)}'
            )
        return text

    return read


# ---- collections -------------------------------------------------------------------------


def list_of(item: Reader, nonempty_: bool = False) -> Reader:
    """A list read item by item -> tuple; BAD if any item failed (all are still checked)."""

    def read(ctx: Ctx, value: object, path: str) -> Any:
        items = ctx.seq(value, path)
        if items is None:
            return BAD
        if nonempty_ and not items:
            return ctx.err(path, "must not be empty")
        out = [item(ctx, v, f"{path}[{i}]") for i, v in enumerate(items)]
        return BAD if any(v is BAD for v in out) else tuple(out)

    return read


def set_of(item: Reader, nonempty_: bool = True) -> Reader:
    """As `list_of`, -> frozenset."""
    return mapped(list_of(item, nonempty_), frozenset)


def str_map(key: Reader, value: Reader) -> Reader:
    """`{k: v}` -> tuple of (k, v) in YAML order."""

    def read(ctx: Ctx, data: object, path: str) -> Any:
        if not isinstance(data, dict):
            return ctx.err(path, "must be a mapping")
        out = [(key(ctx, k, join(path, k)), value(ctx, v, join(path, k))) for k, v in data.items()]
        if any(BAD in pair for pair in out):
            return BAD
        names = [k for k, _ in out]
        for k, n in zip(data, names, strict=True):
            if names.count(n) > 1:  # "X-A" and "x-a" name the same header
                return ctx.err(join(path, k), f'"{n}" is given more than once')
        return tuple(out)

    return read


# ---- network -----------------------------------------------------------------------------


def _split_host_port(text: str) -> tuple[str, str] | None:
    """`host:port` or `[v6]:port` -> (host, port); None if the host is not a name or IP."""
    if text.startswith("["):
        host, sep, port = text[1:].partition("]:")
        try:
            ipaddress.IPv6Address(host)
        except ValueError:
            return None
    else:
        host, sep, port = text.rpartition(":")
        if not _HOST.match(host):
            return None
    return (host, port) if sep else None


def host_port(min_port: int = 1) -> Reader:
    """`host:port` with the port in `[min_port, 65535]` (0 lets the OS pick)."""

    def read(ctx: Ctx, value: object, path: str) -> Any:
        text = string(ctx, value, path)
        if text is BAD:
            return BAD
        parts = _split_host_port(text)
        if parts is None or not parts[1].isdigit():
            return ctx.err(path, f'"{text}" must be host:port, e.g. 127.0.0.1:8080')
        if not min_port <= int(parts[1]) <= 65535:
            return ctx.err(path, f'"{text}": port must be between {min_port} and 65535')
        return text

    return read


def cidr(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is BAD:
        return BAD
    try:
        return str(ipaddress.ip_network(text, strict=False))
    except ValueError:
        return ctx.err(path, f'"{text}" is not a valid CIDR (e.g. 10.0.0.0/8 or 192.0.2.7)')


def regex(ctx: Ctx, value: object, path: str) -> Any:
    text = string(ctx, value, path)
    if text is BAD:
        return BAD
    problem = regex_error(text)
    return text if problem is None else ctx.err(path, problem)
