# Stable numbers (duplicated from codes.py as C constants; tests/core/test_codes.py checks that they
# are equal), C helpers for checked and 128-bit arithmetic, hashing, and input validation.

cdef extern from *:
    """
    #include <string.h>
    #include <stdint.h>
    #ifndef QUOTA_DEBUG
    #define QUOTA_DEBUG 0
    #endif

    static inline int fl_add(int64_t a, int64_t b, int64_t *r) { return __builtin_add_overflow(a, b, r); }
    static inline int fl_sub(int64_t a, int64_t b, int64_t *r) { return __builtin_sub_overflow(a, b, r); }

    /* min(cap, last + periods * period - now) computed without overflow. */
    static inline int64_t fl_retry_after(int64_t last, int64_t periods, int64_t period,
                                         int64_t now, int64_t cap) {
        __int128 r = (__int128)last + (__int128)periods * (__int128)period - (__int128)now;
        return r > (__int128)cap ? cap : (int64_t)r;
    }

    /* A small fast hash over id bytes (deterministic across runs, unlike str.__hash__). */
    static inline uint64_t fl_hash(const char *s, size_t n, uint64_t seed) {
        uint64_t h = seed ^ (0x9E3779B97F4A7C15ULL * (n + 1));
        while (n >= 8) {
            uint64_t w; memcpy(&w, s, 8);
            h = (h ^ w) * 0xff51afd7ed558ccdULL; h ^= h >> 29;
            s += 8; n -= 8;
        }
        if (n) {
            /* The last 1..7 bytes as a zero-extended little-endian word, read without a
               variable-length memcpy (a library call): two overlapping 4-byte loads, or up
               to three single bytes. */
            uint64_t w;
            if (n >= 4) {
                uint32_t lo, hi;
                memcpy(&lo, s, 4); memcpy(&hi, s + n - 4, 4);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
                lo = __builtin_bswap32(lo); hi = __builtin_bswap32(hi);
    #endif
                w = (uint64_t)lo | ((uint64_t)hi << (8 * (n - 4)));
            } else {
                w = (uint64_t)(unsigned char)s[0] | ((uint64_t)(unsigned char)s[n >> 1] << (8 * (n >> 1)))
                    | ((uint64_t)(unsigned char)s[n - 1] << (8 * (n - 1)));
            }
            h = (h ^ w) * 0xc4ceb9fe1a85ec53ULL; h ^= h >> 31;
        }
        h *= 0x9E3779B97F4A7C15ULL;
        return h ^ (h >> 32);
    }

    /* Copy an id's bytes (n <= 255; ids are short): up to 16 bytes with two overlapping loads
       and stores, which reads and writes exactly [0, n) but costs no library call. */
    static inline void fl_copy_id(char *d, const char *s, size_t n) {
        if (n >= 8) {
            if (n > 16) { memcpy(d, s, n); return; }
            uint64_t x, y;
            memcpy(&x, s, 8); memcpy(&y, s + n - 8, 8);
            memcpy(d, &x, 8); memcpy(d + n - 8, &y, 8);
        } else if (n >= 4) {
            uint32_t x, y;
            memcpy(&x, s, 4); memcpy(&y, s + n - 4, 4);
            memcpy(d, &x, 4); memcpy(d + n - 4, &y, 4);
        } else if (n) {
            d[0] = s[0]; d[n >> 1] = s[n >> 1]; d[n - 1] = s[n - 1];
        }
    }

    /* Whether two ids' bytes are equal (n <= 255), like fl_copy_id without a library call. */
    static inline int fl_id_eq(const char *a, const char *b, size_t n) {
        if (n >= 8) {
            if (n > 16) return memcmp(a, b, n) == 0;
            uint64_t x, y, z, w;
            memcpy(&x, a, 8); memcpy(&y, a + n - 8, 8);
            memcpy(&z, b, 8); memcpy(&w, b + n - 8, 8);
            return ((x ^ z) | (y ^ w)) == 0;
        }
        if (n >= 4) {
            uint32_t x, y, z, w;
            memcpy(&x, a, 4); memcpy(&y, a + n - 4, 4);
            memcpy(&z, b, 4); memcpy(&w, b + n - 4, 4);
            return ((x ^ z) | (y ^ w)) == 0;
        }
        return n == 0 || (a[0] == b[0] && a[n >> 1] == b[n >> 1] && a[n - 1] == b[n - 1]);
    }

    /* Whether every one of the n bytes is an id character (fl_id_ok, filled at import): no
       early exit, so the loop is four independent table loads per step instead of a branch
       per byte (ids are at most 128 bytes). */
    static unsigned char fl_id_ok[256];
    static inline int fl_id_chars_ok(const unsigned char *p, size_t n) {
        unsigned acc = 1;
        size_t i = 0;
        for (; i + 4 <= n; i += 4)
            acc &= fl_id_ok[p[i]] & fl_id_ok[p[i + 1]] & fl_id_ok[p[i + 2]] & fl_id_ok[p[i + 3]];
        for (; i < n; i++)
            acc &= fl_id_ok[p[i]];
        return (int)acc;
    }

    /* Little-endian fixed-width integers (the journal format). */
    static inline void fl_put64(char *p, int64_t v) {
        uint64_t u = (uint64_t)v;
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        u = __builtin_bswap64(u);
    #endif
        memcpy(p, &u, 8);
    }
    static inline int64_t fl_get64(const char *p) {
        uint64_t u; memcpy(&u, p, 8);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        u = __builtin_bswap64(u);
    #endif
        return (int64_t)u;
    }
    static inline void fl_put32(char *p, int32_t v) {
        uint32_t u = (uint32_t)v;
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        u = __builtin_bswap32(u);
    #endif
        memcpy(p, &u, 4);
    }
    static inline int32_t fl_get32(const char *p) {
        uint32_t u; memcpy(&u, p, 4);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        u = __builtin_bswap32(u);
    #endif
        return (int32_t)u;
    }

    /* Checksum of a journal record: four interleaved Fletcher-style lanes over little-endian
       64-bit words (the last 32-byte block zero-padded), then mixed; position-dependent, it
       catches truncation and flipped bits. The lanes are two 2-lane vectors (SSE2 registers
       on x86-64) so the loop keeps its state in registers instead of spilling it. */
    typedef uint64_t fl_v2 __attribute__((vector_size(16)));
    static inline void fl_ck_block(const char *p, fl_v2 *a0, fl_v2 *a1, fl_v2 *b0, fl_v2 *b1) {
        fl_v2 w0, w1;
        memcpy(&w0, p, 16);
        memcpy(&w1, p + 16, 16);
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        w0[0] = __builtin_bswap64(w0[0]); w0[1] = __builtin_bswap64(w0[1]);
        w1[0] = __builtin_bswap64(w1[0]); w1[1] = __builtin_bswap64(w1[1]);
    #endif
        *a0 += w0; *a1 += w1; *b0 += *a0; *b1 += *a1;
    }
    static uint64_t fl_checksum(const char *p, size_t n) {
        fl_v2 a0 = {0x243F6A8885A308D3ULL, 0x13198A2E03707344ULL};
        fl_v2 a1 = {0xA4093822299F31D0ULL, 0x082EFA98EC4E6C89ULL};
        fl_v2 b0 = {(uint64_t)n, 0}, b1 = {0, 0};
        char last[32];
        size_t len = n;
        uint64_t a[4], b[4];
        int k;
        while (n >= 64) {               /* two blocks a turn: half the loop overhead */
            fl_ck_block(p, &a0, &a1, &b0, &b1);
            fl_ck_block(p + 32, &a0, &a1, &b0, &b1);
            p += 64; n -= 64;
        }
        if (n >= 32) {
            fl_ck_block(p, &a0, &a1, &b0, &b1);
            p += 32; n -= 32;
        }
        memset(last, 0, 32);
        memcpy(last, p, n);
        fl_ck_block(last, &a0, &a1, &b0, &b1);
        a[0] = a0[0]; a[1] = a0[1]; a[2] = a1[0]; a[3] = a1[1];
        b[0] = b0[0]; b[1] = b0[1]; b[2] = b1[0]; b[3] = b1[1];
        uint64_t h = (uint64_t)len;
        for (k = 0; k < 4; k++) {
            h ^= a[k] + (b[k] * 0x9E3779B97F4A7C15ULL);
            h ^= h >> 33; h *= 0xff51afd7ed558ccdULL; h ^= h >> 33;
        }
        return h;
    }

    /* A Python int (the caller checked PyLong_Check) as int64: 1 if it fits, else 0.
       Small values skip the generic conversion. */
    static inline __attribute__((always_inline)) int fl_as_i64(PyObject *o, int64_t *out) {
    #if PY_VERSION_HEX < 0x030C0000 && !defined(PYPY_VERSION)
        Py_ssize_t size = Py_SIZE(o);
        const digit *d = ((PyLongObject *)o)->ob_digit;
        switch (size) {
            case 0: *out = 0; return 1;
            case 1: *out = (int64_t)d[0]; return 1;
            case -1: *out = -(int64_t)d[0]; return 1;
            case 2: *out = (int64_t)(((uint64_t)d[1] << PyLong_SHIFT) | d[0]); return 1;
            case -2: *out = -(int64_t)(((uint64_t)d[1] << PyLong_SHIFT) | d[0]); return 1;
        }
    #endif
        int overflow = 0;
        long long v = PyLong_AsLongLongAndOverflow(o, &overflow);
        if (overflow) return 0;
        if (v == -1 && PyErr_Occurred()) { PyErr_Clear(); return 0; }
        *out = (int64_t)v;
        return 1;
    }

    /* A new reference to an int for v, for result tuples. Small values come from a table of
       the interpreter's own cached ints (filled by fl_init_ints at import); balances and
       timestamps mostly take two 30-bit digits, and on CPython 3.11 such an int is made
       directly instead of through PyLong_FromLongLong's general path. */
    #define FL_SMALL_INTS 257
    static PyObject *fl_small_ints[FL_SMALL_INTS];
    static int fl_init_ints(void) {
        int i;
        for (i = 0; i < FL_SMALL_INTS; i++) {
            fl_small_ints[i] = PyLong_FromLong(i);
            if (fl_small_ints[i] == NULL) return -1;
        }
        return 0;
    }
    static inline __attribute__((always_inline)) PyObject *fl_int(int64_t v) {
        if ((uint64_t)v < FL_SMALL_INTS) {
            PyObject *o = fl_small_ints[v];
            Py_INCREF(o);
            return o;
        }
    #if PY_VERSION_HEX >= 0x030B0000 && PY_VERSION_HEX < 0x030C0000 && !defined(PYPY_VERSION)
        uint64_t u = v < 0 ? 0 - (uint64_t)v : (uint64_t)v;
        if (PyLong_SHIFT == 30 && (u >> 30) != 0 && (u >> 60) == 0) {
            PyLongObject *o = _PyLong_New(2);
            if (o == NULL) return NULL;
            o->ob_digit[0] = (digit)(u & PyLong_MASK);
            o->ob_digit[1] = (digit)(u >> PyLong_SHIFT);
            if (v < 0) Py_SET_SIZE(o, -2);
            return (PyObject *)o;
        }
    #endif
        return PyLong_FromLongLong(v);
    }

    /* get_i64 / get_range (see below), in C so that they are always inlined: the op parsers
       call them a dozen times per op and the compiler's size heuristics do not always agree. */
    static inline __attribute__((always_inline)) int fl_get_i64(PyObject *o, int64_t *out) {
        if (!PyLong_Check(o) || PyBool_Check(o)) return 0;
        return fl_as_i64(o, out);
    }
    static inline __attribute__((always_inline)) int fl_get_range(PyObject *o, int64_t lo, int64_t hi,
                                                                  int64_t *out) {
        return fl_get_i64(o, out) && lo <= *out && *out <= hi;
    }
    """
    bint QUOTA_DEBUG
    bint fl_add(int64_t a, int64_t b, int64_t* r) noexcept nogil
    bint fl_sub(int64_t a, int64_t b, int64_t* r) noexcept nogil
    int64_t fl_retry_after(int64_t last, int64_t periods, int64_t period, int64_t now, int64_t cap) noexcept nogil
    uint64_t fl_hash(const char* s, size_t n, uint64_t seed) noexcept nogil
    void fl_copy_id(char* d, const char* s, size_t n) noexcept nogil
    bint fl_id_eq(const char* a, const char* b, size_t n) noexcept nogil
    unsigned char ID_OK "fl_id_ok"[256]
    bint fl_id_chars_ok(const unsigned char* p, size_t n) noexcept nogil
    void fl_put64(char* p, int64_t v) noexcept nogil
    int64_t fl_get64(const char* p) noexcept nogil
    void fl_put32(char* p, int32_t v) noexcept nogil
    int32_t fl_get32(const char* p) noexcept nogil
    uint64_t fl_checksum(const char* p, size_t n) noexcept nogil
    bint fl_as_i64(object o, int64_t* out) noexcept
    object fl_int(int64_t v)
    int fl_init_ints() except -1
    # A non-bool int that fits int64 (the model's `_is_int` plus the int64 range) ...
    bint get_i64 "fl_get_i64"(object o, int64_t* out) noexcept
    # ... and inside [lo, hi].
    bint get_range "fl_get_range"(object o, int64_t lo, int64_t hi, int64_t* out) noexcept

