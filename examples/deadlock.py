"""Two threads take two locks in opposite orders at the same time: a real
deadlock.  `lockprof run --hang-timeout 1 examples/deadlock.py` names both
threads, both locks, their holders and the cycle while they hang; the
program itself gives up after 3 seconds (its threads are daemons)."""
import threading
import time

ledger_lock = threading.Lock()
audit_lock = threading.Lock()
both_hold_one = threading.Barrier(2)


def post():
    with ledger_lock:
        both_hold_one.wait()
        with audit_lock:
            pass


def audit():
    with audit_lock:
        both_hold_one.wait()
        with ledger_lock:
            pass


threads = [threading.Thread(target=fn, name=fn.__name__, daemon=True) for fn in (post, audit)]
for t in threads:
    t.start()
give_up = time.monotonic() + 3
for t in threads:
    t.join(max(0.0, give_up - time.monotonic()))
print("still waiting after 3 s:", ", ".join(t.name for t in threads if t.is_alive()) or "none")
