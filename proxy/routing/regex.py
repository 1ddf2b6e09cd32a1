"""Route regexes: RE2 syntax (as Istio and Envoy), always a FULL match.

Engine, chosen by measurement (`python benchmarks/bench_regex.py`, 2 cores, Python 3.11):

    per call, short subjects     re       google-re2
    .*[02468]                    98 ns    2675 ns
    /api/v[0-9]+/users/[^/]+    107 ns    2771 ns
    (?i)mozilla/.*(iphone|...)  400 ns    3896 ns
    (a+)+$ vs "a"*24 + "!"      0.44 s    31 us     (x4 per extra "a" in re)
    .*a.*a.*b vs 8000 "a"s      56.6 s    0.2 ms    (cubic in re)

So: `re` by default (25x cheaper per call on the patterns routes really use), and
google-re2 (linear time) for every pattern that can backtrack super-linearly in `re`:
a quantified group holding a quantifier or an alternation (`(a+)+`, `(a|ab)*`), or
two or more unbounded quantifiers (`.*a.*b`). A client controls the header or path
such a pattern reads, so `re` there would be a denial of service. Without google-re2
installed those patterns are rejected by `regex_error` with that reason (a config
must never turn into a CPU sink), and google-re2 is also used, when present, to
check that every pattern is RE2 syntax.

Rejected in every environment (RE2 has no such construct, and a config valid here
must mean the same thing in Istio): backreferences `\\1` / `(?P=name)`, lookahead and
lookbehind, atomic groups, possessive quantifiers, conditionals and comments; and
patterns Python reads differently from RE2 (`[[:alpha:]]`, a FutureWarning in `re`).
"""

from __future__ import annotations

import re
import warnings
from collections.abc import Callable
from typing import Any

try:  # optional at import; patterns that need it are rejected without it
    import re2 as _re2
except ImportError:  # pragma: no cover - depends on the environment
    _re2 = None

_NOT_RE2 = (
    (re.compile(r"\(\?P="), "named backreferences (?P=name) are not supported (RE2 syntax)"),
    (re.compile(r"\(\?<?[=!]"), "lookahead/lookbehind is not supported (RE2 syntax)"),
    (re.compile(r"\(\?>"), "atomic groups (?>...) are not supported (RE2 syntax)"),
    (re.compile(r"\(\?\("), "conditionals (?(...)...) are not supported (RE2 syntax)"),
    (re.compile(r"\(\?#"), "comments (?#...) are not supported (RE2 syntax)"),
    (re.compile(r"[*+?}]\+"), "possessive quantifiers are not supported (RE2 syntax)"),
)
_BACKREF = "backreferences (\\1) are not supported (RE2 syntax)"
_UNBOUNDED = re.compile(r"[*+]|\{\d+,\}")
_QUANTIFIER = re.compile(r"[*+?]|\{\d+(,\d*)?\}")
_NEEDS_RE2 = (
    "can backtrack super-linearly in Python's re (nested or repeated unbounded "
    "quantifiers); install google-re2 (pip install google-re2) or simplify the pattern"
)


def _blank(pattern: str) -> tuple[str, bool]:
    """Blank escapes and [...] classes so scanners see only syntax; also: any backreference?"""
    out: list[str] = []
    backref = False
    i, n = 0, len(pattern)
    in_class = False
    while i < n:
        c = pattern[i]
        if c == "\\" and i + 1 < n:
            backref = backref or (not in_class and pattern[i + 1] in "123456789")
            out.append("__")
            i += 2
            continue
        if in_class:
            in_class = c != "]"
        elif c == "[":
            in_class = True
            # "[]...]" and "[^]...]": that first "]" is a literal, not the end.
            skip = (
                2 if pattern[i + 1 : i + 3] == "^]" else 1 if pattern[i + 1 : i + 2] == "]" else 0
            )
            out.append("_" * skip)
            i += skip
        out.append("_" if in_class or c == "]" else c)
        i += 1
    return "".join(out), backref


def needs_linear_engine(pattern: str) -> bool:
    """True if `re` could backtrack super-linearly: a quantified group that holds a
    quantifier or an alternation, or two or more unbounded quantifiers."""
    bare = _blank(pattern)[0]
    if len(_UNBOUNDED.findall(bare)) >= 2:
        return True
    stack: list[int] = []
    for i, c in enumerate(bare):
        if c == "(":
            stack.append(i)
        elif c == ")" and stack:
            start = stack.pop()
            body = bare[start + 1 : i]
            quantified = _QUANTIFIER.match(bare, i + 1) is not None
            if quantified and (_QUANTIFIER.search(body.lstrip("?:")) or "|" in body):
                return True
    return False


def _python_error(pattern: str) -> str | None:
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        try:
            re.compile(pattern)
        except FutureWarning as warn:
            return f"ambiguous pattern ({warn}); escape the '[' or use an explicit class"
        except re.error as exc:
            return f"invalid regex: {exc}"
    return None


def _re2_compile(pattern: str) -> Any:
    options = _re2.Options()
    options.log_errors = False  # the error goes back to the caller, not to stderr
    return _re2.compile(pattern, options)


def _re2_error(pattern: str) -> str | None:
    if _re2 is None:
        return _NEEDS_RE2 if needs_linear_engine(pattern) else None
    try:
        _re2_compile(pattern)
    except Exception as exc:  # noqa: BLE001 - google-re2 raises its own error type
        detail = exc.args[0] if exc.args else exc
        if isinstance(detail, bytes):
            detail = detail.decode(errors="replace")
        return f"not valid RE2 syntax: {detail}"
    return None


def regex_error(pattern: str) -> str | None:
    """None if `pattern` is RE2 syntax this process can match safely, else why not."""
    if not isinstance(pattern, str):
        return "must be a string"
    bare, backref = _blank(pattern)
    if backref:
        return _BACKREF
    for probe, message in _NOT_RE2:
        if probe.search(bare):
            return message
    return _python_error(pattern) or _re2_error(pattern)


def compile_full(pattern: str) -> Callable[[str], bool]:
    """A predicate that is True when the WHOLE subject matches `pattern` (RE2 syntax).

    Raises ValueError for a pattern that `regex_error` rejects.
    """
    problem = regex_error(pattern)
    if problem is not None:
        raise ValueError(problem)
    if needs_linear_engine(pattern):
        linear = _re2_compile(pattern).fullmatch
        return lambda subject: linear(subject) is not None
    fullmatch = re.compile(pattern).fullmatch
    return lambda subject: fullmatch(subject) is not None


def compile_sub(pattern: str, substitution: str) -> Callable[[str], str]:
    """`subject -> subject` with every match of `pattern` (RE2 syntax) replaced by
    `substitution`, where `\\1`..`\\9` are the groups (as Envoy's regex_rewrite).

    Raises ValueError for a pattern that `regex_error` rejects.
    """
    problem = regex_error(pattern)
    if problem is not None:
        raise ValueError(problem)
    engine = _re2_compile(pattern) if needs_linear_engine(pattern) else re.compile(pattern)
    return lambda subject: engine.sub(substitution, subject)
