/* lockprof runtime: the hang doctor (hang_timeout=SECONDS).
 *
 * Every profiled wait that blocks (the contended path: the non-blocking try
 * failed, or an asyncio acquire suspended) is entered in a small table when
 * it begins and removed when it ends.  A watchdog thread of the runtime
 * sleeps until the first wait not yet reported passes the timeout (or, with
 * no wait, until one begins: the wait that finds it idle wakes it), then
 * hands a snapshot of every wait, with the holders of each waited lock, to
 * lockprof._hang.report and writes the text to the file descriptor stderr
 * had at start.  A report covers every wait in it: the next one comes only
 * when a wait it did not list passes the timeout.  The program keeps running.
 *
 * The watchdog takes no lock the program could hold: it sleeps on a lock of
 * its own, takes no lock of the program, imports nothing while it runs
 * and writes with write(2).  The holders come from the held-lock lists of
 * lp_order.c, which the hang doctor turns on (lp_track_holds) without the
 * lock-order edges.  The unsampled, uncontended acquire is unchanged: with
 * holds tracked, every acquire calls the runtime, as with lock_order.
 *
 * Owns: the table of waits in progress, the watchdog's flags (running,
 * alive, idle, posted), its counters and its report function.
 * Guarded by: the tables' mutex (lp_tables_mutex, lp_thread.c) on a free-
 * threaded build, the GIL otherwise; the watchdog holds it while it scans
 * and gives it up while it sleeps and while the report's Python code runs. */
#include "lp_record.h"
#include "lp_stack.h"

#include <errno.h>
#ifdef _WIN32
#include <io.h>
#define lp_write _write
#else
#include <unistd.h>
#define lp_write write
#endif

uint32_t lp_max_hang_waits = 4096;      /* waits tracked at once */

typedef struct {
    lp_wrapper *w;                      /* strong */
    PyObject *task;                     /* strong, or NULL (a thread's wait) */
    unsigned long ident;
    int64_t t0;
    int kind;
    int reported;
    int bounded;                        /* the acquire has a timeout */
} lp_hwait;

static lp_hwait *waits = NULL;
static uint32_t nwaits = 0, capwaits = 0;
static uint64_t hang_reports = 0, hang_errors = 0;

static PyThread_type_lock wake = NULL;  /* held, except when posted */
static PyThread_type_lock done = NULL;  /* held; released by a watchdog ending */
static int configured = 0;              /* the hang doctor is on */
static int running = 0;                 /* the watchdog should run */
static unsigned long watch_native = 0;  /* its OS thread id, while alive */
static int alive = 0;                   /* a watchdog thread exists */
static int idle = 0;                    /* it sleeps until a wait begins */
static int posted = 0;                  /* `wake` was released, not yet taken */
static int out_fd = 2;
static PyObject *reporter = NULL;       /* lockprof._hang.report */
static PyObject *start_thread = NULL;   /* _thread.start_new_thread */
static PyObject *watch_fn = NULL;       /* the watchdog, as a callable */

static void
post(void)
{
    if (!posted && wake != NULL) {
        posted = 1;
        PyThread_release_lock(wake);
    }
}

/* ------------------------------------------------------------------------ */
/* the waits                                                                 */
/* ------------------------------------------------------------------------ */

/* the running task (new reference, or NULL); an exception on its way (a
 * cancellation ending the wait) is left as it was */
static PyObject *
current_task(void)
{
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *t = lp_current_task();
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return t;
}

/* (lp_hang_wait_begin, lp_hang_wait_end: called by lp_record.c's flush
 * functions, holding the tables' mutex) */
static int launch(void);

void
lp_hang_wait_begin(lp_wrapper *w, int kind, int bounded)
{
    if (!configured) {
        return;
    }
    if (nwaits >= lp_max_hang_waits) {
        lp_dropped_hang_waits++;
        return;
    }
    if (nwaits >= capwaits) {
        uint32_t nc = capwaits ? capwaits * 2 : 16;
        if (nc > lp_max_hang_waits) {
            nc = lp_max_hang_waits;         /* > nwaits: checked above */
        }
        lp_hwait *nw = PyMem_Realloc(waits, nc * sizeof(lp_hwait));
        if (nw == NULL) {
            lp_dropped_hang_waits++;
            return;
        }
        waits = nw;
        capwaits = nc;
    }
    lp_hwait *e = &waits[nwaits++];
    e->w = (lp_wrapper *)Py_NewRef((PyObject *)w);
    e->task = lp_kind_is_async(kind) ? current_task() : NULL;
    e->ident = PyThread_get_thread_ident();
    e->t0 = lp_now_ns();
    e->kind = kind;
    e->reported = 0;
    e->bounded = bounded != 0;
    if (!alive) {
        /* the watchdog exists only once a wait needs watching: a program
         * that forks before any wait (or after one, see fork_prepare) is
         * not multi-threaded because of it */
        if (launch() < 0) {
            PyErr_Clear();
            hang_errors++;
        }
    }
    else if (idle) {
        idle = 0;
        post();
    }
}

