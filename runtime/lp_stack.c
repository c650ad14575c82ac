/* lockprof runtime: stack capture and interning, and the per-(lock, stack)
 * sample table.  Runs on sampled or contended events only, holding the GIL.
 *
 * A stack is captured from the current frame with the public frame API, as
 * (code object, instruction offset) pairs; the line is computed only when a
 * profile is read.  A stack seen before costs a hash and a compare, no
 * allocation. */
#include "lp_stack.h"
#include "lp_index.h"

#if PY_VERSION_HEX >= 0x030B0000
#  define LP_HAVE_LASTI 1
#endif

#define LP_FRAMES_CAP 512

typedef struct {
    PyObject *code;     /* strong reference once interned */
    Py_ssize_t pos;     /* lasti (3.11+) or line (3.9, 3.10); word-sized so
                           that frames compare with memcmp (no padding) */
} lp_frame;

typedef struct {
    uint64_t hash;
    uint32_t nframes;
    uint32_t omitted;   /* frames past max_frames */
    lp_frame *frames;   /* leaf first */
} lp_stack;

int lp_max_frames = 64;

static lp_stack *stacks = NULL;          /* index 0 unused */
static uint32_t nstacks = 1, capstacks = 0;
static lp_index stack_index = {NULL, 0};
static uint32_t max_stacks = 1u << 18;
uint64_t lp_dropped_stacks = 0;

static uint32_t
stack_entry_hash(uint32_t id)
{
    return (uint32_t)stacks[id].hash;
}

static uint32_t
stack_intern(const lp_frame *frames, uint32_t n, uint32_t omitted)
{
    uint64_t h = 1469598103934665603ULL ^ omitted;
    for (uint32_t i = 0; i < n; i++) {
        h = (h ^ (uint64_t)(uintptr_t)frames[i].code) * 1099511628211ULL;
        h = (h ^ (uint64_t)(unsigned)frames[i].pos) * 1099511628211ULL;
    }
    if (lp_index_reserve(&stack_index, nstacks, 1, nstacks, stack_entry_hash) < 0) {
        return 0;
    }
    uint32_t j = (uint32_t)h & stack_index.mask;
    while (stack_index.slots[j]) {
        const lp_stack *s = &stacks[stack_index.slots[j]];
        if (s->hash == h && s->nframes == n && s->omitted == omitted &&
            memcmp(s->frames, frames, n * sizeof(lp_frame)) == 0) {
            return stack_index.slots[j];
        }
        j = (j + 1) & stack_index.mask;
    }
    if (nstacks >= max_stacks) {
        lp_dropped_stacks++;
        return 0;
    }
    if (nstacks >= capstacks) {
        uint32_t nc = capstacks ? capstacks * 2 : 256;
        lp_stack *ns = lp_fault() ? NULL : PyMem_Realloc(stacks, nc * sizeof(lp_stack));
        if (ns == NULL) {
            lp_dropped_stacks++;
            return 0;
        }
        stacks = ns;
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
    uint32_t id = nstacks++;
    stacks[id].hash = h;
    stacks[id].nframes = n;
    stacks[id].omitted = omitted;
    stacks[id].frames = copy;
    stack_index.slots[j] = id;
    return id;
}

uint32_t
lp_stack_here(void)
{
    lp_frame buf[LP_FRAMES_CAP];
    uint32_t n = 0, omitted = 0;
    uint32_t limit = lp_max_frames < LP_FRAMES_CAP ? (uint32_t)lp_max_frames : LP_FRAMES_CAP;
    PyFrameObject *f = PyEval_GetFrame();   /* borrowed */
    Py_XINCREF(f);
    while (f != NULL) {
        if (n < limit) {
            /* the frames on the stack keep their code objects alive while
             * we walk it: the pointer is borrowed until interned */
            PyCodeObject *code = PyFrame_GetCode(f);
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
    return stack_intern(buf, n, omitted);
}

/* ------------------------------------------------------------------------ */
/* threads: ident -> (native id, name), names read once per thread          */
/* ------------------------------------------------------------------------ */

typedef struct {
    unsigned long ident;
    unsigned long native_id;
    PyObject *name;         /* str, or NULL when unknown */
} lp_thread;

static lp_thread *threads = NULL;
static uint32_t nthreads = 0, capthreads = 0;
static uint32_t last_thread = UINT32_MAX;
static uint32_t max_threads = 1u << 16;

/* threading.Thread's name, read from the instance dict (no user code) */
static PyObject *
current_thread_name(unsigned long ident)
{
    PyObject *name = NULL;
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
                name = Py_NewRef(n);
            }
        }
        Py_XDECREF(d);
    }
    Py_XDECREF(key);
    Py_XDECREF(active);
    PyErr_Clear();
    return name;
}

