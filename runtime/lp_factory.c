/* lockprof runtime: the factory objects that replace threading.Lock & co.
 *
 * A factory is what `threading.Lock` names while profiling runs.  Calling it
 * makes the stdlib object and wraps it; everything else a program may do
 * with the name (isinstance, subclassing, `X | None`, attributes such as
 * __name__) is answered by the original object, so the program cannot tell
 * the difference.
 *
 * Owns: the factory objects, the class hooks, the include/exclude filters
 * and their per-module decisions, the count of foreign locks.
 * Guarded by: the tables' mutex (lp_tables_mutex, lp_thread.c) on a free-
 * threaded build, the GIL otherwise: a factory call takes it to decide and
 * to wrap, not around the making of the stdlib's own object. */
#include "lp_record.h"

typedef struct {
    PyObject_HEAD
    PyObject *orig;             /* the stdlib's factory or class */
    PyTypeObject *wtype;        /* the generated wrapper type */
    PyObject *inner_class;      /* the class the wrapper's methods are made for */
    const lp_typedef *def;      /* its spec entry */
    vectorcallfunc vectorcall;
    PyObject *weakreflist;
} lp_factory;

static PyTypeObject *factory_type = NULL;
static PyTypeObject **wrapper_types = NULL;
static int n_wrapper_types = 0;
static const lp_typedef *type_defs = NULL;
static int n_type_defs = 0;

/* Which code gets profiled locks: the module whose code calls the factory
 * (its globals' __name__) is matched against prefixes, "a.b" matching "a.b"
 * and "a.b.*".  Excluded modules (the stdlib's own synchronization code,
 * lockprof, and the user's --exclude-module) get native locks; when include
 * prefixes are set, only the modules they match get profiled ones.  The
 * decision is cached by module name. */
static PyObject *exclude_prefixes = NULL;   /* tuple of str */
static PyObject *include_prefixes = NULL;   /* tuple of str, empty: all */
static PyObject *decisions = NULL;          /* {module name: bool profiled} */
static PyObject *str_name = NULL;           /* "__name__" */

static int
is_wrapper(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    for (int i = 0; i < n_wrapper_types; i++) {
        if (t == wrapper_types[i]) {
            return 1;
        }
    }
    return 0;
}

/* the kind (LP_KIND_*) of a wrapper of ours, or -1 for any other object */
static int
wrapper_kind(PyObject *o)
{
    PyTypeObject *t = Py_TYPE(o);
    for (int i = 0; i < n_wrapper_types; i++) {
        if (t == wrapper_types[i]) {
            return type_defs[i].kind;
        }
    }
    return -1;
}

static int
prefix_match(PyObject *name, PyObject *prefixes)
{
    Py_ssize_t n = PyTuple_GET_SIZE(prefixes), len = PyUnicode_GET_LENGTH(name);
    for (Py_ssize_t i = 0; i < n; i++) {
        PyObject *p = PyTuple_GET_ITEM(prefixes, i);
        Py_ssize_t plen = PyUnicode_GET_LENGTH(p);
        if (plen > len || PyUnicode_Tailmatch(name, p, 0, plen, -1) != 1) {
            continue;
        }
        if (plen == len || PyUnicode_READ_CHAR(name, plen) == '.') {
            return 1;
        }
    }
    return 0;
}

static int
module_excluded(PyObject *g)
{
    PyObject *name = PyDict_GetItemWithError(g, str_name);   /* borrowed */
    if (name == NULL || !PyUnicode_Check(name)) {
        if (PyErr_Occurred()) {
            PyErr_Clear();
            lp_count_error();
        }
        return PyTuple_GET_SIZE(include_prefixes) > 0;
    }
    PyObject *known = PyDict_GetItemWithError(decisions, name);
    if (known != NULL) {
        return known == Py_False;
    }
    if (PyErr_Occurred()) {
        PyErr_Clear();
        lp_count_error();
        return 1;
    }
    int profiled = !prefix_match(name, exclude_prefixes)
                   && (PyTuple_GET_SIZE(include_prefixes) == 0
                       || prefix_match(name, include_prefixes));
    if (PyDict_SetItem(decisions, name, profiled ? Py_True : Py_False) < 0) {
        PyErr_Clear();
        lp_count_error();
    }
    return !profiled;
}

static int
caller_excluded(void)
{
    /* the module of the frame making the lock, past a library's functions
     * that only pass the call on (multiprocessing's context methods) */
    PyObject *g = lp_creation_globals();
    if (g == NULL || decisions == NULL || !PyDict_Check(g)) {
        Py_XDECREF(g);
        return 0;
    }
    int r = module_excluded(g);
    Py_DECREF(g);
    return r;
}

/* the entry made_by `base` whose class is `cls`, or NULL */
static const lp_typedef *
made_by_entry(const lp_typedef *base, PyTypeObject *cls)
{
    const char *key = base->key;
    for (int i = 0; i < n_type_defs; i++) {
        const lp_typedef *d = &type_defs[i];
        if (d->made_by == NULL || strcmp(d->made_by, key) != 0) {
            continue;
        }
        int r = lp_resolve_def(d);
        if (r < 0) {
            PyErr_Clear();
            lp_count_error();
            continue;
        }
        if (r > 0 && *d->inner_class == (PyObject *)cls) {
            return d;
        }
    }
    return NULL;
}

