/* lockprof runtime: lock-order inversion detection (opt-in: lock_order=True).
 *
 * Per thread (and, for asyncio locks, per task: tasks interleave on one
 * thread) the runtime keeps the locks held now.  Acquiring lock B while
 * holding lock A records the edge A -> B between their lock classes, once per
 * pair of classes, with where each was taken, the thread and the task.  A new
 * edge that closes a cycle of classes is one potential deadlock, kept once.
 *
 * Lock classes, as the kernel's lockdep has them: a lock's class is its
 * creation site, so an inversion between two code paths is found whichever
 * instances they used, and after warm-up an acquire costs a lookup of its
 * (held class, class) pairs, not a graph search.  Locks of one class (one
 * lock per account) are checked per instance: a -> b and later b -> a of the
 * same class is an inversion, while taking them in one global order (sorted
 * by key) never records both directions.
 *
 * Unordered classes: a lock that is released by another thread or task than
 * the one that took it is a signal, or held by a group (the first reader of
 * a readers-writer lock takes it for all readers, the last one gives it
 * back), not owned: "held" means nothing for it.  From the first such
 * release its class gets no edges out of it, the cycle search does not pass
 * through it, and the cycles found through it before are set aside (kept,
 * not reported; counted).  lockprof.order_exempt(lock) does the same for a
 * class the program names.
 *
 * Not an edge: an RLock taken again by its owner (not a first acquisition),
 * a Condition's wait (it releases and retakes its lock), and an acquire that
 * cannot wait forever (non-blocking, or with a timeout): it adds no edge into
 * the lock it tried, but locks taken while holding it still count.
 *
 * Reached only when lock_order is on: the sampling countdown then expires on
 * every acquire (LP_SAMPLED() is unchanged) and the wrapper's LP_W_ORDER flag
 * sends its release here; with it off, the hot path is the same instructions
 * as without this file.
 *
 * Owns: the held-lock lists of threads and tasks (holders), the class edges,
 * the classes, the same-class instance pairs, the cycles found (with their
 * classes), the unordered classes, and the lock_order/track_holds settings.
 * Guarded by: the tables' mutex (lp_tables_mutex, lp_thread.c) on a free-
 * threaded build, the GIL otherwise (entered from lp_record.c's flush
 * functions and from the acquire's slow path); the settings are read on the
 * hot path with relaxed loads (LP_LOAD). */
#include "lp_record.h"
#include "lp_stack.h"
#include "lp_index.h"


#define LP_HELD_MAX 32          /* locks one holder holds at once, tracked */
#define LP_MAX_FRAMES_REPORT 48

typedef struct {
    lp_wrapper *w;              /* identity only */
    uint32_t cls;
    uint64_t serial;            /* the instance (0: unknown) */
    PyObject *code;             /* strong: where it was taken */
    int lasti;                  /* its instruction's byte offset (the line is
                                   found only for a report) */
    const void *frame;          /* identity of the frame it was taken in */
    int handoff;                /* taken by a task that ran nothing else
                                   (asyncio.wait_for on 3.9-3.11): its
                                   release by the caller's task is no signal */
} lp_held;

typedef struct {
    unsigned long ident;        /* 0: free, LP_TOMB: deleted */
    const void *task;           /* the asyncio task (identity), or NULL */
    uint32_t n;
    lp_held items[LP_HELD_MAX];
} lp_holder;

#define LP_TOMB ((unsigned long)-1)

static lp_holder *holders = NULL;
static uint32_t capholders = 0, usedholders = 0, tombholders = 0;
static uint32_t task_holders = 0;       /* holders of an asyncio task: when none,
                                         * a threading lock needs no task lookup */

/* class edges: (a, b) -> index into edges; adjacency through next_from */
typedef struct {
    uint32_t a, b;
    int32_t next_from;          /* next edge out of `a`, or -1 */
    PyObject *info;             /* dict: held, acquired, thread_name, ... */
} lp_edge;

/* The three tables below are indexed by lp_index (lp_index.h): a slot holds
 * entry number + 1, and each table compares its own keys. */
static lp_edge *edges = NULL;
static uint32_t nedges = 0, capedges = 0;
static lp_index edge_ix = {NULL, 0};

/* the classes that have edges out of them, with the first such edge */
typedef struct {
    uint32_t cls;
    int32_t head;
} lp_class;
static lp_class *classes = NULL;
static uint32_t nclasses = 0, capclasses = 0;
static lp_index class_ix = {NULL, 0};

/* same-class instance pairs: (class, serial a, serial b) */
typedef struct {
    uint64_t a, b;
    uint32_t cls;
    PyObject *info;
} lp_ipair;
static lp_ipair *ipairs = NULL;
static uint32_t cap_ipairs = 0, n_ipairs = 0;
static lp_index ipair_ix = {NULL, 0};

uint32_t lp_max_order_edges = 10000;    /* class edges and instance pairs, each */
uint64_t lp_dropped_order_edges = 0;
uint64_t lp_dropped_holders = 0;        /* acquisitions past LP_HELD_MAX or the table */

static PyObject *cycles = NULL;         /* list of lists of edge dicts */
static PyObject *cycle_classes = NULL;  /* per cycle, the tuple of its class ids */
static PyObject *reported = NULL;       /* set of frozensets of class ids */

static inline uint32_t
mix64_32(uint32_t x)
{
    uint64_t h = (uint64_t)x * 0x9E3779B97F4A7C15ULL;
    return (uint32_t)(h >> 32);
}

/* unordered classes (see the top): an open-addressed set of class ids (0 is
 * no class), and, for the report, each one's name and why */
static uint32_t *unordered = NULL;
static uint32_t unordered_cap = 0, unordered_n = 0;
static PyObject *unordered_info = NULL;     /* list of (name, reason) */
static uint64_t unordered_skips = 0;        /* acquires not ordered after such a lock */

