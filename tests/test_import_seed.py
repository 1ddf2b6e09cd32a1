"""Every manifest of the release-strategies chapter our users copy from
(/work/shared/seed/release-strategies.txt, kept in tests/manifests/seed/) imports and routes
as the chapter says: blue-green by Ingress and by VirtualService, the 5 % gray release and
its scripted stages, Flagger's canary, A/B by user id and by cookie, and the partial
`spec: http:` snippets for ratio, user id, region, allow-list and cookie gray releases.
"""

from __future__ import annotations

import pathlib
from collections import Counter
from collections.abc import AsyncIterator

import pytest
from test_import_common import (
    Upstreams,
    ask,
    imported,
    manifest,
    notes_of,
    pick,
    serve,
    table_of,
    upstreams,
)

from proxy.importers import translate

SEED = "seed/"
MYAPP = "v1=127.0.0.1:1,v2=127.0.0.1:2"
COLORS = "blue=127.0.0.1:1,green=127.0.0.1:2"
AB = "version-a=127.0.0.1:1,version-b=127.0.0.1:2"


@pytest.fixture
async def ups() -> AsyncIterator[Upstreams]:
    async with upstreams() as holder:
        yield holder


def split(table, n: int = 100, **kw) -> Counter:
    return Counter(pick(table, rnd=i / n, **kw)[1] for i in range(n))


async def test_blue_green_ingress_then_the_patched_backend(
    ups: Upstreams, tmp_path: pathlib.Path
) -> None:
    proxy = await serve(ups, "ingress-nginx", [SEED + "ingress-blue-green.yaml"], ["myapp-blue"])
    try:
        blue = {(await ask(proxy, "/", "myapp.example.com")).name for _ in range(10)}
    finally:
        await proxy.close()
    assert blue == {"myapp-blue"}
    # kubectl patch ... backend/service/name: myapp-green
    text = pathlib.Path(manifest(SEED + "ingress-blue-green.yaml")).read_text()
    patched = tmp_path / "green.yaml"
    patched.write_text(text.replace("name: myapp-blue", "name: myapp-green"))
    doc, errors = translate("ingress-nginx", [str(patched)], "myapp-green=127.0.0.1:2")
    assert errors == [] and doc is not None
    assert [d["destination"] for d in doc["routes"][0]["route"]] == ["myapp-green-80"]


async def test_blue_green_virtual_service_and_the_switch(ups: Upstreams) -> None:
    proxy = await serve(ups, "istio", [SEED + "istio-blue-green.yaml"], ["blue", "green"])
    try:
        before = {(await ask(proxy, "/", "myapp")).name for _ in range(20)}
    finally:
        await proxy.close()
    # the switch script's VirtualService has no DestinationRule: --endpoints names both
    proxy = await serve(ups, "istio", [SEED + "istio-switch-green.yaml"], ["blue", "green"])
    try:
        after = {(await ask(proxy, "/", "myapp")).name for _ in range(20)}
    finally:
        await proxy.close()
    assert before == {"blue"} and after == {"green"}


@pytest.mark.parametrize("name", ["istio-canary-5.yaml", "istio-order-service.yaml"])
def test_gray_release_95_5(name: str) -> None:
    config = imported("istio", SEED + name, MYAPP)
    host = config.routes[0].hosts[0]
    assert split(table_of(config), host=host) == Counter({f"{host}-v1": 95, f"{host}-v2": 5})


@pytest.mark.parametrize("weight", [5, 10, 25, 50, 75, 100])
def test_each_stage_of_the_rollout_script(tmp_path: pathlib.Path, weight: int) -> None:
    text = pathlib.Path(manifest(SEED + "istio-rollout-stage.yaml")).read_text()
    text = text.replace("$SERVICE_NAME", "myapp").replace("$((100 - weight))", str(100 - weight))
    path = tmp_path / "stage.yaml"
    path.write_text(text.replace("$weight", str(weight)))
    doc, errors = translate("istio", [str(path)], MYAPP)
    assert errors == [] and doc is not None
    from proxy.config.load import load_text
    from proxy.importers.common import dump_config

    config, _ = load_text(dump_config(doc), "stage.yaml")
    assert config is not None
    want = Counter({"myapp-v1": 100 - weight, "myapp-v2": weight})
    assert split(table_of(config), host="myapp") == +want


def test_the_rollback_sends_all_to_v1(tmp_path: pathlib.Path) -> None:
    text = pathlib.Path(manifest(SEED + "istio-rollback.yaml")).read_text()
    path = tmp_path / "rollback.yaml"
    path.write_text(text.replace("$SERVICE_NAME", "myapp"))
    doc, errors = translate("istio", [str(path)], "v1=127.0.0.1:1")
    assert errors == [] and doc is not None
    assert doc["routes"][0]["route"] == [{"destination": "myapp-v1", "weight": 100}]


