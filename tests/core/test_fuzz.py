"""Garbage in, statuses out: seeded random op tuples with junk in any field never crash the core
and get exactly the reference model's result."""

from __future__ import annotations

import random

import pytest

import _fastledger
from _fastledger import codes as C

from .test_differential import load_model
from .workload import random_op, setup_ops

JUNK = [None, True, False, -1, 0, 1, 2, 7, 2**31, 2**62, 2**63, -(2**63) - 1, 10**15, 10**15 + 1,
        1.5, "", "x", "acct-a", "r1", "bad id", "ü", b"", b"m", (), ("rpm",), ("rpm", 1, 1, 1, 1),
        (("rpm", 1, 1, 1, 1),), (("rpm", 0),), [], {}, object()]


def mutate(rng: random.Random, op: tuple) -> tuple:
    fields = list(op)
    for _ in range(rng.randrange(1, 3)):
        i = rng.randrange(len(fields))
        fields[i] = rng.choice(JUNK)
    if rng.random() < 0.1:
        fields = fields[: rng.randrange(len(fields) + 1)]
    elif rng.random() < 0.1:
        fields.append(rng.choice(JUNK))
    return tuple(fields)


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_junk_fields_match_the_model(seed):
    rng = random.Random(seed)
    model = load_model().Ledger(retention_ns=600 * 10**9)
    core = _fastledger.Ledger(retention_ns=600 * 10**9)
    now = 10**15
    assert core.apply(setup_ops(), now) == model.apply(setup_ops(), now)
    for _ in range(300):
        now += rng.choice([0, 10**9, 61 * 10**9])
        ops = [mutate(rng, random_op(rng)) if rng.random() < 0.6 else random_op(rng)
               for _ in range(rng.randrange(1, 10))]
        got = core.apply(ops, now)
        assert got == model.apply(ops, now), ops
        assert core.replayed_indices() == model.replayed_indices(), ops
        assert all(isinstance(r, _fastledger.Result) and r and isinstance(r[0], int) for r in got)
        core.take_journal()
    core.check_invariants()
    model.check_invariants()


def test_unhashable_or_odd_values_never_crash(led):
    ops = [(C.OP_CHECK, [], 1, True, ()), (C.OP_GRANT, {}, "g", 1, 1, 1, 0, 0),
           (C.OP_RESERVE, "a", "r", 1, 1, False, 0, 1, 1, True, ((None,) * 5,), b""),
           (C.OP_COMMIT, "a", "r", 1, 1, ((1, 2),)), (C.OP_BUCKET, "a", (1, 2, 3, 4), 1)]
    assert led.apply(ops, 0) == [(C.INVALID_ID,), (C.INVALID_ID,), (C.INVALID_ARGUMENT,),
                                 (C.INVALID_ARGUMENT,), (C.INVALID_ARGUMENT,)]
