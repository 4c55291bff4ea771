# One open-addressing hash table (linear probing, backward-shift deletion) holds every
# reservation, charge record and grant record, keyed by (account, kind, id). Records are C
# structs with the id's bytes stored inline: no Python object per record. A slot is the record
# pointer with 16 more bits of the hash in its top bits, so a probe rarely touches a record
# that is not the one looked for.

cdef extern from *:
    """
    #define FL_PTR_MASK ((uint64_t)0x0000FFFFFFFFFFFFULL)
    """
    const uint64_t PTR_MASK "FL_PTR_MASK"


cdef inline size_t rec_size(uint8_t kind) noexcept nogil:
    return sizeof(Hold) if kind == REC_HOLD else sizeof(Idem)


cdef inline char* rec_rid(Rec* r) noexcept nogil:
    return (<char*>r) + rec_size(r.kind)


cdef inline object rec_rid_str(Rec* r):
    return PyUnicode_FromStringAndSize(rec_rid(r), r.rlen)


cdef inline uint32_t acct_hash(const char* aid, Py_ssize_t n) noexcept nogil:
    """The account's part of rec_hash (new_account caches it as Account.ahash)."""
    return <uint32_t>fl_hash(aid, <size_t>n, 0x51ed27)


cdef inline uint64_t rec_hash_ah(uint64_t ah, uint8_t kind, const char* rid, Py_ssize_t rlen) noexcept nogil:
    return fl_hash(rid, <size_t>rlen, (ah << 8) ^ kind)


cdef inline uint64_t rec_hash(Account a, uint8_t kind, const char* rid, Py_ssize_t rlen) noexcept:
    return rec_hash_ah(a.ahash, kind, rid, rlen)


cdef inline Rec* slot_rec(uint64_t s) noexcept nogil:
    return <Rec*>(s & PTR_MASK)


cdef enum:
    # While the record table grows, each insert first drains at least this many of the
    # previous slots (whole clusters) into the new ones: done after (old capacity / 8) inserts,
    # long before the new table is half full (old capacity / 2 more inserts).
    DRAIN_SLOTS = 8
    DRAIN_PENDING = 32          # records table_drain prefetches before placing them
    DRAIN_PREFETCH = 16         # old slots after a drain step whose records it prefetches


cdef extern from *:
    """
    #include <sys/mman.h>
    /* Slot arrays of 2 MiB and more are mapped on their own, asking for transparent huge pages:
       a probe lands anywhere in them, and with 4 KiB pages nearly every probe of a table
       larger than the TLB's reach also walked the page tables. Zeroed by the kernel. */
    #define FL_HUGE_MIN ((size_t)2 << 20)
    static void *fl_slots_alloc(size_t n) {
        if (n < FL_HUGE_MIN) return PyMem_Calloc(n, 1);
        void *p = mmap(NULL, n, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
    #ifdef MADV_HUGEPAGE
        madvise(p, n, MADV_HUGEPAGE);
    #endif
        return p;
    }
    static void fl_slots_free(void *p, size_t n) {
        if (p == NULL) return;
        if (n < FL_HUGE_MIN) PyMem_Free(p);
        else munmap(p, n);
    }
    """
    void* fl_slots_alloc(size_t n) nogil
    void fl_slots_free(void* p, size_t n) nogil
    const size_t FL_HUGE_MIN


cdef size_t table_mapped_bytes(Table* t) noexcept:
    """Bytes of this table's slot arrays that fl_slots_alloc mapped on their own (which
    tracemalloc, seeing only the PyMem allocator, does not count)."""
    cdef size_t total = 0, n
    n = (t.mask + 1) * sizeof(uint64_t)
    if t.slots != NULL and n >= FL_HUGE_MIN:
        total += n
    n = (t.old_mask + 1) * sizeof(uint64_t)
    if t.old != NULL and n >= FL_HUGE_MIN:
        total += n
    return total


