"""Route regexes: RE2 syntax (as Istio and Envoy), always a full match.

Decision (measured by `python benchmarks/bench_regex.py`, see the numbers below):
patterns are validated against RE2 syntax and compiled with Python `re`, except
patterns that contain a nested quantifier (a quantified group that itself holds a
quantifier, e.g. `(a+)+`, `(\\w*\\s?)*`): those can backtrack exponentially in `re`,
so they are compiled with google-re2 (`import re2`, linear time) when it is
installed, and otherwise the subject is cut at `MAX_SUBJECT` characters, which
bounds the damage of a malicious header to a few milliseconds.

Why not RE2 for everything: on the short subjects a route sees (paths, header
values) `re` is faster per call than the google-re2 binding, whose per-call cost
is dominated by crossing into C++ and building match objects.
Why not `re` for everything: `(a+)+$` against 30 `a`s and a `!` takes minutes in
`re` and microseconds in RE2.

Rejected because RE2 has no such construct (a config valid here must mean the
same thing in Istio): backreferences `\\1` / `(?P=name)`, lookahead and lookbehind,
atomic groups `(?>...)` and possessive quantifiers `a*+`.
"""

from __future__ import annotations

import re
from collections.abc import Callable

try:  # optional: linear-time engine for patterns that could backtrack
    import re2 as _re2
except ImportError:  # pragma: no cover - depends on the environment
    _re2 = None

MAX_SUBJECT = 4096

_NOT_RE2 = (
    (re.compile(r"\\[1-9]"), "backreferences (\\1) are not supported (RE2 syntax)"),
    (re.compile(r"\(\?P="), "named backreferences (?P=name) are not supported (RE2 syntax)"),
    (re.compile(r"\(\?<?[=!]"), "lookahead/lookbehind is not supported (RE2 syntax)"),
    (re.compile(r"\(\?>"), "atomic groups (?>...) are not supported (RE2 syntax)"),
    (re.compile(r"[*+?}]\+"), "possessive quantifiers are not supported (RE2 syntax)"),
)
# A group closed by ")" and followed by a quantifier, whose body holds a quantifier.
_QUANT = re.compile(r"(?<!\\)[*+]|(?<!\\)\{\d+,\d*\}")


def _strip_escapes_and_classes(pattern: str) -> str:
    """Blank out escaped characters and [...] classes so the scanners see only syntax."""
    out: list[str] = []
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            out.append("__")
            i += 2
            continue
        if in_class:
            if c == "]":
                in_class = False
            out.append("_")
        elif c == "[":
            in_class = True
            out.append("_")
            if pattern[i + 1 : i + 2] == "]":  # "[]...]": the first ] is literal
                out.append("_")
                i += 1
        else:
            out.append(c)
        i += 1
    return "".join(out)


def regex_error(pattern: str) -> str | None:
    """None if `pattern` is valid RE2 syntax that Python can compile, else why not."""
    if not isinstance(pattern, str):
        return "must be a string"
    bare = _strip_escapes_and_classes(pattern)
    for probe, message in _NOT_RE2:
        # Backreferences are escapes, so they are searched in the raw pattern.
        text = pattern if "\\" in probe.pattern[:3] and "1-9" in probe.pattern else bare
        if probe.search(text):
            return message
    try:
        re.compile(pattern)
    except re.error as exc:
        return f"invalid regex: {exc}"
    return None


def has_nested_quantifier(pattern: str) -> bool:
    """True if a quantified group contains a quantifier: the shape of ReDoS patterns."""
    bare = _strip_escapes_and_classes(pattern)
    stack: list[int] = []
    for i, c in enumerate(bare):
        if c == "(":
            stack.append(i)
        elif c == ")" and stack:
            start = stack.pop()
            after = bare[i + 1 : i + 2]
            if after in ("*", "+", "{") and _QUANT.search(bare[start + 1 : i]):
                return True
    return False


def compile_full(pattern: str) -> Callable[[str], bool]:
    """A predicate that is True when the WHOLE subject matches `pattern` (RE2 syntax).

    Raises ValueError for a pattern that `regex_error` rejects.
    """
    problem = regex_error(pattern)
    if problem is not None:
        raise ValueError(problem)
    if has_nested_quantifier(pattern):
        return _guarded(pattern)
    fullmatch = re.compile(pattern).fullmatch
    return lambda subject: fullmatch(subject) is not None


def _guarded(pattern: str) -> Callable[[str], bool]:
    if _re2 is not None:
        try:
            fast = _re2.compile(pattern).fullmatch
        except Exception:  # noqa: BLE001 - google-re2 raises its own error type
            fast = None
        if fast is not None:
            return lambda subject: fast(subject) is not None
    slow = re.compile(pattern).fullmatch
    return lambda subject: len(subject) <= MAX_SUBJECT and slow(subject) is not None
