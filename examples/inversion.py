"""Two functions take two locks in opposite orders, in two threads, one after
the other: it never deadlocks here, and lockprof run --lock-order reports it."""
import threading

ledger_lock = threading.Lock()
audit_lock = threading.Lock()


def post():
    with ledger_lock:
        with audit_lock:
            pass


def audit():
    with audit_lock:
        with ledger_lock:
            pass


for fn in (post, audit):
    t = threading.Thread(target=fn, name=fn.__name__)
    t.start()
    t.join()
