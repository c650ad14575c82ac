/* lockprof runtime: the awaitable returned by the asyncio wrappers.
 *
 * `await lock.acquire()` on a wrapped asyncio lock awaits this object, which
 * drives the stdlib's own coroutine step by step.  The clock is read only
 * when that coroutine suspends on something to wait for (a future, not a
 * bare yield), so an uncontended acquire reads no clock and a contended one
 * measures the real time the task was suspended.
 *
 * Owns: the awaitable objects, one per `await` (their fields are their own
 * task's; an awaitable is driven by one task at a time); the interned method
 * names, written once at module init.
 * Guarded by: nothing shared is written here: the events go to lp_record.c's
 * flush functions, which take the tables' mutex. */
#include "lp_record.h"
#include "lp_stack.h"

#define LP_AW_IS_ENTER(mode) ((mode) == LP_AW_AENTER || (mode) == LP_AW_AENTER_SELF)

typedef enum { LP_SEND_RETURN = 0, LP_SEND_ERROR = -1, LP_SEND_NEXT = 1 } lp_send_result;

typedef struct {
    PyObject_HEAD
    PyObject *coro;         /* the stdlib coroutine; NULL in LP_AW_CALL mode */
    lp_wrapper *w;
    const lp_method *m;
    lp_release_fn release;  /* LP_AW_CALL: the release run on first send */
    int64_t t0;             /* first suspension (0: never suspended) */
    int kind;
    int mode;
    int done;
    int bounded;            /* its wait is bounded by a timeout (wait_for,
                               asyncio.timeout) */
} lp_awaitable;

static PyTypeObject *awaitable_type = NULL;
static PyObject *str_send, *str_throw, *str_close;

PyObject *
lp_awaitable_new(lp_wrapper *w, PyObject *target, int kind, int mode, const lp_method *m,
                 PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames,
                 lp_release_fn release)
{
    PyObject *coro = NULL;
    if (mode != LP_AW_CALL) {
        /* made now, as the stdlib's coroutine would be: argument errors
         * surface at call time */
        coro = lp_call(m, target, args, nargs, kwnames);
        if (coro == NULL) {
            return NULL;
        }
#if PY_VERSION_HEX < 0x030A0000
        /* 3.9 has no PyIter_Send: step the coroutine's __await__ iterator */
        unaryfunc am_await = Py_TYPE(coro)->tp_as_async ? Py_TYPE(coro)->tp_as_async->am_await : NULL;
        PyObject *it = am_await ? am_await(coro) : NULL;
        if (it == NULL || Py_TYPE(it)->tp_iternext == NULL) {
            if (it == NULL && !PyErr_Occurred()) {
                PyErr_Format(PyExc_TypeError, "object %.100s can't be used in 'await' expression",
                             Py_TYPE(coro)->tp_name);
            }
            Py_XDECREF(it);
            Py_DECREF(coro);
            return NULL;
        }
        Py_DECREF(coro);
        coro = it;
#endif
    }
    lp_awaitable *a = PyObject_GC_New(lp_awaitable, awaitable_type);
    if (a == NULL) {
        Py_XDECREF(coro);
        return NULL;
    }
    a->coro = coro;
    a->w = (lp_wrapper *)Py_NewRef((PyObject *)w);
    a->m = m;
    a->release = release;
    a->t0 = 0;
    a->kind = kind;
    a->mode = mode;
    a->done = 0;
    a->bounded = 0;
    if (coro != NULL) {
        /* a task waiting on the lock can reach this object again (through
         * the future in the lock's waiters): cycles are possible.  The
         * __aexit__ form holds only the wrapper and needs no tracking. */
        PyObject_GC_Track(a);
    }
    return (PyObject *)a;
}

static lp_send_result
coro_send(PyObject *coro, PyObject *arg, PyObject **result)
{
#if PY_VERSION_HEX >= 0x030A0000
    return (lp_send_result)PyIter_Send(coro, arg, result);
#else
    /* `coro` is the coroutine's __await__() iterator (see lp_awaitable_new);
     * its tp_iternext ends a None result without raising */
    PyObject *r = (arg == Py_None) ? Py_TYPE(coro)->tp_iternext(coro)
                                   : PyObject_CallMethodOneArg(coro, str_send, arg);
    if (r != NULL) {
        *result = r;
        return LP_SEND_NEXT;
    }
    if (!PyErr_Occurred()) {
        *result = Py_NewRef(Py_None);
        return LP_SEND_RETURN;
    }
    if (!PyErr_ExceptionMatches(PyExc_StopIteration)) {
        *result = NULL;
        return LP_SEND_ERROR;
    }
    PyObject *t, *v, *tb;
    PyErr_Fetch(&t, &v, &tb);
    PyErr_NormalizeException(&t, &v, &tb);
    *result = v ? PyObject_GetAttrString(v, "value") : Py_NewRef(Py_None);
    Py_XDECREF(t);
    Py_XDECREF(v);
    Py_XDECREF(tb);
    return *result ? LP_SEND_RETURN : LP_SEND_ERROR;
#endif
}

