# Typed declarations of the core: C structs for lots, holds, idempotency records and queues,
# and the cdef classes that own them. The logic lives in the topic files included by _ledger.pyx.

from libc.stdint cimport int64_t, uint64_t, int32_t, uint32_t, uint16_t, uint8_t, int8_t
from cpython.object cimport PyObject


ctypedef struct Earmark:
    int64_t lot_seq             # 0 = unused slot
    int64_t amount


# Common head of every idempotency-carrying record (hold, charge, grant). The id's ASCII bytes
# follow the kind's struct in the same allocation (see rec_rid in table.pxi).
ctypedef struct Rec:
    uint32_t hash               # low 32 bits of the key's hash (its home slot)
    uint8_t kind                # REC_HOLD / REC_CHARGE / REC_GRANT
    uint8_t flags               # RF_DIRTY / RF_DEAD
    uint16_t rlen
    PyObject* acct              # owned ref to its Account
    int64_t seq
    int64_t fp


# A hold's original reserve result (amount_held, expires_ns) once an extend changed them: the
# reserve's replay answers with it. Allocated by the first extend that changes anything (rare).
ctypedef struct HoldOrig:
    int64_t amount0
    int64_t expires0


# What backs an open hold (state RES_HELD): lot earmarks, then overdraft room.
ctypedef struct HoldOpen:
    int64_t overdraft
    Earmark mark0
    Earmark* more               # earmarks beyond mark0 (Hold.nmore of them)


# The stored result of a settled hold (any other state): what a replayed commit or release
# answers. Shares its bytes with HoldOpen, which settlement empties first (free_earmarks). A
# commit's amount_released is not stored: see hold_released.
ctypedef struct HoldDone:
    int64_t charged             # commit: amount_charged; release: amount_released
    int64_t uncharged
    int64_t avail               # available_after of the stored commit / release result
    int64_t commit_fp           # fingerprint of the commit that settled it (0: none)


ctypedef union HoldBody:
    HoldOpen o                  # while state == RES_HELD
    HoldDone d                  # once settled: committed, released or expired


# One allocation per reservation, open or settled (a settled one is kept for its retention so
# that retries get their original results); the id's bytes follow the struct.
ctypedef struct Hold:
    Rec r
    int64_t amount
    int64_t expires_ns
    int64_t avail0              # available_after of the stored reserve result
    int32_t qidx                # position in the hold queue while open, in the purge queue once
                                # settled (that entry's time is the purge time); -1 if none
    uint8_t state
    uint8_t on_expire
    uint8_t hflags              # HF_UNBACKED / HF_AUTO / HF_LATE
    uint8_t nmore               # earmarks beyond mark0 (open holds)
    HoldBody u
    PyObject* extra             # NULL, or tuple (meta bytes, bucket_taken dict or None)
    HoldOrig* orig              # NULL unless an extend changed amount or expiry


# Idempotency record of a grant (amount unused) or a charge.
ctypedef struct Idem:
    Rec r
    int64_t amount
    int64_t avail
    int64_t purge_ns
    int32_t pidx
    int32_t pad


# A credit lot. Its id is its grant's id, and the grant record lives as long as the lot (the
# purge sweep defers it), so the lot points at that record's id bytes instead of owning a str.
ctypedef struct Lot:
    Idem* grant                 # borrowed: the grant record that made this lot
    int64_t remaining
    int64_t earmarked
    int64_t expires_ns          # 0 = never
    int64_t seq
    int32_t priority
    uint8_t category
    uint8_t expired


ctypedef struct HEnt:
    int64_t t
    int64_t seq
    void* p


ctypedef struct Heap:
    HEnt* a
    Py_ssize_t n                # live entries
    Py_ssize_t cap
    int kind                    # HQ_LOTS / HQ_HOLDS / HQ_PURGE
    Py_ssize_t len              # entries in a: n plus HQ_HOLDS's tombstones (see heap.pxi)


# The purge queue (purge.pxi): entries in key order in a FIFO ring, the rest in a heap.
ctypedef struct PurgeQ:
    Heap heap                   # entries that came out of key order (kind HQ_PURGE)
    HEnt* ring                  # entry with ticket T at ring[T & mask], tickets head_t ..
    size_t mask                 # head_t + len - 1 in key order
    int64_t head_t              # the ticket of the ring's first entry
    size_t len                  # ring entries, tombstones (p NULL) included
    Py_ssize_t n                # live entries, ring and heap


