/* lockprof runtime: the CPU budget (max_overhead).
 *
 * A sampled acquisition, and the release that ends the hold it started,
 * each capture a stack: most of lockprof's cost beyond the hot path.  At a
 * fixed rate a program taking millions of locks a second pays for them in
 * proportion.  The events that record them (lp_event.c) read the clock
 * before and after and charge the difference here.  Over a window of about
 * a second the charged time is set against max_overhead times the window's
 * wall time, and the rate in force is scaled by their ratio (aiming at 90%
 * of the budget): down when over it, back up (at most 16x a second) as the load falls, never below
 * the floor (the user's rate / 10,000) nor above the user's rate.  A burst
 * that has spent twice the budget of the time elapsed ends its window at
 * once.  The first 2 ms of recording after start() are not judged: a short
 * program at rate 1 counts every acquisition.  Windows follow each other
 * (each starts where the last ended), and a window ends at a recorded
 * event (nothing else reads the clock):
 * at a lowered rate p, after the load fell from E to E' events a second,
 * the next one comes after about 1 / (p E') = (E / E') x (cost / budget)
 * seconds, under a second for a 10,000-fold fall.  The stacks of waits
 * and of the releases they waited for are charged too, and cut by the same
 * factor (lp_wait_period_scale: the wait period grows); the contentions and
 * waits themselves stay exact.
 *
 * Estimates stay unbiased: a new rate makes every thread draw a fresh
 * geometric gap (lp_sampling_set_rate), and each sampled event is weighted
 * by the inverse of the rate its gap was drawn under (lp_sampled_rate).
 *
 * Owns: the budget's settings (max_overhead, the user's rate, the wait
 * period: lp_wait_period_ns, and lp_wait_every_ns, the period in force), its window
 * (start, time charged), its totals, and the history of the rate (a ring of
 * the latest max_rate_windows changes, the oldest dropped and counted).
 * Guarded by: the tables' mutex (lp_tables_mutex, lp_thread.c) on a
 * free-threaded build: events charge holding it, and the Python functions
 * run holding it (lp_add_functions); the GIL otherwise.
 * Calls: lp_thread.c (the rate). */
#include "lp_record.h"

#include <math.h>

#define WINDOW_NS 1000000000LL          /* a budget window: about a second */
#define BURST_MIN_NS 50000000LL         /* a burst is judged over 50 ms at least */
#define MAX_RAISE 16.0                  /* the rate rises at most 16x a second */
#define FLOOR_DIVISOR 10000.0           /* floor = the user's rate / 10,000 */
#define ALLOWANCE_NS 2000000LL          /* the first 2 ms of recording are free */
#define TARGET 0.9                      /* the share of the budget aimed at */

typedef struct {
    int64_t t_ns;       /* CLOCK_MONOTONIC */
    double rate;
} rate_change;

/* The stacks of waits are sampled in proportion to the time waited (read
 * by lp_event.c): a wait of at least the period in force is always kept, a
 * shorter one with probability wait/period and then weighted by
 * period/wait, so the scaled totals are unbiased.  The period in force is
 * the user's (wait_period_ns) times the budget's cut of the rate. */
int64_t lp_wait_period_ns = 1000000;
int64_t lp_wait_every_ns = 1000000;

static double max_overhead = 0.01;      /* a fraction of wall time; 0: none */
static double user_rate = 0.0;
static int64_t win_start = 0;           /* 0: none yet (the first opens at an event) */
static int64_t win_spent = 0;
static uint64_t total_ns = 0;           /* charged since the last reset */
static int64_t since_configure = 0;     /* charged since configure(), to ALLOWANCE_NS */
static uint64_t lowered = 0;            /* windows that lowered the rate */
static uint64_t dropped_changes = 0;
static uint32_t max_changes = 3600;
static rate_change *ring = NULL;
static uint32_t ring_cap = 0, ring_head = 0, ring_len = 0;

static void
remember(int64_t t, double rate)
{
    if (ring_cap != max_changes) {
        /* resized (or first use): the history starts again */
        rate_change *r = lp_fault() ? NULL : PyMem_Realloc(ring, max_changes * sizeof(*ring));
        if (r == NULL) {
            lp_count_error();
            return;
        }
        ring = r;
        ring_cap = max_changes;
        ring_head = ring_len = 0;
    }
    if (ring_len == ring_cap) {
        ring_head = (ring_head + 1) % ring_cap;
        ring_len--;
        dropped_changes++;
    }
    ring[(ring_head + ring_len) % ring_cap] = (rate_change){t, rate};
    ring_len++;
}

/* Under the CPU budget the stacks of waits cost CPU too: when the budget
 * cuts the sampling rate by a factor, the wait period grows by it, so a
 * wait keeps its stack with probability wait/(period x factor), weighted
 * by the inverse (unbiased, as before).  Contentions and waits stay exact:
 * only the capture of stacks is cut.  This matters where many tasks wait at
 * once: waits add up faster than wall time, and so would captures. */
