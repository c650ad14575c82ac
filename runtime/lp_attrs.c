/* lockprof runtime: the attribute model of the wrappers of Python classes.
 *
 * A wrapper type keeps CPython's generic attribute lookup (tp_getattro is
 * PyObject_GenericGetAttr), so that the interpreter's method-call fast path
 * (LOAD_METHOD / LOAD_ATTR_METHOD_*) applies to its recorded C methods on
 * every version; a `__getattr__` hook would disable it before 3.12.
 *
 * Every other attribute of the wrapped class is answered through a forwarder
 * put in the wrapper type's dict under the same name: its __get__ returns the
 * wrapped object's attribute, looked up as natively.  The names are those
 * of the class and its bases (dunders excepted: the wrapper's own slots
 * answer them), every attribute name the code of their functions uses
 * (`self._value`: the instance attributes; reading an instance's __dict__
 * instead would make 3.11/3.12 keep its attributes in a real dict, slowing
 * its own methods), and those a program sets through a wrapper.  A name
 * that is not an attribute gets AttributeError from the wrapped object, as
 * natively.
 *
 * A forwarder for a plain function of the class (Condition.notify,
 * asyncio's locked) skips the lookup: it binds the function it found to the
 * wrapped object, as long as the class is unchanged (its version tag), the
 * name is not also an instance attribute, and nothing was set on this
 * wrapper; otherwise it asks the wrapped object.
 *
 * Owns: the forwarders put in the wrapper types' dicts, and each forwarder's
 * cached function and version tag.
 * Guarded by: a forwarder's cache is refreshed and read under the tables'
 * mutex (lp_tables_mutex, lp_thread.c) on a free-threaded build, the GIL
 * otherwise. */
#include "lp_record.h"

typedef struct {
    PyObject_HEAD
    PyObject *name;             /* interned */
    PyTypeObject *wtype;        /* the wrapper type whose dict holds it (lives
                                   as long as the module) */
    PyTypeObject *owner;        /* the wrapped class (strong) */
    PyObject *func;             /* its function under `name`, valid at `tag` */
    unsigned int tag;
    int shadowed;               /* `name` can be an instance attribute */
} lp_forward;

static PyTypeObject *forward_type = NULL;
static PyObject *str_dict = NULL;   /* "__dict__" */

static int
is_dunder(PyObject *name)
{
    Py_ssize_t n = PyUnicode_GET_LENGTH(name);
    return n >= 4 && PyUnicode_READ_CHAR(name, 0) == '_' && PyUnicode_READ_CHAR(name, 1) == '_'
           && PyUnicode_READ_CHAR(name, n - 1) == '_' && PyUnicode_READ_CHAR(name, n - 2) == '_';
}

/* re-reads the function behind a forwarder when its class changed */
static void
forward_refresh(lp_forward *f)
{
    Py_CLEAR(f->func);
    f->tag = 0;
    /* looked up through the type (which gives it a version tag), and taken
     * only when that is the plain function its MRO holds */
    PyObject *v = PyObject_GetAttr((PyObject *)f->owner, f->name);
    if (v == NULL) {
        PyErr_Clear();
        return;
    }
    PyObject *raw = lp_raw_class_attr(f->owner, f->name);
    PyErr_Clear();
    if (raw == v && PyFunction_Check(v) && lp_tag_current(f->owner, f->owner->tp_version_tag)) {
        f->func = Py_NewRef(v);
        f->tag = f->owner->tp_version_tag;
    }
    Py_DECREF(v);
}

