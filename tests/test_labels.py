"""Request labels (lockprof.labels) and the WSGI/ASGI middleware: rows keyed
by label set, labels in samples(), in pprof files read back by lockprof and
by Go's pprof, the caps, the context they follow, and real servers on
loopback (Flask on waitress, Starlette on uvicorn) grouped by endpoint."""
import asyncio
import contextvars
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

import lockprof
from lockprof._labels import collapse_path
from lockprof.export import pprof
from lockprof.export.model import Profile

ROOT = Path(__file__).resolve().parent.parent
GO = shutil.which("go")


def _handshake(lock, hold=0.02, holder_labels=None, waiter_labels=None):
    """one contention on `lock`: a holder thread (with holder_labels) holds
    it while this thread (with waiter_labels) waits"""
    held = threading.Event()

    def holder():
        with lockprof.labels(**(holder_labels or {})):
            with lock:
                held.set()
                time.sleep(hold)
    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    with lockprof.labels(**(waiter_labels or {})):
        with lock:
            pass
    t.join()


def _rows(event):
    return [s for s in lockprof.samples() if s["event"] == event]


def test_events_carry_the_labels_set_around_them():
    lockprof.start(1.0)
    lock = threading.Lock()
    _handshake(lock, holder_labels={"endpoint": "/a"},
               waiter_labels={"endpoint": "/b", "tenant": "acme"})
    with lock:                                   # no labels
        pass
    waits = _rows("contention")
    assert [s["labels"] for s in waits] == [{"endpoint": "/b", "tenant": "acme"}]
    # the delay is charged to the release that ended the wait, in /a
    assert [s["labels"] for s in _rows("delay")] == [{"endpoint": "/a"}]
    acquires = sorted(tuple(sorted(s["labels"].items())) for s in _rows("acquire"))
    assert acquires == [(), (("endpoint", "/a"),), (("endpoint", "/b"), ("tenant", "acme"))]
    c = lockprof.counters()
    assert c["label_sets"] == 2 and c["dropped_label_sets"] == 0 and c["cut_label_values"] == 0


def test_labels_nest_merge_and_restore():
    assert lockprof.current_labels() == {}
    with lockprof.labels(endpoint="/a", tenant="t1"):
        with lockprof.labels(tenant="t2", step="load"):
            assert lockprof.current_labels() == {"endpoint": "/a", "tenant": "t2",
                                                 "step": "load"}
        assert lockprof.current_labels() == {"endpoint": "/a", "tenant": "t1"}
    assert lockprof.current_labels() == {}

    @lockprof.labels(job="nightly")
    def job():
        return lockprof.current_labels()

    @lockprof.labels(job="async")
    async def ajob():
        return lockprof.current_labels()
    assert job() == {"job": "nightly"}
    assert asyncio.run(ajob()) == {"job": "async"}
    assert lockprof.current_labels() == {}
    # one object, entered twice (nested) and left twice
    lab = lockprof.labels(k="v")
    with lab:
        with lab:
            assert lockprof.current_labels() == {"k": "v"}
        assert lockprof.current_labels() == {"k": "v"}
    assert lockprof.current_labels() == {}
    assert repr(lab) == "lockprof.labels(k='v')"


@pytest.mark.parametrize("kv, err, says", [
    ({"endpoint": 3}, TypeError, "the value of 'endpoint' must be a str, got int 3"),
    ({"lock name": "x"}, ValueError, "label name 'lock name' is not accepted"),
])
def test_bad_labels_are_one_line_errors(kv, err, says):
    with pytest.raises(err) as e:
        lockprof.labels(**kv)
    assert says in str(e.value) and "\n" not in str(e.value)


