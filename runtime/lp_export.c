/* lockprof runtime: the export.
 *
 * export() turns the runtime's tables into one snapshot, built once per
 * export: the locks grouped by name (exact figures summed), the frames as
 * (file, function, line) interned once each, the stacks as a flat array of
 * frame indices, and the rows as columns (lock, stack, event, thread, task,
 * samples, count, value).  Nothing in it is a per-row Python object: the
 * Python model (lockprof/export/model.py) wraps the columns as memoryviews.
 *
 * encode_pprof() writes such a snapshot as profile.proto bytes; the Python
 * side compresses them.  Neither runs user code.
 *
 * Owns: nothing that outlives a call: export() reads the record, stack,
 * sample and label tables and builds a snapshot; encode_pprof() reads only
 * its arguments.
 * Guarded by: export() runs under the tables' mutex (lp_tables_mutex,
 * lp_thread.c) on a free-threaded build, the GIL otherwise
 * (lp_add_functions); encode_pprof() takes no lock. */
#include "lp_record.h"
#include "lp_stack.h"

#if PY_VERSION_HEX >= 0x030B0000
#  define LP_HAVE_LASTI 1
#endif

/* ------------------------------------------------------------------------ */
/* small containers                                                          */
/* ------------------------------------------------------------------------ */

typedef struct {
    uint8_t *p;
    size_t n, cap;
    int failed;
} lp_buf;

static int
buf_reserve(lp_buf *b, size_t more)
{
    if (b->failed) {
        return -1;
    }
    if (b->n + more <= b->cap) {
        return 0;
    }
    size_t nc = b->cap ? b->cap : 4096;
    while (nc < b->n + more) {
        nc *= 2;
    }
    uint8_t *np = PyMem_Realloc(b->p, nc);
    if (np == NULL) {
        b->failed = 1;
        return -1;
    }
    b->p = np;
    b->cap = nc;
    return 0;
}

static inline void
buf_put(lp_buf *b, const void *data, size_t n)
{
    if (buf_reserve(b, n) == 0) {
        memcpy(b->p + b->n, data, n);
        b->n += n;
    }
}

static inline size_t
varint_len(uint64_t v)
{
    size_t n = 1;
    while (v >= 0x80) {
        v >>= 7;
        n++;
    }
    return n;
}

static inline void
buf_varint(lp_buf *b, uint64_t v)
{
    if (buf_reserve(b, 10) < 0) {
        return;
    }
    uint8_t *p = b->p + b->n;
    while (v >= 0x80) {
        *p++ = (uint8_t)(v | 0x80);
        v >>= 7;
    }
    *p++ = (uint8_t)v;
    b->n = (size_t)(p - b->p);
}

static inline void
buf_key(lp_buf *b, uint32_t field, uint32_t wire)
{
    buf_varint(b, ((uint64_t)field << 3) | wire);
}

/* field = varint, omitted when 0 (proto3) */
static inline void
buf_int(lp_buf *b, uint32_t field, uint64_t v)
{
    if (v) {
        buf_key(b, field, 0);
        buf_varint(b, v);
    }
}

static inline void
buf_bytes(lp_buf *b, uint32_t field, const void *data, size_t n)
{
    buf_key(b, field, 2);
    buf_varint(b, n);
    buf_put(b, data, n);
}

static void
buf_free(lp_buf *b)
{
    PyMem_Free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
}

typedef struct {
    uint32_t *v;
    uint32_t n, cap;
    int failed;
} lp_vec;

static inline void
vec_push(lp_vec *a, uint32_t x)
{
    if (a->n >= a->cap) {
        uint32_t nc = a->cap ? a->cap * 2 : 1024;
        uint32_t *nv = a->failed ? NULL : PyMem_Realloc(a->v, nc * sizeof(uint32_t));
        if (nv == NULL) {
            a->failed = 1;
            return;
        }
        a->v = nv;
        a->cap = nc;
    }
    a->v[a->n++] = x;
}

/* open-addressing map from a pair of 64-bit keys to a uint32 */
typedef struct {
    uint64_t *ka, *kb;
    uint32_t *val;          /* UINT32_MAX: empty */
    uint32_t mask, count;
} lp_pmap;

static inline uint64_t
mix(uint64_t a, uint64_t b)
{
    uint64_t h = a * 0x9E3779B97F4A7C15ULL ^ (b + 0x632BE59BD9B4E019ULL) * 0xC2B2AE3D27D4EB4FULL;
    return h ^ (h >> 29);
}

static int
pmap_init(lp_pmap *m, uint32_t hint)
{
    uint32_t cap = 1024;
    while (cap < hint * 2) {
        cap *= 2;
    }
    m->ka = PyMem_Malloc(cap * sizeof(uint64_t));
    m->kb = PyMem_Malloc(cap * sizeof(uint64_t));
    m->val = PyMem_Malloc(cap * sizeof(uint32_t));
    if (m->ka == NULL || m->kb == NULL || m->val == NULL) {
        return -1;
    }
    memset(m->val, 0xff, cap * sizeof(uint32_t));
    m->mask = cap - 1;
    m->count = 0;
    return 0;
}

static void
pmap_free(lp_pmap *m)
{
    PyMem_Free(m->ka);
    PyMem_Free(m->kb);
    PyMem_Free(m->val);
    m->ka = m->kb = NULL;
    m->val = NULL;
}

/* the slot of (a, b): its value is UINT32_MAX when absent */
static uint32_t
pmap_slot(const lp_pmap *m, uint64_t a, uint64_t b)
{
    uint32_t j = (uint32_t)mix(a, b) & m->mask;
    while (m->val[j] != UINT32_MAX && (m->ka[j] != a || m->kb[j] != b)) {
        j = (j + 1) & m->mask;
    }
    return j;
}

static int
pmap_grow(lp_pmap *m)
{
    if ((m->count + 1) * 2 <= m->mask) {
        return 0;
    }
    lp_pmap n;
    if (pmap_init(&n, (m->mask + 1)) < 0) {
        pmap_free(&n);
        return -1;
    }
    for (uint32_t j = 0; j <= m->mask; j++) {
        if (m->val[j] != UINT32_MAX) {
            uint32_t k = pmap_slot(&n, m->ka[j], m->kb[j]);
            n.ka[k] = m->ka[j];
            n.kb[k] = m->kb[j];
            n.val[k] = m->val[j];
        }
    }
    n.count = m->count;
    pmap_free(m);
    *m = n;
    return 0;
}

/* the value of (a, b), or `fresh` stored for it; *added says which */
static uint32_t
pmap_get_or_add(lp_pmap *m, uint64_t a, uint64_t b, uint32_t fresh, int *added)
{
    *added = 0;
    if (pmap_grow(m) < 0) {
        return UINT32_MAX;
    }
    uint32_t j = pmap_slot(m, a, b);
    if (m->val[j] != UINT32_MAX) {
        return m->val[j];
    }
    m->ka[j] = a;
    m->kb[j] = b;
    m->val[j] = fresh;
    m->count++;
    *added = 1;
    return fresh;
}

