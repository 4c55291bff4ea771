# Reading journal records and snapshots back: parse and validate the whole record first (any
# defect raises ValueError with the ledger untouched), then overwrite state and rebuild the
# queues of what it names. Nothing replayed is journaled again.

ctypedef struct Rd:
    const char* p
    const char* end


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


cdef object rdid(Rd* r):
    cdef uint8_t n = rd8(r)
    need(r, n)
    if not valid_id_bytes(r.p, n):
        raise ValueError("journal record has a malformed id")
    r.p += n
    return PyUnicode_FromStringAndSize(r.p - n, n)


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


cdef class Links:
    """What the validating pass saw: accounts written, the grant ids their lots name, grant
    records written and grant records deleted (keys are (account id, grant id))."""
    cdef set created
    cdef dict lots
    cdef set written
    cdef set deleted

    def __cinit__(self):
        self.created = set()
        self.lots = {}
        self.written = set()
        self.deleted = set()


cdef int check_links(Ledger L, Links k) except -1:
    """Every lot must keep its grant record: one that exists and is not deleted, or one the
    record writes; and a deleted grant record must not be named by a lot that stays."""
    cdef Account a
    cdef int i
    for aid, gids in k.lots.items():
        for gid in gids:
            if (aid, gid) in k.written:
                continue
            a = lookup(L, aid)
            if (aid, gid) in k.deleted or a is None or find_rec(L, a, REC_GRANT, gid) == NULL:
                raise ValueError("journal record has a lot without its grant record")
    for aid, gid in k.deleted:
        if (aid, gid) in k.written or aid in k.lots:
            continue                    # re-written, or the account's new lots were checked
        a = lookup(L, aid)
        if a is None:
            continue
        for i in range(a.nlots):
            if rec_rid_str(&a.lots[i].grant.r) == gid:
                raise ValueError("journal record deletes the grant record of a live lot")
    return 0


cdef Account known_account(Ledger L, object aid, set created, bint apply):
    """The account an entry refers to: in the ledger or written earlier in the record."""
    cdef PyObject* p = acct_get(L, aid)
    if p != NULL:
        return <Account>p
    if aid not in created:
        raise ValueError("journal record names an unknown account")
    return None


cdef int rd_account(Ledger L, Rd* r, bint apply, Links links) except -1:
    cdef set created = links.created
    cdef object aid = rdid(r)
    cdef object plan = rdid(r)
    cdef int64_t v[16]
    cdef int i, j, nlots
    cdef PyObject* p
    cdef Account a
    cdef Lot* l
    cdef Idem* g
    cdef set old_seqs, gids
    v[0] = rd_range(r, ACCOUNT_ACTIVE, ACCOUNT_SUSPENDED, 1)
    v[1] = rd_range(r, 0, 1, 1)
    v[2] = rd_range(r, 0, AF_OVER, 1)
    v[3] = rd_range(r, 0, HOLDS_PER_ACCOUNT_MAX, 4)
    v[4] = rd_range(r, 0, HOLDS_PER_ACCOUNT_MAX, 4)
    v[5] = rd_range(r, 0, AMOUNT_MAX, 8)           # credit_limit
    for i in range(6, 14):                          # debt .. ovd_held, ceiling
        v[i] = rd_range(r, 0, INT64_MAX, 8)
    nlots = <int>rd_range(r, 0, LOTS_PER_ACCOUNT_MAX, 2)
    if not apply:
        created.add(aid)
        gids = links.lots[aid] = set()
        for i in range(nlots):
            gid = rdid(r)
            if gid in gids:
                raise ValueError("journal record has two lots with one id")
            gids.add(gid)
            rd_range(r, LOT_PURCHASED, LOT_ADJUSTMENT, 1)
            rd_range(r, 0, 1, 1)
            rd32(r)
            rd_range(r, 1, INT64_MAX, 8)            # remaining
            rd_range(r, 0, INT64_MAX, 8)            # earmarked
            rd_range(r, 0, INT64_MAX, 8)            # expires_ns
            rd_range(r, 1, INT64_MAX, 8)            # seq
        return 0
    p = acct_get(L, aid)
    a = new_account(L, aid, plan) if p == NULL else <Account>p
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
    else:
        L.ceilings.pop(a, None)
    old_seqs = {a.lots[i].seq for i in range(a.nlots) if not a.lots[i].expired}
    a.nlots = 0
    lots_reserve(a, nlots)
    for i in range(nlots):
        l = &a.lots[i]
        lot_id = rdid(r)
        # Its grant record exists, or comes later in this record (checked by the first pass).
        g = <Idem*>find_rec(L, a, REC_GRANT, lot_id)
        if g == NULL:
            g = <Idem*>new_rec(L, a, REC_GRANT, lot_id, 0, 0)
        l.grant = g
        a.nlots += 1
        l.category = rd8(r)
        l.expired = rd8(r)
        l.priority = rd32(r)
        l.remaining = rd64(r)
        l.earmarked = rd64(r)
        l.expires_ns = rd64(r)
        l.seq = rd64(r)
        if l.expires_ns and not l.expired and l.seq not in old_seqs:
            heap_push(&L.lots_q, l.expires_ns, l.seq, <void*>a)
    return 0


