"""/metrics on the admin port after known traffic through the real proxy."""

from __future__ import annotations

import socket

import aiohttp
from prometheus_client.parser import text_string_to_metric_families
from test_app_helpers import Admin, config_text, proxy_get, running_app, upstreams


def _value(text: str, name: str, **labels: str) -> float:
    for fam in text_string_to_metric_families(text):
        for s in fam.samples:
            if s.name == name and s.labels == labels:
                return s.value
    raise AssertionError(f"no sample {name}{labels}")


def _dead_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def test_counts_latency_weights_and_upstream_errors(tmp_path) -> None:
    dead = _dead_port()
    async with upstreams() as (p1, _):
        cfg = tmp_path / "c.yaml"
        text = config_text(p1, dead, 100, 0, extra="metrics: {compat: [istio, http]}\n")
        # failover off: each request to the dead canary is answered with its error (with
        # failover it would reach v1: tests/test_gateway_dataplane.py counts that case); the
        # refused endpoint is ejected at once, so the first gets 502, the next ones 503
        cfg.write_text(text.replace("    preview: {}\n", '    preview: {}\n    failover: "off"\n'))
        async with running_app(cfg, tmp_path / "s") as app, aiohttp.ClientSession() as s:
            admin = Admin(s, app)
            for _ in range(10):
                assert await proxy_get(s, app) == (200, "v1")
            statuses = [
                (await proxy_get(s, app, headers={"x-canary-preview": "1"}))[0] for _ in range(3)
            ]
            assert statuses == [502, 503, 503]
            status, text = await admin.call("GET", "/metrics")
            assert status == 200 and isinstance(text, str)
            req = "canaryproxy_requests_total"
            assert _value(text, req, route="default", version="v1", code="200") == 10
            assert _value(text, req, route="default", version="v2", code="502") == 1
            assert _value(text, req, route="default", version="v2", code="503") == 2
            h = "canaryproxy_request_duration_seconds_count"
            assert _value(text, h, route="default", version="v1") == 10
            assert _value(text, "canaryproxy_upstream_errors_total", version="v2",
                          reason="connect") == 1  # fmt: skip
            assert _value(text, "canaryproxy_upstream_errors_total", version="v2",
                          reason="no_healthy") == 2  # fmt: skip
            assert _value(text, "canaryproxy_route_weight", route="default", version="v1") == 100
            assert _value(text, "canaryproxy_route_weight", route="default", version="v2") == 0
            assert _value(text, "istio_requests_total", destination_service="default",
                          destination_version="v2", response_code="502") == 1  # fmt: skip
            assert _value(text, "http_requests_total", version="v1", status="200") == 10
            assert _value(text, "canaryproxy_config_reloads_total", result="ok") == 0
            _, st = await admin.call("GET", "/api/v1/status")
            v2 = st["routes"][0]["versions"]["v2"]  # type: ignore[index]
            assert v2["requests"] == 3 and v2["error_pct"] == 100.0
