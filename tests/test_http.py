"""The live endpoint (--http, LOCKPROF_HTTP, start(http=...)): a live
process read by Go's own pprof client over loopback, Go's `?seconds=N` delta,
the index and pages, the token, a port in use, and forked workers binding
nothing."""
import os
import re
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.error
import urllib.request
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
GO = shutil.which("go")
needs_go = pytest.mark.skipif(GO is None, reason="go (Debian package golang-go) is not installed")

# a program that serves its profile, then makes `n` contentions on
# `ledger_lock` by handshakes each time a line comes on stdin, and says when
# it is done; "quit" ends it
PROGRAM = """
import sys, threading, time
import lockprof
lockprof.start(1.0, http=sys.argv[1])
from lockprof import _http
srv = _http.current()
print("URL", srv.url if srv else None, flush=True)
ledger_lock = threading.Lock()

def handshakes(n):
    for _ in range(n):
        held = threading.Event()
        def holder():
            with ledger_lock:
                held.set()
                time.sleep(0.02)
        t = threading.Thread(target=holder)
        t.start()
        held.wait()
        with ledger_lock:
            pass
        t.join()

for line in sys.stdin:
    if line.strip() == "quit":
        break
    handshakes(int(line))
    print("done", flush=True)
"""


class Program:
    def __init__(self, tmp_path, address="127.0.0.1:0", env=None):
        script = tmp_path / "prog.py"
        script.write_text(PROGRAM)
        e = dict(os.environ, PYTHONPATH=str(ROOT), **(env or {}))
        for k in ("LOCKPROF_ENABLED", "LOCKPROF_HTTP_TOKEN"):
            if k not in (env or {}):
                e.pop(k, None)
        self.p = subprocess.Popen([sys.executable, str(script), address], stdin=subprocess.PIPE,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                                  env=e)
        first = self.p.stdout.readline().split()
        assert first and first[0] == "URL", self.p.stderr.read()
        self.url = None if first[1] == "None" else first[1]

    def contend(self, n):
        self.p.stdin.write(f"{n}\n")
        self.p.stdin.flush()
        assert self.p.stdout.readline().strip() == "done"

    def close(self):
        try:
            self.p.stdin.write("quit\n")
            self.p.stdin.flush()
        except BrokenPipeError:
            pass
        self.p.wait(30)
        return self.p.stderr.read()


def _get(url, headers=None, timeout=30):
    req = urllib.request.Request(url, headers=headers or {})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as r:
            return r.status, r.read(), dict(r.headers)
    except urllib.error.HTTPError as e:
        return e.code, e.read(), dict(e.headers)


@needs_go
def test_go_reads_a_live_process_and_a_delta(tmp_path):
    prog = Program(tmp_path)
    try:
        prog.contend(5)
        base = prog.url
        raw = subprocess.run([GO, "tool", "pprof", "-raw", base + "mutex"], capture_output=True,
                             text=True, timeout=120, check=True,
                             env=dict(os.environ, PPROF_TMPDIR=str(tmp_path))).stdout
        sample_types = raw.split("Samples:")[1].strip().splitlines()[0].split()
        assert [t.replace("[dflt]", "") for t in sample_types[:2]] == [
            "contentions/count", "delay/nanoseconds"], sample_types
        top = subprocess.run([GO, "tool", "pprof", "-top", "-sample_index=contentions",
                              base + "mutex"], capture_output=True, text=True, timeout=120,
                             check=True, env=dict(os.environ, PPROF_TMPDIR=str(tmp_path))).stdout
        assert re.search(r"Total samples = 5\b", top), top

        # idle: a delta over 2 seconds holds no contention
        status, body, _ = _get(base + "mutex?seconds=2&debug=1")
        assert status == 200 and b"(no lock events recorded)" in body, body

        # during load: that load's contentions only (3, not 5 + 3)
        import threading
        got = {}

        def scrape():
            got["r"] = subprocess.run([GO, "tool", "pprof", "-top", "-sample_index=contentions",
                                       base + "mutex?seconds=3"], capture_output=True, text=True,
                                      timeout=120, env=dict(os.environ,
                                                            PPROF_TMPDIR=str(tmp_path)))
        t = threading.Thread(target=scrape)
        t.start()
        time.sleep(0.5)
        prog.contend(3)
        t.join()
        assert got["r"].returncode == 0, got["r"].stderr
        assert re.search(r"Total samples = 3\b", got["r"].stdout), got["r"].stdout
    finally:
        err = prog.close()
    assert "serving the lock profile at http://127.0.0.1:" in err


