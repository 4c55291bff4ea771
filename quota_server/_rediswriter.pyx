# cython: language_level=3
"""Redis appends on a C thread that never takes the GIL (storage/redis.py's fast path).

Why: a Batch(1000)'s flush carries about 400 KB of journal record and usage rows, which zstd
compresses to about 10 KB before they go to Redis. On the event loop that compression was the
largest cost Redis added over memory-only (docs/performance.md, sessions 12 and 13), and on a
worker thread that hands its result back through the GIL it only moved the cost: the write left
once the loop, busy applying the next Batch, came back for it. Here a C thread of its own does
the whole write: it compresses the blobs that the job marks (libzstd, level 1, frames that carry
their size: what base.pack_blob makes, so either side reads what the other wrote), assembles the
EVALSHA in the Redis protocol, sends it on a socket it owns, reads the reply until it is one
complete RESP value, and signals an eventfd that the loop watches. The loop parses the reply
(hiredis) and does everything else, as storage/redis.py's `_Writer` path does.

libzstd is not linked at build time: its five entry points are looked up at run time in
`libzstd.so.1` (Debian's libzstd1, which dpkg itself depends on), so building needs no zstd
headers. Where it cannot be found, `available()` is False and the storage keeps its loop path.

The socket is connected (and AUTH and SELECT sent) by storage/redis.py; the thread owns it from
`adopt` on. Any failure (timeout, connection error, a reply that is not RESP) closes it, so a
socket never carries a reply that nobody read; the caller connects again. Plain TCP only: a
`rediss://` store keeps the loop path (TLS lives in Python's ssl module, which needs the GIL).
"""

from libc.stdint cimport int64_t
from libc.stdlib cimport free
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_GET_SIZE, PyBytes_FromStringAndSize

include "_jobthread.pxi"

