"""`canaryproxy import istio|gateway|flagger|ingress-nginx FILE...` -> native config YAML.

Each importer turns manifests into plain dicts in our YAML shape; this module reads the
files, refuses kinds the chosen importer does not know, binds upstreams to `--endpoints`,
checks the result with our validator, and prints the config, the notes (ignored fields,
defaults taken) and every refusal. Refusals fail the run (exit 1, nothing written) unless
`--best-effort`: then the refused parts are left out and the refusals print as warnings.
Missing endpoints and a result our validator rejects fail the run either way.
"""

from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field

from proxy.importers import flagger, gateway, ingress_nginx, istio
from proxy.importers.bind import Wanted, bind
from proxy.importers.common import (
    Doc,
    ImportFailed,
    Report,
    Source,
    dump_config,
    parse_endpoints,
    read_documents,
)

KINDS = {
    "istio": istio.KINDS,
    "gateway": gateway.KINDS,
    "flagger": flagger.KINDS,
    "ingress-nginx": ingress_nginx.KINDS,
}
LISTEN = "0.0.0.0:8080"


@dataclass
class Imported:
    """The outcome of one import: the config (None when it failed) and what was said."""

    config: Doc | None
    errors: list[str] = field(default_factory=list)  # refusals: warnings with --best-effort
    fatal: list[str] = field(default_factory=list)  # unreadable input, missing endpoints, invalid
    notes: list[str] = field(default_factory=list)


def import_manifests(
    kind: str, files: list[str], endpoints: str, best_effort: bool = False
) -> Imported:
    """Read and translate `files`; the config is None when the run fails."""
    try:
        sources = list(read_documents(files))
        eps = parse_endpoints(endpoints)
    except ImportFailed as exc:
        return Imported(None, fatal=[str(exc)])
    report = Report()
    if kind == "istio":
        sources = [istio.as_virtual_service(report, s) for s in sources]
    known = [s for s in sources if s.kind in KINDS[kind]]
    for src in sources:
        if src not in known:
            report.add(src, "kind", f"{src.kind or '(none)'}: not a kind `import {kind}` reads")
    if not known:
        report.fatal.append(f"{', '.join(files)}: no {' or '.join(KINDS[kind])} found")
        return Imported(None, report.lines, report.fatal, report.notes)
    try:
        config = _TRANSLATORS[kind](known, eps, report)
    except (TypeError, ValueError, AttributeError, KeyError) as exc:  # a shape no check saw
        report.fatal.append(f"{', '.join(files)}: cannot translate: {type(exc).__name__}: {exc}")
        return Imported(None, report.lines, report.fatal, report.notes)
    out = Imported(config, report.lines, report.fatal, report.notes)
    if out.fatal or (out.errors and not best_effort):
        out.config = None
    elif not config.get("routes"):
        out.fatal.append(f"{', '.join(files)}: nothing left to route")
        out.config = None
    else:
        out.fatal.extend(_validate(config))
        out.config = None if out.fatal else config
    return out


def translate(kind: str, files: list[str], endpoints: str) -> tuple[Doc | None, list[str]]:
    """Strict import: (config, []) when it translates whole and validates, else (None, every
    problem)."""
    got = import_manifests(kind, files, endpoints)
    return got.config, [*got.fatal, *got.errors]


def _validate(config: Doc) -> list[str]:
    """The output must load as it stands: a translation bug shows here, not at `serve`."""
    from proxy.config.load import load_text

    _, problems = load_text(dump_config(config), "<imported>")
    return problems


def _config(
    upstreams: dict[str, Doc], routes: list[Doc], listeners: list[Doc] | None = None
) -> Doc:
    where: Doc = {"listeners": listeners} if listeners else {"listen": LISTEN}
    return {**where, "upstreams": upstreams, "routes": routes}


def _istio(sources: list[Source], eps: dict[str, list[str]], report: Report) -> Doc:
    routes, upstreams = istio.translate(sources, eps, report)
    return _config(upstreams, routes)


def _gateway(sources: list[Source], eps: dict[str, list[str]], report: Report) -> Doc:
    routes, listeners = gateway.translate(sources, report)
    route_src = next((s for s in sources if s.kind == "HTTPRoute"), sources[0])
    wanted = [Wanted(n, route_src, "backendRefs") for n in gateway.backend_names(routes)]
    return _config(bind(wanted, eps, report), routes, listeners)


def _flagger(sources: list[Source], eps: dict[str, list[str]], report: Report) -> Doc:
    routes, canaries, wanted = flagger.translate(sources, report)
    config = _config(bind(wanted, eps, report), routes)
    config["canaries"] = canaries
    return config


def _ingress(sources: list[Source], eps: dict[str, list[str]], report: Report) -> Doc:
    routes, wanted, web = ingress_nginx.translate(sources, report)
    used = {d["destination"] for r in routes for d in r.get("route") or []}
    listeners = [{"name": ingress_nginx.WEB, "listen": LISTEN}] if web else None
    return _config(bind([w for w in wanted if w.name in used], eps, report), routes, listeners)


_TRANSLATORS = {
    "istio": _istio,
    "gateway": _gateway,
    "flagger": _flagger,
    "ingress-nginx": _ingress,
}


def run_import(args: argparse.Namespace) -> int:
    """CLI entry: print or write the config; notes and warnings on stderr; exit 1 on failure."""
    best_effort = bool(getattr(args, "best_effort", False))
    got = import_manifests(args.kind, list(args.files), args.endpoints or "", best_effort)
    for line in got.notes:  # `FILE: Kind/name: path: ignored: why` and other notes
        print(line, file=sys.stderr)
    for line in got.errors:
        print(f"warning: {line}" if best_effort else line, file=sys.stderr)
    for line in got.fatal:
        print(line, file=sys.stderr)
    if got.config is None:
        return 1
    text = dump_config(got.config)
    if not args.output:
        sys.stdout.write(text)
        return 0
    try:
        with open(args.output, "w", encoding="utf-8") as fh:
            fh.write(text)
    except OSError as exc:
        print(f"{args.output}: cannot write: {exc.strerror}", file=sys.stderr)
        return 1
    return 0