static PyObject *
bytes_of(const void *p, size_t n)
{
    return PyBytes_FromStringAndSize(n ? (const char *)p : "", (Py_ssize_t)n);
}

/* ------------------------------------------------------------------------ */
/* export(): the snapshot                                                    */
/* ------------------------------------------------------------------------ */

typedef struct {
    /* frames: (code, pos) -> frame, then (code, line) -> frame */
    lp_pmap by_pos, by_line;
    PyObject *frames;       /* list of (file, function, line) */
    lp_vec flags;           /* per frame: 1 cut here, 2 runpy */
    PyObject *cut_file;
    /* stacks */
    lp_vec offsets, flat;
    lp_pmap by_hash;        /* (hash, n) -> first export stack with it */
    lp_vec chain;           /* next export stack with the same key */
    uint32_t *memo;         /* runtime stack id -> export stack */
    uint32_t nmemo;         /* the stacks there were when the export began */
} lp_exp;

static int
is_runpy_file(PyObject *file)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(file, &n);
    if (s == NULL) {
        PyErr_Clear();
        return 0;
    }
    return strcmp(s, "<frozen runpy>") == 0 ||
           (n >= 9 && (strcmp(s + n - 9, "/runpy.py") == 0 || strcmp(s + n - 9, "\\runpy.py") == 0));
}

/* the export frame of (code, line), made on first sight; UINT32_MAX on
 * failure (an exception is set) */
static uint32_t
frame_of_line(lp_exp *x, PyObject *code, int line)
{
    int added;
    uint32_t n = (uint32_t)PyList_GET_SIZE(x->frames);
    uint32_t f = pmap_get_or_add(&x->by_line, (uint64_t)(uintptr_t)code, (uint64_t)(int64_t)line,
                                 n, &added);
    if (f == UINT32_MAX) {
        PyErr_NoMemory();
        return f;
    }
    if (!added) {
        return f;
    }
    PyObject *t;
    uint32_t flag = 0;
    if (code == NULL) {
        /* the frames past max_frames, as one pseudo-frame at the root */
        t = Py_BuildValue("(sNi)", "", PyUnicode_FromFormat("<%d frames omitted>", line), 0);
    }
    else {
        PyObject *file = PyObject_GetAttrString(code, "co_filename");
        PyObject *name = PyObject_GetAttrString(code, "co_name");
        t = (file && name) ? Py_BuildValue("(OOi)", file, name, line) : NULL;
        if (file != NULL && PyUnicode_Check(file)) {
            if (x->cut_file != NULL && PyUnicode_Compare(file, x->cut_file) == 0) {
                flag |= 1;
            }
            if (is_runpy_file(file)) {
                flag |= 2;
            }
            PyErr_Clear();
        }
        Py_XDECREF(file);
        Py_XDECREF(name);
    }
    if (t == NULL || PyList_Append(x->frames, t) < 0) {
        Py_XDECREF(t);
        return UINT32_MAX;
    }
    Py_DECREF(t);
    vec_push(&x->flags, flag);
    return n;
}

static uint32_t
frame_of(lp_exp *x, const lp_frame *fr)
{
    if (pmap_grow(&x->by_pos) < 0) {
        PyErr_NoMemory();
        return UINT32_MAX;
    }
    uint64_t a = (uint64_t)(uintptr_t)fr->code, b = (uint64_t)fr->pos;
    uint32_t slot = pmap_slot(&x->by_pos, a, b);
    if (x->by_pos.val[slot] != UINT32_MAX) {
        return x->by_pos.val[slot];
    }
#ifdef LP_HAVE_LASTI
    int line = PyCode_Addr2Line((PyCodeObject *)fr->code, (int)fr->pos);
#else
    int line = (int)fr->pos;
#endif
    uint32_t id = frame_of_line(x, fr->code, line);
    if (id != UINT32_MAX) {
        /* by_pos did not move: frame_of_line fills by_line only */
        x->by_pos.ka[slot] = a;
        x->by_pos.kb[slot] = b;
        x->by_pos.val[slot] = id;
        x->by_pos.count++;
    }
    return id;
}

/* the export stack of runtime stack `sid`: frames mapped, lockprof's own
 * frames cut, interned by content (two runtime stacks that differ only in
 * instruction offsets on one line are one export stack) */
static uint32_t
stack_of(lp_exp *x, uint32_t sid, uint32_t *scratch)
{
    if (sid < x->nmemo && x->memo[sid] != UINT32_MAX) {
        return x->memo[sid];
    }
    uint32_t n = 0, omitted = 0;
    if (sid > 0 && sid < x->nmemo) {
        /* a stack's frames never move (the table of stacks may, if a
         * finalizer records an event while frames are looked up) */
        const lp_frame *frames = lp_stacks[sid].frames;
        uint32_t nframes = lp_stacks[sid].nframes;
        omitted = lp_stacks[sid].omitted;
        for (uint32_t i = 0; i < nframes; i++) {
            uint32_t f = frame_of(x, &frames[i]);
            if (f == UINT32_MAX) {
                return UINT32_MAX;
            }
            if (x->flags.v[f] & 1) {
                /* `lockprof run`: the program's stack ends here, and runpy's
                 * frames under the program are not the program's */
                omitted = 0;
                while (n > 0 && (x->flags.v[scratch[n - 1]] & 2)) {
                    n--;
                }
                break;
            }
            scratch[n++] = f;
        }
    }
    if (omitted) {
        uint32_t f = frame_of_line(x, NULL, (int)omitted);
        if (f == UINT32_MAX) {
            return UINT32_MAX;
        }
        scratch[n++] = f;
    }
    uint64_t h = 1469598103934665603ULL;
    for (uint32_t i = 0; i < n; i++) {
        h = (h ^ scratch[i]) * 1099511628211ULL;
    }
    uint32_t nst = x->offsets.n - 1;
    int added;
    uint32_t first = pmap_get_or_add(&x->by_hash, h, n, nst, &added);
    if (first == UINT32_MAX) {
        PyErr_NoMemory();
        return UINT32_MAX;
    }
    uint32_t id = UINT32_MAX;
    if (!added) {
        for (uint32_t e = first; e != UINT32_MAX; e = x->chain.v[e]) {
            uint32_t off = x->offsets.v[e];
            if (x->offsets.v[e + 1] - off == n &&
                memcmp(x->flat.v + off, scratch, n * sizeof(uint32_t)) == 0) {
                id = e;
                break;
            }
        }
    }
    if (id == UINT32_MAX) {
        id = nst;
        for (uint32_t i = 0; i < n; i++) {
            vec_push(&x->flat, scratch[i]);
        }
        vec_push(&x->offsets, x->flat.n);
        /* a new stack with a key seen before goes at the head of its chain */
        uint32_t slot = pmap_slot(&x->by_hash, h, n);
        vec_push(&x->chain, added ? UINT32_MAX : x->by_hash.val[slot]);
        x->by_hash.val[slot] = id;
        if (x->flat.failed || x->offsets.failed || x->chain.failed) {
            PyErr_NoMemory();
            return UINT32_MAX;
        }
    }
    if (sid < x->nmemo) {
        x->memo[sid] = id;
    }
    return id;
}

