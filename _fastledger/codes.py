"""Stable numbers shared by the Cython core, the reference model and the engine.

These are part of the persisted format and of the engine's error table: never renumber.
"""

# Status of an op (first element of every result tuple).
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

STATUS_NAMES = {
    v: k for k, v in dict(globals()).items() if k.isupper() and isinstance(v, int)
}

# Decisions: the proto `Decision` numbers.
DECISION_OK = 1
DECISION_INSUFFICIENT_CREDITS = 2
DECISION_RATE_LIMITED = 3
DECISION_CONCURRENCY_LIMITED = 4
DECISION_FEATURE_NOT_IN_PLAN = 5
DECISION_ACCOUNT_SUSPENDED = 6

# Op codes (first element of every op tuple).
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

# Account status (proto AccountStatus numbers).
ACCOUNT_KEEP = 0
ACCOUNT_ACTIVE = 1
ACCOUNT_SUSPENDED = 2

# Lot categories (proto LotCategory numbers).
LOT_PURCHASED = 1
LOT_PROMOTIONAL = 2
LOT_INCLUDED = 3
LOT_ADJUSTMENT = 4

# What happens to a hold at expiry (proto ExpireAction numbers).
EXPIRE_RELEASE = 1
EXPIRE_COMMIT = 2

# Reservation states.
RES_HELD = 1
RES_COMMITTED = 2
RES_RELEASED = 3
RES_EXPIRED = 4  # released by expiry; still open for a late commit

# One table of limits.
ID_LEN_MAX = 128
AMOUNT_MAX = 10**15
LOTS_PER_ACCOUNT_MAX = 256
HOLDS_PER_ACCOUNT_MAX = 65535
BUCKETS_PER_ACCOUNT_MAX = 16
BUCKETS_PER_OP_MAX = 8
META_BYTES_MAX = 1024
BATCH_OPS_MAX = 65536
PRIORITY_MIN = -(2**31)
PRIORITY_MAX = 2**31 - 1
TTL_NS_MAX = 2**62
INT64_MAX = 2**63 - 1
INT64_MIN = -(2**63)

LIMITS = {
    "ID_LEN_MAX": ID_LEN_MAX,
    "AMOUNT_MAX": AMOUNT_MAX,
    "LOTS_PER_ACCOUNT_MAX": LOTS_PER_ACCOUNT_MAX,
    "HOLDS_PER_ACCOUNT_MAX": HOLDS_PER_ACCOUNT_MAX,
    "BUCKETS_PER_ACCOUNT_MAX": BUCKETS_PER_ACCOUNT_MAX,
    "BUCKETS_PER_OP_MAX": BUCKETS_PER_OP_MAX,
    "META_BYTES_MAX": META_BYTES_MAX,
    "BATCH_OPS_MAX": BATCH_OPS_MAX,
    "PRIORITY_MIN": PRIORITY_MIN,
    "PRIORITY_MAX": PRIORITY_MAX,
    "TTL_NS_MAX": TTL_NS_MAX,
}

ID_CHARS = frozenset("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789._:@/-")

# `now_ns` passed to apply must be in [0, NOW_NS_LIMIT); with TTLs and retention at most
# TTL_NS_MAX, every `now + duration` then fits in int64 without a check.
NOW_NS_LIMIT = 2**62
LIMITS["NOW_NS_LIMIT"] = NOW_NS_LIMIT
