"""Whatever the file holds, validation answers with errors, never with an exception."""

import copy
import pathlib

import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from proxy.config.load import load_text
from proxy.config.validate import validate

ROOT = pathlib.Path(__file__).resolve().parent.parent
CANARY = yaml.safe_load((ROOT / "config" / "canary.yaml").read_text())

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 200),
    st.just(10**400),  # YAML ints are unbounded; float() of this overflows
    st.floats(allow_nan=True),
    st.sampled_from(["v1", "v2", "default", "1s", "x", "", "127.0.0.1:1", "/api", "(a)\\1"]),
)
documents = st.recursive(
    scalars,
    lambda inner: (
        st.lists(inner, max_size=3)
        | st.dictionaries(
            st.sampled_from(["name", "route", "weight", "match", "v1"]), inner, max_size=3
        )
    ),
    max_leaves=12,
)


def _check(data: object) -> None:
    config, errors = validate(data)
    assert (config is None) == bool(errors)
    assert all(isinstance(p, str) and isinstance(m, str) and m for p, m in errors)


@settings(max_examples=200, deadline=None)
@given(documents)
def test_any_document_gives_errors_not_exceptions(data: object) -> None:
    _check(data)


def _paths(node: object, prefix: tuple = ()) -> list[tuple]:
    out = [prefix]
    if isinstance(node, dict):
        for k, v in node.items():
            out += _paths(v, (*prefix, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            out += _paths(v, (*prefix, i))
    return out


PATHS = _paths(CANARY)[1:]


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PATHS), documents)
def test_any_value_anywhere_in_a_valid_config(path: tuple, value: object) -> None:
    data = copy.deepcopy(CANARY)
    node = data
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    _check(data)


@settings(max_examples=200, deadline=None)
@given(st.text(alphabet="{}[]:-,'\"&*!|>% \n\tab1", max_size=60))
def test_any_text_gives_errors_not_exceptions(text: str) -> None:
    config, errors = load_text(text, "c.yaml")
    assert (config is None) == bool(errors)
    assert all(e.startswith("c.yaml:") for e in errors)
