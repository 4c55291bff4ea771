# Accounts, grants, charges, checks, the expiry sweep, and the op dispatch.


cdef int set_credit_limit(Ledger L, Account a, int64_t limit) except -1:
    """A cut below what is owed and held is allowed; remember the ceiling for the invariant."""
    cdef int64_t total = a.debt + a.ovd_held
    a.credit_limit = limit
    if total > limit:
        a.flags |= AF_OVER
        L.ceilings[a] = total
    elif a.flags & AF_OVER:
        a.flags &= ~AF_OVER
        L.ceilings.pop(a, None)
    return 0


cdef Result op_upsert(Ledger L, tuple op, int64_t now):
    cdef object aid = op[1]
    cdef object plan_id = op[2]
    cdef object limit_o = op[4]
    cdef object holds_o = op[5]
    cdef object unlimited_o = op[6]
    cdef int64_t status, limit = 0, max_holds = 0, total
    cdef bint unlimited = False
    cdef bint created
    cdef PyObject* p
    cdef Account a
    if not valid_id(aid):
        return r_status(INVALID_ID)
    if plan_id is not None and not valid_id(plan_id):
        return r_status(INVALID_ID)
    if not get_range(op[3], ACCOUNT_KEEP, ACCOUNT_SUSPENDED, &status):
        return r_status(INVALID_ARGUMENT)
    if limit_o is not None and not get_range(limit_o, 0, AMOUNT_MAX, &limit):
        return r_status(INVALID_AMOUNT)
    if holds_o is not None and not get_range(holds_o, 0, HOLDS_PER_ACCOUNT_MAX, &max_holds):
        return r_status(INVALID_ARGUMENT)
    if unlimited_o is not None and not get_bool(unlimited_o, &unlimited):
        return r_status(INVALID_ARGUMENT)
    p = acct_get(L, aid)
    created = p == NULL
    if created:
        if plan_id is None:
            return r_status(PLAN_REQUIRED)
        a = new_account(L, aid, plan_id)
    else:
        a = <Account>p
        expire_due_lots(L, a, now)
        # Not in the model: keeps available (= remaining - debt - held + credit_limit) in int64.
        if limit_o is not None and fl_add(acct_remaining(a), limit, &total):
            return r_status(OVERFLOW)
    if plan_id is not None:
        a.plan_id = plan_id
    if status != ACCOUNT_KEEP:
        a.status = <uint8_t>status
    if limit_o is not None:
        set_credit_limit(L, a, limit)
    if holds_o is not None:
        a.max_open_holds = <uint16_t>max_holds
    if unlimited_o is not None:
        a.unlimited = unlimited
    mark_acct(L, a, D_CORE)
    return r_upsert(OK, created)


cdef Account new_account(Ledger L, object aid, object plan_id):
    """A new account with a valid id `aid` (not in the ledger yet)."""
    cdef Account a = Account.__new__(Account)
    cdef uint64_t h = acct_key_hash(id_data(aid), PyUnicode_GET_LENGTH(aid))
    if not PyUnicode_CheckExact(aid):
        aid = PyUnicode_FromObject(aid)  # the id's text, not a subclass instance
    a.aid = aid
    a.ahash = <uint32_t>h
    a.plan_id = plan_id
    a.status = ACCOUNT_ACTIVE
    L.accounts.append(a)
    acct_index_add(&L.accts, a, h)
    return a


