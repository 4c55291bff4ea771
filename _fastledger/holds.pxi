# Reservations (holds): reserve, commit, release, extend, and expiry of a hold.

cdef str EMPTY = ""


cdef inline Account touch(Ledger L, object aid, int64_t now, int* st):
    """Look an account up and let time pass for its lots; None with `st` set on failure."""
    cdef PyObject* p = NULL
    cdef Account a
    # Only valid ids are indexed: an id found needs no character check.
    p = acct_get(L, aid)
    if p == NULL:
        st[0] = ACCOUNT_NOT_FOUND if valid_id(aid) else INVALID_ID
        return None
    a = <Account>p
    if a.nlots and has_due_lot(a, now):
        expire_due_lots(L, a, now)
    return a


cdef inline Rec* find_rec(Ledger L, Account a, uint8_t kind, object rid) noexcept:
    cdef Py_ssize_t rlen = PyUnicode_GET_LENGTH(rid)
    cdef const char* p = id_data(rid)
    return table_find(&L.recs, a, kind, p, rlen, rec_hash(a, kind, p, rlen))


cdef Rec* new_rec(Ledger L, Account a, uint8_t kind, object rid, int64_t seq, int64_t fp) except NULL:
    cdef Py_ssize_t rlen = PyUnicode_GET_LENGTH(rid)
    return rec_new(L, a, kind, rid, rec_hash(a, kind, id_data(rid), rlen), seq, fp)


cdef inline Rec* find_rec_h(Ledger L, Account a, uint8_t kind, object rid, uint64_t h) noexcept:
    return table_find(&L.recs, a, kind, id_data(rid), PyUnicode_GET_LENGTH(rid), h)


cdef inline uint64_t key_hash(Account a, uint8_t kind, object rid) noexcept:
    return rec_hash(a, kind, id_data(rid), PyUnicode_GET_LENGTH(rid))


cdef inline HoldOrig* hold_orig(Hold* h) except NULL:
    """The hold's original reserve result, kept from now on (set by the caller when new)."""
    if h.orig == NULL:
        h.orig = <HoldOrig*>PyMem_Malloc(sizeof(HoldOrig))
        if h.orig == NULL:
            raise MemoryError()
        h.orig.amount0 = h.amount
        h.orig.expires0 = h.expires_ns
    return h.orig


cdef int decide(Account a, int64_t amount, bint feature, BSpec* specs, int nb, int64_t now,
                bint concurrency, bint partial, int64_t min_amount, int64_t* grant,
                int64_t* retry, PyObject** limit) noexcept:
    """The shared decision of reserve, charge and check; -1 if the bucket table would overflow."""
    cdef int rd
    cdef int64_t avail
    retry[0] = 0
    limit[0] = <PyObject*>EMPTY
    grant[0] = 0
    if a.status == ACCOUNT_SUSPENDED:
        return DECISION_ACCOUNT_SUSPENDED
    if not feature:
        return DECISION_FEATURE_NOT_IN_PLAN
    if nb:
        rd = rate_denial(a, specs, nb, now, retry, limit)
        if rd < 0:
            return -1
        if rd > 0:
            return DECISION_RATE_LIMITED
    if concurrency and a.max_open_holds and a.open_holds >= a.max_open_holds:
        return DECISION_CONCURRENCY_LIMITED
    if a.unlimited:
        grant[0] = amount
        return DECISION_OK
    avail = acct_available(a)
    if amount <= avail:
        grant[0] = amount
        return DECISION_OK
    if partial and avail >= i64max(min_amount, 1):
        grant[0] = avail
        return DECISION_OK
    return DECISION_INSUFFICIENT_CREDITS


cdef inline Result reserve_result(Hold* h):
    if h.orig != NULL:
        return r_reserve(OK, DECISION_OK, h.orig.amount0, h.avail0, h.orig.expires0, 0, EMPTY)
    return r_reserve(OK, DECISION_OK, h.amount, h.avail0, h.expires_ns, 0, EMPTY)


cdef inline int64_t settled_released(uint8_t state, bint late, int64_t amount, int64_t charged,
                                     int64_t uncharged) noexcept nogil:
    """amount_released of a settled hold's commit result: what of the hold the commit did not
    use (a commit in time of `actual` releases max(0, held - actual), and actual = charged +
    uncharged); a late commit (after expiry, or by expiry) releases nothing; not a commit: 0.
    Also what replay requires of a stored settlement (rd_hold)."""
    cdef int64_t used
    if state != RES_COMMITTED or late:
        return 0
    used = charged + uncharged
    return amount - used if amount > used else 0