static inline int
is_unordered(uint32_t cls)
{
    if (unordered_n == 0) {
        return 0;
    }
    uint32_t mask = unordered_cap - 1;
    for (uint32_t j = (uint32_t)mix64_32(cls) & mask; unordered[j]; j = (j + 1) & mask) {
        if (unordered[j] == cls) {
            return 1;
        }
    }
    return 0;
}

/* ------------------------------------------------------------------------ */
/* helpers                                                                   */
/* ------------------------------------------------------------------------ */

static inline uint64_t
mix64(uint64_t x)
{
    x ^= x >> 33;
    x *= 0xff51afd7ed558ccdULL;
    x ^= x >> 33;
    x *= 0xc4ceb9fe1a85ec53ULL;
    x ^= x >> 33;
    return x;
}

/* appends (file, line, function) to `out`: -1 with an exception on failure */
static int
append_frame(PyObject *out, PyCodeObject *code, int line)
{
    PyObject *t = Py_BuildValue("(OiO)", code->co_filename, line, code->co_name);
    int r = t != NULL ? PyList_Append(out, t) : -1;
    Py_XDECREF(t);
    return r;
}

/* The current Python stack as a list of (file, line, function), innermost
 * first.  With `h`, where that held lock was taken: its own (code, line),
 * then the frames outside the one it was taken in, when that frame is still
 * on the stack (nested `with` blocks: the usual case).  NULL on failure. */
