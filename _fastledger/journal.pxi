# The journal: the new state of every entity an apply touched, as one compact binary redo
# record, and the snapshot (the same format with every entity).
#
# Layout (little-endian):
#   header   magic b"FLDG", u8 version (1), u8 kind (1 journal, 2 snapshot), u16 0, i64 seq
#   entries  u8 tag, then the entity (see the put_* functions; strings are u8 length + ASCII)
#   trailer  u32 entry count, u64 checksum of every byte before it


cdef enum:
    J_VERSION = 1
    J_JOURNAL = 1
    J_SNAPSHOT = 2
    J_HEADER = 16
    J_TRAILER = 12

    T_ACCOUNT = 1
    T_BUCKETS = 2
    T_HOLD = 3
    T_CHARGE = 4
    T_GRANT = 5
    T_DELETE = 6

cdef const char* J_MAGIC = b"FLDG"


cdef extern from "Python.h":
    int _PyBytes_Resize(PyObject** b, Py_ssize_t n) except -1
    PyObject* new_bytes "PyBytes_FromStringAndSize"(const char* s, Py_ssize_t n) except NULL


cdef inline char* buf_room(Buf* b, Py_ssize_t n) except NULL:
    """Make room for n more bytes; returns the write position."""
    if b.n + n <= b.cap:
        return b.p + b.n
    return buf_grow(b, n)


cdef char* buf_grow(Buf* b, Py_ssize_t n) except NULL:
    cdef Py_ssize_t cap
    cdef char* p
    if b.n + n > b.cap:
        cap = b.cap * 2 if b.cap else 65536
        while cap < b.n + n:
            cap *= 2
        if b.obj != NULL:
            # On failure _PyBytes_Resize frees the object and sets b.obj to NULL.
            _PyBytes_Resize(&b.obj, cap)
            b.p = PyBytes_AS_STRING(<object>b.obj)
            b.cap = cap
            return b.p + b.n
        p = <char*>PyMem_Realloc(b.p, cap)
        if p == NULL:
            raise MemoryError()
        b.p = p
        b.cap = cap
    return b.p + b.n


cdef inline char* put8(char* c, uint8_t v) noexcept nogil:
    c[0] = <char>v
    return c + 1


cdef inline char* put16(char* c, uint16_t v) noexcept nogil:
    c[0] = <char>(v & 0xff)
    c[1] = <char>(v >> 8)
    return c + 2


cdef inline char* put32(char* c, int32_t v) noexcept nogil:
    fl_put32(c, v)
    return c + 4


cdef inline char* put64(char* c, int64_t v) noexcept nogil:
    fl_put64(c, v)
    return c + 8


cdef inline char* putraw(char* c, const char* p, Py_ssize_t n) noexcept nogil:
    c[0] = <char><uint8_t>n
    fl_copy_id(c + 1, p, n)
    return c + 1 + n


cdef inline char* putstr(char* c, object s) noexcept:
    return putraw(c, id_data(s), PyUnicode_GET_LENGTH(s))


cdef int put_account(Buf* b, Ledger L, Account a) except -1:
    cdef char* c = buf_room(b, 1 + 2 * 129 + 3 + 8 + 9 * 8 + 2 + a.nlots * (129 + 6 + 32))
    cdef char* start = c
    cdef Lot* l
    cdef int i
    c = put8(c, T_ACCOUNT)
    c = putstr(c, a.aid)
    c = putstr(c, a.plan_id)
    c = put8(c, a.status)
    c = put8(c, a.unlimited)
    c = put8(c, a.flags)
    c = put32(c, a.max_open_holds)
    c = put32(c, a.open_holds)
    c = put64(c, a.credit_limit)
    c = put64(c, a.debt)
    c = put64(c, a.consumed)
    c = put64(c, a.expired)
    c = put64(c, a.granted)
    c = put64(c, a.uncollected)
    c = put64(c, a.held)
    c = put64(c, a.ovd_held)
    c = put64(c, L.ceilings.get(a, 0) if a.flags & AF_OVER else 0)
    c = put16(c, a.nlots)
    for i in range(a.nlots):
        l = &a.lots[i]
        c = putraw(c, rec_rid(&l.grant.r), l.grant.r.rlen)
        c = put8(c, l.category)
        c = put8(c, l.expired)
        c = put32(c, l.priority)
        c = put64(c, l.remaining)
        c = put64(c, l.earmarked)
        c = put64(c, l.expires_ns)
        c = put64(c, l.seq)
    b.n += c - start
    return 0


