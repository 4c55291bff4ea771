# The purge queue: every settled hold and every charge and grant record, by purge time.
#
# A record made now is purged at now + retention, so those times arrive in key order: they go
# to a FIFO ring, appended and taken from its head in O(1), the next ones known in advance (the
# sweep prefetches them). The rest go to an indexed heap (heap.pxi, HQ_PURGE): a time below the
# ring's last (a clock that went back, a shorter retention), one beyond now + retention (a
# grant kept a retention past its lot's expiry: in the ring it would keep every later entry
# out), and replay's stored times. The first entry is the smaller of the two heads, so entries
# leave in exactly the key order of a single queue.
#
# A record's position (Hold.qidx once settled, Idem.pidx) is its heap index (>= 0) or, in the
# ring, -2 - its ticket (see pq_ring_pos); -1: not queued. A removal from the middle of the
# ring leaves a tombstone (p NULL), dropped when it reaches the head. With every entry in one
# heap, each purge sifted an entry from the top to the bottom of a heap as large as the
# retention's records, two memory misses a level: in a steady state (records purged as fast as
# they are made) that and the table removal were half of the core's time.


cdef enum:
    PQ_RING_MIN = 64
    PQ_TICKETS = 1 << 30        # ring positions are tickets modulo this (the ring is smaller)
    PURGE_PREFETCH = 8          # ring entries ahead whose records the sweep starts loading
    PURGE_PREFETCH_SLOT = 4     # ... and whose table slots (their records loaded by then)


cdef inline int32_t pq_ring_pos(int64_t ticket) noexcept nogil:
    """A ring entry's position: its ticket (the count of ring entries ever queued before it)
    modulo PQ_TICKETS, as -2 - that. Growing the ring moves entries, never their tickets, so it
    writes to no record."""
    return <int32_t>(-2 - (ticket & (PQ_TICKETS - 1)))


cdef inline bint pq_in_ring(int32_t pos) noexcept nogil:
    return pos <= -2


cdef inline HEnt* pq_ring_at(PurgeQ* q, int32_t pos) noexcept nogil:
    """The ring entry at a position (its ticket is within PQ_TICKETS after the head's)."""
    cdef int64_t low = -2 - <int64_t>pos
    cdef int64_t ticket = q.head_t + ((low - q.head_t) & (PQ_TICKETS - 1))
    return &q.ring[ticket & q.mask]


cdef inline HEnt* pq_entry(PurgeQ* q, int32_t pos) noexcept nogil:
    """The entry at a record's position (pos != -1)."""
    if pq_in_ring(pos):
        return pq_ring_at(q, pos)
    return &q.heap.a[pos]


cdef int pq_ring_grow(PurgeQ* q) except -1:
    """Double the ring (each entry goes to its ticket's place in the new one)."""
    cdef size_t cap = q.mask + 1 if q.ring != NULL else 0
    cdef size_t ncap = cap * 2 if cap else PQ_RING_MIN
    cdef size_t k = 0, src, dst, run
    cdef HEnt* a
    if ncap > PQ_TICKETS // 2:
        raise MemoryError("purge ring full")
    a = <HEnt*>PyMem_Malloc(ncap * sizeof(HEnt))
    if a == NULL:
        raise MemoryError()
    while k < q.len:                # in runs that wrap around neither array
        src = <size_t>((q.head_t + <int64_t>k) & q.mask)
        dst = <size_t>((q.head_t + <int64_t>k) & (ncap - 1))
        run = q.len - k
        if run > cap - src:
            run = cap - src
        if run > ncap - dst:
            run = ncap - dst
        memcpy(&a[dst], &q.ring[src], run * sizeof(HEnt))
        k += run
    PyMem_Free(q.ring)
    q.ring = a
    q.mask = ncap - 1
    return 0


cdef inline int pq_push(PurgeQ* q, int64_t t, int64_t seq, Rec* r, int64_t horizon) except -1:
    """Queue r at (t, seq). `horizon` is the latest purge time a record made now gets (now +
    retention): an entry beyond it (a grant's, a retention past its lot's expiry) would hold
    every later one out of the ring, so it goes to the heap, as does one below the ring's last."""
    cdef HEnt* e
    cdef int64_t ticket
    if t > horizon or q.len == q.mask + 1 or q.ring == NULL:
        return pq_push_slow(q, t, seq, r, horizon)
    if q.len:
        e = &q.ring[(q.head_t + <int64_t>q.len - 1) & q.mask]
        if t < e.t or (t == e.t and seq < e.seq):
            return pq_push_slow(q, t, seq, r, horizon)
    ticket = q.head_t + <int64_t>q.len
    e = &q.ring[ticket & q.mask]
    e.t = t
    e.seq = seq
    e.p = r
    rec_pidx(r)[0] = pq_ring_pos(ticket)
    q.len += 1
    q.n += 1
    return 0


