/* lockprof runtime: method resolution, sampling, timing, the slow paths of
 * acquire and wait, and the slots every wrapper type shares.
 *
 * Owns: the resolved methods of the wrapped types (written when a type is
 * first resolved; a Python method's function is taken again when its class
 * changes, GIL builds only: method_refresh), the table of lock types whose
 * methods a Condition calls (filled under the tables' mutex), the empty and
 * (False,) tuples.
 * Guarded by: the resolution and the Condition table run under the tables'
 * mutex (lp_tables_mutex, lp_thread.c) on a free-threaded build, the GIL
 * otherwise; a resolved class is published with a release store and read
 * with an acquire load. */
#include "lp_runtime.h"
#include "lp_record.h"

#include <math.h>
#include <time.h>
#include <unistd.h>

PyObject *lp_empty_tuple = NULL;
PyObject *lp_false_tuple = NULL;

/* ------------------------------------------------------------------------ */
/* methods of the wrapped type                                               */
/* ------------------------------------------------------------------------ */

int
lp_method_init(lp_method *m, PyObject *type, const char *name)
{
    m->name = PyUnicode_InternFromString(name);
    if (m->name == NULL) {
        return -1;
    }
    m->descr = NULL;
    m->meth = NULL;
    m->flags = 0;
    m->func = NULL;
    m->owner = NULL;
    m->tag = 0;
    PyObject *d = PyObject_GetAttr(type, m->name);
    if (d == NULL) {
        /* bound per instance (threading.Condition.acquire): call by name */
        if (PyErr_ExceptionMatches(PyExc_AttributeError)) {
            PyErr_Clear();
            return 0;
        }
        return -1;
    }
    /* A C method of a C type: call its function directly.  Everything else
     * (Python functions, methods bound in __init__) goes by name. */
    if (Py_IS_TYPE(d, &PyMethodDescr_Type)) {
        PyMethodDef *def = ((PyMethodDescrObject *)d)->d_method;
        int kinds = def->ml_flags & LP_METH_KINDS;
        if (kinds == METH_NOARGS || kinds == METH_O || kinds == METH_VARARGS ||
            kinds == (METH_VARARGS | METH_KEYWORDS) || kinds == METH_FASTCALL ||
            kinds == (METH_FASTCALL | METH_KEYWORDS)) {
            m->descr = d;
            m->meth = def->ml_meth;
            m->flags = def->ml_flags;
            return 0;
        }
    }
    if (PyFunction_Check(d) && PyType_Check(type) &&
        lp_tag_current((PyTypeObject *)type, ((PyTypeObject *)type)->tp_version_tag)) {
        /* A Python method: call the function itself while the class is
         * unchanged; a later monkeypatch changes the version tag and sends
         * calls back to the lookup by name. */
        m->func = d;
        m->owner = (PyTypeObject *)Py_NewRef(type);
        m->tag = ((PyTypeObject *)type)->tp_version_tag;
        return 0;
    }
    Py_DECREF(d);
    return 0;
}

int
lp_same_method(PyObject *type, const char *a, const char *b)
{
    PyObject *x = PyObject_GetAttrString(type, a);
    PyObject *y = x != NULL ? PyObject_GetAttrString(type, b) : NULL;
    int same = 0;
    if (y != NULL) {
        same = x == y
            || (Py_IS_TYPE(x, &PyMethodDescr_Type) && Py_IS_TYPE(y, &PyMethodDescr_Type)
                && ((PyMethodDescrObject *)x)->d_method->ml_meth
                   == ((PyMethodDescrObject *)y)->d_method->ml_meth);
    }
    else {
        PyErr_Clear();
    }
    Py_XDECREF(x);
    Py_XDECREF(y);
    return same;
}

/* The class of a Python method changed since its function was taken (its
 * version tag moved): a monkeypatch, or lockprof's own `__new__` going in
 * or out of the class at start() and stop() on 3.13+ (lp_factory.c), which
 * would otherwise send every later call through the lookup by name.  Takes
 * the class's function again, with the class's new tag, when it is still a
 * plain function; else the call goes by name.  GIL builds: the GIL guards
 * `m` (a free-threaded build keeps going by name, where another thread may
 * be calling the function being replaced). */
