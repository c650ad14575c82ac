/* lockprof runtime: stack capture and interning, and the per-(lock, stack)
 * sample table.  Runs on sampled or contended events only.
 *
 * A stack is captured from the current frame with the public frame API, as
 * (code object, instruction offset) pairs; the line is computed only when a
 * profile is read.  A stack seen before costs a hash and a compare, no
 * allocation.
 *
 * Owns: the stack table, the sample rows, the thread and task label tables,
 * the thread-label cache, the cache of tasks' labels by generated name.
 * Guarded by: the tables' mutex (lp_tables_mutex, lp_thread.c) on a free-
 * threaded build, the GIL otherwise (reached only from the flush functions
 * and the API). */
#include "lp_stack.h"
#include "lp_index.h"
#include "lp_record.h"

#if PY_VERSION_HEX >= 0x030B0000
#  define LP_HAVE_LASTI 1
#endif

#define LP_FRAMES_CAP LP_MAX_FRAMES_CAP


int lp_max_frames = 64;

lp_stack *lp_stacks = NULL;              /* index 0 unused */
uint32_t lp_nstacks = 1;
static uint32_t capstacks = 0;
static lp_index stack_index = {NULL, 0};
uint32_t lp_max_stacks = 1u << 18;
uint64_t lp_dropped_stacks = 0;

static uint32_t
stack_entry_hash(uint32_t id)
{
    return (uint32_t)lp_stacks[id].hash;
}

static uint32_t
stack_intern(const lp_frame *frames, uint32_t n, uint32_t omitted)
{
    uint64_t h = 1469598103934665603ULL ^ omitted;
    for (uint32_t i = 0; i < n; i++) {
        h = (h ^ (uint64_t)(uintptr_t)frames[i].code) * 1099511628211ULL;
        h = (h ^ (uint64_t)(unsigned)frames[i].pos) * 1099511628211ULL;
    }
    if (lp_index_reserve(&stack_index, lp_nstacks, 1, lp_nstacks, stack_entry_hash) < 0) {
        return 0;
    }
    uint32_t j = (uint32_t)h & stack_index.mask;
    while (stack_index.slots[j]) {
        const lp_stack *s = &lp_stacks[stack_index.slots[j]];
        if (s->hash == h && s->nframes == n && s->omitted == omitted &&
            memcmp(s->frames, frames, n * sizeof(lp_frame)) == 0) {
            return stack_index.slots[j];
        }
        j = (j + 1) & stack_index.mask;
    }
    if (lp_nstacks >= lp_max_stacks) {
        lp_dropped_stacks++;
        return 0;
    }
    if (lp_nstacks >= capstacks) {
        uint32_t nc = capstacks ? capstacks * 2 : 256;
        lp_stack *ns = lp_fault() ? NULL : PyMem_Realloc(lp_stacks, nc * sizeof(lp_stack));
        if (ns == NULL) {
            lp_dropped_stacks++;
            return 0;
        }
        lp_stacks = ns;
        capstacks = nc;
    }
    lp_frame *copy = lp_fault() ? NULL : PyMem_Malloc((n ? n : 1) * sizeof(lp_frame));
    if (copy == NULL) {
        lp_dropped_stacks++;
        return 0;
    }
    for (uint32_t i = 0; i < n; i++) {
        copy[i].code = Py_NewRef(frames[i].code);
        copy[i].pos = frames[i].pos;
    }
    uint32_t id = lp_nstacks++;
    lp_stacks[id].hash = h;
    lp_stacks[id].nframes = n;
    lp_stacks[id].omitted = omitted;
    lp_stacks[id].frames = copy;
    stack_index.slots[j] = id;
    return id;
}

/* Libraries' functions that hand a function to a worker thread (anyio's
 * run_sync_in_worker_thread, trio's to_thread_run_sync): a stack through
 * one of them shows the function handed over (a sync endpoint) as a frame
 * of its own, at its `def` line, just inside the library's frame.  A tuple
 * of (code, name of the local holding the function) pairs, swapped whole by
 * set_dispatch; the tuples replaced are kept, since a capture may run
 * outside the tables' mutex (lp_ctx_prepare). */
static PyObject *dispatch = NULL;
static PyObject *dispatch_old = NULL;     /* list of the replaced tuples */

int
lp_stack_set_dispatch(PyObject *pairs)
{
    if (dispatch_old == NULL && (dispatch_old = PyList_New(0)) == NULL) {
        return -1;
    }
    PyObject *prev = LP_LOAD_ACQ(dispatch);
    if (prev != NULL && PyList_Append(dispatch_old, prev) < 0) {
        return -1;
    }
#ifdef Py_GIL_DISABLED
    __atomic_store_n(&dispatch, Py_NewRef(pairs), __ATOMIC_RELEASE);
#else
    dispatch = Py_NewRef(pairs);
#endif
    Py_XDECREF(prev);           /* still referenced by dispatch_old */
    return 0;
}

/* the function a dispatching frame hands over, unwrapped to its code
 * (functools.partial, bound methods), or NULL (borrowed from the frame's
 * objects, alive while the frame is) */
static PyObject *
dispatched_code(PyFrameObject *f, PyObject *varname)
{
    PyObject *fn;
#if PY_VERSION_HEX >= 0x030C0000
    fn = PyFrame_GetVar(f, varname);
#elif PY_VERSION_HEX >= 0x030B0000
    PyObject *locals = PyFrame_GetLocals(f);
    fn = locals != NULL ? PyObject_GetItem(locals, varname) : NULL;
    Py_XDECREF(locals);
#else
    fn = NULL;
    if (PyFrame_FastToLocalsWithError(f) == 0 && f->f_locals != NULL) {
        fn = PyObject_GetItem(f->f_locals, varname);
    }
#endif
    PyObject *code = NULL;
    for (int depth = 0; fn != NULL && depth < 4; depth++) {
        if (PyFunction_Check(fn)) {
            code = PyFunction_GetCode(fn);      /* borrowed */
            break;
        }
        PyObject *inner = NULL;
        if (PyMethod_Check(fn)) {
            inner = Py_NewRef(PyMethod_GET_FUNCTION(fn));
        }
        else if (PyObject_HasAttrString(fn, "func") && PyObject_HasAttrString(fn, "keywords")) {
            inner = PyObject_GetAttrString(fn, "func");     /* functools.partial */
        }
        Py_DECREF(fn);
        fn = inner;
    }
    /* the function object may be a temporary (a partial's own): the code
     * object lives on in its function's definition */
    Py_XDECREF(fn);
    if (PyErr_Occurred()) {
        PyErr_Clear();
    }
    return code;
}

static PyObject *
dispatch_var(PyCodeObject *code)
{
    PyObject *pairs = LP_LOAD_ACQ(dispatch);
    if (pairs == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(pairs); i++) {
        PyObject *pair = PyTuple_GET_ITEM(pairs, i);
        if (PyTuple_GET_ITEM(pair, 0) == (PyObject *)code) {
            return PyTuple_GET_ITEM(pair, 1);
        }
    }
    return NULL;
}

