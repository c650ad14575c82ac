/* lockprof runtime: events.  The hot path's slow paths (lp_runtime.c,
 * lp_async.c, the generated wrappers) report what happened to a lock here,
 * and only on sampled or contended events: a sampled acquisition, a release
 * that ends a sampled hold or that others waited for, a wait that begins,
 * ends or is abandoned, a Condition wait, a lock that is freed.  Each event
 * updates the tables (lp_record.c, lp_stack.c) and feeds the features that
 * want it (lock order, lp_order.c; the hang doctor, lp_hang.c).  Neither the
 * tables nor the features call back here: calls go from the hot path to
 * events, from events to features and tables, from features to tables.
 *
 * Owns: nothing; the state it changes is the tables' and the features'
 * (the wait period it reads is lp_budget.c's).
 * Guarded by: each event function takes the tables' mutex (lp_tables_mutex,
 * lp_thread.c) on a free-threaded build, for the whole event; under the GIL
 * the GIL guards it. */
#include "lp_record.h"
#include "lp_stack.h"

/* rate: the rate of the sampled event's gap (lp_sampled_rate); returns
 * whether it recorded a sample, *t0 the time its recording began */
static int
flush_acquire_locked(lp_wrapper *w, int kind, int start_hold, int forever, double rate,
                     int64_t *t0)
{
    if (lp_track_holds) {
        /* every acquire comes here (lp_sample_expired): the order first,
         * then the sampling decision, on a countdown of its own */
        if (start_hold) {
            lp_order_acquired(w, kind, forever);
        }
        if (!lp_order_sampled()) {
            return 0;
        }
        rate = lp_sampled_rate();
        *t0 = lp_now_ns();
    }
    lp_lockrec *r = lp_rec_for(w, kind);
    /* another thread may have stopped profiling since this event was drawn
     * (or while the name was looked up) */
    if (!lp_active || !(lp_sample_rate > 0.0) || !(rate > 0.0)) {
        return 0;
    }
    /* the event stands for its gap's events: 1 / its rate on average (the
     * budget may have changed the rate since, lp_budget.c) */
    double scale = 1.0 / rate;
    r->acq_samples++;
    r->acq_estimate += scale;
    lp_sample_add(r->id, lp_stack_here(), LP_EV_ACQUIRE, scale, 0.0);
    if (!start_hold) {
        return 1;
    }
    if (r->nholds >= r->capholds) {
        uint32_t nc = r->capholds ? r->capholds * 2 : 1;
        lp_hold *nh = lp_fault() ? NULL : PyMem_Realloc(r->holds, nc * sizeof(lp_hold));
        if (nh == NULL) {
            lp_count_error();
            return 1;
        }
        r->holds = nh;
        r->capholds = nc;
    }
    lp_hold *h = &r->holds[r->nholds++];
    h->thread = PyThread_get_thread_ident();
    h->t0 = lp_now_ns();
    r->hold_scale = scale;
    LP_WF_SET(w, LP_W_HOLDING);
    return 1;
}

void
lp_flush_acquire(lp_wrapper *w, int kind, int start_hold, int forever)
{
    /* with holds tracked every acquire comes here and the sampling is
     * decided inside; otherwise this one is sampled: its stack and task
     * are found before the mutex.  Its rate is read first: finding the
     * stack may run Python code, and another thread sample meanwhile. */
    double rate = lp_sampled_rate();
    lp_ctx c;
    int prepared = !LP_LOAD(lp_track_holds);
    int64_t t0 = 0;
    if (prepared) {
        t0 = lp_now_ns();
        lp_ctx_prepare(&c);
    }
    lp_enter();
    if (flush_acquire_locked(w, kind, start_hold, forever, rate, &t0)) {
        /* the time spent recording, for the budget (lock order's own
         * bookkeeping on every acquire is not the sampling's to limit) */
        lp_budget_charge(t0, lp_now_ns());
    }
    lp_exit();
    if (prepared) {
        lp_ctx_done(&c);
    }
}