static PyObject *
frames_list(const lp_held *h)
{
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    int outside = 1;
    if (h != NULL) {
        PyCodeObject *hc = (PyCodeObject *)h->code;
        if (append_frame(out, hc, PyCode_Addr2Line(hc, h->lasti)) < 0) {
            Py_DECREF(out);
            return NULL;
        }
        outside = 0;
    }
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    while (f != NULL && PyList_GET_SIZE(out) < LP_MAX_FRAMES_REPORT) {
        if (outside) {
            PyCodeObject *code = PyFrame_GetCode(f);
            int r = append_frame(out, code, PyFrame_GetLineNumber(f));
            Py_DECREF(code);
            if (r < 0) {
                Py_DECREF(f);
                Py_DECREF(out);
                return NULL;
            }
        }
        else if ((const void *)f == h->frame) {
            outside = 1;
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
    return out;
}

static lp_holder *
holder_find(unsigned long ident, const void *task, int create)
{
    if (capholders == 0) {
        if (!create) {
            return NULL;
        }
        holders = PyMem_Calloc(256, sizeof(lp_holder));
        if (holders == NULL) {
            return NULL;
        }
        capholders = 256;
    }
    uint64_t h = mix64((uint64_t)ident ^ ((uint64_t)(uintptr_t)task * 0x9E3779B97F4A7C15ULL));
    uint32_t mask = capholders - 1, j = (uint32_t)h & mask;
    lp_holder *tomb = NULL;
    for (uint32_t probe = 0; probe < capholders; probe++, j = (j + 1) & mask) {
        lp_holder *e = &holders[j];
        if (e->ident == 0) {
            if (!create) {
                return NULL;
            }
            if (tomb != NULL) {
                e = tomb;
                tombholders--;
            }
            usedholders++;
            task_holders += task != NULL;
            e->ident = ident;
            e->task = task;
            e->n = 0;
            return e;
        }
        if (e->ident == LP_TOMB) {
            if (tomb == NULL) {
                tomb = e;
            }
            continue;
        }
        if (e->ident == ident && e->task == task) {
            return e;
        }
    }
    return NULL;
}

/* a holder that holds nothing is deleted; the table is rebuilt when
 * deletions fill it */
static void
holder_drop(lp_holder *e)
{
    task_holders -= e->task != NULL;
    e->ident = LP_TOMB;
    e->task = NULL;
    tombholders++;
    usedholders--;
    if ((usedholders + tombholders) * 4 < capholders * 3) {
        return;
    }
    uint32_t nc = capholders;
    while (nc <= 65536 && usedholders * 2 >= nc) {
        nc *= 2;
    }
    if (nc > 65536) {
        return;                 /* full: new holders are not tracked (counted) */
    }
    lp_holder *old = holders;
    uint32_t oldcap = capholders;
    holders = PyMem_Calloc(nc, sizeof(lp_holder));
    if (holders == NULL) {
        holders = old;
        return;
    }
    capholders = nc;
    usedholders = tombholders = task_holders = 0;
    for (uint32_t i = 0; i < oldcap; i++) {
        if (old[i].ident != 0 && old[i].ident != LP_TOMB) {
            lp_holder *e2 = holder_find(old[i].ident, old[i].task, 1);
            if (e2 != NULL) {
                *e2 = old[i];
            }
        }
    }
    PyMem_Free(old);
}

static inline uint32_t
key_hash(uint64_t x, uint64_t y, uint64_t z)
{
    return (uint32_t)(mix64(x ^ mix64(y ^ mix64(z))) >> 32);
}

static uint32_t
edge_hash(uint32_t entry)
{
    return key_hash(edges[entry - 1].a, edges[entry - 1].b, 0);
}

static uint32_t
class_hash(uint32_t entry)
{
    return key_hash(classes[entry - 1].cls, 0, 0);
}

static uint32_t
ipair_hash(uint32_t entry)
{
    const lp_ipair *p = &ipairs[entry - 1];
    return key_hash(p->cls, p->a, p->b);
}

/* the first free slot of `h`'s probe sequence */
static uint32_t *
free_slot(lp_index *ix, uint32_t h)
{
    uint32_t j = h & ix->mask;
    while (ix->slots[j]) {
        j = (j + 1) & ix->mask;
    }
    return &ix->slots[j];
}

/* the index of edge (a, b), or -1 */
static int32_t
edge_find(uint32_t a, uint32_t b)
{
    if (edge_ix.slots == NULL) {
        return -1;
    }
    for (uint32_t j = key_hash(a, b, 0) & edge_ix.mask; edge_ix.slots[j];
         j = (j + 1) & edge_ix.mask) {
        const lp_edge *e = &edges[edge_ix.slots[j] - 1];
        if (e->a == a && e->b == b) {
            return (int32_t)edge_ix.slots[j] - 1;
        }
    }
    return -1;
}

/* the class entry of `cls`, or NULL */
static lp_class *
class_find(uint32_t cls)
{
    if (class_ix.slots == NULL) {
        return NULL;
    }
    for (uint32_t j = key_hash(cls, 0, 0) & class_ix.mask; class_ix.slots[j];
         j = (j + 1) & class_ix.mask) {
        lp_class *c = &classes[class_ix.slots[j] - 1];
        if (c->cls == cls) {
            return c;
        }
    }
    return NULL;
}

/* the first edge out of `cls`, or -1 */
static int32_t
heads_get(uint32_t cls)
{
    const lp_class *c = class_find(cls);
    return c != NULL ? c->head : -1;
}

/* edge `e` becomes the first out of `cls` (its next_from is the old first) */
static int
heads_push(uint32_t cls, int32_t e)
{
    lp_class *c = class_find(cls);
    if (c == NULL) {
        if (lp_index_reserve(&class_ix, nclasses, 1, nclasses + 1, class_hash) < 0) {
            return -1;
        }
        if (nclasses >= capclasses) {
            uint32_t nc = capclasses ? capclasses * 2 : 64;
            lp_class *ncs = PyMem_Realloc(classes, nc * sizeof(lp_class));
            if (ncs == NULL) {
                return -1;
            }
            classes = ncs;
            capclasses = nc;
        }
        c = &classes[nclasses++];
        c->cls = cls;
        c->head = -1;
        *free_slot(&class_ix, key_hash(cls, 0, 0)) = nclasses;
    }
    edges[e].next_from = c->head;
    c->head = e;
    return 0;
}

/* the index of instance pair (cls, a, b), or -1 */
static int32_t
ipair_find(uint32_t cls, uint64_t a, uint64_t b)
{
    if (ipair_ix.slots == NULL) {
        return -1;
    }
    for (uint32_t j = key_hash(cls, a, b) & ipair_ix.mask; ipair_ix.slots[j];
         j = (j + 1) & ipair_ix.mask) {
        const lp_ipair *p = &ipairs[ipair_ix.slots[j] - 1];
        if (p->cls == cls && p->a == a && p->b == b) {
            return (int32_t)ipair_ix.slots[j] - 1;
        }
    }
    return -1;
}

/* the dict describing edge held -> acquired, for the report */
static PyObject *
edge_info(const lp_holder *who, const lp_held *h, lp_wrapper *w, int kind)
{
    PyObject *held_name = lp_lock_display_name(h->w, -1);
    PyObject *acq_name = lp_lock_display_name(w, kind);
    PyObject *hf = frames_list(h);
    PyObject *af = frames_list(NULL);
    /* the acquiring thread and task are the holder's: labelled now */
    uint32_t tl = lp_thread_slot();
    uint32_t kl = (who->task != NULL || task_holders > 0 || lp_kind_is_async(kind))
                  ? lp_task_slot() : LP_LABEL_NONE;
    PyObject *thread = tl < LP_LABEL_OTHER ? lp_label_name(0, tl) : NULL;
    PyObject *task = kl < LP_LABEL_OTHER ? lp_label_name(1, kl) : NULL;
    PyObject *d = NULL;
    if (held_name != NULL && acq_name != NULL && hf != NULL && af != NULL) {
        d = Py_BuildValue("{sOsOsOsOsOsO}", "held", held_name, "acquired", acq_name,
                          "thread_name", thread ? thread : Py_None,
                          "task_name", task ? task : Py_None,
                          "held_frames", hf, "acquired_frames", af);
    }
    Py_XDECREF(held_name);
    Py_XDECREF(acq_name);
    Py_XDECREF(hf);
    Py_XDECREF(af);
    return d;
}

/* a path of class edges from `from` to `to` (list of edge indices, appended
 * to `path`): 1 found, 0 not, -1 error.  Depth-first, each class once. */
static int
find_path(uint32_t from, uint32_t to, PyObject *seen, PyObject *path, int depth)
{
    if (depth > 64 || is_unordered(from)) {
        return 0;               /* no edge out of an unordered class counts */
    }
    PyObject *k = PyLong_FromUnsignedLong(from);
    if (k == NULL || PySet_Add(seen, k) < 0) {
        Py_XDECREF(k);
        return -1;
    }
    Py_DECREF(k);
    for (int32_t e = heads_get(from); e >= 0; e = edges[e].next_from) {
        uint32_t b = edges[e].b;
        if (b == from) {
            continue;           /* same-class pairs are checked per instance */
        }
        PyObject *idx = PyLong_FromLong(e);
        if (idx == NULL || PyList_Append(path, idx) < 0) {
            Py_XDECREF(idx);
            return -1;
        }
        Py_DECREF(idx);
        if (b == to) {
            return 1;
        }
        PyObject *bk = PyLong_FromUnsignedLong(b);
        int was = bk ? PySet_Contains(seen, bk) : -1;
        Py_XDECREF(bk);
        if (was < 0) {
            return -1;
        }
        if (!was) {
            int r = find_path(b, to, seen, path, depth + 1);
            if (r != 0) {
                return r;
            }
        }
        if (PySequence_DelItem(path, PyList_GET_SIZE(path) - 1) < 0) {
            return -1;
        }
    }
    return 0;
}

/* a cycle found: its edge dicts, the key it is kept once by, and the tuple
 * of its classes (a cycle through a class found unordered later is set
 * aside when read) */
static void
report_cycle(PyObject *edge_dicts, PyObject *key, PyObject *classes)
{
    int was = PySet_Contains(reported, key);
    if (was != 0) {
        if (was < 0) {
            PyErr_Clear();
        }
        return;
    }
    if (PySet_Add(reported, key) < 0 || PyList_Append(cycle_classes, classes) < 0) {
        PyErr_Clear();
        lp_count_error();
        return;
    }
    if (PyList_Append(cycles, edge_dicts) < 0) {
        PyErr_Clear();
        PySequence_DelItem(cycle_classes, PyList_GET_SIZE(cycle_classes) - 1);
        PyErr_Clear();
        lp_count_error();
    }
}

/* class `cls` (of wrapper w, kind `kind`) becomes unordered, for `reason` */
static void
mark_unordered(uint32_t cls, lp_wrapper *w, int kind, const char *reason)
{
    if (cls == 0 || is_unordered(cls)) {
        return;
    }
    if ((unordered_n + 1) * 2 > unordered_cap) {
        uint32_t nc = unordered_cap ? unordered_cap * 2 : 64;
        uint32_t *n = PyMem_Calloc(nc, sizeof(uint32_t));
        if (n == NULL) {
            lp_count_error();
            return;
        }
        for (uint32_t i = 0; i < unordered_cap; i++) {
            if (unordered[i]) {
                uint32_t j = mix64_32(unordered[i]) & (nc - 1);
                while (n[j]) {
                    j = (j + 1) & (nc - 1);
                }
                n[j] = unordered[i];
            }
        }
        PyMem_Free(unordered);
        unordered = n;
        unordered_cap = nc;
    }
    uint32_t j = mix64_32(cls) & (unordered_cap - 1);
    while (unordered[j]) {
        j = (j + 1) & (unordered_cap - 1);
    }
    unordered[j] = cls;
    unordered_n++;
    PyObject *name = lp_lock_display_name(w, kind);
    PyObject *t = name != NULL ? Py_BuildValue("(Os)", name, reason) : NULL;
    if (t == NULL || PyList_Append(unordered_info, t) < 0) {
        PyErr_Clear();
    }
    Py_XDECREF(t);
    Py_XDECREF(name);
}

/* the new class edge `e` (a -> b) closes a cycle when b reaches a */
static void
check_cycle(int32_t e)
{
    PyObject *seen = PySet_New(NULL), *path = PyList_New(0);
    if (seen == NULL || path == NULL) {
        goto done;
    }
    int r = find_path(edges[e].b, edges[e].a, seen, path, 0);
    if (r < 0) {
        PyErr_Clear();
        lp_count_error();
        goto done;
    }
    if (r == 0) {
        goto done;
    }
    PyObject *dicts = PyList_New(0);
    PyObject *classes = PyList_New(0);
    if (dicts == NULL || classes == NULL) {
        Py_XDECREF(dicts);
        Py_XDECREF(classes);
        PyErr_Clear();
        goto done;
    }
    int ok = PyList_Append(dicts, edges[e].info) == 0;
    PyObject *c = PyLong_FromUnsignedLong(edges[e].a);
    ok = ok && c != NULL && PyList_Append(classes, c) == 0;
    Py_XDECREF(c);
    for (Py_ssize_t i = 0; ok && i < PyList_GET_SIZE(path); i++) {
        long idx = PyLong_AsLong(PyList_GET_ITEM(path, i));
        ok = PyList_Append(dicts, edges[idx].info) == 0;
        c = PyLong_FromUnsignedLong(edges[idx].a);
        ok = ok && c != NULL && PyList_Append(classes, c) == 0;
        Py_XDECREF(c);
    }
    PyObject *key = ok ? PyFrozenSet_New(classes) : NULL;
    PyObject *ctuple = key != NULL ? PyList_AsTuple(classes) : NULL;
    if (ctuple != NULL) {
        report_cycle(dicts, key, ctuple);
    }
    else {
        PyErr_Clear();
        lp_count_error();
    }
    Py_XDECREF(key);
    Py_XDECREF(ctuple);
    Py_DECREF(dicts);
    Py_DECREF(classes);
done:
    Py_XDECREF(seen);
    Py_XDECREF(path);
}

/* room for one more entry in a table indexed by `ix` (count: its entries
 * now; hash: of entry number e, 1-based); -1 when memory runs out */
static int
table_reserve(void **items, uint32_t *cap, size_t size, lp_index *ix, uint32_t count,
              lp_index_hash hash)
{
    if (lp_index_reserve(ix, count, 1, count + 1, hash) < 0) {
        return -1;
    }
    if (count >= *cap) {
        uint32_t nc = *cap ? *cap * 2 : 64;
        void *n = PyMem_Realloc(*items, nc * size);
        if (n == NULL) {
            return -1;
        }
        *items = n;
        *cap = nc;
    }
    return 0;
}

/* Room for one more entry in a capped table, and the dict describing the
 * edge held -> acquired: NULL when the cap is reached (counted) or on a
 * failure (counted as an error). */
static PyObject *
claim_entry(uint32_t count, void **items, uint32_t *cap, size_t size, lp_index *ix,
            uint32_t (*hash)(uint32_t), const lp_holder *who, const lp_held *h,
            lp_wrapper *w, int kind)
{
    if (count >= lp_max_order_edges) {
        lp_dropped_order_edges++;
        return NULL;
    }
    if (table_reserve(items, cap, size, ix, count, hash) < 0) {
        lp_count_error();
        return NULL;
    }
    PyObject *info = edge_info(who, h, w, kind);
    if (info == NULL) {
        PyErr_Clear();
        lp_count_error();
    }
    return info;
}

/* the same-class pair held -> acquired: a -> b then b -> a is the inversion */
static void
add_instance_pair(const lp_holder *who, const lp_held *h, lp_wrapper *w, int kind,
                  uint32_t cls, uint64_t serial)
{
    if (h->serial == 0 || serial == 0 || h->serial == serial ||
        ipair_find(cls, h->serial, serial) >= 0) {
        return;                     /* unknown instances, or known */
    }
    PyObject *info = claim_entry(n_ipairs, (void **)&ipairs, &cap_ipairs, sizeof(lp_ipair),
                                 &ipair_ix, ipair_hash, who, h, w, kind);
    if (info == NULL) {
        return;
    }
    lp_ipair *p = &ipairs[n_ipairs++];
    p->a = h->serial;
    p->b = serial;
    p->cls = cls;
    p->info = info;
    *free_slot(&ipair_ix, key_hash(cls, p->a, p->b)) = n_ipairs;
    int32_t back = ipair_find(cls, serial, h->serial);
    if (back < 0) {
        return;
    }
    PyObject *dicts = Py_BuildValue("[OO]", ipairs[back].info, info);
    PyObject *key = Py_BuildValue("(sk)", "class", (unsigned long)cls);
    PyObject *ctuple = Py_BuildValue("(k)", (unsigned long)cls);
    if (dicts != NULL && key != NULL && ctuple != NULL) {
        report_cycle(dicts, key, ctuple);
    }
    else {
        PyErr_Clear();
        lp_count_error();
    }
    Py_XDECREF(dicts);
    Py_XDECREF(key);
    Py_XDECREF(ctuple);
}

/* edge from held lock `h` into lock `w` (class `cls`, instance `serial`) */
static void
add_edge(const lp_holder *who, const lp_held *h, lp_wrapper *w, int kind, uint32_t cls,
         uint64_t serial)
{
    if (is_unordered(h->cls)) {
        unordered_skips++;          /* "held" means nothing for it */
        return;
    }
    if (h->cls == cls) {
        add_instance_pair(who, h, w, kind, cls, serial);
        return;
    }
    if (edge_find(h->cls, cls) >= 0) {
        return;                     /* the warm path: a lookup */
    }
    PyObject *info = claim_entry(nedges, (void **)&edges, &capedges, sizeof(lp_edge),
                                 &edge_ix, edge_hash, who, h, w, kind);
    if (info == NULL) {
        return;
    }
    int32_t e = (int32_t)nedges++;
    edges[e].a = h->cls;
    edges[e].b = cls;
    edges[e].info = info;
    edges[e].next_from = -1;
    *free_slot(&edge_ix, key_hash(h->cls, cls, 0)) = nedges;
    if (heads_push(h->cls, e) < 0) {
        lp_count_error();       /* kept, but not followed by the cycle search */
    }
    check_cycle(e);
}

/* ------------------------------------------------------------------------ */
/* the hooks                                                                 */
/* ------------------------------------------------------------------------ */

static const void *
holder_task(int kind)
{
    if (!lp_kind_is_async(kind)) {
        return NULL;
    }
    PyObject *t = lp_current_task();
    if (t == NULL) {
        return NULL;
    }
    /* identity only: the task stays alive while it runs this acquire */
    Py_DECREF(t);
    return t;
}

/* whether `file` (a co_filename) is in asyncio's package */
static int
in_asyncio(PyObject *file)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(file, &n);
    if (s == NULL) {
        PyErr_Clear();
        return 0;
    }
    return strstr(s, "/asyncio/") != NULL || strstr(s, "\\asyncio\\") != NULL;
}

/* whether `code` is asyncio's Handle._run: every task step runs under it */
static int
is_loop_step(PyCodeObject *code)
{
    const char *name = PyUnicode_AsUTF8(code->co_name);
    if (name == NULL) {
        PyErr_Clear();
        return 0;
    }
    if (strcmp(name, "_run") != 0) {
        return 0;
    }
    const char *file = PyUnicode_AsUTF8(code->co_filename);
    if (file == NULL) {
        PyErr_Clear();
        return 0;
    }
    size_t n = strlen(file);
    return n >= 9 && strcmp(file + n - 9, "events.py") == 0;
}

/* the byte offset of frame f's current instruction */
static inline int
frame_lasti(PyFrameObject *f)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyFrame_GetLasti(f);
#elif PY_VERSION_HEX >= 0x030A0000
    return f->f_lasti * (int)sizeof(_Py_CODEUNIT);     /* 3.10 counts code units */
#else
    return f->f_lasti;
#endif
}