def test_index_pages_and_errors(tmp_path):
    prog = Program(tmp_path)
    try:
        prog.contend(2)
        base = prog.url
        status, body, headers = _get(base)
        assert status == 200 and b'href="mutex?debug=1"' in body
        assert headers["Content-Type"].startswith("text/html")
        status, body, _ = _get(base.replace("/debug/pprof/", "/lockprof/report"))
        assert status == 200 and b"prog.py:8:ledger_lock" in body, body
        status, body, _ = _get(base.replace("/debug/pprof/", "/lockprof/"))
        assert status == 200 and b"ledger_lock" in body
        status, body, headers = _get(base + "mutex")
        assert status == 200 and body[:2] == b"\x1f\x8b"       # gzip
        for bad, code, says in (("mutex?seconds=abc", 400, b"seconds='abc'"),
                                ("mutex?seconds=0", 400, b"[1, 3600]"),
                                ("mutex?debug=7", 400, b"debug='7'"),
                                ("goroutine", 404, b"no page '/debug/pprof/goroutine'")):
            status, body, _ = _get(base + bad)
            assert status == code and says in body and body.count(b"\n") == 1, (bad, body)
        req = urllib.request.Request(base + "mutex", data=b"x", method="POST")
        with pytest.raises(urllib.error.HTTPError) as e:
            urllib.request.urlopen(req, timeout=30)
        assert e.value.code == 405
    finally:
        prog.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_a_public_address_needs_a_token(tmp_path):
    # refused at start, in one line; the program runs on
    prog = Program(tmp_path, address=f"0.0.0.0:{_free_port()}")
    try:
        assert prog.url is None
        prog.contend(1)
    finally:
        err = prog.close()
    lines = [x for x in err.splitlines() if x.startswith("lockprof")]
    assert len(lines) == 1 and "needs a token: set LOCKPROF_HTTP_TOKEN" in lines[0], err
    assert "Traceback" not in err

    # with one, a request without it gets 401, with it 200
    prog = Program(tmp_path, address=f"0.0.0.0:{_free_port()}",
                   env={"LOCKPROF_HTTP_TOKEN": "s3cret"})
    try:
        url = prog.url.replace("0.0.0.0", "127.0.0.1")
        status, body, headers = _get(url + "mutex")
        assert status == 401 and headers.get("WWW-Authenticate", "").startswith("Bearer")
        status, _, _ = _get(url + "mutex", {"Authorization": "Bearer wrong"})
        assert status == 401
        status, body, _ = _get(url + "mutex", {"Authorization": "Bearer s3cret"})
        assert status == 200 and body[:2] == b"\x1f\x8b"
    finally:
        prog.close()


def test_a_port_in_use_is_one_line_and_the_program_runs(tmp_path):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        prog = Program(tmp_path, address=str(port))
        try:
            assert prog.url is None
            prog.contend(1)
        finally:
            err = prog.close()
    lines = [x for x in err.splitlines() if x.strip()]
    assert len(lines) == 1 and f"cannot serve on 127.0.0.1:{port}" in lines[0], err


def test_bad_address_is_a_one_line_cli_error(tmp_path):
    (tmp_path / "x.py").write_text("pass\n")
    r = subprocess.run([sys.executable, "-m", "lockprof", "run", "--http", "localhost:http",
                        "x.py"], capture_output=True, text=True, timeout=60, cwd=tmp_path,
                       env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 2, r
    err = [x for x in r.stderr.splitlines() if x.strip()]
    assert len(err) == 1 and "'localhost:http' is not an address to serve on" in err[-1], r.stderr


def test_lockprof_run_serves_and_forked_children_bind_nothing(tmp_path):
    port = _free_port()
    (tmp_path / "app.py").write_text(textwrap.dedent(f"""
        import os, socket, urllib.request
        pid = os.fork()
        if pid == 0:
            # the worker: the parent's port is not open in here
            from lockprof import _http
            os._exit(0 if _http.current() is None else 3)
        _, status = os.waitpid(pid, 0)
        body = urllib.request.urlopen("http://127.0.0.1:{port}/debug/pprof/", timeout=30).read()
        print(os.waitstatus_to_exitcode(status) if hasattr(os, "waitstatus_to_exitcode")
              else status >> 8, b"/debug/pprof/" in body)
    """))
    r = subprocess.run([sys.executable, "-m", "lockprof", "run", "-q", "--http", str(port),
                        "-o", "out.pprof", "app.py"], capture_output=True, text=True,
                       timeout=120, cwd=tmp_path, env=dict(os.environ, PYTHONPATH=str(ROOT)))
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "True"], (r.stdout, r.stderr)


