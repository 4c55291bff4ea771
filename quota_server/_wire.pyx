# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True, initializedcheck=False
"""The protobuf wire fast path of QuotaService: request bytes -> core op tuples -> response bytes.

The Python data plane (`quota_server.dataplane`) is the reference. This module decodes the wire
format of the mutating requests (Reserve, Commit, Release, Extend, Charge, and Batch of them)
directly, and accepts a request only when it is certainly well-formed and valid: then it builds
exactly the op tuple the Python path would build. Anything else -- a field it does not expect, a
wire type that does not match, an invalid value of any kind, a map entry with extra fields, a
read op in a batch -- is "punted": the caller hands that request (or that batch item) to the
Python path, which produces the error or the op. So every error status, reason and message is
the Python path's by construction, and the fast path only has to be right on valid input.

It also holds the idempotency fingerprint, which both paths use (see `fingerprint`).
"""

cimport cython
from libc.stdint cimport uint8_t, uint32_t, uint64_t, int64_t
from libc.string cimport memcmp, memcpy, memmove, memset
from cpython.mem cimport PyMem_Malloc, PyMem_Realloc, PyMem_Free
from cpython.bytes cimport PyBytes_FromStringAndSize, PyBytes_AS_STRING, PyBytes_GET_SIZE
from cpython.unicode cimport PyUnicode_DecodeUTF8, PyUnicode_DecodeASCII
from cpython.dict cimport PyDict_GetItem
from cpython.object cimport PyObject

import json

from _fastledger import codes as _C
from _fastledger._ledger cimport Result, result_item

from . import validate as _validate
from .errors import QuotaError, from_core_status
from .storage.base import UsageRow

cdef extern from "Python.h":
    const char* PyUnicode_AsUTF8AndSize(object s, Py_ssize_t* size) except NULL
    long long PyLong_AsLongLongAndOverflow(object v, int* overflow) except? -1
    bint PyLong_CheckExact(object o)
    bint PyUnicode_IS_ASCII(object s)
    bint PyUnicode_IS_COMPACT_ASCII(object s)
    void* PyUnicode_DATA(object s)
    Py_ssize_t PyUnicode_GET_LENGTH(object s)

cdef extern from *:
    """
    static inline int qw_mul_overflow(long long a, long long b, long long* out) {
        return __builtin_mul_overflow(a, b, out);
    }
    static inline int qw_add_overflow(long long a, long long b, long long* out) {
        return __builtin_add_overflow(a, b, out);
    }
    /* v as 8 bytes, least significant first, in one store on a little-endian machine. */
    static inline void qw_put_le64(char* p, uint64_t v) {
    #if defined(__BYTE_ORDER__) && __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
        v = __builtin_bswap64(v);
    #endif
        memcpy(p, &v, 8);
    }
    """
    bint qw_mul_overflow(long long a, long long b, long long* out) nogil
    bint qw_add_overflow(long long a, long long b, long long* out) nogil
    void qw_put_le64(char* p, uint64_t v) nogil


# ---------------------------------------------------------------------------------------- limits

cdef int64_t NS_PER_MS = 1_000_000
cdef int64_t AMOUNT_MAX = _C.AMOUNT_MAX
cdef Py_ssize_t ID_LEN_MAX = _C.ID_LEN_MAX
cdef Py_ssize_t META_BYTES_MAX = _C.META_BYTES_MAX
cdef Py_ssize_t MAP_ENTRIES_MAX = _validate.MAP_ENTRIES_MAX
cdef Py_ssize_t LABEL_KEY_MAX = _validate.LABEL_KEY_MAX
cdef Py_ssize_t LABEL_VALUE_MAX = _validate.LABEL_VALUE_MAX

# Raw map entries one request may carry on the fast path (duplicates included); more -> punt.
cdef enum:
    MAP_RAW_MAX = 64
# Cached actions per plan / in the price cache; beyond this, compute without caching.
cdef Py_ssize_t CACHE_ACTIONS_MAX = 4096
cdef Py_ssize_t USAGE_BUF_KEEP = 4 << 20  # see WireCodec.usage_bufs_done

cdef int OP_RESERVE = _C.OP_RESERVE
cdef int OP_COMMIT = _C.OP_COMMIT
cdef int OP_RELEASE = _C.OP_RELEASE
cdef int OP_EXTEND = _C.OP_EXTEND
cdef int OP_CHARGE = _C.OP_CHARGE
cdef int ST_OK = _C.OK
cdef int ST_INVALID_AMOUNT = _C.INVALID_AMOUNT
cdef int DECISION_OK = _C.DECISION_OK
cdef int ACCOUNT_SUSPENDED = _C.ACCOUNT_SUSPENDED
cdef int EXPIRE_RELEASE = _C.EXPIRE_RELEASE
cdef int EXPIRE_COMMIT = _C.EXPIRE_COMMIT

# Batch item kinds: BatchOp / BatchResult field numbers; 0 = the Python path answers the item.
cdef enum:
    K_SLOW = 0
    K_RESERVE = 1
    K_COMMIT = 2
    K_RELEASE = 3
    K_EXTEND = 4
    K_CHARGE = 5

cdef uint8_t ID_CHAR[256]
memset(ID_CHAR, 0, 256)
for _c in range(256):
    ID_CHAR[_c] = chr(_c) in _C.ID_CHARS

cdef object _encode_str_json = json.encoder.encode_basestring_ascii  # json.dumps' own escaper
cdef tuple _EMPTY_DERIVED = ((), ())


# ---------------------------------------------------------------------------------------- buffers

cdef struct Buf:
    char* p
    Py_ssize_t n
    Py_ssize_t cap


cdef int buf_grow(Buf* b, Py_ssize_t extra) except -1:
    cdef Py_ssize_t cap = b.cap * 2
    cdef char* p
    if cap < b.n + extra:
        cap = b.n + extra
    if cap < 256:
        cap = 256
    p = <char*>PyMem_Realloc(b.p, cap)
    if p == NULL:
        raise MemoryError()
    b.p = p
    b.cap = cap
    return 0


cdef inline int buf_put(Buf* b, const void* src, Py_ssize_t n) except -1:
    if b.n + n > b.cap:
        buf_grow(b, n)
    memcpy(b.p + b.n, src, n)
    b.n += n
    return 0


cdef inline int buf_byte(Buf* b, uint8_t c) except -1:
    if b.n + 1 > b.cap:
        buf_grow(b, 1)
    b.p[b.n] = <char>c
    b.n += 1
    return 0


cdef inline int buf_varint(Buf* b, uint64_t v) except -1:
    if b.n + 10 > b.cap:
        buf_grow(b, 10)
    while v >= 0x80:
        b.p[b.n] = <char>((v & 0x7f) | 0x80)
        b.n += 1
        v >>= 7
    b.p[b.n] = <char>v
    b.n += 1
    return 0


cdef inline int buf_u32le(Buf* b, uint32_t v) except -1:
    cdef uint8_t s[4]
    s[0] = v & 0xff
    s[1] = (v >> 8) & 0xff
    s[2] = (v >> 16) & 0xff
    s[3] = (v >> 24) & 0xff
    return buf_put(b, s, 4)


cdef inline const char* str_utf8(object s, Py_ssize_t* n) except NULL:
    """A str's UTF-8 bytes: for a compact ASCII str (every id made here) its own data, read
    inline; else PyUnicode_AsUTF8AndSize."""
    if PyUnicode_IS_COMPACT_ASCII(s):
        n[0] = PyUnicode_GET_LENGTH(s)
        return <const char*>PyUnicode_DATA(s)
    return PyUnicode_AsUTF8AndSize(s, n)


cdef inline int buf_pystr_ascii(Buf* b, object s) except -1:
    """Append a str's UTF-8 bytes (ASCII for ids and JSON text)."""
    cdef Py_ssize_t n
    cdef const char* p = str_utf8(s, &n)
    return buf_put(b, p, n)


cdef inline int varint_size(uint64_t v) noexcept nogil:
    cdef int n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


# ---------------------------------------------------------------------------------------- SipHash-2-4

cdef inline uint64_t _rotl(uint64_t x, int b) noexcept nogil:
    return (x << b) | (x >> (64 - b))


cdef inline uint64_t _le64(const uint8_t* p) noexcept nogil:
    return (<uint64_t>p[0] | (<uint64_t>p[1] << 8) | (<uint64_t>p[2] << 16) | (<uint64_t>p[3] << 24)
            | (<uint64_t>p[4] << 32) | (<uint64_t>p[5] << 40) | (<uint64_t>p[6] << 48)
            | (<uint64_t>p[7] << 56))


cdef struct SipState:
    # SipHash's state after `absorbed` bytes (whole 8-byte blocks) of a message
    uint64_t v0, v1, v2, v3
    Py_ssize_t absorbed


cdef inline void sip_init(SipState* s, uint64_t k0, uint64_t k1) noexcept nogil:
    s.v0 = k0 ^ 0x736f6d6570736575ULL
    s.v1 = k1 ^ 0x646f72616e646f6dULL
    s.v2 = k0 ^ 0x6c7967656e657261ULL
    s.v3 = k1 ^ 0x7465646279746573ULL
    s.absorbed = 0


cdef void sip_absorb(SipState* s, const uint8_t* m, Py_ssize_t nblocks) noexcept nogil:
    """Absorb the next `nblocks` whole blocks of the message into `s`."""
    cdef uint64_t v0 = s.v0, v1 = s.v1, v2 = s.v2, v3 = s.v3, mi
    cdef Py_ssize_t i
    cdef int r
    for i in range(0, 8 * nblocks, 8):
        mi = _le64(m + i)
        v3 ^= mi
        for r in range(2):
            v0 += v1; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
            v2 += v3; v3 = _rotl(v3, 16); v3 ^= v2
            v0 += v3; v3 = _rotl(v3, 21); v3 ^= v0
            v2 += v1; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)
        v0 ^= mi
    s.v0 = v0
    s.v1 = v1
    s.v2 = v2
    s.v3 = v3
    s.absorbed += 8 * nblocks