cdef extern from "Python.h":
    bint PyUnicode_Check(object o)
    bint PyUnicode_CheckExact(object o)
    object PyUnicode_FromObject(object o)
    Py_ssize_t PyUnicode_GET_LENGTH(object o)
    bint PyUnicode_IS_ASCII(object o)
    void* PyUnicode_DATA(object o)
    bint PyLong_Check(object o)
    bint PyBool_Check(object o)
    bint PyTuple_Check(object o)
    bint PyTuple_CheckExact(object o)
    bint PyBytes_Check(object o)
    long long PyLong_AsLongLongAndOverflow(object o, int* overflow) noexcept
    PyObject* PyDict_GetItemWithError(object d, object k) except? NULL   # borrowed, NULL if missing
    PyObject* PyTuple_GET_ITEM(object t, Py_ssize_t i)
    # An op tuple's field i, borrowed: `<object>field(op, i)` passed straight to a function
    # costs no reference counting, where op[i] takes a reference and drops it around the call.
    PyObject* field "PyTuple_GET_ITEM"(object op, Py_ssize_t i)
    Py_ssize_t PyTuple_GET_SIZE(object t)
    object PyUnicode_FromStringAndSize(const char* s, Py_ssize_t n)
    object PyBytes_FromStringAndSize(const char* s, Py_ssize_t n)
    char* PyBytes_AS_STRING(object b)
    Py_ssize_t PyBytes_GET_SIZE(object b)