static int
method_refresh(lp_method *m)
{
#ifdef Py_GIL_DISABLED
    (void)m;
    return 0;
#else
    PyObject *d = PyObject_GetAttr((PyObject *)m->owner, m->name);
    if (d == NULL) {
        PyErr_Clear();
        return 0;
    }
    /* the lookup gave the class a version tag again, unless it has run out */
    unsigned int tag = m->owner->tp_version_tag;
    if (!PyFunction_Check(d) || !lp_tag_current(m->owner, tag)) {
        if (tag == 0) {
            /* no tags left for this class (3.12+ caps them): by name from
             * now on, without a lookup here at every call */
            Py_CLEAR(m->func);
        }
        Py_DECREF(d);
        return 0;
    }
    Py_SETREF(m->func, d);
    m->tag = tag;
    return 1;
#endif
}

PyObject *
lp_call_generic(const lp_method *m, PyObject *self, PyObject *const *args,
                Py_ssize_t nargs, PyObject *kwnames)
{
    PyObject *small[8];
    PyObject **stack = small;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    Py_ssize_t total = 1 + nargs + nkw;
    if (total > 8) {
        stack = PyMem_Malloc(total * sizeof(PyObject *));
        if (stack == NULL) {
            return PyErr_NoMemory();
        }
    }
    stack[0] = self;
    for (Py_ssize_t i = 0; i < nargs + nkw; i++) {
        stack[1 + i] = args[i];
    }
    PyObject *r;
    if (m->descr != NULL) {
        /* the descriptor converts the call to the method's convention */
        r = PyObject_Vectorcall(m->descr, stack, 1 + nargs, kwnames);
    }
    else if (m->func != NULL && m->owner == NULL) {
        /* a function a Condition's lock bound in __init__: called as that
         * bound method calls it (never replaced, so no reference taken) */
        r = PyObject_Vectorcall(m->func, stack, 1 + nargs, kwnames);
    }
    else if (m->func != NULL && Py_TYPE(self) == m->owner
             && (LP_LIKELY(lp_tag_current(m->owner, m->tag)) || method_refresh((lp_method *)m))) {
        /* (a strong reference for the call: a refresh may replace it) */
        PyObject *f = Py_NewRef(m->func);
        r = PyObject_Vectorcall(f, stack, 1 + nargs, kwnames);
        Py_DECREF(f);
    }
    else {
        r = PyObject_VectorcallMethod(m->name, stack, 1 + nargs, kwnames);
    }
    if (stack != small) {
        PyMem_Free(stack);
    }
    return r;
}

/* ------------------------------------------------------------------------ */
/* clock and sampling                                                        */
/* ------------------------------------------------------------------------ */


/* ------------------------------------------------------------------------ */
/* slow paths                                                                */
/* ------------------------------------------------------------------------ */

static PyObject *lp_str_blocking, *lp_str_block, *lp_str_timeout;

/* the keyword of the first parameter: `blocking` (threading, gevent) or
 * `block` (multiprocessing) */
static int
is_blocking_kw(PyObject *k)
{
    return k == lp_str_blocking || k == lp_str_block || PyUnicode_Compare(k, lp_str_blocking) == 0
           || PyUnicode_Compare(k, lp_str_block) == 0;
}

/* A timeout that waits forever: None (threading.Semaphore, multiprocessing,
 * gevent) or -1 (threading's locks' and Condition's own "no timeout"). */
static int
untimed(PyObject *t)
{
    if (t == Py_None) {
        return 1;
    }
    if (PyLong_CheckExact(t)) {
        int overflow = 0;
        return PyLong_AsLongAndOverflow(t, &overflow) == -1 && !overflow;
    }
    return PyFloat_CheckExact(t) && PyFloat_AS_DOUBLE(t) == -1.0;
}

/* 1: blocking, 0: non-blocking, -1: cannot tell (let the call decide).
 * *more is set when the call passes anything beyond `blocking` other than a
 * timeout that waits forever (acquire(timeout=-1) is acquire()). */
static int
lp_is_blocking(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames, int *more)
{
    PyObject *b = NULL;
    Py_ssize_t nkw = kwnames ? PyTuple_GET_SIZE(kwnames) : 0;
    *more = nargs > 2 || (nargs == 2 && !untimed(args[1]));
    if (nargs >= 1) {
        b = args[0];
    }
    for (Py_ssize_t i = 0; i < nkw; i++) {
        PyObject *k = PyTuple_GET_ITEM(kwnames, i);
        if (b == NULL && is_blocking_kw(k)) {
            b = args[nargs + i];
        }
        else if (!(k == lp_str_timeout || PyUnicode_Compare(k, lp_str_timeout) == 0)
                 || !untimed(args[nargs + i])) {
            *more = 1;
        }
    }
    if (b == NULL || b == Py_True) {
        return 1;
    }
    if (b == Py_False) {
        return 0;
    }
    /* Anything else: let the wrapped method interpret it, errors included. */
    return -1;
}

