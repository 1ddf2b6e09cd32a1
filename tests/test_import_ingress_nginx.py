"""ingress-nginx Ingress import: canary precedence (header, cookie, weight), paths and their
order, translated annotations, refusals; then real requests through the real proxy."""

from __future__ import annotations

from collections import Counter
from collections.abc import AsyncIterator

import pytest
from test_import_common import (
    Upstreams,
    ask,
    errors_of,
    imported,
    manifest,
    notes_of,
    pick,
    serve,
    table_of,
    upstreams,
)

from proxy.config.schema import Redirect, Rewrite
from proxy.importers import import_manifests

CANARY_NAMES = ["shop-80", "shop-v2-80", "shop-api-8080", "shop-api-v2-8080", "blog", "blog-v2"]
CANARY_EPS = ",".join(f"{n}=127.0.0.1:{9000 + i}" for i, n in enumerate(CANARY_NAMES))
PATH_NAMES = ["docs", "docs-v1", "static", "secure", "api", "fallback"]
PATH_EPS = ",".join(f"{n}=127.0.0.1:{9100 + i}" for i, n in enumerate(PATH_NAMES))
SHOP = "shop.example.com"


@pytest.fixture
async def ups() -> AsyncIterator[Upstreams]:
    async with upstreams() as holder:
        yield holder


@pytest.mark.parametrize(
    ("headers", "subset"),
    [
        ({"x-canary": "always"}, "shop-v2-80"),
        ({"x-canary": "always", "cookie": "canary=never"}, "shop-v2-80"),  # header first
        ({"x-canary": "never", "cookie": "canary=always"}, "shop-80"),  # never stops there
        ({"cookie": "canary=always"}, "shop-v2-80"),
        ({"cookie": "canary=never"}, "shop-80"),
        ({"x-canary": "maybe", "cookie": "canary=always"}, "shop-v2-80"),  # other values go on
    ],
)
def test_canary_precedence_header_then_cookie(headers: dict[str, str], subset: str) -> None:
    table = table_of(imported("ingress-nginx", "ingress-canary.yaml", CANARY_EPS))
    for i in range(10):  # the weight never decides these
        assert pick(table, "/", headers, rnd=i / 10, host=SHOP)[1] == subset


def test_canary_weight_decides_the_rest_with_exact_counts() -> None:
    table = table_of(imported("ingress-nginx", "ingress-canary.yaml", CANARY_EPS))
    picks = Counter(
        pick(table, "/", {"cookie": "canary=maybe"}, rnd=i / 100, host=SHOP)[1] for i in range(100)
    )
    assert picks == Counter({"shop-80": 80, "shop-v2-80": 20})


def test_header_value_wins_over_pattern_and_weight_total_counts() -> None:
    table = table_of(imported("ingress-nginx", "ingress-canary.yaml", CANARY_EPS))
    assert pick(table, "/api/x", {"x-version": "beta"}, host=SHOP)[1] == "shop-api-v2-8080"
    # a value is set: `always` means nothing special, the pattern is ignored
    assert pick(table, "/api/x", {"x-version": "always"}, rnd=0.0, host=SHOP)[1] == "shop-api-8080"
    picks = Counter(pick(table, "/api", rnd=i / 1000, host=SHOP)[1] for i in range(1000))
    assert picks == Counter({"shop-api-8080": 900, "shop-api-v2-8080": 100})  # 100 of 1000


def test_header_pattern_is_a_search_and_never_leaks_to_other_hosts() -> None:
    table = table_of(imported("ingress-nginx", "ingress-canary.yaml", CANARY_EPS))
    assert pick(table, "/", {"x-tester": "qa-team-b"}, host="blog.example.com")[1] == "blog-v2-80"
    assert pick(table, "/", {"x-tester": "team-c"}, host="blog.example.com")[1] == "blog-80"
    # blog's canary rules apply to blog only; shop's header rule only to shop
    assert pick(table, "/", {"x-tester": "team-a"}, rnd=0.0, host=SHOP)[1] == "shop-80"
    assert pick(table, "/", {"x-canary": "always"}, host="blog.example.com")[1] == "blog-80"