cdef int rd_buckets(Ledger L, Rd* r, bint apply, Links links) except -1:
    cdef set created = links.created
    cdef object aid = rdid(r)
    cdef int i, n
    cdef Account a = known_account(L, aid, created, apply)
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
    if apply:
        a.buckets = d if n else None
    return 0


cdef Rec* replace_rec(Ledger L, Account a, uint8_t kind, object rid, int64_t seq, int64_t fp) except NULL:
    """The record to overwrite (detached from its queues), or a new one."""
    cdef Rec* r = find_rec(L, a, kind, rid)
    cdef Hold* h
    if r == NULL:
        return new_rec(L, a, kind, rid, seq, fp)
    if kind == REC_HOLD:
        h = <Hold*>r
        if h.hidx >= 0:
            heap_remove_at(&L.holds_q, h.hidx)
        if h.aux != NULL and h.aux.pidx >= 0:
            heap_remove_at(&L.purge_q, h.aux.pidx)
        hold_clear_parts(h)
        memset((<char*>r) + sizeof(Rec), 0, sizeof(Hold) - sizeof(Rec))
        h.hidx = -1
    elif (<Idem*>r).pidx >= 0:
        heap_remove_at(&L.purge_q, (<Idem*>r).pidx)
    r.seq = seq
    r.fp = fp
    return r


cdef int rd_hold(Ledger L, Rd* r, bint apply, Links links) except -1:
    cdef set created = links.created
    cdef object aid = rdid(r)
    cdef object rid = rdid(r)
    cdef Account a = known_account(L, aid, created, apply)
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
    cdef int i, ntaken, has_aux
    cdef Py_ssize_t mlen
    cdef Hold* h = NULL
    cdef HoldAux* x
    cdef object meta
    cdef dict taken = None
    if apply:
        h = <Hold*>replace_rec(L, a, REC_HOLD, rid, seq, fp)
        h.amount = amount
        h.expires_ns = expires
        h.avail0 = avail0
        h.state = <uint8_t>state
        h.on_expire = <uint8_t>on_expire
        h.hflags = <uint8_t>hflags
        h.overdraft = overdraft
    for i in range(nmarks):
        lot_seq = rd_range(r, 1, INT64_MAX, 8)
        amt = rd_range(r, 1, AMOUNT_MAX, 8)
        if apply:
            hold_add_mark(h, lot_seq, amt)
    mlen = rd_range(r, 0, META_BYTES_MAX, 2)
    need(r, mlen)
    meta = PyBytes_FromStringAndSize(r.p, mlen)
    r.p += mlen
    ntaken = <int>rd_range(r, 0, BUCKETS_PER_OP_MAX, 1)
    if ntaken:
        taken = {}
        for i in range(ntaken):
            name = rdid(r)
            taken[name] = rd_range(r, 0, AMOUNT_MAX, 8)
    has_aux = <int>rd_range(r, 0, 1, 1)
    if not has_aux and state != RES_HELD:
        raise ValueError("journal record has a settled hold without its settlement")
    if has_aux:
        if apply:
            x = hold_aux(h)
            x.amount0 = rd64(r)
            x.expires0 = rd64(r)
            x.commit_fp = rd64(r)
            x.charged = rd64(r)
            x.released = rd64(r)
            x.uncharged = rd64(r)
            x.avail = rd64(r)
            x.purge_ns = rd64(r)
            x.result = rd8(r)
            x.late = rd8(r)
            x.has_orig = rd8(r)
        else:
            for i in range(8):
                rd64(r)
            rd_range(r, AUX_NONE, AUX_RELEASE, 1)
            rd_range(r, 0, 1, 1)
            rd_range(r, 0, 1, 1)
    if not apply:
        return 0
    if mlen or taken is not None:
        hold_set_extra(h, meta, taken)
    if state == RES_HELD:
        heap_push(&L.holds_q, expires, seq, h)
    else:
        heap_push(&L.purge_q, h.aux.purge_ns, seq, h)
    return 0