void
lp_hang_wait_end(lp_wrapper *w, int kind)
{
    if (nwaits == 0) {
        return;
    }
    unsigned long me = PyThread_get_thread_ident();
    PyObject *task = NULL;
    if (lp_kind_is_async(kind)) {
        task = current_task();
        Py_XDECREF(task);           /* identity only */
    }
    for (uint32_t i = nwaits; i-- > 0;) {
        lp_hwait *e = &waits[i];
        if (e->w == w && e->ident == me && e->task == task) {
            lp_hwait gone = *e;
            waits[i] = waits[--nwaits];
            Py_DECREF((PyObject *)gone.w);
            Py_XDECREF(gone.task);
            return;
        }
    }
}

static void
clear_waits(void)
{
    while (nwaits > 0) {
        lp_hwait gone = waits[--nwaits];
        Py_DECREF((PyObject *)gone.w);
        Py_XDECREF(gone.task);
    }
}

/* ------------------------------------------------------------------------ */
/* the report                                                                */
/* ------------------------------------------------------------------------ */

/* a list of dicts, one per wait, each with the holders of its lock */
static PyObject *
snapshot(int64_t now)
{
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i < nwaits; i++) {
        lp_hwait *e = &waits[i];
        PyObject *name = lp_lock_display_name(e->w, e->kind);
        PyObject *holders = lp_order_holders_of(e->w);
        PyObject *kind = lp_kind_name(e->kind);
        PyObject *d = NULL;
        if (name != NULL && holders != NULL && kind != NULL) {
            d = Py_BuildValue("{sOsOsksOsNsdsOsOsO}", "lock", name, "kind", kind,
                              "ident", e->ident, "task", e->task ? e->task : Py_None,
                              "task_id", e->task ? PyLong_FromVoidPtr(e->task)
                                                 : Py_NewRef(Py_None),
                              "waited", (double)(now - e->t0) / 1e9,
                              "reported", e->reported ? Py_True : Py_False,
                              "holders", holders,
                              "bounded", e->bounded ? Py_True : Py_False);
        }
        Py_XDECREF(name);
        Py_XDECREF(holders);
        int r = d != NULL ? PyList_Append(out, d) : -1;
        Py_XDECREF(d);
        if (r < 0) {
            Py_DECREF(out);
            return NULL;
        }
    }
    return out;
}

static void
write_all(const char *p, Py_ssize_t n)
{
    while (n > 0) {
        Py_ssize_t k;
        Py_BEGIN_ALLOW_THREADS
        k = (Py_ssize_t)lp_write(out_fd, p, (size_t)n);
        Py_END_ALLOW_THREADS
        if (k < 0) {
            if (errno == EINTR) {
                continue;
            }
            hang_errors++;
            return;
        }
        p += k;
        n -= k;
    }
}

/* reports every wait now; those past the timeout are marked reported */
static void
report(int64_t now)
{
    PyObject *snap = snapshot(now);
    for (uint32_t i = 0; i < nwaits; i++) {
        waits[i].reported = 1;
    }
    PyObject *text = NULL;
    PyObject *fn = Py_XNewRef(reporter);
    if (snap != NULL && fn != NULL) {
        /* Python code: run without the tables' mutex (it may take locks) */
        uint32_t held = lp_suspend();
        text = PyObject_CallFunction(fn, "Od", snap, (double)LP_LOAD(lp_hang_ns) / 1e9);
        lp_resume(held);
    }
    Py_XDECREF(fn);
    Py_XDECREF(snap);
    if (text != NULL && PyUnicode_Check(text)) {
        Py_ssize_t n;
        const char *p = PyUnicode_AsUTF8AndSize(text, &n);
        if (p != NULL && n > 0) {
            write_all(p, n);
            hang_reports++;
        }
    }
    Py_XDECREF(text);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        hang_errors++;
        lp_count_error();
    }
}

/* ------------------------------------------------------------------------ */
/* the watchdog                                                              */
/* ------------------------------------------------------------------------ */