def test_canary_annotations_other_than_canary_ones_are_inherited_notes() -> None:
    notes = "\n".join(notes_of("ingress-nginx", ["ingress-canary.yaml"], CANARY_EPS))
    assert (
        "Ingress/shop-canary: metadata.annotations.nginx.ingress.kubernetes.io/proxy-read-timeout: ignored: a canary inherits them"
        in notes
    )
    assert (
        "Ingress/shop: spec.ingressClassName: ignored: which controller serves the Ingress" in notes
    )


def test_upstreams_are_service_port_and_bare_names_bind_one_port_services() -> None:
    config = imported("ingress-nginx", "ingress-canary.yaml", CANARY_EPS)
    assert config.upstream("blog-80").endpoints == ("127.0.0.1:9004",)  # type: ignore[union-attr]
    assert config.upstream("shop-api-8080") is not None


@pytest.mark.parametrize(
    ("host", "path", "subset"),
    [
        ("www.example.com", "/docs/v1", "docs-v1-80"),  # Exact
        ("www.example.com", "/docs/v1/x", "docs-80"),  # Prefix /docs
        ("www.example.com", "/docs", "docs-80"),
        ("www.example.com", "/docsy", "fallback-80"),  # Prefix is element-wise
        ("www.example.com", "/staticky", "static-http"),  # ImplementationSpecific: nginx prefix
        ("www.example.com", "/other", "fallback-80"),  # the Ingress's defaultBackend
        ("secure.example.com", "/x", None),  # plain http: redirected to https first
        ("unknown.example.com", "/docs", None),
    ],
)
def test_paths_and_their_order(host: str, path: str, subset: str | None) -> None:
    table = table_of(imported("ingress-nginx", "ingress-paths.yaml", PATH_EPS))
    assert pick(table, path, host=host, listener="web")[1] == subset


def test_ssl_redirect_app_root_permanent_redirect_and_rewrite_translate() -> None:
    config = imported("ingress-nginx", "ingress-paths.yaml", PATH_EPS)
    by = {r.name: r for r in config.routes}
    assert [(ln.name, ln.listen) for ln in config.listeners] == [("web", "0.0.0.0:8080")]
    https = by["site-1-0-to-https"]
    assert https.listeners == ("web",) and https.redirect == Redirect(scheme="https", status=308)
    assert by["www.example.com-app-root"].redirect == Redirect(path="/home", status=302)
    assert by["moved-0-0"].redirect == Redirect(
        "https", "new.example.com", None, "/welcome", None, 308
    )
    assert by["rewrite-0-0"].rewrite == Rewrite(
        regex="(?i)^(?:/something(/|$)(.*)).*", substitution="/\\2", host="internal.example.com"
    )
    assert by["site-0-0"].max_body == 8 * 1024 * 1024
    table = table_of(config)
    assert pick(table, "/x", host="secure.example.com", listener="web")[0] == "site-1-0-to-https"
    assert pick(table, "/", host="www.example.com", listener="web")[0] == "www.example.com-app-root"
    assert pick(table, "/SOMETHING/else", host="api.example.com", listener="web")[1] == "api-80"


def test_limits_of_ingress_nginx_are_refused_not_guessed() -> None:
    errors = errors_of("ingress-nginx", "ingress-unsupported.yaml",
                       "app=127.0.0.1:1,app-v2=127.0.0.1:2,app-v3=127.0.0.1:3")  # fmt: skip
    text = "\n".join(errors)
    ann = "metadata.annotations.nginx.ingress.kubernetes.io/"
    assert (
        f"Ingress/app: {ann}configuration-snippet: not supported: raw nginx configuration" in text
    )
    assert f"Ingress/app: {ann}affinity: not supported: pins a pod" in text
    assert f"Ingress/app: {ann}limit-rps: not supported" in text
    assert (
        "spec.rules[0].http.paths[1].backend.resource: not supported: only Service backends" in text
    )
    assert (
        "app.example.com /missing (Prefix): no main Ingress has this host, path and pathType"
        in text
    )
    assert "a second canary for app.example.com /: ingress-nginx applies one per location" in text