def test_labels_follow_tasks_and_copied_contexts():
    lockprof.start(1.0)

    async def main():
        lock = asyncio.Lock()

        async def holder():
            async with lock:
                await asyncio.sleep(0.02)

        async def waiter():
            await asyncio.sleep(0.005)
            async with lock:           # contended: the label of the task's context
                pass
        with lockprof.labels(endpoint="/tasks"):
            h = asyncio.ensure_future(holder())
            w = asyncio.ensure_future(waiter())
        await asyncio.gather(h, w)

        # asyncio.to_thread copies the context into the worker thread
        tlock = threading.Lock()

        def in_thread():
            with tlock:
                pass
        with lockprof.labels(endpoint="/to_thread"):
            await asyncio.to_thread(in_thread) if hasattr(asyncio, "to_thread") else \
                await asyncio.get_running_loop().run_in_executor(
                    None, contextvars.copy_context().run, in_thread)
    asyncio.run(main())
    waits = _rows("contention")
    assert waits and {s["kind"] for s in waits} == {"asyncio.Lock"}
    assert all(s["labels"] == {"endpoint": "/tasks"} for s in waits), waits
    threaded = [s for s in _rows("acquire") if s["frames"][0][1] == "in_thread"]
    assert threaded and all(s["labels"] == {"endpoint": "/to_thread"} for s in threaded)