cdef extern from *:
    """
    #include <dlfcn.h>
    #include <errno.h>
    #include <fcntl.h>
    #include <poll.h>
    #include <pthread.h>
    #include <stdint.h>
    #include <stdio.h>
    #include <stdlib.h>
    #include <string.h>
    #include <sys/eventfd.h>
    #include <sys/socket.h>
    #include <time.h>
    #include <unistd.h>

    typedef struct ZSTD_CCtx_s ZSTD_CCtx;

    /* The entry points used (zstd.h's signatures), found by rw_load. */
    static struct {
        ZSTD_CCtx* (*createCCtx)(void);
        size_t (*freeCCtx)(ZSTD_CCtx*);
        size_t (*compressCCtx)(ZSTD_CCtx*, void*, size_t, const void*, size_t, int);
        size_t (*compressBound)(size_t);
        unsigned (*isError)(size_t);
        int loaded;
    } RZ;

    static int rw_load(void) {
        if (RZ.loaded) return RZ.loaded > 0;
        void* h = dlopen("libzstd.so.1", RTLD_NOW | RTLD_LOCAL);
        if (h == NULL) { RZ.loaded = -1; return 0; }
        #define RW_SYM(field, name) if ((*(void**)&RZ.field = dlsym(h, name)) == NULL) { RZ.loaded = -1; return 0; }
        RW_SYM(createCCtx, "ZSTD_createCCtx")
        RW_SYM(freeCCtx, "ZSTD_freeCCtx")
        RW_SYM(compressCCtx, "ZSTD_compressCCtx")
        RW_SYM(compressBound, "ZSTD_compressBound")
        RW_SYM(isError, "ZSTD_isError")
        #undef RW_SYM
        RZ.loaded = 1;
        return 1;
    }

    /* A piece of the command: RESP bytes as they are (pack 0), or a blob to store (pack 1),
       which becomes two arguments: the blob as stored, then its codec. */
    typedef struct { const char* p; size_t n; int pack; } RwSeg;

    enum { RW_OK = 0, RW_TIMEOUT = 1, RW_IO = 2, RW_CLOSED = 3, RW_BADREPLY = 4, RW_NOMEM = 5,
           RW_ZSTD = 6, RW_NOSOCKET = 7 };

    typedef struct {
        RwSeg* segs; int nsegs;
        size_t pack_min;            /* blobs shorter than this are stored as they are */
        int level;                  /* zstd level */
        int codec;                  /* the codec argument of a compressed blob */
        int timeout_ms;             /* for the whole write: sending and the reply */
        /* the outcome */
        int status;
        int err;                    /* RW_IO: errno */
        char* reply; size_t reply_len;  /* RW_OK: one RESP value (malloc'ed; the job frees it) */
        size_t sent;                /* bytes of the command */
    } RwJob;

    typedef struct {
        int fd;                     /* the socket, -1: none (set under jt.mu) */
        ZSTD_CCtx* cctx;
        char* out; size_t out_cap, out_n;
        char* z; size_t z_cap;
        JobThread jt;               /* runs rw_run (quota_server/_jobthread.h) */
    } RwWriter;

    static int rw_reserve(char** p, size_t* cap, size_t need) {
        if (need <= *cap) return 0;
        size_t c = *cap ? *cap : 65536;
        while (c < need) c *= 2;
        char* q = (char*)realloc(*p, c);
        if (q == NULL) return -1;
        *p = q;
        *cap = c;
        return 0;
    }

    static int rw_put(RwWriter* w, const char* p, size_t n) {
        if (rw_reserve(&w->out, &w->out_cap, w->out_n + n)) return -1;
        memcpy(w->out + w->out_n, p, n);
        w->out_n += n;
        return 0;
    }

    static int rw_bulk(RwWriter* w, const char* p, size_t n) {
        char head[32];
        int h = snprintf(head, sizeof head, "$%zu\\r\\n", n);
        if (rw_put(w, head, (size_t)h) || rw_put(w, p, n)) return -1;
        return rw_put(w, "\\r\\n", 2);
    }

    /* The command's bytes in w->out; RW_OK or the status to report. */
    static int rw_build(RwWriter* w, RwJob* j) {
        char codec[16];
        int clen = snprintf(codec, sizeof codec, "%d", j->codec);
        w->out_n = 0;
        for (int i = 0; i < j->nsegs; i++) {
            RwSeg* s = &j->segs[i];
            if (!s->pack) {
                if (rw_put(w, s->p, s->n)) return RW_NOMEM;
                continue;
            }
            if (s->n >= j->pack_min) {
                size_t bound = RZ.compressBound(s->n);
                if (rw_reserve(&w->z, &w->z_cap, bound)) return RW_NOMEM;
                size_t r = RZ.compressCCtx(w->cctx, w->z, bound, s->p, s->n, j->level);
                if (RZ.isError(r)) return RW_ZSTD;
                if (r < s->n) {
                    if (rw_bulk(w, w->z, r) || rw_bulk(w, codec, (size_t)clen)) return RW_NOMEM;
                    continue;
                }
            }
            if (rw_bulk(w, s->p, s->n) || rw_bulk(w, "0", 1)) return RW_NOMEM;
        }
        return RW_OK;
    }

    static int64_t rw_now_ms(void) {
        struct timespec ts;
        clock_gettime(CLOCK_MONOTONIC, &ts);
        return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
    }

    /* Wait until fd is ready for `events` or the deadline passes: RW_OK, RW_TIMEOUT or RW_IO. */
    static int rw_wait(RwJob* j, int fd, short events, int64_t deadline) {
        for (;;) {
            int64_t left = deadline - rw_now_ms();
            if (left <= 0) return RW_TIMEOUT;
            struct pollfd pfd = {fd, events, 0};
            int rc = poll(&pfd, 1, (int)left);
            if (rc > 0) return RW_OK;
            if (rc == 0) return RW_TIMEOUT;
            if (errno != EINTR) { j->err = errno; return RW_IO; }
        }
    }

    /* A decimal integer of a RESP header line [p, e); -2 (never valid) if it is not one. */
    static long long rw_int(const char* p, const char* e) {
        int neg = 0;
        long long v = 0;
        if (p < e && *p == '-') { neg = 1; p++; }
        if (p == e || e - p > 18) return -2;
        for (; p < e; p++) {
            if (*p < '0' || *p > '9') return -2;
            v = v * 10 + (*p - '0');
        }
        return neg ? -v : v;
    }

    /* The length of the one complete RESP (v2) value at the start of p[0, n): 0 if more bytes
       are needed, -1 if the bytes are not RESP. */
    static long long rw_frame(const char* p, size_t n) {
        size_t i = 0;
        long long pending = 1;
        while (pending > 0) {
            if (i >= n) return 0;
            const char* cr = (const char*)memchr(p + i, '\\r', n - i);
            if (cr == NULL || (size_t)(cr - p) + 1 >= n) return 0;
            if (cr[1] != '\\n') return -1;
            size_t next = (size_t)(cr - p) + 2;
            long long v;
            pending--;
            switch (p[i]) {
            case '+': case '-': case ':':
                i = next;
                break;
            case '$':
                v = rw_int(p + i + 1, cr);
                if (v < -1) return -1;
                if (v == -1) { i = next; break; }
                if (next + (size_t)v + 2 > n) return 0;
                if (p[next + v] != '\\r' || p[next + v + 1] != '\\n') return -1;
                i = next + (size_t)v + 2;
                break;
            case '*':
                v = rw_int(p + i + 1, cr);
                if (v < -1 || v > (1 << 20)) return -1;
                if (v > 0) pending += v;
                i = next;
                break;
            default:
                return -1;
            }
        }
        return (long long)i;
    }

    static void rw_run(RwWriter* w, RwJob* j) {
        int64_t deadline = rw_now_ms() + j->timeout_ms;
        size_t off = 0, got = 0, cap = 0;
        char* in = NULL;
        if (w->fd < 0) { j->status = RW_NOSOCKET; return; }
        j->status = rw_build(w, j);
        if (j->status != RW_OK) return;     /* nothing sent: the socket is as it was */
        j->sent = w->out_n;
        while (off < w->out_n) {
            ssize_t n = send(w->fd, w->out + off, w->out_n - off, MSG_NOSIGNAL);
            if (n >= 0) { off += (size_t)n; continue; }
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) { j->err = errno; j->status = RW_IO; goto fail; }
            if ((j->status = rw_wait(j, w->fd, POLLOUT, deadline)) != RW_OK) goto fail;
        }
        for (;;) {
            if (got == cap && rw_reserve(&in, &cap, cap + 4096)) { j->status = RW_NOMEM; goto fail; }
            ssize_t n = recv(w->fd, in + got, cap - got, 0);
            if (n > 0) {
                got += (size_t)n;
                long long len = rw_frame(in, got);
                if (len < 0 || (len > 0 && (size_t)len != got)) { j->status = RW_BADREPLY; goto fail; }
                if (len > 0) break;
                continue;
            }
            if (n == 0) { j->status = RW_CLOSED; goto fail; }
            if (errno == EINTR) continue;
            if (errno != EAGAIN && errno != EWOULDBLOCK) { j->err = errno; j->status = RW_IO; goto fail; }
            if ((j->status = rw_wait(j, w->fd, POLLIN, deadline)) != RW_OK) goto fail;
        }
        j->reply = in;
        j->reply_len = got;
        j->status = RW_OK;
        return;
    fail:
        free(in);
        close(w->fd);                       /* the reply may still come: nobody will read it */
        w->fd = -1;
    }

    static void rw_job(void* w, void* j) {
        rw_run((RwWriter*)w, (RwJob*)j);
    }

    /* Start the thread; 0, or -1 with msg set. */
    static int rw_open(RwWriter* w, char* msg, size_t msglen) {
        memset(w, 0, sizeof *w);
        w->fd = -1;
        w->jt.efd = -1;
        if (!rw_load()) { snprintf(msg, msglen, "libzstd.so.1 could not be loaded"); return -1; }
        w->cctx = RZ.createCCtx();
        if (w->cctx == NULL) { snprintf(msg, msglen, "ZSTD_createCCtx failed"); return -1; }
        if (jt_start(&w->jt, rw_job, w, msg, msglen) != 0) {
            RZ.freeCCtx(w->cctx);
            memset(w, 0, sizeof *w);
            w->fd = -1;
            w->jt.efd = -1;
            return -1;
        }
        return 0;
    }

    /* The socket the thread sends on from now (the caller gives up `fd`); -1 if a job runs. */
    static int rw_adopt(RwWriter* w, int fd) {
        int rc = -1;
        pthread_mutex_lock(&w->jt.mu);
        if (jt_idle_locked(&w->jt)) {
            if (w->fd >= 0) close(w->fd);
            w->fd = fd;
            rc = 0;
        }
        pthread_mutex_unlock(&w->jt.mu);
        return rc;
    }

    /* Close the socket (between jobs only); -1 if a job runs. */
    static int rw_drop(RwWriter* w) {
        return rw_adopt(w, -1);
    }

    static int rw_has_socket(RwWriter* w) {
        int has;
        pthread_mutex_lock(&w->jt.mu);
        has = w->fd >= 0;
        pthread_mutex_unlock(&w->jt.mu);
        return has;
    }

    /* Stop the thread (after the job it runs, if any) and close everything. */
    static void rw_close(RwWriter* w) {
        if (!w->jt.started) return;
        jt_stop(&w->jt);
        if (w->fd >= 0) close(w->fd);
        RZ.freeCCtx(w->cctx);
        free(w->out);
        free(w->z);
        w->out = w->z = NULL;
        w->fd = -1;
    }
    """
    ctypedef struct RwSeg:
        const char* p
        size_t n
        int pack
    ctypedef struct RwJob:
        RwSeg* segs
        int nsegs
        size_t pack_min
        int level
        int codec
        int timeout_ms
        int status
        int err
        char* reply
        size_t reply_len
        size_t sent
    ctypedef struct RwWriter:
        JobThread jt
    int RW_OK, RW_TIMEOUT, RW_IO, RW_CLOSED, RW_BADREPLY, RW_NOMEM, RW_ZSTD, RW_NOSOCKET
    int rw_load() nogil
    long long rw_frame(const char* p, size_t n) nogil
    int rw_open(RwWriter* w, char* msg, size_t msglen) nogil
    int rw_adopt(RwWriter* w, int fd) nogil
    int rw_drop(RwWriter* w) nogil
    int rw_has_socket(RwWriter* w) nogil
    void rw_close(RwWriter* w) nogil