ctypedef struct Table:
    uint64_t* slots             # Rec pointer (48 bits) | hash tag (top 16 bits); 0 = empty
    size_t mask
    size_t n                    # entries in slots and old
    # While the table grows (the record table only, see table.pxi), the previous slots are
    # drained into the new ones a few clusters per insert instead of all at once.
    uint64_t* old               # the slots being drained, or NULL
    size_t old_mask
    size_t drain_at             # the next old slot to drain (cyclic, from drain_end + 1)
    size_t drain_left           # old slots still to drain


ctypedef struct PtrVec:
    void** a
    Py_ssize_t n
    Py_ssize_t cap


ctypedef struct Buf:
    char* p
    Py_ssize_t n
    Py_ssize_t cap
    PyObject* obj               # NULL: p is PyMem memory; else p is this bytes object's storage


ctypedef struct BSpec:
    PyObject* name              # borrowed from the op tuple
    int64_t capacity
    int64_t refill_amount
    int64_t period_ns
    int64_t cost


cdef class Account:
    cdef object aid
    cdef object plan_id
    cdef dict buckets           # None until the first bucket: name -> Bucket
    cdef Lot* lots              # sorted in consumption order
    cdef int64_t credit_limit
    cdef int64_t debt
    cdef int64_t consumed
    cdef int64_t expired
    cdef int64_t granted
    cdef int64_t uncollected
    cdef int64_t held
    cdef int64_t ovd_held
    cdef uint16_t max_open_holds    # 16 bits (HOLDS_PER_ACCOUNT_MAX) keep Account at 128 bytes
    cdef uint16_t open_holds
    cdef uint16_t nlots
    cdef uint16_t lcap
    cdef uint8_t status
    cdef uint8_t unlimited
    cdef uint8_t dirty          # D_CORE / D_BUCKETS: queued for the journal
    cdef uint8_t flags          # AF_OVER: debt + overdraft held above credit_limit (see ceilings)
    cdef uint32_t ahash         # hash of aid's bytes (rec_hash's account part and the account
                                # index's slot; aid never changes)


cdef class Bucket:
    cdef int64_t capacity
    cdef int64_t refill_amount
    cdef int64_t period_ns
    cdef int64_t tokens
    cdef int64_t last_ns


cdef class Ledger:
    cdef Buf jbuf               # the journal's write buffer (writes straight into the record)
    cdef Py_ssize_t jhint       # size of the last journal record (first allocation guess)
    cdef list accounts          # every Account, in creation order (snapshots follow it)
    cdef Table accts            # the accounts by their ids' bytes (see table.pxi): the lookup
    cdef readonly int64_t retention_ns
    cdef int64_t seq
    cdef int64_t seq_journaled
    cdef Table recs
    cdef Heap holds_q
    cdef Heap lots_q
    cdef PurgeQ purge_q
    cdef PtrVec dirty_accts
    cdef PtrVec dirty_recs
    cdef dict ceilings          # account -> debt + overdraft ceiling after a credit-limit cut
    cdef bint replayed          # the op being applied was answered from a stored result
    cdef list replayed_at       # indices of such ops in the last apply
    cdef list expired_log       # holds expired since the last take_expired(), see there
    cdef list lots_expired_log  # lots expired with unused credit since take_expired_lots()
    cdef PyObject* hint_aid     # during apply: the current op's account id object, whose
    cdef PyObject* hint_acct    # account (borrowed) the prefetch found already (acct_get)


# One op's result (result.pxi): what the result tuple of README.md holds, in C. Items are ints
# (int64), bools (bit k of `bools` set: v[k] is 0 or 1) and at most one str (or None), item
# `text_at`. The server's wire encoder (quota_server/_wire.pyx) reads these fields directly.
cdef class Result:
    cdef int64_t v[7]
    cdef PyObject* text         # owned; NULL unless text_at >= 0
    cdef uint8_t n              # number of items
    cdef uint8_t bools
    cdef int8_t text_at         # index of the str item, -1 if none

cdef object result_item(Result r, Py_ssize_t k)