static inline uint32_t
lock_class(const lp_lockrec *r)
{
    return r->site != 0 ? r->site : 0x80000000u | (uint32_t)(r->serial & 0x7fffffff);
}

/* The other holder of this thread whose locks precede an acquire of kind
 * `kind`: for an asyncio lock, the thread's own (threading locks held while
 * the task runs); for a threading lock taken in a task, the task's (asyncio
 * locks it holds).  So an asyncio lock and a threading lock taken in one
 * task are ordered too.  NULL when there is none. */
static lp_holder *
other_holder(int kind)
{
    unsigned long me = PyThread_get_thread_ident();
    if (lp_kind_is_async(kind)) {
        return holder_find(me, NULL, 0);
    }
    if (task_holders == 0) {
        return NULL;
    }
    PyObject *t = lp_current_task();
    if (t == NULL) {
        return NULL;
    }
    Py_DECREF(t);           /* identity only */
    return holder_find(me, t, 0);
}

/* the edges from every lock `who` holds into `w` */
static void
add_edges(const lp_holder *who, lp_wrapper *w, int kind, uint32_t cls, uint64_t serial)
{
    for (uint32_t i = 0; i < who->n; i++) {
        if (who->items[i].w != w) {
            add_edge(who, &who->items[i], w, kind, cls, serial);
        }
    }
}

