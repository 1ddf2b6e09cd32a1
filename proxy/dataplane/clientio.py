"""What an exchange uses of its client connection, as a native base class.

`ClientConnection` (dataplane.server) is a `ClientIO`: its writes (corked or not) and its read
blocking. The base sits below the exchange modules, so an exchange names it without
importing the server module (no import circle), and the compiled build calls its methods
directly instead of by name.
"""

from __future__ import annotations

from typing import TypeVar

from proxy.dataplane.listening import Listening
from proxy.dataplane.timers import ClientTimers
from proxy.dataplane.types import TimedExchange

E = TypeVar("E", bound=TimedExchange)


class ClientIO(ClientTimers[E]):
    """A client connection's writes (corked or not) and read blocking; the state lives on
    the connection (set by ClientConnection.__init__)."""

    listening: Listening
    requests: int
    write_paused: bool
    corked: list[bytes] | None

    def finished(self, ex: E) -> None:
        """`ex` wrote its whole response (or gave up) (ClientConnection)."""
        raise NotImplementedError

    def write(self, data: bytes) -> None:
        if self.corked is not None:
            self.corked.append(data)
        elif not self.closed:
            self.transport.write(data)

    def writelines(self, parts: list[bytes]) -> None:
        if self.corked is not None:
            self.corked.extend(parts)
        elif not self.closed:
            self.transport.writelines(parts)

    def cork(self) -> None:
        """Collect writes until `uncork`: one upstream read becomes one send to the client."""
        if self.corked is None:
            self.corked = []

    def uncork(self) -> None:
        out, self.corked = self.corked, None
        if out and not self.closed:
            self.transport.write(out[0] if len(out) == 1 else b"".join(out))

    def abort(self) -> None:
        self.uncork()  # what was received before the failure still reaches the client
        self.closing = True
        self.closed = True
        if self.transport is not None:
            self.transport.abort()  # also ends a lingering close

    def block_read(self, bit: int) -> None:
        if not self.blocks and not self.closed:
            self.transport.pause_reading()
        self.blocks |= bit

    def unblock_read(self, bit: int) -> None:
        if self.blocks & bit:
            self.blocks &= ~bit
            if not self.blocks and not self.closed and not self.closing:
                self.transport.resume_reading()

    def _stop_reading(self) -> None:
        self.closing = True
        if not self.closed:
            self.transport.pause_reading()

    def local_authority(self) -> str:
        """host:port this connection was accepted on (a redirect's authority without Host)."""
        name = self.transport.get_extra_info("sockname") if self.transport else None
        host = str(name[0]) if name else "localhost"
        return f"[{host}]:{self.listening.port}" if ":" in host else f"{host}:{self.listening.port}"
