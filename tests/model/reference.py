"""Plain-Python reference model of the `_fastledger` core: the executable spec.

Written for clarity, not speed. It implements the semantics in `_fastledger/README.md` with the
same op tuples, result tuples and view dicts as the Cython `Ledger`, so the Hypothesis stateful
test can drive both side by side and compare everything.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass, field

from _fastledger import codes as C

INF = C.INT64_MAX


class LedgerCorrupt(AssertionError):
    """An invariant does not hold: the ledger must not keep serving."""


@dataclass
class Lot:
    lot_id: str
    category: int
    priority: int
    expires_ns: int  # 0 = never
    seq: int
    remaining: int
    earmarked: int = 0
    expired: bool = False

    def order_key(self) -> tuple[int, int, int]:
        return (self.priority, self.expires_ns or INF, self.seq)

    @property
    def free(self) -> int:
        return 0 if self.expired else self.remaining - self.earmarked


@dataclass
class Bucket:
    capacity: int
    refill_amount: int
    refill_period_ns: int
    tokens: int
    last_ns: int


@dataclass
class Reservation:
    account_id: str
    reservation_id: str
    fp: int
    seq: int
    amount: int
    expires_ns: int
    on_expire: int
    backed: bool
    meta: bytes
    earmarks: list[list]  # [lot_id, amount] in consumption order
    overdraft: int  # part of the hold backed by the credit line
    bucket_taken: dict[str, int]
    reserve_result: tuple
    state: int = C.RES_HELD
    commit_fp: int = 0
    commit_result: tuple | None = None
    release_result: tuple | None = None
    auto_committed: bool = False
    purge_ns: int = 0


@dataclass
class Record:
    """Idempotency record of a grant or a charge."""

    fp: int
    result: tuple
    seq: int
    purge_ns: int
    expired: int = 0  # a grant's: how much of its lot expired unused (its free part at expiry)


@dataclass
class Account:
    account_id: str
    plan_id: str
    status: int = C.ACCOUNT_ACTIVE
    credit_limit: int = 0
    max_open_holds: int = 0
    unlimited: bool = False
    debt: int = 0
    held: int = 0
    overdraft_held: int = 0
    granted: int = 0
    consumed: int = 0
    expired: int = 0
    uncollected: int = 0
    open_holds: int = 0
    lots: list[Lot] = field(default_factory=list)
    buckets: dict[str, Bucket] = field(default_factory=dict)

    @property
    def balance(self) -> int:
        return sum(lot.remaining for lot in self.lots) - self.debt

    @property
    def available(self) -> int:
        return self.balance - self.held + self.credit_limit

    def find_lot(self, lot_id: str) -> Lot | None:
        for lot in self.lots:
            if lot.lot_id == lot_id:
                return lot
        return None


class _Overflow(Exception):
    pass


def _checked(value: int) -> int:
    if not C.INT64_MIN <= value <= C.INT64_MAX:
        raise _Overflow
    return value


def _valid_id(value) -> bool:
    return (
        isinstance(value, str)
        and 1 <= len(value) <= C.ID_LEN_MAX
        and all(ch in C.ID_CHARS for ch in value)
    )


def _is_int(value) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _valid_amount(value, lo: int = 0) -> bool:
    return _is_int(value) and lo <= value <= C.AMOUNT_MAX


def _valid_int64(value) -> bool:
    return _is_int(value) and C.INT64_MIN <= value <= C.INT64_MAX


def _valid_buckets(buckets) -> bool:
    if not isinstance(buckets, tuple) or len(buckets) > C.BUCKETS_PER_OP_MAX:
        return False
    names = set()
    for spec in buckets:
        if not (isinstance(spec, tuple) and len(spec) == 5):
            return False
        name, capacity, refill_amount, period_ns, cost = spec
        if not _valid_id(name) or name in names:
            return False
        names.add(name)
        if not (_valid_amount(capacity, 1) and _valid_amount(refill_amount, 1)):
            return False
        if not (_is_int(period_ns) and 1 <= period_ns <= C.TTL_NS_MAX):
            return False
        if not _valid_amount(cost):
            return False
    return True


class Ledger:
    """The reference ledger: same entry points as `_fastledger.Ledger`."""

    def __init__(self, *, retention_ns: int) -> None:
        self.retention_ns = retention_ns
        self.accounts: dict[str, Account] = {}
        self.reservations: dict[tuple[str, str], Reservation] = {}
        self.charges: dict[tuple[str, str], Record] = {}
        self.grants: dict[tuple[str, str], Record] = {}
        self.seq = 0
        # Expiry queues hold (time, seq, key...) with lazy deletion: stale entries are skipped.
        self.hold_queue: list[tuple] = []
        self.lot_queue: list[tuple] = []
        self.purge_queue: list[tuple] = []
        self._expired: list[tuple] = []

    # ------------------------------------------------------------------ entry point

    def apply(self, ops, now_ns: int) -> list[tuple]:
        if len(ops) > C.BATCH_OPS_MAX:
            raise ValueError("batch larger than BATCH_OPS_MAX")
        if not 0 <= now_ns < C.NOW_NS_LIMIT:
            raise ValueError("now_ns out of range")
        self._replayed: list[int] = []
        results = []
        for index, op in enumerate(ops):
            self._op_index = index
            results.append(self._apply_one(op, now_ns))
        return results

    def replayed_indices(self) -> list[int]:
        """Indices, within the last `apply`'s ops, of those answered from a stored result
        (idempotent replays): the engine derives usage records and events only from the rest."""
        return list(self._replayed)

    def _replay(self, result: tuple) -> tuple:
        self._replayed.append(self._op_index)
        return result

    def _apply_one(self, op, now: int) -> tuple:
        if not isinstance(op, tuple) or not op:
            return (C.INVALID_ARGUMENT,)
        handler = self._HANDLERS.get(op[0]) if _is_int(op[0]) else None
        if handler is None:
            return (C.INVALID_ARGUMENT,)
        name, arity = handler
        if len(op) != arity:
            return (C.INVALID_ARGUMENT,)
        try:
            return getattr(self, name)(now, *op[1:])
        except _Overflow:
            return (C.OVERFLOW,)

    _HANDLERS = {
        C.OP_UPSERT: ("_upsert", 7),
        C.OP_GRANT: ("_grant", 8),
        C.OP_RESERVE: ("_reserve", 12),
        C.OP_COMMIT: ("_commit", 6),
        C.OP_RELEASE: ("_release", 3),
        C.OP_EXTEND: ("_extend", 5),
        C.OP_CHARGE: ("_charge", 7),
        C.OP_CHECK: ("_check", 5),
        C.OP_BUCKET: ("_bucket", 4),
        C.OP_EXPIRE: ("_expire", 2),
    }

    def _next_seq(self) -> int:
        self.seq += 1
        return self.seq

    def _touch(self, account_id, now: int) -> Account | int:
        """Look an account up and let time pass for its lots; a status int on failure."""
        if not _valid_id(account_id):
            return C.INVALID_ID
        acct = self.accounts.get(account_id)
        if acct is None:
            return C.ACCOUNT_NOT_FOUND
        self._expire_due_lots(acct, now)
        return acct

    # ------------------------------------------------------------------ accounts and grants

    def _upsert(self, now, account_id, plan_id, status, credit_limit, max_open_holds, unlimited):
        if not _valid_id(account_id):
            return (C.INVALID_ID,)
        if plan_id is not None and not _valid_id(plan_id):
            return (C.INVALID_ID,)
        if not (_is_int(status) and status in (C.ACCOUNT_KEEP, C.ACCOUNT_ACTIVE, C.ACCOUNT_SUSPENDED)):
            return (C.INVALID_ARGUMENT,)
        if credit_limit is not None and not _valid_amount(credit_limit):
            return (C.INVALID_AMOUNT,)
        if max_open_holds is not None and not (
            _is_int(max_open_holds) and 0 <= max_open_holds <= C.HOLDS_PER_ACCOUNT_MAX
        ):
            return (C.INVALID_ARGUMENT,)
        if unlimited is not None and not isinstance(unlimited, bool):
            return (C.INVALID_ARGUMENT,)
        acct = self.accounts.get(account_id)
        created = acct is None
        if created:
            if plan_id is None:
                return (C.PLAN_REQUIRED,)
            acct = Account(account_id=account_id, plan_id=plan_id)
            self.accounts[account_id] = acct
        else:
            self._expire_due_lots(acct, now)
        if plan_id is not None:
            acct.plan_id = plan_id
        if status != C.ACCOUNT_KEEP:
            acct.status = status
        if credit_limit is not None:
            acct.credit_limit = credit_limit
        if max_open_holds is not None:
            acct.max_open_holds = max_open_holds
        if unlimited is not None:
            acct.unlimited = unlimited
        return (C.OK, created)

    def _grant(self, now, account_id, grant_id, fp, amount, category, priority, expires_ns):
        if not _valid_id(grant_id):
            return (C.INVALID_ID,)
        if not _valid_int64(fp):
            return (C.INVALID_ARGUMENT,)
        if not _valid_amount(amount, 1):
            return (C.INVALID_AMOUNT,)
        if not (_is_int(category) and C.LOT_PURCHASED <= category <= C.LOT_ADJUSTMENT):
            return (C.INVALID_ARGUMENT,)
        if not (_is_int(priority) and C.PRIORITY_MIN <= priority <= C.PRIORITY_MAX):
            return (C.INVALID_ARGUMENT,)
        if not (_is_int(expires_ns) and (expires_ns == 0 or now < expires_ns <= C.INT64_MAX)):
            return (C.INVALID_ARGUMENT,)
        acct = self._touch(account_id, now)
        if isinstance(acct, int):
            return (acct,)
        record = self.grants.get((account_id, grant_id))
        if record is not None:
            return self._replay(record.result) if record.fp == fp else (C.IDEMPOTENCY_KEY_REUSED,)
        paid = min(acct.debt, amount)
        rest = amount - paid
        if rest > 0 and len(acct.lots) >= C.LOTS_PER_ACCOUNT_MAX:
            return (C.LIMIT_EXCEEDED,)
        # Every counter this grant moves is checked before anything changes.
        granted = _checked(acct.granted + amount)
        consumed = _checked(acct.consumed + paid)
        _checked(sum(lot.remaining for lot in acct.lots) + rest)
        acct.granted, acct.consumed, acct.debt = granted, consumed, acct.debt - paid
        if rest > 0:
            lot = Lot(grant_id, category, priority, expires_ns, self._next_seq(), rest)
            acct.lots.append(lot)
            acct.lots.sort(key=Lot.order_key)
            if expires_ns:
                heapq.heappush(self.lot_queue, (expires_ns, lot.seq, account_id, grant_id))
        result = (C.OK, acct.available)
        seq = self._next_seq()
        # Kept until a retention past the lot's expiry, even once the lot is spent (or paid a
        # debt and made none): a retry of the grant id before then is a replay, never a second
        # grant, and what expired unused can still be read (grant_expired).
        purge_ns = min(expires_ns + self.retention_ns, C.INT64_MAX) if expires_ns else now + self.retention_ns
        self.grants[(account_id, grant_id)] = Record(fp, result, seq, purge_ns)
        heapq.heappush(self.purge_queue, (purge_ns, seq, "grant", account_id, grant_id))
        return result

    # ------------------------------------------------------------------ lots

    def _expire_due_lots(self, acct: Account, now: int) -> None:
        for lot in list(acct.lots):
            if lot.expires_ns and lot.expires_ns <= now and not lot.expired:
                self._expire_lot(acct, lot)

    def _expire_lot(self, acct: Account, lot: Lot) -> None:
        free = lot.remaining - lot.earmarked
        acct.expired += free
        self.grants[(acct.account_id, lot.lot_id)].expired += free  # a lot's id is its grant's
        lot.remaining = lot.earmarked
        lot.expired = True
        self._drop_if_empty(acct, lot)

    def _drop_if_empty(self, acct: Account, lot: Lot) -> None:
        if lot.remaining == 0:
            acct.lots.remove(lot)

    def _take_free(self, acct: Account, amount: int) -> tuple[list[list], int]:
        """Earmark up to `amount` from free lot credit in order, then the credit line.

        Returns the earmarks and the overdraft part; the caller checked availability.
        """
        earmarks = []
        need = amount
        for lot in acct.lots:
            if need == 0:
                break
            take = min(lot.free, need)
            if take > 0:
                lot.earmarked += take
                earmarks.append([lot.lot_id, take])
                need -= take
        acct.overdraft_held += need
        return earmarks, need

    def _charge_free(self, acct: Account, amount: int) -> int:
        """Charge up to `amount` from free lots then overdraft room; returns what was charged."""
        need = amount
        for lot in list(acct.lots):
            if need == 0:
                break
            take = min(lot.free, need)
            if take > 0:
                lot.remaining -= take
                acct.consumed += take
                need -= take
                self._drop_if_empty(acct, lot)
        room = max(0, acct.credit_limit - acct.debt - acct.overdraft_held)
        take = min(room, need)
        acct.debt += take
        need -= take
        return amount - need

    # ------------------------------------------------------------------ buckets

    @staticmethod
    def _refilled(bucket: Bucket, now: int) -> tuple[int, int]:
        tokens, last = bucket.tokens, bucket.last_ns
        if now > last and tokens < bucket.capacity:
            n = (now - last) // bucket.refill_period_ns
            if n > 0:
                tokens = min(bucket.capacity, tokens + n * bucket.refill_amount)
                last += n * bucket.refill_period_ns
        if tokens >= bucket.capacity and now > last:
            last = now
        return tokens, last

    def _bucket_state(self, acct: Account, spec, now: int) -> tuple[Bucket | None, int, int]:
        """The bucket for `spec` as it is at `now` (not stored): (bucket, tokens, last)."""
        name, capacity, refill_amount, period_ns = spec[:4]
        bucket = acct.buckets.get(name)
        if bucket is None:
            return None, capacity, now
        probe = Bucket(capacity, refill_amount, period_ns, min(bucket.tokens, capacity), bucket.last_ns)
        tokens, last = self._refilled(probe, now)
        return bucket, tokens, last

    def _rate_denial(self, acct: Account, buckets, now: int) -> tuple[int, str] | None:
        """(retry_after_ns, name) of the first bucket that cannot pay its cost, else None."""
        new_names = sum(1 for spec in buckets if spec[0] not in acct.buckets)
        if len(acct.buckets) + new_names > C.BUCKETS_PER_ACCOUNT_MAX:
            raise _TableFull
        for spec in buckets:
            name, capacity, refill_amount, period_ns, cost = spec
            _, tokens, last = self._bucket_state(acct, spec, now)
            if tokens >= cost:
                continue
            if cost > capacity:
                return 0, name
            periods = -(-(cost - tokens) // refill_amount)
            return min(C.TTL_NS_MAX, last + periods * period_ns - now), name
        return None

    def _take_buckets(self, acct: Account, buckets, now: int) -> dict[str, int]:
        taken = {}
        for name, capacity, refill_amount, period_ns, cost in buckets:
            _, tokens, last = self._bucket_state(acct, (name, capacity, refill_amount, period_ns), now)
            acct.buckets[name] = Bucket(capacity, refill_amount, period_ns, tokens - cost, last)
            taken[name] = cost
        return taken

    def _adjust_bucket(self, bucket: Bucket, delta: int, now: int) -> None:
        bucket.tokens, bucket.last_ns = self._refilled(bucket, now)
        if delta >= 0:
            # A true-up may leave the bucket in debt; the floor keeps int64 safe.
            bucket.tokens = max(-C.AMOUNT_MAX, bucket.tokens - delta)
        else:
            bucket.tokens = min(bucket.capacity, bucket.tokens - delta)
        if bucket.tokens >= bucket.capacity and now > bucket.last_ns:
            bucket.last_ns = now

    # ------------------------------------------------------------------ the decision

    def _decide(self, acct, amount, feature_allowed, buckets, now, *, concurrency, partial, min_amount):
        """The shared decision of reserve, charge and check.

        Returns (decision, grant_amount, retry_after_ns, limit_name).
        """
        if acct.status == C.ACCOUNT_SUSPENDED:
            return C.DECISION_ACCOUNT_SUSPENDED, 0, 0, ""
        if not feature_allowed:
            return C.DECISION_FEATURE_NOT_IN_PLAN, 0, 0, ""
        denial = self._rate_denial(acct, buckets, now)
        if denial is not None:
            return C.DECISION_RATE_LIMITED, 0, denial[0], denial[1]
        if concurrency and acct.max_open_holds and acct.open_holds >= acct.max_open_holds:
            return C.DECISION_CONCURRENCY_LIMITED, 0, 0, ""
        if acct.unlimited:
            return C.DECISION_OK, amount, 0, ""
        available = acct.available
        if amount <= available:
            return C.DECISION_OK, amount, 0, ""
        if partial and available >= max(min_amount, 1):
            return C.DECISION_OK, available, 0, ""
        return C.DECISION_INSUFFICIENT_CREDITS, 0, 0, ""

    # ------------------------------------------------------------------ reserve

    def _reserve(self, now, account_id, reservation_id, fp, amount, allow_partial, min_amount,
                 ttl_ns, on_expire, feature_allowed, buckets, meta):
        if not _valid_id(reservation_id):
            return (C.INVALID_ID,)
        if not _valid_int64(fp):
            return (C.INVALID_ARGUMENT,)
        if not _valid_amount(amount) or not _valid_amount(min_amount):
            return (C.INVALID_AMOUNT,)
        if not (_is_int(ttl_ns) and 1 <= ttl_ns <= C.TTL_NS_MAX):
            return (C.INVALID_TTL,)
        if not (isinstance(allow_partial, bool) and isinstance(feature_allowed, bool)):
            return (C.INVALID_ARGUMENT,)
        if not (_is_int(on_expire) and on_expire in (C.EXPIRE_RELEASE, C.EXPIRE_COMMIT)):
            return (C.INVALID_ARGUMENT,)
        if not _valid_buckets(buckets):
            return (C.INVALID_ARGUMENT,)
        if not isinstance(meta, bytes) or len(meta) > C.META_BYTES_MAX:
            return (C.INVALID_ARGUMENT,)
        acct = self._touch(account_id, now)
        if isinstance(acct, int):
            return (acct,)
        res = self.reservations.get((account_id, reservation_id))
        if res is not None:
            return self._replay(res.reserve_result) if res.fp == fp else (C.IDEMPOTENCY_KEY_REUSED,)
        try:
            decision, held, retry, limit = self._decide(
                acct, amount, feature_allowed, buckets, now,
                concurrency=True, partial=allow_partial, min_amount=min_amount,
            )
        except _TableFull:
            return (C.LIMIT_EXCEEDED,)
        if decision != C.DECISION_OK:
            return (C.OK, decision, 0, acct.available, 0, retry, limit)
        if acct.open_holds >= C.HOLDS_PER_ACCOUNT_MAX:
            return (C.LIMIT_EXCEEDED,)
        expires_ns = _checked(now + ttl_ns)
        backed = not acct.unlimited
        taken = self._take_buckets(acct, buckets, now)
        if backed:
            earmarks, overdraft = self._take_free(acct, held)
            acct.held += held
        else:
            earmarks, overdraft = [], 0
        acct.open_holds += 1
        result = (C.OK, C.DECISION_OK, held, acct.available, expires_ns, 0, "")
        seq = self._next_seq()
        self.reservations[(account_id, reservation_id)] = Reservation(
            account_id, reservation_id, fp, seq, held, expires_ns, on_expire, backed, meta,
            earmarks, overdraft, taken, result,
        )
        heapq.heappush(self.hold_queue, (expires_ns, seq, account_id, reservation_id))
        return result

    # ------------------------------------------------------------------ settling holds

    def _free_earmarks(self, acct: Account, res: Reservation, charge: int) -> int:
        """Charge up to `charge` from the hold's own backing and free all of it.

        Returns what was charged. Released parts of expired lots expire.
        """
        need = charge
        for lot_id, amount in res.earmarks:
            lot = acct.find_lot(lot_id)
            take = min(amount, need)
            need -= take
            lot.earmarked -= amount
            lot.remaining -= take
            acct.consumed += take
            if lot.expired:
                acct.expired += amount - take
                lot.remaining -= amount - take
            self._drop_if_empty(acct, lot)
        take = min(res.overdraft, need)
        need -= take
        acct.debt += take
        acct.overdraft_held -= res.overdraft
        acct.held -= res.amount
        res.earmarks, res.overdraft = [], 0
        return charge - need

    def _close(self, acct: Account, res: Reservation, state: int, now: int) -> None:
        res.state = state
        acct.open_holds -= 1
        res.purge_ns = now + self.retention_ns
        heapq.heappush(
            self.purge_queue, (res.purge_ns, res.seq, "reservation", res.account_id, res.reservation_id)
        )

    def _settle_commit(self, acct: Account, res: Reservation, actual: int, now: int) -> tuple:
        """Commit an open hold with `actual`; returns (charged, released, uncharged)."""
        if not res.backed:
            self._close(acct, res, C.RES_COMMITTED, now)
            return actual, max(0, res.amount - actual), 0
        held = res.amount
        _checked(acct.uncollected + max(0, actual - held))
        charged = self._free_earmarks(acct, res, min(actual, held))
        if actual > held:
            charged += self._charge_free(acct, actual - held)
        uncharged = actual - charged
        acct.uncollected += uncharged
        self._close(acct, res, C.RES_COMMITTED, now)
        return charged, max(0, held - actual), uncharged

    def take_expired(self) -> list[tuple]:
        """Holds expired since the last call (sweep or touch), in order:
        (account_id, reservation_id, on_expire, amount_charged, amount_uncharged, meta)."""
        out, self._expired = self._expired, []
        return out

    def _expire_hold(self, acct: Account, res: Reservation, now: int) -> None:
        if res.on_expire == C.EXPIRE_COMMIT:
            charged, released, uncharged = self._settle_commit(acct, res, res.amount, now)
            res.auto_committed = True
            res.commit_result = (C.OK, charged, released, uncharged, acct.available, True)
            self._expired.append((acct.account_id, res.reservation_id, C.EXPIRE_COMMIT, charged, uncharged, res.meta))
        else:
            self._expired.append((acct.account_id, res.reservation_id, C.EXPIRE_RELEASE, 0, 0, res.meta))
            if res.backed:
                self._free_earmarks(acct, res, 0)
            res.state = C.RES_EXPIRED
            acct.open_holds -= 1
            # An expired hold stays open for a late commit until it is purged.
            res.purge_ns = now + self.retention_ns
            heapq.heappush(
                self.purge_queue,
                (res.purge_ns, res.seq, "reservation", res.account_id, res.reservation_id),
            )

    def _open_reservation(self, account_id, reservation_id, now):
        """(account, reservation) with time applied, or a status int."""
        if not _valid_id(reservation_id):
            return C.INVALID_ID
        acct = self._touch(account_id, now)
        if isinstance(acct, int):
            return acct
        res = self.reservations.get((account_id, reservation_id))
        if res is None:
            return C.RESERVATION_NOT_FOUND
        if res.state == C.RES_HELD and res.expires_ns <= now:
            self._expire_hold(acct, res, now)
        return acct, res

    def _commit(self, now, account_id, reservation_id, fp, amount, bucket_costs):
        if not _valid_int64(fp):
            return (C.INVALID_ARGUMENT,)
        if not (_is_int(amount) and (amount == -1 or 0 <= amount <= C.AMOUNT_MAX)):
            return (C.INVALID_AMOUNT,)
        if not self._valid_bucket_costs(bucket_costs):
            return (C.INVALID_ARGUMENT,)
        found = self._open_reservation(account_id, reservation_id, now)
        if isinstance(found, int):
            return (found,)
        acct, res = found
        if res.state == C.RES_RELEASED:
            return (C.RESERVATION_RELEASED,)
        if res.state == C.RES_COMMITTED:
            if res.auto_committed or res.commit_fp == fp:
                return self._replay(res.commit_result)
            return (C.IDEMPOTENCY_KEY_REUSED,)
        actual = res.amount if amount == -1 else amount
        if res.state == C.RES_EXPIRED:
            _checked(acct.uncollected + actual)
            charged = self._charge_free(acct, actual) if res.backed else actual
            uncharged = actual - charged
            acct.uncollected += uncharged
            res.state = C.RES_COMMITTED
            result = (C.OK, charged, 0, uncharged, acct.available, True)
        else:
            charged, released, uncharged = self._settle_commit(acct, res, actual, now)
            result = (C.OK, charged, released, uncharged, acct.available, False)
        self._true_up_buckets(acct, res, bucket_costs, now)
        res.commit_fp = fp
        res.commit_result = result
        return result

    @staticmethod
    def _valid_bucket_costs(bucket_costs) -> bool:
        if not isinstance(bucket_costs, tuple) or len(bucket_costs) > C.BUCKETS_PER_OP_MAX:
            return False
        return all(
            isinstance(item, tuple) and len(item) == 2 and _valid_id(item[0]) and _valid_amount(item[1])
            for item in bucket_costs
        )

    def _true_up_buckets(self, acct: Account, res: Reservation, bucket_costs, now: int) -> None:
        for name, actual in bucket_costs:
            bucket = acct.buckets.get(name)
            if bucket is None or name not in res.bucket_taken:
                continue
            self._adjust_bucket(bucket, actual - res.bucket_taken[name], now)
            res.bucket_taken[name] = actual

    def _release(self, now, account_id, reservation_id):
        found = self._open_reservation(account_id, reservation_id, now)
        if isinstance(found, int):
            return (found,)
        acct, res = found
        if res.state == C.RES_COMMITTED:
            return (C.RESERVATION_COMMITTED,)
        if res.state == C.RES_RELEASED:
            return self._replay(res.release_result)
        if res.state == C.RES_EXPIRED:
            res.state = C.RES_RELEASED
            res.release_result = (C.OK, 0, acct.available)
            return res.release_result
        released = res.amount
        if res.backed:
            self._free_earmarks(acct, res, 0)
        self._close(acct, res, C.RES_RELEASED, now)
        res.release_result = (C.OK, released, acct.available)
        return res.release_result

    def _extend(self, now, account_id, reservation_id, hold_total, ttl_ns):
        if not _valid_amount(hold_total):
            return (C.INVALID_AMOUNT,)
        if not (_is_int(ttl_ns) and 0 <= ttl_ns <= C.TTL_NS_MAX):
            return (C.INVALID_TTL,)
        found = self._open_reservation(account_id, reservation_id, now)
        if isinstance(found, int):
            return (found,)
        acct, res = found
        if res.state != C.RES_HELD:
            return ({
                C.RES_COMMITTED: C.RESERVATION_COMMITTED,
                C.RES_RELEASED: C.RESERVATION_RELEASED,
                C.RES_EXPIRED: C.RESERVATION_EXPIRED,
            }[res.state],)
        if hold_total and hold_total < res.amount:
            return (C.INVALID_AMOUNT,)
        extra = hold_total - res.amount if hold_total else 0
        if extra and res.backed and extra > acct.available:
            return (C.OK, C.DECISION_INSUFFICIENT_CREDITS, res.amount, res.expires_ns, acct.available)
        expires_ns = _checked(now + ttl_ns) if ttl_ns else res.expires_ns
        if extra:
            if res.backed:
                earmarks, overdraft = self._take_free(acct, extra)
                self._merge_earmarks(res, earmarks)
                res.overdraft += overdraft
                acct.held += extra
            res.amount += extra
        if expires_ns != res.expires_ns:
            res.expires_ns = expires_ns
            heapq.heappush(self.hold_queue, (expires_ns, res.seq, account_id, reservation_id))
        return (C.OK, C.DECISION_OK, res.amount, res.expires_ns, acct.available)

    @staticmethod
    def _merge_earmarks(res: Reservation, earmarks: list[list]) -> None:
        for lot_id, amount in earmarks:
            for mark in res.earmarks:
                if mark[0] == lot_id:
                    mark[1] += amount
                    break
            else:
                res.earmarks.append([lot_id, amount])

    # ------------------------------------------------------------------ charge and check

    def _charge(self, now, account_id, charge_id, fp, amount, feature_allowed, buckets):
        if not _valid_id(charge_id):
            return (C.INVALID_ID,)
        if not _valid_int64(fp):
            return (C.INVALID_ARGUMENT,)
        if not _valid_amount(amount):
            return (C.INVALID_AMOUNT,)
        if not isinstance(feature_allowed, bool) or not _valid_buckets(buckets):
            return (C.INVALID_ARGUMENT,)
        acct = self._touch(account_id, now)
        if isinstance(acct, int):
            return (acct,)
        record = self.charges.get((account_id, charge_id))
        if record is not None:
            return self._replay(record.result) if record.fp == fp else (C.IDEMPOTENCY_KEY_REUSED,)
        try:
            decision, _, retry, limit = self._decide(
                acct, amount, feature_allowed, buckets, now,
                concurrency=False, partial=False, min_amount=0,
            )
        except _TableFull:
            return (C.LIMIT_EXCEEDED,)
        if decision != C.DECISION_OK:
            return (C.OK, decision, 0, acct.available, retry, limit)
        self._take_buckets(acct, buckets, now)
        if not acct.unlimited:
            self._charge_free(acct, amount)
        result = (C.OK, C.DECISION_OK, amount, acct.available, 0, "")
        seq = self._next_seq()
        purge_ns = now + self.retention_ns
        self.charges[(account_id, charge_id)] = Record(fp, result, seq, purge_ns)
        heapq.heappush(self.purge_queue, (purge_ns, seq, "charge", account_id, charge_id))
        return result

    def _check(self, now, account_id, amount, feature_allowed, buckets):
        if not _valid_amount(amount):
            return (C.INVALID_AMOUNT,)
        if not isinstance(feature_allowed, bool) or not _valid_buckets(buckets):
            return (C.INVALID_ARGUMENT,)
        acct = self._touch(account_id, now)
        if isinstance(acct, int):
            return (acct,)
        try:
            decision, _, retry, limit = self._decide(
                acct, amount, feature_allowed, buckets, now,
                concurrency=True, partial=False, min_amount=0,
            )
        except _TableFull:
            return (C.LIMIT_EXCEEDED,)
        return (C.OK, decision, acct.available, retry, limit)

    def _bucket(self, now, account_id, spec, delta):
        if not (isinstance(spec, tuple) and len(spec) == 4):
            return (C.INVALID_ARGUMENT,)
        if not _valid_buckets((spec + (0,),)) or not (_is_int(delta) and abs(delta) <= C.AMOUNT_MAX):
            return (C.INVALID_ARGUMENT,)
        acct = self._touch(account_id, now)
        if isinstance(acct, int):
            return (acct,)
        name, capacity, refill_amount, period_ns = spec
        bucket = acct.buckets.get(name)
        if bucket is None:
            if len(acct.buckets) >= C.BUCKETS_PER_ACCOUNT_MAX:
                return (C.LIMIT_EXCEEDED,)
            bucket = Bucket(capacity, refill_amount, period_ns, capacity, now)
        else:
            bucket.tokens = min(bucket.tokens, capacity)
            bucket.capacity, bucket.refill_amount, bucket.refill_period_ns = capacity, refill_amount, period_ns
        self._adjust_bucket(bucket, delta, now)
        acct.buckets[name] = bucket
        return (C.OK, bucket.tokens)

    # ------------------------------------------------------------------ the expiry sweep

    def _expire(self, now, max_items):
        if not (_is_int(max_items) and max_items >= 0):
            return (C.INVALID_ARGUMENT,)
        done = 0
        while done < max_items and self.hold_queue and self.hold_queue[0][0] <= now:
            expires_ns, seq, account_id, reservation_id = heapq.heappop(self.hold_queue)
            res = self.reservations.get((account_id, reservation_id))
            if res is None or res.state != C.RES_HELD or res.expires_ns != expires_ns:
                continue
            acct = self.accounts[account_id]
            self._expire_due_lots(acct, now)
            self._expire_hold(acct, res, now)
            done += 1
        while done < max_items and self.lot_queue and self.lot_queue[0][0] <= now:
            expires_ns, seq, account_id, lot_id = heapq.heappop(self.lot_queue)
            acct = self.accounts.get(account_id)
            lot = acct.find_lot(lot_id) if acct else None
            if lot is None or lot.seq != seq or lot.expired:
                continue
            self._expire_lot(acct, lot)
            done += 1
        while done < max_items and self.purge_queue and self.purge_queue[0][0] <= now:
            purge_ns, seq, kind, account_id, item_id = heapq.heappop(self.purge_queue)
            key = (account_id, item_id)
            if kind == "reservation":
                res = self.reservations.get(key)
                if res is None or res.seq != seq or res.purge_ns != purge_ns or res.state == C.RES_HELD:
                    continue
                del self.reservations[key]
            else:
                table = self.grants if kind == "grant" else self.charges
                record = table.get(key)
                if record is None or record.seq != seq or record.purge_ns != purge_ns:
                    continue
                acct = self.accounts.get(account_id)
                if kind == "grant" and acct is not None and acct.find_lot(item_id) is not None:
                    # Lot ids are grant ids: the record lives as long as its lot, so a retry can
                    # never create a second lot with the same id.
                    record.purge_ns = now + self.retention_ns
                    heapq.heappush(self.purge_queue, (record.purge_ns, seq, kind, account_id, item_id))
                else:
                    del table[key]
            done += 1
        return (C.OK, done)

    # ------------------------------------------------------------------ views

    def account_view(self, account_id: str, now_ns: int) -> dict | None:
        acct = self.accounts.get(account_id)
        if acct is None:
            return None
        self._expire_due_lots(acct, now_ns)
        return {
            "account_id": acct.account_id,
            "plan_id": acct.plan_id,
            "status": acct.status,
            "credit_limit": acct.credit_limit,
            "max_open_holds": acct.max_open_holds,
            "unlimited": acct.unlimited,
            "balance": acct.balance,
            "held": acct.held,
            "available": acct.available,
            "debt": acct.debt,
            "granted": acct.granted,
            "consumed": acct.consumed,
            "expired": acct.expired,
            "uncollected": acct.uncollected,
            "open_holds": acct.open_holds,
        }

    def lots_view(self, account_id: str, now_ns: int) -> list[dict]:
        acct = self.accounts.get(account_id)
        if acct is None:
            return []
        self._expire_due_lots(acct, now_ns)
        return [
            {
                "lot_id": lot.lot_id,
                "category": lot.category,
                "remaining": lot.remaining,
                "earmarked": lot.earmarked,
                "priority": lot.priority,
                "expires_ns": lot.expires_ns,
                "expired": lot.expired,
            }
            for lot in acct.lots
        ]

    def reservation_view(self, account_id: str, reservation_id: str) -> dict | None:
        res = self.reservations.get((account_id, reservation_id))
        if res is None:
            return None
        return {
            "reservation_id": res.reservation_id,
            "state": res.state,
            "amount_held": res.amount,
            "expires_ns": res.expires_ns,
            "on_expire": res.on_expire,
            "backed": res.backed,
            "meta": res.meta,
        }

    def buckets_view(self, account_id: str, now_ns: int) -> list[dict]:
        acct = self.accounts.get(account_id)
        if acct is None:
            return []
        out = []
        for name in sorted(acct.buckets):
            bucket = acct.buckets[name]
            tokens, last = self._refilled(bucket, now_ns)
            if tokens >= bucket.capacity:
                reset_after_ns = 0
            else:
                periods = -(-(bucket.capacity - tokens) // bucket.refill_amount)
                reset_after_ns = min(C.TTL_NS_MAX, last + periods * bucket.refill_period_ns - now_ns)
            out.append({
                "name": name,
                "tokens": tokens,
                "capacity": bucket.capacity,
                "reset_after_ns": reset_after_ns,
            })
        return out

    def has_charge(self, account_id: str, charge_id: str) -> bool:
        """Whether a charge with this id is remembered (its replay returns the stored result)."""
        return (account_id, charge_id) in self.charges

    def has_grant(self, account_id: str, grant_id: str) -> bool:
        return (account_id, grant_id) in self.grants

    def grant_remaining(self, account_id: str, grant_id: str) -> int | None:
        """What is left of the grant's lot (0 once spent or if it made none), or None without a
        record of the grant."""
        if (account_id, grant_id) not in self.grants:
            return None
        acct = self.accounts.get(account_id)
        lot = acct.find_lot(grant_id) if acct is not None else None
        return lot.remaining if lot is not None else 0

    def grant_expired(self, account_id: str, grant_id: str) -> int | None:
        """How much of the grant's lot expired unused, or None without a record of the grant."""
        record = self.grants.get((account_id, grant_id))
        return None if record is None else record.expired

    def account_ids(self) -> list[str]:
        return sorted(self.accounts)

    # ------------------------------------------------------------------ invariants

    def check_invariants(self) -> None:
        open_by_account: dict[str, list[Reservation]] = {}
        for res in self.reservations.values():
            if res.state == C.RES_HELD:
                open_by_account.setdefault(res.account_id, []).append(res)
        for acct in self.accounts.values():
            holds = open_by_account.get(acct.account_id, [])
            backed = [r for r in holds if r.backed]
            _require(acct.open_holds == len(holds), "open_holds count", acct)
            _require(acct.held == sum(r.amount for r in backed), "held == sum of holds", acct)
            _require(acct.overdraft_held == sum(r.overdraft for r in backed), "overdraft_held", acct)
            for lot in acct.lots:
                marks = sum(a for r in backed for lid, a in r.earmarks if lid == lot.lot_id)
                _require(lot.earmarked == marks, f"earmarks of lot {lot.lot_id}", acct)
                _require(0 <= lot.earmarked <= lot.remaining, "0 <= earmarked <= remaining", acct)
                _require(lot.remaining > 0, "empty lots are dropped", acct)
            for r in backed:
                _require(r.amount == sum(a for _, a in r.earmarks) + r.overdraft, "hold backing", acct)
            _require(acct.debt >= 0, "debt >= 0", acct)
            _require(
                acct.granted == sum(l.remaining for l in acct.lots) + acct.consumed + acct.expired,
                "conservation: granted == remaining + consumed + expired",
                acct,
            )
            _require(
                acct.available == acct.balance - acct.held + acct.credit_limit,
                "available == balance - held + credit_limit",
                acct,
            )


class _TableFull(Exception):
    pass


def _require(condition: bool, what: str, acct: Account) -> None:
    if not condition:
        raise LedgerCorrupt(f"invariant broken for {acct.account_id}: {what}")


# REFERENCE_READY
