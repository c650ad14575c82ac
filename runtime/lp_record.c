/* lockprof runtime: creation sites, per-lock records and the flush functions
 * that fill them.  Everything here runs on sampled or contended events, on
 * lock creation, or from the Python API.
 *
 * Owns: the creation sites, the lock records (and the overflow record),
 * compaction, the error counters, the target finder, the creation-site skip
 * codes (set_site_skip), and the wrapper's rec
 * pointer.
 * Guarded by: the tables' mutex (lp_tables_mutex, lp_thread.c) on a free-
 * threaded build, the GIL otherwise: every flush function and API function
 * takes it on entry. */
#include "lp_record.h"
#include "lp_index.h"
#include "lp_stack.h"

#if PY_VERSION_HEX >= 0x030B0000
#  define LP_HAVE_LASTI 1
#endif


/* ------------------------------------------------------------------------ */
/* creation sites: (code object, instruction offset) interned to a uint32    */
/* ------------------------------------------------------------------------ */

typedef struct {
    PyObject *code;     /* strong reference; NULL for the unused slot 0 */
    int pos;            /* lasti (3.11+) or line number (3.9, 3.10) */
    /* the last name resolved for a lock made here, and where: locks made at
     * one site and first recorded at one place get that name without a new
     * lookup (a Future's Condition, made and waited on per request) */
    PyObject *name_code;
    int name_pos;
    PyObject *name;
    /* the live lock that name was resolved for (borrowed; cleared when it is
     * freed): while it lives, another lock of the site is looked up anew,
     * since two live locks of one site can have different names
     * (`a, b = Lock(), Lock()`) */
    lp_wrapper *name_owner;
    /* the variable the creating call stores the lock in (`x = Lock()`,
     * `self.x = Lock()`), read once from the bytecode; NULL when none */
    PyObject *target;
    int target_known;
} lp_site;

static lp_site *sites = NULL;
static uint32_t nsites = 1, capsites = 0;
static lp_index site_index = {NULL, 0};
uint32_t lp_max_sites = 1u << 20;
static uint64_t n_dropped_sites = 0;    /* creations whose site did not fit */

static inline uint32_t
site_hash(PyObject *code, int pos)
{
    uint64_t h = (uint64_t)(uintptr_t)code * 0x9E3779B97F4A7C15ULL ^ (uint64_t)(unsigned)pos * 0xC2B2AE3D27D4EB4FULL;
    return (uint32_t)(h >> 32);
}

static uint32_t
site_entry_hash(uint32_t id)
{
    return site_hash(sites[id].code, sites[id].pos);
}

static uint32_t
site_intern(PyObject *code, int pos)
{
    if (lp_index_reserve(&site_index, nsites, 1, nsites, site_entry_hash) < 0) {
        return 0;
    }
    uint32_t j = site_hash(code, pos) & site_index.mask;
    while (site_index.slots[j]) {
        lp_site *s = &sites[site_index.slots[j]];
        if (s->code == code && s->pos == pos) {
            return site_index.slots[j];
        }
        j = (j + 1) & site_index.mask;
    }
    if (nsites >= lp_max_sites) {
        n_dropped_sites++;
        return 0;
    }
    if (nsites >= capsites) {
        uint32_t nc = capsites ? capsites * 2 : 256;
        lp_site *ns = PyMem_Realloc(sites, nc * sizeof(lp_site));
        if (ns == NULL) {
            n_dropped_sites++;
            return 0;
        }
        if (capsites == 0) {
            ns[0].code = NULL;
            ns[0].pos = 0;
        }
        sites = ns;
        capsites = nc;
    }
    uint32_t id = nsites++;
    sites[id].code = Py_NewRef(code);
    sites[id].pos = pos;
    sites[id].name_code = NULL;
    sites[id].name_pos = 0;
    sites[id].name_owner = NULL;
    sites[id].name = NULL;
    sites[id].target = NULL;
    sites[id].target_known = 0;
    site_index.slots[j] = id;
    return id;
}

