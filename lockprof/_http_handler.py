"""The live endpoint's requests (lockprof/_http.py serves them): each reads
the one profile model (lockprof.profile()) and hands it to a writer.
Imported on the first request only."""
from __future__ import annotations

import html
import os
import time
from http.server import BaseHTTPRequestHandler
from typing import Optional
from urllib.parse import parse_qs, urlsplit

import lockprof
from .export import Profile
from .export import html as html_writer
from ._http import MAX_SECONDS
from .export import pprof, text

_INDEX = """<!doctype html>
<html><head><meta charset="utf-8"><title>/debug/pprof/</title></head><body>
<h1>/debug/pprof/</h1>
<p>lockprof: the lock profile of process {pid}{note}.</p>
<table>
<tr><td>{contentions}</td><td><a href="mutex?debug=1">mutex</a></td>
<td>contended locks: who waited, and where (<a href="mutex">pprof</a>)</td></tr>
</table>
<ul>
<li><a href="/lockprof/">lockprof's page</a>: flame graph and tables</li>
<li><a href="/lockprof/report">the text report</a></li>
</ul>
<p>Read it with <code>go tool pprof -http=: {base}mutex</code>; the delta over
N seconds is <code>mutex?seconds=N</code>.</p>
</body></html>
"""


class _Handler(BaseHTTPRequestHandler):
    server_version = "lockprof"
    protocol_version = "HTTP/1.1"

    def log_message(self, format, *args):     # nothing on the program's stderr
        pass

    def _send(self, code: int, body: bytes, ctype: str = "text/plain; charset=utf-8",
              headers: Optional[dict] = None) -> None:
        self.send_response(code)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.send_header("X-Content-Type-Options", "nosniff")
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(body)

    def _error(self, code: int, message: str, headers: Optional[dict] = None) -> None:
        self._send(code, (message + "\n").encode(), headers=headers)

    def do_HEAD(self):
        self.do_GET()

    def do_POST(self):
        self._error(405, "lockprof: only GET is served", {"Allow": "GET, HEAD"})

    do_PUT = do_DELETE = do_PATCH = do_POST

    def do_GET(self):
        srv = self.server
        if not srv.authorized(self.headers.get("Authorization")):
            self._error(401, "lockprof: this endpoint needs 'Authorization: Bearer <token>' "
                        "(LOCKPROF_HTTP_TOKEN)", {"WWW-Authenticate": 'Bearer realm="lockprof"'})
            return
        url = urlsplit(self.path)
        try:
            query = parse_qs(url.query, keep_blank_values=True, strict_parsing=False,
                             max_num_fields=16)
        except ValueError:
            self._error(400, "lockprof: too many query parameters")
            return
        path = url.path
        if path in ("/debug/pprof", "/debug/pprof/"):
            self._index()
        elif path == "/debug/pprof/mutex":
            self._mutex(query)
        elif path in ("/lockprof", "/lockprof/"):
            p = _merged()
            self._send(200, html_writer.render(p, title=p.title,
                                               meta=html_writer.meta_line(p)).encode(),
                       "text/html; charset=utf-8")
        elif path == "/lockprof/report":
            self._send(200, text.report(_merged()).encode())
        else:
            self._error(404, f"lockprof: no page {path!r}; see /debug/pprof/")

    def _index(self) -> None:
        p = _merged()
        base = self.server.url
        running = lockprof.is_running()
        body = _INDEX.format(pid=os.getpid(),
                             note="" if running else " (profiling is stopped)",
                             contentions=sum(lk["contentions"] or 0 for lk in p.locks),
                             base=html.escape(base))
        self._send(200, body.encode(), "text/html; charset=utf-8")

    def _mutex(self, query) -> None:
        seconds = None
        if "seconds" in query:
            raw = query["seconds"][-1]
            if not raw.isdigit() or not 1 <= int(raw) <= MAX_SECONDS:
                self._error(400, f"lockprof: seconds={raw!r} is not a whole number of seconds "
                            f"in [1, {MAX_SECONDS}]")
                return
            seconds = int(raw)
        debug = query.get("debug", ["0"])[-1]
        if debug not in ("0", "1"):
            self._error(400, f"lockprof: debug={debug!r}: accepted: 0 (pprof), 1 (text)")
            return
        before = _gather()
        p = before[0]
        if seconds is not None:
            time.sleep(seconds)
            after = _gather()
            # each process's own delta, then merged: a worker that came or
            # went in between gives what it has
            p = Profile.merge([Profile.delta(before[pid], prof) if pid in before else prof
                               for pid, prof in after.items()])
        elif len(before) > 1:
            p = Profile.merge(list(before.values()))
        if debug == "1":
            self._send(200, text.report(p).encode())
            return
        self._send(200, pprof.dumps(p), "application/octet-stream",
                   {"Content-Disposition": 'attachment; filename="mutex.pb.gz"'})



def _gather():
    """{0: this process's profile, pid: each live worker's}."""
    from . import _http
    own = lockprof.profile()
    srv = _http.current()
    if srv is not None:             # the endpoint's own cap, counted as every cap is
        own.counters["dropped_http_clients"] = srv.refused
        own.counters["http_max_clients"] = srv.max_clients
    out = {0: own}
    for pid, data in _http.worker_profiles().items():
        try:
            out[pid] = pprof.loads(data, f"<worker {pid}>")
        except Exception:
            continue
    return out


def _merged():
    got = _gather()
    return got[0] if len(got) == 1 else Profile.merge(list(got.values()))


def handle(server, conn, addr) -> None:
    _Handler(conn, addr, server)
