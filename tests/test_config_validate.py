"""Config validation: every error with file:line and path; valid files -> the dataclasses."""

import math
import pathlib
import subprocess
import sys
import textwrap

import pytest

from proxy.config import schema as s
from proxy.config.load import load_file, load_text, summary
from proxy.config.validate import parse_duration, validate

ROOT = pathlib.Path(__file__).resolve().parent.parent
EXAMPLES = sorted((ROOT / "config").glob("*.yaml"))

BASE = """\
listen: 127.0.0.1:8080
upstreams:
  v1: {endpoints: ["127.0.0.1:9001"]}
  v2: {endpoints: ["127.0.0.1:9002"]}
"""

SPEC_EXAMPLE = """\
listen: 0.0.0.0:8080
admin: {listen: 127.0.0.1:9901, token_env: CANARYPROXY_TOKEN}
access_log: stdout
metrics: {compat: [istio]}
upstreams:
  v1: {endpoints: ["127.0.0.1:9001"], health_check: {path: /health, interval: 5s}}
  v2: {endpoints: ["127.0.0.1:9002"]}
routes:
  - name: testers
    match:
      - headers: {User-Id: {exact: test-user-001}}
      - cookies: {beta_tester: {exact: "true"}}
      - path: {prefix: /api}
        method: [get, HEAD]
        source_ip: [10.1.2.3/8]
    route: [{destination: v2}]
  - name: default
    route:
      - {destination: v1, weight: 95}
      - {destination: v2, weight: 5}
    split: {by: header, name: User-Id}
    sticky: {cookie: version, max_age: 86400}
    mirror: {destination: v2, percent: 10}
    timeout: 1m30s
    retries: {attempts: 2, per_try_timeout: 500ms, retry_on: [connect-failure, 503]}
canaries:
  - name: default
    route: default
    stable: v1
    canary: v2
    analysis:
      interval: 1m
      threshold: 5
      max_weight: 50
      step_weights: [5, 10, 25, 50]
      progress_deadline: 10m
      metrics:
        - {name: request-success-rate, min: 99}
        - {name: request-duration, max: 500}
"""


def errors_of(text: str) -> list[str]:
    config, errors = load_text(textwrap.dedent(text), "config.yaml")
    assert (config is None) == bool(errors)
    return errors


def test_spec_example_parses_into_the_dataclasses() -> None:
    config, errors = load_text(SPEC_EXAMPLE, "config.yaml")
    assert errors == []
    assert config is not None
    assert config.listen == "0.0.0.0:8080"
    assert config.metrics.compat == frozenset({"istio"})
    assert [u.name for u in config.upstreams] == ["v1", "v2"]
    assert config.upstreams[0].health_check == s.HealthCheck(path="/health", interval=5.0)
    testers, default = config.routes
    assert testers.destinations == (s.Destination("v2"),)
    assert testers.match[0].headers == (("user-id", s.StringMatch("exact", "test-user-001")),)
    assert testers.match[1].cookies == (("beta_tester", s.StringMatch("exact", "true")),)
    assert testers.match[2].path == s.StringMatch("prefix", "/api")
    assert testers.match[2].method == frozenset({"GET", "HEAD"})
    assert testers.match[2].source_ip == ("10.0.0.0/8",)
    assert [(d.subset, d.weight) for d in default.destinations] == [("v1", 95.0), ("v2", 5.0)]
    assert default.split == s.Split("header", "user-id")
    assert default.sticky == s.Sticky("version", 86400)
    assert default.mirror == (s.Mirror("v2", 10.0),)
    assert default.timeout == 90.0
    assert default.retries == s.Retries(2, 0.5, frozenset({"connect-failure", "503"}))
    (canary,) = config.canaries
    assert canary.analysis.step_weights == (5.0, 10.0, 25.0, 50.0)
    assert canary.analysis.interval == 60.0
    assert canary.analysis.progress_deadline == 600.0
    assert canary.analysis.metrics[1] == s.MetricCheck("request-duration", max=500.0)