static PyObject *
lock_tuple(const lp_lockrec *r, const lp_lockrec *g)
{
    int line = 0;
    PyObject *code = lp_site_code(r->site, &line);
    PyObject *file = Py_None, *func = Py_None;
    if (code != NULL) {
        file = PyObject_GetAttrString(code, "co_filename");
        func = PyObject_GetAttrString(code, "co_name");
        if (file == NULL || func == NULL) {
            Py_XDECREF(file);
            Py_XDECREF(func);
            return NULL;
        }
    }
    else {
        Py_INCREF(file);
        Py_INCREF(func);
    }
    /* kind, file, line, function, var, locks, acquisition samples,
     * acquisitions, contentions, timeouts, wait, max wait, hold samples,
     * hold, Condition waits, Condition wait, owner */
    return Py_BuildValue("(ONiNOKKdKKLLKdKLO)", lp_kind_name(r->kind), file, line, func,
                         r->name ? r->name : Py_None,
                         (unsigned long long)(g->nlocks ? g->nlocks : 1),
                         (unsigned long long)g->acq_samples,
                         g->acq_estimate, (unsigned long long)g->contentions,
                         (unsigned long long)g->timeouts, (long long)g->wait_ns,
                         (long long)g->max_wait_ns, (unsigned long long)g->hold_samples,
                         g->hold_ns_estimate, (unsigned long long)g->cond_waits,
                         (long long)g->cond_wait_ns, r->owner ? r->owner : Py_None);
}

/* a label id as the snapshot numbers it: the label, `other` for the
 * overflow label, UINT32_MAX for none */
static inline uint32_t
label_index(uint32_t id, uint32_t other)
{
    return id == LP_LABEL_OTHER ? other : id;
}

static PyObject *
labels_list(int tasks)
{
    uint32_t n = lp_label_count(tasks);
    int other = tasks != LP_LABEL_SETS;     /* label sets have no <other> id */
    PyObject *out = PyList_New(n + other);
    if (out == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i < n; i++) {
        PyList_SET_ITEM(out, i, Py_NewRef(lp_label_name(tasks, i)));
    }
    if (other) {
        PyList_SET_ITEM(out, n, Py_NewRef(lp_label_name(tasks, LP_LABEL_OTHER)));
    }
    return out;
}

