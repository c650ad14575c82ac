/* lockprof runtime: stack capture/interning and the per-(lock, stack) samples. */
#ifndef LOCKPROF_STACK_H
#define LOCKPROF_STACK_H

#include "lp_runtime.h"

enum { LP_EV_ACQUIRE = 0, LP_EV_CONTENTION = 1, LP_EV_HOLD = 2, LP_EV_COND_WAIT = 3,
       LP_EV_DELAY = 4 };

extern int lp_max_frames;
extern uint32_t lp_max_samples;     /* (lock, stack, event, thread) rows kept */
extern uint64_t lp_dropped_stacks, lp_dropped_samples;

/* The current Python stack, interned (0 when it could not be recorded). */
uint32_t lp_stack_here(void);
/* one recorded stack sample: `estimate` events (already scaled by the
 * inverse of its sampling probability) worth `value` ns in total */
void lp_sample_add(uint32_t rec, uint32_t stack, int event, double estimate, double value);
/* the same, attributed to thread slot `thread` instead of the current one */
void lp_sample_add_for(uint32_t rec, uint32_t stack, int event, double estimate, double value,
                       uint32_t thread, uint32_t task);
/* the current thread's slot in the thread table */
uint32_t lp_thread_slot(void);
void lp_samples_reset(void);
/* after records were merged: rows of record r become rows of newid[r] (r in
 * 1..n; 0, the overflow record, stays), rows that now share a key are summed.
 * Returns -1 (rows left as they were) when memory runs out. */
int lp_samples_remap(const uint32_t *newid, uint32_t n);
/* samples() of the Python API: one tuple per sample row */
PyObject *lp_py_samples(PyObject *mod, PyObject *unused);
int lp_stack_setup(PyObject *module);

#endif