def test_steps_headers_fault_and_top_level_sections() -> None:
    config, errors = load_text(
        BASE
        + """\
access_log: false
identity: {region_header: X-Zone}
limits: {header_timeout: 5s, trusted_hops: 1}
routes:
  - name: r
    route:
      - destination: v1
        headers: {request: {set: {x-version: v1}}}
      - {destination: v2, weight: 0}
    headers:
      request: {add: {X-Via: canaryproxy}, remove: [X-Debug]}
      response: {set: {cache-control: no-store}}
    fault: {delay: {fixed: 200ms, percent: 5}}
    preview: {header: x-preview, value: "yes"}
canaries:
  - name: r
    route: r
    stable: v1
    canary: v2
    analysis:
      steps:
        - match: [{users: [test-user-001]}]
        - weight: 10
        - pause: 10m
        - pause: {}
""",
        "config.yaml",
    )
    assert errors == []
    assert config is not None
    assert config.access_log is None
    assert config.identity.region_header == "x-zone"
    assert config.limits.header_timeout == 5.0 and config.limits.trusted_hops == 1
    (route,) = config.routes
    assert route.destinations[0].headers.request.set == (("x-version", "v1"),)
    assert route.headers.request == s.HeaderOps(
        add=(("x-via", "canaryproxy"),), remove=("x-debug",)
    )
    assert route.fault == s.Fault(delay=s.FaultDelay(0.2, 5.0))
    assert route.preview == s.Preview("x-preview", "yes")
    steps = config.canaries[0].analysis.steps
    assert steps[0] == s.Step(match=(s.MatchRule(users=frozenset({"test-user-001"})),))
    assert steps[1:3] == (s.Step(weight=10.0), s.Step(pause=600.0))
    assert steps[3].pause == math.inf


