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