/* An acquire that cannot end but by getting the lock is about to block:
 * its edges are recorded now, as the kernel's lockdep checks before it
 * waits, so the inversion of a deadlock that does happen is found too (the
 * acquire itself may never return). */
/* (lp_order_attempt, lp_order_acquired, lp_order_reacquired: called by
 * lp_event.c, holding the tables' mutex) */
void
lp_order_attempt(lp_wrapper *w, int kind)
{
    lp_lockrec *r = lp_rec_for(w, kind);
    lp_holder *who = holder_find(PyThread_get_thread_ident(), holder_task(kind), 0);
    if (r != NULL && who != NULL) {
        add_edges(who, w, kind, lock_class(r), r->serial);
    }
    lp_holder *other = r != NULL ? other_holder(kind) : NULL;
    if (other != NULL && other != who) {
        add_edges(other, w, kind, lock_class(r), r->serial);
    }
    if (PyErr_Occurred()) {
        PyErr_Clear();
        lp_count_error();
    }
}


#if PY_VERSION_HEX < 0x030C0000
/* an attribute of `o` (new reference) or NULL, no exception left */
static PyObject *
attr_or_null(PyObject *o, const char *name)
{
    PyObject *v = PyObject_GetAttrString(o, name);
    if (v == NULL) {
        PyErr_Clear();
    }
    return v;
}