# (YAML after BASE, the exact error lines). BASE takes lines 1-4.
BAD = [
    (
        "routes:\n  - name: r\n    route: [{destination: v1, weight: -1}, {destination: v2}]\n",
        ["config.yaml:7: routes[0].route[0].weight: must be >= 0"],
    ),
    (
        "routes:\n  - name: r\n    route: [{destination: v1, weight: .nan}]\n",
        ["config.yaml:7: routes[0].route[0].weight: must be a finite number"],
    ),
    (
        'routes:\n  - name: r\n    route: [{destination: v1, weight: "5"}]\n',
        ["config.yaml:7: routes[0].route[0].weight: must be a number"],
    ),
    (
        "routes:\n  - name: r\n    route: [{destination: v1, weight: 0}, {destination: v2, weight: 0}]\n",
        [
            "config.yaml:7: routes[0].route: all weights are 0: at least one destination needs a weight > 0"
        ],
    ),
    (
        "routes:\n  - name: r\n    route:\n      - {destination: v1, wieght: 5}\n      - {destination: v3}\n",
        [
            'config.yaml:8: routes[0].route[0].wieght: unknown key "wieght" (did you mean "weight"?)',
            'config.yaml:9: routes[0].route[1].destination: unknown upstream "v3"',
        ],
    ),
    (
        "routes:\n  - name: r\n    match: {path: {prefix: /api}}\n    route: [{destination: v1}]\n",
        [
            "config.yaml:7: routes[0].match: must be a list of match rules"
            " (put a '-' before the rule)"
        ],
    ),
    (
        "routes:\n  - route: [{destination: v1}]\n  - name: a\n  - name: a\n    route: []\n",
        [
            "config.yaml:6: routes[0].name: is required",
            "config.yaml:7: routes[1].route: is required",
            'config.yaml:8: routes[2].name: duplicate route name "a"',
            "config.yaml:9: routes[2].route: must not be empty",
        ],
    ),
    (
        "routes:\n  - name: r\n    route: [{destination: v1}]\n"
        "    split: {by: cookie}\n    sticky: {max_age: 1d}\n    timeout: 2x\n"
        "    retries: {retry_on: [connect-failure, 500]}\n"
        "    mirror: {destination: v2, percent: 101}\n"
        "    fault: {abort: {status: 700}}\n",
        [
            "config.yaml:8: routes[0].split.name: is required with by: cookie",
            "config.yaml:9: routes[0].sticky.cookie: is required",
            "config.yaml:9: routes[0].sticky.max_age: invalid duration '1d':"
            " use e.g. 500ms, 2s, 1m30s, 1h",
            "config.yaml:10: routes[0].timeout: invalid duration '2x': use e.g. 500ms, 2s, 1m30s, 1h",
            'config.yaml:11: routes[0].retries.retry_on[1]: unknown value "500" (did you mean'
            ' "504"?); expected one of connect-failure, reset, 502, 503, 504',
            "config.yaml:12: routes[0].mirror.percent: must be between 0 and 100",
            "config.yaml:13: routes[0].fault.abort.status:"
            " must be an HTTP status code between 200 and 599",
        ],
    ),
    (
        "routes:\n  - name: r\n    route: [{destination: v1}]\n    match:\n"
        '      - headers: {"bad header": {exact: x}}\n'
        "        source_ip: [10.0.0.0/33]\n"
        "        method: GET\n"
        "      - path: {prefix: api}\n"
        "        cookies: {beta: {exact: true}}\n"
        "      - query: {a: {present: false}}\n"
        "      - region: []\n"
        '      - headers: {x: {regex: "(a)\\\\1"}}\n'
        "      - headers: {x: {exact: a, prefix: b}}\n",
        [
            'config.yaml:9: routes[0].match[0].headers.bad header: "bad header"'
            " is not a valid header name",
            'config.yaml:10: routes[0].match[0].source_ip[0]: "10.0.0.0/33" is not a valid CIDR'
            " (e.g. 10.0.0.0/8 or 192.0.2.7)",
            "config.yaml:11: routes[0].match[0].method: must be a list",
            'config.yaml:12: routes[0].match[1].path.prefix: must start with "/"',
            "config.yaml:13: routes[0].match[1].cookies.beta.exact: must be a string (quote it)",
            "config.yaml:14: routes[0].match[2].query.a.present: must be true",
            "config.yaml:15: routes[0].match[3].region: must not be empty",
            "config.yaml:16: routes[0].match[4].headers.x.regex:"
            " backreferences (\\1) are not supported (RE2 syntax)",
            "config.yaml:17: routes[0].match[5].headers.x:"
            " needs exactly one of exact, prefix, regex, present, absent",
        ],
    ),
    (
        "admin: {listen: '10.0.0.1:99999', token_env: 1x}\naccess_log: true\n"
        "metrics: {compat: [istio, envoy]}\nlimits: {trusted_hops: -1}\nroutes: 3\n",
        [
            'config.yaml:5: admin.listen: "10.0.0.1:99999": port must be between 0 and 65535',
            "config.yaml:5: admin.token_env: must be an environment variable name",
            "config.yaml:6: access_log: must be stdout, a file path, or false",
            'config.yaml:7: metrics.compat[1]: unknown value "envoy"; expected one of istio, http',
            "config.yaml:8: limits.trusted_hops: must be >= 0",
            "config.yaml:9: routes: must be a list",
        ],
    ),
    (
        "upstreams: {}\nroutes: []\n",
        [
            'config.yaml:5: upstreams: duplicate key "upstreams" (first at line 2)',
            "config.yaml:6: routes: must not be empty",
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD, ids=range(len(BAD)))
def test_bad_configs_report_every_error_with_line_and_path(text: str, expected: list) -> None:
    assert errors_of(BASE + text) == expected


CANARY_BASE = BASE + (
    "routes:\n  - name: r\n    route: [{destination: v1}, {destination: v2, weight: 0}]\n"
    "  - name: solo\n    route: [{destination: v1}]\ncanaries:\n"
)  # canaries start at line 11

BAD_CANARIES = [
    (
        "  - {name: c, route: rr, stable: v1, canary: v1}\n",
        [
            'config.yaml:11: canaries[0].route: unknown route "rr" (did you mean "r"?)',
            'config.yaml:11: canaries[0].canary: must differ from stable ("v1")',
        ],
    ),
    (
        "  - {name: c, route: solo, stable: v1, canary: v2}\n",
        [
            'config.yaml:11: canaries[0].canary: "v2" is not a destination of route "solo"'
            " (add {destination: v2, weight: 0})"
        ],
    ),
    (
        "  - {name: c, route: r, stable: v1, canary: v2, mode: ab}\n"
        "  - {name: c, route: r, stable: v1, canary: v2}\n"
        "  - {name: d, route: r, stable: v1, canary: v2}\n",
        [
            "config.yaml:11: canaries[0].analysis.match:"
            " is required with mode: ab (who sees the canary)",
            'config.yaml:12: canaries[1].name: duplicate canary name "c"',
            'config.yaml:13: canaries[2].route: route "r" already has a canary',
        ],
    ),
    (
        "  - name: c\n    route: r\n    stable: v1\n    canary: v2\n    analysis:\n"
        "      interval: 0s\n"
        "      steps: [{weight: 10}, {pause: {}}, {pause: 1x}, {weight: 5, pause: 1m}]\n"
        "      step_weights: [10, 5]\n"
        "      metrics:\n"
        "        - {name: latency, max: 5}\n"
        "        - {name: error-rate}\n"
        "        - {name: request-success-rate, min: 99, max: 90}\n"
        "      webhooks: [{name: w, type: pre-rolout, url: 'http://127.0.0.1:1/'}]\n"
        "      alerts: [{type: email, url: 'ftp://x'}]\n"
        "      provider: {type: prometheus}\n",
        [
            "config.yaml:16: canaries[0].analysis.interval: must be a duration > 0",
            "config.yaml:17: canaries[0].analysis.steps[2].pause: invalid duration '1x':"
            " use e.g. 500ms, 2s, 1m30s, 1h",
            "config.yaml:17: canaries[0].analysis.steps[3]: needs exactly one of weight, match, pause",
            "config.yaml:17: canaries[0].analysis.steps: steps and step_weights are mutually exclusive",
            "config.yaml:18: canaries[0].analysis.step_weights: must be strictly increasing",
            'config.yaml:20: canaries[0].analysis.metrics[0].name: unknown metric "latency" needs a'
            " query (builtin: request-success-rate, request-duration, error-rate)",
            "config.yaml:21: canaries[0].analysis.metrics[1]: needs min or max",
            "config.yaml:22: canaries[0].analysis.metrics[2].min: min (99) is greater than max (90)",
            'config.yaml:23: canaries[0].analysis.webhooks[0].type: unknown value "pre-rolout"'
            ' (did you mean "pre-rollout"?); expected one of pre-rollout, rollout,'
            " confirm-rollout, confirm-traffic-increase, confirm-promotion, post-rollout,"
            " rollback, event",
            'config.yaml:24: canaries[0].analysis.alerts[0].type: unknown value "email";'
            " expected one of slack, dingtalk, generic",
            "config.yaml:24: canaries[0].analysis.alerts[0].url: must be an http:// or https:// URL",
            "config.yaml:25: canaries[0].analysis.provider.address: is required with type: prometheus",
        ],
    ),
    (
        "  - name: c\n    route: r\n    stable: v1\n    canary: v2\n    mode: blue-green\n"
        "    analysis: {max_weight: 150, step_weight: 0, iterations: 0, match: [{users: [a]}]}\n",
        [
            "config.yaml:16: canaries[0].analysis.max_weight: must be between 0 and 100",
            "config.yaml:16: canaries[0].analysis.iterations: must be >= 1",
            "config.yaml:16: canaries[0].analysis.step_weight: must be > 0",
            "config.yaml:16: canaries[0].analysis.step_weight:"
            " applies to mode: canary only (mode is blue-green)",
            "config.yaml:16: canaries[0].analysis.max_weight:"
            " applies to mode: canary only (mode is blue-green)",
            "config.yaml:16: canaries[0].analysis.match:"
            " applies to mode: ab only (use steps: [{match: ...}])",
        ],
    ),
]


@pytest.mark.parametrize(("text", "expected"), BAD_CANARIES, ids=range(len(BAD_CANARIES)))
def test_bad_canaries(text: str, expected: list) -> None:
    assert errors_of(CANARY_BASE + text) == expected


def test_missing_top_level_keys_and_non_mapping_document() -> None:
    assert errors_of("{}\n") == [
        "config.yaml:1: listen: is required",
        "config.yaml:1: upstreams: is required",
        "config.yaml:1: routes: is required",
    ]
    assert errors_of("") == errors_of("{}\n")
    assert errors_of("- a\n") == ["config.yaml:1: must be a mapping"]


def test_unknown_top_level_key_suggests_the_right_one() -> None:
    text = BASE + "routes: [{name: r, route: [{destination: v1}]}]\ncanary: []\n"
    assert errors_of(text) == [
        'config.yaml:6: canary: unknown key "canary" (did you mean "canaries"?)'
    ]


def test_duplicate_keys_are_errors_with_both_lines() -> None:
    text = BASE + "routes:\n  - name: r\n    route: [{destination: v1}]\n    name: s\n"
    assert errors_of(text) == [
        'config.yaml:8: routes[0].name: duplicate key "name" (first at line 6)'
    ]


def test_anchors_merge_keys_and_x_extension_keys() -> None:
    text = """\
listen: 127.0.0.1:8080
x-pool: &pool {endpoints: ["127.0.0.1:9001"], connect_timeout: 1s}
upstreams:
  v1: {<<: *pool, connect_timeout: 2s}
  v2: *pool
routes: [{name: r, route: [{destination: v1}, {destination: v2}]}]
"""
    config, errors = load_text(text, "config.yaml")
    assert errors == []
    assert config is not None
    assert [u.connect_timeout for u in config.upstreams] == [2.0, 1.0]


def test_cyclic_or_exploding_aliases_are_one_error() -> None:
    assert errors_of("a: &x [*x]\n") == [
        "config.yaml:1: invalid YAML: an alias refers to a node that contains it"
    ]
    lines = ["a0: &a0 [x, x, x, x, x, x, x, x, x, x]"]
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    assert errors_of("\n".join(lines)) == [
        "config.yaml:1: invalid YAML: more than 100000 values (alias expansion?)"
    ]


def test_invalid_yaml_is_one_error_with_its_line() -> None:
    (error,) = errors_of(BASE + "routes: [\n  - name: r\n")
    # the wording is libyaml's (or PyYAML's without it); the line is ours to keep
    assert error.startswith("config.yaml:6: invalid YAML: ")
    assert "node content" in error


def test_yaml_1_1_booleans_are_not_silently_strings() -> None:
    text = (
        BASE + "routes:\n  - name: r\n    match: [{region: [no]}]\n    route: [{destination: v1}]\n"
    )
    assert errors_of(text) == [
        "config.yaml:7: routes[0].match[0].region[0]: must be a string (quote it)"
    ]


def test_validate_is_usable_without_yaml() -> None:
    config, errors = validate({"listen": "127.0.0.1:0", "upstreams": {"a b": {}}, "routes": []})
    assert config is None
    assert errors == [
        ("upstreams.a b", "must be a name of letters, digits, '.', '_' or '-'"),
        ("routes", "must not be empty"),
    ]


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("500ms", 0.5),
        ("2s", 2.0),
        ("1m", 60.0),
        ("10m", 600.0),
        ("1h", 3600.0),
        ("1m30s", 90.0),
        ("1.5s", 1.5),
        (3, 3.0),
        (0.25, 0.25),
        ("7", 7.0),
    ],
)
def test_parse_duration(value: object, seconds: float) -> None:
    assert parse_duration(value) == seconds


