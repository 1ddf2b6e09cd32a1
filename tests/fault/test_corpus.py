"""Corpus replay: malformed and smuggling requests against the proxy + recording upstream.

Each case is sent by a raw-socket client; the test checks the status, whether the proxy
closed the connection, and what the recording upstream received (nothing for a
rejection, never a smuggled request line, never more requests than the client sent).
After every case the proxy still answers 200 and its open fd count is back to baseline.
"""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from .cases import Case, guardian_cases, reliability_cases, te_permutation_cases
from .conftest import launch, require_proxy
from .harness import (
    ProxyProcess,
    RawResult,
    UpstreamProcess,
    health_get,
    raw_bytes,
    raw_exchange,
)

pytestmark = pytest.mark.slow

TRAP = "trap.invalid:1"  # replaced by the trap upstream's address at run time
CASES = reliability_cases(TRAP) + te_permutation_cases() + guardian_cases()

# Cases where the proxy is known to misbehave (reported); they pass again once it is fixed.
KNOWN: dict[str, str] = {}  # case name -> reason, marked xfail(strict=False)
PARAMS = [
    pytest.param(c, marks=pytest.mark.xfail(strict=False, reason=KNOWN[c.name]))
    if c.name in KNOWN
    else c
    for c in CASES
]


def _id(case: Case) -> str:
    return case.name.encode("ascii", "backslashreplace").decode()[:80]


@pytest.fixture(scope="module")
def corpus_proxy(
    fault_tmp: Path, upstreams: dict[str, UpstreamProcess]
) -> Iterator[tuple[ProxyProcess, int]]:
    require_proxy()
    started: list[ProxyProcess] = []
    try:
        ups = {n: upstreams[n].address for n in ("v1", "v2")}
        proxy = launch(
            fault_tmp / "corpus", started, upstreams=ups, limits={"header_timeout": "1s"}
        )
        for _ in range(4):  # warm the upstream pools before the fd baseline
            assert health_get(proxy.port) == 200
        time.sleep(0.3)
        yield proxy, proxy.fd_count()
    finally:
        for p in started:
            p.stop()


def _substitute(payload: bytes | tuple[bytes, ...], trap: str) -> list[bytes]:
    parts = list(payload) if isinstance(payload, tuple) else [payload]
    return [p.replace(TRAP.encode(), trap.encode()) for p in parts]


def _upstream_answers(res: RawResult) -> int:
    """Responses the upstream made (ours carry X-Upstream; proxy-made errors do not)."""
    return res.data.lower().count(b"\r\nx-upstream:")


def _check_reject(case: Case, res: RawResult, reqs: list[dict], raw: bytes) -> None:
    assert res.status in case.statuses, f"status {res.status}, want {case.statuses}"
    assert res.closed, "connection left open after a rejection"
    assert not reqs and not raw, f"forwarded despite rejection: {raw[:200]!r}"


def _check_pass(case: Case, res: RawResult, reqs: list[dict], payload: bytes) -> None:
    assert res.status == 200, f"status {res.status}: {res.data[:200]!r}"
    assert len(reqs) == case.forwarded, f"upstream saw {len(reqs)} requests"
    method, target = payload.split(b" ", 2)[:2]
    first = _first_request(reqs, target)
    assert first["method"].encode() == method
    if target.startswith(b"/"):  # origin-form is forwarded as sent
        assert first["url"].encode("latin-1") == target, [r["url"] for r in reqs]
    if case.body_len is not None:
        assert first["body_len"] == case.body_len, first["body_len"]
    if "no-underscore" in case.notes:
        names = [k for k, _ in first["headers"]]
        assert not [n for n in names if "_" in n], f"underscore header forwarded: {names}"


def _first_request(reqs: list[dict], target: bytes) -> dict:
    """The record of the case's first request. Records are gathered upstream by upstream, so
    pipelined requests split over v1 and v2 are not in arrival order: find it by its target."""
    if len(reqs) > 1 and target.startswith(b"/"):
        for rec in reqs:
            if rec["url"].encode("latin-1") == target:
                return rec
    return reqs[0]


def _check_safe(case: Case, res: RawResult, reqs: list[dict], raw: bytes) -> None:
    if res.status in case.statuses and not _upstream_answers(res):
        assert res.closed, "connection left open after a rejection"
        assert not reqs, "forwarded despite rejection"
    assert len(reqs) <= case.forwarded, f"upstream saw {len(reqs)} requests from one"


def _probe_pools(port: int) -> None:
    """Requests that would complete a smuggled prefix left on a pooled upstream connection."""
    for _ in range(4):
        assert health_get(port) == 200, "proxy stopped answering after the case"


@pytest.mark.parametrize("case", PARAMS, ids=_id)
def test_corpus_case(
    case: Case, corpus_proxy: tuple[ProxyProcess, int], upstreams: dict[str, UpstreamProcess]
) -> None:
    proxy, baseline = corpus_proxy
    marks = {n: u.mark() for n, u in upstreams.items()}
    parts = _substitute(case.payload, upstreams["trap"].address)
    close_wait = 0.3 if case.kind == "pass" else 1.0
    res = raw_exchange(proxy.port, parts, case.timeout, close_wait, case.pause)
    time.sleep(0.05)
    case_records = [r for n, u in upstreams.items() for r in u.since(marks[n])]
    assert proxy.alive(), proxy.log_tail()
    _probe_pools(proxy.port)
    time.sleep(0.05)
    after = [r for n, u in upstreams.items() for r in u.since(marks[n]) if r["kind"] == "req"]
    smuggled = [r["url"] for r in after if "/smuggled" in r["url"]]
    assert not smuggled, f"the upstream parsed a smuggled request: {smuggled}"
    assert not upstreams["trap"].since(marks["trap"]), "request reached an unconfigured address"
    reqs = [r for r in case_records if r["kind"] == "req"]
    assert len(reqs) <= max(_upstream_answers(res), 1), "upstream saw more requests than answered"
    if case.no_interim:
        assert b" 100 " not in res.data.split(b"\r\n", 1)[0], "sent 100 Continue before 413"
    if case.kind == "reject":
        _check_reject(case, res, reqs, raw_bytes(case_records))
    elif case.kind == "pass":
        _check_pass(case, res, reqs, parts[0])
    else:
        _check_safe(case, res, reqs, raw_bytes(case_records))
    assert proxy.fds_back_to(baseline), f"fds {proxy.fd_count()} > baseline {baseline}"


def test_corpus_size() -> None:
    assert len(CASES) >= 60
    assert len({c.name for c in CASES}) == len(CASES), "case names must be unique"
    assert set(KNOWN) <= {c.name for c in CASES}
