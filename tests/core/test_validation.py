"""Malformed input is a status, never a crash; only an oversized batch or a bad clock raises."""

from __future__ import annotations

import pytest

from _fastledger import codes as C

from .helpers import SECOND, bucket, charge, check, commit, expire, extend, grant, release, reserve, upsert

GOOD_128 = "a" * 128
BAD_IDS = ["", "a" * 129, "has space", "ümlaut", "tab\t", "semi;colon", 7, None, b"bytes", ("a",)]


@pytest.mark.parametrize("aid", BAD_IDS)
def test_bad_account_ids(d, aid):
    for op in (upsert(aid), grant(aid), reserve(aid), commit(aid), release(aid), extend(aid),
               charge(aid), check(aid), bucket(aid)):
        assert d(op) == (C.INVALID_ID,), op


@pytest.mark.parametrize("rid", BAD_IDS)
def test_bad_record_ids(d, rid):
    for op in (grant("a", rid), reserve("a", rid), commit("a", rid), release("a", rid),
               extend("a", rid), charge("a", rid)):
        assert d(op) == (C.INVALID_ID,), op


def test_id_length_boundary(d):
    """128 characters is an id, 129 is not; every allowed punctuation character is accepted."""
    assert d(upsert(GOOD_128)) == (C.OK, True)
    assert d(upsert("b" * 129)) == (C.INVALID_ID,)
    odd = "A-z.0_9:@/x"
    assert d(upsert(odd)) == (C.OK, True)
    assert d(grant(odd, GOOD_128, 5)) == (C.OK, 5)
    assert d(reserve(odd, GOOD_128, 5)) == (C.OK, 1, 5, 0, 60 * SECOND, 0, "")
    assert d.res(GOOD_128, odd)["reservation_id"] == GOOD_128


def test_str_subclass_id_is_accepted(d):
    class Id(str):
        pass

    assert d(grant(Id("a"), Id("g1"), 5)) == (C.OK, 5)


def test_an_account_id_is_its_text_whatever_the_str_type() -> None:
    """An account created with a str subclass id is stored under a plain str and found by the
    same text through either type; a subclass's own __eq__/__hash__ play no part."""
    import _fastledger

    class Odd(str):
        def __hash__(self):
            return 7

        def __eq__(self, other):
            return False

    led = _fastledger.Ledger()
    assert led.apply([upsert(Odd("acct-sub"), plan="free")], 10**15) == [(C.OK, True)]
    assert led.apply([upsert("acct-sub", plan="free")], 10**15) == [(C.OK, False)]  # the same account
    [aid] = led.account_ids()
    assert aid == "acct-sub" and type(aid) is str
    assert led.account_view(Odd("acct-sub"), 10**15) == led.account_view("acct-sub", 10**15)
    restored = _fastledger.Ledger.from_snapshot(led.snapshot())
    assert restored.account_ids() == ["acct-sub"]


def test_plan_id_is_validated(d):
    assert d(upsert("b", plan="bad plan")) == (C.INVALID_ID,)
    assert d(upsert("b", plan=None)) == (C.PLAN_REQUIRED,)
    assert d.account("b") is None


@pytest.mark.parametrize("op, status", [
    ((), C.INVALID_ARGUMENT),
    ((99, "a"), C.INVALID_ARGUMENT),
    ((0,), C.INVALID_ARGUMENT),
    ((True, "a", "g", 1, 5, 1, 0, 0), C.INVALID_ARGUMENT),        # a bool is not an op code
    ((2 ** 70,), C.INVALID_ARGUMENT),
    (("2", "a", "g", 1, 5, 1, 0, 0), C.INVALID_ARGUMENT),
    ([C.OP_GRANT, "a", "g", 1, 5, 1, 0, 0], C.INVALID_ARGUMENT),   # a list is not an op tuple
    ("not an op", C.INVALID_ARGUMENT),
    (None, C.INVALID_ARGUMENT),
    ((C.OP_RESERVE, "a"), C.INVALID_ARGUMENT),
    ((C.OP_GRANT, "a", "g", 1, 5, 1, 0), C.INVALID_ARGUMENT),
    ((C.OP_EXPIRE,), C.INVALID_ARGUMENT),
    ((C.OP_EXPIRE, 1, 2), C.INVALID_ARGUMENT),
    ((C.OP_RELEASE, "a", "r", "extra"), C.INVALID_ARGUMENT),
])
def test_malformed_op_tuples(d, op, status):
    assert d(op) == (status,)