def test_label_caps_are_counted_written_and_told(tmp_path):
    lockprof.start(1.0, max_label_sets=2, max_label_value=8)
    lock = threading.Lock()
    for i in range(5):
        with lockprof.labels(endpoint=f"/route{i}"):
            with lock:
                pass
    with lockprof.labels(endpoint="/a-very-long-value"):
        with lock:
            pass
    c = lockprof.counters()
    assert c["max_label_sets"] == 2 and c["max_label_value"] == 8
    # /route0 and /route1 fit; the other four sets are past the cap.  Both
    # count events: each `with` here records two (its acquire and its hold)
    assert c["dropped_label_sets"] == 8 and c["cut_label_values"] == 2, c
    values = {}
    for r in _rows("acquire"):
        values[r["labels"]["endpoint"]] = values.get(r["labels"]["endpoint"], 0) + r["count"]
    assert values == {"/route0": 1, "/route1": 1, "<other>": 4}, values
    out = tmp_path / "p.pprof"
    lockprof.write(str(out))
    back = pprof.read(str(out))
    assert back.counters["dropped_label_sets"] == 8 and back.counters["cut_label_values"] == 2
    notes = "\n".join(back.cap_notes())
    assert "dropped_label_sets=8: max_label_sets=2 was reached" in notes
    assert "cut_label_values=2: max_label_value=8 was reached" in notes
    rep = subprocess.run([sys.executable, "-m", "lockprof", "report", "--by", "endpoint",
                          str(out)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert rep.returncode == 0, rep.stderr
    assert "lockprof: dropped_label_sets=8: max_label_sets=2" in rep.stdout
    lines = {ln.split()[0]: ln.split() for ln in rep.stdout.splitlines()[3:] if ln.strip()}
    assert lines["<other>"][-1] == "4" and lines["/route0"][-1] == "1", rep.stdout


def test_cap_after_the_limit_grows_no_further():
    lockprof.start(1.0, max_label_sets=1)
    lock = threading.Lock()
    for i in range(200):               # 200 label names: key-keyed overflow stays bounded
        with lockprof.labels(**{f"k{i}": "v"}):
            with lock:
                pass
    c = lockprof.counters()
    assert c["dropped_label_sets"] == 2 * 199        # acquire and hold events
    assert c["label_sets"] <= 1 + 16, c


def test_labels_survive_pprof_merge_and_delta(tmp_path):
    lockprof.start(1.0)
    lock = threading.Lock()
    _handshake(lock, waiter_labels={"endpoint": "/x"})
    first = lockprof.profile()
    _handshake(lock, waiter_labels={"endpoint": "/y"})
    second = lockprof.profile()
    back = pprof.loads(pprof.dumps(second))
    assert sorted(back.label_sets) == [(("endpoint", "/x"),), (("endpoint", "/y"),)]
    by = {g["value"]: g for g in back.by_label("endpoint")}
    assert by["/x"]["contentions"] == 1 and by["/y"]["contentions"] == 1
    merged = Profile.merge([back, pprof.loads(pprof.dumps(first))])
    by = {g["value"]: g for g in merged.by_label("endpoint")}
    assert by["/x"]["contentions"] == 2 and by["/y"]["contentions"] == 1
    delta = Profile.delta(first, second)
    by = {g["value"]: g for g in delta.by_label("endpoint")}
    assert by["/y"]["contentions"] == 1 and by.get("/x", {"contentions": 0})["contentions"] == 0


@pytest.mark.skipif(GO is None, reason="go (Debian package golang-go) is not installed")
def test_go_pprof_reads_the_labels(tmp_path):
    lockprof.start(1.0)
    lock = threading.Lock()
    for _ in range(3):
        _handshake(lock, waiter_labels={"endpoint": "/orders/{id}"})
    _handshake(lock, waiter_labels={"endpoint": "/health"})
    out = tmp_path / "p.pprof"
    lockprof.write(str(out))
    env = dict(os.environ, PPROF_TMPDIR=str(tmp_path))
    tags = subprocess.run([GO, "tool", "pprof", "-tags", "-sample_index=contentions", str(out)],
                          capture_output=True, text=True, timeout=120, env=env, check=True).stdout
    block = tags.split("endpoint:")[1].split("\n\n")[0]
    assert "3.0 (75.00%): /orders/{id}" in block and "1.0 (25.00%): /health" in block, tags
    focus = subprocess.run([GO, "tool", "pprof", "-top", "-sample_index=contentions",
                            "-tagfocus=endpoint=/health", str(out)], capture_output=True,
                           text=True, timeout=120, env=env, check=True).stdout
    assert "Showing nodes accounting for 1, 25.00% of 4 total" in focus, focus


def test_collapse_path():
    assert collapse_path("/orders/8812/items/3f2c9a1e-1111-2222-3333-444455556666?x=1") == \
        "/orders/{id}/items/{id}"
    assert collapse_path("/users/alice/avatar") == "/users/alice/avatar"
    assert collapse_path("/api/v2/blobs/deadbeefcafe1234") == "/api/v2/blobs/{id}"
    assert collapse_path("/" + "/".join("abcdefghijk")) == "/a/b/c/d/e/f/g/h/..."


def test_wsgi_middleware_without_a_framework_collapses_ids():
    from lockprof.wsgi import LockprofMiddleware
    lockprof.start(1.0)
    lock = threading.Lock()

    def app(environ, start_response):
        with lock:
            pass
        start_response("200 OK", [])
        yield b"streamed"               # a generator body: runs as the server iterates
        with lock:
            pass

    mw = LockprofMiddleware(app)
    for oid in (101, 202, 303):
        body = mw({"PATH_INFO": f"/orders/{oid}", "REQUEST_METHOD": "GET"},
                  lambda status, headers: None)
        assert list(body) == [b"streamed"]
        body.close()
    acq = _rows("acquire")
    assert sum(s["count"] for s in acq) == 6
    assert {s["labels"]["endpoint"] for s in acq} == {"/orders/{id}"}
    assert lockprof.counters()["label_sets"] == 1
    assert lockprof.current_labels() == {}


# -- real servers on loopback ---------------------------------------------------

FLASK_APP = '''
import sys, threading, time
import lockprof.wsgi
from flask import Flask

app = Flask(__name__)
orders_lock = threading.Lock()
stock_lock = threading.Lock()

@app.route("/orders/<int:order_id>")
def order(order_id):
    with orders_lock:
        time.sleep(0.01)
    return "order"

@app.route("/stock")
def stock():
    with stock_lock:
        time.sleep(0.01)
    return "stock"

app.wsgi_app = lockprof.wsgi.LockprofMiddleware(app.wsgi_app)

if __name__ == "__main__":
    import signal
    import waitress
    # the test stops it with SIGINT: a process started where SIGINT is
    # ignored (a background job) inherits that, and waitress sets no handler
    signal.signal(signal.SIGINT, signal.default_int_handler)
    waitress.serve(app, host="127.0.0.1", port=int(sys.argv[1]), threads=8, _quiet=True)
'''

STARLETTE_APP = '''
import asyncio, threading, time
import lockprof.asgi
from starlette.applications import Starlette
from starlette.responses import PlainTextResponse
from starlette.routing import Route

items_lock = None
report_lock = threading.Lock()

async def item(request):
    global items_lock
    if items_lock is None:
        items_lock = asyncio.Lock()
    async with items_lock:
        await asyncio.sleep(0.01)
    return PlainTextResponse("item")

def report(request):                  # sync: run on anyio's worker threads
    with report_lock:
        time.sleep(0.01)
    return PlainTextResponse("report")

app = Starlette(routes=[Route("/items/{item_id}", item), Route("/report", report)])
app.add_middleware(lockprof.asgi.LockprofMiddleware)
'''


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve_and_load(tmp_path, argv, port, paths, clients_per_path=3, requests=10):
    """run the server under `lockprof run`, send each path's requests from
    its own clients (an id-bearing path gets a new id per request), stop it
    with SIGINT, and return the profile"""
    import http.client
    out = tmp_path / "srv.pprof"
    env = dict(os.environ, PYTHONPATH=str(ROOT))
    env.pop("LOCKPROF_ENABLED", None)
    srv = subprocess.Popen([sys.executable, "-m", "lockprof", "run", "-q", "-o", str(out)]
                           + argv, cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if srv.poll() is not None or time.monotonic() > deadline:
                    raise AssertionError(srv.communicate()[1][-3000:])
                time.sleep(0.1)
        errors = []

        def client(path, k):
            try:
                c = http.client.HTTPConnection("127.0.0.1", port, timeout=60)
                for i in range(requests):
                    c.request("GET", path.format(id=k * 1000 + i))
                    r = c.getresponse()
                    r.read()
                    assert r.status == 200, (path, r.status)
                c.close()
            except Exception as e:          # reported below
                errors.append(repr(e))
        ths = [threading.Thread(target=client, args=(p, k)) for p in paths
               for k in range(clients_per_path)]
        for t in ths:
            t.start()
        for t in ths:
            t.join()
        assert not errors, errors
    finally:
        srv.send_signal(signal.SIGINT)
        try:
            _, err = srv.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            # a server still joining its threads at exit takes a second ^C,
            # as it does from a terminal
            srv.send_signal(signal.SIGINT)
            _, err = srv.communicate(timeout=60)
    assert srv.returncode == 0, err[-3000:]
    return out, pprof.read(str(out))


def _check_by_endpoint(prof, out, expect, fallbacks=()):
    """each route's group waited on its own lock only, with contentions, and
    `lockprof report --by endpoint` lists every route.  fallbacks: the
    collapsed paths, the label of events before the framework has routed
    the request (the server's own locks)"""
    groups = {g["value"]: g for g in prof.by_label("endpoint")}
    for route, lock_suffix in expect.items():
        g = groups.get(route)
        assert g is not None, (route, list(groups))
        assert g["contentions"] >= 3, (route, g)
        waited = {prof.locks[lk]["name"] for lk, w, cw in g["locks"] if w > 0}
        assert waited and all(n.endswith(lock_suffix) for n in waited), (route, waited)
    # a path with ids gives one label per route, not one per id
    assert {v for v in groups if v is not None} <= set(expect) | set(fallbacks), list(groups)
    rep = subprocess.run([sys.executable, "-m", "lockprof", "report", "--by", "endpoint",
                          str(out)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert rep.returncode == 0, rep.stderr
    table = rep.stdout.split("\n\n")[0].splitlines()[3:]
    firsts = [ln.split()[0] for ln in table]
    assert set(expect) <= set(firsts), rep.stdout
    for route, lock_suffix in expect.items():
        block = rep.stdout.split(f"\n  {route}\n")[1].split("\n  ")[0]
        assert lock_suffix in block, rep.stdout


def test_flask_on_waitress_by_endpoint(tmp_path):
    pytest.importorskip("flask")
    pytest.importorskip("waitress")
    (tmp_path / "flask_app.py").write_text(FLASK_APP)
    port = _free_port()
    out, prof = _serve_and_load(tmp_path, ["flask_app.py", str(port)], port,
                                ["/orders/{id}", "/stock"])
    _check_by_endpoint(prof, out, {"/orders/<int:order_id>": ":orders_lock",
                                   "/stock": ":stock_lock"}, ("/orders/{id}", "/stock"))


def test_starlette_on_uvicorn_by_endpoint(tmp_path):
    pytest.importorskip("starlette")
    pytest.importorskip("uvicorn")
    (tmp_path / "starlette_app.py").write_text(STARLETTE_APP)
    port = _free_port()
    out, prof = _serve_and_load(tmp_path, ["-m", "uvicorn", "starlette_app:app", "--host",
                                           "127.0.0.1", "--port", str(port), "--log-level",
                                           "warning"], port, ["/items/{id}", "/report"])
    # the sync endpoint's wait happened on a worker thread: the label came
    # with the context anyio copied there.  Recent Starlette puts the route
    # in the scope (FastAPI always did); with older ones the label is the
    # collapsed path, still one per route
    import inspect
    import starlette.routing
    template = '"route"' in inspect.getsource(starlette.routing)
    _check_by_endpoint(prof, out, {"/items/{item_id}" if template else "/items/{id}":
                                   ":items_lock", "/report": ":report_lock"},
                       ("/items/{id}", "/report"))


def test_report_by_a_bad_label_name_is_one_line(tmp_path):
    lockprof.start(1.0)
    with threading.Lock():
        pass
    out = tmp_path / "p.pprof"
    lockprof.write(str(out))
    rep = subprocess.run([sys.executable, "-m", "lockprof", "report", "--by", "9 bad",
                          str(out)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert rep.returncode == 2 and "'9 bad' is not a label name" in rep.stderr
    assert "Traceback" not in rep.stderr
    rep = subprocess.run([sys.executable, "-m", "lockprof", "report", "--by", "tenant",
                          str(out)], capture_output=True, text=True, timeout=120,
                         env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert rep.returncode == 0 and "no event carries the label 'tenant'" in rep.stdout


def test_page_groups_by_a_label_in_chromium(tmp_path):
    from tests.test_html import BROWSER, _dom
    if BROWSER is None:
        pytest.skip("no chromium on this machine (CI installs it)")
    lockprof.start(1.0)
    orders = threading.Lock()
    stock = threading.Lock()
    with orders, stock:             # named here, where the variables are (3.9, 3.10)
        pass
    for _ in range(3):
        _handshake(orders, waiter_labels={"endpoint": "/orders/{id}"})
    _handshake(stock, waiter_labels={"endpoint": "/stock"})
    path = tmp_path / "page.html"
    lockprof.write(str(path))
    plain = _dom(str(path))
    # the selector offers the label; nothing is grouped until it is chosen
    assert '<option value="endpoint">group by endpoint</option>' in plain, plain[:3000]
    import re

    def panel(dom):
        return re.search(r'<div id="bylabel"[^>]*>(.*?)</div>', dom, re.S).group(1)
    assert '<tr class="group">' not in panel(plain)
    dom = _dom(str(path), "#measure=delay&by=endpoint")
    rows = re.findall(r'<tr class="group">(.*?)</tr>', panel(dom), re.S)
    got = [(re.search(r'data-col="value">([^<]*)<', r).group(1),
            re.search(r'data-col="contentions" data-value="([^"]*)"', r).group(1),
            re.search(r'data-col="locks">([^<]*)<', r).group(1)) for r in rows]
    assert [(v, float(c)) for v, c, _ in got[:2]] == [("/orders/{id}", 3.0), ("/stock", 1.0)], got
    assert ":orders" in got[0][2] and ":stock" in got[1][2], got


DJANGO_PROG = '''
import sys, threading
import django
from django.conf import settings
settings.configure(DEBUG=False, ROOT_URLCONF=__name__, ALLOWED_HOSTS=["testserver"],
                   MIDDLEWARE=["lockprof.wsgi.DjangoMiddleware"], SECRET_KEY="x")
django.setup()
from django.http import HttpResponse
from django.test import Client
from django.urls import path
import lockprof

lockprof.start(1.0)
ledger_lock = threading.Lock()

def order(request, pk):
    with ledger_lock:
        pass
    return HttpResponse("ok")

urlpatterns = [path("orders/<int:pk>/", order)]
c = Client()
for pk in (1, 22, 333):
    assert c.get(f"/orders/{pk}/").status_code == 200
for s in lockprof.samples():
    if s["event"] == "acquire" and s["lock_name"].endswith(":ledger_lock"):
        print(s["labels"].get("endpoint"), s["count"])
'''


def test_django_middleware_labels_the_resolved_route(tmp_path):
    pytest.importorskip("django")
    (tmp_path / "dj.py").write_text(DJANGO_PROG)
    r = subprocess.run([sys.executable, str(tmp_path / "dj.py")], capture_output=True, text=True,
                       timeout=120, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr[-3000:]
    assert r.stdout.split() == ["orders/<int:pk>/", "3.0"], r.stdout
