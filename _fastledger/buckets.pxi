# Token buckets: per account, by name, integer refill over periods.


cdef inline int parse_buckets(object buckets, BSpec* out) noexcept:
    """Validate a tuple of (name, capacity, refill_amount, period_ns, cost); -1 if malformed.
    Most ops name no bucket: the empty tuple is answered without a call."""
    if PyTuple_CheckExact(buckets) and PyTuple_GET_SIZE(buckets) == 0:
        return 0
    return parse_bucket_specs(buckets, out)


cdef int parse_bucket_specs(object buckets, BSpec* out) noexcept:
    cdef Py_ssize_t n, i, j
    cdef object spec
    cdef BSpec* b
    if not PyTuple_Check(buckets):
        return -1
    n = PyTuple_GET_SIZE(buckets)
    if n > BUCKETS_PER_OP_MAX:
        return -1
    for i in range(n):
        spec = <object>PyTuple_GET_ITEM(buckets, i)
        if not PyTuple_Check(spec) or PyTuple_GET_SIZE(spec) != 5:
            return -1
        b = &out[i]
        b.name = PyTuple_GET_ITEM(spec, 0)
        if not valid_id(<object>b.name):
            return -1
        for j in range(i):
            if <object>out[j].name == <object>b.name:
                return -1
        if not (get_range(<object>PyTuple_GET_ITEM(spec, 1), 1, AMOUNT_MAX, &b.capacity)
                and get_range(<object>PyTuple_GET_ITEM(spec, 2), 1, AMOUNT_MAX, &b.refill_amount)
                and get_range(<object>PyTuple_GET_ITEM(spec, 3), 1, TTL_NS_MAX, &b.period_ns)
                and get_range(<object>PyTuple_GET_ITEM(spec, 4), 0, AMOUNT_MAX, &b.cost)):
            return -1
    return <int>n


cdef void refilled(int64_t capacity, int64_t refill_amount, int64_t period_ns, int64_t tokens,
                   int64_t last, int64_t now, int64_t* tokens_out, int64_t* last_out) noexcept:
    """The bucket's (tokens, last_ns) at `now`, exactly as the model's `_refilled`."""
    cdef int64_t n, need, periods_to_full
    if now > last and tokens < capacity:
        n = (now - last) // period_ns
        if n > 0:
            need = capacity - tokens
            periods_to_full = (need + refill_amount - 1) // refill_amount
            if n >= periods_to_full:
                tokens = capacity
            else:
                tokens += n * refill_amount
            last += n * period_ns
    if tokens >= capacity and now > last:
        last = now
    tokens_out[0] = tokens
    last_out[0] = last


cdef inline Bucket acct_bucket(Account a, object name):
    cdef PyObject* p
    if a.buckets is None:
        return None
    p = PyDict_GetItemWithError(a.buckets, name)
    return None if p == NULL else <Bucket>p


cdef void bucket_state(Account a, BSpec* s, int64_t now, int64_t* tokens, int64_t* last) noexcept:
    """The bucket for spec `s` as it is at `now` under that spec (not stored)."""
    cdef Bucket b = acct_bucket(a, <object>s.name)
    if b is None:
        tokens[0] = s.capacity
        last[0] = now
        return
    refilled(s.capacity, s.refill_amount, s.period_ns, i64min(b.tokens, s.capacity), b.last_ns,
             now, tokens, last)


cdef int rate_denial(Account a, BSpec* specs, int n, int64_t now, int64_t* retry,
                     PyObject** name) noexcept:
    """1 with (retry, name) for the first bucket that cannot pay, 0 if all can, -1 if the
    account's bucket table would overflow."""
    cdef int i, new_names = 0
    cdef int64_t tokens, last, periods
    cdef Py_ssize_t have = 0 if a.buckets is None else len(a.buckets)
    for i in range(n):
        if acct_bucket(a, <object>specs[i].name) is None:
            new_names += 1
    if have + new_names > BUCKETS_PER_ACCOUNT_MAX:
        return -1
    for i in range(n):
        bucket_state(a, &specs[i], now, &tokens, &last)
        if tokens >= specs[i].cost:
            continue
        name[0] = specs[i].name
        if specs[i].cost > specs[i].capacity:
            retry[0] = 0
        else:
            periods = (specs[i].cost - tokens + specs[i].refill_amount - 1) // specs[i].refill_amount
            retry[0] = fl_retry_after(last, periods, specs[i].period_ns, now, TTL_NS_MAX)
        return 1
    return 0


cdef object take_buckets(Ledger L, Account a, BSpec* specs, int n, int64_t now):
    """Take every bucket's cost; returns the taken dict (name -> cost), or None if no bucket."""
    cdef int i
    cdef int64_t tokens, last
    cdef Bucket b
    cdef dict taken
    if n == 0:
        return None
    taken = {}
    if a.buckets is None:
        a.buckets = {}
    for i in range(n):
        bucket_state(a, &specs[i], now, &tokens, &last)
        b = acct_bucket(a, <object>specs[i].name)
        if b is None:
            b = Bucket.__new__(Bucket)
            a.buckets[<object>specs[i].name] = b
        b.capacity = specs[i].capacity
        b.refill_amount = specs[i].refill_amount
        b.period_ns = specs[i].period_ns
        b.tokens = tokens - specs[i].cost
        b.last_ns = last
        taken[<object>specs[i].name] = specs[i].cost
    mark_acct(L, a, D_BUCKETS)
    return taken