cdef int put_buckets(Buf* b, Account a) except -1:
    cdef Py_ssize_t n = 0 if a.buckets is None else len(a.buckets)
    cdef char* c = buf_room(b, 1 + 129 + 1 + n * (129 + 40))
    cdef char* start = c
    cdef Bucket bk
    c = put8(c, T_BUCKETS)
    c = putstr(c, a.aid)
    c = put8(c, <uint8_t>n)
    if n:
        for name, bk in a.buckets.items():
            c = putstr(c, name)
            c = put64(c, bk.capacity)
            c = put64(c, bk.refill_amount)
            c = put64(c, bk.period_ns)
            c = put64(c, bk.tokens)
            c = put64(c, bk.last_ns)
    b.n += c - start
    return 0


cdef int put_hold(Buf* b, Hold* h, PurgeQ* purge_q) except -1:
    """A hold as its journal entry. The format predates the HoldOpen/HoldDone union: an open hold
    is written with its earmarks, a settled one with none and overdraft 0, and the settlement
    block (present once settled or extended) has the purge time from the hold's purge entry."""
    cdef object meta = b""
    cdef object taken = None
    cdef bint held = h.state == RES_HELD
    cdef Py_ssize_t nmarks = ((1 if h.u.o.mark0.lot_seq else 0) + h.nmore) if held else 0
    cdef Py_ssize_t ntaken, mlen
    cdef char* c
    cdef char* start
    cdef int i
    if h.extra != NULL:
        meta = (<tuple>h.extra)[0]
        taken = (<tuple>h.extra)[1]
    mlen = PyBytes_GET_SIZE(meta)
    ntaken = 0 if taken is None else len(taken)
    c = buf_room(b, 1 + 2 * 129 + 6 * 8 + 3 + 2 + nmarks * 16 + 2 + mlen + 1
                 + ntaken * (129 + 8) + 1 + 8 * 8 + 3)
    start = c
    c = put8(c, T_HOLD)
    c = putstr(c, (<Account>h.r.acct).aid)
    c = putraw(c, rec_rid(&h.r), h.r.rlen)
    c = put64(c, h.r.seq)
    c = put64(c, h.r.fp)
    c = put64(c, h.amount)
    c = put64(c, h.expires_ns)
    c = put64(c, h.avail0)
    c = put8(c, h.state)
    c = put8(c, h.on_expire)
    c = put8(c, h.hflags & (HF_UNBACKED | HF_AUTO))
    c = put64(c, h.u.o.overdraft if held else 0)
    c = put16(c, <uint16_t>nmarks)
    for i in range(nmarks):
        c = put64(c, hold_mark(h, i).lot_seq)
        c = put64(c, hold_mark(h, i).amount)
    c = put16(c, <uint16_t>mlen)
    if mlen:
        memcpy(c, PyBytes_AS_STRING(meta), mlen)
        c += mlen
    c = put8(c, <uint8_t>ntaken)
    if ntaken:
        for name, cost in taken.items():
            c = putstr(c, name)
            c = put64(c, cost)
    c = put8(c, 0 if held and h.orig == NULL else 1)
    if held and h.orig != NULL:
        c = put64(c, h.orig.amount0)
        c = put64(c, h.orig.expires0)
        memset(c, 0, 6 * 8 + 2)     # commit_fp .. purge_ns, result, late: none yet
        c += 6 * 8 + 2
        c = put8(c, 1)
    elif not held:
        c = put64(c, h.orig.amount0 if h.orig != NULL else 0)
        c = put64(c, h.orig.expires0 if h.orig != NULL else 0)
        c = put64(c, h.u.d.commit_fp)
        c = put64(c, h.u.d.charged)
        c = put64(c, hold_released(h))
        c = put64(c, h.u.d.uncharged)
        c = put64(c, h.u.d.avail)
        c = put64(c, pq_time(purge_q, &h.r))
        c = put8(c, settle_result(h.state))
        c = put8(c, 1 if h.hflags & HF_LATE else 0)
        c = put8(c, 1 if h.orig != NULL else 0)
    b.n += c - start
    return 0