from cpython.mem cimport PyMem_Malloc, PyMem_Free
from libc.string cimport memset

# The outcomes of a job (AppendJob.status).
OK = RW_OK                  # `reply` is the one RESP value Redis answered
TIMEOUT = RW_TIMEOUT        # no complete reply within the timeout (the socket is closed)
IO_ERROR = RW_IO            # send or recv failed (`errno`; the socket is closed)
CLOSED = RW_CLOSED          # Redis closed the connection (the socket is closed)
BAD_REPLY = RW_BADREPLY     # what came back is not one RESP value (the socket is closed)
NO_MEMORY = RW_NOMEM        # nothing was sent
ZSTD_ERROR = RW_ZSTD        # compression failed; nothing was sent
NO_SOCKET = RW_NOSOCKET     # no socket to send on; nothing was sent


def available():
    """Whether libzstd can be used from a thread of this module's own."""
    return bool(rw_load())


def frame_length(bytes data not None):
    """The length of the one complete RESP value that `data` starts with: 0 if more bytes are
    needed, -1 if they are not RESP (the thread's framing, exposed for tests)."""
    return rw_frame(PyBytes_AS_STRING(data), <size_t>PyBytes_GET_SIZE(data))


cdef class AppendJob:
    """One command as the writer thread reads it, and its outcome once it has run. `pieces`:
    bytes that are RESP as they are (the command's array header and plain arguments, from
    `_wire.resp_command`), or a 1-tuple (blob,) for a blob to store: the thread sends it
    compressed (zstd `level`, then the argument `codec`) when it is at least `pack_min` bytes and
    that makes it shorter, else as it is (then the argument 0). Holds every bytes object the
    C job points into until it is dropped."""
    cdef RwJob job
    cdef RwSeg* segs
    cdef list keep

    def __cinit__(self):
        memset(&self.job, 0, sizeof(self.job))
        self.segs = NULL

    def __dealloc__(self):
        PyMem_Free(self.segs)
        free(self.job.reply)

    def __init__(self, list pieces not None, Py_ssize_t pack_min, int level, int codec, int timeout_ms):
        cdef Py_ssize_t i
        cdef bytes data
        if not pieces:
            raise ValueError("a job needs at least one piece")
        if timeout_ms <= 0:
            raise ValueError(f"timeout_ms must be > 0, got {timeout_ms}")
        self.keep = []
        self.segs = <RwSeg*>PyMem_Malloc(len(pieces) * sizeof(RwSeg))
        if self.segs == NULL:
            raise MemoryError()
        for i, piece in enumerate(pieces):
            if type(piece) is tuple:
                data = (<tuple>piece)[0]
                self.segs[i].pack = 1
            else:
                data = piece
                self.segs[i].pack = 0
            self.keep.append(data)
            self.segs[i].p = PyBytes_AS_STRING(data)
            self.segs[i].n = <size_t>PyBytes_GET_SIZE(data)
        self.job.segs = self.segs
        self.job.nsegs = <int>len(pieces)
        self.job.pack_min = <size_t>max(pack_min, 0)
        self.job.level = level
        self.job.codec = codec
        self.job.timeout_ms = timeout_ms

    @property
    def status(self):
        return self.job.status

    @property
    def errno(self):
        """IO_ERROR: the errno of the failed send or recv."""
        return self.job.err

    @property
    def reply(self):
        """OK: the reply's bytes (one RESP value); else None."""
        if self.job.status != RW_OK or self.job.reply == NULL:
            return None
        return PyBytes_FromStringAndSize(self.job.reply, <Py_ssize_t>self.job.reply_len)

    @property
    def sent(self):
        """The command's length in bytes, as sent (compressed blobs counted as stored)."""
        return self.job.sent