/* code objects of libraries' lock-making functions that only pass the
 * program's call on (anyio.Lock.__new__, the backend's create_lock, ...):
 * a creation site is the first frame outside them (set_site_skip) */
static PyObject *site_skip = NULL;      /* tuple of code objects */

static int
site_skipped(PyCodeObject *code)
{
    if (site_skip == NULL) {
        return 0;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(site_skip); i++) {
        if (PyTuple_GET_ITEM(site_skip, i) == (PyObject *)code) {
            return 1;
        }
    }
    return 0;
}

/* the first frame outside the site-skip codes: the caller's frame, or the
 * program's frame under a library's lock-making functions (new reference;
 * NULL when no Python frame runs) */
static PyFrameObject *
creation_frame(void)
{
    PyFrameObject *f = PyEval_GetFrame();   /* borrowed: the caller's frame */
    if (f == NULL) {
        return NULL;
    }
    Py_INCREF(f);
    PyCodeObject *code = PyFrame_GetCode(f);
    while (site_skipped(code)) {
        PyFrameObject *back = PyFrame_GetBack(f);
        if (back == NULL) {
            break;
        }
        Py_DECREF(code);
        Py_DECREF(f);
        f = back;
        code = PyFrame_GetCode(f);
    }
    Py_DECREF(code);
    return f;
}

PyObject *
lp_creation_globals(void)
{
    PyFrameObject *f = creation_frame();
    if (f == NULL) {
        return NULL;
    }
#if PY_VERSION_HEX >= 0x030B0000
    PyObject *g = PyFrame_GetGlobals(f);
#else
    PyObject *g = Py_XNewRef(f->f_globals);
#endif
    Py_DECREF(f);
    return g;
}

static uint32_t
record_site_here_locked(void)
{
    PyFrameObject *f = creation_frame();
    if (f == NULL) {
        return 0;
    }
    PyCodeObject *code = PyFrame_GetCode(f);
#ifdef LP_HAVE_LASTI
    int pos = PyFrame_GetLasti(f);
#else
    int pos = PyFrame_GetLineNumber(f);
#endif
    uint32_t id = site_intern((PyObject *)code, pos);
    Py_DECREF(code);
    Py_DECREF(f);
    return id;
}

static PyObject *
lp_py_set_site_skip(PyObject *mod, PyObject *codes)
{
    PyObject *t = PySequence_Tuple(codes);
    if (t == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        if (!PyCode_Check(PyTuple_GET_ITEM(t, i))) {
            PyErr_Format(PyExc_TypeError, "set_site_skip: code objects expected, got %R",
                         PyTuple_GET_ITEM(t, i));
            Py_DECREF(t);
            return NULL;
        }
    }
    LP_XSETREF(site_skip, t);
    Py_RETURN_NONE;
}

uint32_t
lp_record_site_here(void)
{
    lp_enter();
    uint32_t r = record_site_here_locked();
    lp_exit();
    return r;
}

static int
site_line(const lp_site *s)
{
#ifdef LP_HAVE_LASTI
    return PyCode_Addr2Line((PyCodeObject *)s->code, s->pos);
#else
    return s->pos;
#endif
}

/* ------------------------------------------------------------------------ */
/* lock records                                                              */
/* ------------------------------------------------------------------------ */

static lp_lockrec **recs = NULL;
static uint32_t nrecs = 0, caprecs = 0;
uint32_t lp_max_locks = 100000;
static lp_lockrec overflow_rec;          /* events of locks past the cap */
static uint64_t n_dropped_locks = 0;     /* locks folded into overflow_rec */
static uint32_t n_orphans = 0;           /* records whose wrapper is gone */
static uint64_t n_compactions = 0;
static int busy = 0;                     /* a record is being made: no compaction */
static int compact_pending = 0;
static void compact(void);

/* lockprof._names.assignment_target, set by lockprof at start() */
static PyObject *target_finder = NULL;