static PyObject *
watch(PyObject *mod, PyObject *unused)
{
#if PY_VERSION_HEX >= 0x03080000 && (defined(__linux__) || defined(__APPLE__))
    unsigned long me = PyThread_get_thread_native_id();
#else
    unsigned long me = 0;
#endif
    lp_enter();
    watch_native = me;
    while (running) {
        int64_t now = lp_now_ns(), next = INT64_MAX;
        int due = 0;
        for (uint32_t i = 0; i < nwaits; i++) {
            if (!waits[i].reported) {
                int64_t d = waits[i].t0 + lp_hang_ns;
                if (d <= now) {
                    due = 1;
                }
                else if (d < next) {
                    next = d;
                }
            }
        }
        if (due) {
            report(now);
            continue;
        }
        idle = next == INT64_MAX;
        PY_TIMEOUT_T us = idle ? -1 : (PY_TIMEOUT_T)((next - now) / 1000 + 1);
        PyLockStatus got;
        uint32_t held = lp_suspend();
        Py_BEGIN_ALLOW_THREADS
        got = PyThread_acquire_lock_timed(wake, us, 0);
        Py_END_ALLOW_THREADS
        lp_resume(held);
        if (got == PY_LOCK_ACQUIRED) {
            posted = 0;
        }
        idle = 0;
    }
    alive = 0;
    PyThread_release_lock(done);
    lp_exit();
    Py_RETURN_NONE;
}

/* after the watchdog said it ended: until its OS thread is gone too (Linux:
 * its /proc/self/task entry), at most 100 ms; the count of OS threads is
 * what os.fork() warns about */
static void
wait_thread_gone(unsigned long tid)
{
#ifdef __linux__
    if (tid == 0) {
        return;
    }
    char path[64];
    snprintf(path, sizeof(path), "/proc/self/task/%lu", tid);
    for (int i = 0; i < 200 && access(path, F_OK) == 0; i++) {
        Py_BEGIN_ALLOW_THREADS
        usleep(500);
        Py_END_ALLOW_THREADS
    }
#else
    (void)tid;
#endif
}

static PyMethodDef watch_def = {
    "_hang_watchdog", watch, METH_NOARGS, "The hang doctor's watchdog (a thread of lockprof)."};

