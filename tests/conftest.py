"""Shared test fixtures. Functional tests start real servers on 127.0.0.1, port 0."""