cdef void adjust_bucket(Bucket b, int64_t delta, int64_t now) noexcept:
    """Take `delta` (may leave the bucket in debt, floored at -AMOUNT_MAX) or refund it (capped)."""
    refilled(b.capacity, b.refill_amount, b.period_ns, b.tokens, b.last_ns, now,
             &b.tokens, &b.last_ns)
    if delta >= 0:
        b.tokens = i64max(-AMOUNT_MAX, b.tokens - delta)
    else:
        b.tokens = i64min(b.capacity, b.tokens - delta)
    if b.tokens >= b.capacity and now > b.last_ns:
        b.last_ns = now


cdef inline bint valid_bucket_costs(object costs) noexcept:
    """A tuple of (name, actual_cost) (the empty tuple answered without a call)."""
    if PyTuple_CheckExact(costs) and PyTuple_GET_SIZE(costs) == 0:
        return True
    return valid_bucket_cost_items(costs)


cdef bint valid_bucket_cost_items(object costs) noexcept:
    cdef Py_ssize_t n, i
    cdef object item
    cdef int64_t v
    if not PyTuple_Check(costs):
        return False
    n = PyTuple_GET_SIZE(costs)
    if n > BUCKETS_PER_OP_MAX:
        return False
    for i in range(n):
        item = <object>PyTuple_GET_ITEM(costs, i)
        if not PyTuple_Check(item) or PyTuple_GET_SIZE(item) != 2:
            return False
        if not valid_id(<object>PyTuple_GET_ITEM(item, 0)):
            return False
        if not get_range(<object>PyTuple_GET_ITEM(item, 1), 0, AMOUNT_MAX, &v):
            return False
    return True


cdef int true_up_buckets(Ledger L, Account a, Hold* h, object costs, int64_t now) except -1:
    cdef object taken
    cdef Bucket b
    cdef int64_t actual, took
    if PyTuple_GET_SIZE(costs) == 0 or h.extra == NULL:
        return 0
    taken = (<tuple>h.extra)[1]
    if taken is None:
        return 0
    for name, cost in costs:
        b = acct_bucket(a, name)
        if b is None or name not in taken:
            continue
        actual = cost
        took = taken[name]
        adjust_bucket(b, actual - took, now)
        taken[name] = actual
        mark_acct(L, a, D_BUCKETS)
    return 0


cdef Result op_bucket(Ledger L, tuple op, int64_t now):
    cdef object spec = op[2]
    cdef BSpec s[1]
    cdef int64_t delta
    cdef int st = OK
    cdef Account a
    cdef Bucket b
    if not PyTuple_Check(spec) or PyTuple_GET_SIZE(spec) != 4:
        return r_status(INVALID_ARGUMENT)
    if parse_buckets((spec + (0,),), s) < 0:
        return r_status(INVALID_ARGUMENT)
    if not get_range(op[3], -AMOUNT_MAX, AMOUNT_MAX, &delta):
        return r_status(INVALID_ARGUMENT)
    a = touch(L, op[1], now, &st)
    if a is None:
        return r_status(st)
    b = acct_bucket(a, <object>s[0].name)
    if b is None:
        if a.buckets is not None and len(a.buckets) >= BUCKETS_PER_ACCOUNT_MAX:
            return r_status(LIMIT_EXCEEDED)
        b = Bucket.__new__(Bucket)
        b.tokens = s[0].capacity
        b.last_ns = now
        if a.buckets is None:
            a.buckets = {}
    else:
        b.tokens = i64min(b.tokens, s[0].capacity)
    b.capacity = s[0].capacity
    b.refill_amount = s[0].refill_amount
    b.period_ns = s[0].period_ns
    adjust_bucket(b, delta, now)
    a.buckets[<object>s[0].name] = b
    mark_acct(L, a, D_BUCKETS)
    return r_int(OK, b.tokens)


cdef list buckets_view(Account a, int64_t now):
    cdef list out = []
    cdef Bucket b
    cdef int64_t tokens, last, reset, periods
    if a.buckets is None:
        return out
    for name in sorted(a.buckets):
        b = a.buckets[name]
        refilled(b.capacity, b.refill_amount, b.period_ns, b.tokens, b.last_ns, now, &tokens, &last)
        if tokens >= b.capacity:
            reset = 0
        else:
            periods = (b.capacity - tokens + b.refill_amount - 1) // b.refill_amount
            reset = fl_retry_after(last, periods, b.period_ns, now, TTL_NS_MAX)
        out.append({"name": name, "tokens": tokens, "capacity": b.capacity, "reset_after_ns": reset})
    return out
