/* lockprof runtime: stack capture/interning and the per-(lock, stack) samples. */
#ifndef LOCKPROF_STACK_H
#define LOCKPROF_STACK_H

#include "lp_runtime.h"

enum { LP_EV_ACQUIRE = 0, LP_EV_CONTENTION = 1, LP_EV_HOLD = 2, LP_EV_COND_WAIT = 3,
       LP_EV_DELAY = 4 };

/* a captured frame: code object and instruction offset (3.11+) or line */
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

/* one sample row: (lock record, stack, event, thread label, task label,
 * request label set) */
typedef struct {
    uint32_t rec, stack;
    uint32_t event;
    uint32_t thread;        /* thread label, LP_LABEL_NONE if unknown */
    uint32_t task;          /* task label, LP_LABEL_NONE if none */
    uint32_t labels;        /* request label set (lockprof.labels), LP_LABEL_NONE if none */
    uint64_t count;         /* stack samples taken */
    double estimate;        /* events they stand for (scaled) */
    double value;           /* ns they stand for (scaled) */
} lp_sample;

/* frames kept per stack at most (max_frames' upper bound) */
#define LP_MAX_FRAMES_CAP 512

#define LP_LABEL_NONE UINT32_MAX
#define LP_LABEL_OTHER (UINT32_MAX - 1)    /* the label table was full */

/* the tables, read by the export (lp_export.c) */
extern lp_stack *lp_stacks;            /* index 0 unused */
extern uint32_t lp_nstacks;
extern lp_sample *lp_samples;
extern uint32_t lp_nsamples;
extern uint32_t lp_max_stacks;

/* labels: tasks = 0 for thread labels, 1 for task labels, LP_LABEL_SETS
 * for request label sets (whose names are tuples of (key, value) str pairs,
 * and which have no <other> id: the sets past the cap are real sets) */
#define LP_LABEL_SETS 2
PyObject *lp_label_name(int tasks, uint32_t id);        /* borrowed */
uint32_t lp_label_count(int tasks);
uint64_t lp_labels_dropped(int tasks);
uint32_t lp_labels_max(int tasks);
void lp_labels_configure(uint32_t max_threads, uint32_t max_tasks, uint32_t max_sets,
                         uint32_t max_value);
/* the longest label value kept (longer ones are cut), and how many were cut */
uint32_t lp_label_value_max(void);
uint64_t lp_label_values_cut(void);
/* the one thread that carried a thread label (1), or 0 when several did */
int lp_thread_label_ids(uint32_t id, unsigned long *ident, unsigned long *native);
void lp_labels_after_fork(void);
void lp_labels_reset(void);
PyObject *lp_thread_label_of(PyObject *name, PyObject *dict);
const char *lp_event_name(uint32_t event);

extern int lp_max_frames;
extern uint32_t lp_max_samples;     /* (lock, stack, event, thread) rows kept */
extern uint64_t lp_dropped_stacks, lp_dropped_samples;

/* What an event records about the running thread, found before the tables'
 * mutex is taken: its stack (code objects borrowed from frames that stay on
 * the stack until the event ends) and its task's label.  lp_stack_here and
 * the task slot use the prepared one while it is set (lp_ts.ctx). */
typedef struct lp_ctx {
    struct lp_ctx *prev;        /* an event nested in this one's flush */
    lp_frame frames[LP_MAX_FRAMES_CAP];
    uint32_t nframes, omitted;
    PyObject *task_label;       /* new reference, or NULL: none */
    PyObject *labels;           /* the request labels, resolved: a tuple of
                                   (key, value) str pairs (new reference), or
                                   NULL: none */
} lp_ctx;
void lp_ctx_prepare(lp_ctx *c);     /* outside the mutex */
void lp_ctx_done(lp_ctx *c);        /* after it */

/* The current Python stack, interned (0 when it could not be recorded). */
uint32_t lp_stack_here(void);
/* one recorded stack sample: `estimate` events (already scaled by the
 * inverse of its sampling probability) worth `value` ns in total */
void lp_sample_add(uint32_t rec, uint32_t stack, int event, double estimate, double value);
/* the same, attributed to thread slot `thread` and label set `labels`
 * instead of the current ones */
void lp_sample_add_for(uint32_t rec, uint32_t stack, int event, double estimate, double value,
                       uint32_t thread, uint32_t task, uint32_t labels);
/* the current request label set's id (LP_LABEL_NONE: none) */
uint32_t lp_labels_slot(void);
/* the current thread's slot in the thread table */
uint32_t lp_thread_slot(void);
/* the current task's label slot (LP_LABEL_NONE: none), and the task itself
 * (a new reference, or NULL) */
uint32_t lp_task_slot(void);
PyObject *lp_current_task(void);
/* the running asyncio loop in this thread (new reference), or NULL */
PyObject *lp_running_loop(void);
void lp_samples_reset(void);
/* after records were merged: rows of record r become rows of newid[r] (r in
 * 1..n; 0, the overflow record, stays), rows that now share a key are summed.
 * Returns -1 (rows left as they were) when memory runs out. */
int lp_samples_remap(const uint32_t *newid, uint32_t n);
/* samples() of the Python API: one tuple per sample row */
PyObject *lp_py_samples(PyObject *mod, PyObject *unused);
int lp_stack_setup(PyObject *module);

/* (code, local name) pairs of libraries' worker-thread dispatchers (a
 * tuple; set_dispatch): their stacks show the function handed over */
int lp_stack_set_dispatch(PyObject *pairs);

#endif
