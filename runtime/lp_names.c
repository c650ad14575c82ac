/* lockprof runtime: the variable name of a lock, when its creating call did
 * not store it in one (see lockprof/_names.py), found once, on its first
 * recorded event, in the frame that used it: the caller's locals, then its
 * globals, then the attributes of its `self` and of the objects among its
 * locals.  Attributes are read through the raw instance __dict__ (3.11+:
 * probed by name, never asking for a managed __dict__) and __slots__ member
 * descriptors, so no property, __getattr__ or other user code ever runs.
 *
 * Owns: the set of the stdlib's synchronization files skipped when a name is
 * looked up, and the name-lookup error count.
 * Guarded by: the tables' mutex (lp_tables_mutex, lp_thread.c) on a free-
 * threaded build, the GIL otherwise (lookups run inside flush functions;
 * set_name_skip through the API). */
#include "lp_record.h"

#include <string.h>
#if PY_VERSION_HEX < 0x030B0000
#  include <frameobject.h>
#endif


/* files of the stdlib's synchronization code (threading.py, asyncio/locks.py):
 * a lock first used from there (a Condition's `self._lock`) is named from
 * the first frame outside them, where the program's own name for it lives */
static PyObject *skip_files = NULL;   /* frozenset of str */
#if PY_VERSION_HEX >= 0x030C0000
static PyObject *lp_str_self = NULL;  /* "self", interned at setup */
#endif

static PyObject *
lp_py_set_name_skip(PyObject *mod, PyObject *files)
{
    PyObject *fs = PyFrozenSet_New(files);
    if (fs == NULL) {
        return NULL;
    }
    PyObject *old = skip_files;
    skip_files = fs;
    Py_XDECREF(old);
    Py_RETURN_NONE;
}

static PyObject *
lp_py_inject_faults(PyObject *mod, PyObject *arg)
{
    long long n = PyLong_AsLongLong(arg);
    if (n == -1 && PyErr_Occurred()) {
        return NULL;
    }
    int64_t old = lp_faults;
    lp_faults = n < 0 ? 0 : n;
    return PyLong_FromLongLong(old);
}

static PyMethodDef names_methods[] = {
    {"_inject_faults", lp_py_inject_faults, METH_O,
     "_inject_faults(n)\n--\n\nTests only: the next n fallible steps of the runtime fail; "
     "returns the previous count left."},
    {"set_name_skip", lp_py_set_name_skip, METH_O,
     "set_name_skip(files)\n--\n\nFiles whose frames are passed over when naming a lock."},
    {NULL, NULL, 0, NULL},
};

int
lp_names_setup(PyObject *module)
{
#if PY_VERSION_HEX >= 0x030C0000
    lp_str_self = PyUnicode_InternFromString("self");
    if (lp_str_self == NULL) {
        return -1;
    }
#endif
    return lp_add_functions(module, names_methods);
}

/* the innermost frame outside skip_files (a new reference), or NULL */
static PyFrameObject *
naming_frame(void)
{
    PyFrameObject *f = PyEval_GetFrame();
    Py_XINCREF(f);
    for (int depth = 0; f != NULL && skip_files != NULL && depth < 8; depth++) {
        PyCodeObject *co = PyFrame_GetCode(f);
        int skip = PySet_Contains(skip_files, co->co_filename) == 1;
        Py_DECREF(co);
        PyErr_Clear();
        if (!skip) {
            break;
        }
        PyFrameObject *back = PyFrame_GetBack(f);
        if (back == NULL) {
            break;     /* keep the last one */
        }
        Py_DECREF(f);
        f = back;
    }
    return f;
}

/* key of `obj` in mapping `m` (identity), new reference or NULL */
static PyObject *
find_in_mapping(PyObject *m, PyObject *obj)
{
    if (m == NULL) {
        return NULL;
    }
    if (PyDict_Check(m)) {
        Py_ssize_t pos = 0;
        PyObject *k, *v;
        while (PyDict_Next(m, &pos, &k, &v)) {
            if (v == obj && PyUnicode_Check(k)) {
                return Py_NewRef(k);
            }
        }
        return NULL;
    }
    PyObject *items = PyMapping_Items(m);   /* 3.13's frame-locals proxy */
    if (items == NULL) {
        return NULL;
    }
    PyObject *found = NULL;
    for (Py_ssize_t i = 0; i < PyList_GET_SIZE(items) && found == NULL; i++) {
        PyObject *kv = PyList_GET_ITEM(items, i);
        if (PyTuple_Check(kv) && PyTuple_GET_SIZE(kv) == 2 &&
            PyTuple_GET_ITEM(kv, 1) == obj && PyUnicode_Check(PyTuple_GET_ITEM(kv, 0))) {
            found = Py_NewRef(PyTuple_GET_ITEM(kv, 0));
        }
    }
    Py_DECREF(items);
    return found;
}

