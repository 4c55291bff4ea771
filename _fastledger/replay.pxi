# Reading journal records and snapshots back. Nothing replayed is journaled again.
#
# A journal record is read twice: R_CHECK validates all of it against the ledger (any defect
# raises ValueError with the ledger untouched) and notes the account each entry names, then
# R_APPLY overwrites state and rebuilds the queues of what it names. A snapshot is read once,
# R_LOAD, into a new ledger: every check is made as it is read, and a defect raises before the
# caller ever sees that ledger.

ctypedef struct Rd:
    const char* p
    const char* end


cdef enum:
    R_CHECK = 1
    R_APPLY = 2
    R_LOAD = 3


cdef inline int need(Rd* r, Py_ssize_t n) except -1:
    if r.end - r.p < n:
        raise ValueError("journal record truncated")
    return 0


cdef inline uint8_t rd8(Rd* r) except? 255:
    need(r, 1)
    r.p += 1
    return (<const uint8_t*>(r.p - 1))[0]


cdef inline uint16_t rd16(Rd* r) except? 65535:
    need(r, 2)
    r.p += 2
    return <uint16_t>((<const uint8_t*>(r.p - 2))[0]) | (<uint16_t>((<const uint8_t*>(r.p - 1))[0]) << 8)


cdef inline int32_t rd32(Rd* r) except? -1:
    need(r, 4)
    r.p += 4
    return fl_get32(r.p - 4)


cdef inline int64_t rd64(Rd* r) except? -1:
    need(r, 8)
    r.p += 8
    return fl_get64(r.p - 8)


cdef inline const char* rd_idp(Rd* r, Py_ssize_t* n) except NULL:
    """A validated id, as its bytes in the record (length in n): no str made."""
    cdef uint8_t k = rd8(r)
    need(r, k)
    if not valid_id_bytes(r.p, k):
        raise ValueError("journal record has a malformed id")
    r.p += k
    n[0] = k
    return r.p - k


cdef object rdid(Rd* r):
    cdef Py_ssize_t n
    cdef const char* p = rd_idp(r, &n)
    return PyUnicode_FromStringAndSize(p, n)


cdef inline bint same_id(object s, const char* p, Py_ssize_t n) noexcept:
    """Whether the str s (an id, or None) has exactly these bytes."""
    return s is not None and PyUnicode_GET_LENGTH(s) == n and memcmp(id_data(s), p, n) == 0


cdef inline int64_t rd_range(Rd* r, int64_t lo, int64_t hi, int width) except? -1:
    cdef int64_t v
    if width == 1:
        v = rd8(r)
    elif width == 2:
        v = rd16(r)
    elif width == 4:
        v = rd32(r)
    else:
        v = rd64(r)
    if v < lo or v > hi:
        raise ValueError("journal record has a value out of range")
    return v


cdef class Reader:
    """One read of a journal record (R_CHECK, then R_APPLY) or of a snapshot (R_LOAD)."""
    cdef Ledger L
    cdef Rd r
    cdef int mode
    cdef object last_aid        # the account id the last entry named...
    cdef Account last           # ...and its account (None in R_CHECK if the record creates it)
    cdef object plan            # the last plan id read: accounts share a few plans
    cdef Py_ssize_t pending     # grant records a lot named that no entry has written yet
    cdef PtrVec orphans         # grant records deleted while a lot still names them
    # R_CHECK notes the account of each entry in order (NULL: one the record creates), for
    # R_APPLY to take without a lookup (k: the next one).
    cdef PtrVec accts
    cdef Py_ssize_t k
    # R_CHECK: ids of the accounts written; grant records the written lots keep; the lots whose
    # grant record is not in the ledger, grant records written and grant records deleted (keys
    # are (account id, grant id)).
    cdef set acct_ids
    cdef PtrVec kept
    cdef set needed
    cdef set written
    cdef set deleted

    def __cinit__(self, Ledger L):
        self.L = L

    def __dealloc__(self):
        cdef Py_ssize_t i
        for i in range(self.orphans.n):             # left over by an error: R_LOAD's ledger is dropped
            rec_free(<Rec*>self.orphans.a[i])
        PyMem_Free(self.orphans.a)
        PyMem_Free(self.accts.a)
        PyMem_Free(self.kept.a)


