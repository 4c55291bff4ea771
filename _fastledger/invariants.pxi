# The invariant sweep: O(state). Runs after every apply in the debug build (QUOTA_DEBUG=1).


class LedgerCorrupt(AssertionError):
    """An invariant does not hold: the ledger must not keep serving."""


cdef inline void require(bint ok, str what, Account a) except *:
    if not ok:
        raise LedgerCorrupt(f"invariant broken for {a.aid if a is not None else '-'}: {what}")


cdef bint probe_reaches(uint64_t* slots, size_t mask, size_t i) noexcept:
    """Linear probing finds the record in slot i: no empty slot between its home and i."""
    cdef size_t j = slot_rec(slots[i]).hash & mask
    while j != i:
        if slots[j] == 0:
            return False
        j = (j + 1) & mask
    return True


cdef int check_purge_ring(Ledger L) except -1:
    """The purge ring is in key order, its entries know their positions, and the ring's and
    the heap's live entries add up to the queue's count."""
    cdef PurgeQ* q = &L.purge_q
    cdef HEnt* prev = NULL
    cdef HEnt* e
    cdef size_t k
    cdef Py_ssize_t live = 0
    for k in range(q.len):
        e = &q.ring[(q.head_t + <int64_t>k) & q.mask]
        if e.p == NULL:
            continue
        require(prev == NULL or hent_lt(prev, e), "the purge ring is in key order", None)
        require(rec_pidx(<Rec*>e.p)[0] == pq_ring_pos(q.head_t + <int64_t>k),
                "a ring entry's record knows its position", None)
        prev = e
        live += 1
    require(live + q.heap.n == q.n, "the purge queue's count", None)
    return 0


cdef int check_invariants(Ledger L) except -1:
    cdef dict per = {}          # Account -> [open holds, held, overdraft, {lot seq: earmarked}]
    cdef list acc
    cdef dict marks
    cdef size_t i, cap, indexed = 0
    cdef uint64_t* slots
    cdef int part
    cdef int j, k, nm
    cdef Rec* r
    cdef Hold* h
    cdef Account a
    cdef Lot* l
    cdef Earmark* m
    cdef Py_ssize_t held_n = 0, purge_n = 0
    cdef int64_t total, remaining, ceiling
    for part in range(2):
        slots = table_part(&L.recs, part, &cap)
        for i in range(cap):
            if slots[i] == 0:
                continue
            indexed += 1
            require(probe_reaches(slots, cap - 1, i), "a record is reachable from its home slot", None)
            r = slot_rec(slots[i])
            a = <Account>r.acct
            require(not (r.flags & RF_DEAD), "a purged record is still indexed", a)
            require(lookup(L, a.aid) is a, "a record's account is in the ledger", a)
            if r.kind != REC_HOLD:
                require((<Idem*>r).pidx != -1 and pq_entry(&L.purge_q, (<Idem*>r).pidx).p == <void*>r,
                        "an idempotency record is queued for purge", a)
                purge_n += 1
                continue
            h = <Hold*>r
            if h.state != RES_HELD:
                require(h.qidx != -1 and pq_entry(&L.purge_q, h.qidx).p == <void*>h,
                        "a settled hold is queued for purge", a)
                purge_n += 1
                continue
            require(h.qidx >= 0 and L.holds_q.a[h.qidx].p == <void*>h
                    and L.holds_q.a[h.qidx].t == h.expires_ns, "an open hold is queued by its expiry", a)
            held_n += 1
            acc = per.get(a)
            if acc is None:
                acc = per[a] = [0, 0, 0, {}]
            acc[0] += 1
            if h.hflags & HF_UNBACKED:
                continue
            acc[1] += h.amount
            acc[2] += h.u.o.overdraft
            marks = acc[3]
            total = h.u.o.overdraft
            nm = (1 if h.u.o.mark0.lot_seq else 0) + h.nmore
            for k in range(nm):
                m = hold_mark(h, k)
                require(m.amount > 0, "earmarks are positive", a)
                marks[m.lot_seq] = marks.get(m.lot_seq, 0) + m.amount
                total += m.amount
            require(total == h.amount, "hold backing: amount == earmarks + overdraft", a)
    require(indexed == L.recs.n, "the record table's count", None)
    require(held_n == L.holds_q.n, "the hold queue has exactly the open holds", None)
    require(purge_n == L.purge_q.n, "the purge queue has exactly the settled records", None)
    check_purge_ring(L)
    for a in L.accounts:
        acc = per.get(a, [0, 0, 0, {}])
        marks = acc[3]
        require(a.open_holds == acc[0], "open_holds count", a)
        require(a.held == acc[1], "held == sum of open backed holds", a)
        require(a.ovd_held == acc[2], "overdraft_held == sum of the holds' overdraft parts", a)
        remaining = 0
        for j in range(a.nlots):
            l = &a.lots[j]
            require(l.remaining > 0, "empty lots are dropped", a)
            require(0 <= l.earmarked <= l.remaining, "0 <= earmarked <= remaining", a)
            require(not l.expired or l.earmarked == l.remaining, "an expired lot keeps only earmarks", a)
            require(l.earmarked == marks.pop(l.seq, 0), "earmarks of a lot == its holds' earmarks", a)
            require(l.grant != NULL and not (l.grant.r.flags & RF_DEAD) and l.grant.r.kind == REC_GRANT
                    and l.grant.r.acct == <PyObject*>a
                    and find_rec(L, a, REC_GRANT, lot_id_str(l)) == &l.grant.r,
                    "a lot's grant record is indexed (it lives as long as the lot)", a)
            if j:
                require((a.lots[j - 1].priority, lot_exp_key(&a.lots[j - 1]), a.lots[j - 1].seq)
                        < (l.priority, lot_exp_key(l), l.seq), "lots in consumption order", a)
            remaining += l.remaining
        require(not marks, "every earmark names a lot of its account", a)
        require(a.debt >= 0 and a.uncollected >= 0, "debt and uncollected >= 0", a)
        require(a.granted == remaining + a.consumed + a.expired,
                "conservation: granted == remaining + consumed + expired", a)
        require(acct_available(a) == remaining - a.debt - a.held + a.credit_limit,
                "available == balance - held + credit_limit", a)
        ceiling = L.ceilings.get(a, 0) if a.flags & AF_OVER else a.credit_limit
        require(a.debt + a.ovd_held <= ceiling,
                "debt + overdraft held within the credit limit (or what a cut left)", a)
        require((a.flags & AF_OVER) == (a in L.ceilings), "ceiling bookkeeping", a)
        require(a.open_holds <= HOLDS_PER_ACCOUNT_MAX and a.nlots <= LOTS_PER_ACCOUNT_MAX,
                "tables within their limits", a)
    return 0