uint32_t
lp_thread_slot(void)
{
    unsigned long ident = PyThread_get_thread_ident();
    unsigned long native = PyThread_get_thread_native_id();
    if (last_thread < nthreads && threads[last_thread].ident == ident &&
        threads[last_thread].native_id == native) {
        return last_thread;
    }
    for (uint32_t i = 0; i < nthreads; i++) {
        if (threads[i].ident == ident && threads[i].native_id == native) {
            return last_thread = i;
        }
    }
    if (nthreads >= max_threads) {
        return UINT32_MAX;
    }
    if (nthreads >= capthreads) {
        uint32_t nc = capthreads ? capthreads * 2 : 16;
        lp_thread *nt = PyMem_Realloc(threads, nc * sizeof(lp_thread));
        if (nt == NULL) {
            return UINT32_MAX;
        }
        threads = nt;
        capthreads = nc;
    }
    lp_thread *t = &threads[nthreads];
    t->ident = ident;
    t->native_id = native;
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    t->name = current_thread_name(ident);
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return last_thread = nthreads++;
}

/* ------------------------------------------------------------------------ */
/* asyncio tasks: the current task's name, interned                          */
/* ------------------------------------------------------------------------ */

static PyObject *task_names = NULL;      /* list: slot -> name */
static PyObject *task_slots = NULL;      /* dict: name -> slot */
static PyObject *get_running_loop = NULL, *current_task = NULL, *current_tasks = NULL;
static int asyncio_looked_up = 0;
static uint32_t max_tasks = 1u << 16;

static void
asyncio_lookup(void)
{
    asyncio_looked_up = 1;
    PyObject *name = PyUnicode_FromString("_asyncio");
    PyObject *mod = name ? PyImport_GetModule(name) : NULL;   /* only if already imported */
    Py_XDECREF(name);
    if (mod == NULL) {
        PyErr_Clear();
        asyncio_looked_up = 0;           /* try again once asyncio is in use */
        return;
    }
    get_running_loop = PyObject_GetAttrString(mod, "_get_running_loop");
    current_task = PyObject_GetAttrString(mod, "current_task");          /* 3.12+ */
    if (current_task == NULL) {
        PyErr_Clear();
        current_tasks = PyObject_GetAttrString(mod, "_current_tasks");   /* 3.9-3.11 */
    }
    PyErr_Clear();
    Py_DECREF(mod);
}

/* gevent: the current greenlet's name (a str, new reference) when it is a
 * gevent.Greenlet (exactly: a subclass's `name` could be anyone's code), else
 * NULL; looked up only while gevent is imported */
static PyObject *gevent_str = NULL;
static PyObject *gevent_module = NULL, *gevent_getcurrent = NULL, *gevent_greenlet = NULL;

static PyObject *
current_greenlet(void)
{
    if (gevent_str == NULL && (gevent_str = PyUnicode_InternFromString("gevent")) == NULL) {
        PyErr_Clear();
        return NULL;
    }
    PyObject *mod = PyImport_GetModule(gevent_str);
    if (mod == NULL) {
        PyErr_Clear();
        return NULL;
    }
    if (mod != gevent_module) {
        Py_CLEAR(gevent_getcurrent);
        Py_CLEAR(gevent_greenlet);
        LP_XSETREF(gevent_module, Py_NewRef(mod));
        gevent_getcurrent = PyObject_GetAttrString(mod, "getcurrent");
        gevent_greenlet = PyObject_GetAttrString(mod, "Greenlet");
        PyErr_Clear();
    }
    Py_DECREF(mod);
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
    }
    Py_XDECREF(g);
    PyErr_Clear();
    return name;
}

/* slot of the current asyncio task's name (or gevent greenlet's), UINT32_MAX
 * when there is none */
