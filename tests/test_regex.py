"""Route regexes: RE2 syntax only, full match, and no super-linear backtracking."""

import pytest

from proxy.routing.regex import compile_full, needs_linear_engine, regex_error

VALID = [
    r".*[02468]",
    r"/api/v[0-9]+/users/[^/]+",
    r"(?i)mozilla/.*(iphone|android).*",
    r"beijing|shanghai",
    r"[]a]+",
    r"\\1",  # an escaped backslash then "1": not a backreference
    r"(?P<id>[0-9]+)",
    r"(?:ab)+",
    r".*[02468]$",  # the release-strategies guide's A/B patterns
    r".*ab_test=version_a.*",
]

REJECTED = [
    (r"(a)\1", "backreferences (\\1) are not supported (RE2 syntax)"),
    (r"(?P<x>a)(?P=x)", "named backreferences (?P=name) are not supported (RE2 syntax)"),
    (r"foo(?=bar)", "lookahead/lookbehind is not supported (RE2 syntax)"),
    (r"foo(?!bar)", "lookahead/lookbehind is not supported (RE2 syntax)"),
    (r"(?<=a)b", "lookahead/lookbehind is not supported (RE2 syntax)"),
    (r"(?<!a)b", "lookahead/lookbehind is not supported (RE2 syntax)"),
    (r"(?>a+)b", "atomic groups (?>...) are not supported (RE2 syntax)"),
    (r"a*+b", "possessive quantifiers are not supported (RE2 syntax)"),
    (r"a(?#note)", "comments (?#...) are not supported (RE2 syntax)"),
    (r"(a)?(?(1)b|c)", "conditionals (?(...)...) are not supported (RE2 syntax)"),
]


@pytest.mark.parametrize("pattern", VALID)
def test_valid_patterns(pattern: str) -> None:
    assert regex_error(pattern) is None


@pytest.mark.parametrize(("pattern", "message"), REJECTED)
def test_non_re2_constructs_are_rejected(pattern: str, message: str) -> None:
    assert regex_error(pattern) == message
    with pytest.raises(ValueError, match="not supported"):
        compile_full(pattern)


def test_lookaround_inside_a_class_is_a_literal() -> None:
    assert regex_error(r"[(?=]+") is None
    assert compile_full(r"[(?=]+")("(?=")


def test_python_syntax_errors_are_reported() -> None:
    assert (regex_error("(") or "").startswith("invalid regex: missing )")
    assert (regex_error("a{2,1}") or "").startswith("invalid regex:")


def test_pattern_python_reads_differently_is_rejected() -> None:
    assert (regex_error("[[:alpha:]]+") or "").startswith("ambiguous pattern")


def test_re2_only_checks_need_google_re2() -> None:
    pytest.importorskip("re2")
    assert regex_error(r"a\Z") == "not valid RE2 syntax: invalid escape sequence: \\Z"


@pytest.mark.parametrize(
    ("pattern", "yes", "no"),
    [
        (r".*[02468]", "user-0012", "user-0013"),
        (r"beijing|shanghai", "shanghai", "shanghai-west"),  # alternation is anchored too
        (r"/api/.*", "/api/x", "/v1/api/x"),
        (r"(a+)+", "aaaa", "aaab"),
    ],
)
def test_compile_full_matches_the_whole_subject(pattern: str, yes: str, no: str) -> None:
    matches = compile_full(pattern)
    assert matches(yes)
    assert not matches(no)


@pytest.mark.parametrize(
    ("pattern", "risky"),
    [
        (r"(a+)+$", True),
        (r"(\w*\s?)*", True),
        (r"(a|ab)*c", True),
        (r".*a.*a.*b", True),
        (r"x{2,}y+", True),
        (r".*[02468]", False),
        (r"(ab){2}", False),
        (r"(?:ab)+", False),
        (r"[(a+)+]", False),  # inside a class: literals
        (r"\(a+\)?", False),  # escaped parentheses are no group
    ],
)
def test_needs_linear_engine(pattern: str, risky: bool) -> None:
    assert needs_linear_engine(pattern) is risky


def test_redos_pattern_runs_in_linear_time() -> None:
    # With `re`, (a+)+$ against 40 "a"s and a "!" would not finish for hours.
    pytest.importorskip("re2")
    matches = compile_full(r"(a+)+$")
    assert not matches("a" * 40 + "!")
    assert not compile_full(r".*a.*a.*b")("a" * 20_000)
