"""The fleet's documents in etcd, and the pure rules that read and write them.

Keys under `/canaryproxy/<cluster>/`, one whole JSON document each (SPEC §7):

    config               {"text", "digest", "by", "time"}: the fleet's config file
    weights/<route>      {"weights", "canary_match", "seen_file"}: the route's overrides
    head                 {"revision", "txid"}: the newest revision of the log
    log/<revision>       {"revision", "time", "cause", "who", "epoch", "weights", "canary_match"}
    canary/<name>        the canary's persisted state (phase, step, times, failed checks)
    election/leader      {"replica", "admin"}, bound to the leader's lease; its
                         create_revision is the controller's epoch (the fencing token)
    members/<replica>    {"replica", "admin", "applied_revision", "boot", "counters"}, leased

Every change is one transaction guarded by `mod_revision(head)`, so two replicas racing
for the same revision number cannot both win, and a replica applies what one transaction
wrote as a whole.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from proxy.state import RoutingState, match_from_json, match_to_json

MAX_LOG = 1000  # revisions kept, as the state dir
_CLUSTER = re.compile(r"[A-Za-z0-9_.-]{1,64}")


@dataclass(frozen=True)
class StoreURL:
    endpoints: tuple[str, ...]
    cluster: str

    def __str__(self) -> str:
        return f"etcd://{','.join(self.endpoints)}/{self.cluster}"


def parse_store_url(url: str) -> StoreURL:
    """`etcd://h1:2379,h2:2379/CLUSTER` (port 2379 when left out). Raises ValueError."""
    if not url.startswith("etcd://"):
        raise ValueError(f"--store {url!r}: expected etcd://HOST:PORT[,HOST:PORT...]/CLUSTER")
    hosts, sep, cluster = url[len("etcd://") :].partition("/")
    cluster = cluster.strip("/")
    if not sep or not _CLUSTER.fullmatch(cluster):
        raise ValueError(
            f"--store {url!r}: name the cluster after the hosts, e.g. etcd://127.0.0.1:2379/shop "
            "(letters, digits, _ . -)"
        )
    endpoints = []
    for h in hosts.split(","):
        h = h.strip()
        if not h:
            raise ValueError(f"--store {url!r}: an empty host")
        endpoints.append(h if re.search(r":\d+$", h) else f"{h}:2379")
    return StoreURL(tuple(endpoints), cluster)


class Keys:
    def __init__(self, cluster: str) -> None:
        self.prefix = f"/canaryproxy/{cluster}/"
        p = self.prefix
        self.config, self.head, self.leader = p + "config", p + "head", p + "election/leader"
        self.weights_dir, self.canary_dir = p + "weights/", p + "canary/"
        self.log_dir, self.members_dir = p + "log/", p + "members/"

    def weights(self, route: str) -> str:
        return self.weights_dir + route

    def canary(self, name: str) -> str:
        return self.canary_dir + name

    def log(self, revision: int) -> str:
        return f"{self.log_dir}{revision:012d}"

    def member(self, replica: str) -> str:
        return self.members_dir + replica


def digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()


# -- a snapshot of the prefix: key -> (document, mod_revision, create_revision) -------------


@dataclass(frozen=True)
class Doc:
    value: Any
    mod_revision: int
    create_revision: int


Snapshot = Mapping[str, Doc]


def under(snapshot: Snapshot, directory: str) -> dict[str, Doc]:
    """name -> document of every key in `directory`."""
    n = len(directory)
    return {k[n:]: d for k, d in snapshot.items() if k.startswith(directory)}


def routing_of(snapshot: Snapshot, keys: Keys) -> RoutingState:
    """The fleet's routing state: every route's overrides document, together."""
    weights, match, seen = {}, {}, {}
    for route, doc in under(snapshot, keys.weights_dir).items():
        d = doc.value if isinstance(doc.value, dict) else {}
        if d.get("weights") is not None:
            weights[route] = {s: float(w) for s, w in d["weights"].items()}
        if d.get("canary_match") is not None:
            match.update(match_from_json({route: d["canary_match"]}))
        if d.get("seen_file") is not None:
            seen[route] = {s: float(w) for s, w in d["seen_file"].items()}
    return RoutingState(weights, match, seen)


def route_docs(routing: RoutingState) -> dict[str, dict]:
    """route -> its overrides document, for every route the state says anything about."""
    routes = set(routing.weights) | set(routing.canary_match) | set(routing.seen_file)
    out: dict[str, dict] = {}
    matches = match_to_json(routing.canary_match)
    for r in sorted(routes):
        out[r] = {
            "weights": routing.weights.get(r),
            "canary_match": matches.get(r),
            "seen_file": routing.seen_file.get(r),
        }
    return out


def routing_changes(
    snapshot: Snapshot, keys: Keys, new: RoutingState
) -> tuple[list[tuple[str, dict]], list[str]]:
    """(puts, deletes) that turn the stored routing state into `new`: only the routes whose
    document changes are written (a weight change of one route is one document)."""
    old = {r: d.value for r, d in under(snapshot, keys.weights_dir).items()}
    docs = route_docs(new)
    puts = [(keys.weights(r), doc) for r, doc in docs.items() if old.get(r) != doc]
    deletes = [keys.weights(r) for r in old if r not in docs]
    return puts, deletes


def head_of(snapshot: Snapshot, keys: Keys) -> tuple[int, int]:
    """(the log's newest revision, the head key's mod_revision; 0 when absent)."""
    doc = snapshot.get(keys.head)
    if doc is None:
        return 0, 0
    return int(doc.value.get("revision", 0)), doc.mod_revision


def history(snapshot: Snapshot, keys: Keys) -> list[dict]:
    """The log, oldest first."""
    entries = under(snapshot, keys.log_dir)
    return [entries[k].value for k in sorted(entries)]


def epoch_of(snapshot: Snapshot, keys: Keys) -> tuple[int, dict | None]:
    """(the leader key's create_revision, its document); (0, None) without a leader."""
    doc = snapshot.get(keys.leader)
    return (doc.create_revision, doc.value) if doc is not None else (0, None)
