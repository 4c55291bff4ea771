# cython: language_level=3
"""SQLite appends that never need the GIL while they run (storage/sqlite.py's fast path).

Why: Python's sqlite3 module releases the GIL around every statement and takes it back after,
and an append is about eight statements. On a server whose event loop holds the GIL through
long C calls (applying a Batch of 1,000 ops, decoding, encoding), each of those hand-offs
waits for the loop, so a write of about 1 ms of work took 3-6 ms, and since one write is in
flight at a time, callers waited for it and the loop ran out of work (docs/performance.md,
session 10). Here the whole transaction runs on a C thread that never touches Python: the
loop hands it a job (plain C data pointing into bytes objects the job keeps alive), the
thread runs BEGIN IMMEDIATE ... COMMIT on its own connection and signals an eventfd that the
loop watches. No GIL hand-off at all.

libsqlite3 is not linked at build time: its few entry points are looked up at run time in the
library Python's own sqlite3 module loaded (`libsqlite3.so.0`), so building needs no SQLite
headers and the same library serves both connections. Where it cannot be found, `available()`
is False and the storage keeps its thread path.

The transaction is exactly storage/sqlite.py's `_append` (same statements, same checks, same
order); a seq at or below the last one (the retry of an append that may have landed) is not
handled here: the job reports it and the caller takes the thread path, which compares records.
"""

from libc.stdint cimport int64_t, uint64_t
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE

include "_jobthread.pxi"

