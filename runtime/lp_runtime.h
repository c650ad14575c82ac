/* lockprof runtime: the hand-written C shared by every generated wrapper type.
 *
 * The generated wrapper files (generated/lp_*.c) include this header and call
 * into it.  Only what must be inline on the hot path lives here (the sampling
 * countdown, the direct call into the wrapped lock); everything that runs on a
 * sampled or contended event lives in the .c files of this folder, so that a
 * debugger's breakpoint lands in ordinary source.
 */
#ifndef LOCKPROF_RUNTIME_H
#define LOCKPROF_RUNTIME_H

#define PY_SSIZE_T_CLEAN
#include <Python.h>
#include <structmember.h>
#include <stdint.h>
#include <time.h>
#if PY_VERSION_HEX < 0x030B0000
#  include <frameobject.h>     /* PyFrame_GetBack is declared here before 3.11 */
#endif

#if PY_VERSION_HEX < 0x03090000
#  error "lockprof needs CPython 3.9 or newer"
#endif

/* a slow path kept out of the fast path's function: fewer registers saved */
#define LP_NOINLINE __attribute__((noinline))
#define LP_LIKELY(x) __builtin_expect(!!(x), 1)
#define LP_UNLIKELY(x) __builtin_expect(!!(x), 0)

/* dst = src (a new reference, or NULL), releasing the old value after the
 * store (Py_XSETREF is public only from 3.12 on) */
#define LP_XSETREF(dst, src) \
    do { PyObject *lp_old_ = (PyObject *)(dst); (dst) = (src); Py_XDECREF(lp_old_); } while (0)

#if PY_VERSION_HEX < 0x030A0000
static inline PyObject *lp_newref(PyObject *o) { Py_INCREF(o); return o; }
#  define Py_NewRef(o) lp_newref((PyObject *)(o))
#  define Py_XNewRef(o) ((o) ? lp_newref((PyObject *)(o)) : NULL)
#  define Py_IsNone(o) ((o) == Py_None)
#endif

/* ------------------------------------------------------------------------ */
/* Calling a method of the wrapped object                                    */
/* ------------------------------------------------------------------------ */

/* A method of the wrapped type, resolved once when the wrapper type is made.
 * When the wrapped type implements it in C (a method descriptor), `meth`
 * points at the C function itself and calls skip the descriptor and the
 * attribute lookup.  Otherwise (a Python class) the call goes through
 * PyObject_VectorcallMethod, which honours instance attributes such as the
 * `acquire` that threading.Condition binds in its __init__. */
typedef struct {
    PyObject *name;      /* interned method name */
    PyObject *descr;     /* the method descriptor, or NULL for a Python class */
    PyCFunction meth;    /* the C function when descr is a C method */
    int flags;           /* its METH_* flags */
    PyObject *func;      /* a Python class's function, valid while `owner`
                            still has version tag `tag` (not monkeypatched);
                            with owner NULL, a function called as is (the
                            one a Condition's lock bound in __init__) */
    PyTypeObject *owner;
    unsigned int tag;
} lp_method;

/* `t` is unchanged since version tag `tag` was read from it.  Before 3.13
 * a change clears Py_TPFLAGS_VALID_VERSION_TAG and may leave the old tag
 * until the next lookup; 3.13+ zeroes the tag and no longer uses the flag. */
static inline int
lp_tag_current(PyTypeObject *t, unsigned int tag)
{
#if PY_VERSION_HEX < 0x030D0000
    if (!(t->tp_flags & Py_TPFLAGS_VALID_VERSION_TAG)) {
        return 0;
    }
#endif
#ifdef Py_GIL_DISABLED
    /* another thread may be modifying the class (a relaxed atomic store) */
    return tag != 0 && __atomic_load_n(&t->tp_version_tag, __ATOMIC_RELAXED) == tag;
#else
    return tag != 0 && t->tp_version_tag == tag;
#endif
}

extern PyObject *lp_empty_tuple;
extern PyObject *lp_false_tuple;   /* (False,) */

