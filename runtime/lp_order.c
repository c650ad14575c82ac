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
 * Not an edge: an RLock taken again by its owner (not a first acquisition),
 * a Condition's wait (it releases and retakes its lock), and an acquire that
 * cannot wait forever (non-blocking, or with a timeout): it adds no edge into
 * the lock it tried, but locks taken while holding it still count.
 *
 * Reached only when lock_order is on: the sampling countdown then expires on
 * every acquire (LP_SAMPLED() is unchanged) and the wrapper's LP_W_ORDER flag
 * sends its release here; with it off, the hot path is the same instructions
 * as without this file. */
#include "lp_record.h"
#include "lp_stack.h"

int lp_lock_order = 0;

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

/* class edges: (a, b) -> index into edges; adjacency through next_from */
typedef struct {
    uint32_t a, b;
    int32_t next_from;          /* next edge out of `a`, or -1 */
    PyObject *info;             /* dict: held, acquired, thread_name, ... */
} lp_edge;

static lp_edge *edges = NULL;
static uint32_t nedges = 0, capedges = 0;
static uint64_t *edge_slots = NULL;     /* open addressing: (a << 32 | b) + 1, 0 empty */
static int32_t *edge_slot_ids = NULL;
static uint32_t cap_edge_slots = 0;
/* class -> first edge out of it */
static uint64_t *head_keys = NULL;      /* class + 1, 0 empty */
static int32_t *head_vals = NULL;
static uint32_t cap_heads = 0, nheads = 0;

/* same-class instance pairs: (class, serial a, serial b) */
typedef struct {
    uint64_t a, b;
    uint32_t cls;
    uint32_t used;
    PyObject *info;
} lp_ipair;
static lp_ipair *ipairs = NULL;
static uint32_t cap_ipairs = 0, n_ipairs = 0;

uint32_t lp_max_order_edges = 10000;    /* class edges and instance pairs, each */
uint64_t lp_dropped_order_edges = 0;
uint64_t lp_dropped_holders = 0;        /* acquisitions past LP_HELD_MAX or the table */

static PyObject *cycles = NULL;         /* list of lists of edge dicts */
static PyObject *reported = NULL;       /* set of frozensets of class ids */

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

/* the current Python stack as a list of (file, line, function), innermost
 * first; NULL with no error when it cannot be had */
static PyObject *
frames_here(void)
{
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    int n = 0;
    while (f != NULL && n < LP_MAX_FRAMES_REPORT) {
        PyCodeObject *code = PyFrame_GetCode(f);
        PyObject *t = Py_BuildValue("(OiO)", code->co_filename, PyFrame_GetLineNumber(f),
                                    code->co_name);
        Py_DECREF(code);
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(f);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(t);
        PyFrameObject *back = PyFrame_GetBack(f);
        Py_DECREF(f);
        f = back;
        n++;
    }
    Py_XDECREF(f);
    return out;
}

/* where a held lock was taken, as frames: its own (code, line), then the
 * frames outside the one it was taken in, when that frame is still on the
 * stack (nested `with` blocks: the usual case) */