cdef extern from *:
    """
    #include <dlfcn.h>
    #include <errno.h>
    #include <pthread.h>
    #include <stdint.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/eventfd.h>
    #include <unistd.h>

    typedef struct sqlite3 sqlite3;
    typedef struct sqlite3_stmt sqlite3_stmt;

    #define SQW_SQLITE_OK 0
    #define SQW_SQLITE_ROW 100
    #define SQW_SQLITE_DONE 101
    #define SQW_SQLITE_NULL 5
    #define SQW_OPEN_READWRITE 0x00000002

    /* The entry points used (sqlite3.h's signatures), found by sqw_load. */
    static struct {
        int (*open_v2)(const char*, sqlite3**, int, const char*);
        int (*close_v2)(sqlite3*);
        int (*exec)(sqlite3*, const char*, void*, void*, char**);
        int (*prepare_v2)(sqlite3*, const char*, int, sqlite3_stmt**, const char**);
        int (*step)(sqlite3_stmt*);
        int (*reset)(sqlite3_stmt*);
        int (*finalize)(sqlite3_stmt*);
        int (*bind_int64)(sqlite3_stmt*, int, int64_t);
        int (*bind_blob)(sqlite3_stmt*, int, const void*, int, void (*)(void*));
        int (*bind_text)(sqlite3_stmt*, int, const char*, int, void (*)(void*));
        int (*column_type)(sqlite3_stmt*, int);
        int64_t (*column_int64)(sqlite3_stmt*, int);
        const unsigned char* (*column_text)(sqlite3_stmt*, int);
        int (*column_bytes)(sqlite3_stmt*, int);
        const char* (*errmsg)(sqlite3*);
        int (*extended_errcode)(sqlite3*);
        int (*busy_timeout)(sqlite3*, int);
        int (*get_autocommit)(sqlite3*);
        void (*free)(void*);
        int (*threadsafe)(void);
        int loaded;
    } SQ;

    static int sqw_load(void) {
        if (SQ.loaded) return SQ.loaded > 0;
        void* h = dlopen("libsqlite3.so.0", RTLD_NOW | RTLD_LOCAL);
        if (h == NULL) h = dlopen("libsqlite3.so", RTLD_NOW | RTLD_LOCAL);
        if (h == NULL) { SQ.loaded = -1; return 0; }
        #define SQW_SYM(field, name) if ((*(void**)&SQ.field = dlsym(h, name)) == NULL) { SQ.loaded = -1; return 0; }
        SQW_SYM(open_v2, "sqlite3_open_v2")
        SQW_SYM(close_v2, "sqlite3_close_v2")
        SQW_SYM(exec, "sqlite3_exec")
        SQW_SYM(prepare_v2, "sqlite3_prepare_v2")
        SQW_SYM(step, "sqlite3_step")
        SQW_SYM(reset, "sqlite3_reset")
        SQW_SYM(finalize, "sqlite3_finalize")
        SQW_SYM(bind_int64, "sqlite3_bind_int64")
        SQW_SYM(bind_blob, "sqlite3_bind_blob")
        SQW_SYM(bind_text, "sqlite3_bind_text")
        SQW_SYM(column_type, "sqlite3_column_type")
        SQW_SYM(column_int64, "sqlite3_column_int64")
        SQW_SYM(column_text, "sqlite3_column_text")
        SQW_SYM(column_bytes, "sqlite3_column_bytes")
        SQW_SYM(errmsg, "sqlite3_errmsg")
        SQW_SYM(extended_errcode, "sqlite3_extended_errcode")
        SQW_SYM(busy_timeout, "sqlite3_busy_timeout")
        SQW_SYM(get_autocommit, "sqlite3_get_autocommit")
        SQW_SYM(free, "sqlite3_free")
        SQW_SYM(threadsafe, "sqlite3_threadsafe")
        #undef SQW_SYM
        /* A library built without thread support cannot be used from a second thread. */
        SQ.loaded = SQ.threadsafe() ? 1 : -1;
        return SQ.loaded > 0;
    }

    typedef struct { const char* acct; int acct_len; int64_t at_ms; int64_t n; const char* blob; int blob_len; int64_t codec; } SqwRow;
    typedef struct { int64_t event_id; const char* acct; int acct_len; const char* type; int type_len; int64_t at_ms; const char* payload; int payload_len; } SqwEvent;

    enum { SQW_OK = 0, SQW_FENCED = 1, SQW_COVERED = 2, SQW_GAP = 3, SQW_EVENT = 4, SQW_ERROR = 5 };

    typedef struct {
        int64_t epoch, seq;
        const char* rec; int rec_len; int64_t rec_codec;
        SqwRow* rows; int nrows;
        SqwEvent* events; int nevents;
        /* the outcome */
        int status;
        int has_owner;
        char owner[256];
        int64_t cur_epoch, last_seq, last_event_id;
        int code;                   /* SQW_ERROR: SQLite's extended result code */
        char msg[512];
    } SqwJob;

    /* The statements of an append, in this order. BEGIN IMMEDIATE, COMMIT and ROLLBACK are
       fixed; the others come from storage/sqlite.py (its _SQL_*: one text for both paths),
       with the columns bound in the order sqw_txn binds them. */
    enum { SQW_BEGIN, SQW_META, SQW_JOURNAL, SQW_USAGE, SQW_EVENTS, SQW_UPDATE, SQW_COMMIT, SQW_ROLLBACK, SQW_NSTMT };

    typedef struct {
        sqlite3* db;
        sqlite3_stmt* st[SQW_NSTMT];
        JobThread jt;               /* runs sqw_run (quota_server/_jobthread.h) */
    } SqwWriter;

    static void sqw_error(SqwWriter* w, SqwJob* j, const char* what) {
        j->status = SQW_ERROR;
        j->code = SQ.extended_errcode(w->db);
        snprintf(j->msg, sizeof j->msg, "%s: %s", what, SQ.errmsg(w->db));
    }

    /* Step a statement that returns no row, then reset it; SQLITE_DONE on success. */
    static int sqw_exec(sqlite3_stmt* st) {
        int rc = SQ.step(st);
        SQ.reset(st);
        return rc;
    }

    static void sqw_run(SqwWriter* w, SqwJob* j) {
        sqlite3_stmt** st = w->st;
        int i, rc;
        int64_t last_event_id;
        if (sqw_exec(st[SQW_BEGIN]) != SQW_SQLITE_DONE) { sqw_error(w, j, "BEGIN IMMEDIATE"); goto rollback; }
        rc = SQ.step(st[SQW_META]);
        if (rc != SQW_SQLITE_ROW) { sqw_error(w, j, "reading meta"); SQ.reset(st[SQW_META]); goto rollback; }
        j->has_owner = SQ.column_type(st[SQW_META], 0) != SQW_SQLITE_NULL;
        if (j->has_owner) {
            int n = SQ.column_bytes(st[SQW_META], 0);
            const unsigned char* p = SQ.column_text(st[SQW_META], 0);
            if (n > (int)sizeof j->owner - 1) n = (int)sizeof j->owner - 1;
            if (p != NULL) memcpy(j->owner, p, (size_t)n);
            j->owner[p != NULL ? n : 0] = 0;
        }
        j->cur_epoch = SQ.column_int64(st[SQW_META], 1);
        j->last_seq = SQ.column_int64(st[SQW_META], 2);
        j->last_event_id = SQ.column_int64(st[SQW_META], 3);
        SQ.reset(st[SQW_META]);
        if (!j->has_owner || j->cur_epoch != j->epoch) { j->status = SQW_FENCED; goto rollback; }
        if (j->seq <= j->last_seq) { j->status = SQW_COVERED; goto rollback; }
        if (j->seq != j->last_seq + 1) { j->status = SQW_GAP; goto rollback; }
        if (j->nevents && j->events[0].event_id <= j->last_event_id) { j->status = SQW_EVENT; goto rollback; }
        SQ.bind_int64(st[SQW_JOURNAL], 1, j->seq);
        SQ.bind_blob(st[SQW_JOURNAL], 2, j->rec, j->rec_len, NULL);
        SQ.bind_int64(st[SQW_JOURNAL], 3, j->rec_codec);
        if (sqw_exec(st[SQW_JOURNAL]) != SQW_SQLITE_DONE) { sqw_error(w, j, "inserting the journal record"); goto rollback; }
        for (i = 0; i < j->nrows; i++) {
            SqwRow* r = &j->rows[i];
            SQ.bind_text(st[SQW_USAGE], 1, r->acct, r->acct_len, NULL);
            SQ.bind_int64(st[SQW_USAGE], 2, r->at_ms);
            SQ.bind_int64(st[SQW_USAGE], 3, r->n);
            SQ.bind_blob(st[SQW_USAGE], 4, r->blob, r->blob_len, NULL);
            SQ.bind_int64(st[SQW_USAGE], 5, r->codec);
            if (sqw_exec(st[SQW_USAGE]) != SQW_SQLITE_DONE) { sqw_error(w, j, "inserting usage"); goto rollback; }
        }
        last_event_id = j->last_event_id;
        for (i = 0; i < j->nevents; i++) {
            SqwEvent* e = &j->events[i];
            SQ.bind_int64(st[SQW_EVENTS], 1, e->event_id);
            SQ.bind_text(st[SQW_EVENTS], 2, e->acct, e->acct_len, NULL);
            SQ.bind_text(st[SQW_EVENTS], 3, e->type, e->type_len, NULL);
            SQ.bind_int64(st[SQW_EVENTS], 4, e->at_ms);
            SQ.bind_blob(st[SQW_EVENTS], 5, e->payload, e->payload_len, NULL);
            if (sqw_exec(st[SQW_EVENTS]) != SQW_SQLITE_DONE) { sqw_error(w, j, "inserting events"); goto rollback; }
            last_event_id = e->event_id;
        }
        SQ.bind_int64(st[SQW_UPDATE], 1, j->seq);
        SQ.bind_int64(st[SQW_UPDATE], 2, last_event_id);
        if (sqw_exec(st[SQW_UPDATE]) != SQW_SQLITE_DONE) { sqw_error(w, j, "updating meta"); goto rollback; }
        if (sqw_exec(st[SQW_COMMIT]) != SQW_SQLITE_DONE) { sqw_error(w, j, "COMMIT"); goto rollback; }
        j->status = SQW_OK;
        return;
    rollback:
        if (!SQ.get_autocommit(w->db)) sqw_exec(st[SQW_ROLLBACK]);
    }

    static void sqw_job(void* w, void* j) {
        sqw_run((SqwWriter*)w, (SqwJob*)j);
    }

    /* Open the connection, set it up and start the thread; 0, or -1 with msg set. */
    static int sqw_open(SqwWriter* w, const char* path, int busy_ms, const char* pragmas,
                        const char* const* sql, char* msg, size_t msglen) {
        int i, rc;
        char* err = NULL;
        memset(w, 0, sizeof *w);
        w->jt.efd = -1;
        if (!sqw_load()) { snprintf(msg, msglen, "libsqlite3 could not be loaded"); return -1; }
        rc = SQ.open_v2(path, &w->db, SQW_OPEN_READWRITE, NULL);
        if (rc != SQW_SQLITE_OK) {
            snprintf(msg, msglen, "opening %s: %s", path, w->db ? SQ.errmsg(w->db) : "out of memory");
            goto fail;
        }
        SQ.busy_timeout(w->db, busy_ms);
        if (SQ.exec(w->db, pragmas, NULL, NULL, &err) != SQW_SQLITE_OK) {
            snprintf(msg, msglen, "setting up %s: %s", path, err ? err : SQ.errmsg(w->db));
            SQ.free(err);
            goto fail;
        }
        for (i = 0; i < SQW_NSTMT; i++) {
            if (SQ.prepare_v2(w->db, sql[i], -1, &w->st[i], NULL) != SQW_SQLITE_OK) {
                snprintf(msg, msglen, "preparing %s: %s", sql[i], SQ.errmsg(w->db));
                goto fail;
            }
        }
        if (jt_start(&w->jt, sqw_job, w, msg, msglen) != 0) goto fail;
        return 0;
    fail:
        for (i = 0; i < SQW_NSTMT; i++) if (w->st[i]) SQ.finalize(w->st[i]);
        if (w->db) SQ.close_v2(w->db);
        memset(w, 0, sizeof *w);
        w->jt.efd = -1;
        return -1;
    }

    /* Stop the thread (after the job it runs, if any) and close everything. */
    static void sqw_close(SqwWriter* w) {
        int i;
        if (!w->jt.started) return;
        jt_stop(&w->jt);
        for (i = 0; i < SQW_NSTMT; i++) if (w->st[i]) SQ.finalize(w->st[i]);
        SQ.close_v2(w->db);
    }
    """
    ctypedef struct SqwRow:
        const char* acct
        int acct_len
        int64_t at_ms
        int64_t n
        const char* blob
        int blob_len
        int64_t codec
    ctypedef struct SqwEvent:
        int64_t event_id
        const char* acct
        int acct_len
        const char* type
        int type_len
        int64_t at_ms
        const char* payload
        int payload_len
    ctypedef struct SqwJob:
        int64_t epoch, seq
        const char* rec
        int rec_len
        int64_t rec_codec
        SqwRow* rows
        int nrows
        SqwEvent* events
        int nevents
        int status
        int has_owner
        char owner[256]
        int64_t cur_epoch, last_seq, last_event_id
        int code
        char msg[512]
    ctypedef struct SqwWriter:
        JobThread jt
    int SQW_OK, SQW_FENCED, SQW_COVERED, SQW_GAP, SQW_EVENT, SQW_ERROR
    int sqw_load() nogil
    int sqw_open(SqwWriter* w, const char* path, int busy_ms, const char* pragmas, const char* const* sql,
                 char* msg, size_t msglen) nogil
    void sqw_close(SqwWriter* w) nogil