@pytest.mark.parametrize("value", ["", "1d", "s", "1m 30s", "-1s", -1, True, None, "1s2", "nan"])
def test_parse_duration_rejects(value: object) -> None:
    with pytest.raises(ValueError):
        parse_duration(value)


def test_load_file_unreadable_is_one_error(tmp_path: pathlib.Path) -> None:
    missing = str(tmp_path / "nope.yaml")
    assert load_file(missing) == (None, [f"{missing}: cannot read: No such file or directory"])


@pytest.mark.parametrize("path", EXAMPLES, ids=lambda p: p.name)
def test_every_example_config_validates(path: pathlib.Path) -> None:
    config, errors = load_file(str(path))
    assert errors == []
    assert config is not None


def test_examples_exist() -> None:
    names = {p.name for p in EXAMPLES}
    assert {
        "example.yaml",
        "blue-green.yaml",
        "gray-release.yaml",
        "canary.yaml",
        "ab-header.yaml",
        "cookie-sticky.yaml",
        "whitelist.yaml",
        "region.yaml",
    } <= names


def test_summary_line() -> None:
    config, _ = load_text(SPEC_EXAMPLE, "config.yaml")
    assert config is not None
    assert summary("config.yaml", config) == "config.yaml: OK — 2 upstreams, 2 routes, 1 canary"


