"""Fuzzing the config loader: mutated real configs and schema-shaped documents.

Whatever the text, `load_text` returns either a Config or a non-empty list of
`FILE:LINE: ...` errors; it never raises, and the same text always gives the same
answer (a reload decision must not depend on luck). Complements test_config_fuzz.py,
which fuzzes values of one document; here the bytes and the shape of the file are
mutated, starting from every shipped example config.
"""

from __future__ import annotations

import dataclasses
import pathlib
import re

import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from proxy.config import schema
from proxy.config.load import load_text

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config").glob("*.yaml"))
TEXTS = [p.read_text() for p in EXAMPLES]
ERROR = re.compile(r"^c\.yaml:(\d+:)? ?.+")
FUZZ = settings(
    max_examples=150, deadline=1000, database=None, suppress_health_check=[HealthCheck.too_slow]
)

# YAML-significant characters and values a hostile or careless file could hold.
SPECIAL = [
    ":", "-", " ", "\t", "\n", "{", "}", "[", "]", "&a", "*a", "!!python/object:os.system",
    "<<: *a", "'", '"', "#", "|", ">", "%", "\x00", "\ufeff", "1e999", "-0", "0x10", "~",
    "null", "yes", "10**400", "9" * 50, "é", "\u202e", "\r",
]  # fmt: skip


def _fields(cls: type) -> list[str]:
    return [f.name for f in dataclasses.fields(cls)]


KEYS = sorted(
    set(
        _fields(schema.Config)
        + _fields(schema.Route)
        + _fields(schema.Upstream)
        + _fields(schema.Limits)
        + _fields(schema.Canary)
        + _fields(schema.Analysis)
        + ["endpoints", "destination", "weight", "exact", "prefix", "regex", "route"]
    )
)


def _check(text: str) -> None:
    config, errors = load_text(text, "c.yaml")
    assert (config is None) == bool(errors), (config, errors)
    if config is not None:
        assert isinstance(config, schema.Config)
    for e in errors:
        assert isinstance(e, str) and ERROR.match(e), e
    again = load_text(text, "c.yaml")
    assert again[1] == errors and (again[0] is None) == (config is None)


def test_every_example_config_loads() -> None:
    assert EXAMPLES, "no example configs to fuzz from"
    for path, text in zip(EXAMPLES, TEXTS, strict=True):
        config, errors = load_text(text, path.name)
        assert config is not None and not errors, (path.name, errors)


@st.composite
def mutated(draw: st.DrawFn) -> str:
    """An example config with a few insertions, deletions and line duplications."""
    text = draw(st.sampled_from(TEXTS))
    for _ in range(draw(st.integers(1, 4))):
        pos = draw(st.integers(0, len(text)))
        op = draw(st.sampled_from(["insert", "delete", "dup_line", "truncate"]))
        if op == "insert":
            text = text[:pos] + draw(st.sampled_from(SPECIAL)) + text[pos:]
        elif op == "delete":
            text = text[:pos] + text[pos + draw(st.integers(1, 20)) :]
        elif op == "dup_line":
            lines = text.splitlines(keepends=True) or [""]
            i = draw(st.integers(0, len(lines) - 1))
            text = "".join(lines[: i + 1] + [lines[i]] + lines[i + 1 :])
        else:
            text = text[:pos]
    return text


@FUZZ
@given(mutated())
def test_mutated_example_configs(text: str) -> None:
    _check(text)


scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=12),
    st.sampled_from(["1s", "500ms", "2m", "-1s", "127.0.0.1:1", "v1", "default", "[a-", ".*"]),
)
shaped = st.recursive(
    scalars,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.sampled_from(KEYS), inner, max_size=5),
    max_leaves=25,
)  # fmt: skip


@FUZZ
@given(st.dictionaries(st.sampled_from(KEYS), shaped, max_size=8))
def test_schema_shaped_documents(doc: dict) -> None:
    _check(yaml.safe_dump(doc, allow_unicode=True))


@FUZZ
@given(st.lists(st.sampled_from(SPECIAL + ["a", "b", "v1", "routes", "upstreams"]), max_size=40))
def test_token_soup(tokens: list[str]) -> None:
    _check("".join(tokens))


def test_alias_bomb_is_an_error() -> None:
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 10) + "]" for i in range(1, 9)]
    config, errors = load_text("\n".join(lines) + "\n", "c.yaml")
    assert config is None and errors
