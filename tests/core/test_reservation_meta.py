"""`reservation_meta` is the meta of `reservation_view`, without building the view."""
from __future__ import annotations

import _fastledger

from .workload import ACCOUNTS, RIDS, batches, setup_ops

RETENTION_NS = 300 * 10**9


def test_reservation_meta_matches_the_view_throughout_a_workload() -> None:
    led = _fastledger.Ledger(retention_ns=RETENTION_NS)
    led.apply(setup_ops(), 10**15)
    seen_meta = set()
    for now, ops in batches(seed=7, n_batches=300):
        led.apply(ops, now)
        for a in ACCOUNTS + ["nobody"]:
            for r in RIDS + ["", "bad id with spaces", "x" * 1000]:
                view = led.reservation_view(a, r)
                assert led.reservation_meta(a, r) == (None if view is None else view["meta"])
                if view is not None:
                    seen_meta.add(view["meta"])
    assert {b"", b"m", b"labels=x"} <= seen_meta  # the workload reached holds of every kind