cdef Result op_grant(Ledger L, tuple op, int64_t now):
    cdef object gid = op[2]
    cdef int64_t fp, amount, category, priority, expires, paid, rest, granted, consumed, total, seq
    cdef int64_t avail, lot_seq
    cdef int st = OK
    cdef Account a
    cdef Rec* r
    cdef Idem* g
    if not valid_id(gid):
        return r_status(INVALID_ID)
    if not get_i64(op[3], &fp):
        return r_status(INVALID_ARGUMENT)
    if not get_range(op[4], 1, AMOUNT_MAX, &amount):
        return r_status(INVALID_AMOUNT)
    if not get_range(op[5], LOT_PURCHASED, LOT_ADJUSTMENT, &category):
        return r_status(INVALID_ARGUMENT)
    if not get_range(op[6], PRIORITY_MIN, PRIORITY_MAX, &priority):
        return r_status(INVALID_ARGUMENT)
    if not (get_i64(op[7], &expires) and (expires == 0 or now < expires)):
        return r_status(INVALID_ARGUMENT)
    a = touch(L, op[1], now, &st)
    if a is None:
        return r_status(st)
    r = find_rec(L, a, REC_GRANT, gid)
    if r != NULL:
        if r.fp == fp:
            L.replayed = True
            return r_int(OK, (<Idem*>r).avail)
        return r_status(IDEMPOTENCY_KEY_REUSED)
    paid = i64min(a.debt, amount)
    rest = amount - paid
    if rest > 0 and a.nlots >= LOTS_PER_ACCOUNT_MAX:
        return r_status(LIMIT_EXCEEDED)
    # Every counter this grant moves is checked before anything changes (the last check is not
    # in the model: it keeps available inside int64).
    if (fl_add(a.granted, amount, &granted) or fl_add(a.consumed, paid, &consumed)
            or fl_add(acct_remaining(a), rest, &total) or fl_add(total, a.credit_limit, &total)):
        return r_status(OVERFLOW)
    # The lot takes the first seq and the record the next (the model's order); the record is
    # made first because the lot points at it.
    lot_seq = L.seq + 1 if rest > 0 else 0
    seq = L.seq + 2 if rest > 0 else L.seq + 1
    g = <Idem*>new_rec(L, a, REC_GRANT, gid, seq, fp)
    L.seq = seq
    a.granted = granted
    a.consumed = consumed
    a.debt -= paid
    if rest > 0:
        lot_insert(a, g, <uint8_t>category, <int32_t>priority, expires, lot_seq, rest)
        if expires:
            heap_push(&L.lots_q, expires, lot_seq, <void*>a)
    if paid:
        ratchet_ceiling(L, a)
    avail = acct_available(a)
    g.avail = avail
    # Kept until a retention past the lot's expiry, even once the lot is spent (or paid a debt
    # and made none): a retry of the grant id before then is a replay, never a second grant, and
    # what expired unused can still be read. The server relies on both to renew a plan's
    # included credits once per period (see API.md).
    g.purge_ns = now + L.retention_ns
    if expires:
        g.purge_ns = INT64_MAX if expires > INT64_MAX - L.retention_ns else expires + L.retention_ns
    pq_push(&L.purge_q, g.purge_ns, seq, &g.r, now + L.retention_ns)
    mark_rec(L, &g.r)
    mark_acct(L, a, D_CORE)
    return r_int(OK, avail)


cdef Result op_charge(Ledger L, tuple op, int64_t now):
    cdef object cid = op[2]
    cdef int64_t fp, amount, grant, retry, avail, seq
    cdef bint feature
    cdef BSpec specs[BUCKETS_PER_OP_MAX]
    cdef int nb, dec, st = OK
    cdef PyObject* limit
    cdef Account a
    cdef Rec* r
    cdef Idem* c
    if not valid_id(cid):
        return r_status(INVALID_ID)
    if not get_i64(op[3], &fp):
        return r_status(INVALID_ARGUMENT)
    if not get_range(op[4], 0, AMOUNT_MAX, &amount):
        return r_status(INVALID_AMOUNT)
    if not get_bool(op[5], &feature):
        return r_status(INVALID_ARGUMENT)
    nb = parse_buckets(op[6], specs)
    if nb < 0:
        return r_status(INVALID_ARGUMENT)
    a = touch(L, op[1], now, &st)
    if a is None:
        return r_status(st)
    r = find_rec(L, a, REC_CHARGE, cid)
    if r != NULL:
        if r.fp == fp:
            c = <Idem*>r
            L.replayed = True
            return r_charge(OK, DECISION_OK, c.amount, c.avail, 0, EMPTY)
        return r_status(IDEMPOTENCY_KEY_REUSED)
    dec = decide(a, amount, feature, specs, nb, now, False, False, 0, &grant, &retry, &limit)
    if dec < 0:
        return r_status(LIMIT_EXCEEDED)
    if dec != DECISION_OK:
        return r_charge(OK, dec, 0, acct_available(a), retry, <object>limit)
    if nb:
        take_buckets(L, a, specs, nb, now)
    if not a.unlimited:
        charge_free(L, a, amount)
    avail = acct_available(a)
    L.seq += 1
    seq = L.seq
    c = <Idem*>new_rec(L, a, REC_CHARGE, cid, seq, fp)
    c.amount = amount
    c.avail = avail
    c.purge_ns = now + L.retention_ns
    pq_push(&L.purge_q, c.purge_ns, seq, &c.r, now + L.retention_ns)
    mark_rec(L, &c.r)
    mark_acct(L, a, D_CORE)
    return r_charge(OK, DECISION_OK, amount, avail, 0, EMPTY)


