# The job thread of _jobthread.h, as _sqlwriter.pyx and _rediswriter.pyx both use it: each
# writer holds one `JobThread jt` and at most one job handed over (`current`) at a time.

cdef extern from "_jobthread.h":
    ctypedef struct JobThread:
        int efd
        int started
    int jt_submit(JobThread* t, void* job) nogil
    int jt_finished(JobThread* t) nogil
    void jt_forget(JobThread* t) nogil
    int jt_slice_err(JobThread* t) nogil


cdef class JobWriter:
    """What a writer (_sqlwriter.Writer, _rediswriter.Writer) shows of its job thread: the
    subclass points `jt` at the JobThread inside its C writer, and hands jobs over with
    `hand_over` (its own `submit`, typed by its own AppendJob)."""
    cdef JobThread* jt
    cdef object current

    def fileno(self):
        """An eventfd that becomes readable when a job handed over has run."""
        return self.jt.efd

    cdef int hand_over(self, object job, void* cjob) except -1:
        """Give `job` (whose C data is `cjob`) to the thread: RuntimeError if the writer is
        closed or the job handed over before has not been collected yet."""
        if not self.jt.started:
            raise RuntimeError("the writer is closed")
        if self.current is not None or jt_submit(self.jt, cjob) != 0:
            raise RuntimeError("a job is still running")
        self.current = job
        return 0

    def collect(self):
        """The job that has run (its outcome set), or None if it is still running."""
        job = self.current
        if job is None or not jt_finished(self.jt):
            return None
        jt_forget(self.jt)
        self.current = None
        return job

    def busy(self):
        return self.current is not None

    def slice_error(self):
        """What became of the thread's request for prompt wakeups (_jobthread.h,
        jt_prompt_wakeups): 0 if it was made, an errno if not, -1 before the thread has
        started."""
        return jt_slice_err(self.jt)