cdef int check_links(Reader x) except -1:
    """Every lot must keep its grant record: one that exists and is not deleted, or one the
    record writes; and a deleted grant record must not be named by a lot that stays."""
    cdef Ledger L = x.L
    cdef Account a
    cdef Rec* d
    cdef Py_ssize_t i
    for key in x.needed:
        if key not in x.written:
            raise ValueError("journal record has a lot without its grant record")
    for aid, gid in x.deleted:
        if (aid, gid) in x.written:
            continue
        a = lookup(L, aid)
        d = NULL if a is None else find_rec(L, a, REC_GRANT, gid)
        if d == NULL:
            continue                    # nothing to delete: a lot naming it is in `needed`
        for i in range(x.kept.n):
            if x.kept.a[i] == <void*>d:
                raise ValueError("journal record has a lot without its grant record")
        if aid not in x.acct_ids:
            for i in range(a.nlots):
                if &a.lots[i].grant.r == d:
                    raise ValueError("journal record deletes the grant record of a live lot")
    return 0


cdef Account acct_of(Reader x, const char* p, Py_ssize_t n):
    """The account an entry names: in the ledger or, for R_CHECK, written earlier in the record
    (then None). Entries often name the account of the entry before: that one is not looked up."""
    cdef PyObject* o
    cdef object aid
    if same_id(x.last_aid, p, n):
        return x.last
    aid = PyUnicode_FromStringAndSize(p, n)
    o = acct_get(x.L, aid)
    if o != NULL:
        x.last = <Account>o
    elif x.mode == R_CHECK and aid in x.acct_ids:
        x.last = None
    else:
        raise ValueError("journal record names an unknown account")
    x.last_aid = aid
    return x.last


cdef Account entry_acct(Reader x, const char* p, Py_ssize_t n):
    """The account a record entry names (R_APPLY takes what R_CHECK found)."""
    cdef void* noted
    cdef Account a
    if x.mode == R_APPLY:
        noted = x.accts.a[x.k]
        x.k += 1
        return acct_of(x, p, n) if noted == NULL else <Account>noted
    a = acct_of(x, p, n)
    if x.mode == R_CHECK:
        vec_push(&x.accts, NULL if a is None else <void*>a)
    return a


cdef int check_account(Reader x, const char* p, Py_ssize_t n, int nlots) except -1:
    """R_CHECK of an account entry: note the account, and check its lots."""
    cdef Rd* r = &x.r
    cdef object aid = PyUnicode_FromStringAndSize(p, n)
    cdef PyObject* o = acct_get(x.L, aid)
    cdef Account a = None if o == NULL else <Account>o
    cdef const char* gid
    cdef const char* ids[LOTS_PER_ACCOUNT_MAX]
    cdef Py_ssize_t glen
    cdef Py_ssize_t lens[LOTS_PER_ACCOUNT_MAX]
    cdef Rec* g
    cdef int i, j
    if aid in x.acct_ids:
        raise ValueError("journal record writes an account twice")
    x.acct_ids.add(aid)
    vec_push(&x.accts, <void*>o)
    x.last_aid = aid
    x.last = a
    for i in range(nlots):
        gid = rd_idp(r, &glen)
        for j in range(i):
            if lens[j] == glen and memcmp(ids[j], gid, glen) == 0:
                raise ValueError("journal record has two lots with one id")
        ids[i] = gid
        lens[i] = glen
        rd_range(r, LOT_PURCHASED, LOT_ADJUSTMENT, 1)
        rd_range(r, 0, 1, 1)
        rd32(r)
        rd_range(r, 1, INT64_MAX, 8)            # remaining
        rd_range(r, 0, INT64_MAX, 8)            # earmarked
        rd_range(r, 0, INT64_MAX, 8)            # expires_ns
        rd_range(r, 1, INT64_MAX, 8)            # seq
        g = NULL if a is None else table_find(&x.L.recs, a, REC_GRANT, gid, glen,
                                              rec_hash(a, REC_GRANT, gid, glen))
        if g != NULL:
            vec_push(&x.kept, g)
        else:
            x.needed.add((aid, PyUnicode_FromStringAndSize(gid, glen)))
    return 0