int
lp_waits_forever(PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int more = 0;
    return lp_is_blocking(args, nargs, kwnames, &more) == 1 && !more;
}

int
lp_acquired_other(PyObject *r)
{
    if (r == NULL || r == Py_False || r == Py_None) {
        return 0;
    }
    int t = PyObject_IsTrue(r);
    if (t < 0) {
        /* an acquire returning something without a truth value: the program
         * gets it as it is; lockprof counts it as acquired */
        PyErr_Clear();
        lp_count_error();
        return 1;
    }
    return t;
}

static PyObject *
acquire_slow(lp_wrapper *w, int kind, PyObject *target,
             const lp_method *acquire, const lp_method *release,
             PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    int more = 0;
    if (!LP_LOAD(lp_active) || lp_is_blocking(args, nargs, kwnames, &more) != 1) {
        return lp_call(acquire, target, args, nargs, kwnames);
    }
    PyObject *r = lp_call_false(acquire, target);
    if (r != Py_False) {
        if (r != Py_True || !more) {
            /* acquired (or an error): the caller did not wait */
            return r;
        }
        /* The caller gave a timeout: undo the try and acquire with the
         * caller's own arguments, so that they are checked exactly as
         * the stdlib checks them (it cannot block under the GIL; on a
         * free-threaded build another thread may take the lock in
         * between, and that wait goes untimed) */
        Py_DECREF(r);
        PyObject *u = lp_call0(release, target);
        if (u == NULL) {
            return NULL;
        }
        Py_DECREF(u);
        return lp_call(acquire, target, args, nargs, kwnames);
    }
    Py_DECREF(r);
    if (LP_LOAD(lp_lock_order) && !more) {
        lp_wait_unbounded(w, kind);
    }
    lp_wait_begin(w, kind, more);
    int64_t t0 = lp_now_ns();
    r = lp_call(acquire, target, args, nargs, kwnames);
    int64_t t1 = lp_now_ns();
    if (r != NULL) {
        lp_flush_contended(w, kind, t1 - t0, LP_ACQUIRED(r));
    }
    else {
        lp_wait_abort(w);
    }
    return r;
}

PyObject *
lp_call_named(PyObject *obj, const char *name, PyObject *const *args, Py_ssize_t nargs,
              PyObject *kwnames)
{
    PyObject *f = PyObject_GetAttrString(obj, name);
    if (f == NULL) {
        return NULL;
    }
    PyObject *r = PyObject_Vectorcall(f, args, nargs, kwnames);
    Py_DECREF(f);
    return r;
}

static PyObject *
cond_wait(lp_wrapper *w, int kind, const lp_method *m,
          PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (!LP_LOAD(lp_active)) {
        return lp_call(m, w->inner, args, nargs, kwnames);
    }
    int64_t t0 = lp_now_ns();
    int ordered = (LP_WF(w) & LP_W_ORDER) != 0;
    if (LP_WF(w) & LP_W_ON_RELEASE) {
        /* the wait releases the lock: the sampled hold ends here */
        lp_flush_release(w, t0);
    }
    PyObject *r = lp_call(m, w->inner, args, nargs, kwnames);
    if (ordered && LP_LOAD(lp_track_holds)) {
        /* retaken by the wait: held again, no new edge */
        lp_reacquired(w, kind);
    }
    int64_t t1 = lp_now_ns();
    if (r != NULL) {
        lp_flush_cond_wait(w, kind, t1 - t0);
    }
    return r;
}

/* The waits below may block: a thread that runs them while inside the
 * runtime (a finaliser run by a collection during a flush) gives up the
 * tables' mutex for the wait, as it gave up the GIL */
PyObject *
lp_acquire_slow(lp_wrapper *w, int kind, PyObject *target,
                const lp_method *acquire, const lp_method *release,
                PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    uint32_t held = lp_suspend();
    PyObject *r = acquire_slow(w, kind, target, acquire, release, args, nargs, kwnames);
    lp_resume(held);
    return r;
}

PyObject *
lp_cond_wait(lp_wrapper *w, int kind, const lp_method *m,
             PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    uint32_t held = lp_suspend();
    PyObject *r = cond_wait(w, kind, m, args, nargs, kwnames);
    lp_resume(held);
    return r;
}