static void
flush_release_locked(lp_wrapper *w, int64_t t_release)
{
    if (LP_WF(w) & LP_W_ORDER) {
        lp_order_released(w);
    }
    lp_lockrec *r = w->rec;
    if (r == NULL) {
        LP_WF_CLEAR(w, LP_W_ON_RELEASE);
        return;
    }
    if ((LP_WF(w) & LP_W_WAITERS) &&
        (r->release_stack == 0 || t_release - r->release_stack_ns >= LP_LOAD(lp_wait_every_ns))) {
        /* someone is blocked on this lock: this release is what they wait
         * for, and its stack is charged their delay when they get it (on a
         * lock contended without pause, the stack of its latest release at
         * most a wait period old: one capture per period, not per release) */
        LP_STORE(r->release_stack, lp_stack_here());
        r->release_thread = lp_thread_slot();
        r->release_labels = lp_labels_slot();
        LP_STORE(r->release_stack_ns, t_release);
    }
    if (!(LP_WF(w) & LP_W_HOLDING)) {
        return;
    }
    if (r->nholds == 0) {
        LP_WF_CLEAR(w, LP_W_HOLDING);
        return;
    }
    /* the hold of the releasing thread; otherwise the oldest (a Lock or a
     * Semaphore may be released by a thread other than its acquirer) */
    unsigned long me = PyThread_get_thread_ident();
    uint32_t k = 0;
    for (uint32_t i = 0; i < r->nholds; i++) {
        if (r->holds[i].thread == me) {
            k = i;
            break;
        }
    }
    int64_t held = t_release - r->holds[k].t0;
    if (held < 0) {
        held = 0;
    }
    r->hold_samples++;
    r->hold_ns_estimate += (double)held * r->hold_scale;
    /* the hold is charged to the releasing stack */
    lp_sample_add(r->id, lp_stack_here(), LP_EV_HOLD, r->hold_scale, (double)held * r->hold_scale);
    r->nholds--;
    for (uint32_t i = k; i < r->nholds; i++) {
        r->holds[i] = r->holds[i + 1];
    }
    if (r->nholds == 0) {
        LP_WF_CLEAR(w, LP_W_HOLDING);
    }
}

/* a release that ends no sampled hold and has no lock order to update,
 * whose waiters' delay is charged to a release stack captured less than a
 * wait period ago: nothing to record, and neither a capture nor the mutex
 * (read without the mutex; the record is published once, its two fields
 * written with atomic stores; a stale read only sends the release to the
 * full path) */
static int
release_is_quiet(lp_wrapper *w, int64_t t_release)
{
    uint8_t f = LP_WF(w);
    if ((f & (LP_W_HOLDING | LP_W_ORDER)) || !(f & LP_W_WAITERS)) {
        return 0;
    }
    lp_lockrec *r = LP_LOAD_ACQ(w->rec);
    return r != NULL && LP_LOAD(r->release_stack) != 0 &&
           t_release - LP_LOAD(r->release_stack_ns) < LP_LOAD(lp_wait_every_ns);
}

void
lp_flush_release(lp_wrapper *w, int64_t t_release)
{
    if (release_is_quiet(w, t_release)) {
        return;
    }
    lp_ctx c;
    uint8_t f = LP_WF(w);
    int prepared = (f & (LP_W_HOLDING | LP_W_WAITERS)) != 0;
    if (prepared) {
        lp_ctx_prepare(&c);
    }
    lp_enter();
    flush_release_locked(w, t_release);
    if (prepared) {
        /* the end of a sampled hold, or a release others waited for (its
         * stack, once per wait period): charged to the budget, from the
         * release's clock read (lp_budget.c) */
        lp_budget_charge(t_release, lp_now_ns());
    }
    lp_exit();
    if (prepared) {
        lp_ctx_done(&c);
    }
}