static void
capture(lp_frame *buf, uint32_t *np, uint32_t *omittedp)
{
    uint32_t n = 0, omitted = 0;
    int maxf = LP_LOAD(lp_max_frames);
    uint32_t limit = maxf < LP_FRAMES_CAP ? (uint32_t)maxf : LP_FRAMES_CAP;
    PyFrameObject *f = PyEval_GetFrame();   /* borrowed */
    Py_XINCREF(f);
    while (f != NULL) {
        if (n < limit) {
            /* the frames on the stack keep their code objects alive while
             * we walk it: the pointer is borrowed until interned */
            PyCodeObject *code = PyFrame_GetCode(f);
            PyObject *var = dispatch_var(code);
            PyObject *handed = var != NULL ? dispatched_code(f, var) : NULL;
            if (handed != NULL && n + 1 < limit) {
                /* the function handed to a worker thread, at its def line */
                buf[n].code = handed;
#ifdef LP_HAVE_LASTI
                buf[n].pos = -1;    /* PyCode_Addr2Line: the def line */
#else
                buf[n].pos = ((PyCodeObject *)handed)->co_firstlineno;
#endif
                n++;
            }
            buf[n].code = (PyObject *)code;
#ifdef LP_HAVE_LASTI
            buf[n].pos = PyFrame_GetLasti(f);
#else
            buf[n].pos = PyFrame_GetLineNumber(f);
#endif
            Py_DECREF(code);
            n++;
        }
        else {
            omitted++;
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    *np = n;
    *omittedp = omitted;
}

uint32_t
lp_stack_here(void)
{
    lp_ctx *c = lp_ts.ctx;
    if (c != NULL) {
        return stack_intern(c->frames, c->nframes, c->omitted);
    }
    lp_frame buf[LP_FRAMES_CAP];
    uint32_t n, omitted;
    capture(buf, &n, &omitted);
    return stack_intern(buf, n, omitted);
}

/* ------------------------------------------------------------------------ */
/* labels: the thread and task names rows are keyed by                      */
/* ------------------------------------------------------------------------ */

/* A row's thread and task come from code or from names the program chose,
 * never from instance counters, so that the rows follow the program's code
 * paths and not its traffic:
 *   - a thread keeps the name the program gave it; threading's generated
 *     names collapse to their stable part ("Thread-12 (worker)" is
 *     "Thread (worker)", "Dummy-4" is "Dummy", a ThreadPoolExecutor's
 *     "ThreadPoolExecutor-0_3" or "db_3" is "ThreadPoolExecutor" or "db");
 *   - a task keeps the name the program gave it; an auto-named one
 *     ("Task-123") is named after its coroutine's qualified name, and an
 *     auto-named gevent Greenlet after its function's.
 * Labels are interned (at most max_threads / max_tasks of each; past that,
 * events are labelled "<other>" and counted).  The exact thread id of a
 * label is kept while one thread only has carried it (MainThread, a named
 * long-lived thread), at no cost in rows. */

typedef struct {
    PyObject *names;            /* list: label id -> str */
    PyObject *ids;              /* dict: str -> label id */
    uint32_t max;
    uint64_t dropped;           /* events labelled <other>: the table was full */
    unsigned long *ident;       /* thread labels: the one thread that carried it */
    unsigned long *native;
    uint8_t *multi;             /* several threads carried it */
    uint32_t cap;
} lp_labels;

static lp_labels thread_labels = {NULL, NULL, 1u << 12, 0, NULL, NULL, NULL, 0};
static lp_labels task_labels = {NULL, NULL, 1u << 12, 0, NULL, NULL, NULL, 0};

static lp_labels label_sets = {NULL, NULL, 1024, 0, NULL, NULL, NULL, 0};
static uint32_t label_value_max = 200;      /* characters of a label value kept */
static uint64_t label_values_cut = 0;       /* events whose label values were cut (atomic) */

/* the id of `name` in t (reference borrowed), or UINT32_MAX when it is not
 * there; 0 tables are made on first use (LP_LABEL_NONE when that fails) */
static uint32_t
label_find(lp_labels *t, PyObject *name)
{
    if (t->ids == NULL) {
        t->ids = PyDict_New();
        t->names = PyList_New(0);
        if (t->ids == NULL || t->names == NULL) {
            Py_CLEAR(t->ids);
            Py_CLEAR(t->names);
            PyErr_Clear();
            lp_count_error();
            return LP_LABEL_NONE;
        }
    }
    PyObject *s = PyDict_GetItemWithError(t->ids, name);
    if (s != NULL) {
        return (uint32_t)PyLong_AsUnsignedLong(s);
    }
    PyErr_Clear();
    return UINT32_MAX;
}

/* name appended to t as a new label (no cap checked here) */
static uint32_t
label_append(lp_labels *t, PyObject *name)
{
    uint32_t n = (uint32_t)PyList_GET_SIZE(t->names);
    if (t == &thread_labels) {
        if (n >= t->cap) {
            uint32_t nc = t->cap ? t->cap * 2 : 16;
            unsigned long *ni = PyMem_Realloc(t->ident, nc * sizeof(unsigned long));
            if (ni != NULL) {
                t->ident = ni;
            }
            unsigned long *nn = PyMem_Realloc(t->native, nc * sizeof(unsigned long));
            if (nn != NULL) {
                t->native = nn;
            }
            uint8_t *nm = PyMem_Realloc(t->multi, nc);
            if (nm != NULL) {
                t->multi = nm;
            }
            if (ni == NULL || nn == NULL || nm == NULL) {
                lp_count_error();
                return LP_LABEL_NONE;
            }
            t->cap = nc;
        }
        t->ident[n] = 0;
        t->native[n] = 0;
        t->multi[n] = 0;
    }
    PyObject *id = PyLong_FromUnsignedLong(n);
    if (id == NULL || PyDict_SetItem(t->ids, name, id) < 0 || PyList_Append(t->names, name) < 0) {
        Py_XDECREF(id);
        PyErr_Clear();
        PyDict_DelItem(t->ids, name);
        PyErr_Clear();
        lp_count_error();
        return LP_LABEL_NONE;
    }
    Py_DECREF(id);
    return n;
}

/* the label id of `name` (a str; reference borrowed), interned */
static uint32_t
label_intern(lp_labels *t, PyObject *name)
{
    uint32_t id = label_find(t, name);
    if (id != UINT32_MAX) {
        return id;
    }
    if ((uint32_t)PyList_GET_SIZE(t->names) >= t->max) {
        t->dropped++;
        return LP_LABEL_OTHER;
    }
    return label_append(t, name);
}

/* Past max_label_sets, a set is recorded as its keys with the value
 * "<other>", so that grouping by any key keeps the overflow apart; those
 * sets are keyed by label names, which code writes, and past this many of
 * them every overflow shares one set, (("<other>", "<other>"),). */
#define LP_OVERFLOW_SETS 16

/* Sets seen last, by the identity of their keys and values: lockprof.labels
 * makes one tuple per `with`, and the middleware's late values resolve to
 * the same route str each time, but a dict lookup would hash the tuple and
 * its pairs again on every event (tuples do not cache their hash) and
 * compare them item by item.  Holds strong references to the sets (of strs
 * only), at most LP_SETCACHE. */
#define LP_SETCACHE 64
static struct {
    PyObject *set;
    uint32_t id;
    int over;           /* past max_label_sets: each event counts as dropped */
} setcache[LP_SETCACHE];

static void
setcache_clear(void)
{
    for (int i = 0; i < LP_SETCACHE; i++) {
        Py_CLEAR(setcache[i].set);
    }
}

/* whether sets a and b hold the same key and value objects, in order */
static int
same_items(PyObject *a, PyObject *b)
{
    Py_ssize_t n = PyTuple_GET_SIZE(a);
    if (PyTuple_GET_SIZE(b) != n) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *pa = PyTuple_GET_ITEM(a, i), *pb = PyTuple_GET_ITEM(b, i);
        if (pa != pb && (PyTuple_GET_ITEM(pa, 0) != PyTuple_GET_ITEM(pb, 0) ||
                         PyTuple_GET_ITEM(pa, 1) != PyTuple_GET_ITEM(pb, 1))) {
            return 0;
        }
    }
    return 1;
}

static uint32_t labelset_find_or_add(PyObject *set);

/* the id of a request label set (a tuple of (key, value) str pairs, resolved
 * and cut; reference borrowed), interned; under the tables' mutex */
static uint32_t
labelset_intern(PyObject *set)
{
    uint64_t h = 1469598103934665603ULL;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(set); i++) {
        PyObject *pair = PyTuple_GET_ITEM(set, i);
        h = (h ^ (uint64_t)(uintptr_t)PyTuple_GET_ITEM(pair, 0)) * 1099511628211ULL;
        h = (h ^ (uint64_t)(uintptr_t)PyTuple_GET_ITEM(pair, 1)) * 1099511628211ULL;
    }
    uint32_t j = (uint32_t)(h ^ (h >> 29)) & (LP_SETCACHE - 1);
    if (setcache[j].set != NULL && same_items(setcache[j].set, set)) {
        label_sets.dropped += setcache[j].over;
        return setcache[j].id;
    }
    uint64_t dropped = label_sets.dropped;
    uint32_t id = labelset_find_or_add(set);
    if (id != LP_LABEL_NONE) {
        PyObject *old = setcache[j].set;
        setcache[j].set = Py_NewRef(set);
        setcache[j].id = id;
        setcache[j].over = label_sets.dropped != dropped;
        Py_XDECREF(old);
    }
    return id;
}

