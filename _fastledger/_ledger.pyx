# cython: language_level=3
"""The deterministic core: a pure, synchronous ledger state machine (see README.md).

One extension module built from small topic files; the semantics are those of the plain-Python
reference model in tests/model/reference.py.
"""

cimport cython
from libc.stdint cimport int64_t, uint64_t, int32_t, uint32_t, uint16_t, uint8_t
from libc.string cimport memcpy, memcmp, memmove, memset
from cpython.object cimport PyObject
from cpython.mem cimport PyMem_Malloc, PyMem_Calloc, PyMem_Realloc, PyMem_Free
from cpython.ref cimport Py_INCREF, Py_DECREF, Py_XDECREF
from cpython.list cimport PyList_New, PyList_SET_ITEM
from cpython.sequence cimport PySequence_Fast_ITEMS, PySequence_Fast_GET_SIZE

cdef extern from *:
    """
    #define fl_prefetch(p) __builtin_prefetch((const void*)(p), 0, 3)
    """
    void fl_prefetch(const void* p) noexcept nogil

include "util.pxi"
include "result.pxi"
include "heap.pxi"
include "purge.pxi"
include "table.pxi"
include "lots.pxi"
include "buckets.pxi"
include "holds.pxi"
include "ops.pxi"
include "journal.pxi"
include "replay.pxi"
include "views.pxi"
include "invariants.pxi"


@cython.final
@cython.no_gc
cdef class Account:
    """One account: counters, its lots (C array) and its buckets. Internal, never handed out."""

    def __dealloc__(self):
        PyMem_Free(self.lots)


@cython.final
@cython.no_gc
cdef class Bucket:
    pass


cdef enum:
    PREFETCH_AHEAD = 6
    PREFETCH_RING = 8           # > PREFETCH_AHEAD


cdef inline PyObject* prefetch_op(Ledger L, object op, PyObject** aid_out, PyObject** last_aid,
                                  PyObject** last_acct) noexcept:
    """Start loading the reservation-table slot a reserve/commit/release/extend/charge a few
    ops ahead will probe: on a table larger than the caches that probe is a memory miss, and
    the core would otherwise wait for it op after op. Returns the op's account (borrowed), with
    its id object in `aid_out`, for `apply` to hand to that op's own lookup (see hint_aid).
    Anything unexpected: do nothing, NULL. `last_aid` / `last_acct` are the id object and the
    account of the last op it found one for: an op with that very id object (a Batch's ops
    usually share one) takes that account without a lookup."""
    cdef PyObject* a
    cdef int64_t c
    cdef uint64_t h
    cdef uint8_t kind
    cdef object aid, rid
    if not PyTuple_CheckExact(op) or PyTuple_GET_SIZE(op) < 3:
        return NULL
    if not get_i64(<object>PyTuple_GET_ITEM(op, 0), &c):
        return NULL
    if c == OP_CHARGE:
        kind = REC_CHARGE
    elif OP_RESERVE <= c <= OP_EXTEND:
        kind = REC_HOLD
    else:
        return NULL
    aid = <object>PyTuple_GET_ITEM(op, 1)
    rid = <object>PyTuple_GET_ITEM(op, 2)
    if not (PyUnicode_CheckExact(aid) and PyUnicode_IS_ASCII(aid)
            and PyUnicode_CheckExact(rid) and PyUnicode_IS_ASCII(rid)):
        return NULL
    if <PyObject*>aid == last_aid[0]:
        a = last_acct[0]
    else:
        a = acct_find(&L.accts, aid)
        if a == NULL:
            return NULL
        last_aid[0] = <PyObject*>aid
        last_acct[0] = a
    h = rec_hash(<Account>a, kind, id_data(rid), PyUnicode_GET_LENGTH(rid))
    fl_prefetch(&L.recs.slots[h & L.recs.mask])
    if L.recs.old != NULL:          # growing: a new id's lookup probes the old slots too
        fl_prefetch(&L.recs.old[h & L.recs.old_mask])
    aid_out[0] = <PyObject*>aid
    return a