int lp_method_init(lp_method *m, PyObject *type, const char *name);
/* "a.b.C": attribute C of module a.b, the module imported when `import`, else
 * only if the program imported it (NULL without an exception otherwise).
 * Stateless; in the header so every layer may use it. */
static inline PyObject *
lp_lookup_dotted(const char *path, int import)
{
    const char *dot = strrchr(path, '.');
    if (dot == NULL) {
        PyErr_Format(PyExc_ImportError, "lockprof: bad type path %s", path);
        return NULL;
    }
    PyObject *modname = PyUnicode_FromStringAndSize(path, dot - path);
    if (modname == NULL) {
        return NULL;
    }
    PyObject *mod = import ? PyImport_Import(modname) : PyImport_GetModule(modname);
    Py_DECREF(modname);
    if (mod == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_GetAttrString(mod, dot + 1);
    Py_DECREF(mod);
    return r;
}

/* 1 when `type`'s methods `a` and `b` are one method (the same function,
 * or C methods of one C function), 0 when they differ or either is not an
 * attribute of the class (bound per instance) */
int lp_same_method(PyObject *type, const char *a, const char *b);
PyObject *lp_call_generic(const lp_method *m, PyObject *self,
                          PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames);

typedef PyObject *(*lp_fastkw_fn)(PyObject *, PyObject *const *, Py_ssize_t, PyObject *);
typedef PyObject *(*lp_fast_fn)(PyObject *, PyObject *const *, Py_ssize_t);

#define LP_METH_KINDS (METH_VARARGS | METH_KEYWORDS | METH_NOARGS | METH_O | METH_FASTCALL)

/* m(self) with no arguments */
static inline PyObject *
lp_call0(const lp_method *m, PyObject *self)
{
    switch (m->flags & LP_METH_KINDS) {
    case METH_NOARGS:
        return m->meth(self, NULL);
    case METH_VARARGS | METH_KEYWORDS:
        return ((PyCFunctionWithKeywords)(void (*)(void))m->meth)(self, lp_empty_tuple, NULL);
    case METH_VARARGS:
        return m->meth(self, lp_empty_tuple);
    case METH_FASTCALL | METH_KEYWORDS:
        return ((lp_fastkw_fn)(void (*)(void))m->meth)(self, NULL, 0, NULL);
    case METH_FASTCALL:
        return ((lp_fast_fn)(void (*)(void))m->meth)(self, NULL, 0);
    default:
        return lp_call_generic(m, self, NULL, 0, NULL);
    }
}

/* m(self, False): the non-blocking try of an acquire */
static inline PyObject *
lp_call_false(const lp_method *m, PyObject *self)
{
    switch (m->flags & LP_METH_KINDS) {
    case METH_VARARGS | METH_KEYWORDS:
        return ((PyCFunctionWithKeywords)(void (*)(void))m->meth)(self, lp_false_tuple, NULL);
    case METH_VARARGS:
        return m->meth(self, lp_false_tuple);
    case METH_O:
        return m->meth(self, Py_False);
    case METH_FASTCALL | METH_KEYWORDS: {
        PyObject *a = Py_False;
        return ((lp_fastkw_fn)(void (*)(void))m->meth)(self, &a, 1, NULL);
    }
    case METH_FASTCALL: {
        PyObject *a = Py_False;
        return ((lp_fast_fn)(void (*)(void))m->meth)(self, &a, 1);
    }
    default: {
        PyObject *a = Py_False;
        return lp_call_generic(m, self, &a, 1, NULL);
    }
    }
}

/* Whether what an acquire returned means "acquired": True, or any other true
 * value (threading's Python RLock returns 1 for a reentrant acquire). */
int lp_acquired_other(PyObject *r);
#define LP_ACQUIRED(r) (LP_LIKELY((r) == Py_True) || lp_acquired_other(r))

/* m(self, *args, **kw) as the caller gave them (vectorcall convention) */
static inline PyObject *
lp_call(const lp_method *m, PyObject *self, PyObject *const *args,
        Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs == 0 && kwnames == NULL) {
        return lp_call0(m, self);
    }
    if ((m->flags & LP_METH_KINDS) == (METH_FASTCALL | METH_KEYWORDS)) {
        return ((lp_fastkw_fn)(void (*)(void))m->meth)(self, args, nargs, kwnames);
    }
    return lp_call_generic(m, self, args, nargs, kwnames);
}