uint32_t
lp_state_count(PyObject *state)
{
    if (!PyTuple_Check(state) || PyTuple_GET_SIZE(state) < 1) {
        return 0;
    }
    long n = PyLong_AsLong(PyTuple_GET_ITEM(state, 0));
    if (n < 0) {
        PyErr_Clear();
        return 0;
    }
    return (uint32_t)n;
}

/* ------------------------------------------------------------------------ */
/* slots shared by all wrapper types                                         */
/* ------------------------------------------------------------------------ */

int
lp_wrapper_traverse(lp_wrapper *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->inner);
    return 0;
}

int
lp_wrapper_clear(lp_wrapper *self)
{
    Py_CLEAR(self->inner);
    return 0;
}

void
lp_wrapper_dealloc(lp_wrapper *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    int gc = PyType_IS_GC(tp);
    if (gc) {
        PyObject_GC_UnTrack(self);
    }
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    lp_lock_freed(self);
    if (tp->tp_clear != NULL) {
        tp->tp_clear((PyObject *)self);
    }
    Py_CLEAR(self->inner);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

/* the wrapped object's text `r` (stolen) with our address in place of the
 * inner one, so that it matches id() as it does natively */
static PyObject *
own_address(lp_wrapper *self, PyObject *r)
{
    if (r == NULL) {
        return NULL;
    }
    PyObject *from = PyUnicode_FromFormat("%p", (void *)self->inner);
    PyObject *to = PyUnicode_FromFormat("%p", (void *)self);
    PyObject *out = NULL;
    if (from != NULL && to != NULL) {
        out = PyUnicode_Replace(r, from, to, 1);
    }
    Py_XDECREF(from);
    Py_XDECREF(to);
    Py_DECREF(r);
    return out;
}

PyObject *
lp_wrapper_repr(lp_wrapper *self)
{
    return own_address(self, PyObject_Repr(self->inner));
}

PyObject *
lp_wrapper_str(lp_wrapper *self)
{
    /* a class with a __str__ of its own (gevent's Semaphore) says it; any
     * other's str() is its repr */
    reprfunc s = Py_TYPE(self->inner)->tp_str;
    if (s == NULL || s == PyBaseObject_Type.tp_str) {
        return lp_wrapper_repr(self);
    }
    return own_address(self, PyObject_Str(self->inner));
}

PyObject *
lp_wrapper_get_class(lp_wrapper *self, void *closure)
{
    return Py_NewRef((PyObject *)Py_TYPE(self->inner));
}

PyObject *
lp_wrapper_reduce_ex(lp_wrapper *self, PyObject *proto)
{
    /* Pickling and copying behave as they do for the wrapped object: the
     * reduction names its class, which makes a plain instance when called
     * as __new__ (the class's own hook wraps only calls of the class) */
    static PyObject *name = NULL;
    if (name == NULL && (name = PyUnicode_InternFromString("__reduce_ex__")) == NULL) {
        return NULL;
    }
    PyObject *args[2] = {self->inner, proto};
    return PyObject_VectorcallMethod(name, args, 2 | PY_VECTORCALL_ARGUMENTS_OFFSET, NULL);
}

PyObject *
lp_wrapper_reduce_ex_rewrap(lp_wrapper *self, PyObject *proto, int kind)
{
    PyObject *r = lp_wrapper_reduce_ex(self, proto);
    /* (callable, args[, state[, None, None]]): anything else, or a process
     * not profiling, pickles as the wrapped object does */
    if (r == NULL || !PyTuple_Check(r) || PyTuple_GET_SIZE(r) < 2 || PyTuple_GET_SIZE(r) > 5
        || !PyTuple_Check(PyTuple_GET_ITEM(r, 1)) || !LP_LOAD(lp_active)) {
        return r;
    }
    for (Py_ssize_t i = 3; i < PyTuple_GET_SIZE(r); i++) {
        if (PyTuple_GET_ITEM(r, i) != Py_None) {
            return r;
        }
    }
    lp_enter();
    PyObject *name = lp_lock_display_name(self, kind);
    PyObject *key = lp_kind_name(kind);      /* borrowed */
    lp_exit();
    PyObject *mod = name != NULL && key != NULL ? PyImport_ImportModule("lockprof._unpickle") : NULL;
    PyObject *rebuild = mod != NULL ? PyObject_GetAttrString(mod, "rebuild") : NULL;
    PyObject *out = NULL;
    if (rebuild != NULL) {
        PyObject *state = PyTuple_GET_SIZE(r) >= 3 ? PyTuple_GET_ITEM(r, 2) : Py_None;
        out = Py_BuildValue("(O(OOOOO))", rebuild, key, name, PyTuple_GET_ITEM(r, 0),
                            PyTuple_GET_ITEM(r, 1), state);
    }
    Py_XDECREF(rebuild);
    Py_XDECREF(mod);
    Py_XDECREF(name);
    if (out == NULL) {
        /* the program pickles the wrapped object as it would natively */
        PyErr_Clear();
        lp_count_error();
        return r;
    }
    Py_DECREF(r);
    return out;
}

/* ------------------------------------------------------------------------ */
/* Conditions: the lock's methods, cached                                   */
/* ------------------------------------------------------------------------ */

/* The methods a Condition calls on its lock, shared by every Condition over
 * a lock of one type (kept for the process's lifetime, at most
 * LP_LOCK_TYPES_CACHED entries; a Condition past that calls by name).  Two
 * kinds of entry:
 *   - the lock type's own C acquire/release (descr set), resolved from the
 *     type as the wrapper types' are;
 *   - a Python lock's acquire/release functions, exactly the ones its bound
 *     methods held when the Condition was made (func set, owner NULL: called
 *     as the bound method calls them, never taken again from the class). */
#define LP_LOCK_TYPES_CACHED 8
static lp_lock_methods lock_methods[LP_LOCK_TYPES_CACHED];
static int n_lock_methods = 0;

/* m: `type`'s C method `name` (1), or nothing held (0: not a C method, or
 * the lookup failed) */
static int
c_method_init(lp_method *m, PyTypeObject *type, const char *name)
{
    memset(m, 0, sizeof(*m));
    if (lp_method_init(m, (PyObject *)type, name) < 0) {
        PyErr_Clear();
    }
    if (m->descr != NULL) {
        return 1;
    }
    /* a Python class's function: lock_funcs_for keeps those */
    Py_CLEAR(m->name);
    Py_CLEAR(m->func);
    Py_CLEAR(m->owner);
    return 0;
}

/* the shared C acquire/release of `type`, resolved on first use; NULL when
 * they are not plain C methods (remembered as such: descr NULL) */
static const lp_lock_methods *
lock_methods_for(PyTypeObject *type)
{
    for (int i = 0; i < n_lock_methods; i++) {
        if (lock_methods[i].type == type && lock_methods[i].acquire.func == NULL) {
            return lock_methods[i].acquire.descr != NULL ? &lock_methods[i] : NULL;
        }
    }
    if (n_lock_methods == LP_LOCK_TYPES_CACHED) {
        return NULL;
    }
    lp_lock_methods *lm = &lock_methods[n_lock_methods];
    int acq = c_method_init(&lm->acquire, type, "acquire");
    int rel = c_method_init(&lm->release, type, "release");
    if (!(acq && rel)) {
        Py_CLEAR(lm->acquire.descr);
        Py_CLEAR(lm->acquire.name);
        Py_CLEAR(lm->release.descr);
        Py_CLEAR(lm->release.name);
    }
    lm->type = (PyTypeObject *)Py_NewRef(type);
    n_lock_methods++;
    return lm->acquire.descr != NULL ? lm : NULL;
}

static void
fixed_func_init(lp_method *m, PyObject *name, PyObject *func)
{
    m->name = Py_NewRef(name);
    m->descr = NULL;
    m->meth = NULL;
    m->flags = 0;
    m->func = Py_NewRef(func);
    m->owner = NULL;
    m->tag = 0;
}

static PyObject *str_acquire = NULL, *str_release = NULL;

/* the entry calling `acq` and `rel`, functions of the Python class `type`'s
 * instances' bound methods; NULL when the table is full */
static const lp_lock_methods *
lock_funcs_for(PyTypeObject *type, PyObject *acq, PyObject *rel)
{
    for (int i = 0; i < n_lock_methods; i++) {
        lp_lock_methods *lm = &lock_methods[i];
        if (lm->type == type && lm->acquire.func == acq && lm->release.func == rel) {
            return lm;
        }
    }
    if (n_lock_methods == LP_LOCK_TYPES_CACHED) {
        return NULL;
    }
    lp_lock_methods *lm = &lock_methods[n_lock_methods];
    fixed_func_init(&lm->acquire, str_acquire, acq);
    fixed_func_init(&lm->release, str_release, rel);
    lm->type = (PyTypeObject *)Py_NewRef(type);
    n_lock_methods++;
    return lm;
}

static void
cond_bind_locked(lp_cond_wrapper *w)
{
    /* A Condition's __init__ binds its lock's methods (threading's
     * `self.acquire = lock.acquire`, asyncio's likewise).  When both are
     * bound to one lock and are its type's C methods (the default RLock, a
     * native Lock, a wrapper of ours) or plain Python functions (asyncio's
     * Lock, a Python lock class), call them directly on that lock, as the
     * bound methods would.  Anything else keeps the call by name. */
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    if (str_acquire == NULL) {
        str_acquire = PyUnicode_InternFromString("acquire");
        str_release = PyUnicode_InternFromString("release");
    }
    PyObject *inner = w->base.inner;
    PyObject *acq = str_release ? PyObject_GetAttr(inner, str_acquire) : NULL;
    PyObject *rel = acq ? PyObject_GetAttr(inner, str_release) : NULL;
    if (acq != NULL && rel != NULL && PyCFunction_Check(acq) && PyCFunction_Check(rel)) {
        PyObject *self = PyCFunction_GET_SELF(acq);
        const lp_lock_methods *lm =
            (self != NULL && self == PyCFunction_GET_SELF(rel)) ? lock_methods_for(Py_TYPE(self))
                                                                : NULL;
        /* the bound methods must be the type's own (not an instance's) */
        if (lm != NULL && lm->acquire.meth == PyCFunction_GET_FUNCTION(acq) &&
            lm->release.meth == PyCFunction_GET_FUNCTION(rel)) {
            w->lock = Py_NewRef(self);
            w->methods = lm;
        }
    }
    else if (acq != NULL && rel != NULL && PyMethod_Check(acq) && PyMethod_Check(rel) &&
             PyMethod_GET_SELF(acq) == PyMethod_GET_SELF(rel) &&
             PyFunction_Check(PyMethod_GET_FUNCTION(acq)) &&
             PyFunction_Check(PyMethod_GET_FUNCTION(rel))) {
        PyObject *self = PyMethod_GET_SELF(acq);
        const lp_lock_methods *lm = lock_funcs_for(Py_TYPE(self), PyMethod_GET_FUNCTION(acq),
                                                   PyMethod_GET_FUNCTION(rel));
        if (lm != NULL) {
            w->lock = Py_NewRef(self);
            w->methods = lm;
        }
    }
    Py_XDECREF(acq);
    Py_XDECREF(rel);
    PyErr_Clear();
    PyErr_Restore(exc_type, exc_value, exc_tb);
}

void
lp_cond_bind(lp_cond_wrapper *w)
{
    lp_enter();
    cond_bind_locked(w);
    lp_exit();
}

int
lp_cond_traverse(lp_cond_wrapper *self, visitproc visit, void *arg)
{
    Py_VISIT(self->lock);
    return lp_wrapper_traverse(&self->base, visit, arg);
}

int
lp_cond_clear(lp_cond_wrapper *self)
{
    Py_CLEAR(self->lock);
    return lp_wrapper_clear(&self->base);
}

/* ------------------------------------------------------------------------ */
/* making wrappers                                                           */
/* ------------------------------------------------------------------------ */

PyObject *
lp_wrap(PyTypeObject *type, PyObject *inner)
{
    lp_wrapper *w = (lp_wrapper *)type->tp_alloc(type, 0);
    if (w == NULL) {
        Py_DECREF(inner);
        return NULL;
    }
    w->inner = inner;     /* steals the reference */
    w->site = lp_record_site_here();
    return (PyObject *)w;
}

int
lp_runtime_setup(void)
{
    lp_empty_tuple = PyTuple_New(0);
    lp_false_tuple = PyTuple_Pack(1, Py_False);
    lp_str_blocking = PyUnicode_InternFromString("blocking");
    lp_str_block = PyUnicode_InternFromString("block");
    lp_str_timeout = PyUnicode_InternFromString("timeout");
    if (!lp_empty_tuple || !lp_false_tuple || !lp_str_blocking || !lp_str_block
        || !lp_str_timeout) {
        return -1;
    }
    return lp_thread_setup();
}

/* ------------------------------------------------------------------------ */
/* module initialisation                                                     */
/* ------------------------------------------------------------------------ */

/* The wrapper's methods show the wrapped class's docstrings, and a C
 * method's text signature (inspect.signature; Argument Clinic's differ
 * between CPython versions, so they are read here, not generated).  A Python
 * method keeps the text signature the spec gives it.  PyMethodDef docs are
 * read when asked for, so this may run after the wrapper type was made.
 * Best effort: a failure leaves the generated docstring. */
static void
adopt_docs(const lp_typedef *d, PyObject *inner)
{
    PyMethodDef *defs = NULL;
    for (PyType_Slot *sl = d->spec->slots; sl->slot != 0; sl++) {
        if (sl->slot == Py_tp_methods) {
            defs = sl->pfunc;
        }
    }
    for (; defs != NULL && defs->ml_name != NULL; defs++) {
        if (defs->ml_doc == NULL) {
            continue;
        }
        PyObject *attr = PyObject_GetAttrString(inner, defs->ml_name);
        if (attr == NULL) {
            PyErr_Clear();
            continue;
        }
        PyObject *sig = NULL, *doc = NULL, *text = NULL;
        if (PyObject_TypeCheck(attr, &PyMethodDescr_Type)) {
            sig = PyObject_GetAttrString(attr, "__text_signature__");
        }
        else if (PyFunction_Check(attr)) {
            const char *end = strstr(defs->ml_doc, "\n--\n\n");
            sig = end == NULL ? Py_NewRef(Py_None)
                              : PyUnicode_FromStringAndSize(defs->ml_doc, end - defs->ml_doc);
        }
        else {
            Py_DECREF(attr);
            continue;
        }
        doc = sig != NULL ? PyObject_GetAttrString(attr, "__doc__") : NULL;
        if (doc != NULL) {
            const char *body = PyUnicode_Check(doc) ? PyUnicode_AsUTF8(doc) : "";
            if (body == NULL) {
                PyErr_Clear();
                body = "";
            }
            if (PyUnicode_Check(sig) && PyFunction_Check(attr)) {
                text = PyUnicode_FromFormat("%U\n--\n\n%s", sig, body);
            }
            else if (PyUnicode_Check(sig)) {
                text = PyUnicode_FromFormat("%s%U\n--\n\n%s", defs->ml_name, sig, body);
            }
            else {
                text = PyUnicode_FromString(body);
            }
        }
        const char *utf8 = text != NULL ? PyUnicode_AsUTF8(text) : NULL;
        char *copy = utf8 != NULL ? PyMem_RawMalloc(strlen(utf8) + 1) : NULL;
        if (copy != NULL) {
            strcpy(copy, utf8);
            defs->ml_doc = copy;    /* for the life of the process */
        }
        PyErr_Clear();
        Py_XDECREF(text);
        Py_XDECREF(doc);
        Py_XDECREF(sig);
        Py_DECREF(attr);
    }
}

/* A Python class's wrapper type: the class's docstring, and a forwarder
 * for each of its attributes (lp_attrs.c) */
static int
adopt_attrs(const lp_typedef *d)
{
    if (!d->forward_attrs) {
        return 0;
    }
    PyObject *type = (PyObject *)*d->type_slot, *inner = *d->inner_class;
    PyObject *doc = PyObject_GetAttrString(inner, "__doc__");
    if (doc == NULL || PyObject_SetAttrString(type, "__doc__", doc) < 0) {
        Py_XDECREF(doc);
        return -1;
    }
    Py_DECREF(doc);
    return lp_attrs_install((PyTypeObject *)type, (PyTypeObject *)inner);
}

/* per kind, the class of d->wait_yield once resolved (strong, never
 * released; written once before the entry's inner class is published) */
#define LP_WAIT_YIELD_KINDS 64
static PyObject *wait_yield_classes[LP_WAIT_YIELD_KINDS];

PyObject *
lp_wait_yield_class(int kind)
{
    return (kind >= 0 && kind < LP_WAIT_YIELD_KINDS) ? LP_LOAD_ACQ(wait_yield_classes[kind]) : NULL;
}

static int
resolve_wait_yield(const lp_typedef *d)
{
    if (d->wait_yield == NULL || d->kind < 0 || d->kind >= LP_WAIT_YIELD_KINDS
        || wait_yield_classes[d->kind] != NULL) {
        return 0;
    }
    /* in a module the library imported before it made its lock classes */
    PyObject *cls = lp_lookup_dotted(d->wait_yield, 0);
    if (cls == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_Format(PyExc_ImportError, "lockprof: %s is not imported", d->wait_yield);
        }
        return -1;
    }
    if (!PyType_Check(cls)) {
        PyErr_Format(PyExc_TypeError, "lockprof: %s is not a class", d->wait_yield);
        Py_DECREF(cls);
        return -1;
    }
#ifdef Py_GIL_DISABLED
    __atomic_store_n(&wait_yield_classes[d->kind], cls, __ATOMIC_RELEASE);
#else
    wait_yield_classes[d->kind] = cls;
#endif
    return 0;
}