cdef int pq_push_slow(PurgeQ* q, int64_t t, int64_t seq, Rec* r, int64_t horizon) except -1:
    """pq_push when the entry goes to the heap or the ring must grow first."""
    cdef HEnt e
    e.t = t
    e.seq = seq
    if t > horizon or (q.len and hent_lt(&e, &q.ring[(q.head_t + <int64_t>q.len - 1) & q.mask])):
        heap_push(&q.heap, t, seq, r)   # sets the position
        q.n += 1
        return 0
    pq_ring_grow(q)
    return pq_push(q, t, seq, r, horizon)


cdef int pq_room(PurgeQ* q) except -1:
    """Room for one more entry in both parts, so that the next pq_push cannot fail (the sweep
    makes it before it takes a grant record out to queue it again)."""
    if q.ring == NULL or q.len == q.mask + 1:
        pq_ring_grow(q)
    return heap_room(&q.heap)


cdef inline HEnt* pq_ring_head(PurgeQ* q) noexcept nogil:
    """The ring's first live entry (tombstones before it dropped), or NULL."""
    while q.len and q.ring[q.head_t & q.mask].p == NULL:
        q.head_t += 1
        q.len -= 1
    return &q.ring[q.head_t & q.mask] if q.len else NULL


cdef inline HEnt* pq_peek(PurgeQ* q) noexcept nogil:
    """The first entry (smallest key), or NULL if the queue is empty."""
    cdef HEnt* f
    cdef HEnt* h
    if q.n == 0:
        return NULL
    f = pq_ring_head(q)
    h = heap_peek(&q.heap)
    if f == NULL:
        return h
    if h != NULL and hent_lt(h, f):
        return h
    return f


cdef void pq_remove(PurgeQ* q, Rec* r) noexcept:
    """Take a queued record out (its position becomes -1)."""
    cdef int32_t* pos = rec_pidx(r)
    cdef HEnt* e
    if pq_in_ring(pos[0]):
        e = pq_ring_at(q, pos[0])
        e.p = NULL
        pos[0] = -1
        pq_ring_head(q)             # drops it if it was the head
        q.n -= 1
    elif pos[0] >= 0:
        heap_remove_at(&q.heap, pos[0])     # sets the position to -1
        q.n -= 1


cdef int pq_settle(PurgeQ* q) except -1:
    """Move the heap's entries that can go to the ring there, in key order: after a replay,
    which puts every entry it reads in the heap (stored times may come in any order). Those are
    the entries up to the latest purge time of a settled hold or a charge record (made at most a
    retention ago: the ring's natural horizon); a grant record kept a retention past its lot's
    expiry may lie beyond it and stays in the heap. Entries leave in the same order as before."""
    cdef int64_t horizon = INT64_MIN
    cdef Py_ssize_t i
    cdef HEnt e
    cdef Rec* r
    for i in range(q.heap.len):
        r = <Rec*>q.heap.a[i].p
        if r.kind != REC_GRANT and q.heap.a[i].t > horizon:
            horizon = q.heap.a[i].t
    while q.heap.n:
        e = q.heap.a[0]
        if e.t > horizon:
            break
        if q.len and hent_lt(&e, &q.ring[(q.head_t + <int64_t>q.len - 1) & q.mask]):
            break                   # below the ring's last entry: stays in the heap (and the rest)
        r = <Rec*>e.p
        pq_room(q)                  # first: once out of the heap, it must go into the ring
        heap_remove_at(&q.heap, 0)  # sets its position to -1
        q.n -= 1
        pq_push(q, e.t, e.seq, r, horizon)
    return 0


cdef inline void pq_prefetch(PurgeQ* q, Table* t) noexcept nogil:
    """Start loading what purging the next ring entries reads: the record PURGE_PREFETCH
    places after the head, and the table slot of the one PURGE_PREFETCH_SLOT after it (whose
    record an earlier call started loading)."""
    cdef Rec* r
    if PURGE_PREFETCH < q.len:
        fl_prefetch(q.ring[(q.head_t + PURGE_PREFETCH) & q.mask].p)
    if PURGE_PREFETCH_SLOT < q.len:
        r = <Rec*>q.ring[(q.head_t + PURGE_PREFETCH_SLOT) & q.mask].p
        if r != NULL:
            fl_prefetch(&t.slots[r.hash & t.mask])


cdef inline int64_t pq_time(PurgeQ* q, Rec* r) noexcept:
    """A queued record's purge time."""
    return pq_entry(q, rec_pidx(r)[0]).t


cdef void pq_clear(PurgeQ* q) noexcept:
    heap_clear(&q.heap)
    PyMem_Free(q.ring)
    q.ring = NULL
    q.mask = 0
    q.head_t = 0
    q.len = 0
    q.n = 0