cdef Idem* lot_grant(Reader x, Account a, const char* gid, Py_ssize_t n) except NULL:
    """The grant record a lot points at: the one that exists, or a placeholder that an entry
    later in the record must fill in (R_CHECK made sure of that for R_APPLY; R_LOAD counts them
    in `pending`). R_LOAD does not look: its accounts are new, so they have no records yet."""
    cdef uint64_t h = rec_hash(a, REC_GRANT, gid, n)
    cdef Rec* g = NULL
    if x.mode != R_LOAD:
        g = table_find(&x.L.recs, a, REC_GRANT, gid, n, h)
    if g == NULL:
        g = rec_new_raw(x.L, a, REC_GRANT, gid, n, h, 0, 0)
        x.pending += 1
    return <Idem*>g


cdef int rd_account(Reader x) except -1:
    cdef Rd* r = &x.r
    cdef Ledger L = x.L
    cdef object aid, plan
    cdef const char* ap
    cdef const char* p
    cdef Py_ssize_t an, n
    cdef int64_t v[14]
    cdef int64_t old[LOTS_PER_ACCOUNT_MAX]
    cdef int i, j, nlots, nold = 0
    cdef void* noted = NULL
    cdef Account a = None
    cdef Lot* l
    cdef Idem* g
    ap = rd_idp(r, &an)
    p = rd_idp(r, &n)
    v[0] = rd_range(r, ACCOUNT_ACTIVE, ACCOUNT_SUSPENDED, 1)
    v[1] = rd_range(r, 0, 1, 1)
    v[2] = rd_range(r, 0, AF_OVER, 1)
    v[3] = rd_range(r, 0, HOLDS_PER_ACCOUNT_MAX, 4)
    v[4] = rd_range(r, 0, HOLDS_PER_ACCOUNT_MAX, 4)
    v[5] = rd_range(r, 0, AMOUNT_MAX, 8)           # credit_limit
    for i in range(6, 14):                          # debt .. ovd_held, ceiling
        v[i] = rd_range(r, 0, INT64_MAX, 8)
    nlots = <int>rd_range(r, 0, LOTS_PER_ACCOUNT_MAX, 2)
    if x.mode == R_CHECK:
        return check_account(x, ap, an, nlots)
    if x.mode == R_APPLY:
        noted = x.accts.a[x.k]
        x.k += 1
    if noted != NULL:
        a = <Account>noted
    if a is not None and same_id(a.plan_id, p, n):
        plan = a.plan_id
    elif same_id(x.plan, p, n):
        plan = x.plan
    else:
        plan = x.plan = PyUnicode_FromStringAndSize(p, n)
    if a is None:
        aid = PyUnicode_FromStringAndSize(ap, an)
        if acct_get(L, aid) != NULL:
            raise ValueError("journal record writes an account twice")     # R_LOAD
        a = new_account(L, aid, plan)
    x.last_aid = a.aid
    x.last = a
    a.plan_id = plan
    a.status = <uint8_t>v[0]
    a.unlimited = <uint8_t>v[1]
    a.flags = <uint8_t>v[2]
    a.max_open_holds = <uint16_t>v[3]
    a.open_holds = <uint16_t>v[4]
    a.credit_limit = v[5]
    a.debt = v[6]
    a.consumed = v[7]
    a.expired = v[8]
    a.granted = v[9]
    a.uncollected = v[10]
    a.held = v[11]
    a.ovd_held = v[12]
    if a.flags & AF_OVER:
        L.ceilings[a] = v[13]
    elif L.ceilings:
        L.ceilings.pop(a, None)
    # Lots already queued for expiry (the lot queue is lazy) are not queued twice.
    for i in range(a.nlots):
        if not a.lots[i].expired:
            old[nold] = a.lots[i].seq
            nold += 1
    a.nlots = 0
    lots_reserve(a, nlots)
    for i in range(nlots):
        p = rd_idp(r, &n)
        for j in range(a.nlots):
            g = a.lots[j].grant
            if g.r.rlen == n and memcmp(rec_rid(&g.r), p, n) == 0:
                raise ValueError("journal record has two lots with one id")
        g = lot_grant(x, a, p, n)
        l = &a.lots[a.nlots]
        l.grant = g
        l.category = <uint8_t>rd_range(r, LOT_PURCHASED, LOT_ADJUSTMENT, 1)
        l.expired = <uint8_t>rd_range(r, 0, 1, 1)
        l.priority = rd32(r)
        l.remaining = rd_range(r, 1, INT64_MAX, 8)
        l.earmarked = rd_range(r, 0, INT64_MAX, 8)
        l.expires_ns = rd_range(r, 0, INT64_MAX, 8)
        l.seq = rd_range(r, 1, INT64_MAX, 8)
        a.nlots += 1
        if l.expires_ns and not l.expired:
            for j in range(nold):
                if old[j] == l.seq:
                    break
            else:
                heap_push(&L.lots_q, l.expires_ns, l.seq, <void*>a)
    return 0