static PyObject *
site_target(uint32_t id)
{
    lp_site *s = &sites[id];
    if (!s->target_known && target_finder != NULL) {
        s->target_known = 1;
        PyObject *exc_type, *exc_value, *exc_tb;
        PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
        PyObject *code = Py_NewRef(s->code);
#ifdef LP_HAVE_LASTI
        int offset = (int)s->pos;
#else
        /* before 3.11 a site is a line, which may hold several creations:
         * only a library's label (an offset of -1 asks for nothing else) */
        int offset = -1;
#endif
        PyObject *t = lp_fault() ? NULL
                                 : PyObject_CallFunction(target_finder, "Oi", code, offset);
        Py_DECREF(code);
        if (t == NULL) {
            PyErr_Clear();
            lp_name_errors++;
        }
        else if (!PyUnicode_Check(t)) {
            Py_CLEAR(t);
        }
        /* the call ran Python code: the table may have moved */
        LP_XSETREF(sites[id].target, t);
        PyErr_Restore(exc_type, exc_value, exc_tb);
    }
    return Py_XNewRef(sites[id].target);
}

static PyObject *
lp_py_set_target_finder(PyObject *mod, PyObject *fn)
{
    if (!PyCallable_Check(fn)) {
        PyErr_SetString(PyExc_TypeError, "set_target_finder(fn): fn must be callable");
        return NULL;
    }
    LP_XSETREF(target_finder, Py_NewRef(fn));
    Py_RETURN_NONE;
}

static PyObject *
name_for(lp_wrapper *w)
{
    int has_site = w->site != 0 && w->site < nsites;
    if (has_site) {
        PyObject *t = site_target(w->site);
        if (t != NULL) {
            return t;
        }
    }
    PyFrameObject *f = lp_naming_frame();
    if (f == NULL || !has_site) {
        PyObject *name = lp_resolve_name((PyObject *)w, f);
        Py_XDECREF(f);
        return name;
    }
    PyObject *code = (PyObject *)PyFrame_GetCode(f);
    int pos = lp_frame_position(f);
    PyObject *name;
    lp_site *s = &sites[w->site];
    if (s->name_code == code && s->name_pos == pos &&
        (s->name_owner == NULL || s->name_owner == w)) {
        Py_DECREF(code);
        name = Py_XNewRef(s->name);
    }
    else {
        name = lp_resolve_name((PyObject *)w, f);
        s = &sites[w->site];                /* the lookup may have run code */
        LP_XSETREF(s->name_code, code);     /* takes the reference */
        s->name_pos = pos;
        LP_XSETREF(s->name, Py_XNewRef(name));
    }
    s->name_owner = w;
    Py_DECREF(f);
    return name;
}

/* what the lock belongs to (lp_resolve_owner), read in the frame that first
 * used it, when that frame's code is in the file that made the lock */
