"""Metric providers: where a check's value comes from.

`builtin`: the proxy's own per-version counters, diffed per window (exact, no scrape lag;
done by the runner from `CanaryHost.snapshot`). `prometheus`: PromQL over the HTTP API
(`/api/v1/query`), for fleets of replicas scraped by one Prometheus. Builtin metric names
have ready-made queries over canaryproxy's own series; other names need a `query` template
with `{{ route }}`, `{{ version }}`, `{{ interval }}`, `{{ service }}` placeholders.
"""

from __future__ import annotations

import logging
import math
import re

import aiohttp

log = logging.getLogger("canaryproxy.canary")

_SEL = 'route="{{ route }}",version="{{ version }}"'
_REQ = "sum(rate(canaryproxy_requests_total{" + _SEL + "}[{{ interval }}]))"
# "or vector(0)": a window without any 5xx has no 5xx series at all, which means 0 %.
_ERR = (
    "(sum(rate(canaryproxy_requests_total{" + _SEL + ',code=~"5.."}[{{ interval }}])) or vector(0))'
)
BUILTIN_QUERIES = {
    "error-rate": f"100 * {_ERR} / {_REQ}",
    "request-success-rate": f"100 - 100 * {_ERR} / {_REQ}",
    "request-duration": (
        "1000 * histogram_quantile(0.99, sum by (le) (rate("
        "canaryproxy_request_duration_seconds_bucket{" + _SEL + "}[{{ interval }}])))"
    ),
}
REQUESTS_QUERY = "sum(increase(canaryproxy_requests_total{" + _SEL + "}[{{ interval }}]))"

_PLACEHOLDER = re.compile(r"\{\{\s*(route|version|interval|service)\s*\}\}")


def render(template: str, route: str, version: str, interval: str, service: str) -> str:
    """Fill `{{ name }}` placeholders (spaces inside the braces optional)."""
    values = {"route": route, "version": version, "interval": interval, "service": service}
    return _PLACEHOLDER.sub(lambda m: values[m.group(1)], template)


def prom_duration(seconds: float) -> str:
    """A PromQL range for an interval, at least 1 s, in whole seconds."""
    return f"{max(1, math.ceil(seconds))}s"


class PrometheusProvider:
    """`run_query(q) -> float | None` over Prometheus' HTTP API."""

    def __init__(self, session: aiohttp.ClientSession, address: str, timeout: float = 10.0):
        self.address = address.rstrip("/")
        self._session = session
        self._timeout = aiohttp.ClientTimeout(total=timeout)

    async def run_query(self, query: str) -> float | None:
        """The first sample of an instant query; None for no data, NaN, or an error."""
        url = f"{self.address}/api/v1/query"
        try:
            async with self._session.get(url, params={"query": query}, timeout=self._timeout) as r:
                body = await r.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as e:
            log.warning("prometheus query failed: %s", e)
            return None
        return first_value(body)


def first_value(body: object) -> float | None:
    """Parse an /api/v1/query answer (vector or scalar)."""
    if not isinstance(body, dict) or body.get("status") != "success":
        return None
    data = body.get("data") or {}
    result = data.get("result")
    if data.get("resultType") == "scalar" and isinstance(result, list):
        return _num(result[1])
    if isinstance(result, list) and result:
        return _num(result[0].get("value", [0, "NaN"])[1])
    return None


def _num(s: object) -> float | None:
    try:
        v = float(s)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None
    return None if math.isnan(v) or math.isinf(v) else v
