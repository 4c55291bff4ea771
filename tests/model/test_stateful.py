"""The Cython core and the plain-Python reference model, driven side by side.

Goal: every op result, every view and every invariant of `_fastledger.Ledger` equals the
reference model's, for random interleavings of grants, reserves, extends, commits, releases,
charges, checks, bucket takes, clock jumps, expiry sweeps and snapshot/restore/replay. The clock
is an integer the test moves; nothing sleeps.

Step budget: `QUOTA_MODEL_EXAMPLES` x `QUOTA_MODEL_STEPS` (default 250 x 60 = up to 15,000 steps; the
last test checks that at least 10,000 ran).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

import _fastledger
from _fastledger import codes as C

from .reference import Ledger as ModelLedger

SECOND = 1_000_000_000
RETENTION_NS = 3600 * SECOND

ACCOUNTS = ["acct-a", "acct-b", "acct-c"]
RES_IDS = [f"r{i}" for i in range(8)]
CHARGE_IDS = [f"c{i}" for i in range(6)]
GRANT_IDS = [f"g{i}" for i in range(8)]
BAD_IDS = ["", "x" * 129, "has space", "ümlaut"]

some_accounts = st.one_of(
    st.sampled_from(ACCOUNTS), st.sampled_from(ACCOUNTS), st.sampled_from(["nobody"] + BAD_IDS)
)
STEPS_RUN = [0]
amounts = st.one_of(
    st.integers(0, 50),
    st.integers(0, 400),
    st.sampled_from([1, C.AMOUNT_MAX, C.AMOUNT_MAX + 1, -1]),
)
fps = st.integers(1, 3)
ttls = st.one_of(st.sampled_from([SECOND, 10 * SECOND, 90 * SECOND]), st.sampled_from([0, -5, C.TTL_NS_MAX + 1]))
bucket_specs = st.sampled_from([
    ("rpm", 3, 3, 60 * SECOND),
    ("rpm", 5, 1, 10 * SECOND),
    ("tpm", 100, 50, 30 * SECOND),
])


@st.composite
def bucket_lists(draw):
    chosen = draw(st.lists(bucket_specs, max_size=2, unique_by=lambda s: s[0]))
    return tuple(spec + (draw(st.integers(0, 120)),) for spec in chosen)


def upsert_ops():
    return st.tuples(
        st.just(C.OP_UPSERT),
        some_accounts,
        st.sampled_from([None, "free", "pro"]),
        st.sampled_from([0, 0, 1, 2]),
        st.sampled_from([None, 0, 100, 1000]),
        st.sampled_from([None, 0, 2, 3]),
        st.sampled_from([None, False, False, True]),
    )


def grant_ops():
    return st.tuples(
        st.just(C.OP_GRANT), some_accounts, st.sampled_from(GRANT_IDS), fps,
        st.one_of(st.integers(1, 300), st.sampled_from([0, C.AMOUNT_MAX])),
        st.sampled_from([1, 2, 3, 4]), st.sampled_from([0, 0, 1, -1]),
        st.sampled_from([0, 0, 5 * SECOND, 60 * SECOND, 200 * SECOND]),
    )


def reserve_ops():
    return st.tuples(
        st.just(C.OP_RESERVE), some_accounts, st.sampled_from(RES_IDS), fps, amounts,
        st.booleans(), st.sampled_from([0, 1, 10]), ttls, st.sampled_from([1, 1, 2]),
        st.sampled_from([True, True, True, False]), bucket_lists(), st.sampled_from([b"", b"meta"]),
    )


def commit_ops():
    return st.tuples(
        st.just(C.OP_COMMIT), some_accounts, st.sampled_from(RES_IDS), fps,
        st.one_of(st.just(-1), amounts),
        st.sampled_from([(), (("rpm", 0),), (("tpm", 150),), (("tpm", 10),)]),
    )


def release_ops():
    return st.tuples(st.just(C.OP_RELEASE), some_accounts, st.sampled_from(RES_IDS))


def extend_ops():
    return st.tuples(
        st.just(C.OP_EXTEND), some_accounts, st.sampled_from(RES_IDS),
        st.one_of(st.just(0), amounts), st.sampled_from([0, SECOND, 30 * SECOND, -1]),
    )


def charge_ops():
    return st.tuples(
        st.just(C.OP_CHARGE), some_accounts, st.sampled_from(CHARGE_IDS), fps, amounts,
        st.sampled_from([True, True, False]), bucket_lists(),
    )


def check_ops():
    return st.tuples(
        st.just(C.OP_CHECK), some_accounts, amounts, st.sampled_from([True, False]), bucket_lists(),
    )


def bucket_ops():
    return st.tuples(st.just(C.OP_BUCKET), some_accounts, bucket_specs, st.integers(-200, 200))


def expire_ops():
    return st.tuples(st.just(C.OP_EXPIRE), st.sampled_from([0, 1, 3, 1000]))


def malformed_ops():
    return st.sampled_from([
        (),
        (99, "acct-a"),
        (C.OP_RESERVE, "acct-a"),
        (C.OP_GRANT, "acct-a", "g0", 1, "ten", 1, 0, 0),
        (C.OP_RESERVE, "acct-a", "r0", 1, 5, False, 0, SECOND, 1, True, ("bad",), b""),
        (C.OP_COMMIT, "acct-a", "r0", 1, 5, "x"),
        (C.OP_UPSERT, "acct-a", None, 7, None, None, None),
        (C.OP_GRANT, "acct-a", "g0", 1, 5, 9, 0, 0),
        (C.OP_RESERVE, "acct-a", "r0", 1, 5, False, 0, SECOND, 3, True, (), b""),
        (C.OP_RESERVE, "acct-a", "r0", 1, 5, False, 0, SECOND, 1, True, (), b"x" * 2000),
    ])


any_op = st.one_of(
    upsert_ops(), grant_ops(), reserve_ops(), reserve_ops(), commit_ops(), commit_ops(),
    release_ops(), extend_ops(), charge_ops(), check_ops(), bucket_ops(), expire_ops(),
    malformed_ops(),
)


class CoreMatchesModel(RuleBasedStateMachine):
    """Drive `_fastledger.Ledger` and the reference model with the same ops and clock."""

    def __init__(self) -> None:
        super().__init__()
        self.now = 0
        self.model = ModelLedger(retention_ns=RETENTION_NS)
        self.core = _fastledger.Ledger(retention_ns=RETENTION_NS)
        self.snapshot = self.core.snapshot()
        self.records: list[bytes] = []
        # Every account exists from the start so most ops hit something.
        self._apply([(C.OP_UPSERT, acct, "free", 0, None, None, None) for acct in ACCOUNTS])

    def _apply(self, ops: list[tuple]) -> None:
        expected = self.model.apply(ops, self.now)
        got = self.core.apply(ops, self.now)
        assert got == expected, f"ops={ops!r} now={self.now}"
        assert self.core.replayed_indices() == self.model.replayed_indices()
        assert self.core.take_expired() == self.model.take_expired()
        record = self.core.take_journal()
        if record:
            self.records.append(record)

    @rule(op=any_op)
    def one_op(self, op):
        self._apply([op])

    @rule(ops=st.lists(any_op, min_size=2, max_size=8))
    def batch(self, ops):
        self._apply(ops)

    @rule(dt=st.sampled_from([1, SECOND, 5 * SECOND, 31 * SECOND, 61 * SECOND, 3601 * SECOND]))
    def advance_clock(self, dt):
        self.now += dt

    @rule()
    def take_snapshot(self):
        self.snapshot = self.core.snapshot()
        self.records = []

    @precondition(lambda self: self.snapshot is not None)
    @rule()
    def restore_and_replay(self):
        """A ledger rebuilt from the last snapshot plus the records since is the same ledger."""
        restored = _fastledger.Ledger.from_snapshot(self.snapshot, retention_ns=RETENTION_NS)
        for record in self.records:
            restored.replay(record)
        self._assert_same(self.core, restored)
        self.core = restored

    def _views(self, ledger) -> dict:
        views = {}
        for acct in ACCOUNTS:
            views[acct] = (
                ledger.account_view(acct, self.now),
                ledger.lots_view(acct, self.now),
                ledger.buckets_view(acct, self.now),
                [ledger.reservation_view(acct, rid) for rid in RES_IDS],
                [ledger.grant_expired(acct, gid) for gid in GRANT_IDS],
                [ledger.grant_remaining(acct, gid) for gid in GRANT_IDS],
            )
        return views

    def _assert_same(self, left, right) -> None:
        assert self._views(left) == self._views(right)

    @invariant()
    def views_match_and_invariants_hold(self):
        STEPS_RUN[0] += 1  # invariants run after every step (and once at the start)
        self.model.check_invariants()
        self.core.check_invariants()
        assert self._views(self.core) == self._views(self.model)
        # Views may expire due lots (time passing); keep the record stream complete.
        record = self.core.take_journal()
        if record:
            self.records.append(record)


CoreMatchesModel.TestCase.settings = settings(
    max_examples=int(os.environ.get("QUOTA_MODEL_EXAMPLES", "250")),
    stateful_step_count=int(os.environ.get("QUOTA_MODEL_STEPS", "60")),
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
)
TestCoreMatchesModel = CoreMatchesModel.TestCase


def test_step_budget_was_run():
    """The stateful test above really ran the promised number of op steps (>= 10,000 by default)."""
    budget = int(os.environ.get("QUOTA_MODEL_MIN_STEPS", "10000"))
    assert STEPS_RUN[0] >= budget, f"only {STEPS_RUN[0]} op steps ran"