# ---------------------------------------------------------------- stable numbers (codes.py)

cdef enum:
    OK = 0
    INVALID_ID = 10
    INVALID_AMOUNT = 11
    INVALID_TTL = 12
    INVALID_ARGUMENT = 13
    ACCOUNT_NOT_FOUND = 20
    RESERVATION_NOT_FOUND = 21
    PLAN_REQUIRED = 22
    IDEMPOTENCY_KEY_REUSED = 30
    RESERVATION_COMMITTED = 40
    RESERVATION_RELEASED = 41
    RESERVATION_EXPIRED = 42
    LIMIT_EXCEEDED = 50
    OVERFLOW = 51

    DECISION_OK = 1
    DECISION_INSUFFICIENT_CREDITS = 2
    DECISION_RATE_LIMITED = 3
    DECISION_CONCURRENCY_LIMITED = 4
    DECISION_FEATURE_NOT_IN_PLAN = 5
    DECISION_ACCOUNT_SUSPENDED = 6

    OP_UPSERT = 1
    OP_GRANT = 2
    OP_RESERVE = 3
    OP_COMMIT = 4
    OP_RELEASE = 5
    OP_EXTEND = 6
    OP_CHARGE = 7
    OP_CHECK = 8
    OP_BUCKET = 9
    OP_EXPIRE = 10

    ACCOUNT_KEEP = 0
    ACCOUNT_ACTIVE = 1
    ACCOUNT_SUSPENDED = 2

    LOT_PURCHASED = 1
    LOT_ADJUSTMENT = 4

    EXPIRE_RELEASE = 1
    EXPIRE_COMMIT = 2

    RES_HELD = 1
    RES_COMMITTED = 2
    RES_RELEASED = 3
    RES_EXPIRED = 4

    ID_LEN_MAX = 128
    LOTS_PER_ACCOUNT_MAX = 256
    HOLDS_PER_ACCOUNT_MAX = 65535  # fits Account.open_holds (uint16)
    BUCKETS_PER_ACCOUNT_MAX = 16
    BUCKETS_PER_OP_MAX = 8
    META_BYTES_MAX = 1024
    BATCH_OPS_MAX = 65536