/* ------------------------------------------------------------------------ */
/* The wrapper object: one struct for every generated type                  */
/* ------------------------------------------------------------------------ */

struct lp_lockrec;

typedef struct {
    PyObject_HEAD
    PyObject *inner;            /* the wrapped stdlib object */
    PyObject *weakreflist;
    struct lp_lockrec *rec;     /* runtime record, made on the first recorded event */
    uint32_t site;              /* creation site id (0: unknown) */
#ifdef Py_GIL_DISABLED
    /* split by writer: depth is the owner's alone; flags are set and
     * cleared by several threads, with atomic read-modify-writes */
    uint32_t depth;             /* recursion depth, reentrant types only */
    uint8_t flags;              /* LP_W_*: read and written with LP_WF_* */
#else
    uint32_t depth : 27;        /* recursion depth, reentrant types only */
    uint32_t flags : 5;         /* LP_W_*: read and written with LP_WF_* */
#endif
} lp_wrapper;

/* the wrapper's flags: one relaxed atomic load or read-modify-write on a
 * free-threaded build (several threads write them), plain under the GIL */
#ifdef Py_GIL_DISABLED
#  define LP_WF(w) ((int)__atomic_load_n(&(w)->flags, __ATOMIC_RELAXED))
#  define LP_WF_SET(w, f) ((void)__atomic_fetch_or(&(w)->flags, (uint8_t)(f), __ATOMIC_RELAXED))
#  define LP_WF_CLEAR(w, f) ((void)__atomic_fetch_and(&(w)->flags, (uint8_t)~(f), __ATOMIC_RELAXED))
#else
#  define LP_WF(w) ((int)(w)->flags)
#  define LP_WF_SET(w, f) ((void)((w)->flags |= (f)))
#  define LP_WF_CLEAR(w, f) ((void)((w)->flags &= ~(f)))
#endif

/* Wrapper of a Condition whose acquire/release are its lock's methods, bound
 * per instance: when they are C methods or Python functions, they are
 * resolved once at wrap time and called directly (lock == NULL: call by
 * name on the Condition). */
/* The acquire/release of one lock type (its C methods, or the Python
 * functions its bound methods hold), resolved once and shared by every
 * Condition over such a lock (kept for the process's lifetime). */
typedef struct {
    PyTypeObject *type;
    lp_method acquire;
    lp_method release;
} lp_lock_methods;

typedef struct {
    lp_wrapper base;
    PyObject *lock;             /* the object the cached methods are bound to */
    const lp_lock_methods *methods;
} lp_cond_wrapper;

/* lp_order.c: lock-order inversion detection */
extern int lp_lock_order;
/* holds are tracked (lock_order, or the hang doctor): every acquire calls
 * lp_flush_acquire, every release of a held lock lp_order_released */
extern int lp_track_holds;
extern uint32_t lp_max_order_edges;
void lp_order_acquired(lp_wrapper *w, int kind, int forever);
/* an acquire that waits without end is about to block (lock_order on) */
void lp_order_attempt(lp_wrapper *w, int kind);
void lp_order_reacquired(lp_wrapper *w, int kind);
/* the same as events (lp_event.c): for the hot path's slow paths */
void lp_wait_unbounded(lp_wrapper *w, int kind);
void lp_reacquired(lp_wrapper *w, int kind);
void lp_order_released(lp_wrapper *w);
void lp_order_forget(lp_wrapper *w);
void lp_order_after_fork(void);
int lp_order_setup(PyObject *module);
/* the holders of a lock now: list of (ident, task id or None, file, line, func) */
PyObject *lp_order_holders_of(lp_wrapper *w);
/* lockprof.order_exempt(): wrapper w's class is not ordered (0: no record) */
int lp_order_exempt(lp_wrapper *w, int kind);

