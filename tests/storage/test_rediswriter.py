"""The C writer thread of quota_server/_rediswriter.pyx, on its own: the bytes it sends, how it
frames replies, and what it does on timeouts and broken peers. The peer is the other end of a
socketpair that the test reads and answers (storage/test_storage_redis.py runs the thread
against a real redis-server)."""
from __future__ import annotations

import os
import select
import socket
import threading

import pytest
import zstandard

from quota_server import _wire

_rediswriter = pytest.importorskip("quota_server._rediswriter")
if not _rediswriter.available():  # pragma: no cover - libzstd.so.1 is on every supported host
    pytest.skip("libzstd.so.1 cannot be loaded", allow_module_level=True)

PACK_MIN = 64 * 1024


def wait_done(writer, timeout_s: float = 5.0):
    """The job the writer ran, once its eventfd says so."""
    ready, _, _ = select.select([writer.fileno()], [], [], timeout_s)
    assert ready, "the job did not finish"
    os.read(writer.fileno(), 8)
    job = writer.collect()
    assert job is not None
    return job


def read_command(peer: socket.socket, size: int) -> bytes:
    data = b""
    while len(data) < size:
        chunk = peer.recv(size - len(data))
        assert chunk
        data += chunk
    return data


def bulk_args(data: bytes) -> list[bytes]:
    """The arguments of one RESP array of bulk strings."""
    assert data.startswith(b"*")
    head, _, rest = data.partition(b"\r\n")
    args = []
    for _ in range(int(head[1:])):
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line[1:])
        args.append(rest[:size])
        assert rest[size:size + 2] == b"\r\n"
        rest = rest[size + 2:]
    assert rest == b""
    return args


def _new_writer_and_peer():
    """A writer whose socket's other end (the peer) the test reads and answers."""
    writer = _rediswriter.Writer()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    writer.adopt(ours.detach())
    return writer, peer


@pytest.fixture
def writer_and_peer():
    writer, peer = _new_writer_and_peer()
    try:
        yield writer, peer
    finally:
        writer.close()
        peer.close()


@pytest.mark.parametrize("data, length", [
    (b"+OK\r\n", 5),
    (b"-ERR no\r\n", 9),
    (b":42\r\n", 5),
    (b"$3\r\nabc\r\n", 9),
    (b"$-1\r\n", 5),
    (b"*-1\r\n", 5),
    (b"*0\r\n", 4),
    (b"*1\r\n$2\r\nOK\r\n", 12),
    (b"*2\r\n*1\r\n+a\r\n$3\r\nabc\r\n", 21),
    (b"*2\r\n$-1\r\n:5\r\n", 13),
    (b"*1\r\n$2\r\nOK\r\nmore", 12),  # the value's length; what follows is not its
    (b"", 0),
    (b"*1\r\n$2\r\nOK", 0),
    (b"$10\r\nabc", 0),
    (b"*2\r\n+a\r\n", 0),
    (b"+OK\r", 0),
    (b"?x\r\n", -1),
    (b"$3\r\nabcd\r\n", -1),
    (b"$x\r\n", -1),
    (b"*-2\r\n", -1),
    (b"+OK\rX", -1),
])
def test_replies_are_framed_as_one_resp_value(data: bytes, length: int) -> None:
    assert _rediswriter.frame_length(data) == length