/* 3.9-3.11: asyncio.wait_for runs the acquire it is given in a task of its
 * own (`inner`) and suspends its caller's task in wait_for until that task
 * is done.  The caller holds the lock then, for the program: the task whose
 * chain of awaited coroutines reaches a wait_for frame whose `fut` is
 * `inner` (new reference), and the frame that awaited wait_for (*at, new
 * reference).  Read only for such a hold, with lock order or the hang
 * doctor on: the loop's tasks, and each one's await chain. */
static PyObject *
wait_for_caller(PyObject *inner, PyFrameObject **at)
{
    *at = NULL;
    PyObject *loop = lp_running_loop();
    /* asyncio is imported (a task runs): looked up, never imported here */
    PyObject *all = loop != NULL ? lp_lookup_dotted("asyncio.all_tasks", 0) : NULL;
    PyObject *tasks = all != NULL ? PyObject_CallOneArg(all, loop) : NULL;
    PyObject *it = tasks != NULL ? PyObject_GetIter(tasks) : NULL;
    PyObject *found = NULL, *t;
    while (it != NULL && found == NULL && (t = PyIter_Next(it)) != NULL) {
        PyObject *c = t != inner ? attr_or_null(t, "_coro") : NULL;
        PyObject *prev = NULL;
        for (int depth = 0; c != NULL && depth < 64 && found == NULL; depth++) {
            PyObject *fr = attr_or_null(c, PyCoro_CheckExact(c) ? "cr_frame" : "gi_frame");
            if (fr != NULL && PyFrame_Check(fr)) {
                PyCodeObject *code = PyFrame_GetCode((PyFrameObject *)fr);
                const char *name = PyUnicode_AsUTF8(code->co_name);
                if (name != NULL && strcmp(name, "wait_for") == 0 && in_asyncio(code->co_filename)) {
                    PyObject *locals = attr_or_null(fr, "f_locals");
                    PyObject *fut = locals != NULL && PyDict_Check(locals)
                                    ? PyDict_GetItemString(locals, "fut") : NULL;
                    if (fut == inner && prev != NULL) {
                        found = Py_NewRef(t);
                        *at = (PyFrameObject *)Py_NewRef(prev);
                    }
                    Py_XDECREF(locals);
                }
                PyErr_Clear();
                Py_DECREF(code);
            }
            Py_XSETREF(prev, fr);
            PyObject *next = attr_or_null(c, PyCoro_CheckExact(c) ? "cr_await" : "gi_yieldfrom");
            Py_SETREF(c, next);
            if (c == Py_None) {
                Py_CLEAR(c);
            }
        }
        Py_XDECREF(prev);
        Py_XDECREF(c);
        Py_DECREF(t);
    }
    Py_XDECREF(it);
    Py_XDECREF(tasks);
    Py_XDECREF(all);
    Py_XDECREF(loop);
    PyErr_Clear();
    return found;
}
#endif

