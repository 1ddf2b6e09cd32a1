"""What `GET /api/v1/status` shows, built from plain parts (proxy.control gathers them)."""

from __future__ import annotations

import asyncio
from typing import Any

from proxy.build import build
from proxy.config.schema import Config, Route
from proxy.state import RoutingState


def status(
    config: Config,
    weights: dict[str, dict[str, float]],
    routing: RoutingState,
    metrics: Any,
    *,
    head: int,
    where: dict[str, str],
    last_reload_error: str | None,
    upstreams: list[dict],
    canaries: list[dict],
    workers: list[dict] | None,
) -> dict:
    """SPEC §3's status document; `metrics` answers `version_rates(route, version)`."""
    return {
        "revision": head,
        **where,
        "last_reload_error": last_reload_error,
        "routes": [
            route_status(r, weights.get(r.name, {}), routing, metrics) for r in config.routes
        ],
        "upstreams": [{"name": u["name"], "endpoints": u["endpoints"]} for u in upstreams],
        "canaries": canaries,
        **({"workers": workers} if workers is not None else {}),
        # asyncio tasks of this process (a leak shows as a count that keeps growing)
        "tasks": len(asyncio.all_tasks()),
        "build": build(),  # "compiled" (mypyc hot path) or "pure"
    }


def route_status(r: Route, weights: dict[str, float], routing: RoutingState, metrics: Any) -> dict:
    match = routing.canary_match.get(r.name)
    return {
        "name": r.name,
        "service": r.service or r.name,
        "weights": weights,
        "live": [s for s, w in weights.items() if w > 0],
        "idle": [s for s, w in weights.items() if w <= 0],
        "preview": {"header": r.preview.header, "value": r.preview.value} if r.preview else None,
        "override": r.name in routing.weights,
        "file_weights": {d.subset: float(d.weight) for d in r.destinations},
        "canary_match": match[0] if match else None,
        "versions": {s: metrics.version_rates(r.name, s) for s in weights},
        # open WebSocket/Upgrade tunnels by version (metrics without tunnels: none shown)
        "tunnels": metrics.tunnels(r.name) if hasattr(metrics, "tunnels") else {},
    }


def upstreams(pools: list[dict], workers: Any) -> list[dict]:
    """`pools` (Pools.status()) with `ejected` as any worker sees it, when there are any."""
    if workers is None:
        return pools
    ejected = workers.ejected()
    for u in pools:
        for e in u["endpoints"]:
            e["ejected"] = (u["name"], e["address"]) in ejected
    return pools
