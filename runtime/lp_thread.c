/* lockprof runtime: a thread's own state, and the sampling decision.
 *
 * Owns:
 *   - lp_ts, the running thread's state (lp_tstate in lp_runtime.h): its
 *     sampling countdowns and random generator.  Guarded by being the
 *     thread's own: thread-local on a free-threaded build, one struct under
 *     the GIL otherwise.  The only write another thread makes is
 *     configure()'s zeroing of a countdown (a relaxed atomic store).
 *   - the registry of thread states (free-threaded builds): guarded by
 *     registry_mutex, a plain pthread mutex taken when a thread first draws,
 *     when it exits, and by configure().
 *   - the sampling settings (lp_active, lp_sample_rate, the generations):
 *     written by configure() and by the budget (lp_budget.c) under the
 *     tables' mutex, read by every thread with relaxed loads (LP_LOAD).
 *   - the tables' mutex itself (free-threaded builds: lp_tables_lock and
 *     lp_tables_unlock, lp_enter and lp_exit), the one mutex of the
 *     runtime's tables (lp_runtime.h).
 * Calls: nothing of the runtime but the flags lp_track_holds (lp_order.c). */
#include "lp_runtime.h"
#include "lp_record.h"

#include <math.h>
#include <pthread.h>
#include <string.h>
#include <unistd.h>

#ifdef Py_GIL_DISABLED
_Thread_local lp_tstate lp_ts __attribute__((tls_model("initial-exec")));
#else
lp_tstate lp_ts;
#endif

#ifdef Py_GIL_DISABLED
/* The tables' mutex: one word taken by compare-and-swap (0 free, 1 held,
 * 2 held and a thread may be asleep on it).  A thread that finds it held
 * spins a while with the CPU's pause hint, since a table update lasts well
 * under a microsecond, then sleeps on park_cv detached from the interpreter
 * (as a PyMutex waiter does), so that neither a stop-the-world nor the
 * holder is kept waiting by a sleeper; it takes the mutex only once it is
 * attached again (tables_lock_slow).  CPython's PyMutex was used first:
 * its waiter yields the CPU (sched_yield) at every turn of its spin, and
 * two threads sampling at the default rate lost a fifth of their time to
 * those system calls (bench parallel, docs/free-threading.md). */
static int lp_tables_mutex = 0;
static pthread_mutex_t park_mutex = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t park_cv = PTHREAD_COND_INITIALIZER;
#define LP_SPINS 2000

static inline void
cpu_relax(void)
{
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__) || defined(__arm__)
    __asm__ __volatile__("yield");
#endif
}

static void
tables_lock_slow(void)
{
    /* The mutex is only ever taken while attached to the interpreter: a
     * waiter sleeps detached, but takes the mutex after it attached again.
     * Attaching can block (a stop-the-world pause) or never return (a daemon
     * thread during interpreter finalisation); a thread holding the mutex
     * there would stop every thread that records, the finalising one too. */
    int contended = 0;      /* this thread slept: take it marked as waited on */
    for (;;) {
        for (int i = 0; i < LP_SPINS; i++) {
            int free_ = 0;
            if (__atomic_load_n(&lp_tables_mutex, __ATOMIC_RELAXED) == 0 &&
                __atomic_compare_exchange_n(&lp_tables_mutex, &free_, contended ? 2 : 1, 0,
                                            __ATOMIC_ACQUIRE, __ATOMIC_RELAXED)) {
                return;
            }
            cpu_relax();
        }
        PyThreadState *ts = PyThreadState_GetUnchecked();
        if (ts != NULL) {
            ts = PyEval_SaveThread();
        }
        /* sleep until the mutex is free: a holder that sees 2 when it
         * unlocks signals park_cv (under park_mutex, so no wake-up is lost) */
        pthread_mutex_lock(&park_mutex);
        for (;;) {
            int v = __atomic_load_n(&lp_tables_mutex, __ATOMIC_RELAXED);
            if (v == 0) {
                break;
            }
            if (v == 1 && !__atomic_compare_exchange_n(&lp_tables_mutex, &v, 2, 0,
                                                       __ATOMIC_RELAXED, __ATOMIC_RELAXED)) {
                continue;
            }
            pthread_cond_wait(&park_cv, &park_mutex);
        }
        pthread_mutex_unlock(&park_mutex);
        if (ts != NULL) {
            PyEval_RestoreThread(ts);
        }
        /* others may sleep too: whoever takes it next must wake one */
        contended = 1;
    }
}

void
lp_tables_lock(void)
{
    int free_ = 0;
    if (!__atomic_compare_exchange_n(&lp_tables_mutex, &free_, 1, 0, __ATOMIC_ACQUIRE,
                                     __ATOMIC_RELAXED)) {
        tables_lock_slow();
    }
}

