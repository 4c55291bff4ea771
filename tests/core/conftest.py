"""Fixtures of the core tests: a fresh ledger and a driver on a manual clock."""

from __future__ import annotations

import pytest

import _fastledger

from .helpers import RETENTION_NS, Driver, upsert


@pytest.fixture
def led():
    return _fastledger.Ledger(retention_ns=RETENTION_NS)


@pytest.fixture
def d(led):
    """A driver with account "a" on plan "free" (prepaid, no credit line)."""
    drv = Driver(led)
    assert drv(upsert("a")) == (0, True)
    return drv
