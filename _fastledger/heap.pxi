# Expiry queues: C-array binary min-heaps of (time, seq, pointer).
#
# HQ_HOLDS and HQ_PURGE are indexed heaps: each record knows its position (Hold.qidx: an open
# hold's in the hold queue, a settled hold's in the purge queue; Idem.pidx), so an extend moves its entry and a purge
# removes it. HQ_LOTS is lazy: entries own a reference to the Account and are checked when
# popped, exactly like the reference model's lot queue.
#
# Removing an open hold (every commit and release does) leaves a tombstone instead: the entry
# keeps its key with p = NULL, which is O(1) where a removal would sift a leaf from the bottom
# all the way down again. Tombstones are swept out when they outnumber the live entries two to
# one (a linear rebuild, so amortized O(1) per removal; the array stays within three times the
# live entries, or HEAP_TOMBSTONES_MIN more) and popped when they reach the top of the queue
# (heap_peek). Heap.n counts live entries; Heap.len counts the array, tombstones included.
#
# Keys (t, seq) are unique within a queue (seq is ledger-wide), so the order in which entries
# leave does not depend on the heap's shape, so the sift strategy is a free choice. The sifts are
# written once with the kind as a parameter and called with a constant kind, so the compiler
# specializes each queue's position bookkeeping (see heap_sift_up / heap_sift_down).


cdef enum:
    HEAP_TOMBSTONES_MIN = 64    # fewer tombstones than this are never swept


cdef inline int32_t* rec_pidx(Rec* r) noexcept nogil:
    if r.kind == REC_HOLD:
        return &(<Hold*>r).qidx
    return &(<Idem*>r).pidx


cdef inline void heap_place_k(HEnt* a, int kind, Py_ssize_t i, HEnt e) noexcept nogil:
    """a[i] = e, and tell the record (if any: not a tombstone) its new position."""
    a[i] = e
    if kind == HQ_HOLDS:
        if e.p != NULL:
            (<Hold*>e.p).qidx = <int32_t>i
    elif kind == HQ_PURGE:
        rec_pidx(<Rec*>e.p)[0] = <int32_t>i


cdef inline bint hent_lt(HEnt* a, HEnt* b) noexcept nogil:
    return a.t < b.t or (a.t == b.t and a.seq < b.seq)


cdef inline Py_ssize_t hparent(Py_ssize_t i) noexcept nogil:
    return (i - 1) >> 1


cdef inline void sift_up_k(HEnt* a, int kind, Py_ssize_t i, Py_ssize_t top, HEnt e) noexcept nogil:
    """Put e into the hole at i, moving it up while it is below its parent, never above top."""
    cdef Py_ssize_t parent
    while i > top:
        parent = hparent(i)
        if not hent_lt(&e, &a[parent]):
            break
        heap_place_k(a, kind, i, a[parent])
        i = parent
    heap_place_k(a, kind, i, e)


cdef inline void sift_down_k(HEnt* a, int kind, Py_ssize_t i, Py_ssize_t n, HEnt e) noexcept nogil:
    """Put e into the hole at i, where e is not below i's parent. Bottom-up (Floyd): walk the
    hole down along the smaller children to a leaf, then sift e up from there, never above
    i: one comparison per level on the way down instead of two, and e (usually the array's
    last entry) mostly belongs near the bottom anyway."""
    cdef Py_ssize_t top = i
    cdef Py_ssize_t child
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and hent_lt(&a[child + 1], &a[child]):
            child += 1
        heap_place_k(a, kind, i, a[child])
        i = child
    sift_up_k(a, kind, i, top, e)


cdef void heap_sift_up(Heap* h, Py_ssize_t i, HEnt e) noexcept nogil:
    """Put e into the hole at i and restore the heap upwards."""
    if h.kind == HQ_HOLDS:
        sift_up_k(h.a, HQ_HOLDS, i, 0, e)
    elif h.kind == HQ_PURGE:
        sift_up_k(h.a, HQ_PURGE, i, 0, e)
    else:
        sift_up_k(h.a, HQ_LOTS, i, 0, e)


cdef void heap_sift_down(Heap* h, Py_ssize_t i, HEnt e) noexcept nogil:
    """Put e into the hole at i (e not below i's parent) and restore the heap downwards."""
    if h.kind == HQ_HOLDS:
        sift_down_k(h.a, HQ_HOLDS, i, h.len, e)
    elif h.kind == HQ_PURGE:
        sift_down_k(h.a, HQ_PURGE, i, h.len, e)
    else:
        sift_down_k(h.a, HQ_LOTS, i, h.len, e)


