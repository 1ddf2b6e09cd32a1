"""Config files for the upstream pair and for each proxy under test, one scenario at a time.

All proxies: one worker/thread, access log off unless the scenario turns it on, keep-alive to
clients and to the upstreams, X-Forwarded-For / X-Forwarded-Proto / X-Request-Id added (ours
always adds them), the same 95/5 split and the same scenario feature.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

import yaml

from benchmarks.scenarios import ROUTES, STICKY_COOKIE, TENANT_HEADER, USER_HEADER, Scenario

WEIGHTS = {"v1": 95, "v2": 5}
BODY_64K = 64 * 1024
REPO_CERTS = Path(__file__).resolve().parent.parent / "config" / "certs"


def tls_files(d: Path) -> tuple[Path, Path, Path]:
    """(cert, key, cert+key in one file for HAProxy) for 127.0.0.1 / localhost, in `d`.

    Made with trustme (ECDSA P-256) when it is installed, else the repo's example
    certificate (also ECDSA P-256); the same files for every proxy in a run. wrk does not
    verify certificates, so no CA is needed on the client side.
    """
    cert, key, both = d / "bench-cert.pem", d / "bench-key.pem", d / "bench-both.pem"
    if not (cert.exists() and key.exists()):
        try:
            import trustme

            issued = trustme.CA().issue_cert("127.0.0.1", "localhost")
            cert.write_bytes(b"".join(b.bytes() for b in issued.cert_chain_pems))
            key.write_bytes(issued.private_key_pem.bytes())
        except ImportError:
            cert.write_bytes((REPO_CERTS / "localhost.pem").read_bytes())
            key.write_bytes((REPO_CERTS / "localhost.key").read_bytes())
        key.chmod(0o600)
    both.write_bytes(cert.read_bytes() + key.read_bytes())
    both.chmod(0o600)
    return cert, key, both


def _route_subset(i: int) -> str:
    return "v1" if i % 2 == 0 else "v2"


def _nginx_common(name: str, d: Path) -> str:
    return f"""worker_processes 1;
pid {d}/{name}.pid;
error_log {d}/{name}-error.log warn;
events {{ worker_connections 30000; }}
"""


def _temps(d: Path, name: str) -> str:
    tmp = d / f"{name}-tmp"
    tmp.mkdir(exist_ok=True)
    return "\n".join(
        f"  {k}_temp_path {tmp}/{k};" for k in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )


def upstream_nginx(d: Path, ports: tuple[int, int]) -> Path:
    """nginx answering "ok" on two ports (v1, v2), 64 KiB at /64k, discarding POST bodies."""
    www = d / "www"
    www.mkdir(exist_ok=True)
    (www / "64k").write_bytes(b"x" * BODY_64K)
    listens = "\n".join(f"    listen 127.0.0.1:{p} backlog=4096;" for p in ports)
    text = (
        _nginx_common("upstream", d)
        + f"""http {{
  access_log off;
{_temps(d, "upstream")}
  default_type text/plain;
  keepalive_requests 10000000;
  keepalive_timeout 300s;
  client_max_body_size 0;
  server {{
{listens}
    root {www};
    location / {{ return 200 "ok"; }}
    location = /64k {{ }}
  }}
}}
"""
    )
    path = d / "upstream.conf"
    path.write_text(text)
    return path


def _nginx_maps(s: Scenario) -> tuple[str, str]:
    """(http-level blocks, the upstream group expression) for the scenario."""
    if s.routes:
        rows = "\n".join(f"    tenant-{i} {_route_subset(i)};" for i in range(ROUTES))
        var = TENANT_HEADER.replace("-", "_")
        return f"  map $http_{var} $pool {{\n{rows}\n    default split;\n  }}\n", "$pool"
    if s.hash_split:
        var = USER_HEADER.replace("-", "_")
        return f'  split_clients "$http_{var}" $pool {{ 95% v1; * v2; }}\n', "$pool"
    if s.sticky:
        # nginx OSS has no sticky directive: a returning client's cookie picks the group.
        return (
            f"  map $cookie_{STICKY_COOKIE} $pool {{ v1 v1; v2 v2; default split; }}\n",
            "$pool",
        )
    return "", "split"


def nginx_proxy(d: Path, port: int, up: tuple[int, int], s: Scenario) -> Path:
    maps, pool = _nginx_maps(s)
    log = f"access_log {d}/nginx-access.log;" if s.access_log else "access_log off;"
    ka = "keepalive 256; keepalive_requests 10000000; keepalive_timeout 60s;"
    # An upgrade needs the client's Upgrade passed on and `Connection: upgrade` (nginx's
    # documented WebSocket setup); every other scenario clears Connection for keep-alive.
    # A tunnel relays through one proxy_buffer_size buffer per direction: the default (one
    # 4 KiB page) makes nginx ~8x slower with 64 KiB messages, so it gets one message's worth.
    conn = 'Connection "";'
    if s.websocket:
        conn = (
            'Upgrade $http_upgrade;\n      proxy_set_header Connection "upgrade";\n'
            "      proxy_buffer_size 64k;"
        )
    ssl = ""
    if s.tls:
        cert, key, _ = tls_files(d)
        # nginx 1.22's default stops at TLS 1.2; ours and HAProxy offer 1.3, so say it. Its
        # defaults otherwise (cipher list, session tickets on, no session cache).
        ssl = (
            f" ssl;\n    ssl_protocols TLSv1.2 TLSv1.3;\n    ssl_certificate {cert};\n"
            f"    ssl_certificate_key {key}"
        )
    text = (
        _nginx_common("nginx", d)
        + f"""http {{
  {log}
{_temps(d, "nginx")}
  keepalive_requests 10000000;
  keepalive_timeout 60s;
  client_max_body_size 0;
  upstream v1 {{ server 127.0.0.1:{up[0]}; {ka} }}
  upstream v2 {{ server 127.0.0.1:{up[1]}; {ka} }}
  upstream split {{
    server 127.0.0.1:{up[0]} weight={WEIGHTS["v1"]};
    server 127.0.0.1:{up[1]} weight={WEIGHTS["v2"]};
    {ka}
  }}
{maps}  server {{
    listen 127.0.0.1:{port} backlog=4096{ssl};
    location / {{
      proxy_pass http://{pool};
      proxy_http_version 1.1;
      proxy_set_header {conn}
      proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
      proxy_set_header X-Forwarded-Proto $scheme;
      proxy_set_header X-Request-Id $request_id;
      # nginx's default (buffered). Unbuffered, nginx resets the client when the upstream
      # answers before the whole 1 MiB arrived (wrk: read errors); 2m keeps it off disk.
      client_body_buffer_size 2m;
      proxy_buffers 64 4k;
      proxy_max_temp_file_size 0;
    }}
  }}
}}
"""
    )
    path = d / "nginx.conf"
    path.write_text(text)
    return path


def _haproxy_backends(up: tuple[int, int]) -> str:
    w1, w2 = WEIGHTS["v1"], WEIGHTS["v2"]
    a, b = f"127.0.0.1:{up[0]}", f"127.0.0.1:{up[1]}"
    return f"""