cdef int rd_buckets(Reader x) except -1:
    cdef Rd* r = &x.r
    cdef Py_ssize_t alen
    cdef const char* aid = rd_idp(r, &alen)
    cdef Account a = entry_acct(x, aid, alen)
    cdef int i, n
    cdef Bucket b
    cdef dict d = {}
    n = <int>rd_range(r, 0, BUCKETS_PER_ACCOUNT_MAX, 1)
    for i in range(n):
        name = rdid(r)
        b = Bucket.__new__(Bucket)
        b.capacity = rd_range(r, 1, AMOUNT_MAX, 8)
        b.refill_amount = rd_range(r, 1, AMOUNT_MAX, 8)
        b.period_ns = rd_range(r, 1, TTL_NS_MAX, 8)
        b.tokens = rd_range(r, -AMOUNT_MAX, AMOUNT_MAX, 8)
        b.last_ns = rd64(r)
        d[name] = b
    if x.mode != R_CHECK:
        a.buckets = d if n else None
    return 0


cdef Rec* replace_rec(Reader x, Account a, uint8_t kind, const char* rid, Py_ssize_t n,
                      int64_t seq, int64_t fp) except NULL:
    """The record to overwrite (detached from its queues), or a new one."""
    cdef Ledger L = x.L
    cdef uint64_t hk = rec_hash(a, kind, rid, n)
    cdef Rec* r = table_find(&L.recs, a, kind, rid, n, hk)
    cdef Hold* h
    cdef bint was_queued
    if r == NULL:
        return rec_new_raw(L, a, kind, rid, n, hk, seq, fp)
    was_queued = (<Hold*>r).qidx != -1 if kind == REC_HOLD else (<Idem*>r).pidx != -1
    rec_dequeue(L, r)
    if kind == REC_HOLD:
        h = <Hold*>r
        hold_clear_parts(h)
        memset((<char*>r) + sizeof(Rec), 0, sizeof(Hold) - sizeof(Rec))
        h.qidx = -1
    elif not was_queued and r.seq == 0:
        x.pending -= 1              # a lot's placeholder, filled in now
    r.seq = seq
    r.fp = fp
    return r