cdef int table_init(Table* t, size_t cap) except -1:
    t.slots = <uint64_t*>fl_slots_alloc(cap * sizeof(uint64_t))
    if t.slots == NULL:
        raise MemoryError()
    t.mask = cap - 1
    t.n = 0
    t.old = NULL
    t.old_mask = 0
    t.drain_at = 0
    t.drain_left = 0
    return 0


cdef inline uint64_t* table_part(Table* t, int part, size_t* cap) noexcept:
    """Part 0 is the current slots, part 1 the slots being drained (NULL, cap 0 if none): the
    two arrays every walk over all the records must visit."""
    if part == 0:
        cap[0] = t.mask + 1
        return t.slots
    cap[0] = 0 if t.old == NULL else t.old_mask + 1
    return t.old


cdef inline Rec* probe_find(uint64_t* slots, size_t mask, Account a, uint8_t kind, const char* rid,
                            Py_ssize_t rlen, uint64_t h) noexcept:
    cdef size_t i = h & mask
    cdef uint64_t tag = h >> 48
    cdef uint64_t s
    cdef Rec* r
    while True:
        s = slots[i]
        if s == 0:
            return NULL
        if (s >> 48) == tag:
            r = slot_rec(s)
            if (r.acct == <PyObject*>a and r.kind == kind and r.rlen == rlen
                    and fl_id_eq(rec_rid(r), rid, rlen)):
                return r
        i = (i + 1) & mask


cdef Rec* table_find(Table* t, Account a, uint8_t kind, const char* rid, Py_ssize_t rlen,
                     uint64_t h) noexcept:
    cdef Rec* r = probe_find(t.slots, t.mask, a, kind, rid, rlen, h)
    if r == NULL and t.old != NULL:
        r = probe_find(t.old, t.old_mask, a, kind, rid, rlen, h)
    return r


cdef Rec* probe_find_ids(uint64_t* slots, size_t mask, uint64_t h, uint8_t kind, const char* aid,
                         Py_ssize_t alen, const char* rid, Py_ssize_t rlen) noexcept:
    cdef size_t i = h & mask
    cdef uint64_t tag = h >> 48
    cdef uint64_t s
    cdef Rec* r
    cdef object owner
    while True:
        s = slots[i]
        if s == 0:
            return NULL
        if (s >> 48) == tag:
            r = slot_rec(s)
            if r.kind == kind and r.rlen == rlen and memcmp(rec_rid(r), rid, rlen) == 0:
                owner = (<Account>r.acct).aid
                if PyUnicode_GET_LENGTH(owner) == alen and memcmp(id_data(owner), aid, alen) == 0:
                    return r
        i = (i + 1) & mask


cdef Rec* table_find_ids(Table* t, uint8_t kind, const char* aid, Py_ssize_t alen, const char* rid,
                         Py_ssize_t rlen) noexcept:
    """table_find by the account's id instead of the account object (from_snapshot: no lookup)."""
    cdef uint64_t h = rec_hash_ah(acct_hash(aid, alen), kind, rid, rlen)
    cdef Rec* r = probe_find_ids(t.slots, t.mask, h, kind, aid, alen, rid, rlen)
    if r == NULL and t.old != NULL:
        r = probe_find_ids(t.old, t.old_mask, h, kind, aid, alen, rid, rlen)
    return r


cdef inline void table_place(Table* t, uint64_t s) noexcept:
    cdef size_t i = slot_rec(s).hash & t.mask
    while t.slots[i] != 0:
        i = (i + 1) & t.mask
    t.slots[i] = s