cdef inline int64_t hold_released(Hold* h) noexcept:
    return settled_released(h.state, h.hflags & HF_LATE, h.amount, h.u.d.charged, h.u.d.uncharged)


cdef inline Result commit_result(Hold* h):
    cdef HoldDone* d = &h.u.d
    return r_commit(OK, d.charged, hold_released(h), d.uncharged, d.avail, h.hflags & HF_LATE)


cdef inline void set_commit_result(Account a, Hold* h, int64_t* out, bint late) noexcept:
    """Store a settled hold's commit result: out = (charged, released, uncharged); `released`
    is what hold_released gives (the stateful test compares every commit result with the
    reference model's)."""
    cdef HoldDone* d = &h.u.d
    d.charged = out[0]
    d.uncharged = out[2]
    d.avail = acct_available(a)
    if late:
        h.hflags |= HF_LATE


cdef Result op_reserve(Ledger L, tuple op, int64_t now):
    cdef object rid = op[2]
    cdef object meta = op[11]
    cdef int64_t fp, amount, min_amount, ttl, on_expire, held, retry, avail, seq
    cdef uint64_t hk
    cdef bint allow_partial, feature
    cdef BSpec specs[BUCKETS_PER_OP_MAX]
    cdef int nb, dec, st = OK
    cdef PyObject* limit
    cdef Account a
    cdef Rec* r
    cdef Hold* h
    cdef object taken
    if not valid_id(rid):
        return r_status(INVALID_ID)
    if not get_i64(<object>field(op, 3), &fp):
        return r_status(INVALID_ARGUMENT)
    if not (get_range(<object>field(op, 4), 0, AMOUNT_MAX, &amount)
            and get_range(<object>field(op, 6), 0, AMOUNT_MAX, &min_amount)):
        return r_status(INVALID_AMOUNT)
    if not get_range(<object>field(op, 7), 1, TTL_NS_MAX, &ttl):
        return r_status(INVALID_TTL)
    if not (get_bool(<object>field(op, 5), &allow_partial)
            and get_bool(<object>field(op, 9), &feature)):
        return r_status(INVALID_ARGUMENT)
    if not get_range(<object>field(op, 8), EXPIRE_RELEASE, EXPIRE_COMMIT, &on_expire):
        return r_status(INVALID_ARGUMENT)
    nb = parse_buckets(<object>field(op, 10), specs)
    if nb < 0 or not PyBytes_Check(meta) or PyBytes_GET_SIZE(meta) > META_BYTES_MAX:
        return r_status(INVALID_ARGUMENT)
    a = touch(L, <object>field(op, 1), now, &st)
    if a is None:
        return r_status(st)
    hk = key_hash(a, REC_HOLD, rid)
    r = find_rec_h(L, a, REC_HOLD, rid, hk)
    if r != NULL:
        if r.fp == fp:
            L.replayed = True
            return reserve_result(<Hold*>r)
        return r_status(IDEMPOTENCY_KEY_REUSED)
    dec = decide(a, amount, feature, specs, nb, now, True, allow_partial, min_amount,
                 &held, &retry, &limit)
    if dec < 0:
        return r_status(LIMIT_EXCEEDED)
    if dec != DECISION_OK:
        return r_reserve(OK, dec, 0, acct_available(a), 0, retry, <object>limit)
    if a.open_holds >= HOLDS_PER_ACCOUNT_MAX:
        return r_status(LIMIT_EXCEEDED)
    taken = take_buckets(L, a, specs, nb, now) if nb else None
    L.seq += 1
    seq = L.seq
    h = <Hold*>rec_new(L, a, REC_HOLD, rid, hk, seq, fp)
    h.amount = held
    h.expires_ns = now + ttl
    h.state = RES_HELD
    h.on_expire = <uint8_t>on_expire
    if a.unlimited:
        h.hflags = HF_UNBACKED
    else:
        take_free(a, h, held)
        a.held += held
    a.open_holds += 1
    avail = acct_available(a)
    h.avail0 = avail
    if PyBytes_GET_SIZE(meta) or taken is not None:
        hold_set_extra(h, meta, taken)
    heap_push(&L.holds_q, h.expires_ns, seq, h)
    mark_rec(L, &h.r)
    mark_acct(L, a, D_CORE)
    return r_reserve(OK, DECISION_OK, held, avail, h.expires_ns, 0, EMPTY)


