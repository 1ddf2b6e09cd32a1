"""Routing state that is not in the file, as the table is built from it.

Its own module, outside the compiled hot path (setup.py): it travels to the workers by
pickle, which a compiled frozen class does not take.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from proxy.config.schema import MatchRule


@dataclass(frozen=True)
class Overrides:
    """Routing state that is not in the file (admin API, canary controller)."""

    # route -> subset -> weight; a complete map for that route: missing subsets get 0.
    weights: Mapping[str, Mapping[str, float]] = field(default_factory=dict)
    # route -> (subset, rules): requests matching any rule go to subset before splitting.
    canary_match: Mapping[str, tuple[str, tuple[MatchRule, ...]]] = field(default_factory=dict)
