"""Explain a routing decision: which route matched, why, and how the subset is picked."""