cdef void table_drain(Table* t, size_t budget) noexcept:
    """Move at least `budget` of the old slots into the current ones, ending just after an empty
    slot; frees the old slots once all are moved.

    Why whole clusters: what is left of the old slots must stay a valid linear-probing table
    (lookups and removals still go there), and a record's probe from its home never crosses an
    empty slot. Draining starts just after an empty slot and each step ends just after one, so
    no record left behind has its home in the emptied part. Removals there (backward shift)
    move records only within their own cluster, all of it still ahead of `drain_at`.

    Placing a record reads its hash from the record, a memory miss on a table larger than the
    caches; so the records of a step are prefetched together (their misses overlap instead of
    adding up), and so are those the next step will move (they load while the ops in between
    run)."""
    cdef uint64_t* old = t.old
    cdef size_t i = t.drain_at
    cdef size_t done = 0, npend = 0, k
    cdef uint64_t s
    cdef uint64_t pend[DRAIN_PENDING]
    while t.drain_left:
        s = old[i]
        if s != 0:
            old[i] = 0
            fl_prefetch(slot_rec(s))
            pend[npend] = s
            npend += 1
            if npend == DRAIN_PENDING:
                table_place_all(t, pend, npend)
                npend = 0
        i = (i + 1) & t.old_mask
        t.drain_left -= 1
        done += 1
        if s == 0 and done >= budget:
            break
    table_place_all(t, pend, npend)
    t.drain_at = i
    if t.drain_left == 0:
        fl_slots_free(old, (t.old_mask + 1) * sizeof(uint64_t))
        t.old = NULL
        t.old_mask = 0
        return
    for k in range(DRAIN_PREFETCH):
        s = old[(i + k) & t.old_mask]
        if s != 0:
            fl_prefetch(slot_rec(s))


cdef inline void table_place_all(Table* t, uint64_t* pend, size_t n) noexcept:
    """table_place each of `pend[:n]` (records already prefetched), their first probed slots
    prefetched first."""
    cdef size_t k
    for k in range(n):
        fl_prefetch(&t.slots[slot_rec(pend[k]).hash & t.mask])
    for k in range(n):
        table_place(t, pend[k])


cdef int table_grow(Table* t) except -1:
    """Double the capacity; the records move over during the next inserts (table_drain)."""
    cdef uint64_t* old
    cdef size_t old_mask, n, e = 0
    if t.old != NULL:               # not expected (see DRAIN_SLOTS): finish the last growth
        table_drain(t, <size_t>-1)
    old = t.slots
    old_mask = t.mask
    n = t.n
    table_init(t, (old_mask + 1) * 2)
    t.n = n
    while old[e] != 0:              # at most half full: an empty slot exists
        e += 1
    t.old = old
    t.old_mask = old_mask
    t.drain_at = (e + 1) & old_mask  # slot e, empty, is the last one drained
    t.drain_left = old_mask + 1
    return 0


cdef int table_resize(Table* t, size_t cap) except -1:
    """Move every record into `cap` slots at once (from_snapshot's sizing; no growth draining)."""
    cdef uint64_t* old
    cdef size_t old_cap, i, n
    if t.old != NULL:
        table_drain(t, <size_t>-1)
    old = t.slots
    old_cap = t.mask + 1
    n = t.n
    table_init(t, cap)
    for i in range(old_cap):
        if old[i] != 0:
            table_place(t, old[i])
    t.n = n
    fl_slots_free(old, old_cap * sizeof(uint64_t))
    return 0


cdef int table_reserve(Table* t, size_t n) except -1:
    """Room for n records in all without growing on the way (from_snapshot sizes the table)."""
    cdef size_t cap = t.mask + 1
    while n * 2 > cap:  # table_insert's rule: at most half full
        cap *= 2
    if cap > t.mask + 1:
        table_resize(t, cap)
    return 0


cdef int table_insert(Table* t, Rec* r, uint64_t h) except -1:
    """Insert a record whose key is not in the table."""
    if (<uint64_t>r) & ~PTR_MASK:
        raise SystemError("a record address does not fit in 48 bits")
    if t.old != NULL:
        table_drain(t, DRAIN_SLOTS)
    # At most half full: a reserve's lookup of a new id probes until an empty slot, and with
    # linear probing that run grows fast past one half (8 bytes a slot, small next to a record).
    # Growing moves no record at once (a stop of the whole server for seconds at millions of
    # records); the inserts that follow drain the old slots into the new ones.
    if (t.n + 1) * 2 > t.mask + 1:
        table_grow(t)
    table_place(t, (<uint64_t>r) | ((h >> 48) << 48))
    t.n += 1
    return 0