static uint32_t
task_slot(void)
{
    if (!asyncio_looked_up) {
        asyncio_lookup();
    }
    uint32_t slot = UINT32_MAX;
    PyObject *loop = get_running_loop != NULL ? PyObject_CallNoArgs(get_running_loop) : NULL;
    PyErr_Clear();
    PyObject *task = NULL;
    if (loop != NULL && loop != Py_None) {
        if (current_task != NULL) {
            task = PyObject_CallOneArg(current_task, loop);
        }
        else if (current_tasks != NULL && PyDict_Check(current_tasks)) {
            task = Py_XNewRef(PyDict_GetItemWithError(current_tasks, loop));
        }
    }
    if (task == NULL || task == Py_None) {
        /* no asyncio task: a gevent greenlet, when gevent is in use */
        Py_XDECREF(task);
        task = current_greenlet();
    }
    if (task != NULL && task != Py_None) {
        PyObject *name = PyUnicode_Check(task) ? Py_NewRef(task)
                                               : PyObject_CallMethod(task, "get_name", NULL);
        if (name != NULL && PyUnicode_Check(name)) {
            if (task_slots == NULL) {
                task_slots = PyDict_New();
                task_names = PyList_New(0);
            }
            PyObject *s = task_slots ? PyDict_GetItemWithError(task_slots, name) : NULL;
            if (s != NULL) {
                slot = (uint32_t)PyLong_AsUnsignedLong(s);
            }
            else if (task_names != NULL && (uint32_t)PyList_GET_SIZE(task_names) < max_tasks) {
                PyObject *n = PyLong_FromSsize_t(PyList_GET_SIZE(task_names));
                if (n != NULL && PyDict_SetItem(task_slots, name, n) == 0 &&
                    PyList_Append(task_names, name) == 0) {
                    slot = (uint32_t)(PyList_GET_SIZE(task_names) - 1);
                }
                Py_XDECREF(n);
            }
        }
        Py_XDECREF(name);
    }
    Py_XDECREF(task);
    Py_XDECREF(loop);
    PyErr_Clear();
    return slot;
}

/* ------------------------------------------------------------------------ */
/* samples: (lock record, stack, event, thread, task) -> count, value        */
/* ------------------------------------------------------------------------ */

typedef struct {
    uint32_t rec, stack;
    uint32_t event;
    uint32_t thread;        /* index into threads, UINT32_MAX if unknown */
    uint32_t task;          /* index into task_names, UINT32_MAX if none */
    uint64_t count;         /* stack samples taken */
    double estimate;        /* events they stand for (scaled) */
    double value;           /* ns they stand for (scaled) */
} lp_sample;

static lp_sample *samples = NULL;
static uint32_t nsamples = 0, capsamples = 0;
static lp_index sample_index = {NULL, 0};
uint32_t lp_max_samples = 1u << 20;
uint64_t lp_dropped_samples = 0;

static inline uint32_t
sample_hash(uint32_t rec, uint32_t stack, uint32_t event, uint32_t thread, uint32_t task)
{
    uint64_t h = ((uint64_t)rec * 0x9E3779B97F4A7C15ULL) ^ ((uint64_t)stack * 0xC2B2AE3D27D4EB4FULL) ^
                 ((uint64_t)thread * 0x165667B19E3779F9ULL) ^
                 ((uint64_t)task * 0x27D4EB2F165667C5ULL) ^ event;
    return (uint32_t)(h ^ (h >> 29));
}

/* sample entries are numbered from 1: entry e is samples[e - 1] */
static uint32_t
sample_entry_hash(uint32_t e)
{
    const lp_sample *s = &samples[e - 1];
    return sample_hash(s->rec, s->stack, s->event, s->thread, s->task);
}

void
lp_sample_add(uint32_t rec, uint32_t stack, int event, double estimate, double value)
{
    lp_sample_add_for(rec, stack, event, estimate, value, lp_thread_slot(), task_slot());
}