backend split
  balance roundrobin
  server v1 {a} weight {w1}
  server v2 {b} weight {w2}
backend hash
  balance hdr({USER_HEADER})
  server v1 {a} weight {w1}
  server v2 {b} weight {w2}
backend sticky
  balance roundrobin
  cookie {STICKY_COOKIE} insert indirect nocache
  server v1 {a} weight {w1} cookie v1
  server v2 {b} weight {w2} cookie v2
backend v1
  server v1 {a}
backend v2
  server v2 {b}
"""


def _haproxy_rules(s: Scenario) -> str:
    if s.routes:
        acl = [f"  acl t{i} req.hdr({TENANT_HEADER}) -m str tenant-{i}" for i in range(ROUTES)]
        use = [f"  use_backend {_route_subset(i)} if t{i}" for i in range(ROUTES)]
        return "\n".join(acl + use) + "\n  default_backend split\n"
    if s.hash_split:
        return "  default_backend hash\n"
    if s.sticky:
        return "  default_backend sticky\n"
    return "  default_backend split\n"


def haproxy(d: Path, port: int, up: tuple[int, int], s: Scenario) -> Path:
    log_global = "  log stdout format raw local0\n" if s.access_log else ""
    log_defaults = "  log global\n  option httplog\n" if s.access_log else ""
    ssl = f" ssl crt {tls_files(d)[2]} alpn http/1.1" if s.tls else ""
    text = f"""global
  nbthread 1
  maxconn 9000  # needs 2 fds per connection; the hard fd limit here is 20000
{log_global}
defaults
  mode http
  timeout connect 5s
  timeout client 60s
  timeout server 60s
  timeout http-keep-alive 60s
  option http-keep-alive
  option forwardfor
{log_defaults}
frontend fe
  bind 127.0.0.1:{port} backlog 4096{ssl}
  http-request set-header X-Forwarded-Proto {s.scheme}
  unique-id-format %{{+X}}o%ci:%cp_%fi:%fp_%Ts_%rt:%pid
  unique-id-header X-Request-Id
{_haproxy_rules(s)}{_haproxy_backends(up)}"""
    path = d / "haproxy.cfg"
    path.write_text(text)
    return path


def ours_dict(
    port: int,
    admin: int,
    up: tuple[int, int],
    s: Scenario,
    access_log: Path | None,
    tls_dir: Path | None = None,
) -> dict[str, Any]:
    """Our config for the scenario, as the mapping that is written to YAML."""
    default: dict[str, Any] = {
        "name": "default",
        "route": [{"destination": k, "weight": w} for k, w in WEIGHTS.items()],
    }
    if s.hash_split:
        default["split"] = {"by": "header", "name": USER_HEADER}
    if s.sticky:
        default["sticky"] = {"cookie": STICKY_COOKIE, "max_age": 86400}
    routes = [tenant_route(i) for i in range(ROUTES)] if s.routes else []
    listen: dict[str, Any] = {"listen": f"127.0.0.1:{port}"}
    if s.tls:
        where = tls_dir or (access_log.parent if access_log else Path(tempfile.mkdtemp()))
        cert, key, _ = tls_files(where)
        listen = {
            "listeners": [
                {
                    "name": "web",
                    "listen": f"127.0.0.1:{port}",
                    "tls": {"certificates": [{"cert": str(cert), "key": str(key)}]},
                }
            ]
        }
    return {
        **listen,
        "admin": {"listen": f"127.0.0.1:{admin}"},
        "access_log": str(access_log) if s.access_log and access_log else False,
        "metrics": {"compat": ["istio", "http"] if s.compat else []},
        "upstreams": {
            "v1": {"endpoints": [f"127.0.0.1:{up[0]}"]},
            "v2": {"endpoints": [f"127.0.0.1:{up[1]}"]},
        },
        "routes": [*routes, default],
    }


def tenant_route(i: int, value: str = "") -> dict[str, Any]:
    """Route `tenant-i`: header x-tenant == tenant-i (or `value`) goes to one subset."""
    return {
        "name": f"tenant-{i}",
        "match": [{"headers": {TENANT_HEADER: {"exact": value or f"tenant-{i}"}}}],
        "route": [{"destination": _route_subset(i)}],
    }


def write_yaml(path: Path, data: dict[str, Any]) -> Path:
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path