static PyObject *
owner_for(lp_wrapper *w)
{
    if (w->site == 0 || w->site >= nsites) {
        return NULL;
    }
    int line = 0;
    PyObject *code = lp_site_code(w->site, &line);     /* borrowed */
    if (code == NULL) {
        return NULL;
    }
    PyObject *file = PyObject_GetAttrString(code, "co_filename");
    if (file == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyFrameObject *f = lp_naming_frame();
    PyObject *owner = lp_resolve_owner(f, file);
    Py_XDECREF(f);
    Py_DECREF(file);
    return owner;
}

static uint64_t next_serial = 1;

static lp_lockrec *
rec_for(lp_wrapper *w, int kind)
{
    if (LP_LIKELY(w->rec != NULL)) {
        return w->rec;
    }
    lp_lockrec *r = NULL;
    if (compact_pending || (nrecs >= lp_max_locks && n_orphans > 0)) {
        compact();      /* the dead locks' records make room */
    }
    if (nrecs < lp_max_locks) {
        if (nrecs >= caprecs) {
            uint32_t nc = caprecs ? caprecs * 2 : 64;
            lp_lockrec **nr = PyMem_Realloc(recs, nc * sizeof(*recs));
            if (nr != NULL) {
                recs = nr;
                caprecs = nc;
            }
        }
        if (nrecs < caprecs && !lp_fault()) {
            r = PyMem_Calloc(1, sizeof(lp_lockrec));
        }
    }
    if (r == NULL) {
        if (nrecs < lp_max_locks) {
            lp_count_error();
        }
        n_dropped_locks++;
        LP_STORE_REL(w->rec, &overflow_rec);
        return w->rec;
    }
    r->id = ++nrecs;
    r->nlocks = 1;
    r->kind = kind;
    r->site = w->site;
    r->release_thread = UINT32_MAX;     /* no release with waiters seen yet */
    r->release_labels = UINT32_MAX;
    r->serial = next_serial++;
    recs[r->id - 1] = r;
    LP_STORE_REL(w->rec, r);
    /* finding the name may run the garbage collector, and so free wrappers:
     * no compaction until the record is complete */
    busy++;
    r->name = name_for(w);
    r->owner = owner_for(w);
    busy--;
    return r;
}

/* ------------------------------------------------------------------------ */
/* Python API: snapshot, reset, limits                                       */
/* ------------------------------------------------------------------------ */

static PyObject *kind_names = NULL;   /* tuple of spec keys, index = kind */
static unsigned char kind_async[64];  /* the kind is an asyncio lock's (set at init) */

int
lp_kind_is_async(int kind)
{
    return kind >= 0 && kind < 64 && kind_async[kind];
}

void
lp_record_set_async(int kind, int is_async)
{
    if (kind >= 0 && kind < 64) {
        kind_async[kind] = (unsigned char)(is_async != 0);
    }
}

static int
put(PyObject *d, const char *k, PyObject *v)
{
    if (v == NULL) {
        return -1;
    }
    int rc = PyDict_SetItemString(d, k, v);
    Py_DECREF(v);
    return rc;
}

static PyObject *
rec_to_dict(const lp_lockrec *r)
{
    PyObject *d = PyDict_New();
    if (d == NULL) {
        return NULL;
    }
    PyObject *kind = (r->kind >= 0 && kind_names && r->kind < PyTuple_GET_SIZE(kind_names))
                         ? Py_NewRef(PyTuple_GET_ITEM(kind_names, r->kind))
                         : PyUnicode_FromString("<other>");
    PyObject *file = Py_None, *func = Py_None;
    int line = 0;
    if (r->site > 0 && r->site < nsites) {
        const lp_site *s = &sites[r->site];
        PyCodeObject *co = (PyCodeObject *)s->code;
        file = PyObject_GetAttrString((PyObject *)co, "co_filename");
        func = PyObject_GetAttrString((PyObject *)co, "co_name");
        line = site_line(s);
        if (file == NULL || func == NULL) {
            Py_XDECREF(file);
            Py_XDECREF(func);
            Py_DECREF(kind);
            Py_DECREF(d);
            return NULL;
        }
    }
    else {
        Py_INCREF(file);
        Py_INCREF(func);
    }
    if (put(d, "id", PyLong_FromUnsignedLong(r->id)) < 0 ||
        put(d, "kind", kind) < 0 ||
        put(d, "file", file) < 0 ||
        put(d, "line", PyLong_FromLong(line)) < 0 ||
        put(d, "function", func) < 0 ||
        put(d, "var", Py_NewRef(r->name ? r->name : Py_None)) < 0 ||
        put(d, "owner", Py_NewRef(r->owner ? r->owner : Py_None)) < 0 ||
        put(d, "acquisition_samples", PyLong_FromUnsignedLongLong(r->acq_samples)) < 0 ||
        put(d, "acquisitions", PyFloat_FromDouble(r->acq_estimate)) < 0 ||
        put(d, "contentions", PyLong_FromUnsignedLongLong(r->contentions)) < 0 ||
        put(d, "timeouts", PyLong_FromUnsignedLongLong(r->timeouts)) < 0 ||
        put(d, "wait_ns", PyLong_FromLongLong(r->wait_ns)) < 0 ||
        put(d, "max_wait_ns", PyLong_FromLongLong(r->max_wait_ns)) < 0 ||
        put(d, "hold_samples", PyLong_FromUnsignedLongLong(r->hold_samples)) < 0 ||
        put(d, "hold_ns", PyFloat_FromDouble(r->hold_ns_estimate)) < 0 ||
        put(d, "cond_waits", PyLong_FromUnsignedLongLong(r->cond_waits)) < 0 ||
        put(d, "cond_wait_ns", PyLong_FromLongLong(r->cond_wait_ns)) < 0 ||
        put(d, "locks", PyLong_FromUnsignedLong(r->nlocks ? r->nlocks : 1)) < 0) {
        Py_DECREF(d);
        return NULL;
    }
    return d;
}

static int
rec_empty(const lp_lockrec *r)
{
    return r->acq_samples == 0 && r->contentions == 0 && r->hold_samples == 0 &&
           r->cond_waits == 0;
}

static PyObject *
lp_py_snapshot(PyObject *mod, PyObject *unused)
{
    if (n_orphans > 0) {
        compact();      /* dead locks shown one record per site and name */
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i <= nrecs; i++) {
        const lp_lockrec *r = (i < nrecs) ? recs[i] : &overflow_rec;
        if (rec_empty(r)) {
            continue;
        }
        PyObject *d = rec_to_dict(r);
        if (d == NULL || PyList_Append(out, d) < 0) {
            Py_XDECREF(d);
            Py_DECREF(out);
            return NULL;
        }
        Py_DECREF(d);
    }
    return out;
}

static void
rec_zero(lp_lockrec *r)
{
    r->acq_samples = 0;
    r->acq_estimate = 0;
    r->contentions = 0;
    r->timeouts = 0;
    r->wait_ns = 0;
    r->max_wait_ns = 0;
    r->hold_samples = 0;
    r->hold_ns_estimate = 0;
    r->cond_waits = 0;
    r->cond_wait_ns = 0;
    /* pending holds are kept: their release may come after the reset */
}

lp_lockrec *
lp_rec_for(lp_wrapper *w, int kind)
{
    return rec_for(w, kind);
}

/* file:line:var of a lock (file:line when unnamed), for reports */
PyObject *
lp_lock_display_name(lp_wrapper *w, int kind)
{
    lp_lockrec *r = w->rec != NULL ? w->rec : (kind >= 0 ? rec_for(w, kind) : NULL);
    uint32_t site = r != NULL && r != &overflow_rec ? r->site : w->site;
    PyObject *var = r != NULL ? r->name : NULL;
    if (site == 0 || site >= nsites) {
        return var != NULL ? PyUnicode_FromFormat("<unknown>:%U", var)
                           : PyUnicode_FromString("<unknown>");
    }
    const lp_site *s = &sites[site];
    PyObject *file = ((PyCodeObject *)s->code)->co_filename;
    int line = site_line(s);
    if (var != NULL && PyUnicode_Check(var) && PyUnicode_FindChar(var, ' ', 0,
                                                                  PyUnicode_GET_LENGTH(var), 1) >= 0) {
        return Py_NewRef(var);     /* a library's label (lockprof._names.LABELS) */
    }
    return var != NULL ? PyUnicode_FromFormat("%U:%d:%U", file, line, var)
                       : PyUnicode_FromFormat("%U:%d", file, line);
}

/* the wrapper owning w->rec is being freed: its record is kept, marked
 * orphan, and folded per site by a later compaction */
void
lp_record_orphan(lp_wrapper *w)
{
    if (w->site != 0 && w->site < nsites && sites[w->site].name_owner == w) {
        sites[w->site].name_owner = NULL;
    }
    if (w->rec != NULL && w->rec != &overflow_rec) {
        w->rec->orphan = 1;
        w->rec->nholds = 0;
        w->rec->nwaiting = 0;
        n_orphans++;
        /* many short-lived locks (a Condition per Future, a lock per
         * request): their records are folded per site, amortised O(1) */
        if (n_orphans >= 4096 && n_orphans * 2 >= nrecs) {
            compact();
        }
    }
    w->rec = NULL;
}

/* --- compaction: the records of dead locks, merged per (site, kind, name) --- */

static uint32_t
group_hash(const lp_lockrec *r)
{
    uint64_t h = (uint64_t)r->site * 0x9E3779B97F4A7C15ULL ^ (uint64_t)(unsigned)r->kind * 0xC2B2AE3D27D4EB4FULL;
    if (r->name != NULL) {
        Py_hash_t nh = PyObject_Hash(r->name);   /* a str: cached, never fails */
        if (nh == -1) {
            PyErr_Clear();
            nh = 0;
        }
        h ^= (uint64_t)nh * 0x165667B19E3779F9ULL;
    }
    return (uint32_t)(h ^ (h >> 31));
}

static int
same_group(const lp_lockrec *a, const lp_lockrec *b)
{
    if (a->site != b->site || a->kind != b->kind) {
        return 0;
    }
    if (a->name == b->name) {
        return 1;
    }
    if (a->name == NULL || b->name == NULL) {
        return 0;
    }
    int eq = PyUnicode_Check(a->name) && PyUnicode_Check(b->name) &&
             PyUnicode_Compare(a->name, b->name) == 0;
    PyErr_Clear();
    return eq;
}

void
lp_record_add(lp_lockrec *t, const lp_lockrec *r)
{
    t->acq_samples += r->acq_samples;
    t->acq_estimate += r->acq_estimate;
    t->contentions += r->contentions;
    t->timeouts += r->timeouts;
    t->wait_ns += r->wait_ns;
    if (r->max_wait_ns > t->max_wait_ns) {
        t->max_wait_ns = r->max_wait_ns;
    }
    t->hold_samples += r->hold_samples;
    t->hold_ns_estimate += r->hold_ns_estimate;
    t->cond_waits += r->cond_waits;
    t->cond_wait_ns += r->cond_wait_ns;
    t->nlocks += r->nlocks;
}

static void
compact(void)
{
    /* Every record of a dead lock joins the first dead record of its group
     * (same site, kind and name), which stays as that group's record; live
     * records keep their place.  Records are renumbered and the sample rows
     * follow.  Nothing here runs Python code. */
    if (busy) {
        compact_pending = 1;
        return;
    }
    compact_pending = 0;
    uint32_t *newid = PyMem_Malloc((nrecs + 1) * sizeof(uint32_t));
    uint32_t cap = 1024;
    while (cap < 2 * n_orphans + 2) {
        cap *= 2;
    }
    lp_lockrec **groups = PyMem_Calloc(cap, sizeof(lp_lockrec *));
    if (newid == NULL || groups == NULL) {
        PyMem_Free(newid);
        PyMem_Free(groups);
        lp_count_error();
        return;
    }
    newid[0] = 0;
    uint32_t kept = 0;
    lp_lockrec **dead = PyMem_Malloc((nrecs ? nrecs : 1) * sizeof(lp_lockrec *));
    uint32_t ndead = 0;
    if (dead == NULL) {
        PyMem_Free(newid);
        PyMem_Free(groups);
        lp_count_error();
        return;
    }
    for (uint32_t i = 0; i < nrecs; i++) {
        lp_lockrec *r = recs[i];
        if (r->orphan) {
            uint32_t j = group_hash(r) & (cap - 1);
            while (groups[j] != NULL && !same_group(groups[j], r)) {
                j = (j + 1) & (cap - 1);
            }
            if (groups[j] != NULL) {
                lp_record_add(groups[j], r);
                newid[i + 1] = newid[groups[j]->id];   /* the group's new number */
                dead[ndead++] = r;
                continue;
            }
            groups[j] = r;
        }
        newid[i + 1] = ++kept;
        recs[kept - 1] = r;
    }
    uint32_t old_n = nrecs;
    /* ids: each kept record takes its new number */
    for (uint32_t i = 0; i < kept; i++) {
        recs[i]->id = i + 1;
    }
    if (lp_samples_remap(newid, old_n) < 0) {
        /* rows not remapped: they keep the old numbers, which now name other
         * records; drop them rather than mislabel them */
        lp_samples_reset();
        lp_count_error();
    }
    for (uint32_t i = 0; i < ndead; i++) {
        Py_XDECREF(dead[i]->name);
        Py_XDECREF(dead[i]->owner);
        PyMem_Free(dead[i]->holds);
        PyMem_Free(dead[i]);
    }
    nrecs = kept;
    /* what remains orphaned: one record per group */
    uint32_t groups_left = 0;
    for (uint32_t i = 0; i < cap; i++) {
        groups_left += groups[i] != NULL;
    }
    n_orphans = groups_left;
    n_compactions++;
    PyMem_Free(dead);
    PyMem_Free(groups);
    PyMem_Free(newid);
}

static PyObject *
lp_py_reset(PyObject *mod, PyObject *unused)
{
    /* Records of locks that no longer exist are freed (the samples that
     * refer to them are cleared below), so that a service resetting after
     * every export does not fill lp_max_locks with dead locks.  The rest are
     * zeroed and renumbered. */
    uint32_t kept = 0;
    for (uint32_t i = 0; i < nrecs; i++) {
        lp_lockrec *r = recs[i];
        if (r->orphan) {
            Py_XDECREF(r->name);
            Py_XDECREF(r->owner);
            PyMem_Free(r->holds);
            PyMem_Free(r);
            continue;
        }
        rec_zero(r);
        LP_STORE(r->release_stack, 0);
        r->release_thread = UINT32_MAX;
        r->release_labels = UINT32_MAX;
        r->id = kept + 1;
        recs[kept++] = r;
    }
    nrecs = kept;
    n_orphans = 0;
    rec_zero(&overflow_rec);
    lp_samples_reset();
    lp_labels_reset();
    n_dropped_locks = 0;
    n_dropped_sites = 0;
    LP_STORE(lp_dropped_hang_waits, 0);
    lp_errors_reset();
    Py_RETURN_NONE;
}

static PyObject *
lp_py_counters(PyObject *mod, PyObject *unused)
{
    /* what was dropped or folded, the tables' sizes, and their caps */
    return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,s:K,"
                         "s:I,s:I,s:I,s:I,s:I,s:I,s:I,"
                         "s:I,s:I,s:I,s:I,s:I,s:I,s:I,s:I}",
                         "compactions", (unsigned long long)n_compactions,
                         "name_errors", (unsigned long long)lp_name_errors,
                         "foreign_locks", (unsigned long long)lp_foreign_locks,
                         "dropped_locks", (unsigned long long)n_dropped_locks,
                         "dropped_stacks", (unsigned long long)lp_dropped_stacks,
                         "dropped_samples", (unsigned long long)lp_dropped_samples,
                         "dropped_sites", (unsigned long long)n_dropped_sites,
                         "dropped_thread_names", (unsigned long long)lp_labels_dropped(0),
                         "dropped_task_names", (unsigned long long)lp_labels_dropped(1),
                         "dropped_label_sets",
                         (unsigned long long)lp_labels_dropped(LP_LABEL_SETS),
                         "cut_label_values", (unsigned long long)lp_label_values_cut(),
                         "errors", (unsigned long long)lp_errors(),
                         "locks", (unsigned int)nrecs,
                         "sites", (unsigned int)(nsites - 1),
                         "stacks", (unsigned int)(lp_nstacks - 1),
                         "samples", (unsigned int)lp_nsamples,
                         "thread_names", (unsigned int)lp_label_count(0),
                         "task_names", (unsigned int)lp_label_count(1),
                         "label_sets", (unsigned int)lp_label_count(LP_LABEL_SETS),
                         "max_locks", (unsigned int)lp_max_locks,
                         "max_sites", (unsigned int)lp_max_sites,
                         "max_stacks", (unsigned int)lp_max_stacks,
                         "max_samples", (unsigned int)lp_max_samples,
                         "max_thread_names", (unsigned int)lp_labels_max(0),
                         "max_task_names", (unsigned int)lp_labels_max(1),
                         "max_label_sets", (unsigned int)lp_labels_max(LP_LABEL_SETS),
                         "max_label_value", (unsigned int)lp_label_value_max());
}