static void
wait_begin_locked(lp_wrapper *w, int kind, int bounded)
{
    lp_lockrec *r = lp_rec_for(w, kind);
    r->nwaiting++;
    LP_WF_SET(w, LP_W_WAITERS);
    if (lp_hang_ns) {
        lp_hang_wait_begin(w, kind, bounded);
    }
}

void
lp_wait_begin(lp_wrapper *w, int kind, int bounded)
{
    lp_enter();
    wait_begin_locked(w, kind, bounded);
    lp_exit();
}

static void
wait_abort_locked(lp_wrapper *w)
{
    lp_lockrec *r = w->rec;
    if (lp_hang_ns) {
        lp_hang_wait_end(w, r != NULL ? r->kind : -1);
    }
    if (r != NULL && r->nwaiting > 0 && --r->nwaiting == 0) {
        LP_WF_CLEAR(w, LP_W_WAITERS);
    }
}

void
lp_wait_abort(lp_wrapper *w)
{
    lp_enter();
    wait_abort_locked(w);
    lp_exit();
}

static void
record_forget_holds_locked(lp_wrapper *w)
{
    if (w->rec != NULL) {
        w->rec->nholds = 0;
        w->rec->nwaiting = 0;
    }
    LP_WF_CLEAR(w, LP_W_ON_RELEASE);
}

void
lp_record_forget_holds(lp_wrapper *w)
{
    lp_enter();
    record_forget_holds_locked(w);
    lp_exit();
}

/* Stacks of waits are sampled in proportion to the time waited: a wait of
 * at least the period in force (lp_wait_every_ns, lp_budget.c) is always
 * kept, a shorter one with probability wait/period and then weighted by
 * period/wait, so the scaled totals are unbiased.  (The per-lock counters
 * above are exact.) */

/* whether a wait of wait_ns keeps its stack, and with what probability p:
 * drawn from the thread's own generator, before the tables' mutex */
typedef struct {
    double p;
    int keep;
} lp_wait_draw;

static lp_wait_draw
draw_wait(int64_t wait_ns)
{
    double w = wait_ns > 0 ? (double)wait_ns : 1.0;
    int64_t period = LP_LOAD(lp_wait_every_ns);
    lp_wait_draw d;
    d.p = w >= (double)period ? 1.0 : w / (double)period;
    d.keep = d.p >= 1.0 || lp_rand_unit() < d.p;
    return d;
}

static void
sample_wait(lp_lockrec *r, int event, int64_t wait_ns, int at_release, lp_wait_draw d)
{
    double p = d.p;
    if (!d.keep) {
        return;
    }
    if (at_release) {
        lp_sample_add_for(r->id, r->release_stack, event, 1.0 / p, (double)wait_ns / p,
                          r->release_thread, UINT32_MAX, r->release_labels);
    }
    else {
        lp_sample_add(r->id, lp_stack_here(), event, 1.0 / p, (double)wait_ns / p);
    }
}

static void
flush_contended_locked(lp_wrapper *w, int kind, int64_t wait_ns, int acquired, lp_wait_draw d)
{
    lp_lockrec *r = lp_rec_for(w, kind);
    if (lp_hang_ns) {
        lp_hang_wait_end(w, kind);
    }
    r->contentions++;
    if (!acquired) {
        r->timeouts++;
    }
    r->wait_ns += wait_ns;
    if (wait_ns > r->max_wait_ns) {
        r->max_wait_ns = wait_ns;
    }
    sample_wait(r, LP_EV_CONTENTION, wait_ns, 0, d);
    /* Go's mutex profile: the delay is also charged to the release that
     * ended the wait, so the critical section that made others wait shows.
     * The same draw: each event type's totals stay unbiased on their own,
     * and a contended acquire pays one draw. */
    sample_wait(r, LP_EV_DELAY, wait_ns, 1, d);
    if (r->nwaiting > 0 && --r->nwaiting == 0) {
        LP_WF_CLEAR(w, LP_W_WAITERS);
    }
}

