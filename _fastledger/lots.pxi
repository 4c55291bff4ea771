# Credit lots of one account: a C array kept in consumption order
# (priority, expires_ns or +inf, seq), expiry, earmarking and charging.


cdef inline int mark_acct(Ledger L, Account a, uint8_t what) except -1:
    if not a.dirty:
        vec_push(&L.dirty_accts, <void*>a)
    a.dirty |= what
    return 0


cdef inline int64_t lot_free(Lot* l) noexcept nogil:
    return 0 if l.expired else l.remaining - l.earmarked


cdef inline int64_t lot_exp_key(Lot* l) noexcept nogil:
    return l.expires_ns if l.expires_ns else INT64_MAX


cdef inline int64_t acct_remaining(Account a) noexcept:
    cdef int64_t s = 0
    cdef int i
    for i in range(a.nlots):
        s += a.lots[i].remaining
    return s


cdef inline int64_t acct_available(Account a) noexcept:
    """balance - held + credit_limit; the grant and upsert guards keep it inside int64."""
    return acct_remaining(a) - a.debt - a.held + a.credit_limit


cdef inline int lot_index(Account a, int64_t seq) noexcept:
    cdef int i
    for i in range(a.nlots):
        if a.lots[i].seq == seq:
            return i
    return -1


cdef inline int lot_of_grant(Account a, Rec* g) noexcept:
    """The index of the lot grant record `g` made (lot ids are grant ids), or -1 if it has none
    (spent, or the grant paid a debt and made none)."""
    cdef int i
    for i in range(a.nlots):
        if &a.lots[i].grant.r == g:
            return i
    return -1


cdef int lots_reserve(Account a, int n) except -1:
    cdef int cap
    cdef Lot* p
    if n <= a.lcap:
        return 0
    cap = a.lcap * 2 if a.lcap else 1
    while cap < n:
        cap *= 2
    p = <Lot*>PyMem_Realloc(a.lots, cap * sizeof(Lot))
    if p == NULL:
        raise MemoryError()
    a.lots = p
    a.lcap = <uint16_t>cap
    return 0


cdef int lot_insert(Account a, Idem* grant, uint8_t category, int32_t priority,
                    int64_t expires_ns, int64_t seq, int64_t remaining) except -1:
    cdef int i, pos
    cdef int64_t ek = expires_ns if expires_ns else INT64_MAX
    cdef Lot* l
    lots_reserve(a, a.nlots + 1)
    pos = a.nlots
    for i in range(a.nlots):
        l = &a.lots[i]
        if (priority < l.priority or (priority == l.priority and (
                ek < lot_exp_key(l) or (ek == lot_exp_key(l) and seq < l.seq)))):
            pos = i
            break
    if pos < a.nlots:
        memmove(&a.lots[pos + 1], &a.lots[pos], (a.nlots - pos) * sizeof(Lot))
    l = &a.lots[pos]
    l.grant = grant
    l.remaining = remaining
    l.earmarked = 0
    l.expires_ns = expires_ns
    l.seq = seq
    l.priority = priority
    l.category = category
    l.expired = 0
    a.nlots += 1
    return 0


cdef void lot_drop_at(Account a, int i) noexcept:
    a.nlots -= 1
    if i < a.nlots:
        memmove(&a.lots[i], &a.lots[i + 1], (a.nlots - i) * sizeof(Lot))


cdef inline bint lot_drop_if_empty(Account a, int i) noexcept:
    if a.lots[i].remaining == 0:
        lot_drop_at(a, i)
        return True
    return False


cdef int lot_expire_at(Ledger L, Account a, int i) except -1:
    """Expire lot i: its free part goes to `expired`, and is noted on the lot's grant record
    (Idem.amount of a grant: what of its lot expired unused; the server carries included
    credit over from it). True if the lot was dropped."""
    cdef Lot* l = &a.lots[i]
    cdef int64_t free = l.remaining - l.earmarked
    a.expired += free
    if free:
        l.grant.amount += free  # <= the grant's amount: no overflow
        mark_rec(L, &l.grant.r)
        L.lots_expired_log.append((a.aid, rec_rid_str(&l.grant.r), free))
    l.remaining = l.earmarked
    l.expired = 1
    return lot_drop_if_empty(a, i)


cdef inline bint has_due_lot(Account a, int64_t now) noexcept:
    cdef int i
    for i in range(a.nlots):
        if a.lots[i].expires_ns and a.lots[i].expires_ns <= now and not a.lots[i].expired:
            return True
    return False


cdef int expire_due_lots(Ledger L, Account a, int64_t now) except -1:
    """Time passes for the account's lots (every op that names an account does this first)."""
    cdef int i = 0
    cdef bint changed = False
    cdef Lot* l
    while i < a.nlots:
        l = &a.lots[i]
        if l.expires_ns and l.expires_ns <= now and not l.expired:
            changed = True
            if lot_expire_at(L, a, i):
                continue
        i += 1
    if changed:
        mark_acct(L, a, D_CORE)
    return 0