/* The lock the program gets from `inner`, the stdlib object made by a call
 * profiled under entry `d`: its wrapper, or `inner` itself when it is of a
 * class no entry wraps or wrapping failed.  Steals `inner`. */
static PyObject *
wrap_made(const lp_typedef *d, PyObject *inner, PyObject *const *args, size_t nargsf,
          PyObject *kwnames)
{
    if (LP_UNLIKELY((PyObject *)Py_TYPE(inner) != *d->inner_class)) {
        /* Not the class our methods call into: gevent's lock after
         * monkey-patching, threading's Python RLock once _CRLock is None.
         * An entry made_by this one may be built for it (the model makes it
         * agree on async and condition); anything else (a subclass, another
         * library's lock) is left as it is and counted (told once as a
         * warning). */
        d = made_by_entry(d, Py_TYPE(inner));
        if (d == NULL) {
            lp_foreign_locks++;
            return inner;
        }
    }
    PyObject *w = lp_fault() ? (PyErr_NoMemory(), NULL) : lp_wrap(*d->type_slot, Py_NewRef(inner));
    if (w == NULL) {
        /* the program gets the stdlib's own object, unprofiled */
        PyErr_Clear();
        lp_count_error();
        return inner;
    }
    Py_DECREF(inner);
    if (d->is_condition) {
        /* Condition(lock): when the lock is ours, it does the recording */
        Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
        PyObject *lock = nargs >= 1 ? args[0] : NULL;
        if (lock == NULL && kwnames != NULL && PyTuple_GET_SIZE(kwnames) == 1) {
            lock = args[nargs];
        }
        if (lock != NULL && is_wrapper(lock)) {
            LP_WF_SET(((lp_wrapper *)w), LP_W_DELEGATED);
        }
    }
    if (d->binds_lock) {
        /* the acquire/release the object bound in __init__, called directly
         * when they are C methods: a Condition's lock's (the stdlib's own,
         * or our wrapper's when delegated: queue.Queue's Conditions over its
         * wrapped mutex), a multiprocessing lock's SemLock's */
        lp_cond_bind((lp_cond_wrapper *)w);
    }
    return w;
}

static PyObject *
factory_vectorcall(PyObject *self, PyObject *const *args, size_t nargsf,
                   PyObject *kwnames)
{
    lp_factory *f = (lp_factory *)self;
    if (!LP_LOAD(lp_active)) {
        return PyObject_Vectorcall(f->orig, args, nargsf, kwnames);
    }
    lp_enter();
    int excluded = caller_excluded();
    lp_exit();
    if (excluded) {
        return PyObject_Vectorcall(f->orig, args, nargsf, kwnames);
    }
    PyObject *inner = PyObject_Vectorcall(f->orig, args, nargsf, kwnames);
    if (inner == NULL) {
        return NULL;
    }
    lp_enter();
    PyObject *r = wrap_made(f->def, inner, args, nargsf, kwnames);
    lp_exit();
    return r;
}

/* ------------------------------------------------------------------------ */
/* Python classes, profiled in place                                         */
/* ------------------------------------------------------------------------ */

/* A lock class written in Python (threading.Semaphore, Condition, the asyncio
 * locks) stays the very object its module names while profiling runs: its
 * type object's own vectorcall (PyTypeObject.tp_vectorcall, used for calls
 * of the class and never inherited) makes the instance as type.__call__
 * does and wraps it.  Subclasses, isinstance, pickling, type() with three
 * arguments, inspect.signature and every attribute are the class's own.
 *
 * On CPython 3.13+, a `__new__` that behaves as object.__new__ is also set
 * in the class's dict while the hook is in: 3.13 specialises a call of a
 * class whose __new__ is object's into an inline allocation and __init__
 * call that never reads tp_vectorcall (3.9-3.12 do not, and 3.9's
 * inspect.signature would not see __init__ past a __new__ in the dict).
 * Both are taken out at stop(). */
typedef struct {
    PyTypeObject *cls;          /* strong */
    const lp_typedef *def;
    vectorcallfunc saved;       /* its tp_vectorcall before (NULL) */
} lp_class_hook;

#define LP_MAX_CLASS_HOOKS 32
static lp_class_hook class_hooks[LP_MAX_CLASS_HOOKS];
static int n_class_hooks = 0;
static PyObject *class_new_func = NULL;   /* the builtin our __new__ is */
static PyObject *class_new_static = NULL; /* staticmethod(class_new_func) */
static PyObject *object_new = NULL;       /* object.__new__ */
static PyObject *str_new = NULL;          /* "__new__" */
static newfunc slot_new = NULL;           /* tp_new of a class with a __new__ */