cdef uint64_t sip_finish(const SipState* start, const uint8_t* m, Py_ssize_t n) noexcept nogil:
    """SipHash-2-4 of the message whose first `start.absorbed` bytes `start` has absorbed and
    whose other `n` bytes are `m` (`start` itself is left as it is)."""
    cdef SipState s = start[0]
    cdef Py_ssize_t i, full = n - (n % 8)
    cdef uint64_t b = (<uint64_t>(start.absorbed + n)) << 56
    cdef uint64_t v0, v1, v2, v3
    cdef int r
    sip_absorb(&s, m, full // 8)
    v0 = s.v0
    v1 = s.v1
    v2 = s.v2
    v3 = s.v3
    for i in range(n - full):
        b |= (<uint64_t>m[full + i]) << (8 * i)
    v3 ^= b
    for r in range(2):
        v0 += v1; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
        v2 += v3; v3 = _rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = _rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)
    v0 ^= b
    v2 ^= 0xff
    for r in range(4):
        v0 += v1; v1 = _rotl(v1, 13); v1 ^= v0; v0 = _rotl(v0, 32)
        v2 += v3; v3 = _rotl(v3, 16); v3 ^= v2
        v0 += v3; v3 = _rotl(v3, 21); v3 ^= v0
        v2 += v1; v1 = _rotl(v1, 17); v1 ^= v2; v2 = _rotl(v2, 32)
    return v0 ^ v1 ^ v2 ^ v3


cdef uint64_t siphash24(uint64_t k0, uint64_t k1, const uint8_t* m, Py_ssize_t n) noexcept nogil:
    """SipHash-2-4 (Aumasson & Bernstein), 64-bit output."""
    cdef SipState s
    sip_init(&s, k0, k1)
    return sip_finish(&s, m, n)


def siphash24_bytes(bytes key, bytes data):
    """SipHash-2-4 of `data` under a 16-byte `key`, as an unsigned int (for tests)."""
    if len(key) != 16:
        raise ValueError("key must be 16 bytes")
    cdef const uint8_t* k = <const uint8_t*>PyBytes_AS_STRING(key)
    return siphash24(_le64(k), _le64(k + 8), <const uint8_t*>PyBytes_AS_STRING(data), len(data))


# ---------------------------------------------------------------------------------------- fingerprint

FINGERPRINT_KEY = b"quota.v1/idem-fp"  # 16 bytes: the fixed SipHash key (never change it)
cdef uint64_t FP_K0 = _le64(<const uint8_t*>PyBytes_AS_STRING(FINGERPRINT_KEY))
cdef uint64_t FP_K1 = _le64((<const uint8_t*>PyBytes_AS_STRING(FINGERPRINT_KEY)) + 8)

DOMAIN_RESERVE = "quota.v1.ReserveRequest"
DOMAIN_COMMIT = "quota.v1.CommitRequest"
DOMAIN_CHARGE = "quota.v1.ChargeRequest"
DOMAIN_GRANT = "quota.v1.GrantRequest"
DOMAIN_INCLUDED_GRANT = "quota.v1.IncludedGrant"

cdef enum:
    T_NONE = 0
    T_BOOL = 1
    T_INT = 2
    T_BIGINT = 3
    T_STR = 4
    T_BYTES = 5
    T_MAP = 6

cdef Buf _canon  # scratch buffer of the canonical encoding (the GIL guards it)


cdef inline int canon_str_raw(Buf* b, const char* p, Py_ssize_t n) except -1:
    buf_byte(b, T_STR)
    buf_u32le(b, <uint32_t>n)
    return buf_put(b, p, n)


cdef inline int canon_i64(Buf* b, int64_t v) except -1:
    cdef char* o
    if b.n + 9 > b.cap:
        buf_grow(b, 9)
    o = b.p + b.n
    o[0] = T_INT
    qw_put_le64(o + 1, <uint64_t>v)
    b.n += 9
    return 0


cdef inline int canon_bool(Buf* b, bint v) except -1:
    buf_byte(b, T_BOOL)
    return buf_byte(b, 1 if v else 0)


cdef int canon_value(Buf* b, object v) except -1:
    cdef Py_ssize_t n
    cdef const char* p
    cdef bytes text
    cdef int64_t i
    if v is None:
        return buf_byte(b, T_NONE)
    if v is True or v is False:
        return canon_bool(b, v is True)
    if isinstance(v, int):
        if -0x8000000000000000 <= v <= 0x7fffffffffffffff:
            i = v
            return canon_i64(b, i)
        text = str(int(v)).encode()
        buf_byte(b, T_BIGINT)
        buf_u32le(b, <uint32_t>len(text))
        return buf_put(b, PyBytes_AS_STRING(text), len(text))
    if isinstance(v, str):
        try:
            p = PyUnicode_AsUTF8AndSize(v, &n)
        except UnicodeEncodeError:
            text = (<str>v).encode("utf-8", "surrogatepass")
            return canon_str_raw(b, PyBytes_AS_STRING(text), len(text))
        return canon_str_raw(b, p, n)
    if isinstance(v, bytes):
        buf_byte(b, T_BYTES)
        buf_u32le(b, <uint32_t>len(<bytes>v))
        return buf_put(b, PyBytes_AS_STRING(v), len(<bytes>v))
    if hasattr(v, "items"):
        return canon_map(b, v)
    raise TypeError(f"cannot fingerprint a {type(v).__name__}")


cdef int canon_map(Buf* b, object mapping) except -1:
    cdef object key, value
    cdef Py_ssize_t n
    if mapping is None:
        buf_byte(b, T_MAP)
        return buf_u32le(b, 0)
    n = len(mapping)
    buf_byte(b, T_MAP)
    buf_u32le(b, <uint32_t>n)
    if n == 0:
        return 0
    if n == 1:
        for key, value in mapping.items():
            canon_value(b, key)
            canon_value(b, value)
        return 0
    for key, value in sorted(mapping.items()):
        canon_value(b, key)
        canon_value(b, value)
    return 0


cdef SipState _canon_sip  # the SipHash state _canon's bytes follow (see canon_begin_prefix)


cdef inline int canon_begin(Buf* b, str domain) except -1:
    """Start the canonical encoding of a `domain` request in `b` (which is _canon)."""
    sip_init(&_canon_sip, FP_K0, FP_K1)
    b.n = 0
    buf_put(b, b"QFP1", 4)
    return canon_value(b, domain)


cdef struct CanonPrefix:
    # What canon_begin writes for a domain, its whole 8-byte blocks already hashed: the state
    # after them and the bytes after them (fewer than 8).
    SipState state
    char rest[8]
    Py_ssize_t nrest