cdef extern from *:
    """
    #define FL_AMOUNT_MAX ((int64_t)1000000000000000LL)
    #define FL_PRIORITY_MIN ((int64_t)-2147483648LL)
    #define FL_PRIORITY_MAX ((int64_t)2147483647LL)
    #define FL_TTL_NS_MAX ((int64_t)4611686018427387904LL)
    #define FL_NOW_NS_LIMIT ((int64_t)4611686018427387904LL)
    #define FL_INT64_MAX ((int64_t)INT64_MAX)
    #define FL_INT64_MIN ((int64_t)INT64_MIN)
    """
    const int64_t AMOUNT_MAX "FL_AMOUNT_MAX"
    const int64_t PRIORITY_MIN "FL_PRIORITY_MIN"
    const int64_t PRIORITY_MAX "FL_PRIORITY_MAX"
    const int64_t TTL_NS_MAX "FL_TTL_NS_MAX"
    const int64_t NOW_NS_LIMIT "FL_NOW_NS_LIMIT"
    const int64_t INT64_MAX "FL_INT64_MAX"
    const int64_t INT64_MIN "FL_INT64_MIN"

# Internal numbers.
cdef enum:
    REC_HOLD = 1
    REC_CHARGE = 2
    REC_GRANT = 3

    RF_DIRTY = 1
    RF_DEAD = 2

    HF_UNBACKED = 1
    HF_AUTO = 2
    HF_LATE = 4                 # in memory only: the journal has the settlement's `late` byte

    AUX_NONE = 0
    AUX_COMMIT = 1
    AUX_RELEASE = 2

    D_CORE = 1
    D_BUCKETS = 2

    AF_OVER = 1

    HQ_LOTS = 0
    HQ_HOLDS = 1
    HQ_PURGE = 2