@pytest.mark.parametrize("op, status", [
    (grant(fp="1"), C.INVALID_ARGUMENT),
    (grant(fp=2 ** 63), C.INVALID_ARGUMENT),
    (grant(amount=0), C.INVALID_AMOUNT),
    (grant(amount=-1), C.INVALID_AMOUNT),
    (grant(amount=C.AMOUNT_MAX + 1), C.INVALID_AMOUNT),
    (grant(amount=True), C.INVALID_AMOUNT),
    (grant(amount=5.0), C.INVALID_AMOUNT),
    (grant(category=0), C.INVALID_ARGUMENT),
    (grant(category=5), C.INVALID_ARGUMENT),
    (grant(priority=2 ** 31), C.INVALID_ARGUMENT),
    (grant(priority=-(2 ** 31) - 1), C.INVALID_ARGUMENT),
    (grant(expires_ns=-1), C.INVALID_ARGUMENT),
    (reserve(fp=None), C.INVALID_ARGUMENT),
    (reserve(amount=-1), C.INVALID_AMOUNT),
    (reserve(amount=C.AMOUNT_MAX + 1), C.INVALID_AMOUNT),
    (reserve(min_amount=-1), C.INVALID_AMOUNT),
    (reserve(ttl_ns=0), C.INVALID_TTL),
    (reserve(ttl_ns=-5), C.INVALID_TTL),
    (reserve(ttl_ns=C.TTL_NS_MAX + 1), C.INVALID_TTL),
    (reserve(allow_partial=1), C.INVALID_ARGUMENT),
    (reserve(feature_allowed=None), C.INVALID_ARGUMENT),
    (reserve(on_expire=0), C.INVALID_ARGUMENT),
    (reserve(on_expire=3), C.INVALID_ARGUMENT),
    (reserve(buckets=[("rpm", 1, 1, 1, 1)]), C.INVALID_ARGUMENT),
    (reserve(buckets=(("rpm", 1, 1, 1),)), C.INVALID_ARGUMENT),
    (reserve(buckets=(("bad name", 1, 1, 1, 1),)), C.INVALID_ARGUMENT),
    (reserve(buckets=(("rpm", 0, 1, 1, 1),)), C.INVALID_ARGUMENT),
    (reserve(buckets=(("rpm", 1, 0, 1, 1),)), C.INVALID_ARGUMENT),
    (reserve(buckets=(("rpm", 1, 1, 0, 1),)), C.INVALID_ARGUMENT),
    (reserve(buckets=(("rpm", 1, 1, C.TTL_NS_MAX + 1, 1),)), C.INVALID_ARGUMENT),
    (reserve(buckets=(("rpm", 1, 1, 1, -1),)), C.INVALID_ARGUMENT),
    (reserve(buckets=(("rpm", 1, 1, 1, 1), ("rpm", 2, 1, 1, 1))), C.INVALID_ARGUMENT),
    (reserve(buckets=tuple((f"b{i}", 1, 1, 1, 1) for i in range(9))), C.INVALID_ARGUMENT),
    (reserve(meta="text"), C.INVALID_ARGUMENT),
    (reserve(meta=b"x" * 1025), C.INVALID_ARGUMENT),
    (commit(fp=1.5), C.INVALID_ARGUMENT),
    (commit(amount=-2), C.INVALID_AMOUNT),
    (commit(amount=C.AMOUNT_MAX + 1), C.INVALID_AMOUNT),
    (commit(bucket_costs="x"), C.INVALID_ARGUMENT),
    (commit(bucket_costs=(("rpm",),)), C.INVALID_ARGUMENT),
    (commit(bucket_costs=(("rpm", -1),)), C.INVALID_ARGUMENT),
    (extend(hold_total=-1), C.INVALID_AMOUNT),
    (extend(ttl_ns=-1), C.INVALID_TTL),
    (extend(ttl_ns=C.TTL_NS_MAX + 1), C.INVALID_TTL),
    (charge(amount=-1), C.INVALID_AMOUNT),
    (charge(feature_allowed="yes"), C.INVALID_ARGUMENT),
    (check(amount=C.AMOUNT_MAX + 1), C.INVALID_AMOUNT),
    (check(buckets=None), C.INVALID_ARGUMENT),
    (bucket(spec=("rpm", 3, 1)), C.INVALID_ARGUMENT),
    (bucket(spec=["rpm", 3, 1, 1]), C.INVALID_ARGUMENT),
    (bucket(delta=C.AMOUNT_MAX + 1), C.INVALID_ARGUMENT),
    (bucket(delta="1"), C.INVALID_ARGUMENT),
    (upsert(status=3), C.INVALID_ARGUMENT),
    (upsert(status=True), C.INVALID_ARGUMENT),
    (upsert(credit_limit=-1), C.INVALID_AMOUNT),
    (upsert(credit_limit=C.AMOUNT_MAX + 1), C.INVALID_AMOUNT),
    (upsert(max_open_holds=C.HOLDS_PER_ACCOUNT_MAX + 1), C.INVALID_ARGUMENT),
    (upsert(unlimited=1), C.INVALID_ARGUMENT),
    (expire(-1), C.INVALID_ARGUMENT),
    (expire(None), C.INVALID_ARGUMENT),
])
def test_malformed_fields(d, op, status):
    """Each malformed field has its status, and nothing changed."""
    before = d.account()
    assert d(op) == (status,)
    assert d.account() == before