def test_a_job_sends_its_command_with_large_blobs_compressed_and_returns_the_reply(writer_and_peer) -> None:
    """Plain pieces go as they are; a blob from pack_min on that compresses goes as a zstd frame
    (with its size: any zstd decoder reads it) followed by the codec argument; a smaller blob,
    or one that does not shrink, goes as it is followed by 0. The reply comes back whole, even
    when it arrives in parts."""
    writer, peer = writer_and_peer
    big = b"journal record " * 10_000
    small = b"small blob"
    noise = os.urandom(PACK_MIN + 10)
    pieces = [_wire.resp_command(("EVALSHA", "sha", 7), 10), (big,), _wire.resp_command(("x",), 0), (small,),
              (noise,)]
    job = _rediswriter.AppendJob(pieces, PACK_MIN, 1, 2, 5_000)
    writer.submit(job)
    assert writer.busy()
    with pytest.raises(RuntimeError):
        writer.submit(_rediswriter.AppendJob([b"*0\r\n"], PACK_MIN, 1, 2, 5_000))
    peer.settimeout(5)
    sent = b""
    while True:
        sent += peer.recv(1 << 20)
        if _rediswriter.frame_length(sent) > 0:
            break
    assert _rediswriter.frame_length(sent) == len(sent)
    args = bulk_args(sent)
    assert args[:3] == [b"EVALSHA", b"sha", b"7"]
    assert args[4] == b"2" and zstandard.ZstdDecompressor().decompress(args[3]) == big and len(args[3]) < len(big) // 10
    assert args[5] == b"x"
    assert args[6:8] == [small, b"0"]
    assert args[8:10] == [noise, b"0"]
    peer.sendall(b"*1\r\n$2\r")
    assert writer.busy()
    peer.sendall(b"\nOK\r\n")
    done = wait_done(writer)
    assert done is job and not writer.busy()
    assert job.status == _rediswriter.OK and job.reply == b"*1\r\n$2\r\nOK\r\n" and job.sent == len(sent)
    assert writer.has_socket()


def test_a_reply_that_is_not_resp_closes_the_socket(writer_and_peer) -> None:
    writer, peer = writer_and_peer
    command = _wire.resp_command(("PING",))
    writer.submit(_rediswriter.AppendJob([command], PACK_MIN, 1, 2, 5_000))
    assert read_command(peer, len(command)) == command
    peer.sendall(b"HTTP/1.1 400 Bad Request\r\n")
    job = wait_done(writer)
    assert job.status == _rediswriter.BAD_REPLY and job.reply is None
    assert not writer.has_socket()
    assert peer.recv(10) == b""  # closed on the thread's side


def test_more_bytes_than_one_reply_close_the_socket(writer_and_peer) -> None:
    """A second value after the reply would be taken for the next command's: never read on."""
    writer, peer = writer_and_peer
    command = _wire.resp_command(("PING",))
    writer.submit(_rediswriter.AppendJob([command], PACK_MIN, 1, 2, 5_000))
    read_command(peer, len(command))
    peer.sendall(b"+PONG\r\n+PONG\r\n")
    job = wait_done(writer)
    assert job.status == _rediswriter.BAD_REPLY and not writer.has_socket()


def test_no_reply_in_time_is_a_timeout_and_closes_the_socket(writer_and_peer) -> None:
    writer, peer = writer_and_peer
    command = _wire.resp_command(("PING",))
    writer.submit(_rediswriter.AppendJob([command], PACK_MIN, 1, 2, 200))
    job = wait_done(writer)
    assert job.status == _rediswriter.TIMEOUT and not writer.has_socket()
    assert read_command(peer, len(command)) == command  # it had been sent


def test_a_peer_that_closes_is_reported_and_a_job_without_socket_sends_nothing(writer_and_peer) -> None:
    writer, peer = writer_and_peer
    command = _wire.resp_command(("PING",))
    writer.submit(_rediswriter.AppendJob([command], PACK_MIN, 1, 2, 5_000))
    read_command(peer, len(command))
    peer.close()
    job = wait_done(writer)
    assert job.status == _rediswriter.CLOSED and not writer.has_socket()
    writer.submit(_rediswriter.AppendJob([command], PACK_MIN, 1, 2, 5_000))
    assert wait_done(writer).status == _rediswriter.NO_SOCKET


def test_a_socket_is_adopted_only_between_jobs(writer_and_peer) -> None:
    writer, peer = writer_and_peer
    command = _wire.resp_command(("PING",))
    writer.submit(_rediswriter.AppendJob([command], PACK_MIN, 1, 2, 5_000))
    other, other_peer = socket.socketpair()
    try:
        with pytest.raises(RuntimeError):
            writer.adopt(other.fileno())
        assert writer.drop() is False
        read_command(peer, len(command))
        peer.sendall(b"+PONG\r\n")
        assert wait_done(writer).reply == b"+PONG\r\n"
        assert writer.drop() is True and not writer.has_socket()
    finally:
        other.close()
        other_peer.close()