static int
make_locks(void)
{
    wake = PyThread_allocate_lock();
    done = PyThread_allocate_lock();
    if (wake == NULL || done == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    PyThread_acquire_lock(wake, WAIT_LOCK);
    PyThread_acquire_lock(done, WAIT_LOCK);
    posted = 0;
    return 0;
}

static int
launch(void)
{
    if (wake == NULL && make_locks() < 0) {
        return -1;
    }
    running = 1;
    alive = 1;
    PyObject *r = PyObject_CallFunction(start_thread, "O()", watch_fn);
    if (r == NULL) {
        running = alive = 0;
        return -1;
    }
    Py_DECREF(r);
    return 0;
}

/* stops the watchdog; waits for it (without the GIL) up to two seconds */
static void
halt(void)
{
    lp_enter();
    running = 0;
    int was_alive = alive;
    if (was_alive) {
        post();
    }
    lp_exit();
    if (!was_alive) {
        return;
    }
    PyLockStatus got;
    Py_BEGIN_ALLOW_THREADS
    got = PyThread_acquire_lock_timed(done, 2000000, 0);
    Py_END_ALLOW_THREADS
    (void)got;
}

void
lp_hang_after_fork(void)
{
    /* the watchdog and the other threads' waits stayed in the parent; the
     * parent's locks may have been in use at the fork: new ones (the old
     * ones are left, not freed).  The child's watchdog starts with its first
     * wait. */
    alive = 0;
    idle = 0;
    running = 0;
    watch_native = 0;
    wake = done = NULL;
    clear_waits();
}

/* os.register_at_fork(before=...): the watchdog ends, and its OS thread is
 * gone, before the fork, so that it does not make the process look
 * multi-threaded (CPython 3.12+ warns); the next wait starts it again */
static PyObject *
py_hang_fork_prepare(PyObject *mod, PyObject *unused)
{
    lp_enter();
    unsigned long tid = watch_native;
    int was_alive = alive;
    lp_exit();
    if (!was_alive) {
        Py_RETURN_NONE;
    }
    halt();
    wait_thread_gone(tid);
    Py_RETURN_NONE;
}

/* os.register_at_fork(after_in_parent=...): waits still in progress in the
 * parent's other threads are watched again */
static PyObject *
py_hang_fork_parent(PyObject *mod, PyObject *unused)
{
    lp_enter();
    if (configured && !alive && nwaits > 0 && launch() < 0) {
        PyErr_Clear();
        hang_errors++;
    }
    lp_exit();
    Py_RETURN_NONE;
}


/* holds are tracked while the hang doctor or lock order is on */
static void
set_tracking(void)
{
    lp_sampling_configure(lp_active, lp_sample_rate);
}

static PyObject *
hang_start_locked(PyObject *args)
{
    double seconds;
    int fd;
    PyObject *fn;
    unsigned int maxw = lp_max_hang_waits;
    if (!PyArg_ParseTuple(args, "diO|I:hang_start", &seconds, &fd, &fn, &maxw)) {
        return NULL;
    }
    if (!(seconds > 0.0 && seconds < 1e9)) {
        PyErr_Format(PyExc_ValueError, "hang_timeout must be a positive number of seconds, "
                     "got %R", PyTuple_GET_ITEM(args, 0));
        return NULL;
    }
    if (maxw < 1) {
        PyErr_SetString(PyExc_ValueError, "max_hang_waits must be at least 1");
        return NULL;
    }
    if (!configured) {
        lp_dropped_hang_waits = 0;      /* a new session's counts */
        hang_reports = 0;
        hang_errors = 0;
    }
    Py_XSETREF(reporter, Py_NewRef(fn));
    out_fd = fd;
    lp_max_hang_waits = maxw;
    lp_hang_ns = (int64_t)(seconds * 1e9);
    if (lp_hang_ns < 1) {
        lp_hang_ns = 1;
    }
    set_tracking();
    configured = 1;
    if (alive) {
        running = 1;
        post();         /* the timeout may have changed: look again */
    }
    Py_RETURN_NONE;
}

static PyObject *
py_hang_start(PyObject *mod, PyObject *args)
{
    lp_enter();
    PyObject *r = hang_start_locked(args);
    lp_exit();
    return r;
}

static PyObject *
py_hang_stop(PyObject *mod, PyObject *unused)
{
    halt();
    lp_enter();
    configured = 0;
    clear_waits();
    LP_STORE(lp_hang_ns, 0);
    set_tracking();
    lp_exit();
    Py_RETURN_NONE;
}

static PyObject *
py_hang_counters(PyObject *mod, PyObject *unused)
{
    return Py_BuildValue("{sKsKsIsIsK}", "hang_reports", (unsigned long long)hang_reports,
                         "dropped_hang_waits", (unsigned long long)lp_dropped_hang_waits,
                         "hang_waits", nwaits, "max_hang_waits", lp_max_hang_waits,
                         "hang_errors", (unsigned long long)hang_errors);
}

static PyObject *
py_hang_waits(PyObject *mod, PyObject *unused)
{
    return snapshot(lp_now_ns());
}

/* these two take the tables' mutex themselves: they start and wait for the
 * watchdog, which takes it too */
static PyMethodDef hang_control[] = {
    {"hang_start", py_hang_start, METH_VARARGS,
     "hang_start(seconds, fd, report, max_waits=4096)\n--\n\n"
     "Start the hang doctor: waits longer than `seconds` are reported to fd."},
    {"hang_stop", py_hang_stop, METH_NOARGS, "hang_stop()\n--\n\nStop the hang doctor."},
    {"hang_fork_prepare", py_hang_fork_prepare, METH_NOARGS,
     "hang_fork_prepare()\n--\n\nBefore os.fork(): the watchdog thread ends."},
    {"hang_fork_parent", py_hang_fork_parent, METH_NOARGS,
     "hang_fork_parent()\n--\n\nAfter os.fork(), in the parent: watch the waits again."},
    {NULL, NULL, 0, NULL},
};

static PyMethodDef hang_methods[] = {
    {"hang_counters", py_hang_counters, METH_NOARGS,
     "hang_counters()\n--\n\nReports written, waits tracked and dropped."},
    {"hang_waits", py_hang_waits, METH_NOARGS,
     "hang_waits()\n--\n\nThe waits in progress, as the report sees them."},
    {NULL, NULL, 0, NULL},
};

int
lp_hang_setup(PyObject *module)
{
    PyObject *thread = PyImport_ImportModule("_thread");
    if (thread == NULL) {
        return -1;
    }
    start_thread = PyObject_GetAttrString(thread, "start_new_thread");
    Py_DECREF(thread);
    if (start_thread == NULL) {
        return -1;
    }
    watch_fn = PyCFunction_New(&watch_def, NULL);
    if (watch_fn == NULL) {
        return -1;
    }
    if (PyModule_AddFunctions(module, hang_control) < 0) {
        return -1;
    }
    return lp_add_functions(module, hang_methods);
}