static int acquire_bounded(void);

/* The stdlib coroutine returned `value` (a new reference). */
static lp_send_result
finish(lp_awaitable *a, PyObject *value, PyObject **result)
{
    a->done = 1;
    lp_wrapper *w = a->w;
    if ((a->mode == LP_AW_ACQUIRE || LP_AW_IS_ENTER(a->mode)) &&
        !(LP_WF(w) & LP_W_DELEGATED)) {
        /* an acquire coroutine that returns has acquired: asyncio's return
         * True, anyio's None */
        int acquired = value == Py_None || LP_ACQUIRED(value);
        if (a->t0 == 0 && acquired && LP_LOAD(lp_lock_order)) {
            a->bounded = acquire_bounded();     /* taken without waiting */
        }
        if (a->t0 != 0) {
            lp_flush_contended(w, a->kind, lp_now_ns() - a->t0, acquired);
            a->t0 = 0;
        }
        if (acquired && LP_SAMPLED()) {
            lp_flush_acquire(w, a->kind, 1, !a->bounded);
        }
    }
    else if (a->mode == LP_AW_WAIT && a->t0 != 0) {
        lp_flush_cond_wait(w, a->kind, lp_now_ns() - a->t0);
    }
    if (LP_AW_IS_ENTER(a->mode)) {
        /* async with: __aenter__ returns None, or the lock (the wrapper) */
        Py_DECREF(value);
        value = Py_NewRef(a->mode == LP_AW_AENTER_SELF ? (PyObject *)w : Py_None);
    }
    *result = value;
    return LP_SEND_RETURN;
}

/* an acquire that suspended and will not complete (error, cancellation) */
static void
abort_wait(lp_awaitable *a)
{
    if (a->t0 != 0 && (a->mode == LP_AW_ACQUIRE || LP_AW_IS_ENTER(a->mode))) {
        lp_wait_abort(a->w);
    }
    a->t0 = 0;
}

/* whether `file` (a code object's co_filename) is asyncio's `name` module */
static int
is_asyncio_module(PyObject *file, const char *name)
{
    Py_ssize_t n;
    const char *s = PyUnicode_AsUTF8AndSize(file, &n);
    if (s == NULL) {
        PyErr_Clear();
        return 0;
    }
    char tail[64];
    int k = snprintf(tail, sizeof(tail), "asyncio/%s.py", name);
    if (k <= 0 || (size_t)k >= sizeof(tail) || n < k) {
        return 0;
    }
    const char *end = s + n - k;
    for (int i = 0; i < k; i++) {
        char c = end[i] == '\\' ? '/' : end[i];
        if (c != tail[i]) {
            return 0;
        }
    }
    return 1;
}

#if PY_VERSION_HEX < 0x030C0000
/* whether frame f is absent or asyncio's Handle._run, the event loop's step
 * that runs a task: the frame before it is the task's outermost */
static int
step_or_none(PyFrameObject *f)
{
    if (f == NULL) {
        return 1;
    }
    PyCodeObject *code = PyFrame_GetCode(f);
    const char *name = PyUnicode_AsUTF8(code->co_name);
    int r = name != NULL && strcmp(name, "_run") == 0 && is_asyncio_module(code->co_filename,
                                                                          "events");
    PyErr_Clear();
    Py_DECREF(code);
    return r;
}
#endif

#if PY_VERSION_HEX >= 0x030B0000
/* Whether a timeout made by asyncio.timeout()/timeout_at() (3.11+; 3.12+'s
 * wait_for is built on it) is armed for the current task: while entered
 * with a deadline, a Timeout keeps a TimerHandle on its loop whose callback
 * is its own _on_timeout, and the Timeout names its task.  Nothing on the
 * task points at it, so the loop's timers (`_scheduled`, a list on asyncio's
 * own loops; none on others, such as uvloop's) are read, one attribute each:
 * O(live timers), paid only where acquire_bounded() is (lock order on, or a
 * wait beginning under the hang doctor).  Only plain attribute reads, on a
 * loop and handles that do not customise attribute access: no user code. */
