"""Fixtures of the fault suite: recording upstreams and the proxy as real processes.

The helpers live in `harness.py` (also used by benchmarks/soak.py); this file wires
them into pytest with teardown by PID. Set FAULT_TARGET=nginx to run the corpus
against the local nginx instead, as a differential oracle for the harness itself.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from .harness import NginxProcess, ProxyProcess, UpstreamProcess, config_text, proxy_available

TARGET = os.environ.get("FAULT_TARGET", "canaryproxy")


def require_proxy() -> None:
    if TARGET == "canaryproxy" and not proxy_available():
        pytest.skip("the data plane (proxy.app) is not implemented in this tree yet")


@pytest.fixture(scope="session")
def fault_tmp(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("fault")


@pytest.fixture(scope="session")
def upstreams(fault_tmp: Path) -> Iterator[dict[str, UpstreamProcess]]:
    """v1 and v2 are configured; `trap` is not, and must never receive anything."""
    started: dict[str, UpstreamProcess] = {}
    try:
        for name in ("v1", "v2", "trap"):
            started[name] = UpstreamProcess(name, fault_tmp / f"upstream-{name}.jsonl").start()
        yield started
    finally:
        for u in started.values():
            u.stop()


ProxyFactory = Callable[..., ProxyProcess]


@pytest.fixture
def make_proxy(fault_tmp: Path, request: pytest.FixtureRequest) -> Iterator[ProxyFactory]:
    """Start a proxy for one test; `make_proxy(upstreams={...}, limits={...})`."""
    require_proxy()
    started: list[ProxyProcess] = []

    def factory(**kw: object) -> ProxyProcess:
        workdir = fault_tmp / f"{request.node.name[:40]}-{len(started)}"
        return launch(workdir, started, **kw)

    try:
        yield factory
    finally:
        for p in started:
            p.stop()


def launch(workdir: Path, started: list[ProxyProcess], **kw: object) -> ProxyProcess:
    cls = NginxProcess if TARGET == "nginx" else ProxyProcess
    proxy = cls(workdir)
    proxy.kw = dict(kw)  # type: ignore[attr-defined]
    proxy.config = config_text(proxy.port, proxy.admin_port, **kw)  # type: ignore[arg-type]
    started.append(proxy)
    return proxy.start()