# The same numbers, for tests/core/test_codes.py to compare with codes.py.
CODES = {
    "OK": OK, "INVALID_ID": INVALID_ID, "INVALID_AMOUNT": INVALID_AMOUNT,
    "INVALID_TTL": INVALID_TTL, "INVALID_ARGUMENT": INVALID_ARGUMENT,
    "ACCOUNT_NOT_FOUND": ACCOUNT_NOT_FOUND, "RESERVATION_NOT_FOUND": RESERVATION_NOT_FOUND,
    "PLAN_REQUIRED": PLAN_REQUIRED, "IDEMPOTENCY_KEY_REUSED": IDEMPOTENCY_KEY_REUSED,
    "RESERVATION_COMMITTED": RESERVATION_COMMITTED, "RESERVATION_RELEASED": RESERVATION_RELEASED,
    "RESERVATION_EXPIRED": RESERVATION_EXPIRED, "LIMIT_EXCEEDED": LIMIT_EXCEEDED,
    "OVERFLOW": OVERFLOW,
    "DECISION_OK": DECISION_OK, "DECISION_INSUFFICIENT_CREDITS": DECISION_INSUFFICIENT_CREDITS,
    "DECISION_RATE_LIMITED": DECISION_RATE_LIMITED,
    "DECISION_CONCURRENCY_LIMITED": DECISION_CONCURRENCY_LIMITED,
    "DECISION_FEATURE_NOT_IN_PLAN": DECISION_FEATURE_NOT_IN_PLAN,
    "DECISION_ACCOUNT_SUSPENDED": DECISION_ACCOUNT_SUSPENDED,
    "OP_UPSERT": OP_UPSERT, "OP_GRANT": OP_GRANT, "OP_RESERVE": OP_RESERVE,
    "OP_COMMIT": OP_COMMIT, "OP_RELEASE": OP_RELEASE, "OP_EXTEND": OP_EXTEND,
    "OP_CHARGE": OP_CHARGE, "OP_CHECK": OP_CHECK, "OP_BUCKET": OP_BUCKET, "OP_EXPIRE": OP_EXPIRE,
    "ACCOUNT_KEEP": ACCOUNT_KEEP, "ACCOUNT_ACTIVE": ACCOUNT_ACTIVE,
    "ACCOUNT_SUSPENDED": ACCOUNT_SUSPENDED,
    "LOT_PURCHASED": LOT_PURCHASED, "LOT_ADJUSTMENT": LOT_ADJUSTMENT,
    "EXPIRE_RELEASE": EXPIRE_RELEASE, "EXPIRE_COMMIT": EXPIRE_COMMIT,
    "RES_HELD": RES_HELD, "RES_COMMITTED": RES_COMMITTED, "RES_RELEASED": RES_RELEASED,
    "RES_EXPIRED": RES_EXPIRED,
    "ID_LEN_MAX": ID_LEN_MAX, "AMOUNT_MAX": AMOUNT_MAX,
    "LOTS_PER_ACCOUNT_MAX": LOTS_PER_ACCOUNT_MAX, "HOLDS_PER_ACCOUNT_MAX": HOLDS_PER_ACCOUNT_MAX,
    "BUCKETS_PER_ACCOUNT_MAX": BUCKETS_PER_ACCOUNT_MAX, "BUCKETS_PER_OP_MAX": BUCKETS_PER_OP_MAX,
    "META_BYTES_MAX": META_BYTES_MAX, "BATCH_OPS_MAX": BATCH_OPS_MAX,
    "PRIORITY_MIN": PRIORITY_MIN, "PRIORITY_MAX": PRIORITY_MAX, "TTL_NS_MAX": TTL_NS_MAX,
    "NOW_NS_LIMIT": NOW_NS_LIMIT, "INT64_MAX": INT64_MAX, "INT64_MIN": INT64_MIN,
}