cdef int rd_hold(Reader x) except -1:
    cdef Rd* r = &x.r
    cdef Ledger L = x.L
    cdef Py_ssize_t alen, rlen, mlen
    cdef const char* aid = rd_idp(r, &alen)
    cdef const char* rid = rd_idp(r, &rlen)
    cdef Account a = entry_acct(x, aid, alen)
    cdef int64_t seq = rd_range(r, 1, INT64_MAX, 8)
    cdef int64_t fp = rd64(r)
    cdef int64_t amount = rd_range(r, 0, AMOUNT_MAX, 8)
    cdef int64_t expires = rd64(r)
    cdef int64_t avail0 = rd64(r)
    cdef int64_t state = rd_range(r, RES_HELD, RES_EXPIRED, 1)
    cdef int64_t on_expire = rd_range(r, EXPIRE_RELEASE, EXPIRE_COMMIT, 1)
    cdef int64_t hflags = rd_range(r, 0, HF_UNBACKED | HF_AUTO, 1)
    cdef int64_t overdraft = rd_range(r, 0, AMOUNT_MAX, 8)
    cdef int nmarks = <int>rd_range(r, 0, LOTS_PER_ACCOUNT_MAX, 2)
    if state != RES_HELD and (nmarks or overdraft):
        raise ValueError("journal record has a settled hold with earmarks or overdraft")
    cdef int i, ntaken
    cdef bint apply = x.mode != R_CHECK
    cdef int64_t lot_seq, amt, amount0, expires0, commit_fp, purge_ns = 0
    cdef int64_t done[4]
    cdef bint late = False, has_orig = False
    cdef Hold* h = NULL
    cdef const char* meta
    cdef dict taken = None
    if apply:
        h = <Hold*>replace_rec(x, a, REC_HOLD, rid, rlen, seq, fp)
        h.amount = amount
        h.expires_ns = expires
        h.avail0 = avail0
        h.state = <uint8_t>state
        h.on_expire = <uint8_t>on_expire
        h.hflags = <uint8_t>hflags
        if state == RES_HELD:
            h.u.o.overdraft = overdraft
    for i in range(nmarks):
        lot_seq = rd_range(r, 1, INT64_MAX, 8)
        amt = rd_range(r, 1, AMOUNT_MAX, 8)
        if apply:
            hold_add_mark(h, lot_seq, amt)
    mlen = rd_range(r, 0, META_BYTES_MAX, 2)
    need(r, mlen)
    meta = r.p
    r.p += mlen
    ntaken = <int>rd_range(r, 0, BUCKETS_PER_OP_MAX, 1)
    if ntaken:
        taken = {}
        for i in range(ntaken):
            name = rdid(r)
            taken[name] = rd_range(r, 0, AMOUNT_MAX, 8)
    if not rd_range(r, 0, 1, 1):
        if state != RES_HELD:
            raise ValueError("journal record has a settled hold without its settlement")
    else:
        # The settlement block (see put_hold): the stored `result` byte follows from the state.
        amount0 = rd64(r)
        expires0 = rd64(r)
        commit_fp = rd64(r)
        for i in range(4):
            done[i] = rd64(r)
        purge_ns = rd64(r)
        rd_range(r, AUX_NONE, AUX_RELEASE, 1)
        late = rd_range(r, 0, 1, 1)
        has_orig = rd_range(r, 0, 1, 1)
        if state != RES_HELD:
            # A commit's amount_released is not kept but recomputed (hold_released): it must
            # be what the rest of the settlement gives.
            if not (0 <= done[0] <= AMOUNT_MAX and 0 <= done[2] <= AMOUNT_MAX):
                raise ValueError("journal record has a hold settlement amount out of range")
            if settled_released(<uint8_t>state, late, amount, done[0], done[2]) != done[1]:
                raise ValueError("journal record has a hold whose amount_released does not "
                                 "follow from its settlement")
    if not apply:
        return 0
    if has_orig:
        hold_orig(h)
        h.orig.amount0 = amount0
        h.orig.expires0 = expires0
    if mlen or taken is not None:
        hold_set_extra(h, PyBytes_FromStringAndSize(meta, mlen), taken)
    if state == RES_HELD:
        heap_push(&L.holds_q, expires, seq, h)
    else:
        h.u.d.commit_fp = commit_fp
        h.u.d.charged = done[0]
        h.u.d.uncharged = done[2]
        h.u.d.avail = done[3]
        if late:
            h.hflags |= HF_LATE
        pq_push(&L.purge_q, purge_ns, seq, &h.r, INT64_MIN)  # stored times: the heap
    return 0