from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memset

# The outcomes of an append job (AppendJob.status).
OK = SQW_OK
FENCED = SQW_FENCED          # the epoch is not current (details: owner, current_epoch)
COVERED = SQW_COVERED        # seq <= the last seq: the caller checks whether it had landed
GAP = SQW_GAP                # seq is not last seq + 1
EVENT_ORDER = SQW_EVENT      # the first event id does not follow the last one
ERROR = SQW_ERROR            # SQLite failed (code, message); the transaction was rolled back

INT_MAX = 2_147_483_647


def available():
    """Whether libsqlite3 can be used from a thread of this module's own."""
    return bool(sqw_load())


cdef class AppendJob:
    """One append, as the writer thread reads it, and its outcome once it has run. Holds every
    bytes object the C job points into until it is dropped."""
    cdef SqwJob job
    cdef SqwRow* rows
    cdef SqwEvent* events
    cdef list keep

    def __cinit__(self):
        memset(&self.job, 0, sizeof(self.job))
        self.rows = NULL
        self.events = NULL

    def __dealloc__(self):
        PyMem_Free(self.rows)
        PyMem_Free(self.events)

    def __init__(self, int64_t epoch, int64_t seq, bytes record not None, int64_t codec, list rows not None,
                 list events not None):
        """`rows`: (account_id, at_ms, n, payloads, codec) as stored; `events`: EventRows."""
        cdef Py_ssize_t i
        cdef bytes acct, typ, blob
        self.keep = [record]
        if len(record) > INT_MAX:
            raise ValueError("journal record too large")
        self.job.epoch = epoch
        self.job.seq = seq
        self.job.rec = PyBytes_AS_STRING(record)
        self.job.rec_len = <int>PyBytes_GET_SIZE(record)
        self.job.rec_codec = codec
        if rows:
            self.rows = <SqwRow*>PyMem_Malloc(len(rows) * sizeof(SqwRow))
            if self.rows == NULL:
                raise MemoryError()
        for i, (account_id, at_ms, n, payloads, row_codec) in enumerate(rows):
            acct = account_id.encode()
            blob = bytes(payloads)
            if len(blob) > INT_MAX:
                raise ValueError("usage chunk too large")
            self.keep.append(acct)
            self.keep.append(blob)
            self.rows[i].acct = PyBytes_AS_STRING(acct)
            self.rows[i].acct_len = <int>PyBytes_GET_SIZE(acct)
            self.rows[i].at_ms = at_ms
            self.rows[i].n = n
            self.rows[i].blob = PyBytes_AS_STRING(blob)
            self.rows[i].blob_len = <int>PyBytes_GET_SIZE(blob)
            self.rows[i].codec = row_codec
        self.job.rows = self.rows
        self.job.nrows = <int>len(rows)
        if events:
            self.events = <SqwEvent*>PyMem_Malloc(len(events) * sizeof(SqwEvent))
            if self.events == NULL:
                raise MemoryError()
        for i, ev in enumerate(events):
            acct = ev.account_id.encode()
            typ = ev.type.encode()
            blob = bytes(ev.payload)
            if len(blob) > INT_MAX:
                raise ValueError("event payload too large")
            self.keep.append(acct)
            self.keep.append(typ)
            self.keep.append(blob)
            self.events[i].event_id = ev.event_id
            self.events[i].acct = PyBytes_AS_STRING(acct)
            self.events[i].acct_len = <int>PyBytes_GET_SIZE(acct)
            self.events[i].type = PyBytes_AS_STRING(typ)
            self.events[i].type_len = <int>PyBytes_GET_SIZE(typ)
            self.events[i].at_ms = ev.at_ms
            self.events[i].payload = PyBytes_AS_STRING(blob)
            self.events[i].payload_len = <int>PyBytes_GET_SIZE(blob)
        self.job.events = self.events
        self.job.nevents = <int>len(events)

    @property
    def status(self):
        return self.job.status

    @property
    def owner(self):
        """The lease holder the transaction saw (None: released)."""
        return self.job.owner.decode(errors="replace") if self.job.has_owner else None

    @property
    def current_epoch(self):
        return self.job.cur_epoch

    @property
    def last_seq(self):
        return self.job.last_seq

    @property
    def last_event_id(self):
        return self.job.last_event_id

    @property
    def code(self):
        """SQLite's extended result code (ERROR)."""
        return self.job.code

    @property
    def message(self):
        return self.job.msg.decode(errors="replace")