static uint32_t
labelset_find_or_add(PyObject *set)
{
    lp_labels *t = &label_sets;
    uint32_t id = label_find(t, set);
    if (id != UINT32_MAX) {
        return id;
    }
    uint32_t n = (uint32_t)PyList_GET_SIZE(t->names);
    if (n < t->max) {
        return label_append(t, set);
    }
    t->dropped++;
    Py_ssize_t k = PyTuple_GET_SIZE(set);
    PyObject *other = PyUnicode_InternFromString("<other>");
    PyObject *keyed = other != NULL ? PyTuple_New(n < t->max + LP_OVERFLOW_SETS - 1 ? k : 1)
                                    : NULL;
    if (keyed == NULL) {
        Py_XDECREF(other);
        PyErr_Clear();
        lp_count_error();
        return LP_LABEL_NONE;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(keyed); i++) {
        PyObject *key = n < t->max + LP_OVERFLOW_SETS - 1
                        ? PyTuple_GET_ITEM(PyTuple_GET_ITEM(set, i), 0) : other;
        PyObject *pair = PyTuple_Pack(2, key, other);
        if (pair == NULL) {
            Py_DECREF(keyed);
            Py_DECREF(other);
            PyErr_Clear();
            lp_count_error();
            return LP_LABEL_NONE;
        }
        PyTuple_SET_ITEM(keyed, i, pair);
    }
    Py_DECREF(other);
    id = label_find(t, keyed);
    if (id == UINT32_MAX) {
        id = n < t->max + LP_OVERFLOW_SETS ? label_append(t, keyed) : LP_LABEL_NONE;
    }
    Py_DECREF(keyed);
    return id;
}

/* "prefix-<digits>" at the start of s (n bytes): the offset after the
 * digits, or 0 */
static Py_ssize_t
after_counter(const char *s, Py_ssize_t n, const char *prefix)
{
    Py_ssize_t k = (Py_ssize_t)strlen(prefix);
    if (n <= k || memcmp(s, prefix, (size_t)k) != 0) {
        return 0;
    }
    Py_ssize_t i = k;
    while (i < n && s[i] >= '0' && s[i] <= '9') {
        i++;
    }
    return i > k ? i : 0;
}

/* n when s ends in "_<digits>", at the offset of the '_'; else 0 */
static Py_ssize_t
counter_suffix(const char *s, Py_ssize_t n)
{
    Py_ssize_t i = n;
    while (i > 0 && s[i - 1] >= '0' && s[i - 1] <= '9') {
        i--;
    }
    return (i < n && i > 1 && s[i - 1] == '_') ? i - 1 : 0;
}

/* whether `target` is concurrent.futures.thread's worker function */
static int
is_pool_worker(PyObject *target)
{
    if (target == NULL || !PyFunction_Check(target)) {
        return 0;
    }
    PyObject *mod = PyFunction_GetModule(target);     /* borrowed */
    return mod != NULL && PyUnicode_Check(mod) &&
           PyUnicode_CompareWithASCIIString(mod, "concurrent.futures.thread") == 0;
}

/* The stable part of a thread's name (new reference), given the name and
 * the Thread's instance dict (may be NULL). */