static PyObject *
forward_get(lp_forward *f, PyObject *obj, PyObject *type)
{
    if (obj == NULL || obj == Py_None) {
        /* on the wrapper type: the wrapped class's attribute */
        return PyObject_GetAttr((PyObject *)f->owner, f->name);
    }
    if (Py_TYPE(obj) != f->wtype) {
        /* __get__ called by hand on something else */
        PyErr_Format(PyExc_TypeError, "descriptor '%U' for '%s' objects doesn't apply to a '%s' "
                     "object", f->name, f->owner->tp_name, Py_TYPE(obj)->tp_name);
        return NULL;
    }
    lp_wrapper *w = (lp_wrapper *)obj;
    PyObject *inner = w->inner;
    if (!f->shadowed && !(LP_WF(w) & LP_W_ATTRS_SET) && Py_TYPE(inner) == f->owner) {
#ifdef Py_GIL_DISABLED
        /* the cached function is refreshed and read under the tables'
         * mutex: another thread may refresh it */
        lp_enter();
        if (!lp_tag_current(f->owner, f->tag)) {
            forward_refresh(f);
        }
        PyObject *fn = Py_XNewRef(f->func);
        lp_exit();
        if (fn != NULL) {
            PyObject *m = PyMethod_New(fn, inner);
            Py_DECREF(fn);
            return m;
        }
#else
        if (!lp_tag_current(f->owner, f->tag)) {
            forward_refresh(f);
        }
        if (f->func != NULL) {
            return PyMethod_New(f->func, inner);
        }
#endif
    }
    return PyObject_GetAttr(inner, f->name);
}

static int
forward_traverse(lp_forward *f, visitproc visit, void *arg)
{
    Py_VISIT(Py_TYPE(f));
    Py_VISIT(f->owner);
    Py_VISIT(f->func);
    return 0;
}

static int
forward_clear(lp_forward *f)
{
    Py_CLEAR(f->owner);
    Py_CLEAR(f->func);
    return 0;
}

static void
forward_dealloc(lp_forward *f)
{
    PyTypeObject *tp = Py_TYPE(f);
    PyObject_GC_UnTrack(f);
    forward_clear(f);
    Py_CLEAR(f->name);
    tp->tp_free((PyObject *)f);
    Py_DECREF(tp);
}

static PyObject *
forward_repr(lp_forward *f)
{
    return PyUnicode_FromFormat("<lockprof forwarder of %s.%U>", f->owner->tp_name, f->name);
}

static PyType_Slot forward_slots[] = {
    {Py_tp_descr_get, forward_get},
    {Py_tp_traverse, forward_traverse},
    {Py_tp_clear, forward_clear},
    {Py_tp_dealloc, forward_dealloc},
    {Py_tp_repr, forward_repr},
    {0, NULL},
};

static PyType_Spec forward_spec = {
    .name = "lockprof._lockprof.Forwarder",
    .basicsize = sizeof(lp_forward),
    .flags = Py_TPFLAGS_DEFAULT | Py_TPFLAGS_HAVE_GC,
    .slots = forward_slots,
};

/* Puts a forwarder for `name` into `wtype`'s dict unless the wrapper type
 * answers it itself; `shadowed`: the name may be an instance attribute (an
 * existing forwarder is told so when `mark`).  0, or -1 with an exception. */
static int
add_forwarder(PyTypeObject *wtype, PyTypeObject *owner, PyObject *name, int shadowed, int mark)
{
    if (!PyUnicode_Check(name) || is_dunder(name)) {
        return 0;
    }
    PyObject *have = PyDict_GetItemWithError(wtype->tp_dict, name);   /* borrowed */
    if (have != NULL) {
        if (shadowed && mark && Py_TYPE(have) == forward_type) {
            ((lp_forward *)have)->shadowed = 1;
        }
        return 0;
    }
    if (PyErr_Occurred()) {
        return -1;
    }
    lp_forward *f = PyObject_GC_New(lp_forward, forward_type);
    if (f == NULL) {
        return -1;
    }
    Py_INCREF(name);
    PyUnicode_InternInPlace(&name);
    f->name = name;
    f->wtype = wtype;
    f->owner = (PyTypeObject *)Py_NewRef(owner);
    f->func = NULL;
    f->tag = 0;
    f->shadowed = shadowed;
    PyObject_GC_Track(f);
    int r = PyObject_SetAttr((PyObject *)wtype, name, (PyObject *)f);
    Py_DECREF(f);
    return r;
}

/* the names `code` uses (co_names), of a function's code; NULL if none */
static PyObject *
code_names(PyObject *func)
{
    if (!PyFunction_Check(func)) {
        return NULL;
    }
    PyObject *names = ((PyCodeObject *)PyFunction_GET_CODE(func))->co_names;
    return names != NULL && PyTuple_Check(names) ? names : NULL;
}

