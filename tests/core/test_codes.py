"""The stable numbers compiled into the core are exactly those of codes.py."""

from __future__ import annotations

import _fastledger
from _fastledger import _ledger, codes


def test_compiled_constants_equal_codes_py():
    """Every constant the .pyx duplicates has the value codes.py gives it (persisted format)."""
    assert _ledger.CODES, "the core exports its constants"
    for name, value in _ledger.CODES.items():
        assert getattr(codes, name) == value, name


def test_every_status_decision_and_op_code_is_compiled():
    """No status, decision or op code of codes.py is missing from the core."""
    wanted = [
        name for name in dir(codes)
        if name.isupper() and isinstance(getattr(codes, name), int)
        and (name in codes.STATUS_NAMES.values() or name.startswith(("DECISION_", "OP_", "RES_", "EXPIRE_")))
    ]
    missing = [name for name in wanted if name not in _ledger.CODES]
    assert missing == []


def test_limits_table_is_compiled():
    for name, value in codes.LIMITS.items():
        assert _ledger.CODES[name] == value, name


def test_package_exports():
    assert _fastledger.Ledger is _ledger.Ledger
    assert issubclass(_fastledger.LedgerCorrupt, AssertionError)
    assert _fastledger.OK == 0 and _fastledger.OVERFLOW == 51
    assert isinstance(_fastledger.DEBUG, bool)