void
lp_tables_unlock(void)
{
    if (__atomic_exchange_n(&lp_tables_mutex, 0, __ATOMIC_RELEASE) == 2) {
        pthread_mutex_lock(&park_mutex);
        pthread_cond_signal(&park_cv);
        pthread_mutex_unlock(&park_mutex);
    }
}

void
lp_enter(void)
{
    if (lp_ts.depth++ == 0) {
        lp_tables_lock();
    }
}

void
lp_exit(void)
{
    if (--lp_ts.depth == 0) {
        lp_tables_unlock();
    }
}
#endif

/* the settings (configure(), hang_start()): written under the tables'
 * mutex, read anywhere with LP_LOAD */
int lp_active = 0;
int lp_lock_order = 0;          /* lock-order edges are checked */
int lp_track_holds = 0;         /* lock_order or the hang doctor: holds kept */
int64_t lp_hang_ns = 0;         /* the hang doctor's timeout; 0: off */

/* counters of what profiling absorbed, kept by every part of the runtime:
 * written under the tables' mutex (or with atomic adds), reset per window */
int64_t lp_faults = 0;
uint64_t lp_foreign_locks = 0;  /* made by a factory, of a class not wrapped */
uint64_t lp_name_errors = 0;
uint64_t lp_dropped_hang_waits = 0; /* waits the hang doctor's cap left out */
static uint64_t n_errors = 0;   /* failures inside profiling */

void
lp_count_error(void)
{
#ifdef Py_GIL_DISABLED
    __atomic_fetch_add(&n_errors, 1, __ATOMIC_RELAXED);
#else
    n_errors++;
#endif
}

uint64_t
lp_errors(void)
{
    return LP_LOAD(n_errors);
}

void
lp_errors_reset(void)
{
    LP_STORE(n_errors, 0);
}
double lp_sample_rate = 0.0;
static uint32_t sampling_gen = 1;       /* configure() bumps it */
static uint64_t seed_base = 0;          /* lp_seed() */
static uint32_t seed_gen = 1;           /* lp_seed() bumps it */

static inline double
rate_now(void)
{
#ifdef Py_GIL_DISABLED
    double p;
    __atomic_load(&lp_sample_rate, &p, __ATOMIC_RELAXED);
    return p;
#else
    return lp_sample_rate;
#endif
}

static uint64_t
lp_rand64(lp_tstate *ts)
{
    /* splitmix64: fast, good enough to drive a sampling decision */
    uint64_t z = (ts->rng += 0x9E3779B97F4A7C15ULL);
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ULL;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBULL;
    return z ^ (z >> 31);
}

/* ------------------------------------------------------------------------ */
/* the registry of thread states (free-threaded builds)                      */
/* ------------------------------------------------------------------------ */

#ifdef Py_GIL_DISABLED
static pthread_mutex_t registry_mutex = PTHREAD_MUTEX_INITIALIZER;
static lp_tstate *registry = NULL;
static uint64_t thread_serial = 0;      /* threads registered, for their seeds */
static pthread_key_t exit_key;
static int exit_key_made = 0;

static void
unlink_locked(lp_tstate *ts)
{
    if (ts->prev != NULL) {
        ts->prev->next = ts->next;
    }
    else if (registry == ts) {
        registry = ts->next;
    }
    if (ts->next != NULL) {
        ts->next->prev = ts->prev;
    }
    ts->prev = ts->next = NULL;
    ts->registered = 0;
}

/* a thread ends: its state leaves the registry before its TLS is freed */
static void
thread_exit(void *p)
{
    pthread_mutex_lock(&registry_mutex);
    unlink_locked((lp_tstate *)p);
    pthread_mutex_unlock(&registry_mutex);
}

static void
register_thread(lp_tstate *ts)
{
    pthread_mutex_lock(&registry_mutex);
    uint64_t n = ++thread_serial;
    ts->rng = __atomic_load_n(&seed_base, __ATOMIC_RELAXED) ^ (n * 0xD1B54A32D192ED03ULL);
    ts->seed_gen = __atomic_load_n(&seed_gen, __ATOMIC_RELAXED);
    ts->next = registry;
    ts->prev = NULL;
    if (registry != NULL) {
        registry->prev = ts;
    }
    registry = ts;
    ts->registered = 1;
    if (exit_key_made) {
        pthread_setspecific(exit_key, ts);
    }
    pthread_mutex_unlock(&registry_mutex);
}
#endif

/* ------------------------------------------------------------------------ */
/* sampling                                                                  */
/* ------------------------------------------------------------------------ */