/* type.__call__(cls, *args, **kwargs), exactly */
static PyObject *
type_call(PyObject *cls, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    Py_ssize_t nargs = PyVectorcall_NARGS(nargsf);
    PyObject *tuple = PyTuple_New(nargs);
    if (tuple == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < nargs; i++) {
        PyTuple_SET_ITEM(tuple, i, Py_NewRef(args[i]));
    }
    PyObject *kwargs = NULL;
    if (kwnames != NULL && PyTuple_GET_SIZE(kwnames) > 0) {
        kwargs = PyDict_New();
        if (kwargs == NULL) {
            Py_DECREF(tuple);
            return NULL;
        }
        for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(kwnames); i++) {
            if (PyDict_SetItem(kwargs, PyTuple_GET_ITEM(kwnames, i), args[nargs + i]) < 0) {
                Py_DECREF(tuple);
                Py_DECREF(kwargs);
                return NULL;
            }
        }
    }
    PyObject *r = PyType_Type.tp_call(cls, tuple, kwargs);
    Py_DECREF(tuple);
    Py_XDECREF(kwargs);
    return r;
}

/* `args` with each of our wrappers replaced by the object it wraps, in
 * `buf` (n strong references, released by the caller), or NULL with
 * nothing held when none is a wrapper */
static PyObject **
unwrap_args(PyObject *const *args, Py_ssize_t n, PyObject **buf)
{
    Py_ssize_t i;
    for (i = 0; i < n && !is_wrapper(args[i]); i++) {
    }
    if (i == n) {
        return NULL;
    }
    for (i = 0; i < n; i++) {
        buf[i] = Py_NewRef(is_wrapper(args[i]) ? ((lp_wrapper *)args[i])->inner : args[i]);
    }
    return buf;
}

#define LP_UNWRAP_MAX 8   /* arguments beyond it are passed as they are */

static PyObject *
class_vectorcall(PyObject *cls, PyObject *const *args, size_t nargsf, PyObject *kwnames)
{
    const lp_typedef *d = NULL;
    lp_enter();
    for (int i = 0; i < n_class_hooks; i++) {
        if ((PyObject *)class_hooks[i].cls == cls) {
            d = class_hooks[i].def;
            break;
        }
    }
    int excluded = d == NULL || !LP_LOAD(lp_active) || caller_excluded();
    lp_exit();
    /* a class that refuses our wrappers (trio.Condition(lock)) gets the
     * objects they wrap, whether or not profiling is on now */
    PyObject *buf[LP_UNWRAP_MAX];
    Py_ssize_t n = PyVectorcall_NARGS(nargsf) + (kwnames ? PyTuple_GET_SIZE(kwnames) : 0);
    PyObject **plain = (d != NULL && d->unwrap_args && n <= LP_UNWRAP_MAX)
                       ? unwrap_args(args, n, buf) : NULL;
    PyObject *const *call_args = plain ? (PyObject *const *)plain : args;
    PyObject *r = type_call(cls, call_args, nargsf, kwnames);
    if (r != NULL && !excluded) {
        lp_enter();
        r = wrap_made(d, r, call_args, nargsf, kwnames);
        lp_exit();
    }
    for (Py_ssize_t i = 0; plain != NULL && i < n; i++) {
        Py_DECREF(plain[i]);
    }
    return r;
}

/* the class's __new__ while hooked: object.__new__, as the class has it
 * natively (arguments beyond the class go to __init__ when no class of the
 * MRO has a __new__ of its own, as object.__new__ lets them) */
static PyObject *
class_new(PyObject *unused, PyObject *const *args, Py_ssize_t nargs, PyObject *kwnames)
{
    if (nargs >= 1 && (nargs > 1 || kwnames != NULL) && PyType_Check(args[0])) {
        PyObject *found = PyObject_GetAttr(args[0], str_new);
        if (found == NULL) {
            return NULL;
        }
        int ours = found == class_new_func;
        Py_DECREF(found);
        if (ours) {
            return PyObject_Vectorcall(object_new, args, 1, NULL);
        }
    }
    return PyObject_Vectorcall(object_new, args, (size_t)nargs, kwnames);
}

static PyMethodDef class_new_def = {
    "__new__", (PyCFunction)(void (*)(void))class_new, METH_FASTCALL | METH_KEYWORDS,
    "Create and return a new object.  See help(type) for accurate signature."};

/* whether `orig` can be profiled in place: a mutable class written in
 * Python, the very class entry `d` wraps */