static PyObject *
lp_py_export(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2) {
        PyErr_SetString(PyExc_TypeError, "export(take, cut_file)");
        return NULL;
    }
    int take = PyObject_IsTrue(args[0]);
    if (take < 0) {
        return NULL;
    }
    PyObject *cut = args[1] == Py_None ? NULL : args[1];
    if (cut != NULL && !PyUnicode_Check(cut)) {
        PyErr_SetString(PyExc_TypeError, "export(): cut_file must be a str or None");
        return NULL;
    }

    PyObject *result = NULL, *locks = NULL, *groups_by_key = NULL, *counters = NULL;
    int held = 0;
    uint32_t *rec_group = NULL, *scratch = NULL;
    lp_lockrec *groups = NULL;
    lp_exp x;
    memset(&x, 0, sizeof(x));
    lp_pmap rowmap;
    memset(&rowmap, 0, sizeof(rowmap));
    lp_vec r_lock = {0}, r_stack = {0}, r_thread = {0}, r_task = {0}, r_labels = {0};
    uint8_t *r_event = NULL;
    uint64_t *r_samples = NULL;
    double *r_count = NULL, *r_value = NULL;

    counters = lp_records_counters();
    if (counters == NULL) {
        goto done;
    }
    /* The export runs Python's allocator, so the garbage collector may run
     * and free wrappers: records keep their numbers until it ends (the
     * caller also pauses the collector, so no finalizer records an event
     * here).  Rows are read by index: their table may move. */
    lp_lockrec **recs;
    uint32_t nrecs = lp_records_for_export(&recs);
    lp_records_hold(1);
    held = 1;
    lp_lockrec *overflow = lp_overflow_record();

    /* locks: grouped by (file, line, var, kind); record id -> group */
    rec_group = PyMem_Malloc((nrecs + 1) * sizeof(uint32_t));
    groups = PyMem_Calloc(nrecs + 1, sizeof(lp_lockrec));
    locks = PyList_New(0);
    groups_by_key = PyDict_New();
    if (rec_group == NULL || groups == NULL || locks == NULL || groups_by_key == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    memset(rec_group, 0xff, (nrecs + 1) * sizeof(uint32_t));
    /* which records the rows name (a record with rows is shown even when
     * its figures were zero) */
    for (uint32_t i = 0; i < lp_nsamples; i++) {
        uint32_t rec = lp_samples[i].rec;
        if (rec <= nrecs) {
            rec_group[rec] = UINT32_MAX - 1;
        }
    }
    uint32_t ngroups = 0;
    const lp_lockrec **first = PyMem_Calloc(nrecs + 1, sizeof(lp_lockrec *));
    if (first == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (uint32_t i = 0; i <= nrecs; i++) {
        /* id 0 is the overflow record (locks past max_locks) */
        lp_records_for_export_nocompact(&recs);
        const lp_lockrec *r = i == 0 ? overflow : recs[i - 1];
        if (lp_record_is_empty(r) && rec_group[i] != UINT32_MAX - 1) {
            continue;
        }
        int line = 0;
        PyObject *code = lp_site_code(r->site, &line);
        PyObject *file = code ? PyObject_GetAttrString(code, "co_filename") : Py_NewRef(Py_None);
        if (file == NULL) {
            PyMem_Free(first);
            goto done;
        }
        PyObject *key = Py_BuildValue("(NiOO)", file, line, r->name ? r->name : Py_None,
                                      lp_kind_name(r->kind));
        PyObject *g = key ? PyDict_GetItemWithError(groups_by_key, key) : NULL;
        uint32_t gi;
        if (g != NULL) {
            gi = (uint32_t)PyLong_AsUnsignedLong(g);
        }
        else if (key == NULL || PyErr_Occurred()) {
            Py_XDECREF(key);
            PyMem_Free(first);
            goto done;
        }
        else {
            gi = ngroups++;
            PyObject *v = PyLong_FromUnsignedLong(gi);
            if (v == NULL || PyDict_SetItem(groups_by_key, key, v) < 0) {
                Py_XDECREF(v);
                Py_DECREF(key);
                PyMem_Free(first);
                goto done;
            }
            Py_DECREF(v);
            first[gi] = r;
        }
        Py_DECREF(key);
        lp_record_add(&groups[gi], r);
        rec_group[i] = gi;
    }
    for (uint32_t gi = 0; gi < ngroups; gi++) {
        PyObject *t = lock_tuple(first[gi], &groups[gi]);
        if (t == NULL || PyList_Append(locks, t) < 0) {
            Py_XDECREF(t);
            PyMem_Free(first);
            goto done;
        }
        Py_DECREF(t);
    }
    PyMem_Free(first);

    /* frames and stacks */
    x.cut_file = cut;
    x.frames = PyList_New(0);
    x.nmemo = lp_nstacks;
    x.memo = PyMem_Malloc((lp_nstacks + 1) * sizeof(uint32_t));
    scratch = PyMem_Malloc((LP_MAX_FRAMES_CAP + 2) * sizeof(uint32_t));
    if (x.frames == NULL || x.memo == NULL || scratch == NULL ||
        pmap_init(&x.by_pos, 1024) < 0 || pmap_init(&x.by_line, 1024) < 0 ||
        pmap_init(&x.by_hash, 1024) < 0 || pmap_init(&rowmap, lp_nsamples) < 0) {
        PyErr_NoMemory();
        goto done;
    }
    memset(x.memo, 0xff, (lp_nstacks + 1) * sizeof(uint32_t));
    vec_push(&x.offsets, 0);

    /* rows, merged by (lock group, export stack, event, thread, task) */
    size_t cap = lp_nsamples ? lp_nsamples : 1;
    r_event = PyMem_Malloc(cap);
    r_samples = PyMem_Malloc(cap * sizeof(uint64_t));
    r_count = PyMem_Malloc(cap * sizeof(double));
    r_value = PyMem_Malloc(cap * sizeof(double));
    if (r_event == NULL || r_samples == NULL || r_count == NULL || r_value == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    uint32_t thread_other = lp_label_count(0), task_other = lp_label_count(1);
    for (uint32_t i = 0; i < lp_nsamples; i++) {
        const lp_sample *s = &lp_samples[i];
        uint32_t gi = s->rec <= nrecs ? rec_group[s->rec] : UINT32_MAX;
        if (gi >= ngroups) {
            continue;       /* cannot happen: every named record has a group */
        }
        uint32_t st = stack_of(&x, s->stack, scratch);
        if (st == UINT32_MAX) {
            goto done;
        }
        uint32_t th = label_index(s->thread, thread_other);
        uint32_t tk = label_index(s->task, task_other);
        uint32_t ls = s->labels;        /* label sets have no <other> id */
        uint64_t ka = ((uint64_t)gi << 32) | st;
        uint64_t kb = ((uint64_t)th << 32) ^ ((uint64_t)tk * 0x9E3779B1ULL) ^
                      ((uint64_t)ls * 0x85EBCA77ULL << 16) ^ ((uint64_t)s->event << 61);
        /* the pair is a hash of the key, not the key: rows are compared */
        if (pmap_grow(&rowmap) < 0) {
            PyErr_NoMemory();
            goto done;
        }
        uint32_t j = (uint32_t)mix(ka, kb) & rowmap.mask;
        uint32_t found = UINT32_MAX;
        while (rowmap.val[j] != UINT32_MAX) {
            uint32_t o = rowmap.val[j];
            if (rowmap.ka[j] == ka && rowmap.kb[j] == kb && r_thread.v[o] == th &&
                r_task.v[o] == tk && r_labels.v[o] == ls && r_event[o] == s->event) {
                found = o;
                break;
            }
            j = (j + 1) & rowmap.mask;
        }
        if (found != UINT32_MAX) {
            r_samples[found] += s->count;
            r_count[found] += s->estimate;
            r_value[found] += s->value;
            continue;
        }
        uint32_t o = r_lock.n;
        vec_push(&r_lock, gi);
        vec_push(&r_stack, st);
        vec_push(&r_thread, th);
        vec_push(&r_task, tk);
        vec_push(&r_labels, ls);
        if (r_lock.failed || r_stack.failed || r_thread.failed || r_task.failed ||
            r_labels.failed) {
            PyErr_NoMemory();
            goto done;
        }
        r_event[o] = (uint8_t)s->event;
        r_samples[o] = s->count;
        r_count[o] = s->estimate;
        r_value[o] = s->value;
        rowmap.ka[j] = ka;
        rowmap.kb[j] = kb;
        rowmap.val[j] = o;
        rowmap.count++;
    }
    if (x.flags.failed) {
        PyErr_NoMemory();
        goto done;
    }

    /* labels, and the one thread behind each thread label when only one was */
    PyObject *threads = labels_list(0), *tasks = labels_list(1);
    PyObject *thread_ids = PyList_New(0);
    PyObject *label_sets = labels_list(LP_LABEL_SETS);
    if (threads == NULL || tasks == NULL || thread_ids == NULL || label_sets == NULL) {
        Py_XDECREF(threads);
        Py_XDECREF(tasks);
        Py_XDECREF(thread_ids);
        Py_XDECREF(label_sets);
        goto done;
    }
    for (uint32_t i = 0; i <= thread_other; i++) {
        unsigned long ident = 0, native = 0;
        if (i < thread_other) {
            lp_thread_label_ids(i, &ident, &native);
        }
        PyObject *t = Py_BuildValue("(kk)", ident, native);
        if (t == NULL || PyList_Append(thread_ids, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(threads);
            Py_DECREF(tasks);
            Py_DECREF(thread_ids);
            Py_DECREF(label_sets);
            goto done;
        }
        Py_DECREF(t);
    }
    uint32_t nrows = r_lock.n;
    result = Py_BuildValue(
        "{s:O,s:O,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:N,s:O}",
        "locks", locks, "frames", x.frames,
        "stack_offsets", bytes_of(x.offsets.v, x.offsets.n * sizeof(uint32_t)),
        "stack_frames", bytes_of(x.flat.v, x.flat.n * sizeof(uint32_t)),
        "row_lock", bytes_of(r_lock.v, nrows * sizeof(uint32_t)),
        "row_stack", bytes_of(r_stack.v, nrows * sizeof(uint32_t)),
        "row_event", bytes_of(r_event, nrows),
        "row_thread", bytes_of(r_thread.v, nrows * sizeof(uint32_t)),
        "row_task", bytes_of(r_task.v, nrows * sizeof(uint32_t)),
        "row_labels", bytes_of(r_labels.v, nrows * sizeof(uint32_t)),
        "row_samples", bytes_of(r_samples, nrows * sizeof(uint64_t)),
        "row_count", bytes_of(r_count, nrows * sizeof(double)),
        "row_value", bytes_of(r_value, nrows * sizeof(double)),
        "threads", threads, "thread_ids", thread_ids, "tasks", tasks,
        "label_sets", label_sets, "counters", counters);
    if (held) {
        lp_records_hold(-1);
        held = 0;
    }
    if (result != NULL && take) {
        /* the next window starts exactly where this one ends: no Python
         * code ran in between */
        PyObject *r = lp_records_reset();
        if (r == NULL) {
            Py_CLEAR(result);
        }
        Py_XDECREF(r);
    }

done:
    if (held) {
        lp_records_hold(-1);
    }
    Py_XDECREF(counters);
    Py_XDECREF(locks);
    Py_XDECREF(groups_by_key);
    Py_XDECREF(x.frames);
    PyMem_Free(rec_group);
    PyMem_Free(groups);
    PyMem_Free(scratch);
    PyMem_Free(x.memo);
    PyMem_Free(x.flags.v);
    PyMem_Free(x.offsets.v);
    PyMem_Free(x.flat.v);
    PyMem_Free(x.chain.v);
    pmap_free(&x.by_pos);
    pmap_free(&x.by_line);
    pmap_free(&x.by_hash);
    pmap_free(&rowmap);
    PyMem_Free(r_lock.v);
    PyMem_Free(r_stack.v);
    PyMem_Free(r_thread.v);
    PyMem_Free(r_task.v);
    PyMem_Free(r_labels.v);
    PyMem_Free(r_event);
    PyMem_Free(r_samples);
    PyMem_Free(r_count);
    PyMem_Free(r_value);
    return result;
}

/* ------------------------------------------------------------------------ */
/* encode_pprof(): a snapshot as profile.proto bytes                         */
/* ------------------------------------------------------------------------ */

/* The sample types, in the order lockprof.export.pprof.SAMPLE_TYPES names
 * them, and each event's columns (count, ns; -1 for none). */
static const char *const sample_types[][2] = {
    {"contentions", "count"}, {"delay", "nanoseconds"},
    {"caused-contentions", "count"}, {"caused-delay", "nanoseconds"},
    {"acquisitions", "count"}, {"hold", "nanoseconds"},
    {"cond-waits", "count"}, {"cond-wait", "nanoseconds"},
};
#define LP_NTYPES 8
static const int event_columns[5][2] = {
    /* acquire */ {4, -1}, /* contention */ {0, 1}, /* hold */ {-1, 5},
    /* cond_wait */ {6, 7}, /* delay */ {2, 3},
};

typedef struct {
    PyObject *index;        /* str -> id */
    PyObject *table;        /* list of str */
} lp_strings;

/* the string table id of `s` (a str), or -1 with an exception */
static int64_t
str_id(lp_strings *st, PyObject *s)
{
    if (s == NULL || s == Py_None) {
        return 0;
    }
    if (!PyUnicode_Check(s)) {
        PyObject *t = PyObject_Str(s);
        if (t == NULL) {
            return -1;
        }
        int64_t r = str_id(st, t);
        Py_DECREF(t);
        return r;
    }
    PyObject *v = PyDict_GetItemWithError(st->index, s);
    if (v != NULL) {
        return PyLong_AsLongLong(v);
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    Py_ssize_t n = PyList_GET_SIZE(st->table);
    v = PyLong_FromSsize_t(n);
    if (v == NULL || PyDict_SetItem(st->index, s, v) < 0 || PyList_Append(st->table, s) < 0) {
        Py_XDECREF(v);
        return -1;
    }
    Py_DECREF(v);
    return n;
}

static int64_t
cstr_id(lp_strings *st, const char *s)
{
    PyObject *o = PyUnicode_FromString(s);
    if (o == NULL) {
        return -1;
    }
    int64_t r = str_id(st, o);
    Py_DECREF(o);
    return r;
}

/* a Label message {key, str} (or {key, num} when num_value is set) as a
 * Sample's field 3 */
static void
put_label(lp_buf *b, int64_t key, int64_t str, int64_t num, int is_num)
{
    lp_buf m = {0};
    buf_int(&m, 1, (uint64_t)key);
    if (is_num) {
        buf_int(&m, 3, (uint64_t)num);
    }
    else {
        buf_int(&m, 2, (uint64_t)str);
    }
    buf_bytes(b, 3, m.p, m.n);
    b->failed |= m.failed;
    buf_free(&m);
}

/* bufs[i] += the label {key: names[i]} for every name that is not None */
static int
name_labels(lp_strings *st, PyObject *names, int64_t key, lp_buf *bufs)
{
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(names); i++) {
        PyObject *name = PyList_GET_ITEM(names, i);
        if (name == Py_None) {
            continue;
        }
        int64_t n = str_id(st, name);
        if (n < 0) {
            return -1;
        }
        put_label(&bufs[i], key, n, 0, 0);
    }
    return 0;
}

typedef struct {
    Py_buffer view;
    int held;
} lp_view;

static int
get_view(PyObject *o, lp_view *v, size_t itemsize, Py_ssize_t *count, const char *what)
{
    if (PyObject_GetBuffer(o, &v->view, PyBUF_C_CONTIGUOUS) < 0) {
        return -1;
    }
    v->held = 1;
    if ((size_t)v->view.len % itemsize != 0) {
        PyErr_Format(PyExc_ValueError, "encode_pprof(): %s is not an array of %zu-byte items",
                     what, itemsize);
        return -1;
    }
    Py_ssize_t n = (Py_ssize_t)((size_t)v->view.len / itemsize);
    if (count != NULL) {
        if (*count >= 0 && *count != n) {
            PyErr_Format(PyExc_ValueError, "encode_pprof(): %s has %zd items, expected %zd",
                         what, n, *count);
            return -1;
        }
        *count = n;
    }
    return 0;
}

static void
release_view(lp_view *v)
{
    if (v->held) {
        PyBuffer_Release(&v->view);
        v->held = 0;
    }
}

static inline int64_t
round_i64(double d)
{
    if (!(d == d)) {
        return 0;
    }
    if (d >= 9.2e18) {
        return INT64_MAX;
    }
    if (d <= -9.2e18) {
        return INT64_MIN;
    }
    return (int64_t)(d >= 0 ? d + 0.5 : d - 0.5);
}

/* encode_pprof(frames, stack_offsets, stack_frames, row_lock, row_stack,
 *              row_event, row_thread, row_task, row_count, row_value,
 *              lock_labels, threads, thread_ids, tasks, comments,
 *              time_nanos, duration_nanos, exact, row_labels, label_sets)
 * frames: [(file, function, line)]; lock_labels: [(name, kind)];
 * thread_ids: [int] (0: none); exact: None, or per lock a tuple of ints and
 * strs written as lockprof's own Profile field 1000 (ignored by pprof);
 * label_sets: [((key, value), ...)], each pair a pprof string label of the
 * rows whose row_labels names the set. */
static PyObject *
lp_py_encode_pprof(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 20) {
        PyErr_SetString(PyExc_TypeError, "encode_pprof() takes 20 arguments");
        return NULL;
    }
    PyObject *frames = args[0], *lock_labels = args[10], *threads = args[11];
    PyObject *thread_ids = args[12], *tasks = args[13], *comments = args[14];
    PyObject *exact = args[17], *label_sets = args[19];
    if (!PyList_Check(frames) || !PyList_Check(lock_labels) || !PyList_Check(threads) ||
        !PyList_Check(thread_ids) || !PyList_Check(tasks) || !PyList_Check(comments) ||
        (exact != Py_None && !PyList_Check(exact)) || !PyList_Check(label_sets)) {
        PyErr_SetString(PyExc_TypeError, "encode_pprof(): frames, lock_labels, threads, "
                                         "thread_ids, tasks, comments, exact and label_sets "
                                         "are lists");
        return NULL;
    }
    long long time_nanos = PyLong_AsLongLong(args[15]);
    long long duration_nanos = PyLong_AsLongLong(args[16]);
    if (PyErr_Occurred()) {
        return NULL;
    }
    lp_view v[11];
    memset(v, 0, sizeof(v));
    PyObject *out = NULL;
    lp_strings st = {PyDict_New(), PyList_New(0)};
    lp_buf body = {0}, tmp = {0};
    lp_buf *lockb = NULL, *threadb = NULL, *taskb = NULL, *setb = NULL;
    Py_ssize_t nsets = PyList_GET_SIZE(label_sets);
    Py_ssize_t nlocks = PyList_GET_SIZE(lock_labels);
    Py_ssize_t nthreads = PyList_GET_SIZE(threads), ntasks = PyList_GET_SIZE(tasks);
    Py_ssize_t nframes = PyList_GET_SIZE(frames);
    PyObject *functions = PyDict_New();
    uint32_t *frame_fn = NULL;
    int64_t *frame_line = NULL;
    if (st.index == NULL || st.table == NULL || functions == NULL) {
        goto done;
    }
    Py_ssize_t nst = -1, nflat = -1, nrows = -1;
    if (get_view(args[1], &v[0], 4, &nst, "stack_offsets") < 0 ||
        get_view(args[2], &v[1], 4, &nflat, "stack_frames") < 0 ||
        get_view(args[3], &v[2], 4, &nrows, "row_lock") < 0 ||
        get_view(args[4], &v[3], 4, &nrows, "row_stack") < 0 ||
        get_view(args[5], &v[4], 1, &nrows, "row_event") < 0 ||
        get_view(args[6], &v[5], 4, &nrows, "row_thread") < 0 ||
        get_view(args[7], &v[6], 4, &nrows, "row_task") < 0 ||
        get_view(args[8], &v[7], 8, &nrows, "row_count") < 0 ||
        get_view(args[9], &v[8], 8, &nrows, "row_value") < 0 ||
        get_view(args[18], &v[9], 4, &nrows, "row_labels") < 0) {
        goto done;
    }
    const uint32_t *offsets = v[0].view.buf, *flat = v[1].view.buf;
    const uint32_t *rl = v[2].view.buf, *rs = v[3].view.buf, *rth = v[5].view.buf;
    const uint32_t *rtk = v[6].view.buf, *rls = v[9].view.buf;
    const uint8_t *rev = v[4].view.buf;
    const double *rc = v[7].view.buf, *rv = v[8].view.buf;
    if (nst < 1) {
        PyErr_SetString(PyExc_ValueError, "encode_pprof(): stack_offsets is empty");
        goto done;
    }
    nst -= 1;
    for (Py_ssize_t i = 0; i < nst; i++) {
        if (offsets[i] > offsets[i + 1] || offsets[i + 1] > (uint32_t)nflat) {
            PyErr_SetString(PyExc_ValueError, "encode_pprof(): stack_offsets out of range");
            goto done;
        }
    }
    for (Py_ssize_t i = 0; i < nflat; i++) {
        if (flat[i] >= (uint32_t)nframes) {
            PyErr_SetString(PyExc_ValueError, "encode_pprof(): a stack names no frame");
            goto done;
        }
    }
    {
        PyObject *empty = PyUnicode_FromString("");
        if (empty == NULL || str_id(&st, empty) != 0) {
            Py_XDECREF(empty);
            goto done;
        }
        Py_DECREF(empty);
    }

    /* sample types */
    for (int i = 0; i < LP_NTYPES; i++) {
        int64_t t = cstr_id(&st, sample_types[i][0]), u = cstr_id(&st, sample_types[i][1]);
        if (t < 0 || u < 0) {
            goto done;
        }
        tmp.n = 0;
        buf_int(&tmp, 1, (uint64_t)t);
        buf_int(&tmp, 2, (uint64_t)u);
        buf_bytes(&body, 1, tmp.p, tmp.n);
    }

    /* each lock's, thread's and task's labels, encoded once */
    int64_t k_lock = cstr_id(&st, "lock name"), k_kind = cstr_id(&st, "lock kind");
    int64_t k_thread = cstr_id(&st, "thread name"), k_tid = cstr_id(&st, "thread id");
    int64_t k_task = cstr_id(&st, "task name");
    if (k_lock < 0 || k_kind < 0 || k_thread < 0 || k_tid < 0 || k_task < 0) {
        goto done;
    }
    lockb = PyMem_Calloc(nlocks + 1, sizeof(lp_buf));
    threadb = PyMem_Calloc(nthreads + 1, sizeof(lp_buf));
    taskb = PyMem_Calloc(ntasks + 1, sizeof(lp_buf));
    setb = PyMem_Calloc(nsets + 1, sizeof(lp_buf));
    if (lockb == NULL || threadb == NULL || taskb == NULL || setb == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    for (Py_ssize_t i = 0; i < nlocks; i++) {
        PyObject *t = PyList_GET_ITEM(lock_labels, i);
        if (!PyTuple_Check(t) || PyTuple_GET_SIZE(t) != 2) {
            PyErr_SetString(PyExc_TypeError, "encode_pprof(): lock_labels are (name, kind)");
            goto done;
        }
        int64_t n = str_id(&st, PyTuple_GET_ITEM(t, 0)), k = str_id(&st, PyTuple_GET_ITEM(t, 1));
        if (n < 0 || k < 0) {
            goto done;
        }
        put_label(&lockb[i], k_lock, n, 0, 0);
        put_label(&lockb[i], k_kind, k, 0, 0);
    }
    if (name_labels(&st, threads, k_thread, threadb) < 0 ||
        name_labels(&st, tasks, k_task, taskb) < 0) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < nsets; i++) {
        PyObject *set = PyList_GET_ITEM(label_sets, i);
        if (!PyTuple_Check(set)) {
            PyErr_SetString(PyExc_TypeError, "encode_pprof(): label_sets are tuples of "
                                             "(key, value) pairs");
            goto done;
        }
        for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(set); k++) {
            PyObject *pair = PyTuple_GET_ITEM(set, k);
            if (!PyTuple_Check(pair) || PyTuple_GET_SIZE(pair) != 2) {
                PyErr_SetString(PyExc_TypeError, "encode_pprof(): label_sets are tuples of "
                                                 "(key, value) pairs");
                goto done;
            }
            int64_t key = str_id(&st, PyTuple_GET_ITEM(pair, 0));
            int64_t val = str_id(&st, PyTuple_GET_ITEM(pair, 1));
            if (key < 0 || val < 0) {
                goto done;
            }
            put_label(&setb[i], key, val, 0, 0);
        }
    }
    for (Py_ssize_t i = 0; i < nthreads && i < PyList_GET_SIZE(thread_ids); i++) {
        long long id = PyLong_AsLongLong(PyList_GET_ITEM(thread_ids, i));
        if (id == -1 && PyErr_Occurred()) {
            goto done;
        }
        if (id && PyList_GET_ITEM(threads, i) != Py_None) {
            put_label(&threadb[i], k_tid, 0, id, 1);
        }
    }

    /* samples */
    for (Py_ssize_t i = 0; i < nrows; i++) {
        if (rl[i] >= (uint32_t)nlocks || rs[i] >= (uint32_t)nst || rev[i] >= 5) {
            PyErr_Format(PyExc_ValueError, "encode_pprof(): row %zd names no lock, stack or event", i);
            goto done;
        }
        int64_t values[LP_NTYPES] = {0};
        int cc = event_columns[rev[i]][0], nc = event_columns[rev[i]][1];
        if (cc >= 0) {
            values[cc] = round_i64(rc[i]);
        }
        if (nc >= 0) {
            values[nc] = round_i64(rv[i]);
        }
        if ((cc < 0 || values[cc] == 0) && (nc < 0 || values[nc] == 0)) {
            continue;
        }
        uint32_t a = offsets[rs[i]], z = offsets[rs[i] + 1];
        size_t locs_len = 0;
        for (uint32_t k = a; k < z; k++) {
            locs_len += varint_len((uint64_t)flat[k] + 1);
        }
        size_t vals_len = 0;
        for (int k = 0; k < LP_NTYPES; k++) {
            vals_len += varint_len((uint64_t)values[k]);
        }
        const lp_buf *lb = &lockb[rl[i]];
        const lp_buf *tb = rth[i] < (uint32_t)nthreads ? &threadb[rth[i]] : NULL;
        const lp_buf *kb = rtk[i] < (uint32_t)ntasks ? &taskb[rtk[i]] : NULL;
        const lp_buf *sb = rls[i] < (uint32_t)nsets ? &setb[rls[i]] : NULL;
        size_t len = (locs_len ? 1 + varint_len(locs_len) + locs_len : 0) +
                     1 + varint_len(vals_len) + vals_len + lb->n +
                     (tb ? tb->n : 0) + (kb ? kb->n : 0) + (sb ? sb->n : 0);
        buf_key(&body, 2, 2);
        buf_varint(&body, len);
        if (locs_len) {
            buf_key(&body, 1, 2);
            buf_varint(&body, locs_len);
            for (uint32_t k = a; k < z; k++) {
                buf_varint(&body, (uint64_t)flat[k] + 1);
            }
        }
        buf_key(&body, 2, 2);
        buf_varint(&body, vals_len);
        for (int k = 0; k < LP_NTYPES; k++) {
            buf_varint(&body, (uint64_t)values[k]);
        }
        buf_put(&body, lb->p, lb->n);
        if (tb) {
            buf_put(&body, tb->p, tb->n);
        }
        if (kb) {
            buf_put(&body, kb->p, kb->n);
        }
        if (sb) {
            buf_put(&body, sb->p, sb->n);
        }
        if (body.failed) {
            PyErr_NoMemory();
            goto done;
        }
    }

    /* one mapping that says the profile carries functions, files and lines */
    int64_t python = cstr_id(&st, "python");
    if (python < 0) {
        goto done;
    }
    tmp.n = 0;
    buf_int(&tmp, 1, 1);
    buf_int(&tmp, 5, (uint64_t)python);
    buf_int(&tmp, 7, 1);
    buf_int(&tmp, 8, 1);
    buf_int(&tmp, 9, 1);
    buf_bytes(&body, 3, tmp.p, tmp.n);

    /* locations: one per frame (id = frame index + 1); functions: one per
     * (function, file) */
    frame_fn = PyMem_Malloc((nframes ? nframes : 1) * sizeof(uint32_t));
    frame_line = PyMem_Malloc((nframes ? nframes : 1) * sizeof(int64_t));
    if (frame_fn == NULL || frame_line == NULL) {
        PyErr_NoMemory();
        goto done;
    }
    PyObject *fn_list = PyList_New(0);
    if (fn_list == NULL) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < nframes; i++) {
        PyObject *f = PyList_GET_ITEM(frames, i);
        if (!PyTuple_Check(f) || PyTuple_GET_SIZE(f) != 3) {
            PyErr_SetString(PyExc_TypeError, "encode_pprof(): frames are (file, function, line)");
            Py_DECREF(fn_list);
            goto done;
        }
        frame_line[i] = PyLong_AsLongLong(PyTuple_GET_ITEM(f, 2));
        PyObject *key = PyTuple_Pack(2, PyTuple_GET_ITEM(f, 1), PyTuple_GET_ITEM(f, 0));
        PyObject *id = key ? PyDict_GetItemWithError(functions, key) : NULL;
        if (PyErr_Occurred()) {
            Py_XDECREF(key);
            Py_DECREF(fn_list);
            goto done;
        }
        if (id == NULL) {
            PyObject *nid = PyLong_FromSsize_t(PyList_GET_SIZE(fn_list) + 1);
            if (nid == NULL || PyDict_SetItem(functions, key, nid) < 0 ||
                PyList_Append(fn_list, key) < 0) {
                Py_XDECREF(nid);
                Py_DECREF(key);
                Py_DECREF(fn_list);
                goto done;
            }
            frame_fn[i] = (uint32_t)PyList_GET_SIZE(fn_list);
            Py_DECREF(nid);
        }
        else {
            frame_fn[i] = (uint32_t)PyLong_AsUnsignedLong(id);
        }
        Py_DECREF(key);
    }
    for (Py_ssize_t i = 0; i < nframes; i++) {
        lp_buf ln = {0};
        buf_int(&ln, 1, frame_fn[i]);
        buf_int(&ln, 2, (uint64_t)frame_line[i]);
        tmp.n = 0;
        buf_int(&tmp, 1, (uint64_t)i + 1);
        buf_int(&tmp, 2, 1);
        buf_bytes(&tmp, 4, ln.p, ln.n);
        tmp.failed |= ln.failed;
        buf_free(&ln);
        buf_bytes(&body, 4, tmp.p, tmp.n);
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(fn_list); i++) {
        PyObject *key = PyList_GET_ITEM(fn_list, i);
        int64_t name = str_id(&st, PyTuple_GET_ITEM(key, 0));
        int64_t file = str_id(&st, PyTuple_GET_ITEM(key, 1));
        if (name < 0 || file < 0) {
            Py_DECREF(fn_list);
            goto done;
        }
        tmp.n = 0;
        buf_int(&tmp, 1, (uint64_t)i + 1);
        buf_int(&tmp, 2, (uint64_t)name);
        buf_int(&tmp, 3, (uint64_t)name);
        buf_int(&tmp, 4, (uint64_t)file);
        buf_bytes(&body, 5, tmp.p, tmp.n);
    }
    Py_DECREF(fn_list);

    /* lockprof's exact per-lock figures: Profile field 1000, one message per
     * lock, fields numbered from 1 in the tuple's order (pprof readers skip
     * fields they do not know, so their totals are unchanged) */
    if (exact != Py_None) {
        for (Py_ssize_t i = 0; i < PyList_GET_SIZE(exact); i++) {
            PyObject *t = PyList_GET_ITEM(exact, i);
            if (!PyTuple_Check(t)) {
                PyErr_SetString(PyExc_TypeError, "encode_pprof(): exact holds tuples");
                goto done;
            }
            tmp.n = 0;
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(t); k++) {
                PyObject *item = PyTuple_GET_ITEM(t, k);
                if (item == Py_None) {
                    continue;
                }
                int64_t val;
                if (PyUnicode_Check(item)) {
                    val = str_id(&st, item);
                    if (val < 0) {
                        goto done;
                    }
                }
                else {
                    val = PyLong_AsLongLong(item);
                    if (val == -1 && PyErr_Occurred()) {
                        goto done;
                    }
                }
                buf_int(&tmp, (uint32_t)k + 1, (uint64_t)val);
            }
            buf_bytes(&body, 1000, tmp.p, tmp.n);
        }
    }

    /* comments, period, default sample type; then the string table */
    int64_t contentions = cstr_id(&st, "contentions"), count = cstr_id(&st, "count");
    int64_t deflt = cstr_id(&st, "delay");
    if (contentions < 0 || count < 0 || deflt < 0) {
        goto done;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(comments); i++) {
        int64_t c = str_id(&st, PyList_GET_ITEM(comments, i));
        if (c < 0) {
            goto done;
        }
        buf_int(&body, 13, (uint64_t)c);
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(st.table); i++) {
        Py_ssize_t n;
        const char *s = PyUnicode_AsUTF8AndSize(PyList_GET_ITEM(st.table, i), &n);
        if (s == NULL) {
            goto done;
        }
        buf_bytes(&body, 6, s, (size_t)n);
    }
    buf_int(&body, 9, (uint64_t)time_nanos);
    buf_int(&body, 10, (uint64_t)duration_nanos);
    tmp.n = 0;
    buf_int(&tmp, 1, (uint64_t)contentions);
    buf_int(&tmp, 2, (uint64_t)count);
    buf_bytes(&body, 11, tmp.p, tmp.n);
    buf_int(&body, 12, 1);
    buf_int(&body, 14, (uint64_t)deflt);
    if (body.failed || tmp.failed) {
        PyErr_NoMemory();
        goto done;
    }
    out = bytes_of(body.p, body.n);