/* the running thread's state, registered (and seeded) on first use */
static inline lp_tstate *
my_state(void)
{
    lp_tstate *ts = &lp_ts;
#ifdef Py_GIL_DISABLED
    if (LP_UNLIKELY(!ts->registered)) {
        register_thread(ts);
    }
    uint32_t sg = LP_LOAD(seed_gen);
    if (LP_UNLIKELY(ts->seed_gen != sg)) {
        /* lp_seed() was called since this thread drew: reseed from it */
        if (ts->seed_gen != 0) {
            ts->rng = LP_LOAD(seed_base) ^ ((uint64_t)(uintptr_t)ts * 0xD1B54A32D192ED03ULL);
        }
        ts->seed_gen = sg;
    }
#endif
    return ts;
}

double
lp_rand_unit(void)
{
    return (double)(lp_rand64(my_state()) >> 11) * (1.0 / 9007199254740992.0);
}

void
lp_seed(uint64_t seed)
{
#ifdef Py_GIL_DISABLED
    /* every thread reseeds (from the seed and its own serial) at its next
     * draw; the caller at once */
    lp_tstate *ts = my_state();
    __atomic_store_n(&seed_base, seed, __ATOMIC_RELAXED);
    ts->seed_gen = __atomic_add_fetch(&seed_gen, 1, __ATOMIC_RELAXED);
#else
    seed_base = seed;
    seed_gen++;
#endif
    lp_ts.rng = seed;
}

/* Number of events until the next sampled one (>= 1): geometric with
 * parameter p, drawn by inversion. */
static int64_t
draw_countdown(lp_tstate *ts, double *drawn)
{
    double p = rate_now();
    *drawn = p;
    if (!LP_LOAD(lp_active) || p <= 0.0) {
#ifdef Py_GIL_DISABLED
        /* not INT64_MAX: should configure()'s reset of this thread's
         * countdown be lost to a racing decrement, the thread still looks
         * again after this many events */
        return (int64_t)1 << 20;
#else
        return INT64_MAX;
#endif
    }
    if (p >= 1.0) {
        return 1;
    }
    /* u uniform in (0, 1] */
    double u = ((double)(lp_rand64(ts) >> 11) + 1.0) * (1.0 / 9007199254740992.0);
    double g = floor(log(u) / log1p(-p)) + 1.0;
    if (!(g < 9.0e18)) {
        return INT64_MAX;
    }
    return (int64_t)g;
}

static inline void
set_countdown(lp_tstate *ts, int64_t c)
{
#ifdef Py_GIL_DISABLED
    __atomic_store_n(&ts->countdown, c, __ATOMIC_RELAXED);
#else
    ts->countdown = c;
#endif
}

int
lp_sample_expired(void)
{
    lp_tstate *ts = my_state();
    int redraw = 0;
    uint32_t g = LP_LOAD(sampling_gen);
    if (LP_UNLIKELY(ts->gen != g)) {
        /* first draw of this thread, or the settings changed since its last:
         * this event starts a fresh geometric sequence */
        ts->gen = g;
        redraw = 1;
    }
    if (LP_LOAD(lp_track_holds)) {
        /* lock-order tracking sees every acquire: the countdown stays run
         * out, and the sampling draws on order_countdown instead */
        set_countdown(ts, 0);
        if (redraw) {
            ts->order_countdown = draw_countdown(ts, &ts->order_draw_rate);
        }
        return LP_LOAD(lp_active);
    }
    if (redraw) {
        /* this event is the first of the new sequence */
        int64_t c = draw_countdown(ts, &ts->draw_rate) - 1;
        if (c > 0) {
            set_countdown(ts, c);
            return 0;
        }
    }
    /* The event that brought the countdown to zero is the sampled one; it
     * stands for the events of its gap, 1 / (the gap's rate) on average. */
    double p = ts->draw_rate;
    set_countdown(ts, draw_countdown(ts, &ts->draw_rate));
    ts->sampled_rate = p;
    return LP_LOAD(lp_active) && p > 0.0 && rate_now() > 0.0;
}

int
lp_order_sampled(void)
{
    lp_tstate *ts = my_state();
    if (--ts->order_countdown > 0) {
        return 0;
    }
    double p = ts->order_draw_rate;
    ts->order_countdown = draw_countdown(ts, &ts->order_draw_rate);
    ts->sampled_rate = p;
    return p > 0.0 && rate_now() > 0.0;
}

double
lp_sampled_rate(void)
{
    return lp_ts.sampled_rate;
}

/* A new rate, the same settings otherwise (max_overhead, lp_budget.c):
 * every thread's next event draws a fresh gap under it. */
void
lp_sampling_set_rate(double rate)
{
    lp_sampling_configure(LP_LOAD(lp_active), rate);
}