static int
class_hookable(const lp_typedef *d, PyObject *orig)
{
    if (!PyType_Check(orig) || orig != *d->inner_class) {
        return 0;
    }
    unsigned long fl = PyType_GetFlags((PyTypeObject *)orig);
#ifdef Py_TPFLAGS_IMMUTABLETYPE
    if (fl & Py_TPFLAGS_IMMUTABLETYPE) {
        return 0;
    }
#endif
    if (!(fl & Py_TPFLAGS_HEAPTYPE)) {
        return 0;
    }
    /* hooked already, or with no vectorcall of its own and object's __new__
     * (or ours, inherited from a hooked base: BoundedSemaphore's) */
    PyTypeObject *t = (PyTypeObject *)orig;
    if (t->tp_vectorcall == class_vectorcall) {
        return 1;
    }
    if (t->tp_vectorcall != NULL) {
        return 0;
    }
    if (t->tp_new == PyBaseObject_Type.tp_new) {
        return 1;
    }
    /* a __new__ of the class's own, written in Python (anyio's backend
     * classes): calls of the class are never specialised past tp_vectorcall */
    PyObject *own = PyDict_GetItemWithError(t->tp_dict, str_new);   /* borrowed */
    if (own == NULL && PyErr_Occurred()) {
        PyErr_Clear();
        return 0;
    }
    if (own != NULL && own != class_new_static && Py_IS_TYPE(own, &PyStaticMethod_Type)) {
        return 1;
    }
    if (slot_new == NULL || t->tp_new != slot_new) {
        return 0;
    }
    PyObject *found = PyObject_GetAttr(orig, str_new);
    if (found == NULL) {
        PyErr_Clear();
        return 0;
    }
    Py_DECREF(found);
    return found == class_new_func;
}

static int
class_hook(const lp_typedef *d, PyTypeObject *cls)
{
    int i;
    for (i = 0; i < n_class_hooks; i++) {
        if (class_hooks[i].cls == cls) {
            break;
        }
    }
    if (i == n_class_hooks) {
        if (n_class_hooks == LP_MAX_CLASS_HOOKS) {
            PyErr_SetString(PyExc_RuntimeError, "too many lock classes hooked");
            return -1;
        }
        class_hooks[i].cls = (PyTypeObject *)Py_NewRef(cls);
        class_hooks[i].def = d;
        class_hooks[i].saved = cls->tp_vectorcall;
        n_class_hooks++;
    }
    if (cls->tp_vectorcall != class_vectorcall) {
#if PY_VERSION_HEX >= 0x030D0000
        PyObject *own = PyDict_GetItemWithError(cls->tp_dict, str_new);   /* borrowed */
        if (own == NULL && PyErr_Occurred()) {
            return -1;
        }
        if (own == NULL) {
            if (PyObject_SetAttr((PyObject *)cls, str_new, class_new_static) < 0) {
                return -1;
            }
            slot_new = cls->tp_new;   /* CPython's slot that calls __new__ */
        }
#endif
        cls->tp_vectorcall = class_vectorcall;
    }
    return 0;
}

/* Deleting the __new__ leaves a class's tp_new (and its subclasses') on the
 * slot that looks __new__ up, which then finds object.__new__ and refuses
 * the arguments __init__ takes: CPython keeps a slot it cannot tell apart.
 * Each class whose __new__ is object's again gets object's tp_new back, as
 * creating it natively would have given it. */
static void
restore_object_new(PyTypeObject *t, int depth)
{
    if (slot_new == NULL || depth > 64) {
        return;
    }
    if (t->tp_new == slot_new) {
        PyObject *found = PyObject_GetAttr((PyObject *)t, str_new);
        if (found == object_new) {
            t->tp_new = PyBaseObject_Type.tp_new;
            PyType_Modified(t);
        }
        else if (found == NULL) {
            PyErr_Clear();
        }
        Py_XDECREF(found);
    }
    PyObject *subs = PyObject_CallMethod((PyObject *)t, "__subclasses__", NULL);
    if (subs == NULL || !PyList_Check(subs)) {
        PyErr_Clear();
        Py_XDECREF(subs);
        return;
    }
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(subs); i++) {
        restore_object_new((PyTypeObject *)PyList_GET_ITEM(subs, i), depth + 1);
    }
    Py_DECREF(subs);
}

/* every class hooked, back as it was */
static PyObject *
lp_py_unhook_classes(PyObject *mod, PyObject *unused)
{
    int failed = 0;
    for (int i = 0; i < n_class_hooks; i++) {
        PyTypeObject *cls = class_hooks[i].cls;
        cls->tp_vectorcall = class_hooks[i].saved;
        PyObject *own = PyDict_GetItemWithError(cls->tp_dict, str_new);   /* borrowed */
        if (own == class_new_static && PyObject_DelAttr((PyObject *)cls, str_new) < 0) {
            PyErr_Clear();
            failed = 1;
        }
        else if (own == NULL && PyErr_Occurred()) {
            PyErr_Clear();
            failed = 1;
        }
        restore_object_new(cls, 0);
        Py_DECREF(cls);
    }
    n_class_hooks = 0;
    if (failed) {
        lp_count_error();
    }
    Py_RETURN_NONE;
}

static int
factory_traverse(lp_factory *self, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(self));
    Py_VISIT(self->orig);
    Py_VISIT(self->wtype);
    Py_VISIT(self->inner_class);
    return 0;
}

static int
factory_clear(lp_factory *self)
{
    Py_CLEAR(self->orig);
    Py_CLEAR(self->wtype);
    Py_CLEAR(self->inner_class);
    return 0;
}

