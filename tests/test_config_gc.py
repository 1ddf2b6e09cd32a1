"""Loading a config leaves no cyclic garbage: a large reload must not set up a full
collection that stalls the event loop (issue 6)."""

import gc
import pathlib

import pytest

from proxy.config.load import load_text

EXAMPLES = sorted((pathlib.Path(__file__).resolve().parent.parent / "config").glob("*.yaml"))


def _routes(n: int) -> str:
    head = 'listen: 127.0.0.1:8080\nupstreams:\n  v1: {endpoints: ["127.0.0.1:9001"]}\n'
    head += '  v2: {endpoints: ["127.0.0.1:9002"]}\nroutes:\n'
    rows = [
        f"  - name: r{i}\n    match: [{{headers: {{x-t: {{exact: t{i}}}}}}}]\n"
        "    route: [{destination: v1, weight: 90}, {destination: v2, weight: 10}]\n"
        for i in range(n)
    ]
    return head + "".join(rows)


def _cyclic_garbage_after(text: str, ok: bool) -> int:
    gc.collect()
    gc.disable()
    try:
        config, errors = load_text(text, "config.yaml")
        assert (config is not None) == ok, errors
        del config, errors
        return gc.collect()
    finally:
        gc.enable()


def test_large_config_leaves_no_cycles() -> None:
    assert _cyclic_garbage_after(_routes(200), ok=True) == 0


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_examples_leave_no_cycles(path: pathlib.Path) -> None:
    assert _cyclic_garbage_after(path.read_text(), ok=True) == 0


@pytest.mark.parametrize(
    "text",
    ["routes: [\n", "listen: 1\nlisten: 2\n", "a: !!binary '#'\n", "routes: 3\n"],
    ids=["syntax", "duplicate", "bad-scalar", "invalid"],
)
def test_rejected_files_leave_no_cycles(text: str) -> None:
    assert _cyclic_garbage_after(text, ok=False) == 0