/* lp_hang.c: the hang doctor */
extern int64_t lp_hang_ns;
void lp_hang_wait_begin(lp_wrapper *w, int kind, int bounded);
void lp_hang_wait_end(lp_wrapper *w, int kind);
void lp_hang_after_fork(void);
int lp_hang_setup(PyObject *module);

/* lp_pbread.c: protobuf field scanning for the pprof reader */
int lp_pbread_setup(PyObject *module);

void lp_cond_bind(lp_cond_wrapper *w);
/* The object a Condition's acquire or release calls, and the method (*m):
 * its lock and the lock's resolved method when lp_cond_bind found them, else
 * the wrapped Condition and *m unchanged. */
static inline PyObject *
lp_cond_target(lp_wrapper *self, int release, const lp_method **m)
{
    lp_cond_wrapper *c = (lp_cond_wrapper *)self;
    if (LP_LIKELY(c->lock != NULL)) {
        *m = release ? &c->methods->release : &c->methods->acquire;
        return c->lock;
    }
    return self->inner;
}
int lp_cond_traverse(lp_cond_wrapper *self, visitproc visit, void *arg);
int lp_cond_clear(lp_cond_wrapper *self);

#define LP_W_HOLDING   0x1      /* a sampled acquire awaits its release */
#define LP_W_WAITERS   0x4      /* a profiled acquire is blocked on this lock:
                                   its release stack is charged the delay */
#define LP_W_ORDER     0x10     /* held in lock-order tracking (lp_order.c) */
#define LP_W_ON_RELEASE (LP_W_HOLDING | LP_W_WAITERS | LP_W_ORDER)
#define LP_W_DELEGATED 0x2      /* a Condition over a lockprof-wrapped lock:
                                   the lock records, the Condition does not */
#define LP_W_ATTRS_SET 0x8      /* the program set an attribute through this
                                   wrapper (lp_attrs.c) */

/* ------------------------------------------------------------------------ */
/* The threading model: a thread's own state, and the tables' one mutex      */
/* ------------------------------------------------------------------------ */

/* Everything the hot path writes is the running thread's own: its sampling
 * countdown.  On a free-threaded build (Py_GIL_DISABLED) this struct is
 * thread-local (initial-exec TLS: one %fs-relative access, as cheap as a
 * global); under the GIL it is one process-wide struct, which the GIL
 * serialises, exactly as cheap as before.  Owned by lp_thread.c. */
typedef struct lp_tstate {
    int64_t countdown;          /* events until the next sampled one; starts
                                   at 0 so a thread's first event draws */
    int64_t order_countdown;    /* the same, while lock order sees every acquire */
    double draw_rate;           /* the rate countdown was drawn under */
    double order_draw_rate;     /* the rate order_countdown was drawn under */
    double sampled_rate;        /* the rate of the gap that ran out at this
                                   thread's latest sampled event: its weight
                                   is 1 / sampled_rate (max_overhead changes
                                   the rate; lp_budget.c) */
    uint64_t rng;               /* this thread's splitmix64 state */
    uint32_t gen;               /* the sampling settings it drew under */
    uint32_t seed_gen;          /* the seed it drew from */
    uint32_t depth;             /* lp_enter() nesting (free-threaded builds) */
    int registered;             /* in lp_thread.c's registry */
    struct lp_ctx *ctx;         /* the event being recorded (lp_stack.h) */
    struct lp_tstate *prev, *next;
} lp_tstate;