cdef int hold_add_mark(Hold* h, int64_t lot_seq, int64_t amount) except -1:
    """Add an earmark to the hold, merged into an existing one on the same lot."""
    cdef int i
    cdef Earmark* p
    if h.u.o.mark0.lot_seq == 0:
        h.u.o.mark0.lot_seq = lot_seq
        h.u.o.mark0.amount = amount
        return 0
    if h.u.o.mark0.lot_seq == lot_seq:
        h.u.o.mark0.amount += amount
        return 0
    for i in range(h.nmore):
        if h.u.o.more[i].lot_seq == lot_seq:
            h.u.o.more[i].amount += amount
            return 0
    p = <Earmark*>PyMem_Realloc(h.u.o.more, (h.nmore + 1) * sizeof(Earmark))
    if p == NULL:
        raise MemoryError()
    h.u.o.more = p
    h.u.o.more[h.nmore].lot_seq = lot_seq
    h.u.o.more[h.nmore].amount = amount
    h.nmore += 1
    return 0


cdef int take_free(Account a, Hold* h, int64_t amount) except -1:
    """Earmark `amount` from free lot credit in order, then the credit line (checked by caller)."""
    cdef int64_t need = amount
    cdef int64_t take
    cdef int i
    cdef Lot* l
    for i in range(a.nlots):
        if need == 0:
            break
        l = &a.lots[i]
        take = lot_free(l)
        if take > need:
            take = need
        if take > 0:
            l.earmarked += take
            hold_add_mark(h, l.seq, take)
            need -= take
    a.ovd_held += need
    h.u.o.overdraft += need
    return 0


cdef int64_t charge_free(Ledger L, Account a, int64_t amount) noexcept:
    """Charge up to `amount` from free lots, then overdraft room; returns what was charged."""
    cdef int64_t need = amount
    cdef int64_t take, room
    cdef int i = 0
    cdef Lot* l
    while i < a.nlots and need > 0:
        l = &a.lots[i]
        take = lot_free(l)
        if take > need:
            take = need
        if take > 0:
            l.remaining -= take
            a.consumed += take
            need -= take
            if lot_drop_if_empty(a, i):
                continue
        i += 1
    room = a.credit_limit - a.debt - a.ovd_held
    if room > 0 and need > 0:
        take = room if room < need else need
        a.debt += take
        need -= take
    return amount - need


cdef inline Earmark* hold_mark(Hold* h, int i) noexcept nogil:
    return &h.u.o.mark0 if i == 0 else &h.u.o.more[i - 1]


cdef int64_t free_earmarks(Ledger L, Account a, Hold* h, int64_t charge) noexcept:
    """Charge up to `charge` from the hold's own backing and free all of it.

    Returns what was charged. Released parts of expired lots expire.
    """
    cdef int64_t need = charge
    cdef int64_t take, amt, rest
    cdef int i, j, n
    cdef Earmark* m
    cdef Lot* l
    n = (1 if h.u.o.mark0.lot_seq else 0) + h.nmore
    for i in range(n):
        m = hold_mark(h, i)
        amt = m.amount
        take = amt if amt < need else need
        need -= take
        j = lot_index(a, m.lot_seq)
        if j < 0:
            continue    # cannot happen while invariants hold (an earmarked lot is not empty)
        l = &a.lots[j]
        l.earmarked -= amt
        l.remaining -= take
        a.consumed += take
        if l.expired:
            rest = amt - take
            a.expired += rest
            l.remaining -= rest
        lot_drop_if_empty(a, j)
    take = h.u.o.overdraft if h.u.o.overdraft < need else need
    need -= take
    a.debt += take
    a.ovd_held -= h.u.o.overdraft
    a.held -= h.amount
    h.u.o.mark0.lot_seq = 0
    h.u.o.mark0.amount = 0
    PyMem_Free(h.u.o.more)
    h.u.o.more = NULL
    h.nmore = 0
    h.u.o.overdraft = 0
    ratchet_ceiling(L, a)
    return charge - need


cdef void ratchet_ceiling(Ledger L, Account a) noexcept:
    """After debt or overdraft shrank, the ceiling left by a credit-limit cut comes down with it."""
    cdef int64_t c, now_total
    if not (a.flags & AF_OVER):
        return
    c = L.ceilings.get(a, 0)
    now_total = a.debt + a.ovd_held
    if now_total <= a.credit_limit:
        a.flags &= ~AF_OVER
        L.ceilings.pop(a, None)
    elif now_total < c:
        L.ceilings[a] = now_total


cdef inline object lot_id_str(Lot* l):
    return rec_rid_str(&l.grant.r)
