/* lockprof runtime: the top.  The module's initialisation (every part's
 * setup, in order), and the Python API functions that act on several parts
 * at once: configure() (sampling, caps, lock order) and after_fork().
 *
 * The runtime's files in the order calls go, each calling only files after it:
 *   generated/lp_*.c (the wrapper types' methods: the hot path)
 *   lp_factory.c, lp_async.c, lp_runtime.c, lp_attrs.c (making wrappers,
 *       the asyncio awaitable, the slow paths and slots, the attributes of
 *       Python classes' wrappers)
 *   lp_event.c (sampled and contended events)
 *   lp_hang.c -> lp_order.c, lp_budget.c (the features, fed by events)
 *   lp_export.c (the snapshot of the tables)
 *   lp_record.c -> lp_names.c, lp_stack.c (the tables: sites, records,
 *       names, stacks, sample rows, labels)
 *   lp_signal.c (the SIGTERM guard of `lockprof run`)
 *   lp_thread.c (a thread's own state, the settings, the counters, the
 *       tables' mutex), lp_pbread.c (reading protobuf; no state)
 * This file calls into all of them and none calls it.
 *
 * Owns: nothing beyond what it sets through the others.
 * Guarded by: module init runs once, under the import lock; configure() and
 * after_fork() run holding the tables' mutex (lp_add_functions). */
#include "lp_record.h"
#include "lp_stack.h"

static PyObject *
lp_py_configure(PyObject *mod, PyObject *args, PyObject *kw)
{
    static char *kwlist[] = {"active", "sample_rate", "max_locks", "seed", "max_frames",
                             "wait_period_ns", "max_samples", "max_stacks", "max_sites",
                             "max_thread_names", "max_task_names", "lock_order",
                             "max_order_edges", "max_label_sets", "max_label_value",
                             "max_overhead", "max_rate_windows", NULL};
    int active;
    double rate;
    unsigned int maxl = lp_max_locks;
    PyObject *seed = Py_None;
    int maxf = lp_max_frames;
    long long period = lp_wait_period_ns;
    unsigned int maxs = lp_max_samples, maxst = lp_max_stacks, maxsi = lp_max_sites;
    unsigned int maxth = lp_labels_max(0), maxta = lp_labels_max(1);
    int order = lp_lock_order;
    unsigned int maxoe = lp_max_order_edges;
    unsigned int maxls = lp_labels_max(LP_LABEL_SETS), maxlv = lp_label_value_max();
    double overhead = 0.01;
    unsigned int maxrw = 3600;
    if (!PyArg_ParseTupleAndKeywords(args, kw, "pd|IOiLIIIIIpIIIdI:configure", kwlist,
                                     &active, &rate, &maxl, &seed, &maxf, &period, &maxs,
                                     &maxst, &maxsi, &maxth, &maxta, &order, &maxoe,
                                     &maxls, &maxlv, &overhead, &maxrw)) {
        return NULL;
    }
    if (!(overhead >= 0.0 && overhead <= 1.0)) {
        PyObject *v = PyFloat_FromDouble(overhead);
        if (v != NULL) {
            PyErr_Format(PyExc_ValueError, "max_overhead must be a fraction in [0, 1], got %R",
                         v);
            Py_DECREF(v);
        }
        return NULL;
    }
    if (maxrw < 1) {
        PyErr_Format(PyExc_ValueError, "max_rate_windows must be a positive integer, got %u",
                     maxrw);
        return NULL;
    }
    if (maxlv < 1) {
        PyErr_Format(PyExc_ValueError, "max_label_value must be a positive integer, got %u", maxlv);
        return NULL;
    }
    lp_max_order_edges = maxoe;
    lp_max_samples = maxs;
    lp_max_stacks = maxst;
    lp_max_sites = maxsi;
    lp_labels_configure(maxth, maxta, maxls, maxlv);
    if (period < 1) {
        PyErr_Format(PyExc_ValueError, "wait_period_ns must be a positive integer, got %lld", period);
        return NULL;
    }
    LP_STORE(lp_wait_period_ns, period);
    lp_wait_period_scale(1.0);
    if (maxf < 1 || maxf > 512) {
        PyErr_Format(PyExc_ValueError, "max_frames must be an integer in [1, 512], got %d", maxf);
        return NULL;
    }
    LP_STORE(lp_max_frames, maxf);
    if (!(rate >= 0.0 && rate <= 1.0)) {
        PyErr_Format(PyExc_ValueError,
                     "sample_rate must be a number in [0, 1], got %R", PyTuple_GET_ITEM(args, 1));
        return NULL;
    }
    if (seed != Py_None) {
        unsigned long long s = PyLong_AsUnsignedLongLongMask(seed);
        if (s == (unsigned long long)-1 && PyErr_Occurred()) {
            return NULL;
        }
        lp_seed(s);
    }
    lp_max_locks = maxl;
    LP_STORE(lp_lock_order, order);
    lp_sampling_configure(active, rate);
    if (active) {
        /* stop() leaves the budget's history as it was */
        lp_budget_configure(rate, overhead, maxrw);
    }
    Py_RETURN_NONE;
}

static PyObject *
lp_py_after_fork(PyObject *mod, PyObject *unused)
{
    lp_labels_after_fork();
    lp_order_after_fork();
    lp_hang_after_fork();
    Py_RETURN_NONE;
}

static PyMethodDef init_methods[] = {
    {"after_fork", lp_py_after_fork, METH_NOARGS,
     "after_fork()\n--\n\nIn a forked child: the threads seen are the parent's."},
    {"configure", (PyCFunction)(void (*)(void))lp_py_configure, METH_VARARGS | METH_KEYWORDS,
     "configure(active, sample_rate, max_locks=..., seed=None)\n--\n\n"
     "Turn recording on or off and set the sampling rate."},
    {NULL, NULL, 0, NULL},
};

int
lp_runtime_init(PyObject *module, const lp_typedef *defs, int ndefs)
{
    if (lp_runtime_setup() < 0 || lp_attrs_setup(module) < 0 || lp_order_setup(module) < 0 ||
        lp_hang_setup(module) < 0 || lp_pbread_setup(module) < 0 ||
        lp_types_init(module, defs, ndefs) < 0 || lp_stack_setup(module) < 0 ||
        lp_export_setup(module) < 0 || lp_record_setup(module) < 0 ||
        lp_factory_setup(module, defs, ndefs) < 0 || lp_async_setup(module) < 0 ||
        lp_names_setup(module) < 0 || lp_budget_setup(module) < 0 ||
        lp_signal_setup(module) < 0) {
        return -1;
    }
    return lp_add_functions(module, init_methods);
}
