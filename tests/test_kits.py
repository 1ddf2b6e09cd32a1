"""The config/kits files: Prometheus rules, Grafana dashboard, Kubernetes, docker-compose.

promtool and a real Prometheus check every rule and every PromQL expression; the proxy
configs the kits carry must pass our own validator.
"""

from __future__ import annotations

import json
import pathlib
import re
import shutil
import socket
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator

import pytest
import yaml

from proxy.config.load import load_text
from proxy.store.keys import parse_store_url

ROOT = pathlib.Path(__file__).resolve().parent.parent
KITS = ROOT / "config" / "kits"
SPEC_METRICS = {
    "canaryproxy_requests_total",
    "canaryproxy_request_duration_seconds_bucket",
    "canaryproxy_upstream_errors_total",
    "canaryproxy_route_weight",
    "canaryproxy_canary_weight",
    "canaryproxy_canary_status",
    "canaryproxy_canary_check_value",
    "canaryproxy_config_reloads_total",
}
# Grafana variables -> a value Prometheus accepts, so each panel query can be checked.
GRAFANA_VARS = {"$__rate_interval": "1m", "$__range": "1h", "$route": ".*", "$canary": ".*"}


def _dashboard() -> dict:
    return json.loads((KITS / "grafana" / "canaryproxy-dashboard.json").read_text())


def _alert_exprs() -> list[str]:
    rules = yaml.safe_load((KITS / "prometheus" / "alerts.yml").read_text())
    return [r["expr"] for g in rules["groups"] for r in g["rules"]]


def _dashboard_exprs() -> list[str]:
    d = _dashboard()
    exprs = [t["expr"] for p in d["panels"] for t in p["targets"]]
    exprs += [
        q["query"].removeprefix("label_values(").split(",")[0]
        for q in d["templating"]["list"]
        if q["type"] == "query"
    ]
    return exprs + [a["expr"] for a in d["annotations"]["list"]]


def _grafana_to_promql(expr: str) -> str:
    for var, value in GRAFANA_VARS.items():
        expr = expr.replace(var, value)
    assert "$" not in expr, f"unknown Grafana variable in {expr}"
    return expr


def _metric_names(expr: str) -> set[str]:
    return set(re.findall(r"\b(canaryproxy_[a-z_]+)", expr))


# --- Prometheus --------------------------------------------------------------------------


@pytest.mark.skipif(shutil.which("promtool") is None, reason="promtool not installed")
def test_promtool_accepts_the_scrape_config_and_rules() -> None:
    prom = KITS / "prometheus"
    for args in (["check", "config", "prometheus.yml"], ["check", "rules", "alerts.yml"]):
        out = subprocess.run(
            ["promtool", *args], cwd=prom, capture_output=True, text=True, timeout=30
        )
        assert out.returncode == 0, out.stdout + out.stderr


def test_alerts_cover_failed_canary_error_budget_and_rejected_reload() -> None:
    exprs = " ".join(_alert_exprs())
    assert "canaryproxy_canary_status) == 2" in exprs
    assert 'canaryproxy_requests_total{code=~"5.."}' in exprs
    assert 'increase(canaryproxy_config_reloads_total{result="rejected"}[5m]) > 0' in exprs


def test_kits_use_only_spec_metric_names() -> None:
    used = set().union(*(_metric_names(e) for e in _alert_exprs() + _dashboard_exprs()))
    assert used and used <= SPEC_METRICS, used - SPEC_METRICS


# --- Grafana -----------------------------------------------------------------------------


def test_dashboard_json_structure() -> None:
    d = _dashboard()
    assert d["uid"] and d["title"] and isinstance(d["schemaVersion"], int)
    ids = [p["id"] for p in d["panels"]]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"] for v in d["templating"]["list"]}
    for p in d["panels"]:
        assert p["type"] in {"timeseries", "stat"} and p["title"]
        assert (
            set(p["gridPos"]) == {"x", "y", "w", "h"}
            and p["gridPos"]["x"] + p["gridPos"]["w"] <= 24
        )
        assert p["datasource"]["uid"] == "${datasource}"
        refs = [t["refId"] for t in p["targets"]]
        assert refs and len(refs) == len(set(refs))
        for t in p["targets"]:
            for var in re.findall(r"\$(\w+)", t["expr"]):
                assert var.startswith("__") or var in variables, f"{p['title']}: ${var} undefined"