PyObject *
lp_thread_label_of(PyObject *name, PyObject *dict)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(name, &n);
    if (s == NULL) {
        PyErr_Clear();
        return Py_NewRef(name);
    }
    Py_ssize_t i;
    if ((i = after_counter(s, n, "Thread-")) > 0 || (i = after_counter(s, n, "Dummy-")) > 0) {
        /* threading's _newname: "Thread-N", "Thread-N (target)", "Dummy-N" */
        if (i == n || s[i] == ' ') {
            Py_ssize_t k = s[0] == 'T' ? 6 : 5;
            PyObject *head = PyUnicode_FromStringAndSize(s, k);
            PyObject *tail = head ? PyUnicode_FromStringAndSize(s + i, n - i) : NULL;
            PyObject *out = tail ? PyUnicode_Concat(head, tail) : NULL;
            Py_XDECREF(head);
            Py_XDECREF(tail);
            if (out == NULL) {
                PyErr_Clear();
                return Py_NewRef(name);
            }
            return out;
        }
    }
    if ((i = after_counter(s, n, "ThreadPoolExecutor-")) > 0 && i < n && s[i] == '_' &&
        counter_suffix(s, n) == i) {
        return PyUnicode_FromString("ThreadPoolExecutor");
    }
    /* a pool's "<thread_name_prefix>_N": only for the pool's own workers, a
     * program's "worker_3" is its choice */
    if ((i = counter_suffix(s, n)) > 0 && dict != NULL &&
        is_pool_worker(PyDict_GetItemString(dict, "_target"))) {
        PyObject *out = PyUnicode_FromStringAndSize(s, i);
        if (out == NULL) {
            PyErr_Clear();
            return Py_NewRef(name);
        }
        return out;
    }
    return Py_NewRef(name);
}

/* the current threading.Thread's label, read from its instance dict (no
 * user code); NULL when the thread is not one of threading's */
static PyObject *
current_thread_label(unsigned long ident)
{
    PyObject *label = NULL;
    PyObject *modname = PyUnicode_FromString("threading");
    PyObject *threading = modname ? PyImport_GetModule(modname) : NULL;
    Py_XDECREF(modname);
    if (threading == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *active = PyObject_GetAttrString(threading, "_active");
    Py_DECREF(threading);
    PyObject *key = PyLong_FromUnsignedLong(ident);
    PyObject *th = (active && key && PyDict_Check(active)) ? PyDict_GetItemWithError(active, key) : NULL;
    if (th != NULL) {
        PyObject *d = PyObject_GenericGetDict(th, NULL);
        if (d != NULL && PyDict_Check(d)) {
            PyObject *n = PyDict_GetItemString(d, "_name");
            if (n != NULL && PyUnicode_Check(n)) {
                label = lp_thread_label_of(n, d);
            }
        }
        Py_XDECREF(d);
    }
    Py_XDECREF(key);
    Py_XDECREF(active);
    PyErr_Clear();
    return label;
}

/* the label of each thread seen lately: a direct-mapped cache by thread
 * identity, so that the table does not grow with the threads a program
 * starts (a thread evicted and seen again reads its name again) */
#define LP_TCACHE 512
typedef struct {
    unsigned long ident, native;
    uint32_t label;
    uint32_t used;
} lp_tcache_entry;
static lp_tcache_entry tcache[LP_TCACHE];

uint32_t
lp_thread_slot(void)
{
    unsigned long ident = PyThread_get_thread_ident();
    unsigned long native = PyThread_get_thread_native_id();
    uint64_t h = ((uint64_t)ident * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)native * 0xC2B2AE3D27D4EB4FULL);
    lp_tcache_entry *e = &tcache[(h >> 40) & (LP_TCACHE - 1)];
    if (e->used && e->ident == ident && e->native == native) {
        return e->label;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *name = current_thread_label(ident);
    uint32_t label = LP_LABEL_NONE;
    if (name != NULL) {
        label = label_intern(&thread_labels, name);
        Py_DECREF(name);
    }
    PyErr_Restore(exc_type, exc_value, exc_tb);
    if (label < LP_LABEL_OTHER && thread_labels.ident != NULL) {
        if (thread_labels.ident[label] == 0 && !thread_labels.multi[label]) {
            thread_labels.ident[label] = ident;
            thread_labels.native[label] = native;
        }
        else if (thread_labels.ident[label] != ident || thread_labels.native[label] != native) {
            thread_labels.multi[label] = 1;
        }
    }
    e = &tcache[(h >> 40) & (LP_TCACHE - 1)];
    e->ident = ident;
    e->native = native;
    e->label = label;
    e->used = 1;
    return label;
}

void
lp_labels_after_fork(void)
{
    /* the child's threads are new threads: a label's single thread is not
     * known any more, and cached identities may be reused */
    memset(tcache, 0, sizeof(tcache));
    for (uint32_t i = 0; i < thread_labels.cap; i++) {
        thread_labels.ident[i] = 0;
        thread_labels.native[i] = 0;
        thread_labels.multi[i] = 0;
    }
}

/* ------------------------------------------------------------------------ */
/* asyncio tasks (and gevent greenlets): the current task's label           */
/* ------------------------------------------------------------------------ */

/* asyncio's C functions, looked up once _asyncio is imported: written once
 * under the tables' mutex, then published (asyncio_looked_up, a release
 * store) and only read, without the mutex, by any thread */
static PyObject *get_running_loop = NULL, *current_task = NULL, *current_tasks = NULL;
static int asyncio_looked_up = 0;
static PyObject *str_asyncio = NULL;    /* "_asyncio", made at setup */

/* Which modules are imported changes only when lockprof's import watch sees
 * a watched module (asyncio, gevent...) imported, or profiling starts: each
 * bumps modules_epoch (imports_changed()).  A lookup that found a module
 * missing is not made again until the epoch moves: sys.modules is not read
 * on every event of a program that uses neither asyncio nor gevent. */
static int modules_epoch = 1;
static int asyncio_missing_at = 0, gevent_missing_at = 0;

static PyObject *
lp_py_imports_changed(PyObject *mod, PyObject *unused)
{
#ifdef Py_GIL_DISABLED
    __atomic_fetch_add(&modules_epoch, 1, __ATOMIC_RELEASE);
#else
    modules_epoch++;
#endif
    Py_RETURN_NONE;
}

static void
asyncio_lookup(void)
{
    int epoch = LP_LOAD_ACQ(modules_epoch);
    if (LP_LOAD(asyncio_missing_at) == epoch) {
        return;                         /* not imported, and no import since */
    }
    PyObject *mod = PyImport_GetModule(str_asyncio);   /* only if already imported */
    if (mod == NULL) {
        PyErr_Clear();                  /* try again once asyncio is in use */
        LP_STORE(asyncio_missing_at, epoch);
        return;
    }
    lp_enter();
    if (!asyncio_looked_up) {
        get_running_loop = PyObject_GetAttrString(mod, "_get_running_loop");
        current_task = PyObject_GetAttrString(mod, "current_task");          /* 3.12+ */
        if (current_task == NULL) {
            PyErr_Clear();
            current_tasks = PyObject_GetAttrString(mod, "_current_tasks");   /* 3.9-3.11 */
        }
        PyErr_Clear();
#ifdef Py_GIL_DISABLED
        __atomic_store_n(&asyncio_looked_up, 1, __ATOMIC_RELEASE);
#else
        asyncio_looked_up = 1;
#endif
    }
    lp_exit();
    Py_DECREF(mod);
}

/* the __qualname__ of a coroutine, generator or function (new reference),
 * or NULL: only objects whose qualname is a plain field, so no user code */
static PyObject *
code_qualname(PyObject *o)
{
    if (o != NULL && PyMethod_Check(o)) {
        o = PyMethod_GET_FUNCTION(o);
    }
    if (o == NULL || !(PyCoro_CheckExact(o) || PyGen_CheckExact(o) || PyFunction_Check(o))) {
        return NULL;
    }
    PyObject *q = PyObject_GetAttrString(o, "__qualname__");
    if (q != NULL && !PyUnicode_Check(q)) {
        Py_CLEAR(q);
    }
    PyErr_Clear();
    return q;
}

/* the labels of tasks with asyncio's generated names, by the name's
 * identity (task_label_of); strong references, so a cached name is never
 * another task's */
static PyObject *str_get_name = NULL, *str_get_coro = NULL;     /* lp_stack_setup */
#define TASK_LABEL_CACHE 64
static struct {
    PyObject *name;
    PyObject *label;
} task_label_cache[TASK_LABEL_CACHE];

/* whether `name` is "<prefix><digits>", a generated name */
static int
is_counter_name(PyObject *name, const char *prefix)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(name, &n);
    if (s == NULL) {
        PyErr_Clear();
        return 0;
    }
    size_t k = strlen(prefix);
    if ((size_t)n <= k || memcmp(s, prefix, k) != 0) {
        return 0;
    }
    for (Py_ssize_t i = (Py_ssize_t)k; i < n; i++) {
        if (s[i] < '0' || s[i] > '9') {
            return 0;
        }
    }
    return 1;
}