static int
timeout_armed(PyObject *task)
{
    PyObject *loop = lp_running_loop();
    if (loop == NULL) {
        return 0;
    }
    int found = 0;
    PyObject *timers = NULL;
    if (Py_TYPE(loop)->tp_getattro == PyObject_GenericGetAttr) {
        timers = PyObject_GetAttrString(loop, "_scheduled");
    }
    if (timers != NULL && PyList_Check(timers)) {
        PyObject *copy = PyList_GetSlice(timers, 0, PyList_GET_SIZE(timers));
        Py_ssize_t n = copy != NULL ? PyList_GET_SIZE(copy) : 0;
        for (Py_ssize_t i = 0; i < n && !found; i++) {
            PyObject *h = PyList_GET_ITEM(copy, i);
            if (Py_TYPE(h)->tp_getattro != PyObject_GenericGetAttr) {
                continue;
            }
            PyObject *cb = PyObject_GetAttrString(h, "_callback");
            if (cb != NULL && PyMethod_Check(cb) && PyFunction_Check(PyMethod_GET_FUNCTION(cb))) {
                PyCodeObject *code = (PyCodeObject *)PyFunction_GetCode(PyMethod_GET_FUNCTION(cb));
                const char *name = PyUnicode_AsUTF8(code->co_name);
                PyObject *self = PyMethod_GET_SELF(cb);
                if (name != NULL && strcmp(name, "_on_timeout") == 0 &&
                    is_asyncio_module(code->co_filename, "timeouts") &&
                    Py_TYPE(self)->tp_getattro == PyObject_GenericGetAttr) {
                    PyObject *owner = PyObject_GetAttrString(self, "_task");
                    PyObject *cancelled = PyObject_GetAttrString(h, "_cancelled");
                    found = owner == task && cancelled == Py_False;
                    Py_XDECREF(owner);
                    Py_XDECREF(cancelled);
                }
            }
            Py_XDECREF(cb);
            PyErr_Clear();
        }
        Py_XDECREF(copy);
    }
    Py_XDECREF(timers);
    Py_DECREF(loop);
    PyErr_Clear();
    return found;
}
#endif

/* Whether the acquire being awaited now is bounded by asyncio.wait_for with
 * a timeout, or inside an armed asyncio.timeout() (timeout_armed), so that
 * it cannot wait forever (lock order: no edge into its lock).  3.12+:
 * wait_for awaits in the caller's task, so its frame is on the stack, with
 * its `timeout` not None.  3.9-3.11: wait_for runs what it
 * is given in a task of its own; a task that runs nothing but this acquire
 * (asyncio's _wrap_awaitable, with no frame under it) was made to bound or
 * cancel it.  Read only when a wait begins. */
static int
acquire_bounded(void)
{
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    int bounded = 0;
    for (int depth = 0; f != NULL && depth < 64 && !bounded; depth++) {
        PyCodeObject *code = PyFrame_GetCode(f);
        PyFrameObject *back = PyFrame_GetBack(f);
        if (is_asyncio_module(code->co_filename, "tasks")) {
            const char *name = PyUnicode_AsUTF8(code->co_name);
            if (name == NULL) {
                PyErr_Clear();
            }
#if PY_VERSION_HEX >= 0x030C0000
            else if (strcmp(name, "wait_for") == 0) {
                PyObject *locals = PyFrame_GetLocals(f);
                PyObject *timeout = locals ? PyMapping_GetItemString(locals, "timeout") : NULL;
                bounded = timeout != NULL && timeout != Py_None;
                Py_XDECREF(timeout);
                Py_XDECREF(locals);
                PyErr_Clear();
            }
#else
            else if (strcmp(name, "_wrap_awaitable") == 0 && step_or_none(back)) {
                bounded = 1;        /* the task's only coroutine */
            }
#endif
        }
        Py_DECREF(code);
        Py_DECREF(f);
        f = back;
    }
    Py_XDECREF(f);
#if PY_VERSION_HEX >= 0x030B0000
    if (!bounded) {
        PyObject *task = lp_current_task();
        bounded = task != NULL && timeout_armed(task);
        Py_XDECREF(task);
    }
#endif
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return bounded;
}

