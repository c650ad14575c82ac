/* lockprof runtime: the aggregation tables (creation sites and lock records). */
#ifndef LOCKPROF_RECORD_H
#define LOCKPROF_RECORD_H

#include "lp_runtime.h"

typedef struct {
    unsigned long thread;   /* PyThread_get_thread_ident() of the owner */
    int64_t t0;
} lp_hold;

/* One per profiled lock that had at least one recorded event.  Records are
 * owned by the runtime and outlive their wrapper, so a profile still shows a
 * lock that was freed.  Estimates are scaled by 1/sample_rate at the moment
 * they are recorded, so that changing the rate keeps totals unbiased. */
typedef struct lp_lockrec {
    uint32_t id;
    int kind;
    uint32_t site;
    uint64_t acq_samples;       /* sampled acquisitions, raw */
    double acq_estimate;        /* sum of 1/rate over sampled acquisitions */
    uint64_t contentions;       /* exact */
    uint64_t timeouts;          /* contended acquires that did not acquire */
    int64_t wait_ns;            /* exact */
    int64_t max_wait_ns;
    uint64_t hold_samples;
    double hold_ns_estimate;    /* sum of hold * 1/rate */
    uint64_t cond_waits;        /* exact */
    int64_t cond_wait_ns;
    lp_hold *holds;             /* sampled holds awaiting their release */
    uint32_t nholds, capholds;
    double hold_scale;          /* 1/rate at the time holds were started */
    PyObject *name;             /* variable name found on the first event, or NULL */
    PyObject *owner;            /* the class of what a library's lock belongs to,
                                   found on the first event ("Queue of QueuePool"),
                                   or NULL (lp_resolve_owner) */
    uint32_t nwaiting;          /* profiled acquires blocked on it now */
    uint32_t release_stack;     /* stack of the last release that had waiters */
    uint32_t release_thread;    /* and the thread (slot) that made it */
    uint32_t release_labels;    /* and its request label set */
    int64_t release_stack_ns;   /* and when */
    int orphan;                 /* its wrapper is gone: merged into its site's retired
                                 * record by the next compaction, freed at reset */
    uint32_t nlocks;            /* locks it stands for: 1, more once dead ones merged */
    uint64_t serial;            /* this lock among all recorded (lock order); 0: shared */
    uint32_t order_holds;       /* times it is held now, in lock-order tracking */
} lp_lockrec;

/* a lock's record (made on first use) and its display name file:line:var */
lp_lockrec *lp_rec_for(lp_wrapper *w, int kind);
PyObject *lp_lock_display_name(lp_wrapper *w, int kind);
int lp_kind_is_async(int kind);
void lp_record_set_async(int kind, int is_async);

uint32_t lp_record_site_here(void);
/* The frame a lock's name is looked up in: the first one outside the stdlib's
 * synchronization code (new reference), or NULL. */
PyFrameObject *lp_naming_frame(void);
/* that frame's instruction offset (3.11+) or line (3.9, 3.10) */
int lp_frame_position(PyFrameObject *f);
/* The variable name `obj` has in frame `f` (borrowed; NULL gives NULL): a
 * new reference, or NULL; never raises, never runs user code. */
PyObject *lp_resolve_name(PyObject *obj, PyFrameObject *f);
/* what a lock made in `site_file` belongs to, read in its naming frame `f`:
 * a new str ("Queue", "Queue of QueuePool") or NULL; never raises */
PyObject *lp_resolve_owner(PyFrameObject *f, PyObject *site_file);
int lp_names_setup(PyObject *module);
extern uint64_t lp_foreign_locks;
extern uint64_t lp_dropped_hang_waits;
extern uint32_t lp_max_locks, lp_max_sites;
extern uint64_t lp_name_errors;
int lp_record_setup(PyObject *module);
/* the wrapper owning `w->rec` is being freed: its record becomes an orphan */
void lp_record_orphan(lp_wrapper *w);
/* lp_event.c: the lock `w` is being freed (its record and its holds) */
void lp_lock_freed(lp_wrapper *w);
/* lp_event.c: a wait shorter than this keeps its stack with probability
 * wait/period */
extern int64_t lp_wait_period_ns;
/* the period in force: lp_wait_period_ns times the CPU budget's cut (the
 * user's rate over the rate in force), so that the stacks of waits are
 * rate-limited with the sampled acquisitions; set by lp_wait_period_scale
 * (configure(), the budget), under the tables' mutex */
extern int64_t lp_wait_every_ns;
void lp_wait_period_scale(double scale);
int lp_record_set_kinds(PyObject *names);

/* for the export: the records (compacted first), the overflow record, a
 * record with nothing recorded, a kind's name and a site's code object and
 * line (borrowed), reset and counters as the Python API gives them */
uint32_t lp_records_for_export(lp_lockrec ***out);
uint32_t lp_records_for_export_nocompact(lp_lockrec ***out);   /* the same, as they are */
lp_lockrec *lp_overflow_record(void);
/* t's figures += r's (max wait: the larger; locks: the sum) */
void lp_record_add(lp_lockrec *t, const lp_lockrec *r);
/* +1: no compaction (records keep their numbers) until the matching -1 */
void lp_records_hold(int delta);
int lp_record_is_empty(const lp_lockrec *r);
PyObject *lp_kind_name(int kind);
PyObject *lp_site_code(uint32_t site, int *line);
PyObject *lp_records_reset(void);
PyObject *lp_records_counters(void);
int lp_export_setup(PyObject *module);

extern double lp_sample_rate;
void lp_sampling_configure(int active, double rate);
void lp_sampling_set_rate(double rate);     /* the budget's: same settings, a new rate */
double lp_sampled_rate(void);   /* the rate of this thread's latest sampled event's gap */
/* the CPU budget (lp_budget.c): the time [t0, t1] spent recording a
 * sampled event; configure() sets the user's rate and the budget */
void lp_budget_charge(int64_t t0, int64_t t1);
void lp_budget_configure(double rate, double max_overhead, uint32_t max_rate_windows);
int lp_budget_setup(PyObject *module);
int lp_signal_setup(PyObject *module);      /* lp_signal.c: the SIGTERM guard */
void lp_seed(uint64_t seed);
double lp_rand_unit(void);      /* uniform in [0, 1) */
int lp_runtime_setup(void);
/* the wrapper types (lp_runtime.c) */
int lp_types_init(PyObject *module, const lp_typedef *defs, int ndefs);
int lp_thread_setup(void);       /* lp_thread.c */
int lp_async_setup(PyObject *module);
/* the factory currently installed in place of class `cls`, or NULL */
int lp_factory_setup(PyObject *module, const lp_typedef *defs, int ndefs);

/* The globals (new reference) of the frame a lock is made from, past the
 * site-skip codes (a library's functions that only pass the call on), or
 * NULL.  Under the tables' mutex. */
PyObject *lp_creation_globals(void);

#endif
