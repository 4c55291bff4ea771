# The result of one op: a tuple-like value (see Result in _ledger.pxd).
#
# A batch of 1,000 reserves and their commits used to make 2,000 result tuples and, for every
# available_after, a Python int, and to free them all again once the engine had encoded the
# responses: about a fifth of the core's time per pair (bench_core). A Result is one small
# allocation with its items in C; Python ints, bools and the str are made only for the items a
# caller reads from Python, and the server's wire encoder reads the C fields directly.

from cpython.object cimport PyTypeObject

cdef extern from "Python.h":
    PyObject* PyObject_Malloc(size_t n)
    void PyObject_Free(void* p)
    # Sets the type and a reference count of 1: the reference Cython takes over as a new one.
    object PyObject_Init(PyObject* o, PyTypeObject* t)


cdef enum:
    RESULT_ITEMS_MAX = 7
    RESULT_FREE_MAX = 4096      # freed Results kept for reuse (a few batches' worth, 88 bytes each)


@cython.final
cdef class Result:
    """One op's result, as `Ledger.apply` returns it: an immutable sequence of at most 7 items
    (ints, bools, and at most one str) that compares equal to the tuple of the same items, hashes
    like it, and prints like it; `tuple(result)` is that tuple. `Result(items)` makes one from a
    tuple (for tests of code that consumes results)."""

    def __cinit__(self, items=()):
        # Runs only for Results made from Python; the core's own are made by new_result.
        cdef Py_ssize_t k, n = len(items)
        cdef int64_t v
        self.text = NULL
        self.text_at = -1
        if n > RESULT_ITEMS_MAX:
            raise ValueError(f"a result has at most {RESULT_ITEMS_MAX} items, not {n}")
        for k in range(n):
            item = items[k]
            if item is True or item is False:
                self.v[k] = 1 if item else 0
                self.bools |= 1 << k
            elif isinstance(item, int):
                if not get_i64(item, &v):
                    raise OverflowError(f"result item {k} is outside int64: {item!r}")
                self.v[k] = v
            elif item is None or isinstance(item, str):
                if self.text_at >= 0:
                    raise ValueError("a result has at most one str (or None) item")
                Py_INCREF(item)
                self.text = <PyObject*>item
                self.text_at = <int8_t>k
            else:
                raise TypeError(f"result items are ints, bools and one str, not {type(item).__name__}")
        self.n = <uint8_t>n

    def __len__(self):
        return self.n

    def __getitem__(self, index):
        cdef Py_ssize_t k
        if isinstance(index, slice):
            return result_tuple(self)[index]
        k = index
        if k < 0:
            k += self.n
        if not 0 <= k < self.n:
            raise IndexError("result index out of range")
        return result_item(self, k)

    def __iter__(self):
        return iter(result_tuple(self))

    def __eq__(self, other):
        if isinstance(other, (Result, tuple)):
            return result_tuple(self) == tuple(other)
        return NotImplemented

    def __ne__(self, other):
        if isinstance(other, (Result, tuple)):
            return result_tuple(self) != tuple(other)
        return NotImplemented

    def __hash__(self):
        return hash(result_tuple(self))

    def __repr__(self):
        return repr(result_tuple(self))

    def __reduce__(self):
        return (Result, (result_tuple(self),))


cdef PyTypeObject* RESULT_TYPE = <PyTypeObject*>Result
cdef PyObject* result_free[RESULT_FREE_MAX]
cdef int result_nfree = 0


cdef void result_dealloc(PyObject* o) noexcept:
    """Result's tp_dealloc (set below, in place of Cython's, which would save and restore the
    error indicator around a __dealloc__): drop the str item, keep the memory for new_result."""
    global result_nfree
    Py_XDECREF((<Result>o).text)
    if result_nfree < RESULT_FREE_MAX:
        result_free[result_nfree] = o
        result_nfree += 1
    else:
        PyObject_Free(o)