def _cli(path: pathlib.Path) -> subprocess.CompletedProcess[str]:
    cmd = [sys.executable, "-m", "proxy", "validate", "-c", str(path)]
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=30)


def test_cli_validate_exit_codes(tmp_path: pathlib.Path) -> None:
    good = tmp_path / "good.yaml"
    good.write_text(SPEC_EXAMPLE)
    ok = _cli(good)
    assert (ok.returncode, ok.stdout) == (0, f"{good}: OK — 2 upstreams, 2 routes, 1 canary\n")
    bad = tmp_path / "bad.yaml"
    bad.write_text(BASE + "routes:\n  - name: r\n    route: [{destination: v9}]\n")
    failed = _cli(bad)
    assert failed.returncode == 1
    assert failed.stderr == f'{bad}:7: routes[0].route[0].destination: unknown upstream "v9"\n'


@pytest.mark.parametrize(
    ("listen", "error"),
    [
        ("127.0.0.1:0", None),
        ("[::1]:8080", None),
        ("my-svc.ns.svc.cluster.local:8080", None),
        ("::1:8080", '"::1:8080" must be host:port, e.g. 127.0.0.1:8080'),
        (":8080", '":8080" must be host:port, e.g. 127.0.0.1:8080'),
        ("8080", '"8080" must be host:port, e.g. 127.0.0.1:8080'),
        ("a b:80", '"a b:80" must be host:port, e.g. 127.0.0.1:8080'),
        ("localhost:http", '"localhost:http" must be host:port, e.g. 127.0.0.1:8080'),
        ("0.0.0.0:65536", '"0.0.0.0:65536": port must be between 0 and 65535'),
    ],
)
def test_listen_addresses(listen: str, error: str | None) -> None:
    data = {
        "listen": listen,
        "upstreams": {"v1": {"endpoints": ["127.0.0.1:9001"]}},
        "routes": [{"name": "r", "route": [{"destination": "v1"}]}],
    }
    assert validate(data)[1] == ([] if error is None else [("listen", error)])