static int
resolve_def_locked(const lp_typedef *d)
{
    if (*d->inner_class != NULL) {
        return 1;
    }
    PyObject *inner = lp_lookup_dotted(d->inner_type, !d->lazy);
    if (inner == NULL) {
        return PyErr_Occurred() ? -1 : 0;
    }
    if (!PyType_Check(inner)) {
        PyErr_Format(PyExc_TypeError, "lockprof: %s is not a class", d->inner_type);
        Py_DECREF(inner);
        return -1;
    }
    if (d->init_methods(inner) < 0 || resolve_wait_yield(d) < 0) {
        Py_DECREF(inner);
        return -1;
    }
    adopt_docs(d, inner);
    /* published last: a reader that sees it sees its methods resolved */
#ifdef Py_GIL_DISABLED
    __atomic_store_n(d->inner_class, inner, __ATOMIC_RELEASE);
#else
    *d->inner_class = inner;
#endif
    if (*d->type_slot != NULL && adopt_attrs(d) < 0) {
        return -1;
    }
    return 1;
}

int
lp_resolve_def(const lp_typedef *d)
{
    if (LP_LIKELY(LP_LOAD_ACQ(*d->inner_class) != NULL)) {
        return 1;
    }
    lp_enter();
    int r = resolve_def_locked(d);
    lp_exit();
    return r;
}