/* whether the coroutine, yielding `value` (not None), suspends its task
 * until woken: for trio, whose acquire yields a checkpoint on every call,
 * only its WaitTaskRescheduled trap; for the others, anything but a bare
 * yield or a class (an asyncio future, a trio trap instance) */
static int
begins_wait(lp_awaitable *a, PyObject *value)
{
    PyObject *cls = lp_wait_yield_class(a->kind);
    if (cls != NULL) {
        return Py_TYPE(value) == (PyTypeObject *)cls;
    }
    /* a class is trio's checkpoint trap (anyio's generic Condition runs on
     * either backend): it reschedules at once, as a bare yield does */
    return !PyType_Check(value);
}

static lp_send_result
step(lp_awaitable *a, lp_send_result res, PyObject *value, PyObject **result)
{
    if (res == LP_SEND_NEXT) {
        /* a bare yield (None) is a checkpoint: the task is scheduled again
         * at once (anyio's locks yield so on every acquire); only a
         * suspension on something to wait for (a future) begins a wait */
        if (a->t0 == 0 && value != Py_None && LP_LOAD(lp_active) && begins_wait(a, value)) {
            a->t0 = lp_now_ns();
            if (a->mode == LP_AW_ACQUIRE || LP_AW_IS_ENTER(a->mode)) {
                if (LP_LOAD(lp_lock_order) || LP_LOAD(lp_hang_ns)) {
                    a->bounded = acquire_bounded();
                }
                if (LP_LOAD(lp_lock_order) && !a->bounded) {
                    lp_wait_unbounded(a->w, a->kind);
                }
                lp_wait_begin(a->w, a->kind, a->bounded);
            }
        }
        *result = value;
        return LP_SEND_NEXT;
    }
    if (res == LP_SEND_RETURN) {
        return finish(a, value, result);
    }
    a->done = 1;
    abort_wait(a);
    *result = NULL;
    return LP_SEND_ERROR;
}

static lp_send_result
aw_send(PyObject *self, PyObject *arg, PyObject **result)
{
    lp_awaitable *a = (lp_awaitable *)self;
    if (a->done) {
        PyErr_SetString(PyExc_RuntimeError, "cannot reuse already awaited coroutine");
        *result = NULL;
        return LP_SEND_ERROR;
    }
    if (a->mode == LP_AW_CALL) {
        a->done = 1;
        PyObject *r = a->release(a->w);
        if (r == NULL) {
            *result = NULL;
            return LP_SEND_ERROR;
        }
        Py_DECREF(r);
        *result = Py_NewRef(Py_None);
        return LP_SEND_RETURN;
    }
    if (a->mode == LP_AW_WAIT && a->t0 == 0 && LP_LOAD(lp_active)) {
        a->t0 = lp_now_ns();
    }
    PyObject *value = NULL;
    lp_send_result res = coro_send(a->coro, arg, &value);
    return step(a, res, value, result);
}

/* Ends an iteration with `value` (a new reference): NULL with no exception
 * set means StopIteration(None) to the interpreter and costs nothing; any
 * other value travels in a StopIteration. */
static PyObject *
stop_iteration(PyObject *value)
{
    if (value == Py_None) {
        Py_DECREF(value);
        return NULL;
    }
    if (PyTuple_Check(value) || PyExceptionInstance_Check(value)) {
        /* would be taken as the exception's arguments: wrap it */
        PyObject *exc = PyObject_CallOneArg(PyExc_StopIteration, value);
        Py_DECREF(value);
        if (exc != NULL) {
            PyErr_SetObject(PyExc_StopIteration, exc);
            Py_DECREF(exc);
        }
        return NULL;
    }
    PyErr_SetObject(PyExc_StopIteration, value);
    Py_DECREF(value);
    return NULL;
}

static PyObject *
aw_iternext(PyObject *self)
{
    PyObject *r;
    lp_send_result res = aw_send(self, Py_None, &r);
    if (res == LP_SEND_RETURN) {
        return stop_iteration(r);
    }
    return r;
}

static PyObject *
aw_send_meth(PyObject *self, PyObject *arg)
{
    /* .send() is called by Python code, which needs a real StopIteration */
    PyObject *r;
    lp_send_result res = aw_send(self, arg, &r);
    if (res == LP_SEND_RETURN) {
        if (r == Py_None) {
            Py_DECREF(r);
            PyErr_SetNone(PyExc_StopIteration);
            return NULL;
        }
        return stop_iteration(r);
    }
    return r;
}