/* gevent: the current greenlet's label (a str, new reference) when it is a
 * gevent.Greenlet (exactly: a subclass's `name` could be anyone's code), else
 * NULL; looked up only while gevent is imported */
static PyObject *str_gevent = NULL;     /* "gevent", made at setup */
static PyObject *greenlet_name(PyObject *getcurrent, PyObject *greenlet);
static PyObject *gevent_module = NULL, *gevent_getcurrent = NULL, *gevent_greenlet = NULL;

static PyObject *
current_greenlet_label(void)
{
    int epoch = LP_LOAD_ACQ(modules_epoch);
    if (LP_LOAD(gevent_missing_at) == epoch) {
        return NULL;                    /* not imported, and no import since */
    }
    PyObject *mod = PyImport_GetModule(str_gevent);
    if (mod == NULL) {
        PyErr_Clear();
        LP_STORE(gevent_missing_at, epoch);
        return NULL;
    }
    /* the cached functions, refreshed when gevent was re-imported: under the
     * tables' mutex, and taken as new references for the calls below */
    lp_enter();
    if (mod != gevent_module) {
        Py_CLEAR(gevent_getcurrent);
        Py_CLEAR(gevent_greenlet);
        LP_XSETREF(gevent_module, Py_NewRef(mod));
        gevent_getcurrent = PyObject_GetAttrString(mod, "getcurrent");
        gevent_greenlet = PyObject_GetAttrString(mod, "Greenlet");
        PyErr_Clear();
    }
    PyObject *getcurrent = Py_XNewRef(gevent_getcurrent);
    PyObject *greenlet = Py_XNewRef(gevent_greenlet);
    lp_exit();
    Py_DECREF(mod);
    PyObject *name = greenlet_name(getcurrent, greenlet);
    Py_XDECREF(getcurrent);
    Py_XDECREF(greenlet);
    return name;
}

static PyObject *
greenlet_name(PyObject *gevent_getcurrent, PyObject *gevent_greenlet)
{
    if (gevent_getcurrent == NULL || gevent_greenlet == NULL) {
        return NULL;
    }
    PyObject *g = PyObject_CallNoArgs(gevent_getcurrent);
    PyObject *name = NULL;
    if (g != NULL && (PyObject *)Py_TYPE(g) == gevent_greenlet) {
        name = PyObject_GetAttrString(g, "name");
        if (name != NULL && !PyUnicode_Check(name)) {
            Py_CLEAR(name);
        }
        if (name != NULL && is_counter_name(name, "Greenlet-")) {
            PyErr_Clear();
            PyObject *run = PyObject_GetAttrString(g, "_run");
            PyObject *q = code_qualname(run);
            Py_XDECREF(run);
            LP_XSETREF(name, q != NULL ? q : PyUnicode_FromString("Greenlet"));
        }
    }
    Py_XDECREF(g);
    PyErr_Clear();
    return name;
}

/* the label of an asyncio task (new reference) or NULL */
static PyObject *
task_label_of(PyObject *task)
{
    PyObject *name = PyObject_CallMethodNoArgs(task, str_get_name);
    if (name == NULL || !PyUnicode_Check(name)) {
        Py_XDECREF(name);
        PyErr_Clear();
        return NULL;
    }
    if (is_counter_name(name, "Task-")) {
        /* asyncio's generated name is one str per task: while the cache
         * holds it, its identity is that task's, and so is the label found
         * for it (the coroutine's qualname, which costs a few thousand
         * instructions to make) */
        uintptr_t slot = ((uintptr_t)name >> 4) % TASK_LABEL_CACHE;
        PyObject *label = NULL;
        lp_enter();
        if (task_label_cache[slot].name == name) {
            label = Py_NewRef(task_label_cache[slot].label);
        }
        lp_exit();
        if (label != NULL) {
            Py_DECREF(name);
            return label;
        }
        PyObject *coro = PyObject_CallMethodNoArgs(task, str_get_coro);
        PyObject *q = code_qualname(coro);
        Py_XDECREF(coro);
        PyErr_Clear();
        label = q != NULL ? q : PyUnicode_FromString("Task");
        if (label != NULL) {
            PyObject *old_name, *old_label;
            lp_enter();
            old_name = task_label_cache[slot].name;
            old_label = task_label_cache[slot].label;
            task_label_cache[slot].name = Py_NewRef(name);
            task_label_cache[slot].label = Py_NewRef(label);
            lp_exit();
            Py_XDECREF(old_name);
            Py_XDECREF(old_label);
        }
        Py_SETREF(name, label);
    }
    return name;
}

/* label of the current asyncio task (or gevent greenlet), LP_LABEL_NONE
 * when there is none */
/* the asyncio task running in this thread (new reference), or NULL */
PyObject *
lp_running_loop(void)
{
    if (!LP_LOAD_ACQ(asyncio_looked_up)) {
        asyncio_lookup();
        if (!LP_LOAD_ACQ(asyncio_looked_up)) {
            return NULL;
        }
    }
    PyObject *loop = get_running_loop != NULL ? PyObject_CallNoArgs(get_running_loop) : NULL;
    PyErr_Clear();
    if (loop == Py_None) {
        Py_CLEAR(loop);
    }
    return loop;
}