cdef int put_idem(Buf* b, Idem* g) except -1:
    cdef char* c = buf_room(b, 1 + 2 * 129 + 5 * 8)
    cdef char* start = c
    c = put8(c, T_CHARGE if g.r.kind == REC_CHARGE else T_GRANT)
    c = putstr(c, (<Account>g.r.acct).aid)
    c = putraw(c, rec_rid(&g.r), g.r.rlen)
    c = put64(c, g.r.seq)
    c = put64(c, g.r.fp)
    c = put64(c, g.amount)
    c = put64(c, g.avail)
    c = put64(c, g.purge_ns)
    b.n += c - start
    return 0


cdef int put_delete(Buf* b, Rec* r) except -1:
    cdef char* c = buf_room(b, 2 + 2 * 129)
    cdef char* start = c
    c = put8(c, T_DELETE)
    c = put8(c, r.kind)
    c = putstr(c, (<Account>r.acct).aid)
    c = putraw(c, rec_rid(r), r.rlen)
    b.n += c - start
    return 0


cdef inline uint8_t settle_result(uint8_t state) noexcept:
    """The journal's `result` byte of a settled hold: what its stored result answers."""
    if state == RES_COMMITTED:
        return AUX_COMMIT
    if state == RES_RELEASED:
        return AUX_RELEASE
    return AUX_NONE             # expired, not yet settled by a late commit or a release


cdef int put_rec(Buf* b, Rec* r, PurgeQ* purge_q) except -1:
    if r.kind == REC_HOLD:
        return put_hold(b, <Hold*>r, purge_q)
    return put_idem(b, <Idem*>r)


cdef int put_header(Buf* b, uint8_t kind, int64_t seq) except -1:
    cdef char* c = buf_room(b, J_HEADER)
    memcpy(c, J_MAGIC, 4)
    c[4] = J_VERSION
    c[5] = <char>kind
    c[6] = 0
    c[7] = 0
    fl_put64(c + 8, seq)
    b.n += J_HEADER
    return 0


cdef bytes take_journal(Ledger L):
    cdef Buf* b = &L.jbuf
    cdef uint32_t count = 0
    cdef Py_ssize_t i, cap
    cdef char* c
    cdef bytes out = None
    cdef Account a
    cdef Rec* r
    if L.dirty_accts.n == 0 and L.dirty_recs.n == 0 and L.seq == L.seq_journaled:
        return b""
    # The record is written straight into a bytes object (no copy at the end), allocated from
    # the last record's size and trimmed to its length when done.
    cap = L.jhint + (L.jhint >> 1) + 4096
    b.obj = new_bytes(NULL, cap)   # a new reference, owned by b.obj until handed to `out`
    b.p = PyBytes_AS_STRING(<object>b.obj)
    b.cap = cap
    b.n = 0
    try:
        put_header(b, J_JOURNAL, L.seq)
        for i in range(L.dirty_accts.n):
            a = <Account>L.dirty_accts.a[i]
            if a.dirty & D_CORE:
                put_account(b, L, a)
                count += 1
            if a.dirty & D_BUCKETS:
                put_buckets(b, a)
                count += 1
        for i in range(L.dirty_recs.n):
            r = <Rec*>L.dirty_recs.a[i]
            if r.flags & RF_DEAD:
                put_delete(b, r)
            else:
                put_rec(b, r, &L.purge_q)
            count += 1
        c = buf_room(b, J_TRAILER)
        fl_put32(c, <int32_t>count)
        b.n += 4
        fl_put64(b.p + b.n, <int64_t>fl_checksum(b.p, b.n))
        b.n += 8
        _PyBytes_Resize(&b.obj, b.n)
        out = <bytes>b.obj
        Py_DECREF(out)              # hand the buffer's reference over to `out`
    finally:
        if b.obj != NULL and out is None:
            Py_DECREF(<object>b.obj)
        b.obj = NULL
        b.p = NULL
        b.cap = 0
        b.n = 0
    L.jhint = PyBytes_GET_SIZE(out)
    clear_dirty(L)
    L.seq_journaled = L.seq
    return out


