# Read views (dicts with the reference model's keys). The account and lot views let time pass
# for the account's lots first, as every op naming the account does; that change is journaled.


cdef inline Account lookup(Ledger L, object aid):
    cdef PyObject* p = acct_get(L, aid)
    return None if p == NULL else <Account>p


cdef object account_view(Ledger L, object aid, int64_t now):
    cdef Account a = lookup(L, aid)
    cdef int64_t remaining
    if a is None:
        return None
    expire_due_lots(L, a, now)
    remaining = acct_remaining(a)
    return {
        "account_id": a.aid,
        "plan_id": a.plan_id,
        "status": a.status,
        "credit_limit": a.credit_limit,
        "max_open_holds": a.max_open_holds,
        "unlimited": True if a.unlimited else False,
        "balance": remaining - a.debt,
        "held": a.held,
        "available": remaining - a.debt - a.held + a.credit_limit,
        "debt": a.debt,
        "granted": a.granted,
        "consumed": a.consumed,
        "expired": a.expired,
        "uncollected": a.uncollected,
        "open_holds": a.open_holds,
    }


cdef list lots_view(Ledger L, object aid, int64_t now):
    cdef Account a = lookup(L, aid)
    cdef list out = []
    cdef Lot* l
    cdef int i
    if a is None:
        return out
    expire_due_lots(L, a, now)
    for i in range(a.nlots):
        l = &a.lots[i]
        out.append({
            "lot_id": lot_id_str(l),
            "category": l.category,
            "remaining": l.remaining,
            "earmarked": l.earmarked,
            "priority": l.priority,
            "expires_ns": l.expires_ns,
            "expired": True if l.expired else False,
        })
    return out


cdef object reservation_view(Ledger L, object aid, object rid):
    cdef Account a = lookup(L, aid)
    cdef Hold* h
    if a is None or not valid_id(rid):
        return None
    h = <Hold*>find_rec(L, a, REC_HOLD, rid)
    if h == NULL:
        return None
    return {
        "reservation_id": rec_rid_str(&h.r),
        "state": h.state,
        "amount_held": h.amount,
        "expires_ns": h.expires_ns,
        "on_expire": h.on_expire,
        "backed": False if h.hflags & HF_UNBACKED else True,
        "meta": (<tuple>h.extra)[0] if h.extra != NULL else b"",
    }


cdef Rec* rec_of(Ledger L, object aid, object rid, uint8_t kind):
    """The record of kind `kind` and id `rid` of account `aid`, or NULL (any objects)."""
    cdef Account a = lookup(L, aid)
    return find_rec(L, a, kind, rid) if a is not None and valid_id(rid) else NULL


cdef object grant_remaining(Ledger L, object aid, object gid):
    cdef Rec* r = rec_of(L, aid, gid, REC_GRANT)
    cdef int i
    if r == NULL:
        return None
    i = lot_of_grant(<Account>r.acct, r)
    return (<Account>r.acct).lots[i].remaining if i >= 0 else 0


cdef object grant_expired(Ledger L, object aid, object gid):
    cdef Rec* r = rec_of(L, aid, gid, REC_GRANT)
    return None if r == NULL else (<Idem*>r).amount


cdef bint has_rec(Ledger L, object aid, object rid, uint8_t kind):
    return rec_of(L, aid, rid, kind) != NULL