void
lp_wait_period_scale(double scale)
{
    double every = (double)LP_LOAD(lp_wait_period_ns) * (scale > 1.0 ? scale : 1.0);
    LP_STORE(lp_wait_every_ns, every < 9.0e18 ? (int64_t)every : (int64_t)9000000000000000000LL);
}

static void
end_window(int64_t now, int64_t elapsed)
{
    double cur = lp_sample_rate;
    double used = elapsed > 0 ? (double)win_spent / (double)elapsed : 1.0;
    /* aimed at 90% of the budget: the windows' noise and the change's lag
     * stay inside it */
    double next = used > 0.0 ? cur * (TARGET * max_overhead / used) : user_rate;
    /* up at most MAX_RAISE a second: a window that lasted long (events
     * came rarely at the lowered rate) may raise it that much more */
    double raise = pow(MAX_RAISE, (double)elapsed / (double)WINDOW_NS);
    if (next > cur * raise) {
        next = cur * raise;
    }
    double floor = user_rate / FLOOR_DIVISOR;
    if (next > user_rate) {
        next = user_rate;
    }
    if (next < floor) {
        next = floor;
    }
    /* the next window starts here, not at its first event: the quiet time
     * before a rare event is wall time it is set against, so one slow
     * event (its thread preempted while recording, a collection) after a
     * quiet spell does not pass for a burst */
    win_start = now;
    win_spent = 0;
    /* a change of under 5% is not worth every thread's redraw, unless it
     * reaches a bound */
    double ratio = cur > 0.0 ? next / cur : 2.0;
    if (next != cur && (ratio < 0.95 || ratio > 1.05 || next == user_rate || next == floor)) {
        if (next < cur) {
            lowered++;
        }
        lp_sampling_set_rate(next);
        lp_wait_period_scale(user_rate / next);
        remember(now, next);
    }
}

void
lp_budget_charge(int64_t t0, int64_t t1)
{
    int64_t cost = t1 - t0;
    if (cost <= 0) {
        return;
    }
    total_ns += (uint64_t)cost;
    if (!(max_overhead > 0.0) || !LP_LOAD(lp_active) || !(user_rate > 0.0)) {
        return;
    }
    if (since_configure < ALLOWANCE_NS) {
        /* a short program (a test, a script's start-up) at rate 1 still
         * counts every acquisition: the budget acts once it matters */
        since_configure += cost;
        return;
    }
    if (win_start == 0) {
        win_start = t0;
    }
    win_spent += cost;
    int64_t elapsed = t1 - win_start;
    if (elapsed < WINDOW_NS) {
        int64_t judged = elapsed > BURST_MIN_NS ? elapsed : BURST_MIN_NS;
        if ((double)win_spent <= 2.0 * max_overhead * (double)judged) {
            return;
        }
    }
    end_window(t1, elapsed);
}

/* configure(): the user's rate is the rate again; the history starts */
void
lp_budget_configure(double rate, double overhead, uint32_t max_windows)
{
    user_rate = rate;
    max_overhead = overhead;
    since_configure = 0;
    max_changes = max_windows;
    win_start = 0;
    win_spent = 0;
    ring_len = 0;
    ring_head = 0;
    lp_wait_period_scale(1.0);
    remember(lp_now_ns(), rate);
}

static PyObject *
lp_py_budget_state(PyObject *mod, PyObject *args)
{
    int reset = 0;
    if (!PyArg_ParseTuple(args, "|p:budget_state", &reset)) {
        return NULL;
    }
    PyObject *rates = PyList_New(0);
    if (rates == NULL) {
        return NULL;
    }
    for (uint32_t i = 0; i < ring_len; i++) {
        rate_change *c = &ring[(ring_head + i) % ring_cap];
        PyObject *t = Py_BuildValue("(Ld)", (long long)c->t_ns, c->rate);
        if (t == NULL || PyList_Append(rates, t) < 0) {
            Py_XDECREF(t);
            Py_DECREF(rates);
            return NULL;
        }
        Py_DECREF(t);
    }
    PyObject *out = Py_BuildValue(
        "{s:N,s:d,s:d,s:d,s:K,s:K,s:K,s:I}", "rates", rates, "rate", lp_sample_rate,
        "user_rate", user_rate, "max_overhead", max_overhead, "recording_ns",
        (unsigned long long)total_ns, "rate_cuts", (unsigned long long)lowered,
        "dropped_rate_windows", (unsigned long long)dropped_changes, "max_rate_windows",
        (unsigned int)max_changes);
    if (out != NULL && reset) {
        /* the next profile starts with the rate in force now */
        total_ns = 0;
        lowered = 0;
        dropped_changes = 0;
        ring_len = 0;
        ring_head = 0;
        remember(lp_now_ns(), lp_sample_rate);
    }
    return out;
}

static PyMethodDef budget_methods[] = {
    {"budget_state", lp_py_budget_state, METH_VARARGS,
     "budget_state(reset=False)\n--\n\n"
     "The CPU budget: the rate in force, its changes [(monotonic ns, rate)], the\n"
     "time charged to recording and its counters; reset starts them again."},
    {NULL, NULL, 0, NULL},
};

int
lp_budget_setup(PyObject *module)
{
    return lp_add_functions(module, budget_methods);
}
