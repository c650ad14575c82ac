/* lockprof runtime: the two loops of reading a protobuf message, for the
 * pprof reader (lockprof/export/pprof.py), which otherwise runs them in
 * Python at about 50,000 rows a second.
 *
 *   pb_fields(buf)  -> [(field, wire type, value)], value an int (varint),
 *                      or bytes (length-delimited, fixed64, fixed32)
 *   pb_varints(buf) -> [int]: a packed repeated varint field
 *
 * Damaged input raises ValueError naming what is wrong; nothing is read
 * past the buffer.
 *
 * Owns: nothing.
 * Guarded by: nothing: pure functions of their arguments. */
#include "lp_runtime.h"

/* reads one varint at *i; -1 with ValueError set when truncated or too long */
static int
read_varint(const unsigned char *p, Py_ssize_t n, Py_ssize_t *i, uint64_t *out)
{
    uint64_t v = 0;
    for (int shift = 0; shift <= 63; shift += 7) {
        if (*i >= n) {
            break;
        }
        unsigned char b = p[(*i)++];
        v |= (uint64_t)(b & 0x7F) << shift;
        if (!(b & 0x80)) {
            *out = v;
            return 0;
        }
    }
    PyErr_SetString(PyExc_ValueError, "truncated varint");
    return -1;
}

static PyObject *
py_pb_fields(PyObject *mod, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len, i = 0;
    PyObject *out = PyList_New(0);
    while (out != NULL && i < n) {
        uint64_t key, v = 0;
        PyObject *value = NULL;
        if (read_varint(p, n, &i, &key) < 0) {
            goto fail;
        }
        int wire = (int)(key & 7);
        if (wire == 0) {
            if (read_varint(p, n, &i, &v) < 0) {
                goto fail;
            }
            value = PyLong_FromUnsignedLongLong(v);
        }
        else if (wire == 2 || wire == 1 || wire == 5) {
            uint64_t size = wire == 1 ? 8 : wire == 5 ? 4 : 0;
            if (wire == 2 && read_varint(p, n, &i, &size) < 0) {
                goto fail;
            }
            if (size > (uint64_t)(n - i)) {
                PyErr_SetString(PyExc_ValueError, "truncated field");
                goto fail;
            }
            value = PyBytes_FromStringAndSize((const char *)p + i, (Py_ssize_t)size);
            i += (Py_ssize_t)size;
        }
        else {
            PyErr_Format(PyExc_ValueError, "unsupported wire type %d", wire);
            goto fail;
        }
        PyObject *t = value != NULL ? Py_BuildValue("(KiN)", (unsigned long long)(key >> 3),
                                                    wire, value) : NULL;
        if (t == NULL || PyList_Append(out, t) < 0) {
            Py_XDECREF(t);
            goto fail;
        }
        Py_DECREF(t);
    }
    PyBuffer_Release(&view);
    return out;
fail:
    Py_XDECREF(out);
    PyBuffer_Release(&view);
    return NULL;
}

static PyObject *
py_pb_varints(PyObject *mod, PyObject *arg)
{
    Py_buffer view;
    if (PyObject_GetBuffer(arg, &view, PyBUF_SIMPLE) < 0) {
        return NULL;
    }
    const unsigned char *p = view.buf;
    Py_ssize_t n = view.len, i = 0;
    PyObject *out = PyList_New(0);
    while (out != NULL && i < n) {
        uint64_t v;
        PyObject *o = NULL;
        if (read_varint(p, n, &i, &v) < 0 || (o = PyLong_FromUnsignedLongLong(v)) == NULL ||
            PyList_Append(out, o) < 0) {
            Py_XDECREF(o);
            Py_CLEAR(out);
            break;
        }
        Py_DECREF(o);
    }
    PyBuffer_Release(&view);
    return out;
}

static PyMethodDef pb_methods[] = {
    {"pb_fields", py_pb_fields, METH_O,
     "pb_fields(buf)\n--\n\nThe (field, wire type, value) of one protobuf message."},
    {"pb_varints", py_pb_varints, METH_O,
     "pb_varints(buf)\n--\n\nThe integers of a packed repeated varint field."},
    {NULL, NULL, 0, NULL},
};

int
lp_pbread_setup(PyObject *module)
{
    return PyModule_AddFunctions(module, pb_methods);
}
