"""Open N keep-alive client connections, send one GET on each, then hold them all idle.

`python -m benchmarks.idle_clients PORT N` prints `READY <ok> <failed>` once every
connection has had its answer, then holds them until killed.
"""

from __future__ import annotations

import asyncio
import resource
import sys

REQUEST = b"GET / HTTP/1.1\r\nHost: bench\r\nUser-Agent: idle-clients\r\n\r\n"


async def one(port: int, gate: asyncio.Semaphore, held: list[asyncio.StreamWriter]) -> bool:
    async with gate:  # bounded opening rate, so the listen backlog never overflows
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            writer.write(REQUEST)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":", 1)[1])
            await reader.readexactly(length)
        except (TimeoutError, OSError, asyncio.IncompleteReadError, ValueError):
            return False
    held.append(writer)
    return head.startswith(b"HTTP/1.1 200")


async def main(port: int, n: int) -> None:
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    held: list[asyncio.StreamWriter] = []
    gate = asyncio.Semaphore(256)
    results = await asyncio.gather(*(one(port, gate, held) for _ in range(n)))
    ok = sum(results)
    print(f"READY {ok} {n - ok}", flush=True)
    await asyncio.Event().wait()  # hold every connection until the parent stops us


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1]), int(sys.argv[2])))