cdef inline int close_hold(Ledger L, Account a, Hold* h, uint8_t state, int64_t now) except -1:
    """Settle an open hold whose backing is already freed (or that had none): its body becomes
    the (empty) stored result, and it waits a retention in the purge queue."""
    h.state = state
    a.open_holds -= 1
    if h.qidx >= 0:
        heap_remove_at(&L.holds_q, h.qidx)
    memset(&h.u, 0, sizeof(HoldBody))
    pq_push(&L.purge_q, now + L.retention_ns, h.r.seq, &h.r, now + L.retention_ns)
    return 0


cdef int settle_commit(Ledger L, Account a, Hold* h, int64_t actual, int64_t now,
                       int64_t* out) except -1:
    """Commit an open hold with `actual`: out = (charged, released, uncharged)."""
    cdef int64_t held = h.amount
    cdef int64_t charged, uncharged
    if h.hflags & HF_UNBACKED:
        close_hold(L, a, h, RES_COMMITTED, now)
        out[0] = actual
        out[1] = i64max(0, held - actual)
        out[2] = 0
        return 0
    charged = free_earmarks(L, a, h, i64min(actual, held))
    if actual > held:
        charged += charge_free(L, a, actual - held)
    uncharged = actual - charged
    a.uncollected += uncharged
    close_hold(L, a, h, RES_COMMITTED, now)
    out[0] = charged
    out[1] = i64max(0, held - actual)
    out[2] = uncharged
    return 0


cdef int expire_hold(Ledger L, Account a, Hold* h, int64_t now) except -1:
    cdef int64_t out[3]
    if h.on_expire == EXPIRE_COMMIT:
        settle_commit(L, a, h, h.amount, now, out)
        h.hflags |= HF_AUTO
        set_commit_result(a, h, out, True)
        L.expired_log.append((a.aid, rec_rid_str(&h.r), EXPIRE_COMMIT, out[0], out[2],
                              (<tuple>h.extra)[0] if h.extra != NULL else b""))
    else:
        if not (h.hflags & HF_UNBACKED):
            free_earmarks(L, a, h, 0)
        close_hold(L, a, h, RES_EXPIRED, now)
        L.expired_log.append((a.aid, rec_rid_str(&h.r), EXPIRE_RELEASE, 0, 0,
                              (<tuple>h.extra)[0] if h.extra != NULL else b""))
    mark_rec(L, &h.r)
    mark_acct(L, a, D_CORE)
    return 0


cdef inline Hold* open_hold(Ledger L, Account a, object rid, int64_t now) except? NULL:
    """The named hold, expired first if it is due (as the sweep would); NULL if unknown."""
    cdef Hold* h = <Hold*>find_rec(L, a, REC_HOLD, rid)
    if h != NULL and h.state == RES_HELD and h.expires_ns <= now:
        expire_hold(L, a, h, now)
    return h


