"""Shared pieces of the manifest importers: documents, the report, small converters.

Rules every importer keeps (a manifest must never be misrouted silently):
- every field is translated, listed as ignored, or refused with its path;
- an ignored field is Kubernetes wiring with no meaning here; it is printed as a note
  `FILE: Kind/name: path: ignored: why`, the why taken from the importer's `IGNORED` table;
- a refused field is an error `FILE: Kind/name: path: not supported[: why]` (the why from the
  importer's `REFUSED` table when it has one); the run fails whole (exit 1) unless
  `--best-effort`, which drops the refused part and prints the error as a warning;
- tables key fields by their path with indices blanked (`spec.http[].corsPolicy`), and
  docs/coming-from.md lists exactly those tables.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import yaml

Doc = dict[str, Any]
Table = dict[str, str]

# Go duration syntax as Kubernetes writes it ("1m30s", "0.5s", "250ms").
_GO_DURATION = re.compile(r"(\d+(?:\.\d+)?)(h|ms|m|s|us|µs|ns)")
_UNIT_SECONDS = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
_INDEX = re.compile(r"\[\d+\]")

# Object metadata every importer ignores: it tells Kubernetes how to store the object.
METADATA: Table = {
    "metadata.namespace": "the Kubernetes namespace of the object; names here are global",
    "metadata.labels": "Kubernetes object labels select objects, not requests",
    "metadata.annotations": "Kubernetes object annotations (none of them route requests)",
    "metadata.uid": "written by the API server",
    "metadata.resourceVersion": "written by the API server",
    "metadata.generation": "written by the API server",
    "metadata.creationTimestamp": "written by the API server",
    "metadata.managedFields": "written by the API server",
    "metadata.selfLink": "written by the API server",
    "metadata.finalizers": "Kubernetes garbage collection",
    "metadata.ownerReferences": "Kubernetes garbage collection",
    "status": "written by the controller, not by the user",
}


class ImportFailed(Exception):
    """Raised for a file that cannot be read or parsed at all."""


@dataclass
class Source:
    """One manifest document and where it came from, for messages."""

    file: str
    doc: Doc

    @property
    def kind(self) -> str:
        return str(self.doc.get("kind", ""))

    @property
    def name(self) -> str:
        meta = self.doc.get("metadata") or {}
        return str(meta.get("name", "")) if isinstance(meta, dict) else ""

    @property
    def namespace(self) -> str:
        meta = self.doc.get("metadata") or {}
        return str(meta.get("namespace") or "") if isinstance(meta, dict) else ""

    @property
    def spec(self) -> Doc:
        spec = self.doc.get("spec")
        return spec if isinstance(spec, dict) else {}


def generic(path: str) -> str:
    """`spec.http[0].fault` -> `spec.http[].fault`: the key of a path in the tables."""
    return _INDEX.sub("[]", path)


@dataclass
class Report:
    """What an import found: refusals (`lines`), notes, and problems no flag can skip."""

    lines: list[str] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)
    fatal: list[str] = field(default_factory=list)

    def add(self, src: Source, path: str, message: str) -> None:
        """A refusal: the field cannot be honoured."""
        self.lines.append(f"{src.file}: {src.kind}/{src.name}: {path}: {message}")

    def unsupported(self, src: Source, path: str, refused: Table | None = None) -> None:
        why = (refused or {}).get(generic(path))
        self.add(src, path, f"not supported: {why}" if why else "not supported")

    def ignored(self, src: Source, path: str, table: Table) -> None:
        """A field with no meaning here; its why comes from the importer's table."""
        self.note(src, path, f"ignored: {table[generic(path)]}")

    def note(self, src: Source, path: str, text: str) -> None:
        self.notes.append(f"{src.file}: {src.kind}/{src.name}: {path}: {text}")

    def missing(self, src: Source, path: str, message: str) -> None:
        """Input the run cannot do without (endpoints): fatal even with --best-effort."""
        self.fatal.append(f"{src.file}: {src.kind}/{src.name}: {path}: {message}")

    def mark(self) -> int:
        return len(self.lines)

    def since(self, mark: int) -> bool:
        """Were refusals added after `mark`? (a part that has one is dropped whole)"""
        return len(self.lines) > mark

    def __bool__(self) -> bool:
        return bool(self.lines or self.fatal)


def check_keys(
    report: Report,
    src: Source,
    obj: Any,
    path: str,
    known: set[str],
    ignored: Table | None = None,
    refused: Table | None = None,
) -> None:
    """Every key of `obj` that is not `known` is noted as ignored (when the table has it)
    or refused."""
    if not isinstance(obj, dict):
        return
    for key in obj:
        if key in known:
            continue
        kpath = f"{path}.{key}" if path else str(key)
        if ignored is not None and generic(kpath) in ignored:
            report.ignored(src, kpath, ignored)
        else:
            report.unsupported(src, kpath, refused)


