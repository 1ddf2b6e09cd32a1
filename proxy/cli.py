"""Command line: argparse verbs -> exit status. Each verb's work lives in its own module."""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence

DEFAULT_ADMIN = "http://127.0.0.1:9901"
LOG_LEVELS = ("debug", "info", "warning", "error", "critical")

DESCRIPTION = """\
canaryproxy: an HTTP reverse proxy that splits live traffic between versions of a
service (weights, blue-green, A/B by header, cookie, user hash or region) and runs its
own canary controller (step weights up, check error rate and P99, promote or roll back)."""

EPILOG = """\
examples:
  canaryproxy demo                                 # everything built in: watch a rollout
  canaryproxy validate -c config/example.yaml
  canaryproxy serve -c config/example.yaml         # proxy :8080, admin 127.0.0.1:9901
  canaryproxy status --watch
  canaryproxy weights default v2=10                # v2 gets 10 %, the rest share 90 %

Client verbs (status, weights, switch, rollout, history, undo, reload, explain) talk to
the admin API at --admin or $CANARYPROXY_ADMIN (default http://127.0.0.1:9901), with
the bearer token in $CANARYPROXY_TOKEN. Run `canaryproxy VERB --help` for each verb."""


class _Help(argparse.RawDescriptionHelpFormatter):
    """Keep the examples' line breaks; show an option's default where it has one."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        default = action.default
        if default in (None, False, "", [], argparse.SUPPRESS) or action.required:
            return text
        if "%(default)" in text or not action.option_strings:
            return text
        return text + " (default: %(default)s)"


def _log_level(value: str) -> str:
    level = value.lower()
    if level not in LOG_LEVELS:
        raise argparse.ArgumentTypeError(f"{value!r} is not one of {', '.join(LOG_LEVELS)}")
    return level


class _Verbs:
    """Adds verbs to the subparsers with one shape: help line, description, example."""

    def __init__(self, sub: argparse._SubParsersAction) -> None:
        self.sub = sub

    def add(self, name: str, summary: str, example: str, more: str = "") -> argparse.ArgumentParser:
        line = summary.replace("%%", "%")  # `help` is %-formatted, the description is not
        description = line[0].upper() + line[1:] + "." + (f"\n\n{more}" if more else "")
        return self.sub.add_parser(  # type: ignore[no-any-return]
            name,
            help=summary,
            description=description,
            epilog="example:\n  " + example.replace("\n", "\n  "),
            formatter_class=_Help,
        )

    def client(
        self, name: str, summary: str, example: str, more: str = ""
    ) -> argparse.ArgumentParser:
        c = self.add(name, summary, example, more)
        c.add_argument(
            "--admin",
            default=os.environ.get("CANARYPROXY_ADMIN", DEFAULT_ADMIN),
            help="admin API URL (also $CANARYPROXY_ADMIN); token from $CANARYPROXY_TOKEN",
        )
        return c


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="canaryproxy", description=DESCRIPTION, epilog=EPILOG, formatter_class=_Help
    )
    p.add_argument("--version", action="store_true", help="print the version and exit")
    sub = p.add_subparsers(dest="verb", title="verbs", metavar="VERB")
    verbs = _Verbs(sub)
    _serve_verbs(verbs)
    _state_verbs(verbs)
    _change_verbs(verbs)
    return p


def _workers(value: str) -> int:
    """`--workers N` or `auto` (as nginx's `worker_processes auto`): the cores this process
    may run on (its CPU affinity, so a `taskset` or container limit is respected)."""
    if value == "auto":
        return max(1, len(os.sched_getaffinity(0)))
    try:
        return int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number or auto, not {value!r}") from None


def _serve_verbs(verbs: _Verbs) -> None:
    s = verbs.add(
        "serve",
        "run the proxy, its admin API and canary controller",
        "canaryproxy serve -c config/example.yaml --workers 2",
        "Runs until SIGTERM/SIGINT (drains in-flight requests, exit 0); SIGHUP reloads the\n"
        "config. Exit 1: invalid config; exit 2: unsafe admin address or bad arguments.",
    )
    s.add_argument("-c", "--config", required=True, help="config YAML file (hot-reloaded)")
    s.add_argument(
        "--workers",
        type=_workers,
        default=1,
        help="data-plane processes sharing the port (SO_REUSEPORT); auto: one per core",
    )
    s.add_argument(
        "--state-dir",
        default="./.canaryproxy",
        help="where revisions, weights and canary state persist (one machine)",
    )
    s.add_argument(
        "--store",
        default=os.environ.get("CANARYPROXY_STORE", ""),
        metavar="etcd://HOST:PORT[,HOST:PORT...]/CLUSTER",
        help="fleet mode: share config, weights, revisions and canary state with every "
        "replica through etcd v3 (default $CANARYPROXY_STORE; see README, Fleet mode)",
    )
    s.add_argument(
        "--replica",
        default="",
        help="this replica's name in the fleet (default: HOSTNAME-ADMINPORT)",
    )
    s.add_argument(
        "--election-ttl",
        type=float,
        default=5.0,
        metavar="SECONDS",
        help="fleet mode: the controller leader's lease; a dead leader is replaced within it",
    )
    s.add_argument(
        "--log-level", type=_log_level, default="info", help="one of " + ", ".join(LOG_LEVELS)
    )

    d = verbs.add(
        "demo",
        "two built-in versions, the proxy, a steady load and a live canary rollout",
        "canaryproxy demo --v2-error-rate 0.05     # v2 fails 5 %: rolled back",
        "Needs no file and no other program. Shows the rollout live until v2 is promoted or\n"
        "rolled back, then prints a summary and exits 0.",
    )
    d.add_argument(
        "--v2-error-rate", type=float, default=0.0, help="share of v2 answers that are 500 (0..1)"
    )
    d.add_argument(
        "--v2-latency-ms", type=float, default=0.0, help="added latency of every v2 answer"
    )
    d.add_argument(
        "--interval", default="2s", help="canary analysis interval (a duration: 500ms, 2s, 1m)"
    )
    d.add_argument("--listen", default="127.0.0.1:8080", help="proxy address")
    d.add_argument(
        "--admin-listen", default="127.0.0.1:9901", help="admin API and dashboard address"
    )
    d.add_argument("--rps", type=float, default=100.0, help="built-in load, requests per second")
    d.add_argument(
        "--keep-running", action="store_true", help="stay up after the outcome, for the dashboard"
    )
    d.add_argument("--state-dir", default="", help="state dir (default: a temporary one)")

    v = verbs.add(
        "validate",
        "check a config file without starting anything",
        "canaryproxy validate -c config/canary.yaml",
        "Exit 0 and a summary if valid; else exit 1 and one `FILE:LINE: path: what is wrong`\n"
        "line per error.",
    )
    v.add_argument("-c", "--config", required=True, help="config YAML file")

    i = verbs.add(
        "import",
        "Istio / Gateway API / Flagger / ingress-nginx manifests -> native config YAML",
        "canaryproxy import istio virtualservice.yaml destinationrule.yaml \\\n"
        "    --endpoints reviews-v1=10.0.0.5:8080,reviews-v2=10.0.0.6:8080 -o canaryproxy.yaml",
        "Fields with no meaning here (Kubernetes wiring) are listed as ignored on stderr;\n"
        "fields that cannot be honoured are refused with their path, and the run fails\n"
        "unless --best-effort. docs/coming-from.md lists both.",
    )
    i.add_argument(
        "kind", choices=["istio", "gateway", "flagger", "ingress-nginx"], help="manifest family"
    )
    i.add_argument("files", nargs="+", metavar="FILE", help="manifest files (multi-document YAML)")
    i.add_argument("-o", "--output", default="", help="write here instead of stdout")
    i.add_argument(
        "--endpoints",
        default="",
        help="upstream addresses, NAME=HOST:PORT,...: Istio `reviews-v1` (or `v1` when one "
        "service is imported), Gateway API and ingress-nginx Service names (`foo-80` for "
        "ingress-nginx), Flagger `primary`/`canary` (default: Flagger's Service names)",
    )
    i.add_argument(
        "--best-effort",
        action="store_true",
        help="import what translates; print refusals as warnings and exit 0",
    )


def _state_verbs(verbs: _Verbs) -> None:
    st = verbs.client(
        "status",
        "routes, weights, canary phase, per-version rps / error %% / p99",
        "canaryproxy status --watch --interval 2",
    )
    st.add_argument(
        "--watch", action="store_true", help="redraw until interrupted; survives admin restarts"
    )
    st.add_argument("--json", action="store_true", help="print the status JSON as served")
    st.add_argument(
        "--interval", type=float, default=1.0, help="seconds between redraws with --watch"
    )

    h = verbs.client(
        "history",
        "revisions of routing state (reloads, weight changes, steps)",
        "canaryproxy history",
    )
    h.add_argument("--json", action="store_true", help="print the revisions as JSON")

    e = verbs.client(
        "explain",
        "which route and version a request would get, and why",
        "canaryproxy explain -H 'user-id: test-user-001' --cookie version=v2 /api/items",
        "No request is sent to an upstream and no random draw is made: for a random split\n"
        "the answer gives each version's probability.",
    )
    e.add_argument(
        "target", metavar="URL-OR-PATH", help="a path (/api?q=1) or a URL (its host is the Host)"
    )
    e.add_argument(
        "-H",
        "--header",
        action="append",
        default=[],
        metavar="'NAME: VALUE'",
        help="a request header (repeatable)",
    )
    e.add_argument(
        "--cookie", action="append", default=[], metavar="K=V", help="a request cookie (repeatable)"
    )
    e.add_argument("--method", default="GET", help="request method")
    e.add_argument(
        "--client-ip",
        default="127.0.0.1",
        help="the client's address (source_ip matches, hash splits)",
    )
    e.add_argument("--json", action="store_true", help="print the explain JSON as served")


def _change_verbs(verbs: _Verbs) -> None:
    w = verbs.client(
        "weights",
        "set a route's weights, in percent",
        "canaryproxy weights default v2=10          # v2 10 %, the others share 90 %\n"
        "canaryproxy weights default v1=3 v2=1      # every destination named: 75 % / 25 %",
        "Names left out share what is left (100 - the given sum) in proportion to their\n"
        "current weights; naming every destination sets relative weights as written.",
    )
    w.add_argument("route", help="route name")
    w.add_argument("pairs", nargs="+", metavar="SUBSET=WEIGHT", help="subset and its weight")

    sw = verbs.client(
        "switch",
        "blue-green: all traffic of ROUTE to SUBSET at once",
        "canaryproxy switch default green",
        "Switching back is the rollback: `canaryproxy switch default blue` (or `undo`).",
    )
    sw.add_argument("route", help="route name")
    sw.add_argument("subset", help="subset that takes all the traffic")

    r = verbs.client(
        "rollout",
        "start, promote, abort, pause or resume a canary",
        "canaryproxy rollout start default",
    )
    r.add_argument(
        "action", choices=["start", "promote", "abort", "pause", "resume"], help="what to do"
    )
    r.add_argument(
        "canary", nargs="?", default="", help="canary name (may be left out when there is one)"
    )

    u = verbs.client(
        "undo",
        "restore the previous routing revision, like `kubectl rollout undo`",
        "canaryproxy undo                     # back to the previous revision (again: forth)\n"
        "canaryproxy undo --to-revision 3",
        "An undo is itself a new revision, so a second `undo` flips back again;\n"
        "--to-revision N goes further back (see `canaryproxy history`).",
    )
    u.add_argument(
        "--to-revision",
        type=int,
        default=None,
        metavar="N",
        help="revision to restore (default: the previous one)",
    )

    verbs.client(
        "reload",
        "re-read the config file now (as SIGHUP)",
        "canaryproxy reload",
        "An invalid file is rejected whole (exit 1, every error printed) and the running\n"
        "config stays.",
    )


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    args = parser.parse_args(argv)
    if args.version:
        from proxy import __version__
        from proxy.build import describe

        print(f"canaryproxy {__version__} ({describe()})")
        return 0
    if args.verb is None:
        parser.print_help()
        return 2
    try:
        return _dispatch(args)
    except KeyboardInterrupt:
        return 130


def _dispatch(args: argparse.Namespace) -> int:
    verb = args.verb
    if verb == "serve":
        from proxy.serve import run_serve

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