void
lp_sampling_configure(int active, double rate)
{
    /* derived, kept as one flag for the acquire's slow path to test */
    LP_STORE(lp_track_holds, lp_lock_order || lp_hang_ns > 0);
#ifdef Py_GIL_DISABLED
    __atomic_store(&lp_sample_rate, &rate, __ATOMIC_RELAXED);
#else
    lp_sample_rate = rate;
#endif
    LP_STORE(lp_active, active);
    uint32_t g = LP_LOAD(sampling_gen) + 1;
    if (g == 0) {
        g = 1;          /* 0 is a thread that never drew */
    }
    LP_STORE(sampling_gen, g);
#ifdef Py_GIL_DISABLED
    /* every thread's next event draws under the new settings */
    pthread_mutex_lock(&registry_mutex);
    for (lp_tstate *ts = registry; ts != NULL; ts = ts->next) {
        set_countdown(ts, 0);
    }
    pthread_mutex_unlock(&registry_mutex);
#endif
    set_countdown(&lp_ts, 0);
}

#ifdef Py_GIL_DISABLED
/* In a forked child (pthread_atfork, before any Python code runs there)
 * only the forking thread remains: the others' states leave the registry
 * (their memory may be reused by new threads), and the mutexes another
 * thread may have held at the fork are free */
static void
after_fork_child(void)
{
    pthread_mutex_init(&registry_mutex, NULL);
    registry = NULL;
    lp_ts.registered = 0;
    lp_ts.prev = lp_ts.next = NULL;
    lp_ts.depth = 0;
    lp_tables_mutex = 0;
    pthread_mutex_init(&park_mutex, NULL);
    pthread_cond_init(&park_cv, NULL);
    lp_ts.gen = 0;
    set_countdown(&lp_ts, 0);
}
#endif

int
lp_thread_setup(void)
{
#ifdef Py_GIL_DISABLED
    if (!exit_key_made) {
        if (pthread_key_create(&exit_key, thread_exit) != 0 ||
            pthread_atfork(NULL, NULL, after_fork_child) != 0) {
            PyErr_SetString(PyExc_RuntimeError, "lockprof: pthread_key_create or pthread_atfork failed");
            return -1;
        }
        exit_key_made = 1;
    }
#endif
    lp_seed((uint64_t)lp_now_ns() ^ ((uint64_t)getpid() << 32));
    return 0;
}

/* ------------------------------------------------------------------------ */
/* the Python API's functions, each run holding the tables' mutex           */
/* ------------------------------------------------------------------------ */

#ifdef Py_GIL_DISABLED
/* A module function of the runtime, called with the tables' mutex held: the
 * function itself, wrapped (free-threaded builds only; under the GIL the
 * functions are added as they are). */
typedef struct {
    PyObject_HEAD
    vectorcallfunc vectorcall;
    PyObject *fn;
} lp_locked_fn;

static PyTypeObject *locked_fn_type = NULL;

static PyObject *
locked_call(PyObject *self, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    lp_enter();
    PyObject *r = PyObject_Vectorcall(((lp_locked_fn *)self)->fn, args, nargsf, kwnames);
    lp_exit();
    return r;
}

static PyObject *
locked_getattro(PyObject *self, PyObject *name)
{
    /* __name__, __doc__, __text_signature__: the function's own */
    return PyObject_GetAttr(((lp_locked_fn *)self)->fn, name);
}

static void
locked_dealloc(PyObject *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    Py_CLEAR(((lp_locked_fn *)self)->fn);
    tp->tp_free(self);
    Py_DECREF(tp);
}

static PyMemberDef locked_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(lp_locked_fn, vectorcall), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

static PyType_Slot locked_slots[] = {
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_getattro, locked_getattro},
    {Py_tp_dealloc, locked_dealloc},
    {Py_tp_members, locked_members},
    {0, NULL},
};

static PyType_Spec locked_spec = {
    .name = "lockprof._lockprof.locked_function",
    .basicsize = sizeof(lp_locked_fn),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = locked_slots,
};
#endif

int
lp_add_functions(PyObject *module, PyMethodDef *defs)
{
#ifdef Py_GIL_DISABLED
    if (locked_fn_type == NULL) {
        locked_fn_type = (PyTypeObject *)PyType_FromSpec(&locked_spec);
        if (locked_fn_type == NULL) {
            return -1;
        }
    }
    PyObject *modname = PyModule_GetNameObject(module);
    if (modname == NULL) {
        return -1;
    }
    for (PyMethodDef *d = defs; d->ml_name != NULL; d++) {
        PyObject *fn = PyCFunction_NewEx(d, module, modname);
        lp_locked_fn *w = fn ? PyObject_New(lp_locked_fn, locked_fn_type) : NULL;
        if (w == NULL) {
            Py_XDECREF(fn);
            Py_DECREF(modname);
            return -1;
        }
        w->vectorcall = locked_call;
        w->fn = fn;
        if (PyModule_AddObject(module, d->ml_name, (PyObject *)w) < 0) {
            Py_DECREF(w);
            Py_DECREF(modname);
            return -1;
        }
    }
    Py_DECREF(modname);
    return 0;
#else
    return PyModule_AddFunctions(module, defs);
#endif
}