static void
flush_cond_wait_locked(lp_wrapper *w, int kind, int64_t wait_ns, lp_wait_draw d)
{
    lp_lockrec *r = lp_rec_for(w, kind);
    r->cond_waits++;
    r->cond_wait_ns += wait_ns;
    sample_wait(r, LP_EV_COND_WAIT, wait_ns, 0, d);
}

/* A wait has ended: its exact figures, and its stack when the draw keeps
 * it (captured outside the mutex, charged to the budget).  `cond`: a
 * Condition's wait, else a lock's contended acquire (`acquired`: it got
 * the lock).  Inlined where the arguments are constants. */
static inline void
record_wait(lp_wrapper *w, int kind, int64_t wait_ns, int acquired, int cond)
{
    lp_wait_draw d = draw_wait(wait_ns);
    lp_ctx c;
    int64_t t0 = 0;
    if (LP_UNLIKELY(d.keep)) {
        t0 = lp_now_ns();       /* a kept stack is charged to the budget */
        lp_ctx_prepare(&c);     /* the stack, outside the mutex */
    }
    lp_enter();
    if (cond) {
        flush_cond_wait_locked(w, kind, wait_ns, d);
    }
    else {
        flush_contended_locked(w, kind, wait_ns, acquired, d);
    }
    if (LP_UNLIKELY(d.keep)) {
        lp_budget_charge(t0, lp_now_ns());
    }
    lp_exit();
    if (LP_UNLIKELY(d.keep)) {
        lp_ctx_done(&c);
    }
}

void
lp_flush_contended(lp_wrapper *w, int kind, int64_t wait_ns, int acquired)
{
    record_wait(w, kind, wait_ns, acquired, 0);
}

void
lp_flush_cond_wait(lp_wrapper *w, int kind, int64_t wait_ns)
{
    record_wait(w, kind, wait_ns, 0, 1);
}

/* A contended acquire without arguments, whole: the generated slow path
 * calls this once its non-blocking try failed.  The wait's begin, the
 * acquire (the caller waits there, timed) and the wait's end are one call,
 * their helpers inlined, where lp_acquire_slow makes several.  Like every
 * wait, it gives up the tables' mutex if this thread holds it (a finaliser
 * run during a flush). */
PyObject *
lp_acquire_waited(lp_wrapper *w, int kind, PyObject *target, const lp_method *acquire)
{
    if (LP_UNLIKELY(!LP_LOAD(lp_active))) {
        return lp_call0(acquire, target);
    }
    uint32_t held = lp_suspend();
    if (LP_LOAD(lp_lock_order)) {
        lp_wait_unbounded(w, kind);
    }
    lp_wait_begin(w, kind, 0);
    int64_t t0 = lp_now_ns();
    PyObject *r = lp_call0(acquire, target);
    int64_t wait_ns = lp_now_ns() - t0;
    if (r != NULL) {
        record_wait(w, kind, wait_ns, LP_ACQUIRED(r), 0);
    }
    else {
        lp_wait_abort(w);
    }
    lp_resume(held);
    return r;
}


void
lp_lock_freed(lp_wrapper *w)
{
    lp_enter();
    if (LP_WF(w) & LP_W_ORDER) {
        lp_order_forget(w);
    }
    lp_record_orphan(w);
    lp_exit();
}

/* an acquire that can wait without end is about to block (lock order: its
 * edges are recorded before, so that a deadlock that happens is reported) */
void
lp_wait_unbounded(lp_wrapper *w, int kind)
{
    lp_enter();
    lp_order_attempt(w, kind);
    lp_exit();
}

/* a lock retaken by a Condition's wait: held again, no new edge */
void
lp_reacquired(lp_wrapper *w, int kind)
{
    lp_enter();
    lp_order_reacquired(w, kind);
    lp_exit();
}
