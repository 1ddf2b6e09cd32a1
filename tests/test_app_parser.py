"""Reload parsing off the event loop: a large file goes to the parser process and comes
back as the same Config (or the same errors) load_text gives in-process."""

from proxy.config.load import load_text
from proxy.config.pack import pack_config
from proxy.config.reload import ConfigParser

GOOD = """\
listen: 127.0.0.1:8080
upstreams:
  v1: {endpoints: ["127.0.0.1:9001"]}
  v2: {endpoints: ["127.0.0.1:9002"]}
routes:
"""
ROW = """\
  - name: r{i}
    match: [{{headers: {{x-t: {{regex: "^t{i}$"}}}}}}]
    route: [{{destination: v1, weight: 90}}, {{destination: v2, weight: 10}}]
"""


def _text(n: int) -> str:
    return GOOD + "".join(ROW.format(i=i) for i in range(n))


async def test_parser_process_returns_what_load_text_returns() -> None:
    parser = ConfigParser(apart=0)  # every text goes to the process
    try:
        text = _text(60)
        config, errors = await parser.load(text, "big.yaml")
        assert errors == []
        assert config == load_text(text, "big.yaml")[0]
        assert pack_config(config) is pack_config(config)  # the parts are kept for workers
        bad = text.replace("weight: 10}", "weight: 10, extra: 1}", 1)
        assert await parser.load(bad, "big.yaml") == load_text(bad, "big.yaml")
        assert (await parser.load("routes: [\n", "x.yaml"))[0] is None
    finally:
        parser.close()
    assert parser._pool is None


async def test_small_text_needs_no_process() -> None:
    parser = ConfigParser()
    config, errors = await parser.load(_text(2), "small.yaml")
    assert config is not None and errors == []
    assert parser._pool is None