cdef Result op_commit(Ledger L, tuple op, int64_t now):
    cdef object rid = op[2]
    cdef object costs = op[5]
    cdef int64_t fp, amount, actual, charged, uncharged, extra
    cdef int64_t out[3]
    cdef int st = OK
    cdef Account a
    cdef Hold* h
    cdef bint late
    if not get_i64(<object>field(op, 3), &fp):
        return r_status(INVALID_ARGUMENT)
    if not (get_i64(<object>field(op, 4), &amount) and (amount == -1 or 0 <= amount <= AMOUNT_MAX)):
        return r_status(INVALID_AMOUNT)
    if not valid_bucket_costs(costs):
        return r_status(INVALID_ARGUMENT)
    if not valid_id(rid):
        return r_status(INVALID_ID)
    a = touch(L, <object>field(op, 1), now, &st)
    if a is None:
        return r_status(st)
    h = open_hold(L, a, rid, now)
    if h == NULL:
        return r_status(RESERVATION_NOT_FOUND)
    if h.state == RES_RELEASED:
        return r_status(RESERVATION_RELEASED)
    if h.state == RES_COMMITTED:
        if (h.hflags & HF_AUTO) or h.u.d.commit_fp == fp:
            L.replayed = True
            return commit_result(h)
        return r_status(IDEMPOTENCY_KEY_REUSED)
    actual = h.amount if amount == -1 else amount
    if h.state == RES_EXPIRED:
        if fl_add(a.uncollected, actual, &extra):
            return r_status(OVERFLOW)
        charged = actual if (h.hflags & HF_UNBACKED) else charge_free(L, a, actual)
        uncharged = actual - charged
        a.uncollected += uncharged
        h.state = RES_COMMITTED
        out[0] = charged
        out[1] = 0
        out[2] = uncharged
        late = True
    else:
        if not (h.hflags & HF_UNBACKED) and fl_add(a.uncollected, i64max(0, actual - h.amount), &extra):
            return r_status(OVERFLOW)
        settle_commit(L, a, h, actual, now, out)
        late = False
    set_commit_result(a, h, out, late)
    h.u.d.commit_fp = fp
    true_up_buckets(L, a, h, costs, now)
    mark_rec(L, &h.r)
    mark_acct(L, a, D_CORE)
    return commit_result(h)


cdef Result op_release(Ledger L, tuple op, int64_t now):
    cdef object rid = op[2]
    cdef int st = OK
    cdef int64_t released
    cdef Account a
    cdef Hold* h
    if not valid_id(rid):
        return r_status(INVALID_ID)
    a = touch(L, op[1], now, &st)
    if a is None:
        return r_status(st)
    h = open_hold(L, a, rid, now)
    if h == NULL:
        return r_status(RESERVATION_NOT_FOUND)
    if h.state == RES_COMMITTED:
        return r_status(RESERVATION_COMMITTED)
    if h.state == RES_RELEASED:
        L.replayed = True
        return r_release(OK, h.u.d.charged, h.u.d.avail)
    if h.state == RES_EXPIRED:
        released = 0
        h.state = RES_RELEASED
    else:
        released = h.amount
        if not (h.hflags & HF_UNBACKED):
            free_earmarks(L, a, h, 0)
        close_hold(L, a, h, RES_RELEASED, now)
    h.u.d.charged = released
    h.u.d.avail = acct_available(a)
    mark_rec(L, &h.r)
    mark_acct(L, a, D_CORE)
    return r_release(OK, released, h.u.d.avail)


cdef Result op_extend(Ledger L, tuple op, int64_t now):
    cdef object rid = op[2]
    cdef int64_t total, ttl, extra, expires, avail
    cdef int st = OK
    cdef Account a
    cdef Hold* h
    if not get_range(op[3], 0, AMOUNT_MAX, &total):
        return r_status(INVALID_AMOUNT)
    if not get_range(op[4], 0, TTL_NS_MAX, &ttl):
        return r_status(INVALID_TTL)
    if not valid_id(rid):
        return r_status(INVALID_ID)
    a = touch(L, op[1], now, &st)
    if a is None:
        return r_status(st)
    h = open_hold(L, a, rid, now)
    if h == NULL:
        return r_status(RESERVATION_NOT_FOUND)
    if h.state != RES_HELD:
        if h.state == RES_COMMITTED:
            return r_status(RESERVATION_COMMITTED)
        if h.state == RES_RELEASED:
            return r_status(RESERVATION_RELEASED)
        return r_status(RESERVATION_EXPIRED)
    if total and total < h.amount:
        return r_status(INVALID_AMOUNT)
    extra = total - h.amount if total else 0
    avail = acct_available(a)
    if extra and not (h.hflags & HF_UNBACKED) and extra > avail:
        return r_extend(OK, DECISION_INSUFFICIENT_CREDITS, h.amount, h.expires_ns, avail)
    expires = now + ttl if ttl else h.expires_ns
    if extra or expires != h.expires_ns:
        hold_orig(h)
        if extra:
            if not (h.hflags & HF_UNBACKED):
                take_free(a, h, extra)
                a.held += extra
                mark_acct(L, a, D_CORE)
            h.amount += extra
        if expires != h.expires_ns:
            h.expires_ns = expires
            heap_update_at(&L.holds_q, h.qidx, expires)
        mark_rec(L, &h.r)
    return r_extend(OK, DECISION_OK, h.amount, h.expires_ns, acct_available(a))
