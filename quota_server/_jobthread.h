/* A thread that runs jobs one at a time and never touches Python: the writer threads of
   _sqlwriter.pyx (SQLite appends) and _rediswriter.pyx (Redis appends) are each one of these.

   The caller hands a job over (`jt_submit`), the thread runs it with the writer's `run`
   function, marks it done and writes to an eventfd that the event loop watches; the caller
   then sees it finished (`jt_finished`) and forgets it (`jt_forget`) before the next. The job
   (plain C data) is the caller's: it must stay alive until it has run. `jt_stop` lets the job
   in hand finish, then ends the thread. */
#ifndef QUOTA_JOBTHREAD_H
#define QUOTA_JOBTHREAD_H

#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/eventfd.h>
#include <sys/syscall.h>
#include <unistd.h>

typedef void (*JtRun)(void* ctx, void* job);

typedef struct {
    pthread_t thread;
    pthread_mutex_t mu;
    pthread_cond_t cv;
    void* job;                  /* the job the thread runs or will run; NULL: none */
    int done;                   /* the job has run (its outcome is set) */
    int stop;
    int efd;                    /* eventfd: written once per job run; -1 before jt_start */
    int started;
    int slice_err;              /* jt_prompt_wakeups: 0 done, else the errno (-1: not yet) */
    JtRun run;
    void* ctx;
} JobThread;

/* The time slice the thread asks for (ns): under the kernel's default on two CPUs or more
   (0.7 ms times 1 + log2 of the CPUs), and longer than the CPU one job takes (compressing and
   sending a Batch's flush: about 0.25 ms), so that a job runs in one go once it has started. */
#define JT_SLICE_NS 700000ULL

/* Ask Linux to run the calling thread promptly when it wakes: with EEVDF (Linux 6.12 and
   later) a thread of the fair class may set its own time slice (sched_attr.sched_runtime, no
   privilege needed), and a thread with a shorter slice than the one running preempts it on
   wakeup. Every caller of a flush waits while this thread's job sits in a run queue behind the
   event loop or a client process (docs/performance.md, session 15). The thread sleeps between
   jobs and uses little CPU. Its policy and nice value are kept (read first, then written back
   with the slice); a real-time or deadline policy set by the operator is left alone. Best
   effort: older kernels ignore the slice. 0 or an errno. */
static int jt_prompt_wakeups(void) {
#if defined(SYS_sched_setattr) && defined(SYS_sched_getattr)
    struct {
        uint32_t size, sched_policy;
        uint64_t sched_flags;
        int32_t sched_nice;
        uint32_t sched_priority;
        uint64_t sched_runtime, sched_deadline, sched_period;
    } attr;                     /* struct sched_attr, version 0 (SCHED_ATTR_SIZE_VER0) */
    memset(&attr, 0, sizeof attr);
    if (syscall(SYS_sched_getattr, 0, &attr, sizeof attr, 0) != 0) return errno;
    if (attr.sched_policy != 0 && attr.sched_policy != 3) return EPERM;  /* SCHED_OTHER, SCHED_BATCH */
    attr.size = sizeof attr;
    attr.sched_flags &= 1;      /* SCHED_FLAG_RESET_ON_FORK, as it was */
    attr.sched_runtime = JT_SLICE_NS;
    if (syscall(SYS_sched_setattr, 0, &attr, 0) != 0) return errno;
    return 0;
#else
    return ENOSYS;
#endif
}

static void* jt_main(void* arg) {
    JobThread* t = (JobThread*)arg;
    uint64_t one = 1;
    int slice_err = jt_prompt_wakeups();
    pthread_mutex_lock(&t->mu);
    t->slice_err = slice_err;
    for (;;) {
        while ((t->job == NULL || t->done) && !t->stop) pthread_cond_wait(&t->cv, &t->mu);
        if (t->job == NULL || t->done) break;      /* stopping, nothing left to run */
        void* job = t->job;
        pthread_mutex_unlock(&t->mu);
        t->run(t->ctx, job);
        pthread_mutex_lock(&t->mu);
        t->done = 1;
        while (write(t->efd, &one, sizeof one) < 0 && errno == EINTR) {}
    }
    pthread_mutex_unlock(&t->mu);
    return NULL;
}

/* Start the thread; 0, or -1 with msg set (nothing left to undo then). */
static int jt_start(JobThread* t, JtRun run, void* ctx, char* msg, size_t msglen) {
    memset(t, 0, sizeof *t);
    t->run = run;
    t->ctx = ctx;
    t->slice_err = -1;
    t->efd = eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
    if (t->efd < 0) { snprintf(msg, msglen, "eventfd: %s", strerror(errno)); return -1; }
    pthread_mutex_init(&t->mu, NULL);
    pthread_cond_init(&t->cv, NULL);
    if (pthread_create(&t->thread, NULL, jt_main, t) != 0) {
        snprintf(msg, msglen, "cannot start the writer thread");
        pthread_mutex_destroy(&t->mu);
        pthread_cond_destroy(&t->cv);
        close(t->efd);
        t->efd = -1;
        return -1;
    }
    t->started = 1;
    return 0;
}

/* With t->mu held: no job is in hand (none, or the one handed over has run). */
static int jt_idle_locked(JobThread* t) {
    return t->job == NULL || t->done;
}

/* Hand the thread a job; 0, or -1 if one is still running (the caller serializes). */
static int jt_submit(JobThread* t, void* job) {
    pthread_mutex_lock(&t->mu);
    if (!jt_idle_locked(t)) { pthread_mutex_unlock(&t->mu); return -1; }
    t->job = job;
    t->done = 0;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    return 0;
}

/* Whether the job handed over has run (its outcome is then visible to the caller). */
static int jt_finished(JobThread* t) {
    int done;
    pthread_mutex_lock(&t->mu);
    done = t->job != NULL && t->done;
    pthread_mutex_unlock(&t->mu);
    return done;
}

static int jt_slice_err(JobThread* t) {
    int err;
    pthread_mutex_lock(&t->mu);
    err = t->slice_err;
    pthread_mutex_unlock(&t->mu);
    return err;
}

static void jt_forget(JobThread* t) {
    pthread_mutex_lock(&t->mu);
    t->job = NULL;
    t->done = 0;
    pthread_mutex_unlock(&t->mu);
}

/* Stop the thread (after the job it runs, if any) and free what jt_start made. */
static void jt_stop(JobThread* t) {
    if (!t->started) return;
    pthread_mutex_lock(&t->mu);
    t->stop = 1;
    pthread_cond_signal(&t->cv);
    pthread_mutex_unlock(&t->mu);
    pthread_join(t->thread, NULL);
    pthread_mutex_destroy(&t->mu);
    pthread_cond_destroy(&t->cv);
    close(t->efd);
    t->efd = -1;
    t->started = 0;
}

#endif