cdef void clear_dirty(Ledger L) noexcept:
    cdef Py_ssize_t i
    cdef Rec* r
    for i in range(L.dirty_accts.n):
        (<Account>L.dirty_accts.a[i]).dirty = 0
    L.dirty_accts.n = 0
    for i in range(L.dirty_recs.n):
        r = <Rec*>L.dirty_recs.a[i]
        r.flags &= ~RF_DIRTY
        if r.flags & RF_DEAD:
            rec_free(r)
    L.dirty_recs.n = 0


ctypedef struct SeqRec:
    uint64_t key                # the record's seq, minus the smallest seq
    Rec* r


cdef SeqRec* sort_by_seq(SeqRec* a, SeqRec* tmp, size_t n) noexcept nogil:
    """Stable LSD radix sort of a[:n] by key, 11 bits a pass and only the passes the largest key
    needs; the result is in a or in tmp (returned)."""
    cdef size_t count[2048]
    cdef size_t i, c, total
    cdef uint64_t top = 0
    cdef int shift = 0
    cdef SeqRec* t
    for i in range(n):
        top |= a[i].key
    while shift < 64 and (top >> shift) != 0:
        memset(count, 0, sizeof(count))
        for i in range(n):
            count[(a[i].key >> shift) & 2047] += 1
        total = 0
        for i in range(2048):
            c = count[i]
            count[i] = total
            total += c
        for i in range(n):
            c = (a[i].key >> shift) & 2047
            tmp[count[c]] = a[i]
            count[c] += 1
        t = a
        a = tmp
        tmp = t
        shift += 11
    return a


cdef bytes snapshot(Ledger L):
    cdef Buf b
    cdef uint32_t count = 0
    cdef Account a
    cdef SeqRec* recs = NULL
    cdef SeqRec* order
    cdef size_t i, cap, k = 0, n = L.recs.n
    cdef uint64_t* slots
    cdef int part
    cdef int64_t lo = INT64_MAX
    cdef Rec* r
    cdef char* c
    cdef bytes out = None
    # Written straight into a bytes object, as take_journal does; the first size is a guess.
    b.cap = 65536 + 64 * (len(L.accounts) + <Py_ssize_t>n)
    b.obj = new_bytes(NULL, b.cap)
    b.p = PyBytes_AS_STRING(<object>b.obj)
    b.n = 0
    try:
        put_header(&b, J_SNAPSHOT, L.seq)
        for a in L.accounts:
            put_account(&b, L, a)
            count += 1
            if a.buckets:
                put_buckets(&b, a)
                count += 1
        # The records in seq order (seqs are unique; a stable sort either way).
        recs = <SeqRec*>PyMem_Malloc(2 * (n + 1) * sizeof(SeqRec))
        if recs == NULL:
            raise MemoryError()
        for part in range(2):
            slots = table_part(&L.recs, part, &cap)
            for i in range(cap):
                if slots[i] != 0:
                    r = slot_rec(slots[i])
                    recs[k].key = <uint64_t>r.seq
                    recs[k].r = r
                    lo = i64min(lo, r.seq)
                    k += 1
        for i in range(k):
            recs[i].key -= <uint64_t>lo
        order = sort_by_seq(recs, recs + n + 1, k)
        for i in range(k):
            put_rec(&b, order[i].r, &L.purge_q)
            count += 1
        c = buf_room(&b, J_TRAILER)
        fl_put32(c, <int32_t>count)
        b.n += 4
        fl_put64(b.p + b.n, <int64_t>fl_checksum(b.p, b.n))
        b.n += 8
        _PyBytes_Resize(&b.obj, b.n)
        out = <bytes>b.obj
        Py_DECREF(out)              # hand the buffer's reference over to `out`
    finally:
        PyMem_Free(recs)
        if b.obj != NULL and out is None:
            Py_DECREF(<object>b.obj)
    return out