static PyObject *
mapping_get(PyObject *m, const char *key)
{
    if (m == NULL) {
        return NULL;
    }
    if (PyDict_Check(m)) {
        return Py_XNewRef(PyDict_GetItemString(m, key));
    }
    PyObject *r = PyMapping_GetItemString(m, key);
    if (r == NULL) {
        PyErr_Clear();
    }
    return r;
}

/* the raw class attribute `name` along the MRO (borrowed), or NULL (an
 * exception set when the lookup failed); no descriptor is called */
PyObject *
lp_raw_class_attr(PyTypeObject *tp, PyObject *name)
{
    PyObject *mro = tp->tp_mro;
    if (mro == NULL) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *d = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        PyObject *v = d ? PyDict_GetItemWithError(d, name) : NULL;
        if (v != NULL || PyErr_Occurred()) {
            return v;
        }
    }
    return NULL;
}

#if PY_VERSION_HEX >= 0x030B0000
/* 3.11+: an instance of a class with a managed dict keeps its attributes
 * inline until someone asks for its __dict__, which makes it a real dict for
 * good and every later attribute access of the program slower (queue.Queue's
 * put+get: +20% of instructions).  So the attributes are probed by the names
 * the naming frame's code uses (`self.lock`: "lock"), through the generic
 * lookup, which reads the inline values as they are; names that the class
 * defines (descriptors, properties) are passed over, so no user code runs. */
static PyObject *
find_by_names(PyObject *self, PyObject *obj, PyObject *names)
{
    PyTypeObject *tp = Py_TYPE(self);
    if (names == NULL || !PyTuple_Check(names) || tp->tp_getattro != PyObject_GenericGetAttr) {
        return NULL;
    }
    for (Py_ssize_t i = 0; i < PyTuple_GET_SIZE(names); i++) {
        PyObject *name = PyTuple_GET_ITEM(names, i);
        if (!PyUnicode_Check(name)) {
            continue;
        }
        PyObject *cls_attr = lp_raw_class_attr(tp, name);      /* borrowed */
        if (PyErr_Occurred() || (cls_attr != NULL && Py_TYPE(cls_attr)->tp_descr_get != NULL)) {
            PyErr_Clear();       /* a descriptor: its __get__ could be user code */
            continue;
        }
        PyObject *v = PyObject_GenericGetAttr(self, name);
        if (v == NULL) {
            PyErr_Clear();       /* not an attribute of this object */
            continue;
        }
        int hit = v == obj;
        Py_DECREF(v);
        if (hit) {
            return Py_NewRef(name);
        }
    }
    return NULL;
}
#endif

static PyObject *
find_in_self(PyObject *self, PyObject *obj, PyObject *names)
{
    PyTypeObject *tp = Py_TYPE(self);
    PyObject *found = NULL;
#if PY_VERSION_HEX >= 0x030B0000
    if (PyType_HasFeature(tp, Py_TPFLAGS_MANAGED_DICT)) {
        found = find_by_names(self, obj, names);
    }
    else
#else
    (void)names;
#endif
    {
        /* the instance dict, through the C getset that `type` installs */
        PyObject *key = PyUnicode_InternFromString("__dict__");
        PyObject *descr = key ? lp_raw_class_attr(tp, key) : NULL;
        Py_XDECREF(key);
        if (descr != NULL && Py_IS_TYPE(descr, &PyGetSetDescr_Type)) {
            PyObject *d = Py_TYPE(descr)->tp_descr_get(descr, self, (PyObject *)tp);
            if (d != NULL && PyDict_Check(d)) {
                found = find_in_mapping(d, obj);
            }
            Py_XDECREF(d);
        }
    }
    PyErr_Clear();
    /* __slots__: member descriptors only */
    PyObject *mro = tp->tp_mro;
    for (Py_ssize_t i = 0; found == NULL && mro && i < PyTuple_GET_SIZE(mro); i++) {
        PyObject *cd = ((PyTypeObject *)PyTuple_GET_ITEM(mro, i))->tp_dict;
        PyObject *slots = cd ? PyDict_GetItemString(cd, "__slots__") : NULL;
        if (slots == NULL) {
            continue;
        }
        PyObject *seq = PyUnicode_Check(slots) ? PyTuple_Pack(1, slots) : PySequence_Tuple(slots);
        if (seq == NULL) {
            PyErr_Clear();
            continue;
        }
        for (Py_ssize_t j = 0; found == NULL && j < PyTuple_GET_SIZE(seq); j++) {
            PyObject *slot = PyTuple_GET_ITEM(seq, j);
            if (!PyUnicode_Check(slot)) {
                continue;
            }
            PyObject *md = PyDict_GetItemWithError(cd, slot);
            if (md == NULL || !Py_IS_TYPE(md, &PyMemberDescr_Type)) {
                PyErr_Clear();
                continue;
            }
            PyObject *v = Py_TYPE(md)->tp_descr_get(md, self, (PyObject *)tp);
            if (v == obj) {
                found = Py_NewRef(slot);
            }
            Py_XDECREF(v);
            PyErr_Clear();
        }
        Py_DECREF(seq);
    }
    return found;
}