def test_bad_jobs_are_refused() -> None:
    with pytest.raises(ValueError):
        _rediswriter.AppendJob([], PACK_MIN, 1, 2, 1_000)
    with pytest.raises(ValueError):
        _rediswriter.AppendJob([b"*0\r\n"], PACK_MIN, 1, 2, 0)
    with pytest.raises(TypeError):
        _rediswriter.AppendJob(["not bytes"], PACK_MIN, 1, 2, 1_000)
    writer = _rediswriter.Writer()
    writer.close()
    with pytest.raises(RuntimeError):
        writer.submit(_rediswriter.AppendJob([b"*0\r\n"], PACK_MIN, 1, 2, 1_000))


JT_SLICE_NS = 700_000  # _jobthread.h


def _thread_sched() -> dict[int, tuple[int, int | None]]:
    """(policy, se.slice in ns or None where the kernel does not show it) of each thread of
    this process."""
    out = {}
    for tid in os.listdir("/proc/self/task"):
        fields = {}
        try:
            with open(f"/proc/self/task/{tid}/sched") as f:
                for line in f:
                    name, sep, value = line.partition(":")
                    if sep:
                        fields[name.strip()] = value.strip()
        except OSError:  # pragma: no cover - a thread that ended meanwhile
            continue
        out[int(tid)] = (int(fields["policy"]), int(fields["se.slice"]) if "se.slice" in fields else None)
    return out


def _run_one_job(writer, peer) -> None:
    command = _wire.resp_command(("PING",))
    writer.submit(_rediswriter.AppendJob([command], PACK_MIN, 1, 2, 5_000))
    assert read_command(peer, len(command)) == command
    peer.sendall(b"+PONG\r\n")
    assert wait_done(writer).status == _rediswriter.OK


def _the_new_thread(writer, peer, before: set[int]) -> tuple[int, dict[int, tuple[int, int | None]]]:
    """Run one job (the thread has surely started then), check that its request for prompt
    wakeups was made, and return the one thread it added to those `before`, with every
    thread's (policy, slice)."""
    _run_one_job(writer, peer)
    assert writer.slice_error() == 0
    threads = _thread_sched()
    new = [tid for tid in threads if tid not in before]
    assert len(new) == 1
    return new[0], threads


def test_the_thread_asks_for_prompt_wakeups() -> None:
    """The writer thread sets a time slice of its own (_jobthread.h, jt_prompt_wakeups): the
    kernel accepts it, and where /proc shows slices, the one thread it adds has it and this one
    has not. (Other tests' writer threads may still be alive: only the new one is looked at.)"""
    before = set(_thread_sched())
    writer, peer = _new_writer_and_peer()
    try:
        tid, threads = _the_new_thread(writer, peer, before)
        if threads[tid][1] is None:
            pytest.skip("this kernel shows no se.slice in /proc (older than EEVDF)")
        assert threads[tid][1] == JT_SLICE_NS
        assert threads[threading.get_native_id()][1] != JT_SLICE_NS
    finally:
        writer.close()
        peer.close()


def test_the_thread_keeps_the_scheduling_policy_it_started_with() -> None:
    """A server started under SCHED_BATCH (`chrt -b`, say) keeps it in its writer thread,
    which sets only its slice."""
    before = set(_thread_sched())
    os.sched_setscheduler(0, os.SCHED_BATCH, os.sched_param(0))
    try:
        writer, peer = _new_writer_and_peer()  # its thread inherits this thread's policy
    finally:
        os.sched_setscheduler(0, os.SCHED_OTHER, os.sched_param(0))
    try:
        tid, threads = _the_new_thread(writer, peer, before)
        policy, slice_ns = threads[tid]
        assert policy == os.SCHED_BATCH
        assert slice_ns in (None, JT_SLICE_NS)
        assert threads[threading.get_native_id()][0] == os.SCHED_OTHER
    finally:
        writer.close()
        peer.close()
