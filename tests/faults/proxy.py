"""A small TCP proxy on loopback that the test controls, between quota-server and redis-server.

Modes (for every connection, switched at any time):

- ``pass``: bytes go both ways unchanged;
- ``blackhole``: bytes in both directions are swallowed and nothing is closed (a partition:
  the client sees a timeout, Redis sees nothing);
- ``mute``: requests reach Redis but replies are swallowed (the write is applied, its
  acknowledgement lost: the ambiguous case a retry must resolve without applying it twice).

One-shot faults, armed and then resolved when they have happened:

- ``cut_request(match, keep)``: the next client-to-server chunk containing ``match`` is forwarded
  only up to ``keep`` bytes (drop after N bytes), then the connection is reset on both sides;
- ``lose_reply(match)``: the next chunk containing ``match`` is forwarded whole, its reply
  swallowed, then the connection is reset (applied, but the client never learns it).
"""
from __future__ import annotations

import asyncio
import contextlib
import dataclasses
from collections.abc import Callable

PASS = "pass"
BLACKHOLE = "blackhole"
MUTE = "mute"
READ_SIZE = 65536


@dataclasses.dataclass
class Cut:
    """A one-shot fault that happened: how big the chunk was and how much of it went through."""

    kind: str
    chunk_len: int
    forwarded: int
    chunk: bytes = b""


@dataclasses.dataclass
class _Armed:
    kind: str
    match: bytes
    keep: Callable[[int], int] | None
    done: asyncio.Future


class TcpProxy:
    """Listens on 127.0.0.1:<port> and forwards every connection to 127.0.0.1:<upstream_port>."""

    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.mode = PASS
        self.port = 0
        self.connections = 0
        self.cuts: list[Cut] = []
        self._armed: _Armed | None = None
        self._server: asyncio.AbstractServer | None = None
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()

    async def start(self) -> TcpProxy:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    async def close(self) -> None:
        if self._server is not None:
            self._server.close()
        for writer in list(self._writers):
            writer.transport.abort()
        for task in list(self._tasks):
            task.cancel()
        for task in list(self._tasks):
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task
        if self._server is not None:
            with contextlib.suppress(Exception):
                await self._server.wait_closed()

    def cut_request(self, match: bytes, keep: Callable[[int], int]) -> asyncio.Future:
        """Arm: forward only ``keep(len(chunk))`` bytes of the next matching chunk, then reset."""
        return self._arm("cut_request", match, keep)

    def lose_reply(self, match: bytes) -> asyncio.Future:
        """Arm: forward the next matching chunk, swallow its reply, then reset."""
        return self._arm("lose_reply", match, None)

    def _arm(self, kind: str, match: bytes, keep: Callable[[int], int] | None) -> asyncio.Future:
        assert self._armed is None, "one fault at a time"
        self._armed = _Armed(kind, match, keep, asyncio.get_running_loop().create_future())
        return self._armed.done

    async def _handle(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_writer.transport.abort()
            return
        self.connections += 1
        self._writers |= {client_writer, up_writer}
        conn = _Connection(self, client_writer, up_writer)
        tasks = [
            asyncio.ensure_future(conn.requests(client_reader)),
            asyncio.ensure_future(conn.replies(up_reader)),
        ]
        self._tasks.update(tasks)
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            conn.reset()
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, Exception):
                    await task
            self._tasks.difference_update(tasks)
            self._writers -= {client_writer, up_writer}


class _Connection:
    """One proxied connection: a request pump and a reply pump."""

    def __init__(self, proxy: TcpProxy, client_writer: asyncio.StreamWriter, up_writer: asyncio.StreamWriter):
        self.proxy = proxy
        self.client_writer = client_writer
        self.up_writer = up_writer
        self.swallow_reply: _Armed | None = None  # set by lose_reply
        self.swallowed = b""

    def reset(self) -> None:
        """Close both sides at once with RST (abort), as a broken network would."""
        self.client_writer.transport.abort()
        self.up_writer.transport.abort()

    async def requests(self, reader: asyncio.StreamReader) -> None:
        proxy = self.proxy
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            if proxy.mode == BLACKHOLE:
                continue
            armed = proxy._armed
            if armed is not None and armed.match in data:
                proxy._armed = None
                if armed.kind == "cut_request":
                    keep = armed.keep(len(data))
                    assert 0 <= keep < len(data)
                    self.up_writer.write(data[:keep])
                    await self.up_writer.drain()
                    # Let the partial command reach Redis before the reset, so Redis really
                    # holds half a command when the connection dies.
                    await asyncio.sleep(0.01)
                    cut = Cut(armed.kind, len(data), keep, data)
                    proxy.cuts.append(cut)
                    armed.done.set_result(cut)
                    return
                self.swallow_reply = armed  # the reply pump drops the reply, then resets
                self.swallowed = data
            self.up_writer.write(data)
            await self.up_writer.drain()

    async def replies(self, reader: asyncio.StreamReader) -> None:
        while True:
            data = await reader.read(READ_SIZE)
            if not data:
                return
            armed = self.swallow_reply
            if armed is not None:
                cut = Cut(armed.kind, len(self.swallowed), len(self.swallowed), self.swallowed)
                self.proxy.cuts.append(cut)
                armed.done.set_result(cut)
                return  # the handler resets both sides: the reply is lost
            if self.proxy.mode in (BLACKHOLE, MUTE):
                continue
            self.client_writer.write(data)
            await self.client_writer.drain()


def parse_command(data: bytes) -> list[bytes] | None:
    """The arguments of the RESP command at the start of ``data``, or None if it is incomplete."""
    if not data.startswith(b"*"):
        return None
    end = data.find(b"\r\n")
    count, pos = int(data[1:end]), end + 2
    args = []
    for _ in range(count):
        end = data.find(b"\r\n", pos)
        if end < 0 or data[pos:pos + 1] != b"$":
            return None
        size = int(data[pos + 1:end])
        start = end + 2
        if start + size + 2 > len(data):
            return None
        args.append(data[start:start + size])
        pos = start + size + 2
    return args