static void
factory_dealloc(lp_factory *self)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject_GC_UnTrack(self);
    if (self->weakreflist != NULL) {
        PyObject_ClearWeakRefs((PyObject *)self);
    }
    factory_clear(self);
    tp->tp_free((PyObject *)self);
    Py_DECREF(tp);
}

static PyObject *
factory_repr(lp_factory *self)
{
    return PyObject_Repr(self->orig);
}

/* names answered by the factory itself; every other attribute comes from the
 * original, __class__, __name__, __doc__ and __module__ included */
static PyObject *own_names = NULL;

static PyObject *
factory_getattro(PyObject *self, PyObject *name)
{
    int own = PySet_Contains(own_names, name);
    if (own < 0) {
        return NULL;
    }
    if (own) {
        return PyObject_GenericGetAttr(self, name);
    }
    return PyObject_GetAttr(((lp_factory *)self)->orig, name);
}

static PyObject *
factory_mro_entries(lp_factory *self, PyObject *bases)
{
    /* `class MyLock(threading.Semaphore)` subclasses the stdlib's class */
    return PyTuple_Pack(1, self->orig);
}

static PyObject *
factory_instancecheck(lp_factory *self, PyObject *inst)
{
    int r = PyObject_IsInstance(inst, self->orig);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
factory_subclasscheck(lp_factory *self, PyObject *cls)
{
    int r = PyObject_IsSubclass(cls, self->orig);
    if (r < 0) {
        return NULL;
    }
    return PyBool_FromLong(r);
}

static PyObject *
factory_reduce(lp_factory *self, PyObject *unused)
{
    /* Pickled by reference to the name it is installed under, resolved when
     * unpickled: pkgutil.resolve_name("threading:Lock") gives the factory in
     * a profiled process and the stdlib's own object in any other (the
     * stream names only pkgutil, never lockprof).  A factory whose entry has
     * no name of its own stands for its original. */
    const lp_typedef *d = self->def;
    if (d == NULL || d->factory_module == NULL || d->factory_name == NULL) {
        return PyObject_GetAttrString(self->orig, "__qualname__");
    }
    PyObject *pkgutil = PyImport_ImportModule("pkgutil");
    PyObject *resolve = pkgutil ? PyObject_GetAttrString(pkgutil, "resolve_name") : NULL;
    Py_XDECREF(pkgutil);
    if (resolve == NULL) {
        return NULL;
    }
    return Py_BuildValue("(N(N))", resolve,
                         PyUnicode_FromFormat("%s:%s", d->factory_module, d->factory_name));
}

static PyObject *
factory_copy(lp_factory *self, PyObject *unused)
{
    /* copy.copy/deepcopy of a class or function is the object itself */
    return Py_NewRef(self);
}

static PyObject *
unwrap_factory(PyObject *o)
{
    if (Py_TYPE(o) == factory_type) {
        return ((lp_factory *)o)->orig;
    }
    return o;
}

static PyObject *
factory_or(PyObject *a, PyObject *b)
{
    return PyNumber_Or(unwrap_factory(a), unwrap_factory(b));
}

static PyObject *
factory_descr_get(PyObject *self, PyObject *obj, PyObject *type)
{
    /* Stored as a class attribute, the name behaves as the original does:
     * classes and builtins do not bind, Python functions (threading.RLock)
     * do, to the original. */
    PyObject *orig = ((lp_factory *)self)->orig;
    descrgetfunc get = Py_TYPE(orig)->tp_descr_get;
    if (get == NULL || obj == NULL || obj == Py_None) {
        return Py_NewRef(self);
    }
    return get(orig, obj, type);
}

static PyMethodDef factory_methods[] = {
    {"__mro_entries__", (PyCFunction)factory_mro_entries, METH_O, NULL},
    {"__instancecheck__", (PyCFunction)factory_instancecheck, METH_O, NULL},
    {"__subclasscheck__", (PyCFunction)factory_subclasscheck, METH_O, NULL},
    {"__reduce__", (PyCFunction)factory_reduce, METH_NOARGS, NULL},
    {"__copy__", (PyCFunction)factory_copy, METH_NOARGS, NULL},
    {"__deepcopy__", (PyCFunction)factory_copy, METH_O, NULL},
    {NULL, NULL, 0, NULL},
};

static PyMemberDef factory_members[] = {
    {"__vectorcalloffset__", T_PYSSIZET, offsetof(lp_factory, vectorcall), READONLY, NULL},
    {"__weaklistoffset__", T_PYSSIZET, offsetof(lp_factory, weakreflist), READONLY, NULL},
    {"__lockprof_original__", T_OBJECT, offsetof(lp_factory, orig), READONLY, NULL},
    {"__lockprof_wrapper_type__", T_OBJECT, offsetof(lp_factory, wtype), READONLY, NULL},
    {NULL, 0, 0, 0, NULL},
};

/* inspect.signature(threading.Semaphore) is the original's: (value=1) */
static PyObject *
factory_signature(lp_factory *self, void *closure)
{
    PyObject *inspect = PyImport_ImportModule("inspect");
    PyObject *sig = inspect ? PyObject_CallMethod(inspect, "signature", "O", self->orig) : NULL;
    Py_XDECREF(inspect);
    if (sig == NULL && PyErr_ExceptionMatches(PyExc_ValueError)) {
        /* the original has none either: let inspect say so itself */
        PyErr_Clear();
        Py_RETURN_NONE;
    }
    return sig;
}

static PyGetSetDef factory_getset[] = {
    {"__signature__", (getter)factory_signature, NULL, NULL, NULL},
    {NULL, NULL, NULL, NULL, NULL},
};

static PyType_Slot factory_slots[] = {
    {Py_tp_getset, factory_getset},
    {Py_tp_dealloc, factory_dealloc},
    {Py_tp_traverse, factory_traverse},
    {Py_tp_clear, factory_clear},
    {Py_tp_repr, factory_repr},
    {Py_tp_getattro, factory_getattro},
    {Py_tp_call, PyVectorcall_Call},
    {Py_tp_methods, factory_methods},
    {Py_tp_members, factory_members},
    {Py_tp_descr_get, factory_descr_get},
    {Py_nb_or, factory_or},
    {0, NULL},
};

static PyType_Spec factory_spec = {
    .name = "lockprof._lockprof.Factory",
    .basicsize = sizeof(lp_factory),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC | Py_TPFLAGS_HAVE_VECTORCALL,
    .slots = factory_slots,
};

/* ------------------------------------------------------------------------ */
/* module functions                                                          */
/* ------------------------------------------------------------------------ */

/* the spec entry of `key`, or NULL with a KeyError */
static const lp_typedef *
def_by_key(const char *key)
{
    for (int i = 0; i < n_type_defs; i++) {
        if (strcmp(type_defs[i].key, key) == 0) {
            return &type_defs[i];
        }
    }
    PyErr_Format(PyExc_KeyError, "no lockprof wrapper type for '%s'", key);
    return NULL;
}

static PyObject *
lp_py_make_factory(PyObject *mod, PyObject *args)
{
    const char *key;
    PyObject *orig;
    if (!PyArg_ParseTuple(args, "sO:make_factory", &key, &orig)) {
        return NULL;
    }
    const lp_typedef *d = def_by_key(key);
    if (d == NULL || lp_require_def(d, PyExc_LookupError) < 0) {
        return NULL;
    }
    if (class_hookable(d, orig)) {
        /* a Python class: profiled in place, and its own name stays */
        if (class_hook(d, (PyTypeObject *)orig) < 0) {
            return NULL;
        }
        return Py_NewRef(orig);
    }
    lp_factory *f = PyObject_GC_New(lp_factory, factory_type);
    if (f == NULL) {
        return NULL;
    }
    f->orig = Py_NewRef(orig);
    f->wtype = (PyTypeObject *)Py_NewRef(*d->type_slot);
    f->inner_class = Py_NewRef(*d->inner_class);
    f->def = d;
    f->vectorcall = factory_vectorcall;
    f->weakreflist = NULL;
    PyObject_GC_Track(f);
    return (PyObject *)f;
}

static PyObject *
str_tuple(PyObject *seq, const char *what)
{
    PyObject *t = PySequence_Tuple(seq);
    if (t == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(t); i++) {
        if (!PyUnicode_Check(PyTuple_GET_ITEM(t, i))) {
            PyErr_Format(PyExc_TypeError, "%s: module names must be str, got %R", what,
                         PyTuple_GET_ITEM(t, i));
            Py_DECREF(t);
            return NULL;
        }
    }
    return t;
}

static PyObject *
lp_py_set_filters(PyObject *mod, PyObject *args)
{
    PyObject *exc, *inc;
    if (!PyArg_ParseTuple(args, "OO:set_filters", &exc, &inc)) {
        return NULL;
    }
    PyObject *e = str_tuple(exc, "exclude");
    if (e == NULL) {
        return NULL;
    }
    PyObject *i = str_tuple(inc, "include");
    if (i == NULL) {
        Py_DECREF(e);
        return NULL;
    }
    PyObject *d = PyDict_New();
    if (d == NULL) {
        Py_DECREF(e);
        Py_DECREF(i);
        return NULL;
    }
    LP_XSETREF(exclude_prefixes, e);
    LP_XSETREF(include_prefixes, i);
    LP_XSETREF(decisions, d);
    Py_RETURN_NONE;
}

static PyObject *
lp_py_profiles_module(PyObject *mod, PyObject *name)
{
    if (!PyUnicode_Check(name)) {
        PyErr_SetString(PyExc_TypeError, "module name must be str");
        return NULL;
    }
    if (exclude_prefixes == NULL) {
        Py_RETURN_TRUE;
    }
    return PyBool_FromLong(!prefix_match(name, exclude_prefixes)
                           && (PyTuple_GET_SIZE(include_prefixes) == 0
                               || prefix_match(name, include_prefixes)));
}

static PyObject *
lp_py_wrap(PyObject *mod, PyObject *args)
{
    /* wrap(key, obj): wrap an existing stdlib object (tests, adoption) */
    const char *key;
    PyObject *obj;
    if (!PyArg_ParseTuple(args, "sO:wrap", &key, &obj)) {
        return NULL;
    }
    const lp_typedef *d = def_by_key(key);
    if (d == NULL || lp_resolve_def(d) < 0) {
        return NULL;
    }
    if ((PyObject *)Py_TYPE(obj) != *d->inner_class) {
        PyErr_Format(PyExc_TypeError, "wrap(%s, ...) needs a %R, got %R", key,
                     *d->inner_class, (PyObject *)Py_TYPE(obj));
        return NULL;
    }
    PyObject *w = lp_wrap(*d->type_slot, Py_NewRef(obj));
    if (w != NULL && d->binds_lock) {
        lp_cond_bind((lp_cond_wrapper *)w);
    }
    return w;
}

static PyObject *
lp_py_resolve(PyObject *mod, PyObject *arg)
{
    /* resolve(key): the class the entry wraps, None while its module is not
     * imported (lazy entries) */
    const char *key = PyUnicode_Check(arg) ? PyUnicode_AsUTF8(arg) : NULL;
    if (key == NULL) {
        if (!PyErr_Occurred()) {
            PyErr_SetString(PyExc_TypeError, "resolve(key): key must be str");
        }
        return NULL;
    }
    const lp_typedef *d = def_by_key(key);
    int r = d == NULL ? -1 : lp_resolve_def(d);
    if (r < 0) {
        return NULL;
    }
    return Py_NewRef(r ? *d->inner_class : Py_None);
}

static PyObject *
lp_py_count_error(PyObject *mod, PyObject *unused)
{
    lp_count_error();
    Py_RETURN_NONE;
}

static PyObject *
lp_py_unwrap(PyObject *mod, PyObject *obj)
{
    if (is_wrapper(obj)) {
        return Py_NewRef(((lp_wrapper *)obj)->inner);
    }
    return Py_NewRef(obj);
}

static PyObject *
lp_py_is_wrapper(PyObject *mod, PyObject *obj)
{
    return PyBool_FromLong(is_wrapper(obj));
}

/* lockprof.order_exempt(lock): False when `lock` is not a lock lockprof
 * profiles */
static PyObject *
lp_py_order_exempt(PyObject *mod, PyObject *lock)
{
    int kind = wrapper_kind(lock);
    return PyBool_FromLong(kind >= 0 && lp_order_exempt((lp_wrapper *)lock, kind));
}

/* adopt(key, obj): obj, an instance of entry `key`'s class made without a
 * call of the class (unpickled), profiled as if the calling frame had made
 * it, when profiling runs; else obj itself */
static PyObject *
lp_py_adopt(PyObject *mod, PyObject *const *args, Py_ssize_t nargs)
{
    if (nargs != 2 || !PyUnicode_Check(args[0])) {
        PyErr_SetString(PyExc_TypeError, "adopt(key, obj)");
        return NULL;
    }
    const char *key = PyUnicode_AsUTF8(args[0]);
    if (key == NULL) {
        return NULL;
    }
    PyObject *obj = args[1];
    if (!LP_LOAD(lp_active) || is_wrapper(obj)) {
        return Py_NewRef(obj);
    }
    const lp_typedef *d = def_by_key(key);
    if (d == NULL) {
        return NULL;
    }
    int r = lp_resolve_def(d);
    if (r < 0) {
        return NULL;
    }
    if (r == 0 || (PyObject *)Py_TYPE(obj) != *d->inner_class) {
        return Py_NewRef(obj);
    }
    lp_enter();
    PyObject *w = caller_excluded() ? Py_NewRef(obj) : wrap_made(d, Py_NewRef(obj), NULL, 0, NULL);
    lp_exit();
    return w;
}

/* find_refs(dicts, targets): (index of the dict, key, value) for every
 * value of the dicts that is one of the targets (by identity): the start-
 * time scan of sys.modules for names bound to the stdlib's factories, one
 * pointer compare per attribute instead of a Python loop */
static PyObject *
lp_py_find_refs(PyObject *mod, PyObject *args)
{
    PyObject *dicts, *targets;
    if (!PyArg_ParseTuple(args, "O!O!:find_refs", &PyList_Type, &dicts, &PyTuple_Type, &targets)) {
        return NULL;
    }
    PyObject *out = PyList_New(0);
    if (out == NULL) {
        return NULL;
    }
    Py_ssize_t nt = PyTuple_GET_SIZE(targets);
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(dicts); i++) {
        PyObject *d = PyList_GET_ITEM(dicts, i);
        if (!PyDict_Check(d)) {
            continue;
        }
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(d, &pos, &key, &value)) {
            for (Py_ssize_t k = 0; k < nt; k++) {
                if (value == PyTuple_GET_ITEM(targets, k)) {
                    PyObject *t = Py_BuildValue("(nOO)", i, key, value);
                    if (t == NULL || PyList_Append(out, t) < 0) {
                        Py_XDECREF(t);
                        Py_DECREF(out);
                        return NULL;
                    }
                    Py_DECREF(t);
                    break;
                }
            }
        }
    }
    return out;
}