done:
    for (int i = 0; i < 11; i++) {
        release_view(&v[i]);
    }
    if (lockb != NULL) {
        for (Py_ssize_t i = 0; i < nlocks; i++) {
            buf_free(&lockb[i]);
        }
    }
    if (threadb != NULL) {
        for (Py_ssize_t i = 0; i < nthreads; i++) {
            buf_free(&threadb[i]);
        }
    }
    if (taskb != NULL) {
        for (Py_ssize_t i = 0; i < ntasks; i++) {
            buf_free(&taskb[i]);
        }
    }
    if (setb != NULL) {
        for (Py_ssize_t i = 0; i < nsets; i++) {
            buf_free(&setb[i]);
        }
    }
    PyMem_Free(lockb);
    PyMem_Free(threadb);
    PyMem_Free(taskb);
    PyMem_Free(setb);
    PyMem_Free(frame_fn);
    PyMem_Free(frame_line);
    buf_free(&body);
    buf_free(&tmp);
    Py_XDECREF(st.index);
    Py_XDECREF(st.table);
    Py_XDECREF(functions);
    return out;
}

static PyMethodDef export_methods[] = {
    {"export", (PyCFunction)(void (*)(void))lp_py_export, METH_FASTCALL,
     "export(take, cut_file)\n--\n\nThe tables as one snapshot (dict of locks, frames, "
     "stacks and row columns); with take, reset in the same step."},
    {NULL, NULL, 0, NULL},
};