@cython.final
cdef class Ledger:
    """The ledger. `apply` judges a batch of op tuples at `now_ns`; `take_journal` returns the
    redo record of what changed; `snapshot` / `from_snapshot` / `replay` rebuild it."""

    def __cinit__(self):
        self.accounts = []
        self.ceilings = {}
        table_init(&self.recs, 1024)
        table_init(&self.accts, 64)
        self.holds_q.kind = HQ_HOLDS
        self.lots_q.kind = HQ_LOTS
        self.purge_q.heap.kind = HQ_PURGE
        self.expired_log = []
        self.lots_expired_log = []

    def __init__(self, *, retention_ns=86_400_000_000_000):
        if not (isinstance(retention_ns, int) and 0 <= retention_ns <= TTL_NS_MAX):
            raise ValueError("retention_ns must be an int in [0, TTL_NS_MAX]")
        self.retention_ns = retention_ns

    def __dealloc__(self):
        cdef size_t i, cap
        cdef uint64_t* slots
        cdef int part
        cdef Py_ssize_t j
        cdef Rec* r
        for j in range(self.dirty_recs.n):
            r = <Rec*>self.dirty_recs.a[j]
            if r.flags & RF_DEAD:
                rec_free(r)
        for part in range(2):
            slots = table_part(&self.recs, part, &cap)
            if slots != NULL:
                for i in range(cap):
                    if slots[i] != 0:
                        rec_free(slot_rec(slots[i]))
                fl_slots_free(slots, cap * sizeof(uint64_t))
        fl_slots_free(self.accts.slots, (self.accts.mask + 1) * sizeof(uint64_t))
        heap_clear(&self.holds_q)
        heap_clear(&self.lots_q)
        pq_clear(&self.purge_q)
        PyMem_Free(self.jbuf.p)
        PyMem_Free(self.dirty_accts.a)
        PyMem_Free(self.dirty_recs.a)

    def apply(self, ops, now_ns):
        """Judge `ops` in order at `now_ns`; one Result (see result.pxi) per op."""
        cdef Py_ssize_t n, i
        cdef int64_t now
        cdef list results
        # A private tuple: nothing the ops run (a str subclass's __hash__, say) can resize it.
        cdef object seq = ops if type(ops) is tuple else tuple(ops)
        cdef PyObject** items = PySequence_Fast_ITEMS(seq)
        cdef object r
        n = PySequence_Fast_GET_SIZE(seq)
        if n > BATCH_OPS_MAX:
            raise ValueError("batch larger than BATCH_OPS_MAX")
        if not (get_i64(now_ns, &now) and 0 <= now < NOW_NS_LIMIT):
            raise ValueError("now_ns out of range")
        results = PyList_New(n)
        self.replayed_at = None  # made at the first replay (most batches have none)
        # Accounts found by the prefetch of op i (and their id objects), by i % PREFETCH_RING.
        cdef PyObject* ring_acct[PREFETCH_RING]
        cdef PyObject* ring_aid[PREFETCH_RING]
        # The last account prefetch_op found and its id object (alive while `seq` is: the
        # account of that id object for the rest of this apply, accounts never being removed).
        cdef PyObject* last_aid = NULL
        cdef PyObject* last_acct = NULL
        memset(ring_acct, 0, sizeof(ring_acct))
        try:
            for i in range(n):
                if i + PREFETCH_AHEAD < n:
                    ring_acct[(i + PREFETCH_AHEAD) % PREFETCH_RING] = prefetch_op(
                        self, <object>items[i + PREFETCH_AHEAD], &ring_aid[(i + PREFETCH_AHEAD) % PREFETCH_RING],
                        &last_aid, &last_acct)
                # An account found a few ops ago is still that id's account: accounts are never
                # removed, and the op tuple keeps its id object alive (so the pointer is not
                # reused) until apply returns.
                if ring_acct[i % PREFETCH_RING] != NULL:
                    self.hint_aid = ring_aid[i % PREFETCH_RING]
                    self.hint_acct = ring_acct[i % PREFETCH_RING]
                    ring_acct[i % PREFETCH_RING] = NULL
                else:
                    self.hint_aid = NULL
                self.replayed = False
                r = apply_one(self, <object>items[i], now)
                if self.replayed:
                    if self.replayed_at is None:
                        self.replayed_at = [i]
                    else:
                        self.replayed_at.append(i)
                Py_INCREF(r)
                PyList_SET_ITEM(results, i, r)
        finally:
            self.hint_aid = NULL  # the id objects may be freed once apply returns
        if QUOTA_DEBUG:
            check_invariants(self)
        return results

    def replayed_indices(self):
        """Indices, within the last `apply`'s ops, of those answered from a stored result
        (idempotent replays): the engine derives usage records and events only from the rest."""
        return [] if self.replayed_at is None else list(self.replayed_at)

    def take_expired(self):
        """Holds that expired since the last call, in order, by the sweep or when touched:
        `(account_id, reservation_id, on_expire, amount_charged, amount_uncharged, meta)`
        (`on_expire` EXPIRE_COMMIT: committed in full; EXPIRE_RELEASE: released, amounts 0).
        Not persisted: the engine turns them into usage records and events in the same write."""
        out = self.expired_log
        self.expired_log = []
        return out

    def take_expired_lots(self):
        """Lots that expired with unused credit since the last call, in order, however time
        passed for them (an op of the account, the sweep, a view): `(account_id, grant_id,
        amount)`, `amount` being the lot's free part when it expired (what the grant's record
        notes as expired unused; a part earmarked then expires when its hold lets it go, with
        no entry here). Not persisted, like take_expired."""
        out = self.lots_expired_log
        self.lots_expired_log = []
        return out

    def take_journal(self):
        """The redo record of everything changed since the last take (b"" if nothing)."""
        return take_journal(self)

    def snapshot(self):
        """The whole state, in the journal format."""
        return snapshot(self)

    @staticmethod
    def from_snapshot(blob, *, retention_ns=86_400_000_000_000):
        """A ledger with exactly the state of `blob` (ValueError if it is not a valid snapshot)."""
        cdef Ledger led = Ledger(retention_ns=retention_ns)
        replay(led, blob, J_SNAPSHOT)
        pq_settle(&led.purge_q)
        if QUOTA_DEBUG:
            check_invariants(led)
        return led

    def settle_purge_queue(self):
        """Move what `replay` queued for purge out of order into the in-order part of the purge
        queue, where it can (see purge.pxi): call it once after replaying a run of records (the
        engine does, after recovery). Changes no state a view or a result shows."""
        pq_settle(&self.purge_q)

    def replay(self, record):
        """Apply a redo record (state overwrite, no logic re-run). A corrupt or truncated record
        raises ValueError and leaves the ledger unchanged."""
        if len(record) == 0:
            return
        replay(self, record, J_JOURNAL)
        if QUOTA_DEBUG:
            check_invariants(self)

    def account_view(self, account_id, now_ns):
        return account_view(self, account_id, _now(now_ns))

    def lots_view(self, account_id, now_ns):
        return lots_view(self, account_id, _now(now_ns))

    def reservation_view(self, account_id, reservation_id):
        return reservation_view(self, account_id, reservation_id)

    def reservation_meta(self, account_id, reservation_id):
        """`reservation_view(...)["meta"]` without building the view (the server reads it
        for every commit's usage record), or None if there is no such reservation."""
        cdef Account a = lookup(self, account_id)
        cdef Hold* h
        if a is None or not valid_id(reservation_id):
            return None
        h = <Hold*>find_rec(self, a, REC_HOLD, reservation_id)
        if h == NULL:
            return None
        return (<tuple>h.extra)[0] if h.extra != NULL else b""

    def buckets_view(self, account_id, now_ns):
        cdef Account a = lookup(self, account_id)
        return [] if a is None else buckets_view(a, _now(now_ns))

    def has_charge(self, account_id, charge_id):
        """Whether a charge with this id is remembered (its replay returns the stored result)."""
        return has_rec(self, account_id, charge_id, REC_CHARGE)

    def has_grant(self, account_id, grant_id):
        return has_rec(self, account_id, grant_id, REC_GRANT)

    def grant_remaining(self, account_id, grant_id):
        """What is left of the lot the grant made (its `remaining`, earmarks included; 0 once
        the lot is spent or if the grant made none), or None if the ledger has no record of the
        grant. Does not let time pass (lots_view does)."""
        return grant_remaining(self, account_id, grant_id)

    def grant_expired(self, account_id, grant_id):
        """How much of the grant's lot expired unused (its free part when it expired), or None
        if the ledger has no record of the grant."""
        return grant_expired(self, account_id, grant_id)

    def account_ids(self):
        return sorted([(<Account>a).aid for a in self.accounts])

    def accounts_off_terms(self, terms):
        """Accounts whose plan is in `terms` ({plan_id: (max_open_holds, unlimited)}) but whose
        own copy of those terms differs: [(account_id, max_open_holds, unlimited)] as wanted."""
        cdef list out = []
        cdef Account a
        cdef object want
        for a in self.accounts:
            want = terms.get(a.plan_id)
            if want is not None and (a.max_open_holds != want[0] or bool(a.unlimited) != bool(want[1])):
                out.append((a.aid, want[0], bool(want[1])))
        return out

    def plan_counts(self):
        """How many accounts are on each plan id: {plan_id: count}."""
        cdef dict counts = {}
        cdef Account a
        for a in self.accounts:
            counts[a.plan_id] = counts.get(a.plan_id, 0) + 1
        return counts

    def check_invariants(self):
        """Raise LedgerCorrupt if any invariant is broken."""
        check_invariants(self)

    def stats(self):
        """Sizes of the tables and queues (for benchmarks and operators)."""
        return {
            "accounts": len(self.accounts),
            "records": self.recs.n,
            "record_slots": self.recs.mask + 1,
            "record_slots_draining": 0 if self.recs.old == NULL else self.recs.old_mask + 1,
            "open_holds": self.holds_q.n,
            "lot_queue": self.lots_q.n,
            "purge_queue": self.purge_q.n,
            "purge_queue_heap": self.purge_q.heap.n,    # the part out of key order (purge.pxi)
            "seq": self.seq,
            # Slot arrays of 2 MiB and more, mapped on their own (table.pxi): memory that
            # tracemalloc does not see.
            "mapped_bytes": table_mapped_bytes(&self.recs) + table_mapped_bytes(&self.accts),
        }


cdef int64_t _now(object now_ns) except? -1:
    cdef int64_t now
    if not (get_i64(now_ns, &now) and 0 <= now < NOW_NS_LIMIT):
        raise ValueError("now_ns out of range")
    return now