/* --- what the export (lp_export.c) reads --- */

uint32_t
lp_records_for_export(lp_lockrec ***out)
{
    if (n_orphans > 0) {
        compact();      /* dead locks shown one record per site and name */
    }
    *out = recs;
    return nrecs;
}

uint32_t
lp_records_for_export_nocompact(lp_lockrec ***out)
{
    *out = recs;
    return nrecs;
}

void
lp_records_hold(int delta)
{
    busy += delta;
    if (busy == 0 && compact_pending) {
        compact();
    }
}

lp_lockrec *
lp_overflow_record(void)
{
    return &overflow_rec;
}

int
lp_record_is_empty(const lp_lockrec *r)
{
    return rec_empty(r);
}

PyObject *
lp_kind_name(int kind)
{
    static PyObject *other = NULL;
    if (kind >= 0 && kind_names && kind < PyTuple_GET_SIZE(kind_names)) {
        return PyTuple_GET_ITEM(kind_names, kind);
    }
    if (other == NULL) {
        other = PyUnicode_InternFromString("<other>");
    }
    return other;
}

PyObject *
lp_site_code(uint32_t site, int *line)
{
    if (site == 0 || site >= nsites) {
        *line = 0;
        return NULL;
    }
    *line = site_line(&sites[site]);
    return sites[site].code;
}