PyObject *
lp_current_task(void)
{
    PyObject *loop = lp_running_loop();
    PyObject *task = NULL;
    if (loop != NULL) {
        if (current_task != NULL) {
            task = PyObject_CallOneArg(current_task, loop);
        }
        else if (current_tasks != NULL && PyDict_Check(current_tasks)) {
            task = Py_XNewRef(PyDict_GetItemWithError(current_tasks, loop));
        }
    }
    PyErr_Clear();
    Py_XDECREF(loop);
    if (task == Py_None) {
        Py_CLEAR(task);
    }
    return task;
}

static uint32_t task_slot(void);

/* the current task's label slot */
uint32_t
lp_task_slot(void)
{
    return task_slot();
}

/* the running task's label (new reference), or NULL: none */
static PyObject *
task_label_now(void)
{
    PyObject *task = lp_current_task();
    PyObject *label = NULL;
    if (task != NULL && task != Py_None) {
        label = task_label_of(task);
    }
    else {
        /* no asyncio task: a gevent greenlet, when gevent is in use */
        label = current_greenlet_label();
    }
    Py_XDECREF(task);
    PyErr_Clear();
    return label;
}

/* ------------------------------------------------------------------------ */
/* request labels (lockprof.labels): read from their ContextVar             */
/* ------------------------------------------------------------------------ */

/* the ContextVar lockprof.labels sets, handed over once at import
 * (set_labels_var), then only read: published with a release store */
static PyObject *labels_var = NULL;

#ifdef Py_GIL_DISABLED
#  define LP_COUNT_ATOMIC(x) ((void)__atomic_fetch_add(&(x), 1, __ATOMIC_RELAXED))
#else
#  define LP_COUNT_ATOMIC(x) ((void)((x)++))
#endif

/* a dict's item as a new reference (NULL: none, no error set) */
static PyObject *
dict_item(PyObject *d, PyObject *key)
{
#if PY_VERSION_HEX >= 0x030D0000
    PyObject *v = NULL;
    if (PyDict_GetItemRef(d, key, &v) < 0) {
        PyErr_Clear();
        return NULL;
    }
    return v;
#else
    PyObject *v = PyDict_GetItemWithError(d, key);
    PyErr_Clear();
    return Py_XNewRef(v);
#endif
}

/* A label value the middleware resolves late (the route is known only once
 * the framework has routed the request): (mapping, key, (attr, ...),
 * fallback), read as mapping[key].attr... when that is a non-empty str, else
 * fallback.  A str value is itself.  New reference, or NULL: no value. */
static PyObject *
label_value(PyObject *v)
{
    if (PyUnicode_Check(v)) {
        return Py_NewRef(v);
    }
    if (!PyTuple_Check(v) || PyTuple_GET_SIZE(v) != 4 || !PyDict_Check(PyTuple_GET_ITEM(v, 0)) ||
        !PyTuple_Check(PyTuple_GET_ITEM(v, 2)) || !PyUnicode_Check(PyTuple_GET_ITEM(v, 3))) {
        return NULL;
    }
    PyObject *o = dict_item(PyTuple_GET_ITEM(v, 0), PyTuple_GET_ITEM(v, 1));
    PyObject *attrs = PyTuple_GET_ITEM(v, 2);
    for (Py_ssize_t i = 0; o != NULL && i < PyTuple_GET_SIZE(attrs); i++) {
        PyObject *next = o == Py_None ? NULL : PyObject_GetAttr(o, PyTuple_GET_ITEM(attrs, i));
        PyErr_Clear();
        Py_SETREF(o, next);
    }
    if (o != NULL && PyUnicode_Check(o) && PyUnicode_GET_LENGTH(o) > 0) {
        return o;
    }
    Py_XDECREF(o);
    return Py_NewRef(PyTuple_GET_ITEM(v, 3));
}

/* value cut to label_value_max characters (new reference) */
static PyObject *
label_cut(PyObject *value)
{
    Py_ssize_t max = (Py_ssize_t)LP_LOAD(label_value_max);
    if (PyUnicode_GET_LENGTH(value) <= max) {
        return Py_NewRef(value);
    }
    LP_COUNT_ATOMIC(label_values_cut);
    return PyUnicode_Substring(value, 0, max);
}

/* The current request labels, resolved and cut: a tuple of (key, value)
 * str pairs (new reference), or NULL when there are none.  Outside the
 * tables' mutex: a late value may run a property. */
static PyObject *
labels_now(void)
{
    PyObject *var = LP_LOAD_ACQ(labels_var);
    PyObject *set = NULL;
    if (var == NULL || PyContextVar_Get(var, NULL, &set) < 0 || set == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (!PyTuple_Check(set) || PyTuple_GET_SIZE(set) == 0) {
        Py_DECREF(set);
        return NULL;
    }
    Py_ssize_t n = PyTuple_GET_SIZE(set);
    Py_ssize_t max = (Py_ssize_t)LP_LOAD(label_value_max);
    Py_ssize_t i = 0;
    for (; i < n; i++) {
        /* the common case: every value a str within the cap, and the set is
         * the one lockprof.labels made (the same object all through a
         * request: interning finds it by identity) */
        PyObject *pair = PyTuple_GET_ITEM(set, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0)) ||
            !PyUnicode_Check(PyTuple_GET_ITEM(pair, 1)) ||
            PyUnicode_GET_LENGTH(PyTuple_GET_ITEM(pair, 1)) > max) {
            break;
        }
    }
    if (i == n) {
        return set;
    }
    PyObject *out = PyTuple_New(n);
    Py_ssize_t k = 0;
    for (i = 0; out != NULL && i < n; i++) {
        PyObject *pair = PyTuple_GET_ITEM(set, i);
        if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2 ||
            !PyUnicode_Check(PyTuple_GET_ITEM(pair, 0))) {
            continue;
        }
        PyObject *v = label_value(PyTuple_GET_ITEM(pair, 1));
        PyObject *cut = v != NULL ? label_cut(v) : NULL;
        Py_XDECREF(v);
        if (cut == NULL) {
            PyErr_Clear();
            continue;
        }
        if (cut == PyTuple_GET_ITEM(pair, 1)) {
            Py_DECREF(cut);
            PyTuple_SET_ITEM(out, k++, Py_NewRef(pair));
            continue;
        }
        PyObject *np = PyTuple_Pack(2, PyTuple_GET_ITEM(pair, 0), cut);
        Py_DECREF(cut);
        if (np == NULL) {
            Py_CLEAR(out);
            break;
        }
        PyTuple_SET_ITEM(out, k++, np);
    }
    Py_DECREF(set);
    if (out == NULL || k == 0) {
        Py_XDECREF(out);
        PyErr_Clear();
        return NULL;
    }
    if (k < n) {
        /* pairs that were not (str, value) were left out; the tail is NULL */
        Py_SETREF(out, PyTuple_GetSlice(out, 0, k));
        PyErr_Clear();
    }
    return out;
}