/* the name sets of the class's functions: all of them, and __init__'s
 * (what __init__ names may be set on the instance, shadowing the class) */
static int
collect_names(PyTypeObject *owner, PyObject *used, PyObject *in_init)
{
    PyObject *mro = owner->tp_mro;
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *cls = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (cls == &PyBaseObject_Type || cls->tp_dict == NULL) {
            continue;
        }
        Py_ssize_t pos = 0;
        PyObject *key, *value;
        while (PyDict_Next(cls->tp_dict, &pos, &key, &value)) {
            PyObject *names = code_names(value);
            if (names == NULL) {
                continue;
            }
            int init = PyUnicode_Check(key) && PyUnicode_CompareWithASCIIString(key, "__init__") == 0;
            for (Py_ssize_t k = 0; k < PyTuple_GET_SIZE(names); k++) {
                PyObject *n = PyTuple_GET_ITEM(names, k);
                if (PySet_Add(used, n) < 0 || (init && PySet_Add(in_init, n) < 0)) {
                    return -1;
                }
            }
        }
    }
    return 0;
}

int
lp_attrs_install(PyTypeObject *wtype, PyTypeObject *owner)
{
    PyObject *mro = owner->tp_mro, *it = NULL, *key;
    if (mro == NULL || !PyTuple_Check(mro)) {
        return 0;
    }
    PyObject *used = PySet_New(NULL), *in_init = PySet_New(NULL);
    if (used == NULL || in_init == NULL || collect_names(owner, used, in_init) < 0) {
        goto error;
    }
    /* the class's own attributes */
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyTypeObject *cls = (PyTypeObject *)PyTuple_GET_ITEM(mro, i);
        if (cls == &PyBaseObject_Type || cls->tp_dict == NULL) {
            continue;
        }
        Py_ssize_t pos = 0;
        PyObject *value;
        while (PyDict_Next(cls->tp_dict, &pos, &key, &value)) {
            int shadowed = PySet_Contains(in_init, key);
            if (shadowed < 0 || add_forwarder(wtype, owner, key, shadowed, 0) < 0) {
                goto error;
            }
        }
    }
    /* the names its code uses: the instance attributes among them */
    it = PyObject_GetIter(used);
    if (it == NULL) {
        goto error;
    }
    while ((key = PyIter_Next(it)) != NULL) {
        int r = add_forwarder(wtype, owner, key, 1, 0);
        Py_DECREF(key);
        if (r < 0) {
            goto error;
        }
    }
    if (PyErr_Occurred()) {
        goto error;
    }
    Py_DECREF(it);
    Py_DECREF(used);
    Py_DECREF(in_init);
    return 0;
error:
    Py_XDECREF(it);
    Py_XDECREF(used);
    Py_XDECREF(in_init);
    return -1;
}

int
lp_wrapper_setattro_forward(PyObject *self, PyObject *name, PyObject *value)
{
    lp_wrapper *w = (lp_wrapper *)self;
    int r = PyObject_SetAttr(w->inner, name, value);
    if (r == 0) {
        /* the instance may now shadow a class function: ask it from now on */
        LP_WF_SET(w, LP_W_ATTRS_SET);
        if (value != NULL && PyUnicode_Check(name) &&
            add_forwarder(Py_TYPE(self), Py_TYPE(w->inner), name, 1, 1) < 0) {
            PyErr_Clear();
            lp_count_error();
        }
    }
    return r;
}

/* __dict__ of a wrapper: the wrapped object's */
PyObject *
lp_wrapper_get_dict(lp_wrapper *self, void *closure)
{
    return PyObject_GetAttr(self->inner, str_dict);
}

int
lp_attrs_setup(PyObject *module)
{
    str_dict = PyUnicode_InternFromString("__dict__");
    if (str_dict == NULL) {
        return -1;
    }
    forward_type = (PyTypeObject *)PyType_FromSpec(&forward_spec);
    return forward_type == NULL ? -1 : 0;
}