RESULT_TYPE.tp_dealloc = result_dealloc


cdef object result_item(Result r, Py_ssize_t k):
    if k == r.text_at:
        return <object>r.text
    if (r.bools >> k) & 1:
        return True if r.v[k] else False
    return fl_int(r.v[k])


cdef tuple result_tuple(Result r):
    cdef Py_ssize_t k
    return tuple([result_item(r, k) for k in range(r.n)])


cdef inline Result new_result(uint8_t n, uint8_t bools, int8_t text_at, object text):
    """A Result of `n` items whose v[] the caller fills (item `text_at`, if >= 0, is `text`).
    Made without the type's tp_new (memory from the freed ones first): every field is set here."""
    global result_nfree
    cdef PyObject* o
    cdef Result r
    if result_nfree:
        result_nfree -= 1
        o = result_free[result_nfree]
    else:
        o = PyObject_Malloc(RESULT_TYPE.tp_basicsize)
        if o == NULL:
            raise MemoryError()
    r = <Result>PyObject_Init(o, RESULT_TYPE)
    r.n = n
    r.bools = bools
    r.text_at = text_at
    if text_at >= 0:
        Py_INCREF(text)
        r.text = <PyObject*>text
    else:
        r.text = NULL
    return r


cdef inline Result r_status(int64_t st):
    """`(st,)`: an error, or any op's bare status."""
    cdef Result r = new_result(1, 0, -1, None)
    r.v[0] = st
    return r


cdef inline Result r_int(int64_t st, int64_t x):
    """`(st, x)`: grant's available_after, bucket's tokens_after, expire's items_processed."""
    cdef Result r = new_result(2, 0, -1, None)
    r.v[0] = st
    r.v[1] = x
    return r


cdef inline Result r_upsert(int64_t st, bint created):
    cdef Result r = new_result(2, 1 << 1, -1, None)
    r.v[0] = st
    r.v[1] = created
    return r


cdef inline Result r_reserve(int64_t st, int64_t dec, int64_t held, int64_t avail, int64_t expires,
                             int64_t retry, object limit):
    cdef Result r = new_result(7, 0, 6, limit)
    r.v[0] = st
    r.v[1] = dec
    r.v[2] = held
    r.v[3] = avail
    r.v[4] = expires
    r.v[5] = retry
    return r


cdef inline Result r_commit(int64_t st, int64_t charged, int64_t released, int64_t uncharged,
                            int64_t avail, bint late):
    cdef Result r = new_result(6, 1 << 5, -1, None)
    r.v[0] = st
    r.v[1] = charged
    r.v[2] = released
    r.v[3] = uncharged
    r.v[4] = avail
    r.v[5] = late
    return r


cdef inline Result r_release(int64_t st, int64_t released, int64_t avail):
    cdef Result r = new_result(3, 0, -1, None)
    r.v[0] = st
    r.v[1] = released
    r.v[2] = avail
    return r


cdef inline Result r_extend(int64_t st, int64_t dec, int64_t held, int64_t expires, int64_t avail):
    cdef Result r = new_result(5, 0, -1, None)
    r.v[0] = st
    r.v[1] = dec
    r.v[2] = held
    r.v[3] = expires
    r.v[4] = avail
    return r


cdef inline Result r_charge(int64_t st, int64_t dec, int64_t charged, int64_t avail, int64_t retry,
                            object limit):
    cdef Result r = new_result(6, 0, 5, limit)
    r.v[0] = st
    r.v[1] = dec
    r.v[2] = charged
    r.v[3] = avail
    r.v[4] = retry
    return r


cdef inline Result r_check(int64_t st, int64_t dec, int64_t avail, int64_t retry, object limit):
    cdef Result r = new_result(5, 0, 4, limit)
    r.v[0] = st
    r.v[1] = dec
    r.v[2] = avail
    r.v[3] = retry
    return r