uint32_t
lp_labels_slot(void)
{
    lp_ctx *c = lp_ts.ctx;
    PyObject *set = c != NULL ? Py_XNewRef(c->labels) : labels_now();
    uint32_t slot = LP_LABEL_NONE;
    if (set != NULL) {
        slot = labelset_intern(set);
        Py_DECREF(set);
    }
    PyErr_Clear();
    return slot;
}

static PyObject *
lp_py_set_labels_var(PyObject *mod, PyObject *var)
{
    if (!PyContextVar_CheckExact(var)) {
        PyErr_SetString(PyExc_TypeError, "set_labels_var() takes a contextvars.ContextVar");
        return NULL;
    }
    if (LP_LOAD_ACQ(labels_var) == NULL) {
        LP_STORE_REL(labels_var, Py_NewRef(var));    /* kept for the process's life */
    }
    Py_RETURN_NONE;
}

void
lp_ctx_prepare(lp_ctx *c)
{
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    capture(c->frames, &c->nframes, &c->omitted);
    c->task_label = task_label_now();
    c->labels = labels_now();
    PyErr_Restore(exc_type, exc_value, exc_tb);
    c->prev = lp_ts.ctx;
    lp_ts.ctx = c;
}

void
lp_ctx_done(lp_ctx *c)
{
    lp_ts.ctx = c->prev;
    Py_CLEAR(c->task_label);
    Py_CLEAR(c->labels);
}

static uint32_t
task_slot(void)
{
    lp_ctx *c = lp_ts.ctx;
    PyObject *label;
    if (c != NULL) {
        label = Py_XNewRef(c->task_label);
    }
    else {
        label = task_label_now();
    }
    uint32_t slot = LP_LABEL_NONE;
    if (label != NULL) {
        slot = label_intern(&task_labels, label);
        Py_DECREF(label);
    }
    PyErr_Clear();
    return slot;
}
/* ------------------------------------------------------------------------ */
/* samples: (lock record, stack, event, thread, task) -> count, value        */
/* ------------------------------------------------------------------------ */


lp_sample *lp_samples = NULL;
uint32_t lp_nsamples = 0;
static uint32_t capsamples = 0;
static lp_index sample_index = {NULL, 0};
uint32_t lp_max_samples = 1u << 20;
uint64_t lp_dropped_samples = 0;

static inline uint32_t
sample_hash(uint32_t rec, uint32_t stack, uint32_t event, uint32_t thread, uint32_t task,
            uint32_t labels)
{
    uint64_t h = ((uint64_t)rec * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)stack * 0xC2B2AE3D27D4EB4FULL) ^
                 ((uint64_t)thread * 0x165667B19E3779F9ULL) ^
                 ((uint64_t)task * 0x27D4EB2F165667C5ULL) ^
                 ((uint64_t)labels * 0x85EBCA77C2B2AE63ULL) ^ event;
    return (uint32_t)(h ^ (h >> 29));
}

/* sample entries are numbered from 1: entry e is lp_samples[e - 1] */
static uint32_t
sample_entry_hash(uint32_t e)
{
    const lp_sample *s = &lp_samples[e - 1];
    return sample_hash(s->rec, s->stack, s->event, s->thread, s->task, s->labels);
}

void
lp_sample_add(uint32_t rec, uint32_t stack, int event, double estimate, double value)
{
    lp_sample_add_for(rec, stack, event, estimate, value, lp_thread_slot(), task_slot(),
                      lp_labels_slot());
}

void
lp_sample_add_for(uint32_t rec, uint32_t stack, int event, double estimate, double value,
                  uint32_t thread, uint32_t task, uint32_t labels)
{
    if (lp_index_reserve(&sample_index, lp_nsamples, 1, lp_nsamples + 1, sample_entry_hash) < 0) {
        lp_dropped_samples++;
        return;
    }
    uint32_t j = sample_hash(rec, stack, (uint32_t)event, thread, task, labels) & sample_index.mask;
    while (sample_index.slots[j]) {
        lp_sample *s = &lp_samples[sample_index.slots[j] - 1];
        if (s->rec == rec && s->stack == stack && s->event == (uint32_t)event &&
            s->thread == thread && s->task == task && s->labels == labels) {
            s->count += 1;
            s->estimate += estimate;
            s->value += value;
            return;
        }
        j = (j + 1) & sample_index.mask;
    }
    if (lp_nsamples >= lp_max_samples) {
        lp_dropped_samples++;
        return;
    }
    if (lp_nsamples >= capsamples) {
        uint32_t nc = capsamples ? capsamples * 2 : 256;
        lp_sample *ns = lp_fault() ? NULL : PyMem_Realloc(lp_samples, nc * sizeof(lp_sample));
        if (ns == NULL) {
            lp_dropped_samples++;
            return;
        }
        lp_samples = ns;
        capsamples = nc;
    }
    lp_sample *s = &lp_samples[lp_nsamples++];
    s->rec = rec;
    s->stack = stack;
    s->event = (uint32_t)event;
    s->thread = thread;
    s->task = task;
    s->labels = labels;
    s->count = 1;
    s->estimate = estimate;
    s->value = value;
    sample_index.slots[j] = lp_nsamples;
}

void
lp_samples_reset(void)
{
    lp_nsamples = 0;
    if (sample_index.slots != NULL) {
        memset(sample_index.slots, 0, (sample_index.mask + 1) * sizeof(uint32_t));
    }
    lp_dropped_samples = 0;
    lp_dropped_stacks = 0;
}

int
lp_samples_remap(const uint32_t *newid, uint32_t n)
{
    if (lp_nsamples == 0) {
        return 0;
    }
    lp_sample *out = PyMem_Malloc(capsamples * sizeof(lp_sample));
    lp_index ix = {NULL, 0};
    if (out == NULL) {
        return -1;
    }
    /* an index big enough for every row at once: no growth while filling */
    uint32_t cap = 1024;
    while (cap < 2 * lp_nsamples + 2) {
        cap *= 2;
    }
    ix.slots = PyMem_Calloc(cap, sizeof(uint32_t));
    if (ix.slots == NULL) {
        PyMem_Free(out);
        return -1;
    }
    ix.mask = cap - 1;
    uint32_t nout = 0;
    for (uint32_t i = 0; i < lp_nsamples; i++) {
        lp_sample s = lp_samples[i];
        if (s.rec >= 1 && s.rec <= n) {
            s.rec = newid[s.rec];
        }
        uint32_t j = sample_hash(s.rec, s.stack, s.event, s.thread, s.task, s.labels) & ix.mask;
        while (ix.slots[j]) {
            lp_sample *o = &out[ix.slots[j] - 1];
            if (o->rec == s.rec && o->stack == s.stack && o->event == s.event &&
                o->thread == s.thread && o->task == s.task && o->labels == s.labels) {
                o->count += s.count;
                o->estimate += s.estimate;
                o->value += s.value;
                break;
            }
            j = (j + 1) & ix.mask;
        }
        if (!ix.slots[j]) {
            out[nout++] = s;
            ix.slots[j] = nout;
        }
    }
    PyMem_Free(lp_samples);
    PyMem_Free(sample_index.slots);
    lp_samples = out;
    lp_nsamples = nout;
    sample_index = ix;
    return 0;
}