static PyMethodDef factory_module_methods[] = {
    {"find_refs", lp_py_find_refs, METH_VARARGS,
     "find_refs(dicts, targets)\n--\n\n[(index, key, value)] of the dicts' values that are targets."},
    {"make_factory", lp_py_make_factory, METH_VARARGS,
     "make_factory(key, original)\n--\n\nWhat the name of `original` holds while profiling runs: "
     "`original` itself, hooked, for a class written in Python; else a factory object."},
    {"unhook_classes", lp_py_unhook_classes, METH_NOARGS,
     "unhook_classes()\n--\n\nPuts every class make_factory hooked back as it was."},
    {"set_filters", lp_py_set_filters, METH_VARARGS,
     "set_filters(exclude, include)\n--\n\nModule-name prefixes whose code gets native locks, "
     "and (when not empty) the only ones whose code gets profiled locks."},
    {"profiles_module", lp_py_profiles_module, METH_O,
     "profiles_module(name)\n--\n\nWhether locks made by code in module `name` are profiled."},
    {"wrap", lp_py_wrap, METH_VARARGS, "wrap(key, obj)\n--\n\nWrap an existing stdlib lock."},
    {"count_error", lp_py_count_error, METH_NOARGS,
     "count_error()\n--\n\nCounts a failure of lockprof's Python side as a profiler error."},
    {"resolve", lp_py_resolve, METH_O,
     "resolve(key)\n--\n\nThe class the entry wraps; None while its module is not imported."},
    {"unwrap", lp_py_unwrap, METH_O, "unwrap(obj)\n--\n\nThe stdlib object inside a wrapper."},
    {"is_wrapper", lp_py_is_wrapper, METH_O, "is_wrapper(obj)\n--\n\nTrue for a lockprof wrapper."},
    {"order_exempt", lp_py_order_exempt, METH_O,
     "order_exempt(lock)\n--\n\n"
     "Take `lock`'s class (every lock made where it was made) out of the lock-order check:\n"
     "for a lock held by a group (a readers-writer lock's resource, taken by the first\n"
     "reader and given back by the last) or used as a signal, where \"held\" means\n"
     "nothing.  lockprof does this by itself for a lock it sees released by another\n"
     "thread or task than the one that took it; this is for the ones it has not seen so\n"
     "yet.  Potential deadlocks through the class are set aside, counted\n"
     "(order_cycles_set_aside) and named under the report.  Returns False, doing\n"
     "nothing, when `lock` is not a lock lockprof profiles."},
    {"adopt", (PyCFunction)(void (*)(void))lp_py_adopt, METH_FASTCALL,
     "adopt(key, obj)\n--\n\nobj (an unpickled instance of entry key's class) profiled as made "
     "by the calling frame, when profiling runs; else obj."},
    {NULL, NULL, 0, NULL},
};

