"""ingress-nginx canary rules (`canary-by-header`, `-value`, `-pattern`, `canary-by-cookie`,
`canary-weight`, `canary-weight-total`) as our first-match-wins routes or match items.

The decision, as ingress-nginx's balancer.lua takes it for one request of a location:
1. header (when `canary-by-header` is set and the request has it):
   - with `-value`: equal -> canary; else go on (no always/never then);
   - else with `-pattern`: a PCRE *search* (unanchored) that matches -> canary; else go on;
   - else `always` -> canary, `never` -> main (stop), anything else: go on;
2. cookie (when `canary-by-cookie` is set and sent): `always` -> canary, `never` -> main;
3. weight: canary with probability weight / total (`canary-weight-total` counts only above
   100; a weight >= total sends everything to the canary).
Flagger's nginx router writes exactly these annotations from an A/B `match`:
`headers: {cookie: {exact: NAME}}` is `canary-by-cookie: NAME` (a cookie NAME with the value
`always`), any other header `{exact: V}` is `-by-header` + `-value`, `{regex: P}` `-pattern`;
the weight stays 0.
"""

from __future__ import annotations

from dataclasses import dataclass

from proxy.importers.common import Doc

ALWAYS, NEVER = "always", "never"


def unanchored(pattern: str) -> str:
    """Our regexes are full matches; a PCRE search for `pattern` anywhere is this."""
    return f".*(?:{pattern}).*"


def not_equal(word: str) -> str:
    """A regex (full match) for every string but `word` (RE2 has no lookahead)."""
    alts = [f"{word[:i]}([^{word[i]}].*)?" for i in range(len(word))]
    return "|".join([*alts, f"{word}.+"])


@dataclass(frozen=True)
class Rules:
    """One canary's annotations, parsed."""

    header: str | None = None
    value: str | None = None
    pattern: str | None = None
    cookie: str | None = None
    weight: int = 0
    total: int = 100

    def steps(self) -> list[tuple[Doc, bool]]:
        """The decision as (extra match keys, to canary?) pairs, first match wins; the
        weighted split that ends it is left to the caller (`split`)."""
        out: list[tuple[Doc, bool]] = []
        if self.header:
            h = self.header.lower()
            if self.value:
                out.append(({"headers": {h: {"exact": self.value}}}, True))
            elif self.pattern:
                out.append(({"headers": {h: {"regex": unanchored(self.pattern)}}}, True))
            else:
                out.append(({"headers": {h: {"exact": ALWAYS}}}, True))
                out.append(({"headers": {h: {"exact": NEVER}}}, False))
        if self.cookie:
            out.append(({"cookies": {self.cookie: {"exact": ALWAYS}}}, True))
            out.append(({"cookies": {self.cookie: {"exact": NEVER}}}, False))
        return out

    def split(self) -> tuple[int, int]:
        """(main weight, canary weight) of the last step."""
        total = max(self.total, 100)
        canary = min(max(self.weight, 0), total)
        return total - canary, canary

    def canary_matches(self) -> list[Doc]:
        """With weight 0 (Flagger's A/B): the match items (OR) that reach the canary."""
        items: list[Doc] = []
        bare = bool(self.header) and not (self.value or self.pattern)
        for keys, to_canary in self.steps():
            if to_canary and "headers" in keys:
                items.append(keys)
        if self.cookie:
            cookie = {"cookies": {self.cookie: {"exact": ALWAYS}}}
            if bare and self.header:  # `never` in the header stops before the cookie
                h = self.header.lower()
                items.append({"headers": {h: {"absent": True}}, **cookie})
                items.append({"headers": {h: {"regex": not_equal(NEVER)}}, **cookie})
            else:
                items.append(cookie)
        return items