/* the label's name (borrowed), "<other>" past the cap, Py_None for none */
static PyObject *other_str = NULL;

static const lp_labels *
table_of(int tasks)
{
    return tasks == LP_LABEL_SETS ? &label_sets : tasks ? &task_labels : &thread_labels;
}

PyObject *
lp_label_name(int tasks, uint32_t id)
{
    const lp_labels *t = table_of(tasks);
    if (id == LP_LABEL_OTHER && tasks != LP_LABEL_SETS) {
        if (other_str == NULL) {
            other_str = PyUnicode_InternFromString("<other>");
        }
        return other_str ? other_str : Py_None;
    }
    if (t->names != NULL && id < (uint32_t)PyList_GET_SIZE(t->names)) {
        return PyList_GET_ITEM(t->names, id);
    }
    return Py_None;
}

uint32_t
lp_label_count(int tasks)
{
    const lp_labels *t = table_of(tasks);
    return t->names ? (uint32_t)PyList_GET_SIZE(t->names) : 0;
}

int
lp_thread_label_ids(uint32_t id, unsigned long *ident, unsigned long *native)
{
    if (id >= thread_labels.cap || id >= lp_label_count(0) || thread_labels.multi[id] ||
        thread_labels.ident[id] == 0) {
        *ident = *native = 0;
        return 0;
    }
    *ident = thread_labels.ident[id];
    *native = thread_labels.native[id];
    return 1;
}

uint64_t
lp_labels_dropped(int tasks)
{
    return table_of(tasks)->dropped;
}

void
lp_labels_configure(uint32_t max_threads, uint32_t max_tasks, uint32_t max_sets,
                    uint32_t max_value)
{
    thread_labels.max = max_threads;
    task_labels.max = max_tasks;
    label_sets.max = max_sets;
    LP_STORE(label_value_max, max_value);
}

uint32_t
lp_labels_max(int tasks)
{
    return table_of(tasks)->max;
}

uint32_t
lp_label_value_max(void)
{
    return LP_LOAD(label_value_max);
}

uint64_t
lp_label_values_cut(void)
{
    return LP_LOAD(label_values_cut);
}

/* at reset: the rows that named the labels are gone, so are the labels
 * (a long run's labels are those of its last window, never of its life) */
void
lp_labels_reset(void)
{
    lp_labels *all[3] = {&thread_labels, &task_labels, &label_sets};
    LP_STORE(label_values_cut, 0);
    setcache_clear();
    for (int k = 0; k < 3; k++) {
        lp_labels *t = all[k];
        t->dropped = 0;
        if (t->ids != NULL) {
            PyDict_Clear(t->ids);
        }
        if (t->names != NULL && PyList_SetSlice(t->names, 0, PyList_GET_SIZE(t->names), NULL) < 0) {
            PyErr_Clear();
            Py_CLEAR(t->names);
            Py_CLEAR(t->ids);
        }
    }
    lp_labels_after_fork();
}

static const char *event_names[] = {"acquire", "contention", "hold", "cond_wait", "delay"};

const char *
lp_event_name(uint32_t event)
{
    return event < 5 ? event_names[event] : "?";
}

PyObject *
lp_py_samples(PyObject *mod, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i < lp_nsamples; i++) {
        const lp_sample *s = &lp_samples[i];
        unsigned long ident, native;
        lp_thread_label_ids(s->thread, &ident, &native);
        PyObject *t = Py_BuildValue("(IIsKdd(kkO)OO)", s->rec, s->stack, event_names[s->event],
                                    (unsigned long long)s->count, s->estimate, s->value,
                                    ident, native, lp_label_name(0, s->thread),
                                    lp_label_name(1, s->task),
                                    lp_label_name(LP_LABEL_SETS, s->labels));
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(t);
    }
    return out;
}

static PyObject *
lp_py_stack(PyObject *mod, PyObject *arg)
{
    unsigned long id = PyLong_AsUnsignedLong(arg);
    if (id == (unsigned long)-1 && PyErr_Occurred()) {
        return NULL;
    }
    if (id == 0 || id >= lp_nstacks) {
        return Py_BuildValue("([]I)", 0u);
    }
    const lp_stack *s = &lp_stacks[id];
    PyObject *frames = PyList_New(s->nframes);
    if (frames == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i < s->nframes; i++) {
        PyCodeObject *co = (PyCodeObject *)s->frames[i].code;
#ifdef LP_HAVE_LASTI
        int line = PyCode_Addr2Line(co, (int)s->frames[i].pos);
#else
        int line = (int)s->frames[i].pos;
#endif
        PyObject *file = PyObject_GetAttrString((PyObject *)co, "co_filename");
        PyObject *name = PyObject_GetAttrString((PyObject *)co, "co_name");
        PyObject *t = (file && name) ? Py_BuildValue("(OOi)", file, name, line) : NULL;
        Py_XDECREF(file);
        Py_XDECREF(name);
        if (t == NULL) {
            Py_DECREF(frames);
            return NULL;
        }
        PyList_SET_ITEM(frames, i, t);
    }
    PyObject *r = Py_BuildValue("(OI)", frames, s->omitted);
    Py_DECREF(frames);
    return r;
}

static PyMethodDef stack_methods[] = {
    {"samples", lp_py_samples, METH_NOARGS,
     "samples()\n--\n\n(lock id, stack id, event, samples, estimated events, estimated ns, (thread id, native id, name), task name, request labels: ((key, value), ...) or None)."},
    {"imports_changed", lp_py_imports_changed, METH_NOARGS,
     "imports_changed()\n--\n\nA watched module was imported: look asyncio and gevent up again."},
    {"set_labels_var", lp_py_set_labels_var, METH_O,
     "set_labels_var(var)\n--\n\nThe ContextVar whose value is the request labels (once)."},
    {"stack", lp_py_stack, METH_O,
     "stack(id)\n--\n\n([(file, function, line), ...] leaf first, frames omitted)."},
    {NULL, NULL, 0, NULL},
};

int
lp_stack_setup(PyObject *module)
{
    str_asyncio = PyUnicode_InternFromString("_asyncio");
    str_gevent = PyUnicode_InternFromString("gevent");
    /* interned once: PyObject_CallMethod with a C string makes and looks
     * up the name at each call (about 1,500 instructions on 3.13) */
    str_get_name = PyUnicode_InternFromString("get_name");
    str_get_coro = PyUnicode_InternFromString("get_coro");
    if (str_asyncio == NULL || str_gevent == NULL || str_get_name == NULL ||
        str_get_coro == NULL) {
        return -1;
    }
    return lp_add_functions(module, stack_methods);
}