def check_metadata(report: Report, src: Source, translated: frozenset[str] = frozenset()) -> None:
    """Note the object metadata (and `status`) this importer does not read."""
    meta = src.doc.get("metadata")
    for key in meta if isinstance(meta, dict) else ():
        if key != "name" and key not in translated:
            path = f"metadata.{key}"
            if path in METADATA:
                report.ignored(src, path, METADATA)
            else:
                report.unsupported(src, path)
    if "status" in src.doc:
        report.ignored(src, "status", METADATA)


def read_documents(paths: list[str]) -> Iterator[Source]:
    """Every non-empty document of every file, in order (multi-document YAML)."""
    for path in paths:
        try:
            with open(path, encoding="utf-8") as fh:
                docs = list(yaml.safe_load_all(fh))
        except OSError as exc:
            raise ImportFailed(f"{path}: cannot read: {exc.strerror}") from exc
        except yaml.YAMLError as exc:
            raise ImportFailed(f"{path}: not valid YAML: {exc}") from exc
        for doc in docs:
            if doc is None:
                continue
            if not isinstance(doc, dict):
                raise ImportFailed(f"{path}: a document is not a mapping")
            yield Source(path, doc)


def parse_endpoints(text: str) -> dict[str, list[str]]:
    """`v1=HOST:PORT,v2=HOST:PORT` -> {subset: [address]}; a repeated subset adds endpoints."""
    out: dict[str, list[str]] = {}
    for item in filter(None, (part.strip() for part in text.split(","))):
        name, sep, address = item.partition("=")
        if not sep or not name.strip() or ":" not in address:
            raise ImportFailed(f"--endpoints: {item!r}: expected SUBSET=HOST:PORT")
        out.setdefault(name.strip(), []).append(address.strip())
    return out


def go_duration(value: Any) -> float | None:
    """Seconds of a Kubernetes/Go duration ("1m30s", "500ms"), or None if it is not one."""
    if isinstance(value, int | float) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, str) or not value:
        return None
    pos, total = 0, 0.0
    for m in _GO_DURATION.finditer(value):
        if m.start() != pos:
            return None
        total += float(m.group(1)) * _UNIT_SECONDS[m.group(2)]
        pos = m.end()
    return total if pos == len(value) else None


def duration_text(seconds: float) -> str:
    """Our duration syntax: whole seconds as `Ns`, the rest in milliseconds."""
    if seconds == int(seconds):
        return f"{int(seconds)}s"
    return f"{round(seconds * 1000)}ms"


def duration(report: Report, src: Source, value: Any, path: str) -> str | None:
    """A Go duration in our syntax, or None (refused) when it is not one."""
    seconds = go_duration(value)
    if seconds is None:
        report.add(src, path, f"{value!r}: not a duration")
        return None
    return duration_text(seconds)


def to_num(
    report: Report, src: Source, value: Any, path: str, integer: bool = False
) -> int | float | None:
    """A number of the manifest (as written: `90`, `"90"`, `12.5`), or None (refused)."""
    try:
        if isinstance(value, bool):
            raise ValueError(value)
        got = float(value)
        if integer and not got.is_integer():
            raise ValueError(value)
    except (TypeError, ValueError):
        report.add(src, path, f"{value!r}: not {'an integer' if integer else 'a number'}")
        return None
    return int(got) if integer else number(got)


def number(value: float) -> int | float:
    """Whole numbers print as ints, so the YAML reads `weight: 90`, not `90.0`."""
    return int(value) if float(value).is_integer() else value


def as_list(value: Any) -> list[Any]:
    return value if isinstance(value, list) else []


def as_dict(value: Any) -> Doc:
    return value if isinstance(value, dict) else {}


class _Dumper(yaml.SafeDumper):
    """Writes a value shared by two routes twice, never as a YAML alias (`*id001`)."""

    def ignore_aliases(self, data: Any) -> bool:
        return True


def dump_config(config: Doc) -> str:
    """Native config YAML, keys in the order the README documents them."""
    header = "# Generated by `canaryproxy import`; check it with `canaryproxy validate -c FILE`.\n"
    body = yaml.dump(config, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    return header + body


def unique_name(name: str, owner: str, taken: set[str]) -> str:
    """Route names must be unique; two manifests may both call an entry `default`."""
    candidate = name if name not in taken else f"{owner}-{name}"
    n = 2
    while candidate in taken:
        candidate, n = f"{owner}-{name}-{n}", n + 1
    taken.add(candidate)
    return candidate


def re2_escape(text: str) -> str:
    """An RE2-safe literal (`re.escape` also escapes characters RE2 reads literally anyway)."""
    return "".join("\\" + ch if ch in r".^$*+?()[]{}|\\" else ch for ch in text)


def sub_literal(text: str) -> str:
    """A regex substitution that inserts `text` as written (backslashes doubled)."""
    return text.replace("\\", "\\\\")
