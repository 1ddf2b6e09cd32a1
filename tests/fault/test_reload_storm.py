"""Reload storm (RELIABILITY run L2): 100 valid and 10 invalid reloads under steady load.

Three ledgers are reconciled: requests sent, requests the upstreams received (by request
id), requests answered. A reload must cost no request and make no proxy error.
"""

from __future__ import annotations

import asyncio
import json
import time

import pytest

from .conftest import ProxyFactory
from .harness import (
    Load,
    ProxyProcess,
    UpstreamProcess,
    admin_post,
    config_text,
    metric_values,
    summarize,
    write_atomic,
)

pytestmark = pytest.mark.slow

RELOADS = 100
INVALID = 10
RELOAD_METRIC = "canaryproxy_config_reloads_total"


def _configs(proxy: ProxyProcess, ups: dict[str, str]) -> tuple[list[str], list[str]]:
    """Two valid configs (90/10 and 10/90) and ten distinct invalid ones."""
    valid = [
        config_text(proxy.port, proxy.admin_port, ups, {"v1": a, "v2": 100 - a}) for a in (90, 10)
    ]
    invalid = [valid[0].replace("weight: 90", f"weight: -{i + 1}") for i in range(INVALID)]
    return valid, invalid


async def _storm(proxy: ProxyProcess, valid: list[str], invalid: list[str]) -> list[str]:
    """Reload every ~100 ms; an invalid file after every 10th valid one, then a valid one."""
    results: list[str] = []
    bad = iter(invalid)
    for i in range(RELOADS):
        write_atomic(proxy.config_path, valid[i % 2])
        status, body = await admin_post(proxy.admin_port, "/api/v1/reload")
        results.append(json.loads(body).get("result", f"status {status}"))
        if i % 10 == 5:
            write_atomic(proxy.config_path, next(bad))
            status, body = await admin_post(proxy.admin_port, "/api/v1/reload")
            results.append(json.loads(body).get("result", f"status {status}"))
        await asyncio.sleep(0.1)
    return results


async def test_reload_storm_loses_nothing(
    make_proxy: ProxyFactory, upstreams: dict[str, UpstreamProcess]
) -> None:
    ups = {n: upstreams[n].address for n in ("v1", "v2")}
    proxy = make_proxy(upstreams=ups, weights={"v1": 10, "v2": 90})
    valid, invalid = _configs(proxy, ups)
    write_atomic(proxy.config_path, valid[1])
    before = await metric_values(proxy.admin_port, RELOAD_METRIC)
    fds_before = proxy.fd_count()
    load = Load(proxy.port, rate=150, seconds=16, run=f"reload-{time.time_ns()}")
    load_task = asyncio.create_task(load.run_load())
    await asyncio.sleep(1.0)
    results = await asyncio.wait_for(_storm(proxy, valid, invalid), 40)
    ledger = await asyncio.wait_for(load_task, 60)
    await asyncio.sleep(0.3)
    s = summarize(ledger, [upstreams["v1"], upstreams["v2"]], load.run)
    after = await metric_values(proxy.admin_port, RELOAD_METRIC)
    print("reload storm:", {k: v for k, v in s.items() if k != "error_window"}, results.count("ok"))
    assert s["sent"] == s["answered"] == s["ok"], s
    assert s["proxy_errors"] == 0 and s["transport_errors"] == 0, s
    assert s["received_upstream"] == s["sent"] and not s["duplicated"], s
    ok = after.get('{result="ok"}', 0) - before.get('{result="ok"}', 0)
    rejected = after.get('{result="rejected"}', 0) - before.get('{result="rejected"}', 0)
    assert (ok, rejected) == (RELOADS, INVALID), results
    assert proxy.fds_back_to(fds_before), (proxy.fd_count(), fds_before)