/* reads no table of the runtime: runs without the tables' mutex */
static PyMethodDef encode_methods[] = {
    {"encode_pprof", (PyCFunction)(void (*)(void))lp_py_encode_pprof, METH_FASTCALL,
     "encode_pprof(frames, stack_offsets, stack_frames, row_lock, row_stack, row_event, "
     "row_thread, row_task, row_count, row_value, lock_labels, threads, thread_ids, tasks, "
     "comments, time_nanos, duration_nanos, exact, row_labels, label_sets)\n--\n\n"
     "profile.proto bytes (uncompressed)."},
    {NULL, NULL, 0, NULL},
};

int
lp_export_setup(PyObject *module)
{
    /* the encoder's sample types and each event's (count, ns) columns, for
     * the Python reader (lockprof.export.pprof): one table, here */
    PyObject *types = PyTuple_New(LP_NTYPES);
    PyObject *columns = PyDict_New();
    if (types == NULL || columns == NULL) {
        Py_XDECREF(types);
        Py_XDECREF(columns);
        return -1;
    }
    for (int i = 0; i < LP_NTYPES; i++) {
        PyTuple_SET_ITEM(types, i, Py_BuildValue("(ss)", sample_types[i][0], sample_types[i][1]));
    }
    for (uint32_t e = 0; e < 5; e++) {
        PyObject *c = event_columns[e][0] >= 0 ? PyLong_FromLong(event_columns[e][0]) : Py_NewRef(Py_None);
        PyObject *n = event_columns[e][1] >= 0 ? PyLong_FromLong(event_columns[e][1]) : Py_NewRef(Py_None);
        PyObject *pair = (c && n) ? PyTuple_Pack(2, c, n) : NULL;
        Py_XDECREF(c);
        Py_XDECREF(n);
        if (pair == NULL || PyDict_SetItemString(columns, lp_event_name(e), pair) < 0) {
            Py_XDECREF(pair);
            Py_DECREF(types);
            Py_DECREF(columns);
            return -1;
        }
        Py_DECREF(pair);
    }
    if (PyModule_AddObject(module, "PPROF_SAMPLE_TYPES", types) < 0) {
        Py_DECREF(types);
        Py_DECREF(columns);
        return -1;
    }
    if (PyModule_AddObject(module, "PPROF_EVENT_COLUMNS", columns) < 0) {
        Py_DECREF(columns);
        return -1;
    }
    if (lp_add_functions(module, export_methods) < 0) {
        return -1;
    }
    return PyModule_AddFunctions(module, encode_methods);
}