/* instances of Python classes among the frame's variables: a lock reached
 * as `account.lock` is named by the attribute (`lock`), as through self */
#define LP_MAX_OBJECTS 16

static void
note_object(PyObject *objs, PyObject *v)
{
    if (objs != NULL && PyList_GET_SIZE(objs) < LP_MAX_OBJECTS
        && PyType_HasFeature(Py_TYPE(v), Py_TPFLAGS_HEAPTYPE) && !PyType_Check(v)) {
        if (PyList_Append(objs, v) < 0) {
            PyErr_Clear();
        }
    }
}

#if PY_VERSION_HEX >= 0x030C0000
/* 3.12+: read the frame's variables one by one, without materialising its
 * f_locals snapshot (which would keep the objects alive until the function
 * returns) */
static PyObject *
find_in_frame_vars(PyFrameObject *f, PyObject *obj, PyObject **self_out, PyObject *objs)
{
    PyCodeObject *co = PyFrame_GetCode(f);
    PyObject *found = NULL;
    PyObject *lists[3] = {PyCode_GetVarnames(co), PyCode_GetCellvars(co), PyCode_GetFreevars(co)};
    for (int k = 0; k < 3; k++) {
        PyObject *names = lists[k];
        for (Py_ssize_t i = 0; names && i < PyTuple_GET_SIZE(names); i++) {
            PyObject *name = PyTuple_GET_ITEM(names, i);
            PyObject *v = PyFrame_GetVar(f, name);
            if (v == NULL) {
                PyErr_Clear();       /* unbound */
                continue;
            }
            if (found == NULL && v == obj) {
                found = Py_NewRef(name);
            }
            if (self_out != NULL && *self_out == NULL &&
                PyUnicode_CompareWithASCIIString(name, "self") == 0) {
                *self_out = Py_NewRef(v);
            }
            else {
                note_object(objs, v);
            }
            Py_DECREF(v);
        }
        Py_XDECREF(names);
    }
    PyErr_Clear();
    Py_DECREF(co);
    return found;
}
#endif

PyFrameObject *
lp_naming_frame(void)
{
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);   /* never disturb the caller */
    PyFrameObject *f = lp_fault() ? NULL : naming_frame();
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return f;
}

int
lp_frame_position(PyFrameObject *f)
{
#if PY_VERSION_HEX >= 0x030B0000
    return PyFrame_GetLasti(f);
#else
    return PyFrame_GetLineNumber(f);
#endif
}

PyObject *
lp_resolve_name(PyObject *obj, PyFrameObject *f)
{
    if (f == NULL) {
        return NULL;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);   /* never disturb the caller */
    PyObject *locals = NULL, *self = NULL, *name = NULL;
    PyObject *objs = PyList_New(0);
    if (objs == NULL) {
        PyErr_Clear();
    }
    PyCodeObject *code = PyFrame_GetCode(f);
    int optimized = (code->co_flags & CO_OPTIMIZED) != 0;
    /* the names its code uses as attributes and globals */
    PyObject *names = Py_XNewRef(code->co_names);
    Py_DECREF(code);
#if PY_VERSION_HEX >= 0x030C0000
    if (optimized) {
        name = find_in_frame_vars(f, obj, &self, objs);
    }
    else
#endif
    {
        /* Module and class bodies: f_locals is their namespace.  Functions
         * before 3.12: the f_locals snapshot is the only public way, and it
         * keeps the function's objects alive until it returns. */
        (void)optimized;
#if PY_VERSION_HEX >= 0x030B0000
        locals = PyFrame_GetLocals(f);
#else
        /* frameobject.h's struct: the public way to a frame's namespaces
         * before 3.11 */
        if (PyFrame_FastToLocalsWithError(f) == 0) {
            locals = Py_XNewRef(f->f_locals);
        }
#endif
        if (locals == NULL) {
            PyErr_Clear();
        }
        name = find_in_mapping(locals, obj);
        self = mapping_get(locals, "self");
        if (name == NULL && optimized && locals != NULL && PyDict_Check(locals)) {
            PyObject *k, *v;
            Py_ssize_t pos = 0;
            while (PyDict_Next(locals, &pos, &k, &v)) {
                if (v != self) {
                    note_object(objs, v);
                }
            }
        }
    }
    if (name == NULL) {
        PyErr_Clear();
#if PY_VERSION_HEX >= 0x030B0000
        PyObject *globals = PyFrame_GetGlobals(f);
#else
        PyObject *globals = Py_XNewRef(f->f_globals);
#endif
        name = find_in_mapping(globals, obj);
        Py_XDECREF(globals);
    }
    if (name == NULL && self != NULL) {
        PyErr_Clear();
        name = find_in_self(self, obj, names);
    }
    for (Py_ssize_t i = 0; name == NULL && objs != NULL && i < PyList_GET_SIZE(objs); i++) {
        PyErr_Clear();
        name = find_in_self(PyList_GET_ITEM(objs, i), obj, names);
    }
    Py_XDECREF(objs);
    Py_XDECREF(self);
    Py_XDECREF(names);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        lp_name_errors++;
    }
    Py_XDECREF(locals);
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return name;
}