cdef int rd_idem(Reader x, uint8_t kind) except -1:
    cdef Rd* r = &x.r
    cdef Py_ssize_t alen, rlen
    cdef const char* aid = rd_idp(r, &alen)
    cdef const char* rid = rd_idp(r, &rlen)
    cdef int64_t seq = rd_range(r, 1, INT64_MAX, 8)
    cdef int64_t fp = rd64(r)
    cdef int64_t amount = rd_range(r, 0, AMOUNT_MAX, 8)
    cdef int64_t avail = rd64(r)
    cdef int64_t purge_ns = rd64(r)
    cdef Account a
    cdef Rec* g
    if x.mode == R_LOAD and kind == REC_GRANT and not same_id(x.last_aid, aid, alen):
        # Its lot's placeholder knows the account: no lookup of the account by id.
        g = table_find_ids(&x.L.recs, REC_GRANT, aid, alen, rid, rlen)
        if g != NULL:
            x.last = <Account>g.acct
            x.last_aid = x.last.aid
    a = entry_acct(x, aid, alen)
    if x.mode == R_CHECK:
        if kind == REC_GRANT:
            x.written.add((x.last_aid, PyUnicode_FromStringAndSize(rid, rlen)))
        return 0
    g = replace_rec(x, a, kind, rid, rlen, seq, fp)
    (<Idem*>g).amount = amount
    (<Idem*>g).avail = avail
    (<Idem*>g).purge_ns = purge_ns
    pq_push(&x.L.purge_q, purge_ns, seq, g, INT64_MIN)  # stored times: the heap
    return 0


cdef int rd_delete(Reader x) except -1:
    cdef Rd* r = &x.r
    cdef Ledger L = x.L
    cdef uint8_t kind = <uint8_t>rd_range(r, REC_HOLD, REC_GRANT, 1)
    cdef Py_ssize_t alen, rlen
    cdef const char* aid = rd_idp(r, &alen)
    cdef const char* rid = rd_idp(r, &rlen)
    cdef Account a = entry_acct(x, aid, alen)
    cdef Rec* rec
    if x.mode == R_CHECK:
        if kind == REC_GRANT:
            key = (x.last_aid, PyUnicode_FromStringAndSize(rid, rlen))
            x.deleted.add(key)
            x.written.discard(key)
        return 0
    rec = table_find(&L.recs, a, kind, rid, rlen, rec_hash(a, kind, rid, rlen))
    if rec == NULL:
        return 0
    if rec.seq == 0:
        x.pending -= 1              # a lot's placeholder
    rec_detach(L, rec)
    if kind == REC_GRANT and lot_of_grant(a, rec) >= 0:
        # Re-written later in the record: the lot is pointed at that record when done.
        vec_push(&x.orphans, rec)
    elif rec.flags & RF_DIRTY:
        rec.flags |= RF_DEAD        # still listed for the journal: freed when that is taken
    else:
        rec_free(rec)
    return 0


