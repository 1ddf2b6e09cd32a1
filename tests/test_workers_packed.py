"""A Config crosses to the workers in parts that load a few routes at a time."""

import asyncio

from proxy.config.load import load_text
from proxy.config.pack import ROUTES_PER_PART, pack_config, remember, unpack_config


def _config(n: int, tag: str = ""):
    rows = "".join(
        f"  - name: r{i}{tag}\n    match: [{{headers: {{x-t: {{exact: t{i}}}}}}}]\n"
        "    route: [{destination: v1, weight: 90}, {destination: v2, weight: 10}]\n"
        for i in range(n)
    )
    text = (
        'listen: 127.0.0.1:8080\nupstreams:\n  v1: {endpoints: ["127.0.0.1:9001"]}\n'
        '  v2: {endpoints: ["127.0.0.1:9002"]}\nroutes:\n' + rows
    )
    config, errors = load_text(text, "c.yaml")
    assert config is not None, errors
    return config


async def test_round_trip_keeps_every_route_in_order() -> None:
    config = _config(3 * ROUTES_PER_PART + 1)
    packed = pack_config(config)
    assert len(packed.parts) == 4
    assert await unpack_config(packed) == config


async def test_large_config_yields_the_loop_while_loading() -> None:
    packed = pack_config(_config(10 * ROUTES_PER_PART))
    turns = 0

    async def count() -> None:
        nonlocal turns
        while True:
            turns += 1
            await asyncio.sleep(0)

    counter = asyncio.create_task(count())
    await asyncio.sleep(0)
    before = turns
    await unpack_config(packed, slice_s=0.0)  # every part: the loop gets a turn
    counter.cancel()
    assert turns - before >= 10


def test_packing_is_cached_for_the_current_config_only() -> None:
    a, b = _config(2), _config(2, tag="b")
    packed_a = pack_config(a)
    assert pack_config(a) is packed_a
    assert pack_config(b) is not packed_a
    remember(a, packed_a)
    assert pack_config(a) is packed_a