/* ------------------------------------------------------------------------ */
/* the owner: the class of the object a library's lock belongs to           */
/* ------------------------------------------------------------------------ */

/* frame f's `self` (new reference), or NULL; no user code runs (3.12+: the
 * frame's variable; before: its locals mapping, as naming reads it) */
static PyObject *
frame_self(PyFrameObject *f)
{
    PyCodeObject *code = PyFrame_GetCode(f);
    int optimized = (code->co_flags & CO_OPTIMIZED) != 0 && code->co_argcount > 0;
    Py_DECREF(code);
    if (!optimized) {
        return NULL;        /* a module or class body, or no arguments */
    }
    PyObject *self = NULL;
#if PY_VERSION_HEX >= 0x030C0000
    self = PyFrame_GetVar(f, lp_str_self);
#elif PY_VERSION_HEX >= 0x030B0000
    PyObject *locals = PyFrame_GetLocals(f);
    self = mapping_get(locals, "self");
    Py_XDECREF(locals);
#else
    if (PyFrame_FastToLocalsWithError(f) == 0) {
        self = mapping_get(f->f_locals, "self");
    }
#endif
    PyErr_Clear();
    return self;
}

/* a class's name without its module (tp_name is "module.Name" for static
 * types, "Name" for heap types) */
static const char *
type_short_name(PyTypeObject *tp)
{
    const char *dot = strrchr(tp->tp_name, '.');
    return dot != NULL ? dot + 1 : tp->tp_name;
}

static PyObject *
file_of(PyFrameObject *f)
{
    PyCodeObject *code = PyFrame_GetCode(f);
    PyObject *file = Py_NewRef(code->co_filename);
    Py_DECREF(code);
    return file;
}

/* What a lock made in `site_file` belongs to, on its first recorded event:
 * the class of `self` in the naming frame when that frame's code is in the
 * file that made the lock (the lock's object is using it), and the class of
 * the `self` one frame out when that is another object's: "Queue of
 * QueuePool".  A new str, or NULL.  Never raises, never runs user code. */
PyObject *
lp_resolve_owner(PyFrameObject *f, PyObject *site_file)
{
    if (f == NULL || site_file == NULL || !PyUnicode_Check(site_file)) {
        return NULL;
    }
    PyObject *exc_type, *exc_value, *exc_tb;
    PyErr_Fetch(&exc_type, &exc_value, &exc_tb);
    PyObject *out = NULL, *self = NULL, *outer = NULL;
    PyFrameObject *back = NULL;
    PyObject *file = file_of(f);
    if (PyUnicode_Compare(file, site_file) != 0) {
        goto done;
    }
    self = frame_self(f);
    if (self == NULL || PyModule_Check(self) || PyType_Check(self)) {
        goto done;
    }
    back = PyFrame_GetBack(f);
    if (back != NULL && skip_files != NULL) {
        /* a frame of the stdlib's thread machinery (Thread.run calling its
         * target) owns nothing */
        PyObject *bf = file_of(back);
        int skip = PySet_Contains(skip_files, bf) == 1;
        Py_DECREF(bf);
        PyErr_Clear();
        if (skip) {
            Py_CLEAR(back);
        }
    }
    outer = back != NULL ? frame_self(back) : NULL;
    if (outer != NULL && outer != self && Py_TYPE(outer) != Py_TYPE(self) &&
        !PyModule_Check(outer) && !PyType_Check(outer)) {
        out = PyUnicode_FromFormat("%s of %s", type_short_name(Py_TYPE(self)),
                                   type_short_name(Py_TYPE(outer)));
    }
    else {
        out = PyUnicode_FromString(type_short_name(Py_TYPE(self)));
    }
done:
    Py_XDECREF(file);
    Py_XDECREF(self);
    Py_XDECREF(outer);
    Py_XDECREF(back);
    if (PyErr_Occurred()) {
        PyErr_Clear();
        Py_CLEAR(out);
    }
    PyErr_Restore(exc_type, exc_value, exc_tb);
    return out;
}