cdef int relink_orphans(Reader x) except -1:
    """Point the lots that still name a deleted grant record at the one written after it."""
    cdef Rec* o
    cdef Rec* g
    cdef Account a
    cdef int i
    while x.orphans.n:
        o = <Rec*>x.orphans.a[x.orphans.n - 1]
        a = <Account>o.acct
        g = NULL
        for i in range(a.nlots):
            if &a.lots[i].grant.r != o:
                continue
            if g == NULL:
                g = table_find(&x.L.recs, a, REC_GRANT, rec_rid(o), o.rlen,
                               rec_hash(a, REC_GRANT, rec_rid(o), o.rlen))
                if g == NULL:
                    raise ValueError("journal record deletes the grant record of a live lot")
            a.lots[i].grant = <Idem*>g
        x.orphans.n -= 1
        if o.flags & RF_DIRTY:
            o.flags |= RF_DEAD
        else:
            rec_free(o)
    return 0


cdef int parse(Reader x, const char* data, Py_ssize_t n, int kind, int mode) except -1:
    cdef Ledger L = x.L
    cdef Rd* r = &x.r
    cdef uint32_t count, i
    cdef uint8_t tag
    cdef Py_ssize_t most
    x.mode = mode
    x.k = 0
    x.last_aid = None
    x.last = None
    if mode == R_CHECK:
        x.acct_ids = set()
        x.needed = set()
        x.written = set()
        x.deleted = set()
    if mode != R_APPLY:                 # (R_APPLY reads what R_CHECK has checked)
        if n < J_HEADER + J_TRAILER:
            raise ValueError("journal record truncated")
        if memcmp(data, J_MAGIC, 4) != 0 or data[4] != J_VERSION:
            raise ValueError("not a journal record of version 1")
        if data[5] != kind:
            raise ValueError("a snapshot where a journal record was expected, or the reverse")
        if <uint64_t>fl_get64(data + n - 8) != fl_checksum(data, n - 8):
            raise ValueError("journal record checksum mismatch")
        if kind == J_JOURNAL and fl_get64(data + 8) < L.seq:
            # The ledger's seq only grows: an older record would silently roll state back.
            raise ValueError("journal record is older than the ledger's state")
    count = <uint32_t>fl_get32(data + n - 12)
    r.p = data + J_HEADER
    r.end = data + n - J_TRAILER
    if mode == R_LOAD:
        # Fewer records than entries (and an entry takes 6 bytes or more: a forged count cannot
        # make the table huge), plus room for the journal tail replayed next.
        most = min(<Py_ssize_t>count, (r.end - r.p) // 6)
        table_reserve(&L.recs, most + most // 4)
    for i in range(count):
        tag = rd8(r)
        if tag == T_ACCOUNT:
            rd_account(x)
        elif tag == T_BUCKETS:
            rd_buckets(x)
        elif tag == T_HOLD:
            rd_hold(x)
        elif tag == T_CHARGE:
            rd_idem(x, REC_CHARGE)
        elif tag == T_GRANT:
            rd_idem(x, REC_GRANT)
        elif tag == T_DELETE:
            rd_delete(x)
        else:
            raise ValueError("journal record has an unknown entry")
    if r.p != r.end:
        raise ValueError("journal record has trailing bytes")
    if x.mode == R_CHECK:
        return check_links(x)
    relink_orphans(x)
    if x.pending:
        raise ValueError("journal record has a lot without its grant record")
    L.seq = fl_get64(data + 8)
    L.seq_journaled = L.seq
    return 0


cdef int replay(Ledger L, object record, int kind) except -1:
    """A journal record (checked, then applied) or a snapshot (loaded into the new ledger L)."""
    if not isinstance(record, (bytes, bytearray, memoryview)):
        raise TypeError("a journal record is bytes")
    data = bytes(record)
    cdef Reader x = Reader(L)
    if kind == J_SNAPSHOT:
        return parse(x, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), kind, R_LOAD)
    parse(x, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), kind, R_CHECK)
    return parse(x, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), kind, R_APPLY)
