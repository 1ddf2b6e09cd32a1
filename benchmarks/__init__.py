"""Benchmarks: canaryproxy against nginx and HAProxy on the same machine, in one run."""
