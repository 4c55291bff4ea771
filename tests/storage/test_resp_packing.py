"""The Redis storage packs commands in one Cython call (`_wire.resp_command`): byte for byte
what redis-py's own `pack_command` sends, or None (redis-py packs it) for anything else."""

from __future__ import annotations

import redis.asyncio as aioredis
from hypothesis import given
from hypothesis import strategies as st

from quota_server import _wire
from quota_server.storage.redis import _Connection, _SSLConnection

INT64 = st.integers(min_value=-(2**63), max_value=2**63 - 1)
ARG = st.one_of(st.binary(max_size=300), st.text(max_size=40), INT64)


def redis_py(*args) -> bytes:
    return b"".join(aioredis.Connection().pack_command(*args))


@given(name=st.sampled_from(["EVALSHA", "XADD", "GET", "HSET"]), args=st.lists(ARG, max_size=60))
def test_same_bytes_as_redis_py(name, args):
    assert _wire.resp_command((name, *args)) == redis_py(name, *args)


def test_edge_values():
    for args in [("GET", ""), ("SET", "k", b""), ("X", -(2**63)), ("X", 2**63 - 1), ("X", 0),
                 ("X", "été", b"\x00\r\n"), ("X", *range(-12, 12))]:
        assert _wire.resp_command(args) == redis_py(*args)


def test_other_arguments_are_left_to_redis_py():
    for args in [("X", True), ("X", 1.5), ("X", 2**63), ("X", None), ("X", memoryview(b"a")),
                 ("X", b"x" * ((1 << 20) + 1))]:
        assert _wire.resp_command(args) is None


def test_the_connections_use_it_and_fall_back():
    for cls in (_Connection, _SSLConnection):
        conn = cls()
        assert conn.pack_command("EVALSHA", "sha", 1, "k", b"v") == [_wire.resp_command(("EVALSHA", "sha", 1, "k", b"v"))]
        # a name with a space is split by redis-py; a float is encoded by it
        assert b"".join(conn.pack_command("SCRIPT LOAD", "return 1")) == redis_py("SCRIPT LOAD", "return 1")
        assert b"".join(conn.pack_command("SET", "k", 1.5)) == redis_py("SET", "k", 1.5)


def test_a_command_in_pieces_is_the_command_in_one_go():
    """`array_len` gives the first piece the whole command's count and 0 leaves the header off
    the others, so the pieces joined are the command packed at once (the C writer's jobs)."""
    args = ("EVALSHA", "sha", 2, "k1", "k2", 7, b"blob", -1, "last")
    whole = _wire.resp_command(args)
    assert _wire.resp_command(args[:4], len(args)) + _wire.resp_command(args[4:7], 0) \
        + _wire.resp_command(args[7:], 0) == whole == redis_py(*args)
