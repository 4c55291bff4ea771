"""Taking a snapshot of the core without stopping the event loop.

`Ledger.snapshot()` serializes the whole state; at 1,000,000 accounts that is 1 to 1.5 s of CPU
(docs/performance.md), during which an event loop that called it answers nobody. So, where the
platform has `fork()`, the snapshot is taken in a child process: the fork is a copy-on-write
image of the ledger at that instant (tens of milliseconds for a large process: page tables
only), the child serializes it into an anonymous memory file (`memfd`; a temporary file where
there is none) and exits, and the parent reads the result on a worker thread once the child
has exited. What the child does is only the core's own C code, a write into a file it made,
and `os._exit`: no gRPC, no storage connection, no event loop, no lock another thread could
have held at the fork (the forking thread holds the GIL; glibc's malloc is fork-safe).

The bytes are the same as `Ledger.snapshot()` in the parent at that instant (tests check it).
Anything that goes wrong in the child (it is killed, it cannot allocate) comes back as
SnapshotFailed; the engine then tries again later, as after a failed snapshot write.
"""

from __future__ import annotations

import asyncio
import os
import signal
import tempfile
from typing import Any

import quota_server

CAN_FORK = hasattr(os, "fork") and hasattr(os, "waitpid")
READ_MAX = 1 << 30  # one read() returns at most about 2 GiB on Linux


def fork_allowed() -> bool:
    """False where forking this process is not safe: no fork(), or gRPC's own fork handlers
    switched on (GRPC_ENABLE_FORK_SUPPORT set to a true value, or left unset while gRPC was
    imported before this package: grpc.aio does not support them, and they crash the child;
    see quota_server/__init__.py)."""
    return CAN_FORK and quota_server.GRPC_FORK_HANDLERS_OFF


class SnapshotFailed(Exception):
    """The child could not produce the snapshot."""


class ForkedSnapshot:
    """A snapshot being serialized by a child process; `await result()` gives its bytes."""

    __slots__ = ("pid", "fd")

    def __init__(self, pid: int, fd: int) -> None:
        self.pid = pid
        self.fd = fd

    async def result(self) -> bytes:
        try:
            return await asyncio.to_thread(_collect, self.pid, self.fd)
        finally:
            os.close(self.fd)


def fork_snapshot(ledger: Any) -> ForkedSnapshot:
    """Start serializing `ledger` (as it is now) in a child process. Raises OSError if the
    process cannot fork (the caller then takes the snapshot itself)."""
    fd = _anonymous_file()
    try:
        pid = os.fork()
    except BaseException:
        os.close(fd)
        raise
    if pid == 0:  # the child: never returns
        code = 1
        try:
            signal.set_wakeup_fd(-1)  # the parent's event loop owns that pipe
            view = memoryview(ledger.snapshot())
            while view:
                view = view[os.write(fd, view):]
            code = 0
        finally:
            os._exit(code)
    return ForkedSnapshot(pid, fd)


def _anonymous_file() -> int:
    if hasattr(os, "memfd_create"):
        return os.memfd_create("quota-snapshot", os.MFD_CLOEXEC)
    fd, path = tempfile.mkstemp(prefix="quota-snapshot-")
    os.unlink(path)
    return fd


def _collect(pid: int, fd: int) -> bytes:
    """Wait for the child (a worker thread's job), then read what it wrote."""
    _, status = os.waitpid(pid, 0)
    if not (os.WIFEXITED(status) and os.WEXITSTATUS(status) == 0):
        raise SnapshotFailed(f"snapshot child {pid} ended with wait status {status}")
    size = os.fstat(fd).st_size
    if not size:
        raise SnapshotFailed(f"snapshot child {pid} wrote nothing")
    # os.pread copies without the GIL (an mmap slice would hold it for the whole copy, and
    # stall the event loop that long); one read() gives at most READ_MAX bytes.
    parts = []
    offset = 0
    while offset < size:
        part = os.pread(fd, min(size - offset, READ_MAX), offset)
        if not part:
            raise SnapshotFailed(f"snapshot child {pid} wrote {size} bytes, read back {offset}")
        parts.append(part)
        offset += len(part)
    return parts[0] if len(parts) == 1 else b"".join(parts)