/* called after an acquire succeeded: no exception is pending */
static void
push(lp_wrapper *w, int kind, int forever, int check)
{
    lp_lockrec *r = lp_rec_for(w, kind);
    lp_holder *who = holder_find(PyThread_get_thread_ident(), holder_task(kind), 1);
    if (who == NULL || who->n >= LP_HELD_MAX) {
        lp_dropped_holders++;
        goto out;
    }
    uint32_t cls = lock_class(r);
    if (check && forever && lp_lock_order) {
        add_edges(who, w, kind, cls, r->serial);
        lp_holder *other = other_holder(kind);
        if (other != NULL && other != who) {
            add_edges(other, w, kind, cls, r->serial);
        }
    }
    lp_held *h = &who->items[who->n++];
    h->w = w;
    h->cls = cls;
    h->serial = r->serial;
    h->code = NULL;
    h->lasti = 0;
    h->frame = NULL;
    /* where it was taken: the innermost frame outside asyncio's own code
     * (an acquire awaited through asyncio.wait_for is taken, for the
     * program, where it awaited wait_for) */
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    h->handoff = 0;
    for (int depth = 0; f != NULL && depth < 8; depth++) {
        PyCodeObject *code = PyFrame_GetCode(f);
        int inner = in_asyncio(code->co_filename);
        int step = inner && is_loop_step(code);
        Py_DECREF(code);
        if (step) {
            /* the event loop's step under the task: the task ran only
             * asyncio's frames, it was made to run this acquire (wait_for
             * on 3.9-3.11); where it was taken is its innermost frame */
            h->handoff = who->task != NULL;
            PyFrameObject *top = PyEval_GetFrame();
            Py_XINCREF(top);
            Py_SETREF(f, top);
            break;
        }
        PyFrameObject *back = inner ? PyFrame_GetBack(f) : NULL;
        if (back == NULL) {
            break;
        }
        Py_SETREF(f, back);
    }
#if PY_VERSION_HEX < 0x030C0000
    if (h->handoff) {
        /* wait_for's own task took it: its caller's task holds it, since
         * the line that awaited wait_for (lock order then sees the locks
         * the caller takes next ordered after it) */
        PyFrameObject *at;
        PyObject *caller = wait_for_caller((PyObject *)who->task, &at);
        if (caller != NULL) {
            unsigned long ident = who->ident;
            who->n--;                           /* h, the latest item */
            if (who->n == 0) {
                holder_drop(who);
            }
            /* identity only: the caller's task outlives the hold's use
             * (a task is forgotten when it ends, as any holder) */
            lp_holder *c = holder_find(ident, caller, 1);
            Py_DECREF(caller);
            if (c == NULL || c->n >= LP_HELD_MAX) {
                lp_dropped_holders++;
                Py_XDECREF(f);
                Py_DECREF(at);
                goto out;
            }
            h = &c->items[c->n++];
            h->w = w;
            h->cls = cls;
            h->serial = r->serial;
            h->code = NULL;
            h->lasti = 0;
            h->handoff = 0;
            Py_XSETREF(f, at);
        }
    }
#endif
    if (f != NULL) {
        h->code = (PyObject *)PyFrame_GetCode(f);
        h->lasti = frame_lasti(f);
        h->frame = f;           /* identity only: it stays on the stack while held */
        Py_DECREF(f);
    }
    r->order_holds++;
    LP_WF_SET(w, LP_W_ORDER);
out:
    if (PyErr_Occurred()) {
        PyErr_Clear();
        lp_count_error();
    }
}

void
lp_order_acquired(lp_wrapper *w, int kind, int forever)
{
    push(w, kind, forever, 1);
}

void
lp_order_reacquired(lp_wrapper *w, int kind)
{
    push(w, kind, 1, 0);
}

/* removes `w` from holder `e`: 1 if it was there (2: a handoff hold) */
static int
pop_from(lp_holder *e, lp_wrapper *w)
{
    for (uint32_t i = e->n; i-- > 0;) {
        if (e->items[i].w == w) {
            int r = e->items[i].handoff ? 2 : 1;
            Py_CLEAR(e->items[i].code);
            for (uint32_t k = i; k + 1 < e->n; k++) {
                e->items[k] = e->items[k + 1];
            }
            e->n--;
            if (e->n == 0) {
                holder_drop(e);
            }
            return r;
        }
    }
    return 0;
}

void
lp_order_released(lp_wrapper *w)
{
    lp_lockrec *r = w->rec;
    if (r == NULL || r->order_holds == 0) {
        LP_WF_CLEAR(w, LP_W_ORDER);
        return;
    }
    /* the releasing thread's (or task's) hold; else, a lock or semaphore
     * released by another thread than its taker, the holder that has it */
    const void *task = lp_kind_is_async(r->kind) ? holder_task(r->kind) : NULL;
    lp_holder *e = holder_find(PyThread_get_thread_ident(), task, 0);
    int done = e != NULL && pop_from(e, w);
    for (uint32_t i = 0; !done && i < capholders; i++) {
        lp_holder *o = &holders[i];
        int popped = o->ident != 0 && o->ident != LP_TOMB ? pop_from(o, w) : 0;
        if (popped) {
            done = 1;
            /* taken by one thread or task, released by another: a signal
             * or a group-held lock, never an owned one */
            if (popped == 1) {
                mark_unordered(lock_class(r), w, r->kind,
                               "released by another thread or task than the one that took it");
            }
        }
    }
    if (done) {
        r->order_holds--;
    }
    if (!done || r->order_holds == 0) {
        LP_WF_CLEAR(w, LP_W_ORDER);
    }
    PyErr_Clear();
}

/* a wrapper being freed: its holds are forgotten (a lock dropped while held) */
void
lp_order_forget(lp_wrapper *w)
{
    for (uint32_t i = 0; i < capholders; i++) {
        lp_holder *o = &holders[i];
        while (o->ident != 0 && o->ident != LP_TOMB && pop_from(o, w)) {
        }
    }
}

/* The holders of `w` now, for the hang doctor: a list of (thread ident,
 * task identity or None, file, line, function where it was taken). */
PyObject *
lp_order_holders_of(lp_wrapper *w)
{
    PyObject *out = PyList_New(0);
    for (uint32_t i = 0; out != NULL && i < capholders; i++) {
        lp_holder *o = &holders[i];
        if (o->ident == 0 || o->ident == LP_TOMB) {
            continue;
        }
        for (uint32_t k = 0; k < o->n; k++) {
            const lp_held *h = &o->items[k];
            if (h->w != w) {
                continue;
            }
            PyCodeObject *c = (PyCodeObject *)h->code;
            PyObject *t = Py_BuildValue("(kNOiO)", o->ident,
                                        o->task ? PyLong_FromVoidPtr((void *)o->task)
                                                : Py_NewRef(Py_None),
                                        c ? c->co_filename : Py_None,
                                        c ? PyCode_Addr2Line(c, h->lasti) : 0,
                                        c ? c->co_name : Py_None);
            if (t == NULL || PyList_Append(out, t) < 0) {
                Py_XDECREF(t);
                Py_CLEAR(out);
                break;
            }
            Py_DECREF(t);
            break;
        }
    }
    return out;
}

