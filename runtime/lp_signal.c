/* lockprof runtime: the SIGTERM guard.
 *
 * `lockprof run` writes the profile when the program is sent SIGTERM, from
 * a Python-level handler, and then dies of SIGTERM as it would unprofiled.
 * A Python handler runs only when the main thread gets back to the
 * interpreter.  A signal that arrives while it is in C code just before a
 * blocking call (a lock's sem_wait, say) is taken by CPython's C handler,
 * and the blocking call then waits as if nothing happened.  The handler
 * never runs, and the process, which the default action would have killed
 * at once, lives on.  A multiprocessing pool's terminate() then waits
 * forever for such a worker.
 *
 * So the guard wraps CPython's C handler for SIGTERM: it passes the signal
 * on, and arms a one-shot timer (LP_SIGTERM_GRACE_NS) that sends SIGTERM
 * again.  The Python handler disarms it as soon as it runs.  If it has not
 * run by then, the second SIGTERM finds the guard armed, restores the
 * default action and raises the signal: the process dies of SIGTERM, as it
 * would unprofiled, only later and without its profile.  Any second
 * SIGTERM in that window does the same.
 *
 * Linux only (POSIX timers); elsewhere the guard is not installed.
 *
 * Owns: the saved handler, the timer, the armed flag.
 * Guarded by: installed and disarmed by the Python API (the GIL, or the
 * tables' mutex on a free-threaded build); the signal handler reads the
 * saved handler and the timer, which are set before it is installed, and
 * writes only the armed flag (a sig_atomic_t).  A forked child makes its
 * own timer (timers are not inherited). */
#include "lp_record.h"       /* Python.h first: it sets the feature macros */

#if defined(__linux__)
#  include <signal.h>
#  include <time.h>
#  include <pthread.h>
#  define LP_HAVE_GUARD 1
#endif

#define LP_SIGTERM_GRACE_NS 1000000000L      /* 1 s */

#ifdef LP_HAVE_GUARD
static struct sigaction saved;              /* CPython's handler */
static timer_t timer;
static int have_timer = 0;
static int installed = 0;
static volatile sig_atomic_t armed = 0;

static void
on_sigterm(int sig, siginfo_t *info, void *ctx)
{
    if (armed) {
        /* the grace timer (or a second SIGTERM): the Python handler did not
         * run; die as the program would unprofiled */
        signal(SIGTERM, SIG_DFL);
        raise(SIGTERM);
        return;
    }
    armed = 1;
    if (saved.sa_flags & SA_SIGINFO) {
        if (saved.sa_sigaction != NULL) {
            saved.sa_sigaction(sig, info, ctx);
        }
    }
    else if (saved.sa_handler != SIG_DFL && saved.sa_handler != SIG_IGN &&
             saved.sa_handler != NULL) {
        saved.sa_handler(sig);
    }
    if (have_timer) {
        struct itimerspec its = {{0, 0}, {0, LP_SIGTERM_GRACE_NS}};
        its.it_value.tv_sec = LP_SIGTERM_GRACE_NS / 1000000000L;
        its.it_value.tv_nsec = LP_SIGTERM_GRACE_NS % 1000000000L;
        timer_settime(timer, 0, &its, NULL);
    }
}

static int
make_timer(void)
{
    struct sigevent sev;
    memset(&sev, 0, sizeof(sev));
    sev.sigev_notify = SIGEV_SIGNAL;
    sev.sigev_signo = SIGTERM;
    have_timer = timer_create(CLOCK_MONOTONIC, &sev, &timer) == 0;
    return have_timer;
}

static void
after_fork_child(void)
{
    /* the child has the handler but not the timer */
    armed = 0;
    if (installed) {
        make_timer();
    }
}
#endif

/* sigterm_guard(): wrap the SIGTERM handler Python just installed */
static PyObject *
lp_py_sigterm_guard(PyObject *mod, PyObject *unused)
{
#ifdef LP_HAVE_GUARD
    struct sigaction cur;
    if (sigaction(SIGTERM, NULL, &cur) != 0) {
        Py_RETURN_FALSE;
    }
    if ((cur.sa_flags & SA_SIGINFO) && cur.sa_sigaction == on_sigterm) {
        Py_RETURN_TRUE;         /* already */
    }
    if (!have_timer && !make_timer()) {
        Py_RETURN_FALSE;
    }
    saved = cur;
    armed = 0;
    struct sigaction ours;
    memset(&ours, 0, sizeof(ours));
    ours.sa_sigaction = on_sigterm;
    ours.sa_flags = SA_SIGINFO | (cur.sa_flags & (SA_ONSTACK | SA_RESTART));
    sigemptyset(&ours.sa_mask);
    if (sigaction(SIGTERM, &ours, NULL) != 0) {
        Py_RETURN_FALSE;
    }
    if (!installed) {
        installed = 1;
        pthread_atfork(NULL, NULL, after_fork_child);
    }
    Py_RETURN_TRUE;
#else
    Py_RETURN_FALSE;
#endif
}

/* sigterm_disarm(): the Python handler runs; no second SIGTERM */
static PyObject *
lp_py_sigterm_disarm(PyObject *mod, PyObject *unused)
{
#ifdef LP_HAVE_GUARD
    if (have_timer) {
        struct itimerspec off;
        memset(&off, 0, sizeof(off));
        timer_settime(timer, 0, &off, NULL);
    }
    armed = 0;
#endif
    Py_RETURN_NONE;
}

static PyMethodDef signal_methods[] = {
    {"sigterm_guard", lp_py_sigterm_guard, METH_NOARGS,
     "sigterm_guard()\n--\n\n"
     "Wrap the Python-level SIGTERM handler just installed: should it not run\n"
     "within a second (the main thread blocked in C code), the process dies of\n"
     "SIGTERM as it would unprofiled.  False where not supported."},
    {"sigterm_disarm", lp_py_sigterm_disarm, METH_NOARGS,
     "sigterm_disarm()\n--\n\nThe Python-level SIGTERM handler is running."},
    {NULL, NULL, 0, NULL},
};

int
lp_signal_setup(PyObject *module)
{
    return lp_add_functions(module, signal_methods);
}