cdef class Writer(JobWriter):
    """The thread that runs commands on one socket, one at a time. `fileno()` is an eventfd
    that becomes readable when a job handed to `submit` has run; then `collect()` returns it.
    The caller serializes jobs (one submitted at a time) and gives the thread its socket with
    `adopt` (connected, authenticated, the database selected)."""
    cdef RwWriter w

    def __cinit__(self):
        memset(&self.w, 0, sizeof(self.w))
        self.w.jt.efd = -1
        self.jt = &self.w.jt

    def __init__(self):
        cdef char msg[256]
        cdef int rc
        with nogil:
            rc = rw_open(&self.w, msg, sizeof(msg))
        if rc != 0:
            raise OSError(msg.decode(errors="replace"))

    def adopt(self, int fd):
        """Send on `fd` from now on (the writer closes it); the socket it had is closed."""
        if not self.w.jt.started:
            raise RuntimeError("the writer is closed")
        if self.current is not None or rw_adopt(&self.w, fd) != 0:
            raise RuntimeError("a job is still running")

    def drop(self):
        """Close the socket (a job still running keeps it until it has run: False then)."""
        if self.current is not None or not self.w.jt.started:
            return False
        return rw_drop(&self.w) == 0

    def has_socket(self):
        return self.w.jt.started and bool(rw_has_socket(&self.w))

    def submit(self, AppendJob job not None):
        self.hand_over(job, &job.job)

    def close(self):
        """Stop the thread (a job still running first finishes) and close the socket."""
        with nogil:
            rw_close(&self.w)
        self.current = None

    def __dealloc__(self):
        rw_close(&self.w)