int
lp_require_def(const lp_typedef *d, PyObject *exc_type)
{
    int r = lp_resolve_def(d);
    if (r == 0) {
        PyErr_Format(exc_type, "%s is not imported", d->inner_type);
    }
    return r > 0 ? 0 : -1;
}

/* the wrapper types of the spec's entries, made from their PyType_Specs,
 * and the module's TYPES table; the kinds' names go to the records */
int
lp_types_init(PyObject *module, const lp_typedef *defs, int ndefs)
{
    PyObject *kinds = PyTuple_New(ndefs);
    PyObject *table = PyList_New(0);
    if (kinds == NULL || table == NULL) {
        Py_XDECREF(kinds);
        Py_XDECREF(table);
        return -1;
    }
    for (int i = 0; i < ndefs; i++) {
        const lp_typedef *d = &defs[i];
        if (i < 64) {
            lp_record_set_async(i, d->is_async);
        }
        /* entries marked lazy (asyncio, gevent) are looked up when first
         * needed, so that importing lockprof imports neither */
        if (!d->lazy && lp_resolve_def(d) < 0) {
            goto error;
        }
        PyObject *type = PyType_FromSpec(d->spec);
        if (type == NULL) {
            goto error;
        }
        *d->type_slot = (PyTypeObject *)type;
        PyObject *tmod = PyUnicode_FromString(d->type_module);
        if (tmod == NULL || PyObject_SetAttrString(type, "__module__", tmod) < 0) {
            Py_XDECREF(tmod);
            goto error;
        }
        Py_DECREF(tmod);
        if (*d->inner_class != NULL && adopt_attrs(d) < 0) {
            goto error;
        }
        if (d->type_name != NULL) {
            PyObject *short_name = PyUnicode_FromString(d->type_name);
            if (short_name == NULL || PyObject_SetAttrString(type, "__name__", short_name) < 0) {
                Py_XDECREF(short_name);
                goto error;
            }
            Py_DECREF(short_name);
        }
        PyTuple_SET_ITEM(kinds, i, PyUnicode_FromString(d->key));
        PyObject *row = Py_BuildValue("(szzOzii)", d->key, d->factory_module, d->factory_name,
                                      type, d->inner_type, d->is_async, d->is_condition);
        if (row == NULL || PyList_Append(table, row) < 0) {
            Py_XDECREF(row);
            goto error;
        }
        Py_DECREF(row);
    }
    if (lp_record_set_kinds(kinds) < 0) {
        goto error;
    }
    if (PyModule_AddObject(module, "TYPES", table) < 0) {
        goto error;
    }
    table = NULL;
    Py_DECREF(kinds);
    return 0;
error:
    Py_XDECREF(kinds);
    Py_XDECREF(table);
    return -1;
}