DEBUG = bool(QUOTA_DEBUG)


# ---------------------------------------------------------------- validation

cdef void _init_id_table() noexcept:
    cdef int c
    for c in range(256):
        ID_OK[c] = 0
    for ch in b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@/-":
        ID_OK[ch] = 1

_init_id_table()
fl_init_ints()


cdef inline bint valid_id(object o) noexcept:
    """1..128 chars of [A-Za-z0-9._:@/-] (str or a str subclass)."""
    cdef Py_ssize_t n
    if not PyUnicode_Check(o):
        return False
    n = PyUnicode_GET_LENGTH(o)
    if n < 1 or n > ID_LEN_MAX or not PyUnicode_IS_ASCII(o):
        return False
    return fl_id_chars_ok(<const unsigned char*>PyUnicode_DATA(o), n)


cdef inline bint valid_id_bytes(const char* p, Py_ssize_t n) noexcept:
    if n < 1 or n > ID_LEN_MAX:
        return False
    return fl_id_chars_ok(<const unsigned char*>p, n)


cdef inline bint get_bool(object o, bint* out) noexcept:
    if o is True:
        out[0] = True
        return True
    if o is False:
        out[0] = False
        return True
    return False


cdef inline const char* id_data(object s) noexcept:
    return <const char*>PyUnicode_DATA(s)


cdef inline object id_str(const char* p, Py_ssize_t n):
    return PyUnicode_FromStringAndSize(p, n)


cdef inline int64_t i64min(int64_t a, int64_t b) noexcept nogil:
    return a if a < b else b


cdef inline int64_t i64max(int64_t a, int64_t b) noexcept nogil:
    return a if a > b else b