cdef int rd_idem(Ledger L, Rd* r, bint apply, Links links, uint8_t kind) except -1:
    cdef set created = links.created
    cdef object aid = rdid(r)
    cdef object rid = rdid(r)
    cdef Account a = known_account(L, aid, created, apply)
    cdef int64_t seq = rd_range(r, 1, INT64_MAX, 8)
    cdef int64_t fp = rd64(r)
    cdef int64_t amount = rd_range(r, 0, AMOUNT_MAX, 8)
    cdef int64_t avail = rd64(r)
    cdef int64_t purge_ns = rd64(r)
    cdef Idem* g
    if not apply:
        if kind == REC_GRANT:
            links.written.add((aid, rid))
        return 0
    g = <Idem*>replace_rec(L, a, kind, rid, seq, fp)
    g.amount = amount
    g.avail = avail
    g.purge_ns = purge_ns
    heap_push(&L.purge_q, purge_ns, seq, g)
    return 0


cdef int rd_delete(Ledger L, Rd* r, bint apply, Links links) except -1:
    cdef set created = links.created
    cdef uint8_t kind = <uint8_t>rd_range(r, REC_HOLD, REC_GRANT, 1)
    cdef object aid = rdid(r)
    cdef object rid = rdid(r)
    cdef Account a = known_account(L, aid, created, apply)
    cdef Rec* rec
    if not apply:
        if kind == REC_GRANT:
            links.deleted.add((aid, rid))
            links.written.discard((aid, rid))
        return 0
    rec = find_rec(L, a, kind, rid)
    if rec == NULL:
        return 0
    rec_detach(L, rec)
    if rec.flags & RF_DIRTY:
        rec.flags |= RF_DEAD      # still listed for the journal: freed when that is taken
    else:
        rec_free(rec)
    return 0


cdef int parse(Ledger L, const char* data, Py_ssize_t n, int kind, bint apply) except -1:
    cdef Rd r
    cdef uint32_t count, i
    cdef uint8_t tag
    cdef Links links = Links()
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
    for i in range(count):
        tag = rd8(&r)
        if tag == T_ACCOUNT:
            rd_account(L, &r, apply, links)
        elif tag == T_BUCKETS:
            rd_buckets(L, &r, apply, links)
        elif tag == T_HOLD:
            rd_hold(L, &r, apply, links)
        elif tag == T_CHARGE:
            rd_idem(L, &r, apply, links, REC_CHARGE)
        elif tag == T_GRANT:
            rd_idem(L, &r, apply, links, REC_GRANT)
        elif tag == T_DELETE:
            rd_delete(L, &r, apply, links)
        else:
            raise ValueError("journal record has an unknown entry")
    if r.p != r.end:
        raise ValueError("journal record has trailing bytes")
    if not apply:
        check_links(L, links)
    if apply:
        L.seq = fl_get64(data + 8)
        L.seq_journaled = L.seq
    return 0


cdef int replay(Ledger L, object record, int kind) except -1:
    if not isinstance(record, (bytes, bytearray, memoryview)):
        raise TypeError("a journal record is bytes")
    data = bytes(record)
    parse(L, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), kind, False)
    parse(L, PyBytes_AS_STRING(data), PyBytes_GET_SIZE(data), kind, True)
    return 0
