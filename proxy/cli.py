"""Command line: argparse verbs -> exit status. Each verb's work lives in its own module."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DEFAULT_ADMIN = "http://127.0.0.1:9901"


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="canaryproxy", description=__doc__)
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="verb")

    s = sub.add_parser("serve", help="run the proxy")
    s.add_argument("-c", "--config", required=True, help="config YAML file")
    s.add_argument("--workers", type=int, default=1, help="data-plane processes (SO_REUSEPORT)")
    s.add_argument("--state-dir", default="./.canaryproxy", help="revisions and canary state")
    s.add_argument("--log-level", default="info")

    d = sub.add_parser("demo", help="two built-in versions, the proxy, load and a live rollout")
    d.add_argument("--v2-error-rate", type=float, default=0.0)
    d.add_argument("--v2-latency-ms", type=float, default=0.0)
    d.add_argument("--interval", default="2s", help="canary analysis interval")
    d.add_argument("--listen", default="127.0.0.1:8080")
    d.add_argument("--admin-listen", default="127.0.0.1:9901")
    d.add_argument("--rps", type=float, default=100.0, help="built-in load, requests per second")
    d.add_argument("--keep-running", action="store_true")
    d.add_argument("--state-dir", default="")

    v = sub.add_parser("validate", help="check a config file")
    v.add_argument("-c", "--config", required=True)

    def client(name: str, help_: str) -> argparse.ArgumentParser:
        c = sub.add_parser(name, help=help_)
        c.add_argument("--admin", default=os.environ.get("CANARYPROXY_ADMIN", DEFAULT_ADMIN))
        return c

    st = client("status", "routes, weights, canaries, per-version rps / error % / p99")
    st.add_argument("--watch", action="store_true")
    st.add_argument("--json", action="store_true")
    st.add_argument("--interval", type=float, default=1.0)

    w = client("weights", "set a route's weights: weights ROUTE v1=90 v2=10")
    w.add_argument("route")
    w.add_argument("pairs", nargs="+", metavar="SUBSET=WEIGHT")

    sw = client("switch", "blue-green: all traffic of ROUTE to SUBSET at once")
    sw.add_argument("route")
    sw.add_argument("subset")

    r = client("rollout", "control a canary")
    r.add_argument("action", choices=["start", "promote", "abort", "pause", "resume"])
    r.add_argument("canary", nargs="?", default="")

    h = client("history", "revisions of routing state")
    h.add_argument("--json", action="store_true")

    u = client("undo", "restore a previous revision")
    u.add_argument("--to-revision", type=int, default=None)

    i = sub.add_parser("import", help="Istio / Gateway API / Flagger manifests -> native config")
    i.add_argument("kind", choices=["istio", "gateway", "flagger"])
    i.add_argument("files", nargs="+")
    i.add_argument("-o", "--output", default="")
    i.add_argument("--endpoints", default="", help="v1=HOST:PORT,v2=HOST:PORT")
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    if args.version:
        from proxy import __version__

        print(__version__)
        return 0
    if args.verb is None:
        _parser().print_help()
        return 2
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    verb = args.verb
    if verb == "serve":
        from proxy.app import run_serve

        return run_serve(args)
    if verb == "demo":
        from proxy.demo import run_demo

        return run_demo(args)
    if verb == "validate":
        return _validate(args.config)
    if verb == "import":
        from proxy.importers import run_import

        return run_import(args)
    from proxy import client

    handler = getattr(client, "cmd_" + verb)
    code: int = handler(args)
    return code


def _validate(path: str) -> int:
    from proxy.config.load import load_file, summary

    config, errors = load_file(path)
    if errors or config is None:
        for line in errors:
            print(line, file=sys.stderr)
        return 1
    print(summary(path, config))
    return 0


if __name__ == "__main__":
    sys.exit(main())