static PyObject *
aw_throw(PyObject *self, PyObject *const *args, Py_ssize_t nargs)
{
    lp_awaitable *a = (lp_awaitable *)self;
    if (a->coro == NULL || a->done) {
        a->done = 1;
        if (nargs < 1) {
            PyErr_SetString(PyExc_TypeError, "throw expected at least 1 argument, got 0");
            return NULL;
        }
        PyObject *typ = args[0];
        if (PyExceptionInstance_Check(typ)) {
            PyErr_SetObject((PyObject *)Py_TYPE(typ), typ);
        }
        else {
            PyErr_SetObject(typ, nargs > 1 ? args[1] : Py_None);
        }
        return NULL;
    }
    PyObject *r = PyObject_VectorcallMethod(str_throw, (PyObject *[]){a->coro, nargs > 0 ? args[0] : NULL,
                                                                       nargs > 1 ? args[1] : NULL,
                                                                       nargs > 2 ? args[2] : NULL},
                                            1 + nargs, NULL);
    if (r != NULL) {
        PyObject *out;
        step(a, LP_SEND_NEXT, r, &out);
        return out;
    }
    if (PyErr_ExceptionMatches(PyExc_StopIteration)) {
        PyObject *t, *v, *tb;
        PyErr_Fetch(&t, &v, &tb);
        PyErr_NormalizeException(&t, &v, &tb);
        PyObject *value = v ? PyObject_GetAttrString(v, "value") : Py_NewRef(Py_None);
        Py_XDECREF(t);
        Py_XDECREF(v);
        Py_XDECREF(tb);
        if (value == NULL) {
            return NULL;
        }
        PyObject *out;
        finish(a, value, &out);
        return stop_iteration(out);
    }
    a->done = 1;
    abort_wait(a);
    return NULL;
}

static PyObject *
aw_close(PyObject *self, PyObject *unused)
{
    lp_awaitable *a = (lp_awaitable *)self;
    a->done = 1;
    abort_wait(a);
    if (a->coro == NULL) {
        Py_RETURN_NONE;
    }
    return PyObject_CallMethodNoArgs(a->coro, str_close);
}

static PyObject *
aw_await(PyObject *self)
{
    return Py_NewRef(self);
}

static int
aw_traverse(lp_awaitable *a, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(a));
    Py_VISIT(a->coro);
    Py_VISIT(a->w);
    return 0;
}

static int
aw_clear(lp_awaitable *a)
{
    Py_CLEAR(a->coro);
    Py_CLEAR(a->w);
    return 0;
}

static void
aw_dealloc(lp_awaitable *a)
{
    PyTypeObject *tp = Py_TYPE(a);
    PyObject_GC_UnTrack(a);
    if (a->w != NULL && !a->done) {
        abort_wait(a);
    }
    aw_clear(a);
    tp->tp_free((PyObject *)a);
    Py_DECREF(tp);
}

static PyMethodDef aw_methods[] = {
    {"send", (PyCFunction)aw_send_meth, METH_O, NULL},
    {"throw", (PyCFunction)(void (*)(void))aw_throw, METH_FASTCALL, NULL},
    {"close", (PyCFunction)aw_close, METH_NOARGS, NULL},
    {NULL, NULL, 0, NULL},
};

static PyType_Slot aw_slots[] = {
    {Py_tp_dealloc, aw_dealloc},
    {Py_tp_traverse, aw_traverse},
    {Py_tp_clear, aw_clear},
    {Py_tp_iter, aw_await},
    {Py_tp_iternext, aw_iternext},
    {Py_tp_methods, aw_methods},
    {Py_am_await, aw_await},
#if PY_VERSION_HEX >= 0x030A0000
    {Py_am_send, aw_send},
#endif
    {0, NULL},
};

static PyType_Spec aw_spec = {
    .name = "lockprof._lockprof.Awaitable",
    .basicsize = sizeof(lp_awaitable),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = aw_slots,
};

int
lp_async_setup(PyObject *module)
{
    str_send = PyUnicode_InternFromString("send");
    str_throw = PyUnicode_InternFromString("throw");
    str_close = PyUnicode_InternFromString("close");
    if (!str_send || !str_throw || !str_close) {
        return -1;
    }
    awaitable_type = (PyTypeObject *)PyType_FromSpec(&aw_spec);
    if (awaitable_type == NULL) {
        return -1;
    }
    return PyModule_AddObject(module, "Awaitable", Py_NewRef(awaitable_type));
}
