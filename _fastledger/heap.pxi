# Expiry queues: C-array binary min-heaps of (time, seq, pointer).
#
# HQ_HOLDS and HQ_PURGE are indexed heaps: each record knows its position (Hold.hidx, the purge
# index of a settled hold or an idempotency record), so an extend moves its entry and a purge
# removes it; they never hold stale entries. HQ_LOTS is lazy: entries own a reference to the
# Account and are checked when popped, exactly like the reference model's lot queue.



cdef inline int32_t* rec_pidx(Rec* r) noexcept nogil:
    if r.kind == REC_HOLD:
        return &(<Hold*>r).aux.pidx
    return &(<Idem*>r).pidx


cdef inline void heap_place(Heap* h, Py_ssize_t i, HEnt e) noexcept nogil:
    heap_place_k(h.a, h.kind, i, e)


cdef inline void heap_place_k(HEnt* a, int kind, Py_ssize_t i, HEnt e) noexcept nogil:
    """heap_place with the array and kind already loaded (the sift loops hoist them)."""
    a[i] = e
    if kind == HQ_HOLDS:
        (<Hold*>e.p).hidx = <int32_t>i
    elif kind == HQ_PURGE:
        rec_pidx(<Rec*>e.p)[0] = <int32_t>i


cdef inline bint hent_lt(HEnt* a, HEnt* b) noexcept nogil:
    return a.t < b.t or (a.t == b.t and a.seq < b.seq)


cdef void heap_sift_up(Heap* h, Py_ssize_t i) noexcept nogil:
    cdef HEnt* a = h.a
    cdef int kind = h.kind
    cdef HEnt e = a[i]
    cdef Py_ssize_t parent
    while i > 0:
        parent = (i - 1) >> 1
        if not hent_lt(&e, &a[parent]):
            break
        heap_place_k(a, kind, i, a[parent])
        i = parent
    heap_place_k(a, kind, i, e)


cdef void heap_sift_down(Heap* h, Py_ssize_t i) noexcept nogil:
    cdef HEnt* a = h.a
    cdef int kind = h.kind
    cdef HEnt e = a[i]
    cdef Py_ssize_t child
    cdef Py_ssize_t n = h.n
    while True:
        child = 2 * i + 1
        if child >= n:
            break
        if child + 1 < n and hent_lt(&a[child + 1], &a[child]):
            child += 1
        if not hent_lt(&a[child], &e):
            break
        heap_place_k(a, kind, i, a[child])
        i = child
    heap_place_k(a, kind, i, e)


cdef int heap_push(Heap* h, int64_t t, int64_t seq, void* p) except -1:
    cdef Py_ssize_t cap
    cdef HEnt* a
    cdef HEnt e
    if h.n == h.cap:
        cap = h.cap * 2 if h.cap else 64
        a = <HEnt*>PyMem_Realloc(h.a, cap * sizeof(HEnt))
        if a == NULL:
            raise MemoryError()
        h.a = a
        h.cap = cap
    if h.kind == HQ_LOTS:
        Py_INCREF(<object>p)
    e.t = t
    e.seq = seq
    e.p = p
    h.n += 1
    heap_place(h, h.n - 1, e)
    heap_sift_up(h, h.n - 1)
    return 0


cdef void heap_remove_at(Heap* h, Py_ssize_t i) noexcept:
    """Remove entry i (the caller owns whatever the entry referenced)."""
    cdef HEnt* e = &h.a[i]
    if h.kind == HQ_HOLDS:
        (<Hold*>e.p).hidx = -1
    elif h.kind == HQ_PURGE:
        rec_pidx(<Rec*>e.p)[0] = -1
    h.n -= 1
    if i == h.n:
        return
    heap_place(h, i, h.a[h.n])
    if i > 0 and hent_lt(&h.a[i], &h.a[(i - 1) >> 1]):
        heap_sift_up(h, i)
    else:
        heap_sift_down(h, i)


cdef void heap_update_at(Heap* h, Py_ssize_t i, int64_t t) noexcept:
    h.a[i].t = t
    if i > 0 and hent_lt(&h.a[i], &h.a[(i - 1) >> 1]):
        heap_sift_up(h, i)
    else:
        heap_sift_down(h, i)


cdef void heap_clear(Heap* h) noexcept:
    cdef Py_ssize_t i
    if h.kind == HQ_LOTS:
        for i in range(h.n):
            Py_DECREF(<object>h.a[i].p)
    PyMem_Free(h.a)
    h.a = NULL
    h.n = 0
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