cdef bint probe_remove(uint64_t* slots, size_t mask, Rec* r) noexcept:
    """Remove r from these slots by backward shift; False if it is not there."""
    cdef size_t i = r.hash & mask
    cdef size_t j, k
    while slot_rec(slots[i]) != r:
        if slots[i] == 0:
            return False
        i = (i + 1) & mask
    j = i
    while True:
        j = (j + 1) & mask
        if slots[j] == 0:
            break
        k = slot_rec(slots[j]).hash & mask
        # Leave slot j alone if its home k lies cyclically in (i, j].
        if (i <= j and i < k <= j) or (i > j and (k > i or k <= j)):
            continue
        slots[i] = slots[j]
        i = j
    slots[i] = 0
    return True


cdef void table_remove(Table* t, Rec* r) noexcept:
    if not probe_remove(t.slots, t.mask, r):
        probe_remove(t.old, t.old_mask, r)      # still in the slots being drained
    t.n -= 1


cdef inline Rec* rec_new(Ledger L, Account a, uint8_t kind, object rid, uint64_t h, int64_t seq,
                         int64_t fp) except NULL:
    return rec_new_raw(L, a, kind, id_data(rid), PyUnicode_GET_LENGTH(rid), h, seq, fp)


cdef Rec* rec_new_raw(Ledger L, Account a, uint8_t kind, const char* rid, Py_ssize_t rlen, uint64_t h,
                      int64_t seq, int64_t fp) except NULL:
    cdef size_t size = rec_size(kind)
    cdef Rec* r = <Rec*>PyMem_Malloc(size + rlen)
    if r == NULL:
        raise MemoryError()
    # Constant sizes, so the compiler clears inline instead of calling memset.
    if kind == REC_HOLD:
        memset(r, 0, sizeof(Hold))
    else:
        memset(r, 0, sizeof(Idem))
    fl_copy_id((<char*>r) + size, rid, rlen)
    r.hash = <uint32_t>h
    r.kind = kind
    r.rlen = <uint16_t>rlen
    r.acct = <PyObject*>a
    Py_INCREF(a)
    r.seq = seq
    r.fp = fp
    if kind == REC_HOLD:
        (<Hold*>r).qidx = -1
    else:
        (<Idem*>r).pidx = -1
    try:
        table_insert(&L.recs, r, h)
    except BaseException:
        rec_free(r)
        raise
    return r


cdef inline void hold_set_extra(Hold* h, object meta, object taken) noexcept:
    """Keep the hold's meta bytes and bucket takes (NULL when both are empty)."""
    cdef object extra = (meta, taken)
    Py_INCREF(extra)
    h.extra = <PyObject*>extra


cdef void hold_clear_parts(Hold* h) noexcept:
    if h.state == RES_HELD:     # else u is a HoldDone, not earmarks
        PyMem_Free(h.u.o.more)
        h.u.o.more = NULL
        h.nmore = 0
    Py_XDECREF(h.extra)
    h.extra = NULL
    PyMem_Free(h.orig)
    h.orig = NULL


cdef void rec_free(Rec* r) noexcept:
    if r.kind == REC_HOLD:
        hold_clear_parts(<Hold*>r)
    Py_XDECREF(r.acct)
    PyMem_Free(r)


cdef inline int mark_rec(Ledger L, Rec* r) except -1:
    if not (r.flags & RF_DIRTY):
        r.flags |= RF_DIRTY
        vec_push(&L.dirty_recs, r)
    return 0


cdef void rec_dequeue(Ledger L, Rec* r) noexcept:
    """Take a record out of whichever queue has it (an open hold: the hold queue; any other
    record: the purge queue), if any."""
    cdef Hold* h
    if r.kind == REC_HOLD and (<Hold*>r).state == RES_HELD:
        h = <Hold*>r
        if h.qidx >= 0:
            heap_remove_at(&L.holds_q, h.qidx)
    else:
        pq_remove(&L.purge_q, r)


