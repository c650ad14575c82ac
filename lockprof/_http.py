"""The live endpoint: the running process's lock profile over HTTP, with the
conventions of Go's net/http/pprof, so that scrapers (Grafana Alloy's
pyroscope.scrape, Parca) and `go tool pprof` read it as a Go mutex profile.

    GET /debug/pprof/                 an index
    GET /debug/pprof/mutex            the profile, gzipped pprof
                                      (contentions/count and delay/nanoseconds
                                      are the first sample types)
    GET /debug/pprof/mutex?seconds=N  what happened over the next N seconds
    GET /debug/pprof/mutex?debug=1    the text report
    GET /lockprof/                    lockprof's page (flame graph, tables)
    GET /lockprof/report              the text report

Served by threads of lockprof's own, started with the `_thread` module as the
interval writer's (never in threading.enumerate(), never keeping the process
alive, making no lock of the program's): one blocks in accept() and runs
nothing until a request comes; each request gets a thread of its own, at
most MAX_CLIENTS at once (more get 503).

Security: a profile tells code paths and names.  The address is loopback
unless one is given; an address that is not loopback needs a token
(LOCKPROF_HTTP_TOKEN), checked as a bearer token on every request (401
without it).  Problems at start (a bad address, a port in use, no token for
a public address) are one line on stderr and the program runs on.

Owns: the one Server of the process (_server), guarded by _guard (a
_thread lock, never profiled)."""
from __future__ import annotations

import _thread
import hmac
import ipaddress
import os
import socket
import sys
from typing import Optional, Tuple

MAX_CLIENTS = 8
MAX_SECONDS = 3600           # ?seconds= accepts 1..MAX_SECONDS
REQUEST_TIMEOUT = 30.0       # a client that sends nothing for this long is dropped

_guard = _thread.allocate_lock()
_server: Optional["Server"] = None


class HTTPConfigError(ValueError):
    """An endpoint setting that cannot be served; the message is one line."""


def parse_address(text: str) -> Tuple[str, int]:
    """(host, port) of `PORT`, `:PORT`, `HOST:PORT` or `[IPv6]:PORT`; host
    127.0.0.1 unless given.  Port 0 picks a free one."""
    t = str(text).strip()
    host, sep, port = t.rpartition(":")
    if not sep:
        host, port = "", t
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port.isdigit() or not 0 <= int(port) <= 65535 or (host and " " in host):
        raise HTTPConfigError(f"{text!r} is not an address to serve on; accepted: PORT, "
                              f":PORT, HOST:PORT or [IPv6]:PORT, port 0-65535 "
                              f"(127.0.0.1:6060)")
    return host or "127.0.0.1", int(port)


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Server:
    def __init__(self, host: str, port: int, token: Optional[str],
                 max_clients: int = MAX_CLIENTS):
        if not is_loopback(host) and not token:
            raise HTTPConfigError(
                f"serving on {host!r} (not loopback) needs a token: set LOCKPROF_HTTP_TOKEN; "
                f"scrapers then send 'Authorization: Bearer <token>'")
        self.token = token.encode() if token else None
        family = socket.AF_INET6 if ":" in host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((host, port))
            sock.listen(16)
        except OSError as e:
            sock.close()
            raise HTTPConfigError(f"cannot serve on {host}:{port}: {e.strerror or e}") from None
        self.sock = sock
        self.host, self.port = host, sock.getsockname()[1]
        self.pid = os.getpid()
        self.clients = 0
        self.max_clients = max_clients
        self.refused = 0        # requests answered 503: max_clients were being served
        self._count = _thread.allocate_lock()
        self.closed = False
        _thread.start_new_thread(self._accept_loop, ())

    @property
    def url(self) -> str:
        host = f"[{self.host}]" if ":" in self.host else self.host
        return f"http://{host}:{self.port}/debug/pprof/"

    def _accept_loop(self) -> None:
        while not self.closed:
            try:
                conn, addr = self.sock.accept()
            except OSError:
                if self.closed:
                    return
                continue
            with self._count:
                busy = self.clients >= self.max_clients
                if busy:
                    self.refused += 1
                else:
                    self.clients += 1
            if busy:
                _refuse_busy(conn)
                continue
            try:
                _thread.start_new_thread(self._serve_one, (conn, addr))
            except RuntimeError:
                with self._count:
                    self.clients -= 1
                conn.close()

    def _serve_one(self, conn, addr) -> None:
        try:
            conn.settimeout(REQUEST_TIMEOUT)
            from . import _http_handler
            _http_handler.handle(self, conn, addr)
        except Exception:
            pass            # a client's trouble never reaches the program
        finally:
            try:
                conn.close()
            except OSError:
                pass
            with self._count:
                self.clients -= 1

    def authorized(self, header: Optional[str]) -> bool:
        if self.token is None:
            return True
        if not header or not header.startswith("Bearer "):
            return False
        return hmac.compare_digest(header[len("Bearer "):].strip().encode(), self.token)

    def close(self) -> None:
        self.closed = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)     # wakes accept()
        except OSError:
            pass
        self.sock.close()