cdef class Writer(JobWriter):
    """A connection to the SQLite file at `path` and the thread that runs appends on it, one at
    a time. `fileno()` is an eventfd that becomes readable when a job handed to `submit` has run;
    then `collect()` returns it. The caller serializes jobs (one submitted at a time).
    `statements`: the SQL reading (owner, epoch, last_seq, last_event_id) from meta, inserting
    (seq, record, codec) into the journal, (account_id, at_ms, n, payloads, codec) into usage,
    (event_id, account_id, type, at_ms, payload) into events, and setting meta's (last_seq,
    last_event_id), each with its values in that order."""
    cdef SqwWriter w

    def __cinit__(self):
        memset(&self.w, 0, sizeof(self.w))
        self.w.jt.efd = -1
        self.jt = &self.w.jt

    def __init__(self, str path, int busy_timeout_ms, str pragmas, tuple statements not None):
        cdef char msg[512]
        cdef bytes bpath = path.encode()
        cdef bytes bpragmas = pragmas.encode()
        cdef const char* cpath = bpath
        cdef const char* cpragmas = bpragmas
        cdef const char* sql[8]
        cdef list texts
        cdef int rc, i
        if len(statements) != 5:
            raise ValueError("statements: the 5 SQL texts of an append (see the class docstring)")
        texts = [b"BEGIN IMMEDIATE"] + [str(t).encode() for t in statements] + [b"COMMIT", b"ROLLBACK"]
        for i in range(8):
            sql[i] = <bytes>texts[i]
        with nogil:
            rc = sqw_open(&self.w, cpath, busy_timeout_ms, cpragmas, sql, msg, sizeof(msg))
        if rc != 0:
            raise OSError(msg.decode(errors="replace"))

    def submit(self, AppendJob job not None):
        self.hand_over(job, &job.job)

    def close(self):
        """Stop the thread (a job still running first finishes) and close the connection."""
        with nogil:
            sqw_close(&self.w)
        self.current = None

    def __dealloc__(self):
        sqw_close(&self.w)
