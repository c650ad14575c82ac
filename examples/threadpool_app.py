"""A Starlette app whose requests wait where FastAPI's and Starlette's do.

- GET /report: a sync endpoint.  Starlette runs it in one of anyio's worker
  threads, and each call first takes a token of anyio's default thread
  limiter (40 tokens; this app lowers it to 4, as a busy service runs out of
  them).  Requests beyond the tokens wait for one.
- GET /balance: an async endpoint that holds an anyio.Lock across an await.

Profile it under load:

    lockprof run -o app.pprof -m uvicorn threadpool_app:app --port 8000
    (in another shell) python threadpool_app.py load http://127.0.0.1:8000 200
    (Ctrl-C the server, then) lockprof report app.pprof

The report's top rows are `anyio default thread limiter`, each wait's stack
starting at the sync endpoint it was for (`report`) and reaching the line that
called it, and
`threadpool_app.py:NN:ledger_lock`.
"""
import contextlib
import sys
import threading
import time
import urllib.request

import anyio
from starlette.applications import Starlette
from starlette.responses import JSONResponse
from starlette.routing import Route

ledger_lock = None          # made on the event loop, at start-up


def report(request):
    time.sleep(0.02)        # blocking work: a database driver, a file, a CPU burst
    return JSONResponse({"rows": 3})


async def balance(request):
    async with ledger_lock:
        await anyio.sleep(0.005)    # held across an await: one request at a time
    return JSONResponse({"balance": 100})


@contextlib.asynccontextmanager
async def lifespan(app):
    global ledger_lock
    ledger_lock = anyio.Lock()
    anyio.to_thread.current_default_thread_limiter().total_tokens = 4
    yield


app = Starlette(routes=[Route("/report", report), Route("/balance", balance)],
                lifespan=lifespan)


def load(base: str, n: int, concurrency: int = 16) -> None:
    """n GET requests, half to each endpoint, `concurrency` at a time."""
    paths = ["/report", "/balance"] * (n // 2)
    it = iter(paths)
    guard = threading.Lock()
    errors = []

    def worker():
        while True:
            with guard:
                path = next(it, None)
            if path is None:
                return
            try:
                with urllib.request.urlopen(base + path, timeout=30) as r:
                    r.read()
            except Exception as e:              # counted, shown at the end
                errors.append(f"{path}: {e}")
    threads = [threading.Thread(target=worker) for _ in range(concurrency)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise SystemExit(f"{len(errors)} request(s) failed, first: {errors[0]}")


if __name__ == "__main__":
    if len(sys.argv) >= 3 and sys.argv[1] == "load":
        load(sys.argv[2], int(sys.argv[3]) if len(sys.argv) > 3 else 200)
    else:
        raise SystemExit(f"usage: {sys.argv[0]} load BASE_URL [N]")