PyObject *
lp_records_reset(void)
{
    return lp_py_reset(NULL, NULL);
}

PyObject *
lp_records_counters(void)
{
    return lp_py_counters(NULL, NULL);
}


static PyObject *
lp_py_set_dispatch(PyObject *mod, PyObject *pairs)
{
    PyObject *t = PySequence_Tuple(pairs);
    if (t == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        PyObject *p = PyTuple_GET_ITEM(t, i);
        if (!PyTuple_Check(p) || PyTuple_GET_SIZE(p) != 2 || !PyCode_Check(PyTuple_GET_ITEM(p, 0))
            || !PyUnicode_Check(PyTuple_GET_ITEM(p, 1))) {
            PyErr_Format(PyExc_TypeError, "set_dispatch: (code, str) pairs expected, got %R", p);
            Py_DECREF(t);
            return NULL;
        }
    }
    lp_enter();
    int r = lp_stack_set_dispatch(t);
    lp_exit();
    Py_DECREF(t);
    if (r < 0) {
        return NULL;
    }
    Py_RETURN_NONE;
}

static PyMethodDef record_methods[] = {
    {"set_dispatch", lp_py_set_dispatch, METH_O,
     "set_dispatch(pairs)\n--\n\n(code, local name) of libraries' functions that hand a "
     "function to a worker thread: stacks through them show that function."},
    {"set_site_skip", lp_py_set_site_skip, METH_O,
     "set_site_skip(codes)\n--\n\nCode objects of libraries' lock-making functions: a lock's "
     "creation site is the first frame outside them."},
    {"set_target_finder", lp_py_set_target_finder, METH_O,
     "set_target_finder(fn)\n--\n\nfn(code, offset) -> the variable the call there stores "
     "its result in, or None (lockprof._names.assignment_target)."},
    {"snapshot", lp_py_snapshot, METH_NOARGS,
     "snapshot()\n--\n\nOne dict per lock with recorded events."},
    {"reset", lp_py_reset, METH_NOARGS, "reset()\n--\n\nZero every record."},
    {"counters", lp_py_counters, METH_NOARGS,
     "counters()\n--\n\nRuntime counters: dropped locks, errors, table sizes."},
    {NULL, NULL, 0, NULL},
};

int
lp_record_setup(PyObject *module)
{
    overflow_rec.release_thread = UINT32_MAX;
    overflow_rec.release_labels = UINT32_MAX;
    overflow_rec.kind = -1;             /* shown as "<other>": locks past lp_max_locks */
    return lp_add_functions(module, record_methods);
}

int
lp_record_set_kinds(PyObject *names)
{
    PyObject *old = kind_names;
    kind_names = Py_NewRef(names);
    Py_XDECREF(old);
    return 0;
}