@pytest.fixture(scope="module")
def prometheus(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    if shutil.which("prometheus") is None:
        pytest.skip("prometheus not installed")
    tmp = tmp_path_factory.mktemp("prom")
    (tmp / "prometheus.yml").write_text("global: {scrape_interval: 15s}\n")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    proc = subprocess.Popen(
        [
            "prometheus",
            f"--config.file={tmp / 'prometheus.yml'}",
            f"--storage.tsdb.path={tmp / 'data'}",
            f"--web.listen-address=127.0.0.1:{port}",
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_ready(base, proc)
        yield base
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=5)


def _wait_ready(base: str, proc: subprocess.Popen) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, "prometheus exited"
        try:
            with urllib.request.urlopen(base + "/-/ready", timeout=1) as r:
                if r.status == 200:
                    return
        except OSError:
            time.sleep(0.2)
    pytest.fail("prometheus did not become ready")


def _query(base: str, expr: str) -> dict:
    url = base + "/api/v1/query?" + urllib.parse.urlencode({"query": expr})
    try:
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)
    except urllib.error.HTTPError as exc:
        return json.load(exc)


def test_every_promql_expression_parses_in_real_prometheus(prometheus: str) -> None:
    exprs = [_grafana_to_promql(e) for e in _dashboard_exprs()] + _alert_exprs()
    assert len(exprs) >= 12
    for expr in exprs:
        answer = _query(prometheus, expr)
        assert answer["status"] == "success", f"{expr}: {answer.get('error')}"
    assert _query(prometheus, "sum(")["status"] == "error"  # the check itself can fail


# --- Kubernetes --------------------------------------------------------------------------


def _k8s() -> dict[str, dict]:
    docs = {}
    for path in sorted((KITS / "k8s").glob("*.yaml")):
        for doc in yaml.safe_load_all(path.read_text()):
            docs[doc["kind"]] = doc
    return docs


def test_k8s_deployment_probes_and_config_directory_mount() -> None:
    docs = _k8s()
    pod = docs["Deployment"]["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    mount = next(m for m in c["volumeMounts"] if m["name"] == "config")
    assert "subPath" not in mount, "subPath mounts never see ConfigMap updates"
    config_arg = c["args"][c["args"].index("-c") + 1]
    assert pathlib.PurePosixPath(config_arg).parent == pathlib.PurePosixPath(mount["mountPath"])
    volume = next(v for v in pod["volumes"] if v["name"] == "config")
    cm = docs["ConfigMap"]
    assert volume["configMap"]["name"] == cm["metadata"]["name"]
    text = cm["data"][pathlib.PurePosixPath(config_arg).name]
    config, errors = load_text(text, "configmap.yaml")
    assert errors == [] and config is not None
    assert config.admin.listen.endswith(f":{ports['admin']}") and config.listen.endswith(
        f":{ports['http']}"
    )
    secret_ref = next(e for e in c["env"] if e["name"] == config.admin.token_env)
    assert secret_ref["valueFrom"]["secretKeyRef"]["name"] == docs["Secret"]["metadata"]["name"]


def test_k8s_service_targets_the_pods() -> None:
    docs = _k8s()
    labels = docs["Deployment"]["spec"]["template"]["metadata"]["labels"]
    assert docs["Service"]["spec"]["selector"].items() <= labels.items()


# --- docker-compose ----------------------------------------------------------------------


def test_compose_stack_is_consistent() -> None:
    compose = yaml.safe_load((KITS / "docker-compose.yml").read_text())
    services = compose["services"]
    build = KITS / services["canaryproxy"]["build"]["context"]
    assert (build / services["canaryproxy"]["build"]["dockerfile"]).is_file()
    for svc in services.values():
        for volume in svc.get("volumes", []):
            src = volume.split(":")[0]
            if src.startswith("."):
                assert (KITS / src).is_dir(), f"{src} must be a directory mount"
    config, errors = load_text((KITS / "compose" / "config.yaml").read_text(), "config.yaml")
    assert errors == [] and config is not None
    for up in config.upstreams:
        host, port = up.endpoints[0].split(":")
        cmd = services[host]["command"]
        assert cmd[cmd.index("--port") + 1] == port and cmd[cmd.index("--version") + 1] == up.name
    prom = yaml.safe_load((KITS / "prometheus" / "prometheus.yml").read_text())
    (target,) = prom["scrape_configs"][0]["static_configs"][0]["targets"]
    assert target == "canaryproxy:" + config.admin.listen.rsplit(":", 1)[1]


# --- fleet (docker-compose, etcd, HAProxy) -----------------------------------------------

FLEET = KITS / "fleet"


def _fleet_services() -> dict[str, dict]:
    return yaml.safe_load((FLEET / "docker-compose.yml").read_text())["services"]


def _flag(cmd: list[str], name: str) -> str:
    """`--name value` or `--name=value` from a command list."""
    for i, arg in enumerate(cmd):
        if arg == name:
            return cmd[i + 1]
        if arg.startswith(name + "="):
            return arg.split("=", 1)[1]
    raise AssertionError(f"{name} missing from {cmd}")


def _fleet_replicas(services: dict[str, dict]) -> dict[str, list[str]]:
    return {
        name: svc["command"]
        for name, svc in services.items()
        if isinstance(svc.get("command"), list) and "--store" in svc["command"]
    }


def test_fleet_etcd_members_agree_with_each_other_and_the_replicas() -> None:
    services = _fleet_services()
    etcd = {n: s["command"] for n, s in services.items() if "etcd" in s.get("image", "")}
    assert sorted(etcd) == ["etcd1", "etcd2", "etcd3"]
    clusters = {_flag(cmd, "--initial-cluster") for cmd in etcd.values()}
    assert len(clusters) == 1, clusters
    members = dict(m.split("=", 1) for m in clusters.pop().split(","))
    assert sorted(members) == sorted(etcd)
    for name, cmd in etcd.items():
        assert _flag(cmd, "--name") == name
        assert _flag(cmd, "--initial-advertise-peer-urls") == members[name]
        assert urllib.parse.urlsplit(members[name]).hostname == name
        assert _flag(cmd, "--initial-cluster-state") == "new"
        (data,) = [v for v in services[name]["volumes"] if v.split(":")[0] == name]
        assert data.split(":")[1] == _flag(cmd, "--data-dir")
    assert set(etcd) <= set(yaml.safe_load((FLEET / "docker-compose.yml").read_text())["volumes"])
    client_port = {
        urllib.parse.urlsplit(_flag(cmd, "--advertise-client-urls")).port for cmd in etcd.values()
    }
    replicas = _fleet_replicas(services)
    assert len(replicas) == 3
    for name, cmd in replicas.items():
        store = parse_store_url(_flag(cmd, "--store"))
        hosts = {e.rsplit(":", 1)[0] for e in store.endpoints}
        assert hosts == set(members), f"{name}: {store}"
        assert {int(e.rsplit(":", 1)[1]) for e in store.endpoints} == client_port
        assert set(services[name]["depends_on"]) >= set(etcd)


def test_fleet_replicas_have_distinct_names_one_cluster_and_their_own_admin_port() -> None:
    services = _fleet_services()
    replicas = _fleet_replicas(services)
    names = [_flag(cmd, "--replica") for cmd in replicas.values()]
    assert len(set(names)) == len(names) == 3
    assert len({parse_store_url(_flag(c, "--store")).cluster for c in replicas.values()}) == 1
    config, errors = load_text((FLEET / "config.yaml").read_text(), "config.yaml")
    assert errors == [] and config is not None
    admin_port = config.admin.listen.rsplit(":", 1)[1]
    host_ports = []
    for name in replicas:
        svc = services[name]
        build = FLEET / svc["build"]["context"]
        assert (build / svc["build"]["dockerfile"]).is_file()
        config_arg = _flag(svc["command"], "-c")
        mounts = {v.split(":")[1]: v.split(":")[0] for v in svc["volumes"]}
        src = mounts[str(pathlib.PurePosixPath(config_arg).parent)]
        assert (FLEET / src).is_dir(), f"{src} must be a directory mount"
        assert (FLEET / src / pathlib.PurePosixPath(config_arg).name).is_file()
        assert config.admin.token_env in svc["environment"]
        (port,) = svc["ports"]
        host, published, target = port.split(":")
        assert host == "127.0.0.1" and target == admin_port
        host_ports.append(published)
    assert sorted(host_ports) == ["9901", "9902", "9903"]


def test_fleet_config_passes_the_validator_and_points_at_the_upstreams() -> None:
    services = _fleet_services()
    config, errors = load_text((FLEET / "config.yaml").read_text(), "config.yaml")
    assert errors == [] and config is not None
    assert config.listen == "0.0.0.0:8080" and config.admin.listen == "0.0.0.0:9901"
    for up in config.upstreams:
        host, port = up.endpoints[0].split(":")
        cmd = services[host]["command"]
        assert cmd[cmd.index("--port") + 1] == port and cmd[cmd.index("--version") + 1] == up.name
    assert [c.name for c in config.canaries] == ["shop"]


def test_fleet_haproxy_balances_all_three_replicas_over_tcp() -> None:
    services = _fleet_services()
    text = (FLEET / "haproxy.cfg").read_text()
    lines = [ln.split("#", 1)[0].split() for ln in text.splitlines()]
    lines = [ln for ln in lines if ln]
    assert ["mode", "tcp"] in lines and ["balance", "roundrobin"] in lines
    servers = {ln[1]: ln[2] for ln in lines if ln[0] == "server"}
    config, _ = load_text((FLEET / "config.yaml").read_text(), "config.yaml")
    assert config is not None
    listen_port = config.listen.rsplit(":", 1)[1]
    replicas = _fleet_replicas(services)
    assert servers == {name: f"{name}:{listen_port}" for name in replicas}
    (bind,) = [ln for ln in lines if ln[0] == "bind"]
    front_port = bind[1].rsplit(":", 1)[1]
    haproxy = services["haproxy"]
    assert f"{front_port}:{front_port}" in haproxy["ports"]
    assert set(haproxy["depends_on"]) == set(replicas)
    mount = haproxy["volumes"][0].split(":")
    assert (FLEET / mount[0]).resolve() == (FLEET / "haproxy.cfg").resolve()