@pytest.mark.parametrize("name", ["flagger-canary.yaml", "flagger-canary-short.yaml"])
def test_flagger_canary_starts_on_the_primary_and_steps_by_ten_to_fifty(name: str) -> None:
    config = imported("flagger", SEED + name, "")
    (canary,) = config.canaries
    a = canary.analysis
    assert (canary.mode, a.interval, a.threshold, a.max_weight, a.step_weight) == (
        "canary",
        60,
        5,
        50,
        10,
    )
    assert a.progress_deadline == 60
    assert {u.name: u.endpoints for u in config.upstreams} == {
        "myapp-primary": ("myapp-primary.default:80",),
        "myapp-canary": ("myapp-canary.default:80",),
    }
    assert split(table_of(config)) == Counter({"myapp-primary": 100})


def test_flagger_canary_keeps_its_three_checks_and_the_load_test() -> None:
    a = imported("flagger", SEED + "flagger-canary.yaml", "").canaries[0].analysis
    assert [(m.name, m.min, m.max) for m in a.metrics] == [
        ("request-success-rate", 99, None),
        ("request-duration", None, 500),
        ("error-rate", None, 1),
    ]
    (hook,) = a.webhooks
    assert (hook.type, hook.url, hook.timeout) == ("rollout", "http://flagger-loadtester/", 5)
    notes = "\n".join(notes_of("flagger", [SEED + "flagger-canary.yaml"]))
    assert "spec.webhooks: read as spec.analysis.webhooks" in notes


async def test_ab_by_user_id_even_and_odd(ups: Upstreams) -> None:
    proxy = await serve(ups, "istio", [SEED + "istio-ab-header.yaml"], ["version-a", "version-b"])
    try:
        even = {
            (await ask(proxy, "/", "myapp", headers={"user-id": f"u{2 * i}"})).name
            for i in range(10)
        }
        odd = {
            (await ask(proxy, "/", "myapp", headers={"user-id": f"u{2 * i + 1}"})).name
            for i in range(10)
        }
        neither = await ask(proxy, "/", "myapp", headers={"user-id": "anonymous"})
    finally:
        await proxy.close()
    assert even == {"version-a"} and odd == {"version-b"}
    assert neither.status == 404  # the chapter's VirtualService has no default route


def test_ab_by_cookie_and_the_random_default() -> None:
    table = table_of(imported("istio", SEED + "istio-ab-cookie.yaml", AB))
    assert (
        pick(table, headers={"cookie": "x=1; ab_test=version_a"}, host="myapp")[1]
        == "myapp-version-a"
    )
    assert (
        pick(table, headers={"cookie": "ab_test=version_b; y=2"}, host="myapp")[1]
        == "myapp-version-b"
    )
    assert split(table, host="myapp") == Counter({"myapp-version-a": 50, "myapp-version-b": 50})


def test_ratio_snippet_splits_90_10() -> None:
    config = imported("istio", SEED + "fragment-ratio.yaml", MYAPP)
    assert split(table_of(config)) == Counter({"v1": 90, "v2": 10})


@pytest.mark.parametrize(
    ("name", "headers", "subset"),
    [
        ("fragment-user-id.yaml", {"user-id": "user-10"}, "v2"),
        ("fragment-user-id.yaml", {"user-id": "user-11"}, None),
        ("fragment-region.yaml", {"x-region": "beijing"}, "v2"),
        ("fragment-region.yaml", {"x-region": "shanghai"}, None),
        ("fragment-whitelist.yaml", {"user-id": "test-user-001"}, "v2"),
        ("fragment-whitelist.yaml", {"user-id": "test-user-002"}, None),
        ("fragment-cookie.yaml", {"cookie": "a=1; beta_tester=true"}, "v2"),
        ("fragment-cookie.yaml", {"cookie": "beta_tester=false"}, None),
    ],
)
def test_gray_release_snippets_route_their_users(
    name: str, headers: dict, subset: str | None
) -> None:
    table = table_of(imported("istio", SEED + name, "v2=127.0.0.1:2"))
    assert pick(table, headers=headers)[1] == subset


def test_a_snippet_without_kind_is_read_as_a_virtual_service_and_says_so() -> None:
    notes = "\n".join(notes_of("istio", [SEED + "fragment-region.yaml"], "v2=127.0.0.1:2"))
    assert "VirtualService/fragment-region: kind: not given: read as a VirtualService" in notes


async def test_cookie_snippet_with_real_requests(ups: Upstreams) -> None:
    proxy = await serve(ups, "istio", [SEED + "fragment-cookie.yaml"], ["v2"])
    try:
        beta = await ask(proxy, "/", headers={"Cookie": "beta_tester=true"})
        other = await ask(proxy, "/")
    finally:
        await proxy.close()
    assert beta.name == "v2" and other.status == 404