cdef CanonPrefix canon_prefix(str domain) except *:
    cdef CanonPrefix pre
    canon_begin(&_canon, domain)
    pre.state = _canon_sip
    sip_absorb(&pre.state, <const uint8_t*>_canon.p, _canon.n // 8)
    pre.nrest = _canon.n - pre.state.absorbed
    memcpy(pre.rest, _canon.p + pre.state.absorbed, pre.nrest)
    return pre


cdef inline int canon_begin_prefix(Buf* b, const CanonPrefix* pre) except -1:
    """canon_begin of the domain `pre` was made from (canon_prefix), in `b` (which is _canon),
    without hashing its whole blocks again: the fingerprint is the same."""
    global _canon_sip
    _canon_sip = pre.state
    b.n = 0
    return buf_put(b, pre.rest, pre.nrest)


cdef CanonPrefix PREFIX_RESERVE = canon_prefix(DOMAIN_RESERVE)
cdef CanonPrefix PREFIX_COMMIT = canon_prefix(DOMAIN_COMMIT)
cdef CanonPrefix PREFIX_CHARGE = canon_prefix(DOMAIN_CHARGE)


cdef inline int64_t canon_finish(Buf* b):
    """The fingerprint of the canonical encoding in `b` (which is _canon)."""
    return <int64_t>sip_finish(&_canon_sip, <const uint8_t*>b.p, b.n)


def fingerprint(str domain, *parts):
    """The idempotency fingerprint of a request: a stable signed 64-bit integer.

    It is persisted with every idempotency record, so it must never change for the same
    parameters: not across processes, restarts, Python versions or the two request paths. It
    is SipHash-2-4 under the fixed 16-byte key `FINGERPRINT_KEY` of this canonical encoding:

        b"QFP1" VALUE(domain) VALUE(part)...
        VALUE(None)  = 0x00
        VALUE(bool)  = 0x01 then 0x00 or 0x01
        VALUE(int)   = 0x02 then 8 bytes little-endian two's complement (int64 range),
                       else 0x03 then u32le length and the decimal text
        VALUE(str)   = 0x04 then u32le length and the UTF-8 bytes
        VALUE(bytes) = 0x05 then u32le length and the bytes
        VALUE(map)   = 0x06 then u32le count, then VALUE(key) VALUE(value) per entry, the
                       entries sorted by key (Python's str order, which is the UTF-8 byte order
                       the fast path sorts by; maps are unordered, their wire order is not a
                       parameter)

    The output is the 64-bit SipHash as a signed int. `domain` names the request kind (e.g.
    DOMAIN_RESERVE), so requests of different kinds never share an encoding. Absence and zero
    differ (None vs 0), and so do bool and int.
    """
    cdef object part
    canon_begin(&_canon, domain)
    for part in parts:
        canon_value(&_canon, part)
    return canon_finish(&_canon)


def fingerprint_reserve(amount, action, quantities, ttl_ms, allow_partial, min_amount, on_expire, labels):
    """The fingerprint of a ReserveRequest: raw `amount` and `ttl_ms` as sent, `on_expire` as
    the core's number (UNSPECIFIED and RELEASE are the same request)."""
    return fingerprint(DOMAIN_RESERVE, int(amount), str(action), quantities or {}, int(ttl_ms),
                       bool(allow_partial), int(min_amount), int(on_expire), labels or {})


def fingerprint_commit(amount, quantities, labels):
    """The fingerprint of a CommitRequest: `amount` None when the field is absent."""
    return fingerprint(DOMAIN_COMMIT, None if amount is None else int(amount), quantities or {}, labels or {})


def fingerprint_charge(amount, action, quantities, labels):
    """The fingerprint of a ChargeRequest (raw `amount` as sent)."""
    return fingerprint(DOMAIN_CHARGE, int(amount), str(action), quantities or {}, labels or {})


# ---------------------------------------------------------------------------------------- decoding

cdef enum:
    PUNT = 1          # returned by the scanners: hand the message to the Python path

# Field schema of a message: what each field number is expected to be.
cdef enum:
    F_NONE = 0        # unknown field: skipped by its wire type
    F_VAR = 1         # varint scalar (int64, bool, enum)
    F_LEN = 2         # string
    F_MAP0 = 3        # map entry of the first map (quantities)
    F_MAP1 = 4        # map entry of the second map (labels)

cdef struct Field:
    bint present
    uint64_t v
    const uint8_t* p
    Py_ssize_t n

cdef struct Scan:
    Field f[11]
    int nmap0
    int nmap1
    const uint8_t* m0p[MAP_RAW_MAX]
    Py_ssize_t m0n[MAP_RAW_MAX]
    const uint8_t* m1p[MAP_RAW_MAX]
    Py_ssize_t m1n[MAP_RAW_MAX]

# Indexed by field number (0 unused); fields 11+ are unknown to all five messages.
cdef uint8_t SCHEMA_RESERVE[11]
SCHEMA_RESERVE[:] = [F_NONE, F_LEN, F_LEN, F_VAR, F_LEN, F_MAP0, F_VAR, F_VAR, F_VAR, F_VAR, F_MAP1]
cdef uint8_t SCHEMA_COMMIT[11]
SCHEMA_COMMIT[:] = [F_NONE, F_LEN, F_LEN, F_VAR, F_MAP0, F_MAP1, F_NONE, F_NONE, F_NONE, F_NONE, F_NONE]
cdef uint8_t SCHEMA_RELEASE[11]
SCHEMA_RELEASE[:] = [F_NONE, F_LEN, F_LEN, F_NONE, F_NONE, F_NONE, F_NONE, F_NONE, F_NONE, F_NONE, F_NONE]
cdef uint8_t SCHEMA_EXTEND[11]
SCHEMA_EXTEND[:] = [F_NONE, F_LEN, F_LEN, F_VAR, F_VAR, F_NONE, F_NONE, F_NONE, F_NONE, F_NONE, F_NONE]
cdef uint8_t SCHEMA_CHARGE[11]
SCHEMA_CHARGE[:] = [F_NONE, F_LEN, F_LEN, F_VAR, F_LEN, F_MAP0, F_MAP1, F_NONE, F_NONE, F_NONE, F_NONE]


cdef inline int rd_varint(const uint8_t** pp, const uint8_t* end, uint64_t* out) noexcept nogil:
    cdef const uint8_t* p = pp[0]
    cdef uint64_t result = 0
    cdef uint8_t byte
    cdef int i
    for i in range(10):
        if p >= end:
            return PUNT
        byte = p[0]
        p += 1
        if i == 9 and byte > 1:
            return PUNT  # more than 64 bits (or a continuation past the 10th byte)
        result |= (<uint64_t>(byte & 0x7f)) << (7 * i)
        if byte < 0x80:
            pp[0] = p
            out[0] = result
            return 0
    return PUNT


cdef inline int rd_len(const uint8_t** pp, const uint8_t* end, const uint8_t** out_p, Py_ssize_t* out_n) noexcept nogil:
    cdef uint64_t n
    if rd_varint(pp, end, &n):
        return PUNT
    if n > <uint64_t>(end - pp[0]):
        return PUNT
    out_p[0] = pp[0]
    out_n[0] = <Py_ssize_t>n
    pp[0] += n
    return 0


cdef inline int skip_field(const uint8_t** pp, const uint8_t* end, uint32_t wt) noexcept nogil:
    cdef uint64_t v
    cdef const uint8_t* q
    cdef Py_ssize_t n
    if wt == 0:
        return rd_varint(pp, end, &v)
    if wt == 1:
        if end - pp[0] < 8:
            return PUNT
        pp[0] += 8
        return 0
    if wt == 2:
        return rd_len(pp, end, &q, &n)
    if wt == 5:
        if end - pp[0] < 4:
            return PUNT
        pp[0] += 4
        return 0
    return PUNT  # groups (3, 4) and invalid wire types: the Python path decides


cdef int scan_message(const uint8_t* p, Py_ssize_t n, const uint8_t* schema, Scan* s) noexcept nogil:
    """Collect the fields of one message (last occurrence wins; map entries accumulate)."""
    cdef const uint8_t* end = p + n
    cdef uint64_t key
    cdef uint64_t field
    cdef uint32_t wt
    cdef uint8_t kind
    cdef int i
    for i in range(11):
        s.f[i].present = 0
        s.f[i].v = 0
        s.f[i].n = 0
    s.nmap0 = 0
    s.nmap1 = 0
    while p < end:
        if rd_varint(&p, end, &key):
            return PUNT
        field = key >> 3
        wt = <uint32_t>(key & 7)
        if field == 0 or field > 0x1FFFFFFF:
            return PUNT
        kind = schema[field] if field < 11 else F_NONE
        if kind == F_NONE:
            if skip_field(&p, end, wt):
                return PUNT
        elif kind == F_VAR:
            if wt != 0 or rd_varint(&p, end, &s.f[field].v):
                return PUNT
            s.f[field].present = 1
        elif kind == F_LEN:
            # A repeated string: protobuf checks the UTF-8 of every occurrence, we see the last.
            if wt != 2 or s.f[field].present or rd_len(&p, end, &s.f[field].p, &s.f[field].n):
                return PUNT
            s.f[field].present = 1
        elif kind == F_MAP0:
            if wt != 2 or s.nmap0 >= MAP_RAW_MAX:
                return PUNT
            if rd_len(&p, end, &s.m0p[s.nmap0], &s.m0n[s.nmap0]):
                return PUNT
            s.nmap0 += 1
        else:
            if wt != 2 or s.nmap1 >= MAP_RAW_MAX:
                return PUNT
            if rd_len(&p, end, &s.m1p[s.nmap1], &s.m1n[s.nmap1]):
                return PUNT
            s.nmap1 += 1
    return 0


cdef int scan_entry(const uint8_t* p, Py_ssize_t n, bint str_value, const uint8_t** kp, Py_ssize_t* kn,
                    const uint8_t** vp, Py_ssize_t* vn, uint64_t* vv) noexcept nogil:
    """One map entry: key (field 1, string) and value (field 2); absent fields are defaults."""
    cdef const uint8_t* end = p + n
    cdef uint64_t key
    kp[0] = NULL
    kn[0] = 0
    vp[0] = NULL
    vn[0] = 0
    vv[0] = 0
    while p < end:
        if rd_varint(&p, end, &key):
            return PUNT
        if key == 0x0a:  # a repeated string would have its earlier UTF-8 unchecked: punt
            if kp[0] != NULL or rd_len(&p, end, kp, kn):
                return PUNT
        elif key == 0x12 and str_value:
            if vp[0] != NULL or rd_len(&p, end, vp, vn):
                return PUNT
        elif key == 0x10 and not str_value:
            if rd_varint(&p, end, vv):
                return PUNT
        else:
            return PUNT  # anything else in an entry: let the Python path judge it
    return 0


cdef inline bint valid_id(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    if n < 1 or n > ID_LEN_MAX:
        return 0
    for i in range(n):
        if not ID_CHAR[p[i]]:
            return 0
    return 1


cdef inline object id_str(Field* f):
    return PyUnicode_DecodeASCII(<const char*>f.p, f.n, NULL)


cdef inline bint same_str(object s, Field* f) except -1:
    """Whether `s` (a str, or None) is exactly the field's bytes."""
    cdef Py_ssize_t n
    cdef const char* q
    if s is None:
        return False
    q = str_utf8(s, &n)
    return n == f.n and memcmp(q, f.p, n) == 0


# ---------------------------------------------------------------------------------------- maps

# A decoded map, kept as slices of the request bytes: validated, sorted by key (UTF-8 byte order,
# which is code point order, which is how Python sorts str), a repeated key keeping its last
# value (protobuf's rule). Nothing is turned into Python objects unless it has to be.
cdef struct Entry:
    const uint8_t* kp
    Py_ssize_t kn
    const uint8_t* vp           # labels: the value's UTF-8
    Py_ssize_t vn
    int64_t v                   # quantities: the value

cdef struct RawMap:
    int n
    Entry e[MAP_RAW_MAX]


cdef Py_ssize_t utf8_chars(const uint8_t* p, Py_ssize_t n) noexcept nogil:
    """Code points in `p` if it is well-formed UTF-8 (Unicode table 3-7, as protobuf and
    CPython's strict decoder check it: no overlong forms, surrogates or values above U+10FFFF),
    else -1."""
    cdef Py_ssize_t i = 0, count = 0
    cdef uint8_t c, lo, hi
    cdef int more, k
    while i < n:
        c = p[i]
        if c < 0x80:
            i += 1
            count += 1
            continue
        lo = 0x80
        hi = 0xBF
        if 0xC2 <= c <= 0xDF:
            more = 1
        elif c == 0xE0:
            more = 2
            lo = 0xA0
        elif 0xE1 <= c <= 0xEC or c == 0xEE or c == 0xEF:
            more = 2
        elif c == 0xED:
            more = 2
            hi = 0x9F
        elif c == 0xF0:
            more = 3
            lo = 0x90
        elif 0xF1 <= c <= 0xF3:
            more = 3
        elif c == 0xF4:
            more = 3
            hi = 0x8F
        else:
            return -1
        if i + more >= n:
            return -1
        if not (lo <= p[i + 1] <= hi):
            return -1
        for k in range(2, more + 1):
            if not (0x80 <= p[i + k] <= 0xBF):
                return -1
        i += more + 1
        count += 1
    return count


cdef inline int key_cmp(const Entry* a, const Entry* b) noexcept nogil:
    cdef Py_ssize_t m = a.kn if a.kn < b.kn else b.kn
    cdef int c = memcmp(a.kp, b.kp, m) if m else 0
    if c:
        return c
    return (a.kn > b.kn) - (a.kn < b.kn)


cdef int raw_map(const uint8_t** ps, const Py_ssize_t* ns, int count, bint labels, RawMap* m) noexcept nogil:
    """The map of `count` raw entries if check_quantities / check_labels would accept it, else PUNT."""
    cdef int i, j
    cdef Entry e
    cdef uint64_t vv
    cdef Py_ssize_t chars
    m.n = 0
    for i in range(count):
        if scan_entry(ps[i], ns[i], labels, &e.kp, &e.kn, &e.vp, &e.vn, &vv) or e.kn == 0:
            return PUNT
        chars = utf8_chars(e.kp, e.kn)
        if chars < 0 or chars > LABEL_KEY_MAX:
            return PUNT
        if labels:
            chars = utf8_chars(e.vp, e.vn)
            if chars < 0 or chars > LABEL_VALUE_MAX:
                return PUNT
            e.v = 0
        else:
            e.v = <int64_t>vv
            if e.v < 0 or e.v > AMOUNT_MAX:
                return PUNT
        j = m.n
        while j > 0 and key_cmp(&m.e[j - 1], &e) > 0:
            j -= 1
        if j > 0 and key_cmp(&m.e[j - 1], &e) == 0:
            m.e[j - 1] = e  # a repeated key: the last value wins
        else:
            memmove(&m.e[j + 1], &m.e[j], (m.n - j) * sizeof(Entry))
            m.e[j] = e
            m.n += 1
    return PUNT if m.n > MAP_ENTRIES_MAX else 0


cdef inline int64_t raw_get(const RawMap* m, const char* name, Py_ssize_t n) noexcept nogil:
    """quantities.get(name, 0)."""
    cdef int i
    for i in range(m.n):
        if m.e[i].kn == n and memcmp(m.e[i].kp, name, n) == 0:
            return m.e[i].v
    return 0


cdef dict raw_dict(const RawMap* m, bint labels):
    """The map as the Python path has it (for the few places that need a dict)."""
    cdef dict out = {}
    cdef int i
    for i in range(m.n):
        key = PyUnicode_DecodeUTF8(<const char*>m.e[i].kp, m.e[i].kn, NULL)
        if labels:
            out[key] = PyUnicode_DecodeUTF8(<const char*>m.e[i].vp, m.e[i].vn, NULL) if m.e[i].vn else ""
        else:
            out[key] = m.e[i].v
    return out


cdef int canon_raw_map(Buf* b, const RawMap* m, bint labels) except -1:
    """canon_map of the map's dict, written from the bytes (same sort order, same encoding)."""
    cdef int i
    buf_byte(b, T_MAP)
    buf_u32le(b, <uint32_t>m.n)
    for i in range(m.n):
        canon_str_raw(b, <const char*>m.e[i].kp, m.e[i].kn)
        if labels:
            canon_str_raw(b, <const char*>m.e[i].vp, m.e[i].vn)
        else:
            canon_i64(b, m.e[i].v)
    return 0


cdef const char* HEX = b"0123456789abcdef"


cdef inline void put_u4(char* o, uint32_t c) noexcept nogil:
    o[0] = 92  # \
    o[1] = 117  # u
    o[2] = HEX[(c >> 12) & 0xF]
    o[3] = HEX[(c >> 8) & 0xF]
    o[4] = HEX[(c >> 4) & 0xF]
    o[5] = HEX[c & 0xF]


cdef int json_raw(Buf* b, const uint8_t* p, Py_ssize_t n) except -1:
    """json.dumps of a str given as well-formed UTF-8 (ensure_ascii: json's own escapes)."""
    cdef Py_ssize_t i = 0
    cdef uint32_t c
    cdef uint8_t x
    cdef char* o
    if b.n + 6 * n + 2 > b.cap:
        buf_grow(b, 6 * n + 2)
    o = b.p + b.n
    o[0] = 34
    o += 1
    while i < n:
        x = p[i]
        if x < 0x80:
            i += 1
            if 0x20 <= x <= 0x7E and x != 34 and x != 92:
                o[0] = <char>x
                o += 1
                continue
            o[0] = 92
            if x == 34 or x == 92:
                o[1] = <char>x
            elif x == 8:
                o[1] = 98  # b
            elif x == 12:
                o[1] = 102  # f
            elif x == 10:
                o[1] = 110  # n
            elif x == 13:
                o[1] = 114  # r
            elif x == 9:
                o[1] = 116  # t
            else:
                put_u4(o, x)
                o += 6
                continue
            o += 2
            continue
        if x < 0xE0:
            c = ((x & 0x1F) << 6) | (p[i + 1] & 0x3F)
            i += 2
        elif x < 0xF0:
            c = ((x & 0x0F) << 12) | ((p[i + 1] & 0x3F) << 6) | (p[i + 2] & 0x3F)
            i += 3
        else:
            c = ((x & 0x07) << 18) | ((p[i + 1] & 0x3F) << 12) | ((p[i + 2] & 0x3F) << 6) | (p[i + 3] & 0x3F)
            i += 4
        if c >= 0x10000:
            c -= 0x10000
            put_u4(o, 0xD800 | ((c >> 10) & 0x3FF))
            o += 6
            c = 0xDC00 | (c & 0x3FF)
        put_u4(o, c)
        o += 6
    o[0] = 34
    o += 1
    b.n = o - b.p
    return 0


cdef int json_raw_map(Buf* b, const RawMap* m, bint labels) except -1:
    """The entries of a sorted map as JSON object members (no braces)."""
    cdef int i
    for i in range(m.n):
        if i:
            buf_byte(b, 44)  # ,
        json_raw(b, m.e[i].kp, m.e[i].kn)
        buf_byte(b, 58)  # :
        if labels:
            json_raw(b, m.e[i].vp, m.e[i].vn)
        else:
            buf_int(b, m.e[i].v)
    return 0


cdef inline int fmt_decimal(int64_t v, char* digits) noexcept nogil:
    """Write str(v) at the end of `digits` (24 chars); the index of its first char."""
    cdef int i = 24
    cdef uint64_t u = (<uint64_t>0 - <uint64_t>v) if v < 0 else <uint64_t>v
    while True:
        i -= 1
        digits[i] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        i -= 1
        digits[i] = 45  # -
    return i


cdef int buf_int(Buf* b, int64_t v) except -1:
    """str(v) for an int64."""
    cdef char digits[24]
    cdef int i = fmt_decimal(v, digits)
    return buf_put(b, digits + i, 24 - i)


cdef bint json_plain(str s):
    """Whether json.dumps(s) (ensure_ascii) is s in quotes: printable ASCII without " or \\."""
    cdef Py_ssize_t n, i
    cdef const unsigned char* p
    cdef unsigned char c
    if not PyUnicode_IS_ASCII(s):
        return False
    p = <const unsigned char*>PyUnicode_AsUTF8AndSize(s, &n)
    for i in range(n):
        c = p[i]
        if c < 0x20 or c > 0x7e or c == 34 or c == 92:
            return False
    return True


cdef int json_value(Buf* b, object v) except -1:
    """json.dumps of an int, bool or str (the shapes of a usage row)."""
    cdef int overflow = 0
    cdef long long i
    if PyLong_CheckExact(v):  # the amounts: read as int64 directly (bools are not exact ints)
        i = PyLong_AsLongLongAndOverflow(v, &overflow)
        if not overflow:
            return buf_int(b, i)
        return buf_pystr_ascii(b, int.__repr__(v))
    if v is True:
        return buf_put(b, b"true", 4)
    if v is False:
        return buf_put(b, b"false", 5)
    if isinstance(v, str):
        if json_plain(v):  # the usual action name or label: nothing to escape
            buf_byte(b, 34)
            buf_pystr_ascii(b, v)
            return buf_byte(b, 34)
        return buf_pystr_ascii(b, _encode_str_json(v))
    if -0x8000000000000000 <= v <= 0x7fffffffffffffff:
        return buf_int(b, v)
    return buf_pystr_ascii(b, int.__repr__(v))


cdef bytes json_dict_members(dict d):
    """The members of json.dumps(dict(sorted(d.items()))) (no braces); b"" if empty."""
    cdef Buf b
    cdef bytes out
    if not d:
        return b""
    b.p = NULL
    b.n = 0
    b.cap = 0
    try:
        first = True
        for key, value in (sorted(d.items()) if len(d) > 1 else d.items()):
            if not first:
                buf_byte(&b, 44)
            first = False
            json_value(&b, key)
            buf_byte(&b, 58)
            json_value(&b, value)
        out = PyBytes_FromStringAndSize(b.p, b.n)
    finally:
        PyMem_Free(b.p)
    return out


# ---------------------------------------------------------------------------------------- caches

cdef class WireCodec


@cython.final
cdef class _Gate:
    """A plan's answer for one action: the feature gate and its rate limits."""
    cdef object allowed         # True / False
    cdef tuple buckets          # the bucket specs when no limit's cost depends on quantities
    cdef list limits            # else: [(name, capacity, refill_amount, period_ns, cost name as UTF-8 or None)]


@cython.final
cdef class _PlanGates:
    cdef object plan            # quota_server.plans.Plan, or None (plan not configured)
    cdef dict gates             # action -> _Gate


@cython.final
cdef class _PriceInfo:
    """What the data plane needs of one action's price, computed once."""
    cdef bint known             # the catalog prices this action
    cdef object price           # the ActionPrice (its own arithmetic is the fallback on overflow)
    cdef int64_t fixed_line     # the fixed line, margin included (0 if none)
    cdef int64_t scale          # 100 + margin_percent
    cdef tuple metered          # ((quantity name as UTF-8, per_1000), ...) in catalog order
    cdef bytes meta_plain       # the hold's meta without labels


# UsageRow is a frozen slots dataclass: its __init__ sets each field through object.__setattr__
# (~0.8 µs). Rows built here fill the same slots directly; they compare equal.
cdef object _UsageRow = UsageRow
cdef bint _ROW_SLOTS = tuple(getattr(UsageRow, "__slots__", ())) == ("account_id", "at_ms", "payload")

cdef extern from "Python.h":
    int PyObject_GenericSetAttr(object o, object name, object value) except -1


cdef object new_usage_row(object account_id, object at_ms, bytes payload):
    if not _ROW_SLOTS:
        return _UsageRow(account_id, at_ms, payload)
    row = object.__new__(_UsageRow)
    PyObject_GenericSetAttr(row, "account_id", account_id)
    PyObject_GenericSetAttr(row, "at_ms", at_ms)
    PyObject_GenericSetAttr(row, "payload", payload)
    return row


@cython.final
@cython.no_gc  # one per Commit/Charge: keep them out of the collector (they hold no cycles)
cdef class _Usage:
    """The `derive` of a fast-path Commit or Charge: its usage row and events (see engine.Derive)."""
    cdef WireCodec codec
    cdef int kind               # K_COMMIT / K_CHARGE
    cdef object account_id
    cdef object item_id         # reservation_id or charge_id
    cdef object action          # charges: the action; commits: read from the hold's meta
    cdef bytes quantities_json  # charges: the quantities as JSON members (sorted), b"" if none
    cdef bytes labels_json      # charges: the labels as JSON members (sorted), b"" if none
    cdef object labels          # commits: the commit's labels (dict) or None

    def __call__(self, op, r, fresh, now_ms):
        cdef Buf* b = &self.codec.tmp
        cdef list events = []
        if not fresh:
            return _EMPTY_DERIVED
        self.codec.bind_ledger()
        b.n = 0
        if not self.write_json(b, r, events):
            return _EMPTY_DERIVED
        return [new_usage_row(self.account_id, now_ms, PyBytes_FromStringAndSize(b.p, b.n))], events

    cdef int write_json(self, Buf* b, object r, list events) except -1:
        """Append this op's usage record (JSON, exactly as dataplane._usage_row writes it) to `b`
        and its events to `events`, for result `r`; 0 if the op records no usage."""
        cdef WireCodec c = self.codec
        cdef Result t = as_result(r)
        if t.n < 6:
            raise ValueError(f"core result {t!r} is too short for a usage record")
        if self.kind == K_CHARGE:
            if result_item(t, 1) != DECISION_OK:
                return 0
            c.usage_json(b, "", self.item_id, self.action, self.quantities_json, result_item(t, 2), 0,
                         self.labels_json, False)
            c.usage_events(events, self.account_id, result_item(t, 3), 0)
            return 1
        action, labels_json = c.commit_meta(self)
        uncharged = result_item(t, 3)
        c.usage_json(b, self.item_id, "", action, b"", result_item(t, 1), uncharged, labels_json,
                     result_item(t, 5))
        c.usage_events(events, self.account_id, result_item(t, 4), uncharged)
        return 1


# ---------------------------------------------------------------------------------------- the codec

@cython.final
cdef class WireCodec:
    """Decodes the mutating QuotaService requests into core ops and encodes their responses.

    Built by DataPlane with everything the Python path reads: the account index (plan and
    status per account), the plan and price catalogs, the TTL defaults, and the meta/event
    helpers of the Python path (shared, so both paths give the same bytes).
    """
    cdef object accounts
    cdef dict account_entries
    cdef object plans
    cdef object prices
    cdef object engine
    cdef dict plan_gates
    cdef dict price_infos
    cdef int64_t hold_ttl_ms
    cdef int64_t hold_ttl_max_ms
    cdef object meta_fn
    cdef object decode_meta
    cdef object credit_events
    cdef dict meta_cache
    cdef object meta_of         # the ledger's reservation_meta, bound once per derive (bind_ledger)
    cdef object memo_raw        # the hold meta commit_meta read last, and what it made of it
    cdef tuple memo_meta
    cdef object last_account    # the account id str of the previous op (see account_str)
    cdef object last_action     # the action str of the previous op that named one (see action_str)
    # The last gate and price looked up, for the next op of the same account and action: a
    # Batch is usually one account's ops of one action. Valid within one decode call (the
    # account index and catalogs do not change during it); `decode` and `decode_batch` reset
    # them (memo_gate None: unset). A gate that depends on the op's quantities is never kept.
    cdef object memo_account
    cdef object memo_action
    cdef tuple memo_gate
    cdef object memo_pi_action
    cdef _PriceInfo memo_pi
    cdef Scan scan
    cdef RawMap qmap
    cdef RawMap lmap
    cdef Buf tmp                # scratch for meta and usage JSON (used without calls back to Python)
    # BatchWork.derive_into's per-account usage chunks: kept from one call to the next (only
    # their lengths are reset), so a Batch's chunk does not regrow from nothing every time.
    cdef Buf* ubufs
    cdef Py_ssize_t nubufs      # allocated entries of ubufs (each a Buf, maybe still empty)
    cdef bint deriving
    cdef object derived         # the derive of the op decode_kind returned last (None: none)

    def __init__(self, *, accounts, plans, prices, engine, hold_ttl_ms, hold_ttl_max_ms, meta_fn, decode_meta,
                 credit_events):
        self.accounts = accounts
        self.account_entries = accounts.entries
        self.plans = plans
        self.prices = prices
        self.engine = engine
        self.plan_gates = {}
        self.price_infos = {}
        self.hold_ttl_ms = hold_ttl_ms
        self.hold_ttl_max_ms = hold_ttl_max_ms
        self.meta_fn = meta_fn
        self.decode_meta = decode_meta
        self.credit_events = credit_events
        self.meta_cache = {}

    def __dealloc__(self):
        cdef Py_ssize_t k
        PyMem_Free(self.tmp.p)
        for k in range(self.nubufs):
            PyMem_Free(self.ubufs[k].p)
        PyMem_Free(self.ubufs)

    cdef int usage_buf(self, Py_ssize_t k) except -1:
        """Make usage chunk buffer `k` (the next one a derive takes) exist and empty (this may
        move `ubufs`: hold no pointer into it across the call)."""
        cdef Py_ssize_t cap
        cdef Buf* bufs
        if k == self.nubufs:
            cap = k * 2 + 4
            bufs = <Buf*>PyMem_Realloc(self.ubufs, cap * sizeof(Buf))
            if bufs == NULL:
                raise MemoryError()
            memset(bufs + k, 0, (cap - k) * sizeof(Buf))
            self.ubufs = bufs
            self.nubufs = cap
        self.ubufs[k].n = 0
        return 0

    cdef void usage_bufs_done(self, Py_ssize_t used) noexcept:
        """After a derive that used the first `used` chunk buffers: keep them for the next one,
        except any that grew past USAGE_BUF_KEEP bytes (a rare huge flush's memory is given back)."""
        cdef Py_ssize_t k
        for k in range(used):
            self.ubufs[k].n = 0
            if self.ubufs[k].cap > USAGE_BUF_KEEP:
                PyMem_Free(self.ubufs[k].p)
                self.ubufs[k].p = NULL
                self.ubufs[k].cap = 0

    # -------------------------------------------------------------- lookups shared by the kinds

    cdef object account_str(self, Field* f):
        """The account id of a request as str: the previous op's str object when it is the same
        id (a Batch is usually one account's), so its hash is computed once and dict lookups
        here and in the core hit on identity."""
        if not same_str(self.last_account, f):
            self.last_account = id_str(f)
        return self.last_account

    cdef object action_str(self, Field* f):
        """The action of a request as str: the previous action's str object when it is the same
        (as account_str), so that the gate and price memos below match it by identity."""
        if not same_str(self.last_action, f):
            self.last_action = id_str(f)
        return self.last_action

    cdef inline void forget_memos(self):
        self.memo_gate = None
        self.memo_pi = None

    cdef object account(self, object account_id):
        """(plan_id, status) of the account, or None if it does not exist."""
        cdef PyObject* hit = PyDict_GetItem(self.account_entries, account_id)
        if hit != NULL:
            return <object>hit
        return self.accounts.lookup(account_id)

    cdef _PlanGates plan_gates_of(self, object plan_id):
        cdef PyObject* hit = PyDict_GetItem(self.plan_gates, plan_id)
        cdef _PlanGates pg
        if hit != NULL:
            return <_PlanGates>hit
        pg = _PlanGates.__new__(_PlanGates)
        pg.plan = self.plans.get(plan_id)
        pg.gates = {}
        self.plan_gates[plan_id] = pg
        return pg

    cdef _Gate gate_of(self, _PlanGates pg, object action):
        cdef PyObject* hit = PyDict_GetItem(pg.gates, action)
        cdef _Gate g
        cdef bint dynamic = 0
        if hit != NULL:
            return <_Gate>hit
        g = _Gate.__new__(_Gate)
        g.allowed = (not action) or bool(pg.plan.allows(action))
        g.limits = []
        for lim in pg.plan.limits_for(action):
            cost = None if lim.cost == "requests" else lim.cost.encode()
            dynamic = dynamic or cost is not None
            g.limits.append((lim.name, lim.capacity, lim.refill_amount, lim.refill_period_ms * NS_PER_MS, cost))
        if not dynamic:
            g.buckets = tuple([(name, cap, refill, period, 1) for name, cap, refill, period, _ in g.limits])
            g.limits = None
        if len(pg.gates) < CACHE_ACTIONS_MAX:
            pg.gates[action] = g
        return g

    cdef tuple gate(self, object account_id, object action, const RawMap* quantities):
        """(feature_allowed, buckets) exactly as DataPlane._gate(plan_of(account_id), ...)."""
        cdef object entry
        cdef _PlanGates pg
        cdef _Gate g
        cdef tuple gate
        if self.memo_gate is not None and account_id is self.memo_account and action is self.memo_action:
            return self.memo_gate
        entry = self.account(account_id)
        if entry is None:
            gate = (True, ())
        else:
            pg = self.plan_gates_of((<tuple>entry)[0])
            if pg.plan is None:
                gate = (True, ())
            else:
                g = self.gate_of(pg, action)
                if g.limits is not None:
                    return self.gate_dynamic(g, quantities)
                gate = (g.allowed, g.buckets)
        self.memo_account = account_id
        self.memo_action = action
        self.memo_gate = gate
        return gate

    cdef tuple gate_dynamic(self, _Gate g, const RawMap* quantities):
        """The gate of an action with a limit whose cost is a quantity of the op."""
        cdef bytes cost
        specs = []
        for name, cap, refill, period, cost in g.limits:
            if cost is None:
                specs.append((name, cap, refill, period, 1))
            else:
                specs.append((name, cap, refill, period, raw_get(quantities, PyBytes_AS_STRING(cost), len(cost))))
        return (g.allowed, tuple(specs))

    cdef _PriceInfo price_info(self, object action):
        cdef PyObject* hit
        cdef _PriceInfo pi
        if self.memo_pi is not None and action is self.memo_pi_action:
            return self.memo_pi
        hit = PyDict_GetItem(self.price_infos, action)
        if hit != NULL:
            self.memo_pi_action = action
            self.memo_pi = <_PriceInfo>hit
            return <_PriceInfo>hit
        pi = _PriceInfo.__new__(_PriceInfo)
        pi.known = bool(action) and action in self.prices
        frozen = b""
        pi.metered = ()
        pi.fixed_line = 0
        pi.scale = 100
        if pi.known:
            price = self.prices.price_of(action)
            pi.price = price
            frozen = self.prices.freeze(action)
            pi.scale = 100 + price.margin_percent
            pi.metered = tuple([(name.encode(), per) for name, per in price.per_1000.items()])
            if price.amount is not None:
                fixed_line = -(-(price.amount * pi.scale) // 100)
                pi.fixed_line = fixed_line if fixed_line <= AMOUNT_MAX else AMOUNT_MAX + 1
        pi.meta_plain = self.meta_fn(action, frozen, {})
        if len(self.price_infos) < CACHE_ACTIONS_MAX:
            self.price_infos[action] = pi
        return pi

    cdef int64_t price_of(self, _PriceInfo pi, const RawMap* quantities) except -2:
        """The catalog price of one call (PriceCatalog.price), or -1 to punt."""
        cdef int64_t total = pi.fixed_line
        cdef long long num, line
        cdef int64_t q, per
        cdef bytes name
        for name, per_obj in pi.metered:
            q = raw_get(quantities, PyBytes_AS_STRING(name), len(name))
            if q == 0:
                continue
            if not (0 <= per_obj <= 0x7fffffffffffffff):
                return self.price_slow(pi, quantities)
            per = per_obj
            if qw_mul_overflow(q, per, &num) or qw_mul_overflow(num, pi.scale, &num):
                return self.price_slow(pi, quantities)
            line = num // 100000 + (1 if num % 100000 else 0)
            if qw_add_overflow(total, line, &num):
                return self.price_slow(pi, quantities)
            total = num
        if total > AMOUNT_MAX:
            return -1
        return total

    cdef int64_t price_slow(self, _PriceInfo pi, const RawMap* quantities) except -2:
        try:
            return pi.price.price(raw_dict(quantities, 0))
        except ValueError:  # PricingError: the Python path raises it with its message
            return -1

    cdef bytes meta_with_labels(self, _PriceInfo pi, const RawMap* labels):
        """DataPlane._meta(action, frozen, labels) for non-empty labels (sorted by key); None if
        too large (DataPlane._meta refuses it)."""
        cdef Buf* b = &self.tmp
        b.n = 0
        buf_put(b, PyBytes_AS_STRING(pi.meta_plain), len(pi.meta_plain) - 1)
        buf_put(b, b',"l":{', 6)
        json_raw_map(b, labels, 1)
        buf_put(b, b"}}", 2)
        if b.n > META_BYTES_MAX:
            return None
        return PyBytes_FromStringAndSize(b.p, b.n)

    cdef bytes json_members(self, const RawMap* m, bint labels):
        cdef Buf* b = &self.tmp
        if m.n == 0:
            return b""
        b.n = 0
        json_raw_map(b, m, labels)
        return PyBytes_FromStringAndSize(b.p, b.n)

    cdef int64_t ttl_ns(self, uint64_t raw) except -2:
        """check_ttl_ms(raw, default, max) * NS_PER_MS, or -1 to punt."""
        cdef int64_t ttl = <int64_t>raw
        cdef long long ns
        if ttl == 0:
            ttl = self.hold_ttl_ms
        elif ttl < 0 or ttl > self.hold_ttl_max_ms:
            return -1
        if qw_mul_overflow(ttl, NS_PER_MS, &ns):
            return -1
        return ns

    cdef int maps(self, Scan* s) except -1:
        """Decode the request's quantities and labels into qmap / lmap; PUNT if invalid."""
        self.qmap.n = 0
        self.lmap.n = 0
        if s.nmap0 and raw_map(s.m0p, s.m0n, s.nmap0, 0, &self.qmap):
            return PUNT
        if s.nmap1 and raw_map(s.m1p, s.m1n, s.nmap1, 1, &self.lmap):
            return PUNT
        return 0

    # -------------------------------------------------------------- one request -> (op, derive)

    cdef object reserve(self, const uint8_t* p, Py_ssize_t n):
        cdef Scan* s = &self.scan
        cdef int64_t amount, min_amount, price, ttl_ns
        cdef uint64_t on_expire_raw
        cdef int on_expire
        cdef bint allow_partial
        cdef _PriceInfo pi
        cdef Buf* b = &_canon
        cdef object action = ""
        if scan_message(p, n, SCHEMA_RESERVE, s):
            return None
        if not (valid_id(s.f[1].p, s.f[1].n) and valid_id(s.f[2].p, s.f[2].n)):
            return None
        if s.f[4].n:
            if not valid_id(s.f[4].p, s.f[4].n):
                return None
            action = self.action_str(&s.f[4])
        amount = <int64_t>s.f[3].v
        ttl_ns = self.ttl_ns(s.f[6].v)
        min_amount = <int64_t>s.f[8].v
        on_expire_raw = s.f[9].v
        if ttl_ns < 0 or min_amount < 0 or min_amount > AMOUNT_MAX or on_expire_raw > 2 or s.f[7].v > 1:
            return None
        if amount != 0 and (amount < 0 or amount > AMOUNT_MAX):
            return None
        if amount == 0 and not s.f[4].n:
            return None
        if self.maps(s):
            return None
        pi = self.price_info(action)
        if amount == 0:
            if not pi.known:
                return None
            price = self.price_of(pi, &self.qmap)
            if price < 0:
                return None
        else:
            price = amount
        allow_partial = s.f[7].v != 0
        on_expire = EXPIRE_COMMIT if on_expire_raw == 2 else EXPIRE_RELEASE
        account_id = self.account_str(&s.f[1])
        reservation_id = id_str(&s.f[2])
        allowed, buckets = self.gate(account_id, action, &self.qmap)
        canon_begin_prefix(b, &PREFIX_RESERVE)
        canon_i64(b, amount)
        canon_str_raw(b, <const char*>s.f[4].p, s.f[4].n)
        canon_raw_map(b, &self.qmap, 0)
        canon_i64(b, <int64_t>s.f[6].v)
        canon_bool(b, allow_partial)
        canon_i64(b, min_amount)
        canon_i64(b, on_expire)
        canon_raw_map(b, &self.lmap, 1)
        fp = canon_finish(b)
        meta = self.meta_with_labels(pi, &self.lmap) if self.lmap.n else pi.meta_plain
        if meta is None:
            return None  # labels too large: the Python path refuses the request
        return (OP_RESERVE, account_id, reservation_id, fp, price, allow_partial, min_amount, ttl_ns, on_expire,
                allowed, buckets, meta)

    cdef object commit(self, const uint8_t* p, Py_ssize_t n):
        cdef Scan* s = &self.scan
        cdef int64_t amount
        cdef _Usage usage
        cdef Buf* b = &_canon
        if scan_message(p, n, SCHEMA_COMMIT, s):
            return None
        if s.nmap0:
            return None  # priced at the hold's frozen price: the Python path reads the hold
        if not (valid_id(s.f[1].p, s.f[1].n) and valid_id(s.f[2].p, s.f[2].n)):
            return None
        amount = <int64_t>s.f[3].v
        if s.f[3].present and (amount < 0 or amount > AMOUNT_MAX):
            return None
        if self.maps(s):
            return None
        account_id = self.account_str(&s.f[1])
        reservation_id = id_str(&s.f[2])
        canon_begin_prefix(b, &PREFIX_COMMIT)
        if s.f[3].present:
            canon_i64(b, amount)
        else:
            buf_byte(b, T_NONE)
        canon_raw_map(b, &self.qmap, 0)
        canon_raw_map(b, &self.lmap, 1)
        fp = canon_finish(b)
        usage = _Usage.__new__(_Usage)
        usage.codec = self
        usage.kind = K_COMMIT
        usage.account_id = account_id
        usage.item_id = reservation_id
        usage.labels = raw_dict(&self.lmap, 1) if self.lmap.n else None
        self.derived = usage
        return (OP_COMMIT, account_id, reservation_id, fp, amount if s.f[3].present else -1, ())

    cdef object release(self, const uint8_t* p, Py_ssize_t n):
        cdef Scan* s = &self.scan
        if scan_message(p, n, SCHEMA_RELEASE, s):
            return None
        if not (valid_id(s.f[1].p, s.f[1].n) and valid_id(s.f[2].p, s.f[2].n)):
            return None
        return (OP_RELEASE, self.account_str(&s.f[1]), id_str(&s.f[2]))

    cdef object extend(self, const uint8_t* p, Py_ssize_t n):
        cdef Scan* s = &self.scan
        cdef int64_t hold_total, ttl_ns
        if scan_message(p, n, SCHEMA_EXTEND, s):
            return None
        if not (valid_id(s.f[1].p, s.f[1].n) and valid_id(s.f[2].p, s.f[2].n)):
            return None
        hold_total = <int64_t>s.f[3].v
        if hold_total < 0 or hold_total > AMOUNT_MAX:
            return None
        ttl_ns = self.ttl_ns(s.f[4].v)
        if ttl_ns < 0:
            return None
        account_id = self.account_str(&s.f[1])
        entry = self.account(account_id)
        if entry is not None and (<tuple>entry)[1] == ACCOUNT_SUSPENDED:
            return None  # DataPlane._extend_suspended may answer it without the core
        return (OP_EXTEND, account_id, id_str(&s.f[2]), hold_total, ttl_ns)

    cdef object charge(self, const uint8_t* p, Py_ssize_t n):
        cdef Scan* s = &self.scan
        cdef int64_t amount, price
        cdef _PriceInfo pi
        cdef _Usage usage
        cdef Buf* b = &_canon
        cdef object action = ""
        if scan_message(p, n, SCHEMA_CHARGE, s):
            return None
        if not (valid_id(s.f[1].p, s.f[1].n) and valid_id(s.f[2].p, s.f[2].n)):
            return None
        if s.f[4].n:
            if not valid_id(s.f[4].p, s.f[4].n):
                return None
            action = self.action_str(&s.f[4])
        amount = <int64_t>s.f[3].v
        if amount != 0 and (amount < 0 or amount > AMOUNT_MAX):
            return None
        if amount == 0 and not s.f[4].n:
            return None
        if self.maps(s):
            return None
        if amount == 0:
            pi = self.price_info(action)
            if not pi.known:
                return None
            price = self.price_of(pi, &self.qmap)
            if price < 0:
                return None
        else:
            price = amount
        account_id = self.account_str(&s.f[1])
        charge_id = id_str(&s.f[2])
        allowed, buckets = self.gate(account_id, action, &self.qmap)
        canon_begin_prefix(b, &PREFIX_CHARGE)
        canon_i64(b, amount)
        canon_str_raw(b, <const char*>s.f[4].p, s.f[4].n)
        canon_raw_map(b, &self.qmap, 0)
        canon_raw_map(b, &self.lmap, 1)
        fp = canon_finish(b)
        usage = _Usage.__new__(_Usage)
        usage.codec = self
        usage.kind = K_CHARGE
        usage.account_id = account_id
        usage.item_id = charge_id
        usage.action = action
        usage.quantities_json = self.json_members(&self.qmap, 0)
        usage.labels_json = self.json_members(&self.lmap, 1)
        self.derived = usage
        return (OP_CHARGE, account_id, charge_id, fp, price, allowed, buckets)

    cdef object decode_kind(self, int kind, const uint8_t* p, Py_ssize_t n):
        """The core op of one request of `kind`, its derive (or None) left in `derived`; None:
        punt (to the Python path)."""
        self.derived = None
        if kind == K_RESERVE:
            return self.reserve(p, n)
        if kind == K_COMMIT:
            return self.commit(p, n)
        if kind == K_RELEASE:
            return self.release(p, n)
        if kind == K_EXTEND:
            return self.extend(p, n)
        if kind == K_CHARGE:
            return self.charge(p, n)
        return None

    def decode(self, int kind, bytes data):
        """(op, derive) for one unary request of `kind` (BatchOp field number), or None: punt."""
        self.accounts.sync()
        self.forget_memos()
        op = self.decode_kind(kind, <const uint8_t*>PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data))
        if op is None:
            return None
        derive, self.derived = self.derived, None
        return op, derive

    def decode_batch(self, bytes data, Py_ssize_t max_ops):
        """A BatchWork for a BatchRequest, or None to run the whole request on the Python path
        (malformed wire format, or more than `max_ops` ops: the Python path has the error)."""
        cdef const uint8_t* p = <const uint8_t*>PyBytes_AS_STRING(data)
        cdef const uint8_t* end = p + PyBytes_GET_SIZE(data)
        cdef const uint8_t* op_p = NULL
        cdef const uint8_t* q
        cdef const uint8_t* sub_p
        cdef Py_ssize_t op_n = 0, sub_n, count = 0, i
        cdef uint64_t key = 0
        cdef int kind
        cdef BatchWork work
        cdef object decoded
        self.accounts.sync()
        self.forget_memos()
        # Pass 1: the ops' extents (and the op count, checked before anything is judged).
        q = p
        while q < end:
            if rd_varint(&q, end, &key):
                return None
            if key == 0x0a:
                if rd_len(&q, end, &op_p, &op_n):
                    return None
                count += 1
            elif (key >> 3) == 1 or (key >> 3) == 0 or skip_field(&q, end, <uint32_t>(key & 7)):
                return None
        if count > max_ops:
            return None
        work = BatchWork.__new__(BatchWork)
        work.codec = self
        work.data = data
        work.n = count
        work.kinds = <uint8_t*>PyMem_Malloc(count + 1)
        work.offs = <Py_ssize_t*>PyMem_Malloc((count + 1) * 2 * sizeof(Py_ssize_t))
        if work.kinds == NULL or work.offs == NULL:
            raise MemoryError()
        work.entries = [None] * count
        work.derives = [None] * count
        work.slow = []
        # Pass 2: each op.
        q = p
        i = 0
        while q < end:
            rd_varint(&q, end, &key)
            if key != 0x0a:
                skip_field(&q, end, <uint32_t>(key & 7))
                continue
            rd_len(&q, end, &op_p, &op_n)
            work.offs[2 * i] = op_p - p
            work.offs[2 * i + 1] = op_n
            kind = batch_op_kind(op_p, op_n, &sub_p, &sub_n)
            decoded = self.decode_kind(kind, sub_p, sub_n) if kind else None
            if decoded is None:
                work.kinds[i] = K_SLOW
                work.slow.append(i)
            else:
                work.kinds[i] = kind
                work.entries[i] = decoded
                if self.derived is not None:
                    work.derives[i] = self.derived
                    self.derived = None
            i += 1
        return work

    # -------------------------------------------------------------- usage rows (derive)

    cdef int usage_json(self, Buf* b, object reservation_id, object charge_id, object action,
                        bytes quantities_json, object charged, object uncharged, bytes labels_json,
                        object late) except -1:
        """Append one usage record's JSON to `b`, byte for byte as dataplane._usage_row."""
        buf_put(b, b'{"reservation_id":"', 19)
        buf_pystr_ascii(b, reservation_id)  # ids: validated, nothing to escape
        buf_put(b, b'","charge_id":"', 15)
        buf_pystr_ascii(b, charge_id)
        buf_put(b, b'","action":', 11)
        json_value(b, action)
        buf_put(b, b',"quantities":{', 15)
        buf_put(b, PyBytes_AS_STRING(quantities_json), len(quantities_json))
        buf_put(b, b'},"amount_charged":', 19)
        json_value(b, charged)
        buf_put(b, b',"amount_uncharged":', 20)
        json_value(b, uncharged)
        buf_put(b, b',"labels":{', 11)
        buf_put(b, PyBytes_AS_STRING(labels_json), len(labels_json))
        buf_put(b, b'},"late":', 9)
        json_value(b, late)
        return buf_byte(b, 125)  # }

    cdef int usage_events(self, list events, object account_id, object available_after,
                          object uncharged) except -1:
        """Append what dataplane._credit_events gives for a usage record to `events`."""
        if uncharged or available_after <= 0:
            events.extend(self.credit_events(account_id, available_after, uncharged))
        return 0

    cdef int bind_ledger(self) except -1:
        """Look the ledger's reservation_meta up once for the commits that one derive reads."""
        self.meta_of = self.engine.ledger.reservation_meta
        return 0

    cdef tuple commit_meta(self, _Usage u):
        """(action, labels JSON members) of a commit's usage record: the action and labels come
        from the hold's meta, the commit's own labels override the hold's."""
        if self.meta_of is None:
            self.bind_ledger()
        raw = self.meta_of(u.account_id, u.item_id)
        if raw is None:
            raw = b""
        if raw is self.memo_raw:  # holds made from one request shape share their meta object
            cached = self.memo_meta
        else:
            cached = self.meta_cache.get(raw)
            if cached is None:
                meta = self.decode_meta(raw)
                hold_labels = meta.get("l", {})
                cached = (meta.get("a", ""), hold_labels, json_dict_members(hold_labels))
                if len(self.meta_cache) >= CACHE_ACTIONS_MAX:
                    self.meta_cache.clear()
                self.meta_cache[raw] = cached
            self.memo_raw = raw
            self.memo_meta = cached
        action, hold_labels, labels_json = cached
        if u.labels:
            labels_json = json_dict_members({**hold_labels, **u.labels})
        return action, labels_json

    # -------------------------------------------------------------- result tuple -> response bytes

    def encode(self, int kind, op, r):
        """The response bytes of a unary call of `kind` with core result `r` (op from `decode`);
        raises the Python path's QuotaError for a non-OK status."""
        cdef Buf* b = &self.tmp
        b.n = 0
        encode_response(b, kind, op, r)
        return PyBytes_FromStringAndSize(b.p, b.n)


cdef int batch_op_kind(const uint8_t* p, Py_ssize_t n, const uint8_t** sub_p, Py_ssize_t* sub_n) noexcept nogil:
    """The BatchOp's operation if it is exactly one mutating request, else K_SLOW."""
    cdef const uint8_t* end = p + n
    cdef uint64_t key, field
    cdef int kind = K_SLOW
    while p < end:
        if rd_varint(&p, end, &key):
            return K_SLOW
        field = key >> 3
        if 1 <= field <= 8:
            # A second oneof member (or a repeat, which merges) is the Python path's business.
            if kind != K_SLOW or field > 5 or (key & 7) != 2:
                return K_SLOW
            if rd_len(&p, end, sub_p, sub_n):
                return K_SLOW
            kind = <int>field
        elif field == 0 or skip_field(&p, end, <uint32_t>(key & 7)):
            return K_SLOW
    return kind


cdef inline int pb_varint_field(Buf* b, uint8_t tag, int64_t v) except -1:
    if v != 0:
        buf_byte(b, tag)
        buf_varint(b, <uint64_t>v)
    return 0


cdef inline int pb_str_field(Buf* b, uint8_t tag, object s) except -1:
    cdef Py_ssize_t n
    cdef const char* p
    if s is None:
        return 0
    p = PyUnicode_AsUTF8AndSize(s, &n)
    if n:
        buf_byte(b, tag)
        buf_varint(b, <uint64_t>n)
        buf_put(b, p, n)
    return 0


cdef inline int64_t ms_of(int64_t ns):
    """dataplane._ms: ns // NS_PER_MS if ns > 0 else 0."""
    return ns // NS_PER_MS if ns > 0 else 0


cdef inline int64_t ceil_ms(int64_t ns):
    """-(-ns // NS_PER_MS) (Python floor division), without overflow."""
    if ns > 0:
        return ns // NS_PER_MS + (1 if ns % NS_PER_MS else 0)
    return ns // NS_PER_MS  # C truncates toward zero: the ceiling for ns <= 0


cdef Py_ssize_t[6] RESULT_LEN = [0, 7, 6, 3, 5, 6]  # by kind: the core's OK result of each fast-path op
cdef int[6] RESULT_TEXT_AT = [-1, 6, -1, -1, -1, 5]  # by kind: where that result has its str item


cdef inline Result as_result(object r):
    """The core's result `r`, or a Result of the same items if `r` is a tuple (tests give the
    encoders tuples); OverflowError if an int item is outside int64."""
    return <Result>r if type(r) is Result else Result(r)


cdef inline object text_item(Result t, Py_ssize_t k):
    """Item k of `t` where it must be the result's str (or None)."""
    if t.text_at != k:
        raise ValueError(f"core result {t!r} has no str item at {k}")
    return result_item(t, k)


cdef int encode_response(Buf* b, int kind, object op, object r) except -1:
    """The response message (not wrapped) of a fast-path op; raises QuotaError if not OK."""
    cdef Result res = as_result(r)
    cdef int64_t* t = res.v   # the int items, read after the length and shape checks
    cdef int64_t st
    if res.n < 1:
        raise ValueError("empty core result")
    if res.text_at == 0:
        raise ValueError(f"core result {res!r} has no int status")
    st = t[0]
    if st != ST_OK:
        if kind == K_EXTEND and st == ST_INVALID_AMOUNT:
            raise QuotaError("INVALID_AMOUNT", "hold_total is below the current hold", metadata={"field": "hold_total"})
        raise from_core_status(st)
    if not (K_RESERVE <= kind <= K_CHARGE):
        raise ValueError(f"not a fast-path kind: {kind}")
    if res.n < RESULT_LEN[kind]:
        raise ValueError(f"core result {res!r} is too short for kind {kind}")
    if res.text_at >= 0 and res.text_at != RESULT_TEXT_AT[kind]:
        raise ValueError(f"core result {res!r} has a str where kind {kind} has an int")
    if kind == K_RESERVE:
        pb_varint_field(b, 0x08, t[1])
        pb_str_field(b, 0x12, op[2])
        pb_varint_field(b, 0x18, t[2])
        pb_varint_field(b, 0x20, t[3])
        pb_varint_field(b, 0x28, ms_of(t[4]))
        pb_varint_field(b, 0x30, ceil_ms(t[5]))
        pb_str_field(b, 0x3a, text_item(res, 6))
    elif kind == K_COMMIT:
        pb_varint_field(b, 0x08, t[1])
        pb_varint_field(b, 0x10, t[2])
        pb_varint_field(b, 0x18, t[3])
        pb_varint_field(b, 0x20, t[4])
        pb_varint_field(b, 0x28, 1 if t[5] else 0)
    elif kind == K_RELEASE:
        pb_varint_field(b, 0x08, t[1])
        pb_varint_field(b, 0x10, t[2])
    elif kind == K_EXTEND:
        pb_varint_field(b, 0x08, t[1])
        pb_varint_field(b, 0x10, t[2])
        pb_varint_field(b, 0x18, ms_of(t[3]))
        pb_varint_field(b, 0x20, t[4])
    else:  # K_CHARGE
        pb_varint_field(b, 0x08, t[1])
        pb_varint_field(b, 0x10, t[2])
        pb_varint_field(b, 0x18, t[3])
        pb_varint_field(b, 0x20, ceil_ms(t[4]))
        pb_str_field(b, 0x2a, text_item(res, 5))
    return 0


cdef int encode_error(Buf* b, object exc) except -1:
    """BatchError{code, message, reason, metadata} of a QuotaError."""
    cdef Buf e
    pb_varint_field(b, 0x08, exc.code.value[0])
    pb_str_field(b, 0x12, exc.message)
    pb_str_field(b, 0x1a, exc.reason)
    if exc.metadata:
        e.p = NULL
        e.n = 0
        e.cap = 0
        try:
            for key, value in exc.metadata.items():
                e.n = 0
                pb_str_field(&e, 0x0a, key)
                pb_str_field(&e, 0x12, value)
                buf_byte(b, 0x22)
                buf_varint(b, <uint64_t>e.n)
                buf_put(b, e.p, e.n)
        finally:
            PyMem_Free(e.p)
    return 0


cdef int put_result(Buf* out, uint8_t field, Buf* sub) except -1:
    """Append `results { <field>: <sub> }` to a BatchResponse."""
    cdef int inner = 1 + varint_size(<uint64_t>sub.n) + <int>sub.n
    buf_byte(out, 0x0a)
    buf_varint(out, <uint64_t>inner)
    buf_byte(out, (field << 3) | 2)
    buf_varint(out, <uint64_t>sub.n)
    return buf_put(out, sub.p, sub.n)


@cython.final
@cython.no_gc  # holds bytes, ints, str and _Usage objects: no cycles
cdef class BatchWork:
    """One decoded BatchRequest: per op, either a fast-path op and its derive or a slot the Python
    path fills (`slow` lists those indices; `raw(i)` is the BatchOp's bytes)."""
    cdef WireCodec codec
    cdef bytes data
    cdef readonly Py_ssize_t n
    cdef uint8_t* kinds
    cdef Py_ssize_t* offs
    cdef list entries           # fast: the op; slow: what the Python path put there
    cdef list derives           # fast: the op's derive (or None)
    cdef readonly list slow     # indices of the ops the Python path answers
    cdef list submitted         # slow: per index, True if its entry went to the engine

    def __dealloc__(self):
        PyMem_Free(self.kinds)
        PyMem_Free(self.offs)

    def raw(self, Py_ssize_t i):
        """The serialized BatchOp of op `i`."""
        if not 0 <= i < self.n:
            raise IndexError(i)
        return self.data[self.offs[2 * i]:self.offs[2 * i] + self.offs[2 * i + 1]]

    def set_slow(self, Py_ssize_t i, slot, submit):
        """Op `i` is answered by the Python path: `slot` is handed back to `answer` in `encode`;
        `submit` is its (op, derive) for the engine, or None."""
        if not 0 <= i < self.n or self.kinds[i] != K_SLOW:
            raise IndexError(i)
        self.entries[i] = (slot, submit)

    def submit_items(self):
        """The (op, derive) items for Engine.submit_many, in op order."""
        cdef Py_ssize_t i
        cdef list items = []
        for i in range(self.n):
            entry = self.entries[i]
            if self.kinds[i] == K_SLOW:
                if entry is not None and (<tuple>entry)[1] is not None:
                    items.append((<tuple>entry)[1])
            else:
                items.append((entry, self.derives[i]))
        return items

    def ops(self):
        """The core ops of a batch with no slow op (see `derive_into`), in op order."""
        if self.slow:
            raise ValueError("a batch with slow ops goes through submit_items")
        return list(self.entries)

    def derive_into(self, list results, Py_ssize_t start, replayed, now_ms, list usage, list events,
                    list packed):
        """The engine's group deriver (Engine.submit_group) for a batch with no slow op: the
        usage records of its ops, written straight into one packed chunk per account
        (storage.base.UsageChunk, appended to `packed`: no UsageRow per record), and their
        events appended to `events`. `results[start + i]` is op i's result; indices in
        `replayed` are replays (they derive nothing). `usage` is not used: every record of a
        fast-path op goes into a chunk."""
        cdef Py_ssize_t i, k, mark
        cdef object derive, r
        cdef _Usage u
        cdef dict slot_of = {}  # account id -> index in the codec's usage buffers (ubufs)
        cdef list accounts = []
        cdef list counts = []
        cdef WireCodec c = self.codec
        cdef Buf* b
        cdef Py_ssize_t nbufs = 0
        cdef uint32_t size
        if c.deriving:
            raise RuntimeError("derive_into is not reentrant")
        c.deriving = True
        try:
            c.bind_ledger()
            for i in range(self.n):
                derive = self.derives[i]
                if derive is None:
                    continue
                r = results[start + i]
                if as_result(r).v[0] != ST_OK or (replayed and (start + i) in replayed):
                    continue
                u = <_Usage>derive
                hit = slot_of.get(u.account_id)
                if hit is None:
                    c.usage_buf(nbufs)
                    slot_of[u.account_id] = nbufs
                    accounts.append(u.account_id)
                    counts.append(0)
                    k = nbufs
                    nbufs += 1
                else:
                    k = <Py_ssize_t>hit
                b = &c.ubufs[k]
                mark = b.n
                buf_u32le(b, 0)  # the record's length, filled in below (pack_payloads' format)
                if not u.write_json(b, r, events):
                    b.n = mark
                    continue
                size = <uint32_t>(b.n - mark - 4)
                b.p[mark] = <char>(size & 0xff)
                b.p[mark + 1] = <char>((size >> 8) & 0xff)
                b.p[mark + 2] = <char>((size >> 16) & 0xff)
                b.p[mark + 3] = <char>((size >> 24) & 0xff)
                counts[k] += 1
            for k in range(nbufs):
                if counts[k] == 0:
                    continue
                b = &c.ubufs[k]
                if counts[k] == 1:  # a single record is stored as itself (pack_payloads)
                    blob = PyBytes_FromStringAndSize(b.p + 4, b.n - 4)
                else:
                    blob = PyBytes_FromStringAndSize(b.p, b.n)
                packed.append((accounts[k], now_ms, counts[k], blob))
        finally:
            c.usage_bufs_done(nbufs)
            c.deriving = False

    def encode(self, list results, answer):
        """The BatchResponse bytes. `results` are the engine's, in submit_items order;
        `answer(slot, result_or_None)` returns the serialized BatchResult of a slow op."""
        cdef Buf out, sub
        cdef Py_ssize_t i, j = 0, nres = len(results)
        cdef int kind
        cdef bytes blob, res
        out.p = NULL
        out.n = 0
        out.cap = 0
        sub.p = NULL
        sub.n = 0
        sub.cap = 0
        try:
            buf_grow(&out, self.n * 24 + 16)
            for i in range(self.n):
                kind = self.kinds[i]
                entry = self.entries[i]
                if kind == K_SLOW:
                    result = None
                    if entry is not None and (<tuple>entry)[1] is not None:
                        if j >= nres:
                            raise ValueError("fewer results than submitted ops")
                        result = results[j]
                        j += 1
                    res = answer(None if entry is None else (<tuple>entry)[0], result)
                    buf_byte(&out, 0x0a)
                    buf_varint(&out, <uint64_t>len(res))
                    buf_put(&out, PyBytes_AS_STRING(res), len(res))
                    continue
                if j >= nres:
                    raise ValueError("fewer results than submitted ops")
                result = results[j]
                j += 1
                sub.n = 0
                try:
                    encode_response(&sub, kind, entry, result)
                except QuotaError as exc:
                    sub.n = 0
                    encode_error(&sub, exc)
                    put_result(&out, 15, &sub)
                else:
                    put_result(&out, kind, &sub)
            blob = PyBytes_FromStringAndSize(out.p, out.n)
        finally:
            PyMem_Free(out.p)
            PyMem_Free(sub.p)
        return blob


# ---------------------------------------------------------------------------------------- RESP

cdef Py_ssize_t RESP_COPY_MAX = 1 << 20


cdef inline int buf_bulk(Buf* b, const char* p, Py_ssize_t n) except -1:
    """One RESP bulk string: $<n>\r\n<bytes>\r\n."""
    buf_byte(b, b'$')
    buf_int(b, n)
    buf_put(b, b"\r\n", 2)
    buf_put(b, p, n)
    return buf_put(b, b"\r\n", 2)


def resp_command(tuple args, Py_ssize_t array_len=-1):
    """The Redis protocol (RESP) encoding of one command, an array of bulk strings, built in
    one buffer: what redis-py's `Connection.pack_command` makes for these arguments, argument
    by argument in Python. Arguments must be bytes, str (sent as UTF-8) or int (not bool, in
    the int64 range); None if one is not (the caller lets redis-py encode, or refuse, them),
    or if a bytes argument is over 1 MiB (redis-py sends those without copying them).

    `array_len`: the count the array's header gives (default: len(args)); 0: no header, the
    arguments continue a command whose header an earlier call wrote (_rediswriter's jobs are
    built of such pieces)."""
    cdef Buf b
    cdef Py_ssize_t n, i, count = len(args)
    cdef const char* p
    cdef long long v
    cdef int overflow, start
    cdef char digits[24]
    cdef object a
    cdef type t
    b.p = NULL
    b.n = 0
    b.cap = 0
    try:
        buf_grow(&b, 64 + 32 * count)
        if array_len != 0:
            buf_byte(&b, b'*')
            buf_int(&b, count if array_len < 0 else array_len)
            buf_put(&b, b"\r\n", 2)
        for i in range(count):
            a = args[i]
            t = type(a)
            if t is bytes:
                n = PyBytes_GET_SIZE(a)
                if n > RESP_COPY_MAX:
                    return None  # redis-py sends a large blob without copying it
                buf_bulk(&b, PyBytes_AS_STRING(a), n)
            elif t is str:
                p = PyUnicode_AsUTF8AndSize(a, &n)
                buf_bulk(&b, p, n)
            elif t is int:
                v = PyLong_AsLongLongAndOverflow(a, &overflow)
                if overflow:
                    return None
                start = fmt_decimal(v, digits)
                buf_bulk(&b, digits + start, 24 - start)
            else:
                return None
        return PyBytes_FromStringAndSize(b.p, b.n)
    finally:
        PyMem_Free(b.p)
