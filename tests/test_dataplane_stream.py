"""Large bodies stream through a proxy subprocess with bounded memory (RSS from /proc)."""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import textwrap

import pytest
from aiohttp import web
from util_servers import start_upstream

SIZE = 200 * 1024 * 1024
CHUNK = 256 * 1024
MAX_GROWTH_KB = 100 * 1024

RUNNER = textwrap.dedent(
    """
    import asyncio, sys
    sys.path.insert(0, "tests")
    from util_servers import simple_config, start_proxy

    async def main():
        p = await start_proxy(simple_config({"v1": [sys.argv[1]]}, extra_route=
                                            "    max_body: 1000000000"))
        print(p.port, flush=True)
        await asyncio.Event().wait()

    asyncio.run(main())
    """
)


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


async def sink(request: web.Request) -> web.StreamResponse:
    if request.method == "POST":
        n = 0
        while chunk := await request.content.read(CHUNK):
            n += len(chunk)
        return web.json_response({"received": n})
    resp = web.StreamResponse(headers={"Content-Length": str(SIZE)})
    await resp.prepare(request)
    block = b"d" * CHUNK
    for _ in range(SIZE // CHUNK):
        await resp.write(block)
    await resp.write_eof()
    return resp


@pytest.fixture
async def proxy_process():
    up = await start_upstream(sink)
    proc = subprocess.Popen(
        [sys.executable, "-c", RUNNER, up.address],
        stdout=subprocess.PIPE,
        cwd=os.path.dirname(os.path.dirname(__file__)),
        env={**os.environ, "PYTHONPATH": "."},
    )
    try:
        line = await asyncio.wait_for(asyncio.to_thread(proc.stdout.readline), 20)
        yield proc.pid, int(line)
    finally:
        proc.kill()
        proc.wait(10)
        proc.stdout.close()
        await up.close()


async def _watch(pid: int, peak: list[int], stop: asyncio.Event) -> None:
    while not stop.is_set():
        peak[0] = max(peak[0], rss_kb(pid))
        await asyncio.sleep(0.05)


async def _upload(port: int) -> bytes:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(
        b"POST /up HTTP/1.1\r\nHost: a\r\nConnection: close\r\nContent-Length: %d\r\n\r\n" % SIZE
    )
    block = b"u" * CHUNK
    for _ in range(SIZE // CHUNK):
        writer.write(block)
        await writer.drain()
    out = await reader.read()
    writer.close()
    return out


async def _download(port: int) -> int:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /down HTTP/1.1\r\nHost: a\r\nConnection: close\r\n\r\n")
    await reader.readuntil(b"\r\n\r\n")
    n = 0
    while chunk := await reader.read(CHUNK):
        n += len(chunk)
        await asyncio.sleep(0)  # a consumer slower than the producer
    writer.close()
    return n


@pytest.mark.slow
async def test_200mb_upload_and_download_keep_rss_bounded(proxy_process) -> None:
    pid, port = proxy_process
    base = rss_kb(pid)
    peak = [base]
    stop = asyncio.Event()
    watcher = asyncio.create_task(_watch(pid, peak, stop))
    try:
        up = await asyncio.wait_for(_upload(port), 120)
        assert b'"received": %d' % SIZE in up
        assert await asyncio.wait_for(_download(port), 120) == SIZE
    finally:
        stop.set()
        await watcher
    print(f"proxy RSS base {base} kB, peak {peak[0]} kB")
    assert peak[0] - base < MAX_GROWTH_KB, (base, peak[0])