def _refuse_busy(conn) -> None:
    try:
        conn.settimeout(0.05)
        try:
            # what the client sent already: closing with unread bytes would
            # reset the connection before it reads the 503
            conn.recv(65536)
        except OSError:
            pass
        conn.sendall(b"HTTP/1.1 503 Service Unavailable\r\nContent-Length: 0\r\n"
                     b"Connection: close\r\nRetry-After: 1\r\n\r\n")
        conn.shutdown(socket.SHUT_WR)
    except OSError:
        pass
    conn.close()


def start(address: str, token: Optional[str] = None, quiet: bool = False,
          max_clients: int = MAX_CLIENTS) -> Optional[Server]:
    """Serves the live profile at `address` (see parse_address); replaces a
    server already running.  A problem is one line on stderr, and None."""
    global _server, _workers_dir
    if token is None:
        token = os.environ.get("LOCKPROF_HTTP_TOKEN") or None
    with _guard:
        try:
            host, port = parse_address(address)
            if (_server is not None and not _server.closed and (host, port) in (
                    (_server.host, _server.port), (_server.host, 0))
                    and _server.token == (token.encode() if token else None)):
                _server.max_clients = max_clients
                return _server          # start() again with the same address
            if _server is not None:
                _server.close()
                _server = None
            _server = Server(host, port, token, max_clients)
            if _workers_dir is None:
                _workers_dir = _make_workers_dir()
        except HTTPConfigError as e:
            print(f"lockprof: http: {e}; the profile is not served", file=sys.stderr)
            return None
        if not quiet:
            print(f"lockprof: serving the lock profile at {_server.url} "
                  f"(go tool pprof {_server.url}mutex)", file=sys.stderr)
        return _server


def stop() -> None:
    global _server
    with _guard:
        if _server is not None:
            _server.close()
            _server = None


def current() -> Optional[Server]:
    return _server


# --- pre-fork servers: the serving process's forked workers ---------------
#
# A scraper addresses a host, not a pid: the process that serves (a gunicorn
# or uwsgi master, a multiprocessing pool's parent) answers for its forked
# descendants too.  Each forked descendant binds nothing on the network; it
# answers on a Unix socket of its own, <dir>/<pid>.sock, in a directory only
# this user can enter, made by the serving process.  A request to the
# endpoint asks every live worker there for its profile and merges them with
# the server's own (exact figures summed, as `lockprof merge` does).

WORKER_TIMEOUT = 10.0        # a worker that does not answer in this time is left out
_workers_dir: Optional[str] = None      # set in the serving process and inherited


def _make_workers_dir() -> Optional[str]:
    import tempfile
    d = os.path.join(tempfile.gettempdir(), f"lockprof-http-{os.getuid()}-{os.getpid()}")
    try:
        os.mkdir(d, 0o700)
    except FileExistsError:
        pass
    except OSError:
        return None
    st = os.stat(d)
    if st.st_uid != os.getuid() or st.st_mode & 0o077:
        return None          # not ours alone: no workers are gathered
    return d


def worker_profiles(exclude_pid: int = 0):
    """{pid: pprof bytes} of the live workers (a dead one's socket is removed)."""
    d = _workers_dir
    out = {}
    if d is None:
        return out
    try:
        names = os.listdir(d)
    except OSError:
        return out
    for name in names:
        if not name.endswith(".sock") or not name[:-5].isdigit():
            continue
        pid = int(name[:-5])
        path = os.path.join(d, name)
        try:
            c = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            c.settimeout(WORKER_TIMEOUT)
            try:
                c.connect(path)
                c.sendall(b"profile\n")
                chunks = []
                while True:
                    b = c.recv(1 << 16)
                    if not b:
                        break
                    chunks.append(b)
            finally:
                c.close()
        except (ConnectionRefusedError, FileNotFoundError):
            try:
                os.unlink(path)      # its process is gone
            except OSError:
                pass
            continue
        except OSError:
            continue
        data = b"".join(chunks)
        if data and pid != exclude_pid:
            out[pid] = data
    return out


def _serve_as_worker(d: str) -> None:
    """In a forked descendant of the serving process: answer on <d>/<pid>.sock."""
    path = os.path.join(d, f"{os.getpid()}.sock")
    try:
        sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            os.unlink(path)
        except OSError:
            pass
        sock.bind(path)
        sock.listen(4)
    except OSError:
        return

    def loop():
        while True:
            try:
                conn, _ = sock.accept()
            except OSError:
                return
            try:
                conn.settimeout(WORKER_TIMEOUT)
                if conn.recv(64).startswith(b"profile"):
                    import lockprof
                    from .export import pprof
                    conn.sendall(pprof.dumps(lockprof.profile()))
            except Exception:
                pass
            finally:
                conn.close()

    def remove():
        if os.getpid() == pid:
            try:
                os.unlink(path)
            except OSError:
                pass
    pid = os.getpid()
    import atexit
    atexit.register(remove)
    _thread.start_new_thread(loop, ())


def _after_fork_in_child() -> None:
    """A forked child (a pre-fork server's worker) binds nothing on the
    network: the listening socket it inherited is closed; it answers its
    profile to the serving process on a Unix socket (see above)."""
    global _guard, _server
    _guard = _thread.allocate_lock()
    s, _server = _server, None
    if s is not None:
        s.closed = True
        try:
            s.sock.close()
        except OSError:
            pass
    if _workers_dir is not None:
        try:
            _serve_as_worker(_workers_dir)
        except Exception:
            pass


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_after_fork_in_child)