void
lp_sample_add_for(uint32_t rec, uint32_t stack, int event, double estimate, double value,
                  uint32_t thread, uint32_t task)
{
    if (lp_index_reserve(&sample_index, nsamples, 1, nsamples + 1, sample_entry_hash) < 0) {
        lp_dropped_samples++;
        return;
    }
    uint32_t j = sample_hash(rec, stack, (uint32_t)event, thread, task) & sample_index.mask;
    while (sample_index.slots[j]) {
        lp_sample *s = &samples[sample_index.slots[j] - 1];
        if (s->rec == rec && s->stack == stack && s->event == (uint32_t)event &&
            s->thread == thread && s->task == task) {
            s->count += 1;
            s->estimate += estimate;
            s->value += value;
            return;
        }
        j = (j + 1) & sample_index.mask;
    }
    if (nsamples >= lp_max_samples) {
        lp_dropped_samples++;
        return;
    }
    if (nsamples >= capsamples) {
        uint32_t nc = capsamples ? capsamples * 2 : 256;
        lp_sample *ns = lp_fault() ? NULL : PyMem_Realloc(samples, nc * sizeof(lp_sample));
        if (ns == NULL) {
            lp_dropped_samples++;
            return;
        }
        samples = ns;
        capsamples = nc;
    }
    lp_sample *s = &samples[nsamples++];
    s->rec = rec;
    s->stack = stack;
    s->event = (uint32_t)event;
    s->thread = thread;
    s->task = task;
    s->count = 1;
    s->estimate = estimate;
    s->value = value;
    sample_index.slots[j] = nsamples;
}

void
lp_samples_reset(void)
{
    nsamples = 0;
    if (sample_index.slots != NULL) {
        memset(sample_index.slots, 0, (sample_index.mask + 1) * sizeof(uint32_t));
    }
    lp_dropped_samples = 0;
    lp_dropped_stacks = 0;
}

int
lp_samples_remap(const uint32_t *newid, uint32_t n)
{
    if (nsamples == 0) {
        return 0;
    }
    lp_sample *out = PyMem_Malloc(capsamples * sizeof(lp_sample));
    lp_index ix = {NULL, 0};
    if (out == NULL) {
        return -1;
    }
    /* an index big enough for every row at once: no growth while filling */
    uint32_t cap = 1024;
    while (cap < 2 * nsamples + 2) {
        cap *= 2;
    }
    ix.slots = PyMem_Calloc(cap, sizeof(uint32_t));
    if (ix.slots == NULL) {
        PyMem_Free(out);
        return -1;
    }
    ix.mask = cap - 1;
    uint32_t nout = 0;
    for (uint32_t i = 0; i < nsamples; i++) {
        lp_sample s = samples[i];
        if (s.rec >= 1 && s.rec <= n) {
            s.rec = newid[s.rec];
        }
        uint32_t j = sample_hash(s.rec, s.stack, s.event, s.thread, s.task) & ix.mask;
        while (ix.slots[j]) {
            lp_sample *o = &out[ix.slots[j] - 1];
            if (o->rec == s.rec && o->stack == s.stack && o->event == s.event &&
                o->thread == s.thread && o->task == s.task) {
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
    PyMem_Free(samples);
    PyMem_Free(sample_index.slots);
    samples = out;
    nsamples = nout;
    sample_index = ix;
    return 0;
}

static const char *event_names[] = {"acquire", "contention", "hold", "cond_wait", "delay"};

PyObject *
lp_py_samples(PyObject *mod, PyObject *unused)
{
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i < nsamples; i++) {
        const lp_sample *s = &samples[i];
        const lp_thread *th = s->thread < nthreads ? &threads[s->thread] : NULL;
        PyObject *task = (task_names != NULL && s->task < (uint32_t)PyList_GET_SIZE(task_names))
                             ? PyList_GET_ITEM(task_names, s->task) : Py_None;
        PyObject *t = Py_BuildValue("(IIsKdd(kkO)O)", s->rec, s->stack, event_names[s->event],
                                    (unsigned long long)s->count, s->estimate, s->value,
                                    th ? th->ident : 0UL, th ? th->native_id : 0UL,
                                    (th && th->name) ? th->name : Py_None, task);
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
    if (id == 0 || id >= nstacks) {
        return Py_BuildValue("([]I)", 0u);
    }
    const lp_stack *s = &stacks[id];
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
     "samples()\n--\n\n(lock id, stack id, event, samples, estimated events, estimated ns, (thread id, native id, name), task name)."},
    {"stack", lp_py_stack, METH_O,
     "stack(id)\n--\n\n([(file, function, line), ...] leaf first, frames omitted)."},
    {NULL, NULL, 0, NULL},
};

int
lp_stack_setup(PyObject *module)
{
    return PyModule_AddFunctions(module, stack_methods);
}