int
lp_factory_setup(PyObject *module, const lp_typedef *defs, int ndefs)
{
    type_defs = defs;
    n_type_defs = ndefs;
    wrapper_types = PyMem_Calloc(ndefs, sizeof(PyTypeObject *));
    if (wrapper_types == NULL) {
        PyErr_NoMemory();
        return -1;
    }
    for (int i = 0; i < ndefs; i++) {
        wrapper_types[i] = *defs[i].type_slot;
    }
    n_wrapper_types = ndefs;
    factory_type = (PyTypeObject *)PyType_FromSpec(&factory_spec);
    if (factory_type == NULL) {
        return -1;
    }
    str_name = PyUnicode_InternFromString("__name__");
    str_new = PyUnicode_InternFromString("__new__");
    if (str_name == NULL || str_new == NULL) {
        return -1;
    }
    object_new = PyObject_GetAttr((PyObject *)&PyBaseObject_Type, str_new);
    class_new_func = PyCFunction_New(&class_new_def, NULL);
    if (object_new == NULL || class_new_func == NULL ||
        (class_new_static = PyStaticMethod_New(class_new_func)) == NULL) {
        return -1;
    }
    own_names = PySet_New(NULL);
    if (own_names == NULL) {
        return -1;
    }
    const char *names[] = {"__mro_entries__", "__instancecheck__", "__subclasscheck__",
                           "__reduce__", "__reduce_ex__", "__lockprof_original__",
                           "__lockprof_wrapper_type__", "__signature__",
                           NULL};
    for (int i = 0; names[i]; i++) {
        PyObject *s = PyUnicode_InternFromString(names[i]);
        if (s == NULL || PySet_Add(own_names, s) < 0) {
            Py_XDECREF(s);
            return -1;
        }
        Py_DECREF(s);
    }
    if (PyModule_AddObject(module, "Factory", Py_NewRef(factory_type)) < 0) {
        return -1;
    }
    return lp_add_functions(module, factory_module_methods);
}