#ifdef Py_GIL_DISABLED
extern _Thread_local lp_tstate lp_ts __attribute__((tls_model("initial-exec")));
/* lp_tables_mutex (lp_thread.c), the one mutex guarding every table of the runtime (records, sites,
 * stacks, samples, labels, lock order, hang doctor waits, caches): taken on
 * sampled or contended events, on lock creation and by the Python API; never
 * on the unsampled, uncontended path.  It stands where the GIL stood: it is
 * reentrant within a thread (a garbage collection inside a flush may run a
 * finaliser that takes a profiled lock), and a wait that blocks while this
 * thread holds it gives it up for the wait (lp_suspend/lp_resume). */
void lp_tables_lock(void);
void lp_tables_unlock(void);
/* out of line (lp_thread.c): only sampled and contended events call them,
 * and callgrind counts what the mutex costs them (bench.instructions) */
void lp_enter(void);
void lp_exit(void);
/* around a wait that blocks: the mutex is not held across it */
static inline uint32_t
lp_suspend(void)
{
    uint32_t d = lp_ts.depth;
    if (d != 0) {
        lp_ts.depth = 0;
        lp_tables_unlock();
    }
    return d;
}
static inline void
lp_resume(uint32_t d)
{
    if (d != 0) {
        lp_tables_lock();
        lp_ts.depth = d;
    }
}
/* settings written by configure(), read by every thread */
#  define LP_LOAD(x) __atomic_load_n(&(x), __ATOMIC_RELAXED)
#  define LP_STORE(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELAXED)
#  define LP_LOAD_ACQ(x) __atomic_load_n(&(x), __ATOMIC_ACQUIRE)
#  define LP_STORE_REL(x, v) __atomic_store_n(&(x), (v), __ATOMIC_RELEASE)
#else
extern lp_tstate lp_ts;
#  define lp_enter() ((void)0)
#  define lp_exit() ((void)0)
#  define lp_suspend() ((uint32_t)0)
#  define lp_resume(d) ((void)(d))
#  define LP_LOAD(x) (x)
#  define LP_STORE(x, v) ((void)((x) = (v)))
#  define LP_LOAD_ACQ(x) (x)
#  define LP_STORE_REL(x, v) ((void)((x) = (v)))
#endif

/* PyModule_AddFunctions, each function run holding the tables' mutex on a
 * free-threaded build (lp_thread.c) */
int lp_add_functions(PyObject *module, PyMethodDef *defs);

/* Sampling: each event is sampled independently with probability
 * sample_rate: a thread counts down a geometric gap it drew itself, and the
 * event that brings its countdown to zero is sampled.  The countdown is the
 * thread's own (above): a load, a subtraction and a store. */
extern int lp_active;           /* profiling is on: contention is timed */

/* Fault injection for the tests of "a failure inside profiling never reaches
 * the program": while lp_faults > 0, each fallible step of the runtime
 * (allocations, wrapping, name lookup) fails as if out of memory. */
extern int64_t lp_faults;
static inline int
lp_fault(void)
{
    if (LP_LIKELY(LP_LOAD(lp_faults) <= 0)) {
        return 0;
    }
    LP_STORE(lp_faults, LP_LOAD(lp_faults) - 1);
    return 1;
}

int lp_sample_expired(void);    /* countdown ran out: 1 if this event is sampled */

#ifdef Py_GIL_DISABLED
/* configure() may zero another thread's countdown (relaxed stores): the
 * owner's load and store are atomic too, still a plain mov each */
static inline int64_t
lp_countdown_dec(void)
{
    int64_t c = __atomic_load_n(&lp_ts.countdown, __ATOMIC_RELAXED) - 1;
    __atomic_store_n(&lp_ts.countdown, c, __ATOMIC_RELAXED);
    return c;
}
#  define LP_SAMPLED() (LP_UNLIKELY(lp_countdown_dec() <= 0) && lp_sample_expired())
#else
#  define LP_SAMPLED() (LP_UNLIKELY(--lp_ts.countdown <= 0) && lp_sample_expired())
#endif

