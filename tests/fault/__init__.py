"""Fault suite: hostile input, failing upstreams, overload (all marked slow)."""
