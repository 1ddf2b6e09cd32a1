"""Shared test fixtures. Functional tests start real servers on 127.0.0.1, port 0."""

from __future__ import annotations

from collections.abc import AsyncIterator

import pytest

from tests.util_servers import Upstream, start_upstream


@pytest.fixture
async def upstream() -> AsyncIterator[Upstream]:
    """An echoing aiohttp upstream (see `tests/util_servers.echo`), closed after the test."""
    up = await start_upstream()
    yield up
    await up.close()