def test_validation_happens_before_lookup(d):
    """A malformed field wins over an unknown account (the model's order)."""
    assert d(grant("nobody", amount=0)) == (C.INVALID_AMOUNT,)
    assert d(reserve("nobody", ttl_ns=0)) == (C.INVALID_TTL,)
    assert d(commit("nobody", "bad id")) == (C.INVALID_ID,)
    assert d(grant("nobody")) == (C.ACCOUNT_NOT_FOUND,)


def test_batch_limit_and_clock_raise(led):
    assert led.apply([], 0) == []
    assert led.apply([expire()] * C.BATCH_OPS_MAX, 0)[-1] == (C.OK, 0)
    with pytest.raises(ValueError):
        led.apply([expire()] * (C.BATCH_OPS_MAX + 1), 0)
    for now in (-1, C.NOW_NS_LIMIT, 2 ** 64, "0", 1.0):
        with pytest.raises(ValueError):
            led.apply([expire()], now)
    assert led.apply((expire() for _ in range(2)), 5) == [(C.OK, 0), (C.OK, 0)]


def test_grant_already_expired_is_refused(d):
    d.advance(10)
    assert d(grant(expires_ns=10)) == (C.INVALID_ARGUMENT,)
    assert d(grant(expires_ns=11)) == (C.OK, 100)


def test_odd_ops_further_down_a_batch_change_nothing_before_their_turn() -> None:
    """`apply` looks a few ops ahead to prefetch what they will probe; ops of any shape there
    (not tuples, short, huge or wrong-typed codes, str subclasses, unknown accounts) must not
    change any result: a long mixed batch answers exactly as its ops applied one by one."""
    import _fastledger

    class Id(str):
        pass

    odd = [[C.OP_RESERVE, "a", "r"], (C.OP_RESERVE,), (2 ** 70, "a", "r"), ("3", "a", "r"), (True, "a", "r"),
           (C.OP_COMMIT, Id("a"), Id("r1")), (C.OP_COMMIT, "nobody", "r1"), (C.OP_CHARGE, "a", "é"), None, 7]
    ops = [upsert("a", plan="free"), grant("a", "g", 1000)]
    for i, bad in enumerate(odd):
        ops += [reserve("a", f"r{i}", 5), bad, commit("a", f"r{i}", 3)]
    one_by_one = _fastledger.Ledger()
    expected = [one_by_one.apply([op], 10**15)[0] for op in ops]
    together = _fastledger.Ledger()
    assert together.apply(ops, 10**15) == expected
    assert together.take_journal() and together.account_view("a", 10**15) == one_by_one.account_view("a", 10**15)


def test_accounts_found_ahead_are_the_accounts_each_op_acts_on() -> None:
    """`apply` hands each op the account its prefetch found a few ops earlier. Ops queued for
    an account before the op that creates it, several accounts sharing one id object, and
    equal ids in distinct str objects must all answer as the ops applied one by one, and the
    next `apply` (fresh id objects, maybe at recycled addresses) must not see a stale account."""
    import _fastledger

    shared = "".join(["sha", "red"])  # one str object used by many ops
    ops = [reserve("late", f"early{i}", 1) for i in range(8)]  # refused: no account yet
    ops += [upsert("late"), grant("late", "g", 100), upsert(shared), grant(shared, "g", 100)]
    for i in range(12):
        ops += [reserve("late", f"r{i}", 2), reserve(shared, f"r{i}", 3), charge("".join(["sh", "ared"]), f"c{i}", 1),
                commit("late", f"r{i}", 1), commit(shared, f"r{i}", 2)]
    one_by_one = _fastledger.Ledger()
    expected = [one_by_one.apply([op], 10**15)[0] for op in ops]
    together = _fastledger.Ledger()
    got = together.apply(ops, 10**15)
    assert got == expected
    assert got[0] == (C.ACCOUNT_NOT_FOUND,) and got[-1][0] == C.OK
    for aid in ("late", "shared"):
        assert together.account_view(aid, 10**15) == one_by_one.account_view(aid, 10**15)
    for round_ in range(3):  # new id objects each round; the account of each must be its own
        batch = [charge(f"{aid}", f"x{round_}-{i}-{aid}", 1) for i in range(10) for aid in ("late", "shared", "nobody")]
        assert together.apply(batch, 10**15) == [one_by_one.apply([op], 10**15)[0] for op in batch]