static inline int64_t
lp_now_ns(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

/* failures inside profiling, absorbed: counters()["errors"] (lp_thread.c) */
void lp_count_error(void);
uint64_t lp_errors(void);
void lp_errors_reset(void);

/* ------------------------------------------------------------------------ */
/* Flush functions: called on sampled or contended events only               */
/* ------------------------------------------------------------------------ */

/* A sampled acquisition: count it, start the hold of this owner. */
/* an acquire(...) call of these arguments can wait without end: blocking,
 * and no timeout */
int lp_waits_forever(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);
/* forever: the acquire could have waited without end (no timeout, blocking) */
void lp_flush_acquire(lp_wrapper *w, int kind, int start_hold, int forever);
/* with lock order on: whether this acquire is also a sampled one */
int lp_order_sampled(void);
/* A profiled acquire is about to block (or an asyncio one suspended). */
void lp_wait_begin(lp_wrapper *w, int kind, int bounded);   /* bounded: a timeout */
/* ... and did not complete (an exception, a cancellation). */
void lp_wait_abort(lp_wrapper *w);
/* A contended acquisition (always recorded), wait_ns spent blocked; ends the
 * wait lp_wait_begin started. */
void lp_flush_contended(lp_wrapper *w, int kind, int64_t wait_ns, int acquired);
/* Release of a wrapper with a sampled hold pending or a waiter blocked. */
void lp_flush_release(lp_wrapper *w, int64_t t_release);
/* A Condition wait that returned after wait_ns. */
void lp_flush_cond_wait(lp_wrapper *w, int kind, int64_t wait_ns);

/* ------------------------------------------------------------------------ */
/* Shared method bodies (the generated methods call these)                   */
/* ------------------------------------------------------------------------ */

/* The caller's acquire passed arguments.  Performs the real acquire on
 * `target` (the wrapped object, or a Condition's lock) exactly as asked,
 * timing it when it blocks.  Returns the inner result. */
PyObject *lp_acquire_slow(lp_wrapper *w, int kind, PyObject *target,
                          const lp_method *acquire, const lp_method *release,
                          PyObject *const *args, Py_ssize_t nargs,
                          PyObject *kwnames);

/* The argument-free try failed: the whole contended acquire in one call
 * (lp_event.c: the wait's begin, the argument-free acquire, timed, and its
 * end), its helpers inlined. */
PyObject *lp_acquire_waited(lp_wrapper *w, int kind, PyObject *target, const lp_method *acquire);

/* obj.<name>(*args, **kw), looked up on obj: for the calls the wrappers
 * leave to the wrapped object (an __exit__ called with arguments no `with`
 * passes, whose errors must be the wrapped method's own) */
PyObject *lp_call_named(PyObject *obj, const char *name, PyObject *const *args,
                        Py_ssize_t nargs, PyObject *kwnames);

/* Condition.wait / wait_for: call through, time it, record it. */
PyObject *lp_cond_wait(lp_wrapper *w, int kind, const lp_method *m,
                       PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames);

/* asyncio: an awaitable driving the inner coroutine; see lp_async.c */
enum { LP_AW_ACQUIRE = 0, LP_AW_AENTER = 1, LP_AW_WAIT = 2, LP_AW_CALL = 3,
       LP_AW_AENTER_SELF = 4 /* an __aenter__ that returns the lock */ };
typedef PyObject *(*lp_release_fn)(lp_wrapper *w);
/* `target`: the object `m` is called on (the wrapped object, or the lock
 * whose acquire a Condition calls directly) */
PyObject *lp_awaitable_new(lp_wrapper *w, PyObject *target, int kind, int mode,
                           const lp_method *m, PyObject *const *args,
                           Py_ssize_t nargs, PyObject *kwnames,
                           lp_release_fn release);

/* RLock._acquire_restore(state): the recursion count inside `state` */
uint32_t lp_state_count(PyObject *state);
void lp_record_forget_holds(lp_wrapper *w);

/* ------------------------------------------------------------------------ */
/* Slots shared by every wrapper type                                        */
/* ------------------------------------------------------------------------ */

int lp_wrapper_traverse(lp_wrapper *self, visitproc visit, void *arg);
int lp_wrapper_clear(lp_wrapper *self);
void lp_wrapper_dealloc(lp_wrapper *self);
PyObject *lp_wrapper_repr(lp_wrapper *self);
PyObject *lp_wrapper_str(lp_wrapper *self);
/* lp_attrs.c: the attribute model of the wrappers of Python classes */
int lp_wrapper_setattro_forward(PyObject *self, PyObject *name, PyObject *value);
PyObject *lp_wrapper_get_dict(lp_wrapper *self, void *closure);
int lp_attrs_install(PyTypeObject *wtype, PyTypeObject *owner);
int lp_attrs_setup(PyObject *module);
/* lp_names.c: the class attribute `name` found along tp's MRO, unbound
 * (borrowed), or NULL (with an exception when the lookup failed) */
PyObject *lp_raw_class_attr(PyTypeObject *tp, PyObject *name);
PyObject *lp_wrapper_get_class(lp_wrapper *self, void *closure);
PyObject *lp_wrapper_reduce_ex(lp_wrapper *self, PyObject *proto);
/* the same, for a lock a child process profiles once unpickled: the wrapped
 * object's reduction, handed to lockprof._unpickle.rebuild with the kind's
 * key and the lock's name */
PyObject *lp_wrapper_reduce_ex_rewrap(lp_wrapper *self, PyObject *proto, int kind);

/* ------------------------------------------------------------------------ */
/* Registration of the generated types                                       */
/* ------------------------------------------------------------------------ */

/* One entry per spec entry, filled by the generated module file. */
typedef struct {
    const char *key;             /* spec key, e.g. "threading.Lock" */
    const char *factory_module;  /* where the factory is patched (NULL: made_by) */
    const char *factory_name;
    const char *made_by;         /* key whose patched factory returns this class */
    const char *inner_type;      /* dotted path of the wrapped class */
    const char *type_module;     /* its __module__ */
    const char *type_name;       /* __name__ (and tp_name) when not the spec's
                                  * dotted name: a Python class's bare name */
    PyType_Spec *spec;
    int (*init_methods)(PyObject *inner_type);
    PyTypeObject **type_slot;    /* where the made type is stored */
    PyObject **inner_class;      /* where the wrapped class is stored */
    int lazy;                    /* resolved once the program imported its module */
    int is_async;
    int is_condition;
    int binds_lock;              /* the type is an lp_cond_wrapper */
    int forward_attrs;           /* a Python class's: its other attributes are
                                  * forwarded (lp_attrs.c) */
    int kind;                    /* its index, the LP_KIND_* of its records */
    const char *wait_yield;      /* dotted path of the class whose yielded
                                  * instance begins an async wait, or NULL
                                  * (any value but a bare yield) */
    int unwrap_args;             /* wrapper arguments reach the class as the
                                  * objects they wrap */
} lp_typedef;

/* The wrapped class of `d`, looked up (and its methods resolved) on first
 * use: 1 when resolved, 0 when its module is not imported yet (a lazy entry;
 * lockprof never imports it), -1 with an exception set. */
int lp_resolve_def(const lp_typedef *d);
/* The same, where the class must be there: 0, or -1 with an exception
 * (`exc_type` when its module is not imported yet). */
int lp_require_def(const lp_typedef *d, PyObject *exc_type);

/* The class whose yielded instance begins a wait for entries of `kind` with
 * a wait_yield (borrowed; resolved with the entry), or NULL. */
PyObject *lp_wait_yield_class(int kind);

/* Runtime module setup: module helpers, the factory type, the awaitable. */
int lp_runtime_init(PyObject *module, const lp_typedef *defs, int ndefs);

/* Makes a wrapper around `inner` of the given type, recording the site. */
PyObject *lp_wrap(PyTypeObject *type, PyObject *inner);

#endif /* LOCKPROF_RUNTIME_H */
