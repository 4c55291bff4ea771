"""Usage rows grouped and packed per flush (storage.base): the format both durable backends use."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from quota_server.storage import StorageError, UsageRow
from quota_server.storage.base import group_usage, pack_payloads, unpack_payloads


@given(st.lists(st.binary(max_size=40), min_size=1, max_size=20))
def test_pack_then_unpack_gives_the_payloads_back(payloads: list[bytes]) -> None:
    assert unpack_payloads(pack_payloads(payloads), len(payloads)) == payloads


def test_a_single_payload_is_stored_as_itself() -> None:
    assert pack_payloads([b"{\"a\":1}"]) == b"{\"a\":1}"


@pytest.mark.parametrize("blob, n", [
    ((5).to_bytes(4, "little") + b"abc", 2),             # length runs past the end
    ((1).to_bytes(4, "little") + b"a" + b"xx", 1 + 1),    # second header truncated
    ((1).to_bytes(4, "little") + b"a" + (0).to_bytes(4, "little") + b"tail", 2),  # bytes left over
])
def test_a_damaged_chunk_is_an_error(blob: bytes, n: int) -> None:
    with pytest.raises(StorageError, match="damaged usage chunk"):
        unpack_payloads(blob, n)


def test_grouping_keeps_each_accounts_rows_in_order_per_timestamp() -> None:
    rows = [UsageRow("a", 5, b"1"), UsageRow("b", 5, b"2"), UsageRow("a", 5, b"3"), UsageRow("a", 3, b"4")]
    assert group_usage(rows) == [("a", 5, 2, pack_payloads([b"1", b"3"])), ("b", 5, 1, b"2"), ("a", 3, 1, b"4")]
