"""A small bank: worker threads move money between accounts under locks.

The global ledger lock is the bottleneck on purpose; lockprof should find it.
Run it under the profiler with:  cd examples && python -m lockprof run bank.py
"""
import queue
import threading
import time

N_ACCOUNTS = 20
N_WORKERS = 4
N_TRANSFERS = 3000

ledger_lock = threading.Lock()          # every transfer writes the ledger
ledger = []


class Account:
    def __init__(self, number, balance):
        self.number = number
        self.balance = balance
        self.lock = threading.RLock()


def transfer(src, dst, amount):
    first, second = sorted((src, dst), key=lambda a: a.number)
    with first.lock:
        with second.lock:
            if src.balance >= amount:
                src.balance -= amount
                dst.balance += amount
    with ledger_lock:
        ledger.append((src.number, dst.number, amount))
        time.sleep(0.00002)             # a slow audit write, inside the lock


def auditor(accounts, done):
    # every few milliseconds, a consistent total: all account locks, in order
    while not done.wait(0.005):
        held = []
        for a in accounts:
            a.lock.acquire()
            held.append(a)
        try:
            total = sum(a.balance for a in accounts)
            time.sleep(0.0005)          # a slow consistency check, inside the locks
        finally:
            for a in reversed(held):
                a.lock.release()
        assert total == len(accounts) * 1000


def worker(jobs, accounts):
    while True:
        job = jobs.get()
        if job is None:
            return
        i, j, amount = job
        transfer(accounts[i], accounts[j], amount)


def main():
    accounts = [Account(n, 1000) for n in range(N_ACCOUNTS)]
    jobs = queue.Queue(maxsize=100)
    threads = [threading.Thread(target=worker, args=(jobs, accounts)) for _ in range(N_WORKERS)]
    done = threading.Event()
    audit = threading.Thread(target=auditor, args=(accounts, done), name="auditor")
    audit.start()
    for t in threads:
        t.start()
    for k in range(N_TRANSFERS):
        i, j = k % N_ACCOUNTS, (k * 7 + 3) % N_ACCOUNTS
        if i != j:
            jobs.put((i, j, 1 + k % 50))
    for _ in threads:
        jobs.put(None)
    for t in threads:
        t.join()
    done.set()
    audit.join()
    total = sum(a.balance for a in accounts)
    print(f"bank: {len(ledger)} transfers, total balance {total}")
    assert total == N_ACCOUNTS * 1000


if __name__ == "__main__":
    main()