def test_endpoint_port_zero_is_rejected() -> None:
    data = {"listen": "127.0.0.1:0", "upstreams": {"v1": {"endpoints": ["127.0.0.1:0"]}}}
    data["routes"] = [{"name": "r", "route": [{"destination": "v1"}]}]
    assert validate(data)[1] == [
        ("upstreams.v1.endpoints[0]", '"127.0.0.1:0": port must be between 1 and 65535')
    ]


def test_huge_numbers_and_repeated_header_names() -> None:
    data = {
        "listen": "127.0.0.1:0",
        "upstreams": {"v1": {"endpoints": ["127.0.0.1:9001"], "connect_timeout": 10**400}},
        "routes": [
            {
                "name": "r",
                "route": [{"destination": "v1", "weight": 10**400}],
                "match": [{"headers": {"X-A": {"exact": "1"}, "x-a": {"exact": "2"}}}],
            }
        ],
    }
    assert validate(data)[1] == [
        ("upstreams.v1.connect_timeout", "must be a duration >= 0"),
        ("routes[0].route[0].weight", "must be a finite number"),
        ("routes[0].match[0].headers.X-A", '"x-a" is given more than once'),
    ]


def test_validate_orders_errors_by_the_given_lines() -> None:
    data = {"listen": 1, "upstreams": {}, "routes": [], "extra": 1}
    lines = {"listen": 9, "upstreams": 3, "routes": 5, "extra": 1}
    expected = ["extra", "upstreams", "routes", "listen"]
    assert [p for p, _ in validate(data, lines)[1]] == expected
    assert [p for p, _ in validate(data, lines.get)[1]] == expected