def test_best_effort_drops_an_ingress_with_a_refused_annotation() -> None:
    got = import_manifests("ingress-nginx", [manifest("ingress-unsupported.yaml")],
                           "app=127.0.0.1:1,app-v2=127.0.0.1:2", best_effort=True)  # fmt: skip
    assert got.config is None and got.fatal == [
        f"{manifest('ingress-unsupported.yaml')}: nothing left to route"
    ]
    notes = "\n".join(notes_of("ingress-nginx", ["ingress-unsupported.yaml"], "app=127.0.0.1:1"))
    assert "cert-manager.io/cluster-issuer: ignored: not read by ingress-nginx" in notes
    assert "proxy-buffering: ignored: nginx buffering" in notes
    assert "canary-weight: ignored: ingress-nginx reads them only on a canary" in notes


# --- real requests ------------------------------------------------------------------------


async def test_canary_by_header_cookie_and_weight_with_real_traffic(ups: Upstreams) -> None:
    names = ["shop-80", "shop-v2-80", "shop-api-8080", "shop-api-v2-8080", "blog", "blog-v2"]
    proxy = await serve(ups, "ingress-nginx", ["ingress-canary.yaml"], names)
    try:
        always = await ask(proxy, "/", SHOP, headers={"X-Canary": "always"})
        never = await ask(
            proxy, "/", SHOP, headers={"X-Canary": "never", "Cookie": "canary=always"}
        )
        cookie = await ask(proxy, "/", SHOP, headers={"Cookie": "canary=always"})
        beta = await ask(proxy, "/api/orders", SHOP, headers={"X-Version": "beta"})
        other_host = await ask(proxy, "/", "blog.example.com", headers={"X-Canary": "always"})
        unknown = await ask(proxy, "/", "nowhere.example.com")
        split = Counter([(await ask(proxy, "/", SHOP)).name for _ in range(200)])
    finally:
        await proxy.close()
    assert (always.name, never.name, cookie.name) == ("shop-v2-80", "shop-80", "shop-v2-80")
    assert beta.name == "shop-api-v2-8080" and beta.body["path"] == "/api/orders"
    assert other_host.name == "blog"
    assert unknown.status == 404
    # 80/20 random: shop-v2's count is Binomial(200, 0.2), mean 40; 15..70 is beyond 5 sigma
    assert split["shop-80"] + split["shop-v2-80"] == 200 and 15 <= split["shop-v2-80"] <= 70


async def test_rewrite_target_and_upstream_vhost_with_real_traffic(ups: Upstreams) -> None:
    proxy = await serve(ups, "ingress-nginx", ["ingress-paths.yaml"], PATH_NAMES)
    port = proxy.ports["web"]
    try:
        moved = await ask(proxy, "/something/new/page?x=1", "api.example.com", port=port)
        bare = await ask(proxy, "/something", "api.example.com", port=port)
        docs = await ask(proxy, "/docs/guide", "www.example.com", port=port)
    finally:
        await proxy.close()
    assert moved.name == "api" and moved.body["path"] == "/new/page?x=1"
    assert moved.body["headers"]["host"] == "internal.example.com"
    assert bare.body["path"] == "/"
    assert docs.name == "docs" and docs.body["path"] == "/docs/guide"


async def test_ssl_redirect_app_root_and_permanent_redirect_answer(ups: Upstreams) -> None:
    """Needs the data plane's redirect answers."""
    proxy = await serve(ups, "ingress-nginx", ["ingress-paths.yaml"], PATH_NAMES)
    port = proxy.ports["web"]
    try:
        https = await ask(proxy, "/pay?x=1", "secure.example.com", port=port)
        root = await ask(proxy, "/", "www.example.com", port=port)
        moved = await ask(proxy, "/any/thing", "old.example.com", port=port)
    finally:
        await proxy.close()
    assert (https.status, https.headers["Location"]) == (308, "https://secure.example.com/pay?x=1")
    assert root.status == 302 and root.headers["Location"].endswith(f"www.example.com:{port}/home")
    # nginx's `return 308 URL` sends the URL as written (our redirect would keep a query)
    assert (moved.status, moved.headers["Location"]) == (308, "https://new.example.com/welcome")