cdef inline void heap_move(Heap* h, Py_ssize_t i, HEnt e) noexcept nogil:
    """Put e into the hole at i, sifting whichever way it belongs."""
    if i > 0 and hent_lt(&e, &h.a[hparent(i)]):
        heap_sift_up(h, i, e)
    else:
        heap_sift_down(h, i, e)


cdef int heap_room(Heap* h) except -1:
    """Room for one more entry (so that the next heap_push cannot fail)."""
    cdef Py_ssize_t cap
    cdef HEnt* a
    if h.len == h.cap:
        cap = h.cap * 2 if h.cap else 64
        a = <HEnt*>PyMem_Realloc(h.a, cap * sizeof(HEnt))
        if a == NULL:
            raise MemoryError()
        h.a = a
        h.cap = cap
    return 0


cdef int heap_push(Heap* h, int64_t t, int64_t seq, void* p) except -1:
    cdef HEnt e
    heap_room(h)
    if h.kind == HQ_LOTS:
        Py_INCREF(<object>p)
    e.t = t
    e.seq = seq
    e.p = p
    h.n += 1
    h.len += 1
    # Entries mostly arrive in key order (expiries and purge times are now plus a fixed span):
    # then the new last entry already sits below its parent.
    if h.len > 1 and not hent_lt(&e, &h.a[hparent(h.len - 1)]):
        heap_place_k(h.a, h.kind, h.len - 1, e)
    else:
        heap_sift_up(h, h.len - 1, e)
    return 0


cdef inline void heap_drop_at(Heap* h, Py_ssize_t i) noexcept nogil:
    """Take entry i out of the array (live or not), filling its place from the end."""
    h.len -= 1
    if i < h.len:
        heap_move(h, i, h.a[h.len])


cdef void heap_sweep(Heap* h) noexcept nogil:
    """Drop every tombstone: close up the live entries, then heapify them (Floyd's linear
    build, with a plain sift-down that stops early: the survivors are often nearly in order)."""
    cdef HEnt* a = h.a
    cdef Py_ssize_t i, k = 0, child, j
    cdef HEnt e
    for i in range(h.len):
        if a[i].p != NULL:
            if i != k:
                heap_place_k(a, HQ_HOLDS, k, a[i])
            k += 1
    h.len = k
    i = k // 2
    while i > 0:
        i -= 1
        e = a[i]
        j = i
        while True:
            child = 2 * j + 1
            if child >= k:
                break
            if child + 1 < k and hent_lt(&a[child + 1], &a[child]):
                child += 1
            if not hent_lt(&a[child], &e):
                break
            heap_place_k(a, HQ_HOLDS, j, a[child])
            j = child
        if j != i:
            heap_place_k(a, HQ_HOLDS, j, e)


cdef void heap_remove_at(Heap* h, Py_ssize_t i) noexcept:
    """Remove entry i (the caller owns whatever the entry referenced)."""
    cdef HEnt* e = &h.a[i]
    h.n -= 1
    if h.kind == HQ_HOLDS:
        (<Hold*>e.p).qidx = -1
        e.p = NULL
        while h.len and h.a[h.len - 1].p == NULL:
            h.len -= 1
        if h.len - h.n >= HEAP_TOMBSTONES_MIN and h.len - h.n > 2 * h.n:
            heap_sweep(h)
        return
    if h.kind == HQ_PURGE:
        rec_pidx(<Rec*>e.p)[0] = -1
    heap_drop_at(h, i)


cdef inline HEnt* heap_peek(Heap* h) noexcept nogil:
    """The first live entry (popping tombstones off the top), or NULL if there is none."""
    if h.n == 0:
        return NULL
    while h.a[0].p == NULL:
        heap_drop_at(h, 0)
    return &h.a[0]


cdef void heap_update_at(Heap* h, Py_ssize_t i, int64_t t) noexcept:
    cdef HEnt e = h.a[i]
    e.t = t
    heap_move(h, i, e)


cdef void heap_clear(Heap* h) noexcept:
    cdef Py_ssize_t i
    if h.kind == HQ_LOTS:
        for i in range(h.len):
            Py_DECREF(<object>h.a[i].p)
    PyMem_Free(h.a)
    h.a = NULL
    h.n = 0
    h.len = 0
    h.cap = 0


# ---------------------------------------------------------------- dirty lists

cdef int vec_push(PtrVec* v, void* p) except -1:
    cdef Py_ssize_t cap
    cdef void** a
    if v.n == v.cap:
        cap = v.cap * 2 if v.cap else 256
        a = <void**>PyMem_Realloc(v.a, cap * sizeof(void*))
        if a == NULL:
            raise MemoryError()
        v.a = a
        v.cap = cap
    v.a[v.n] = p
    v.n += 1
    return 0