APP = """
import threading, time
ledger_lock = threading.Lock()

def app(environ, start_response):
    # one contention per request, by a handshake with a helper thread
    held = threading.Event()
    def holder():
        with ledger_lock:
            held.set()
            time.sleep(0.01)
    t = threading.Thread(target=holder)
    t.start()
    held.wait()
    with ledger_lock:
        pass
    t.join()
    start_response("200 OK", [("Content-Type", "text/plain")])
    return [b"ok"]
"""


def test_pre_fork_server_one_endpoint_sums_the_workers(tmp_path):
    """gunicorn with 2 sync workers under `lockprof run --http`: the master's
    endpoint shows the app's lock with exactly the requests' contentions,
    the sum of the files the workers write at exit."""
    pytest.importorskip("gunicorn")
    import signal
    import threading
    from lockprof.export import pprof
    (tmp_path / "wsgiapp.py").write_text(APP)
    port, admin = _free_port(), _free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), str(tmp_path)]))
    env.pop("LOCKPROF_ENABLED", None)
    srv = subprocess.Popen([sys.executable, "-m", "lockprof", "run", "-q", "--sample-rate", "1",
                            "--http", str(admin), "-o", str(tmp_path / "g.pprof"), "-m",
                            "gunicorn", "-w", "2", "-b", f"127.0.0.1:{port}", "wsgiapp:app"],
                           cwd=tmp_path, env=env, stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=5).read()
                break
            except OSError:
                assert time.monotonic() < deadline and srv.poll() is None, srv.stderr.read()
                time.sleep(0.2)
        n = 40

        def client(k):
            for _ in range(k):
                assert urllib.request.urlopen(f"http://127.0.0.1:{port}/",
                                              timeout=30).read() == b"ok"
        clients = [threading.Thread(target=client, args=(n // 4,)) for _ in range(4)]
        for c in clients:
            c.start()
        for c in clients:
            c.join()
        total = n + 1                        # and the readiness probe's
        status, body, _ = _get(f"http://127.0.0.1:{admin}/debug/pprof/mutex")
        assert status == 200
        merged = pprof.loads(body)
        rows = [lk for lk in merged.locks if lk["name"].endswith("wsgiapp.py:3:ledger_lock")]
        assert len(rows) == 1 and rows[0]["contentions"] == total, merged.locks
    finally:
        srv.send_signal(signal.SIGTERM)
        srv.wait(60)
    files = [f for f in tmp_path.glob("g.*.pprof")]
    own = sum(lk["contentions"] for f in files for lk in pprof.read(str(f)).locks
              if lk["name"].endswith("wsgiapp.py:3:ledger_lock"))
    assert len(files) >= 2 and own == total, (files, own)


def test_clients_past_the_cap_get_503_counted_in_the_profile():
    import lockprof
    from lockprof import _http
    lockprof.start(1.0, http="127.0.0.1:0", http_max_clients=1)
    try:
        base = _http.current().url
        host, port = _http.current().host, _http.current().port
        idle = socket.create_connection((host, port), timeout=10)   # holds the one slot
        try:
            time.sleep(0.2)
            status, _, headers = _get(base + "mutex")
            assert status == 503 and headers.get("Retry-After") == "1"
        finally:
            idle.close()
        deadline = time.monotonic() + 30
        while True:
            status, body, _ = _get(base + "mutex?debug=1")
            if status == 200 or time.monotonic() > deadline:
                break
            time.sleep(0.1)
        assert status == 200
        # the 503 above, and any the retries here got while the slot was freed
        assert re.search(rb"dropped_http_clients=[1-9]\d*: http_max_clients=1 was reached",
                         body), body
        for _ in range(100):        # a slot frees just after its response is sent
            status, raw, _ = _get(base + "mutex")
            if status == 200:
                break
            time.sleep(0.1)
        from lockprof.export import pprof
        assert pprof.loads(raw).counters["dropped_http_clients"] >= 1
    finally:
        lockprof.stop()