cdef Result op_check(Ledger L, tuple op, int64_t now):
    cdef int64_t amount, grant, retry
    cdef bint feature
    cdef BSpec specs[BUCKETS_PER_OP_MAX]
    cdef int nb, dec, st = OK
    cdef PyObject* limit
    cdef Account a
    if not get_range(op[2], 0, AMOUNT_MAX, &amount):
        return r_status(INVALID_AMOUNT)
    if not get_bool(op[3], &feature):
        return r_status(INVALID_ARGUMENT)
    nb = parse_buckets(op[4], specs)
    if nb < 0:
        return r_status(INVALID_ARGUMENT)
    a = touch(L, op[1], now, &st)
    if a is None:
        return r_status(st)
    dec = decide(a, amount, feature, specs, nb, now, True, False, 0, &grant, &retry, &limit)
    if dec < 0:
        return r_status(LIMIT_EXCEEDED)
    return r_check(OK, dec, acct_available(a), retry, <object>limit)


cdef Result op_expire(Ledger L, tuple op, int64_t now):
    cdef object max_o = op[1]
    cdef int64_t max_items, done = 0, seq
    cdef int ovf = 0
    cdef int i
    cdef Hold* h
    cdef Rec* r
    cdef HEnt e
    cdef HEnt* top
    cdef Account a
    if not PyLong_Check(max_o) or PyBool_Check(max_o) or max_o < 0:
        return r_status(INVALID_ARGUMENT)
    max_items = PyLong_AsLongLongAndOverflow(max_o, &ovf)
    if ovf:
        max_items = INT64_MAX
    while done < max_items:
        top = heap_peek(&L.holds_q)
        if top == NULL or top.t > now:
            break
        h = <Hold*>top.p
        a = <Account>h.r.acct
        expire_due_lots(L, a, now)
        expire_hold(L, a, h, now)
        done += 1
    while done < max_items and L.lots_q.n and L.lots_q.a[0].t <= now:
        e = L.lots_q.a[0]
        heap_remove_at(&L.lots_q, 0)
        a = <Account>e.p
        i = lot_index(a, e.seq)
        if i >= 0 and not a.lots[i].expired:
            lot_expire_at(L, a, i)
            mark_acct(L, a, D_CORE)
            done += 1
        Py_DECREF(a)
    while done < max_items:
        top = pq_peek(&L.purge_q)
        if top == NULL or top.t > now:
            break
        pq_prefetch(&L.purge_q, &L.recs)
        r = <Rec*>top.p
        seq = top.seq
        if r.kind == REC_GRANT and lot_of_grant(<Account>r.acct, r) >= 0:
            # Lot ids are grant ids: the record lives as long as its lot, so a retry can never
            # create a second lot with the same id. It is looked at again a retention later.
            pq_room(&L.purge_q)     # first: once out of the queue, it must go back in
            pq_remove(&L.purge_q, r)
            (<Idem*>r).purge_ns = now + L.retention_ns
            pq_push(&L.purge_q, (<Idem*>r).purge_ns, seq, r, now + L.retention_ns)
            mark_rec(L, r)
        else:
            pq_remove(&L.purge_q, r)
            rec_kill(L, r)
        done += 1
    return r_int(OK, done)


cdef Result apply_one(Ledger L, object op, int64_t now):
    cdef int64_t code
    cdef Py_ssize_t n
    if not PyTuple_Check(op):
        return r_status(INVALID_ARGUMENT)
    n = PyTuple_GET_SIZE(op)
    if n == 0 or not get_i64(<object>PyTuple_GET_ITEM(op, 0), &code):
        return r_status(INVALID_ARGUMENT)
    if code == OP_RESERVE:
        return op_reserve(L, <tuple>op, now) if n == 12 else r_status(INVALID_ARGUMENT)
    if code == OP_COMMIT:
        return op_commit(L, <tuple>op, now) if n == 6 else r_status(INVALID_ARGUMENT)
    if code == OP_RELEASE:
        return op_release(L, <tuple>op, now) if n == 3 else r_status(INVALID_ARGUMENT)
    if code == OP_CHARGE:
        return op_charge(L, <tuple>op, now) if n == 7 else r_status(INVALID_ARGUMENT)
    if code == OP_CHECK:
        return op_check(L, <tuple>op, now) if n == 5 else r_status(INVALID_ARGUMENT)
    if code == OP_EXTEND:
        return op_extend(L, <tuple>op, now) if n == 5 else r_status(INVALID_ARGUMENT)
    if code == OP_GRANT:
        return op_grant(L, <tuple>op, now) if n == 8 else r_status(INVALID_ARGUMENT)
    if code == OP_UPSERT:
        return op_upsert(L, <tuple>op, now) if n == 7 else r_status(INVALID_ARGUMENT)
    if code == OP_BUCKET:
        return op_bucket(L, <tuple>op, now) if n == 4 else r_status(INVALID_ARGUMENT)
    if code == OP_EXPIRE:
        return op_expire(L, <tuple>op, now) if n == 2 else r_status(INVALID_ARGUMENT)
    return r_status(INVALID_ARGUMENT)