static PyObject *
held_frames(const lp_held *h)
{
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    PyCodeObject *hc = (PyCodeObject *)h->code;
    PyObject *t = Py_BuildValue("(OiO)", hc->co_filename, PyCode_Addr2Line(hc, h->lasti),
                                hc->co_name);
    if (t == NULL || PyList_Append(out, t) < 0) {
        Py_XDECREF(t);
        Py_DECREF(out);
        return NULL;
    }
    Py_DECREF(t);
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    int found = 0, n = 1;
    while (f != NULL && n < LP_MAX_FRAMES_REPORT) {
        PyFrameObject *back = PyFrame_GetBack(f);
        if (found) {
            PyCodeObject *code = PyFrame_GetCode(f);
            t = Py_BuildValue("(OiO)", code->co_filename, PyFrame_GetLineNumber(f),
                              code->co_name);
            Py_DECREF(code);
            if (t == NULL || PyList_Append(out, t) < 0) {
                Py_XDECREF(t);
                Py_XDECREF(back);
                Py_DECREF(f);
                Py_DECREF(out);
                return NULL;
            }
            Py_DECREF(t);
            n++;
        }
        else if ((const void *)f == h->frame) {
            found = 1;
        }
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
    usedholders = tombholders = 0;
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

static int
heads_put(uint32_t cls, int32_t edge)
{
    if ((nheads + 1) * 2 > cap_heads) {
        uint32_t nc = cap_heads ? cap_heads * 2 : 64;
        uint64_t *nk = PyMem_Calloc(nc, sizeof(uint64_t));
        int32_t *nv = PyMem_Calloc(nc, sizeof(int32_t));
        if (nk == NULL || nv == NULL) {
            PyMem_Free(nk);
            PyMem_Free(nv);
            return -1;
        }
        for (uint32_t i = 0; i < cap_heads; i++) {
            if (head_keys[i] != 0) {
                uint32_t j = (uint32_t)mix64(head_keys[i]) & (nc - 1);
                while (nk[j] != 0) {
                    j = (j + 1) & (nc - 1);
                }
                nk[j] = head_keys[i];
                nv[j] = head_vals[i];
            }
        }
        PyMem_Free(head_keys);
        PyMem_Free(head_vals);
        head_keys = nk;
        head_vals = nv;
        cap_heads = nc;
    }
    uint64_t key = (uint64_t)cls + 1;
    uint32_t j = (uint32_t)mix64(key) & (cap_heads - 1);
    while (head_keys[j] != 0 && head_keys[j] != key) {
        j = (j + 1) & (cap_heads - 1);
    }
    if (head_keys[j] == 0) {
        head_keys[j] = key;
        nheads++;
    }
    head_vals[j] = edge;
    return 0;
}

static int32_t
heads_get(uint32_t cls)
{
    if (cap_heads == 0) {
        return -1;
    }
    uint64_t key = (uint64_t)cls + 1;
    uint32_t j = (uint32_t)mix64(key) & (cap_heads - 1);
    while (head_keys[j] != 0) {
        if (head_keys[j] == key) {
            return head_vals[j];
        }
        j = (j + 1) & (cap_heads - 1);
    }
    return -1;
}

/* the index of edge (a, b), or -1; *slot: where it is or would go */
static int32_t
edge_find(uint32_t a, uint32_t b, uint32_t *slot)
{
    if (cap_edge_slots == 0) {
        return -1;
    }
    uint64_t key = (((uint64_t)a << 32) | b) + 1;
    uint32_t j = (uint32_t)mix64(key) & (cap_edge_slots - 1);
    while (edge_slots[j] != 0) {
        if (edge_slots[j] == key) {
            *slot = j;
            return edge_slot_ids[j];
        }
        j = (j + 1) & (cap_edge_slots - 1);
    }
    *slot = j;
    return -1;
}

static int
edge_slots_grow(void)
{
    uint32_t nc = cap_edge_slots ? cap_edge_slots * 2 : 256;
    uint64_t *ns = PyMem_Calloc(nc, sizeof(uint64_t));
    int32_t *ni = PyMem_Calloc(nc, sizeof(int32_t));
    if (ns == NULL || ni == NULL) {
        PyMem_Free(ns);
        PyMem_Free(ni);
        return -1;
    }
    for (uint32_t i = 0; i < cap_edge_slots; i++) {
        if (edge_slots[i] != 0) {
            uint32_t j = (uint32_t)mix64(edge_slots[i]) & (nc - 1);
            while (ns[j] != 0) {
                j = (j + 1) & (nc - 1);
            }
            ns[j] = edge_slots[i];
            ni[j] = edge_slot_ids[i];
        }
    }
    PyMem_Free(edge_slots);
    PyMem_Free(edge_slot_ids);
    edge_slots = ns;
    edge_slot_ids = ni;
    cap_edge_slots = nc;
    return 0;
}

/* the dict describing edge held -> acquired, for the report */
static PyObject *
edge_info(const lp_holder *who, const lp_held *h, lp_wrapper *w, int kind)
{
    PyObject *held_name = lp_lock_display_name(h->w, -1);
    PyObject *acq_name = lp_lock_display_name(w, kind);
    PyObject *hf = held_frames(h);
    PyObject *af = frames_here();
    /* the acquiring thread and task are the holder's: labelled now */
    uint32_t tl = lp_thread_slot();
    uint32_t kl = who->task != NULL ? lp_task_slot() : LP_LABEL_NONE;
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
    if (depth > 64) {
        return 0;
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

static void
report_cycle(PyObject *edge_dicts, PyObject *key)
{
    int was = PySet_Contains(reported, key);
    if (was != 0) {
        if (was < 0) {
            PyErr_Clear();
        }
        return;
    }
    if (PySet_Add(reported, key) < 0 || PyList_Append(cycles, edge_dicts) < 0) {
        PyErr_Clear();
        lp_count_error();
    }
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
    if (key != NULL) {
        report_cycle(dicts, key);
    }
    else {
        PyErr_Clear();
        lp_count_error();
    }
    Py_XDECREF(key);
    Py_DECREF(dicts);
    Py_DECREF(classes);
done:
    Py_XDECREF(seen);
    Py_XDECREF(path);
}

/* edge from held lock `h` into lock `w` (class `cls`, instance `serial`) */
static void
add_edge(const lp_holder *who, const lp_held *h, lp_wrapper *w, int kind, uint32_t cls,
         uint64_t serial)
{
    if (h->cls == cls) {
        /* one class: per instance; a -> b then b -> a is the inversion */
        if (h->serial == 0 || serial == 0 || h->serial == serial) {
            return;
        }
        int32_t back = -1;
        for (uint32_t i = 0; i < n_ipairs; i++) {
            lp_ipair *p = &ipairs[i];
            if (p->cls != cls) {
                continue;
            }
            if (p->a == h->serial && p->b == serial) {
                return;             /* known */
            }
            if (p->a == serial && p->b == h->serial) {
                back = (int32_t)i;
            }
        }
        if (n_ipairs >= lp_max_order_edges) {
            lp_dropped_order_edges++;
            return;
        }
        if (n_ipairs >= cap_ipairs) {
            uint32_t nc = cap_ipairs ? cap_ipairs * 2 : 64;
            lp_ipair *np = PyMem_Realloc(ipairs, nc * sizeof(lp_ipair));
            if (np == NULL) {
                lp_count_error();
                return;
            }
            ipairs = np;
            cap_ipairs = nc;
        }
        PyObject *info = edge_info(who, h, w, kind);
        if (info == NULL) {
            PyErr_Clear();
            lp_count_error();
            return;
        }
        lp_ipair *p = &ipairs[n_ipairs++];
        p->a = h->serial;
        p->b = serial;
        p->cls = cls;
        p->info = info;
        if (back >= 0) {
            PyObject *dicts = Py_BuildValue("[OO]", ipairs[back].info, info);
            PyObject *key = Py_BuildValue("(sk)", "class", (unsigned long)cls);
            if (dicts != NULL && key != NULL) {
                report_cycle(dicts, key);
            }
            else {
                PyErr_Clear();
                lp_count_error();
            }
            Py_XDECREF(dicts);
            Py_XDECREF(key);
        }
        return;
    }
    uint32_t slot = 0;
    if (edge_find(h->cls, cls, &slot) >= 0) {
        return;                     /* the warm path: a lookup */
    }
    if (nedges >= lp_max_order_edges) {
        lp_dropped_order_edges++;
        return;
    }
    if ((nedges + 1) * 2 > cap_edge_slots) {
        if (edge_slots_grow() < 0) {
            lp_count_error();
            return;
        }
        (void)edge_find(h->cls, cls, &slot);
    }
    if (nedges >= capedges) {
        uint32_t nc = capedges ? capedges * 2 : 64;
        lp_edge *ne = PyMem_Realloc(edges, nc * sizeof(lp_edge));
        if (ne == NULL) {
            lp_count_error();
            return;
        }
        edges = ne;
        capedges = nc;
    }
    PyObject *info = edge_info(who, h, w, kind);
    if (info == NULL) {
        PyErr_Clear();
        lp_count_error();
        return;
    }
    int32_t e = (int32_t)nedges++;
    edges[e].a = h->cls;
    edges[e].b = cls;
    edges[e].info = info;
    edges[e].next_from = heads_get(h->cls);
    if (heads_put(h->cls, e) < 0) {
        edges[e].next_from = -1;
        lp_count_error();
    }
    edge_slots[slot] = (((uint64_t)h->cls << 32) | cls) + 1;
    edge_slot_ids[slot] = e;
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
    uint32_t cls = r->site != 0 ? r->site : 0x80000000u | (uint32_t)(r->serial & 0x7fffffff);
    if (check && forever) {
        for (uint32_t i = 0; i < who->n; i++) {
            if (who->items[i].w != w) {
                add_edge(who, &who->items[i], w, kind, cls, r->serial);
            }
        }
    }
    lp_held *h = &who->items[who->n++];
    h->w = w;
    h->cls = cls;
    h->serial = r->serial;
    h->code = NULL;
    h->lasti = 0;
    h->frame = NULL;
    PyFrameObject *f = PyEval_GetFrame();
    if (f != NULL) {
        h->code = (PyObject *)PyFrame_GetCode(f);
        h->lasti = frame_lasti(f);
        h->frame = f;
    }
    r->order_holds++;
    w->flags |= LP_W_ORDER;
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

/* removes `w` from holder `e`: 1 if it was there */
static int
pop_from(lp_holder *e, lp_wrapper *w)
{
    for (uint32_t i = e->n; i-- > 0;) {
        if (e->items[i].w == w) {
            Py_CLEAR(e->items[i].code);
            for (uint32_t k = i; k + 1 < e->n; k++) {
                e->items[k] = e->items[k + 1];
            }
            e->n--;
            if (e->n == 0) {
                holder_drop(e);
            }
            return 1;
        }
    }
    return 0;
}

void
lp_order_released(lp_wrapper *w)
{
    lp_lockrec *r = w->rec;
    if (r == NULL || r->order_holds == 0) {
        w->flags &= ~LP_W_ORDER;
        return;
    }
    /* the releasing thread's (or task's) hold; else, a lock or semaphore
     * released by another thread than its taker, the holder that has it */
    const void *task = lp_kind_is_async(r->kind) ? holder_task(r->kind) : NULL;
    lp_holder *e = holder_find(PyThread_get_thread_ident(), task, 0);
    int done = e != NULL && pop_from(e, w);
    for (uint32_t i = 0; !done && i < capholders; i++) {
        lp_holder *o = &holders[i];
        if (o->ident != 0 && o->ident != LP_TOMB && pop_from(o, w)) {
            done = 1;
        }
    }
    if (done) {
        r->order_holds--;
    }
    if (!done || r->order_holds == 0) {
        w->flags &= ~LP_W_ORDER;
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
    capholders = usedholders = tombholders = 0;
    for (uint32_t i = 0; i < nedges; i++) {
        Py_CLEAR(edges[i].info);
    }
    nedges = 0;
    PyMem_Free(edge_slots);
    PyMem_Free(edge_slot_ids);
    edge_slots = NULL;
    edge_slot_ids = NULL;
    cap_edge_slots = 0;
    PyMem_Free(head_keys);
    PyMem_Free(head_vals);
    head_keys = NULL;
    head_vals = NULL;
    cap_heads = nheads = 0;
    for (uint32_t i = 0; i < n_ipairs; i++) {
        Py_CLEAR(ipairs[i].info);
    }
    n_ipairs = 0;
    lp_dropped_order_edges = 0;
    lp_dropped_holders = 0;
    PyList_SetSlice(cycles, 0, PyList_GET_SIZE(cycles), NULL);
    PySet_Clear(reported);
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
    return PyObject_CallMethod(cycles, "copy", NULL);
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
    return Py_BuildValue("{sIsIsKsKsIsn}", "order_edges", nedges, "order_instance_pairs",
                         n_ipairs, "dropped_order_edges", (unsigned long long)lp_dropped_order_edges,
                         "dropped_order_holds", (unsigned long long)lp_dropped_holders,
                         "max_order_edges", lp_max_order_edges, "order_cycles",
                         PyList_GET_SIZE(cycles));
}

static PyMethodDef order_methods[] = {
    {"lock_order_cycles", py_lock_order_cycles, METH_NOARGS,
     "lock_order_cycles()\n--\n\nThe potential deadlocks found: lists of edge dicts."},
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
    reported = PySet_New(NULL);
    if (cycles == NULL || reported == NULL) {
        return -1;
    }
    return PyModule_AddFunctions(module, order_methods);
}