/* ------------------------------------------------------------------------ */
/* Python API                                                                */
/* ------------------------------------------------------------------------ */

static void
clear_all(void)
{
    for (uint32_t i = 0; i < capholders; i++) {
        for (uint32_t k = 0; k < holders[i].n; k++) {
            Py_CLEAR(holders[i].items[k].code);
        }
    }
    PyMem_Free(holders);
    holders = NULL;
    capholders = usedholders = tombholders = task_holders = 0;
    for (uint32_t i = 0; i < nedges; i++) {
        Py_CLEAR(edges[i].info);
    }
    for (uint32_t i = 0; i < n_ipairs; i++) {
        Py_CLEAR(ipairs[i].info);
    }
    nedges = nclasses = n_ipairs = 0;
    lp_index *ixs[] = {&edge_ix, &class_ix, &ipair_ix};
    for (int i = 0; i < 3; i++) {
        PyMem_Free(ixs[i]->slots);
        ixs[i]->slots = NULL;
        ixs[i]->mask = 0;
    }
    lp_dropped_order_edges = 0;
    lp_dropped_holders = 0;
    PyList_SetSlice(cycles, 0, PyList_GET_SIZE(cycles), NULL);
    PyList_SetSlice(cycle_classes, 0, PyList_GET_SIZE(cycle_classes), NULL);
    PySet_Clear(reported);
    PyMem_Free(unordered);
    unordered = NULL;
    unordered_cap = unordered_n = 0;
    unordered_skips = 0;
    PyList_SetSlice(unordered_info, 0, PyList_GET_SIZE(unordered_info), NULL);
}

/* whether cycle i passes through an unordered class */
static int
cycle_set_aside(Py_ssize_t i)
{
    PyObject *cls = PyList_GET_ITEM(cycle_classes, i);
    for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(cls); k++) {
        if (is_unordered((uint32_t)PyLong_AsUnsignedLong(PyTuple_GET_ITEM(cls, k)))) {
            return 1;
        }
    }
    return 0;
}

/* reset(): the held locks stay known (they are still held); the edges and
 * cycles found so far are kept too: an inversion is a finding of the run,
 * not of a window */
void
lp_order_after_fork(void)
{
    /* the child's threads are gone but its own: holds of other threads go */
    unsigned long me = PyThread_get_thread_ident();
    for (uint32_t i = 0; i < capholders; i++) {
        lp_holder *o = &holders[i];
        if (o->ident != 0 && o->ident != LP_TOMB && o->ident != me) {
            for (uint32_t k = 0; k < o->n; k++) {
                Py_CLEAR(o->items[k].code);
            }
            o->n = 0;
            holder_drop(o);
        }
    }
}

static PyObject *
py_lock_order_cycles(PyObject *mod, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    for (Py_ssize_t i = 0; out != NULL && i < PyList_GET_SIZE(cycles); i++) {
        if (!cycle_set_aside(i) && PyList_Append(out, PyList_GET_ITEM(cycles, i)) < 0) {
            Py_CLEAR(out);
        }
    }
    return out;
}

/* lockprof.order_exempt(lock) on wrapper w of kind `kind`: its class is
 * unordered; 0 when it has no record */
int
lp_order_exempt(lp_wrapper *w, int kind)
{
    lp_lockrec *r = lp_rec_for(w, kind);
    if (r == NULL) {
        return 0;
    }
    mark_unordered(lock_class(r), w, kind, "lockprof.order_exempt()");
    return 1;
}

static PyObject *
py_lock_order_unordered(PyObject *mod, PyObject *unused)
{
    return PyObject_CallMethod(unordered_info, "copy", NULL);
}

static PyObject *
py_lock_order_clear(PyObject *mod, PyObject *unused)
{
    clear_all();
    Py_RETURN_NONE;
}

static PyObject *
py_lock_order_counters(PyObject *mod, PyObject *unused)
{
    Py_ssize_t aside = 0;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(cycles); i++) {
        aside += cycle_set_aside(i);
    }
    return Py_BuildValue("{sIsIsKsKsIsnsnsIsK}", "order_edges", nedges, "order_instance_pairs",
                         n_ipairs, "dropped_order_edges", (unsigned long long)lp_dropped_order_edges,
                         "dropped_order_holds", (unsigned long long)lp_dropped_holders,
                         "max_order_edges", lp_max_order_edges, "order_cycles",
                         PyList_GET_SIZE(cycles) - aside, "order_cycles_set_aside", aside,
                         "order_unordered_classes", unordered_n, "order_unordered_skips",
                         (unsigned long long)unordered_skips);
}

static PyMethodDef order_methods[] = {
    {"lock_order_cycles", py_lock_order_cycles, METH_NOARGS,
     "lock_order_cycles()\n--\n\nThe potential deadlocks found: lists of edge dicts."},
    {"lock_order_unordered", py_lock_order_unordered, METH_NOARGS,
     "lock_order_unordered()\n--\n\n(name, reason) of each lock class taken out of the order."},
    {"lock_order_clear", py_lock_order_clear, METH_NOARGS,
     "lock_order_clear()\n--\n\nForgets the edges, cycles and held locks."},
    {"lock_order_counters", py_lock_order_counters, METH_NOARGS,
     "lock_order_counters()\n--\n\nSizes, caps and what the caps dropped."},
    {NULL, NULL, 0, NULL},
};

int
lp_order_setup(PyObject *module)
{
    cycles = PyList_New(0);
    cycle_classes = PyList_New(0);
    unordered_info = PyList_New(0);
    reported = PySet_New(NULL);
    if (cycles == NULL || cycle_classes == NULL || unordered_info == NULL || reported == NULL) {
        return -1;
    }
    return lp_add_functions(module, order_methods);
}
