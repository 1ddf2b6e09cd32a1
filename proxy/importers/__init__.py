"""`canaryproxy import istio|gateway|flagger FILE...` -> native config YAML.

Each importer turns manifests into plain dicts in our YAML shape; this module reads the
files, rejects kinds the chosen importer does not know, binds subsets to `--endpoints`,
and prints the config or every error (exit 1, nothing written).
"""

from __future__ import annotations

import argparse
import sys

from proxy.importers import flagger, gateway, istio
from proxy.importers.common import (
    Doc,
    Errors,
    ImportFailed,
    Source,
    dump_config,
    parse_endpoints,
    read_documents,
    upstreams_for,
)

KINDS = {"istio": istio.KINDS, "gateway": gateway.KINDS, "flagger": flagger.KINDS}
LISTEN = "0.0.0.0:8080"


def translate(kind: str, files: list[str], endpoints: str) -> tuple[Doc | None, list[str]]:
    """Read `files` and translate them: (config, []) when it validates, else (maybe None, errors).

    A translated config that our validator rejects is returned with those errors too.
    """
    try:
        sources = list(read_documents(files))
        eps = parse_endpoints(endpoints)
    except ImportFailed as exc:
        return None, [str(exc)]
    errors = Errors()
    known = [s for s in sources if s.kind in KINDS[kind]]
    for src in sources:
        if src not in known:
            errors.add(src, "kind", f"{src.kind or '(none)'}: not a kind `import {kind}` reads")
    if not known:
        errors.lines.append(f"{', '.join(files)}: no {' or '.join(KINDS[kind])} found")
        return None, errors.lines
    config = _TRANSLATORS[kind](known, eps, errors)
    if errors:
        return None, errors.lines
    return config, _validate(config)


def _validate(config: Doc) -> list[str]:
    """The output must load as it stands: a translation bug shows here, not at `serve`."""
    from proxy.config.load import load_text

    _, problems = load_text(dump_config(config), "<imported>")
    return problems


def _istio(sources: list[Source], eps: dict[str, list[str]], errors: Errors) -> Doc:
    routes, upstreams = istio.translate(sources, eps, errors)
    return _config(upstreams, routes)


def _gateway(sources: list[Source], eps: dict[str, list[str]], errors: Errors) -> Doc:
    routes = gateway.translate(sources, errors)
    names = gateway.backend_names(routes)
    return _config(upstreams_for(names, eps, errors, sources[0], "backendRefs"), routes)


def _flagger(sources: list[Source], eps: dict[str, list[str]], errors: Errors) -> Doc:
    upstreams: dict[str, Doc] = {}
    routes, canaries = [], []
    for src in sources:
        route, entry, subsets = flagger.translate(src, errors)
        routes.append(route)
        canaries.append(entry)
        for name in subsets:
            addrs = flagger.endpoints_for(name, eps)
            if not addrs:
                hint = f"{name}=HOST:PORT (or {name.rsplit('-', 1)[-1]}=HOST:PORT)"
                errors.add(src, "targetRef", f"{name}: no endpoints; pass --endpoints {hint}")
            upstreams[name] = {"endpoints": list(addrs)}
    config = _config(upstreams, routes)
    config["canaries"] = canaries
    return config


_TRANSLATORS = {"istio": _istio, "gateway": _gateway, "flagger": _flagger}


def _config(upstreams: dict[str, Doc], routes: list[Doc]) -> Doc:
    return {"listen": LISTEN, "upstreams": upstreams, "routes": routes}


def run_import(args: argparse.Namespace) -> int:
    """CLI entry: print or write the config; on any error print them all and exit 1."""
    config, errors = translate(args.kind, list(args.files), args.endpoints or "")
    if config is None or errors:
        for line in errors:
            print(line, file=sys.stderr)
        return 1
    text = dump_config(config)
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