cdef void rec_detach(Ledger L, Rec* r) noexcept:
    """Remove a record from the table and its queues (the caller frees it)."""
    cdef Hold* h
    table_remove(&L.recs, r)
    rec_dequeue(L, r)


cdef int rec_kill(Ledger L, Rec* r) except -1:
    """Purge a record; it is freed once the journal has its tombstone."""
    rec_detach(L, r)
    r.flags |= RF_DEAD
    mark_rec(L, r)
    return 0


# ---------------------------------------------------------------- the account index
#
# The accounts by id: open addressing keyed by the fl_hash of the id's bytes (the hash
# new_account caches in Account.ahash), so a lookup never goes through a dict's generic path
# nor hashes a fresh str with siphash, and costs 8 bytes a slot where a dict entry costs about
# 40. Slots hold a borrowed Account pointer (Ledger.accounts, a list in creation order, owns the
# accounts) with the hash's top 16 bits. Accounts are never removed or replaced, so entries
# never go stale. An id is its characters: a str subclass finds the account of the same text.

cdef inline uint64_t acct_key_hash(const char* p, Py_ssize_t n) noexcept:
    return fl_hash(p, <size_t>n, 0x51ed27)


cdef inline Account acct_slot(uint64_t s):
    return <Account><PyObject*>(s & PTR_MASK)


cdef inline PyObject* acct_get(Ledger L, object aid) noexcept:
    """The account with id `aid` (borrowed), or NULL; any object (not a valid id: NULL)."""
    if <PyObject*>aid == L.hint_aid:
        return L.hint_acct
    if PyUnicode_Check(aid) and PyUnicode_IS_ASCII(aid):
        return acct_find(&L.accts, aid)
    return NULL


cdef inline PyObject* acct_find(Table* t, object aid) noexcept:
    """The account of an ASCII str id (borrowed), or NULL."""
    cdef Py_ssize_t n = PyUnicode_GET_LENGTH(aid)
    cdef const char* p = id_data(aid)
    cdef uint64_t h = acct_key_hash(p, n)
    cdef size_t i = h & t.mask
    cdef uint64_t tag = h >> 48
    cdef uint64_t s
    cdef PyObject* a
    cdef PyObject* other        # borrowed pointers: no reference counting on the probe
    while True:
        s = t.slots[i]
        if s == 0:
            return NULL
        if (s >> 48) == tag:
            a = <PyObject*>(s & PTR_MASK)
            other = <PyObject*>(<Account>a).aid
            if other == <PyObject*>aid or (PyUnicode_GET_LENGTH(<object>other) == n
                                           and fl_id_eq(id_data(<object>other), p, n)):
                return a
        i = (i + 1) & t.mask


cdef int acct_index_add(Table* t, Account a, uint64_t h) except -1:
    """Index a new account whose id (an exact str) hashes to h."""
    cdef uint64_t* old
    cdef size_t old_cap, i, j, n
    if (<uint64_t><PyObject*>a) & ~PTR_MASK:
        raise SystemError("an account address does not fit in 48 bits")
    if (t.n + 1) * 2 > t.mask + 1:
        old = t.slots
        old_cap = t.mask + 1
        n = t.n
        table_init(t, old_cap * 2)
        for i in range(old_cap):
            if old[i] != 0:
                j = acct_slot(old[i]).ahash & t.mask
                while t.slots[j] != 0:
                    j = (j + 1) & t.mask
                t.slots[j] = old[i]
        t.n = n
        fl_slots_free(old, old_cap * sizeof(uint64_t))
    i = h & t.mask
    while t.slots[i] != 0:
        i = (i + 1) & t.mask
    t.slots[i] = (<uint64_t><PyObject*>a) | ((h >> 48) << 48)
    t.n += 1
    return 0
