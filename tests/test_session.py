"""`lockprof run` and LOCKPROF_ENABLED as a whole-process session: when and
where profiles are written (exit, threads, SIGTERM, uncaught exceptions,
forked children, intervals), module filters, and every environment twin."""
import glob
import os
import re
import signal
import subprocess
import sys
import textwrap
import time

import pytest

import lockprof
from lockprof import _config
from lockprof.export import pprof

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(lockprof.__file__)))


def _env(extra=None):
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKPROF_")}
    env["PYTHONPATH"] = ROOT + os.pathsep + env.get("PYTHONPATH", "")
    env.update(extra or {})
    return env


def _run(args, cwd, env=None, timeout=120):
    return subprocess.run([sys.executable, "-m", "lockprof", *args], cwd=cwd, env=_env(env),
                          capture_output=True, text=True, timeout=timeout)


def _acquisitions(path, var):
    """Acquisitions of the lock named `var` in a pprof file (rate 1: exact)."""
    rows = pprof.read(str(path)).samples()
    return sum(s["count"] for s in rows
               if s["event"] == "acquire" and s["lock_name"].endswith(":" + var))


def _script(tmp_path, text, name="prog.py"):
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return str(path)


def test_non_daemon_threads_and_atexit_handlers_are_in_the_profile(tmp_path):
    # the program's main returns at once; its thread and atexit handler take
    # the lock afterwards, and the profile is written after both
    prog = _script(tmp_path, """
        import atexit, threading, time
        late = threading.Lock()
        def later():
            time.sleep(0.2)
            for _ in range(9):
                with late:
                    pass
        def at_exit():
            for _ in range(4):
                with late:
                    pass
        atexit.register(at_exit)
        threading.Thread(target=later).start()
    """)
    r = _run(["run", "-q", "--sample-rate", "1", "-o", "p.pprof", prog], tmp_path)
    assert r.returncode == 0, r.stderr
    assert _acquisitions(tmp_path / "p.pprof", "late") == 13


def test_uncaught_exception_is_reported_as_python_does(tmp_path):
    code = "import threading\nl = threading.Lock()\nwith l: pass\nraise ValueError('boom')\n"
    plain = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                           env=_env())
    r = _run(["run", "-q", "--sample-rate", "1", "-o", "p.pprof", "-c", code], tmp_path)
    assert r.returncode == plain.returncode == 1
    assert r.stderr == plain.stderr    # the same traceback: no frame of lockprof's
    assert _acquisitions(tmp_path / "p.pprof", "l") == 1


def test_excepthook_of_the_program_is_used(tmp_path):
    code = ("import sys\nsys.excepthook = lambda t, v, tb: print('hooked', t.__name__, "
            "tb.tb_frame.f_code.co_filename)\nraise KeyError(3)\n")
    r = _run(["run", "-q", "-o", "p.pprof", "-c", code], tmp_path)
    assert r.returncode == 1 and r.stdout == "hooked KeyError <string>\n"


def test_sigterm_writes_the_profile_and_the_process_dies_of_it(tmp_path):
    prog = _script(tmp_path, """
        import threading, time, sys
        l = threading.Lock()
        for _ in range(6):
            with l:
                pass
        print("ready", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-m", "lockprof", "run", "-q", "--sample-rate", "1",
                          "-o", "p.pprof", prog], cwd=tmp_path, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    out, err = p.communicate(timeout=60)
    assert p.returncode == -signal.SIGTERM, err
    assert _acquisitions(tmp_path / "p.pprof", "l") == 6


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the guard is Linux's")
def test_sigterm_kills_a_process_whose_handler_cannot_run(tmp_path):
    """lockprof's SIGTERM handler is Python code: it runs only when the main
    thread is back in the interpreter.  A process held in C code that
    retries on EINTR (here glibc's system(), waiting for its child; in the
    wild a lock's sem_wait entered just after the signal came) would live
    on, where unprofiled it dies at once; a pool's terminate() then waited
    forever for it.  The guard kills it, of SIGTERM, after a second."""
    prog = _script(tmp_path, """
        import ctypes, threading
        l = threading.Lock()
        with l:
            pass
        print("ready", flush=True)
        # (the sleep keeps no pipe of the test's open)
        ctypes.CDLL(None).system(b"sleep 20 </dev/null >/dev/null 2>&1")
        print("outlived SIGTERM", flush=True)
    """)
    for argv in ([sys.executable, prog],
                 [sys.executable, "-m", "lockprof", "run", "-q", "-o", "p.pprof", prog]):
        p = subprocess.Popen(argv, cwd=tmp_path, env=_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
        assert p.stdout.readline() == "ready\n"
        time.sleep(0.2)             # in system() by now
        t0 = time.monotonic()
        p.send_signal(signal.SIGTERM)
        p.wait(timeout=60)          # (system()'s shell holds the pipes a while)
        took = time.monotonic() - t0
        p.stdout.close()
        p.stderr.close()
        assert p.returncode == -signal.SIGTERM, argv
        assert took < 8, (argv, took)   # not the 20 s of the sleep


def test_sigterm_guard_follows_forked_children(tmp_path):
    """A forked child (a pool worker) inherits the handler but not the
    guard's timer: it makes its own, so SIGTERM still kills it."""
    prog = _script(tmp_path, """
        import ctypes, os, signal, sys, threading, time
        l = threading.Lock()
        with l:
            pass
        r, w = os.pipe()
        pid = os.fork()
        if pid == 0:
            os.write(w, b"x")
            ctypes.CDLL(None).system(b"sleep 20")
            os._exit(3)
        os.read(r, 1)
        time.sleep(0.2)
        t0 = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        _, status = os.waitpid(pid, 0)
        print(os.WIFSIGNALED(status) and os.WTERMSIG(status), time.monotonic() - t0 < 8)
    """)
    r = _run(["run", "-q", "-o", "p.pprof", prog], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == [str(int(signal.SIGTERM)), "True"]


def test_program_sigterm_handler_is_left_alone(tmp_path):
    prog = _script(tmp_path, """
        import signal, sys, threading, time
        l = threading.Lock()
        with l:
            pass
        signal.signal(signal.SIGTERM, lambda *a: sys.exit(7))
        print("ready", flush=True)
        time.sleep(60)
    """)
    p = subprocess.Popen([sys.executable, "-m", "lockprof", "run", "-q", "--sample-rate", "1",
                          "-o", "p.pprof", prog], cwd=tmp_path, env=_env(),
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    assert p.stdout.readline() == "ready\n"
    p.send_signal(signal.SIGTERM)
    p.communicate(timeout=60)
    assert p.returncode == 7
    assert _acquisitions(tmp_path / "p.pprof", "l") == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_child_writes_a_fresh_profile_under_its_pid(tmp_path):
    prog = _script(tmp_path, """
        import os, sys, threading
        l = threading.Lock()
        for _ in range(3):
            with l:
                pass
        pid = os.fork()
        if pid == 0:
            for _ in range(7):
                with l:
                    pass
            print("child", os.getpid(), flush=True)
            sys.exit(0)
        os.waitpid(pid, 0)
        for _ in range(5):
            with l:
                pass
    """)
    r = _run(["run", "-q", "--sample-rate", "1", "-o", "out.pprof", prog], tmp_path)
    assert r.returncode == 0, r.stderr
    child = int(re.search(r"child (\d+)", r.stdout).group(1))
    assert _acquisitions(tmp_path / "out.pprof", "l") == 3 + 5
    assert _acquisitions(tmp_path / f"out.{child}.pprof", "l") == 7
    # -q is honoured in the child too
    assert "lockprof" not in r.stderr
    r = _run(["run", "--force", "--sample-rate", "1", "-o", "out.pprof", prog], tmp_path)
    child = int(re.search(r"child (\d+)", r.stdout).group(1))
    assert f"lockprof (child {child}): profile written to out.{child}.pprof" in r.stderr


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_forked_children_that_take_no_lock_leave_no_file(tmp_path):
    prog = _script(tmp_path, """
        import os, threading
        l = threading.Lock()
        with l:
            pass
        pids = []
        for i in range(20):
            pid = os.fork()
            if pid == 0:
                if i == 7:          # one child takes a lock
                    with l:
                        pass
                raise SystemExit(0)
            pids.append(pid)
        for pid in pids:
            os.waitpid(pid, 0)
        print("pids", *pids, flush=True)
    """)
    r = _run(["run", "-q", "--sample-rate", "1", "-o", "out.pprof", prog], tmp_path)
    assert r.returncode == 0, r.stderr
    assert r.stderr == ""
    pids = [int(x) for x in re.search(r"pids (.*)", r.stdout).group(1).split()]
    files = sorted(p.name for p in tmp_path.glob("out*.pprof"))
    assert files == sorted(["out.pprof", f"out.{pids[7]}.pprof"])
    assert _acquisitions(tmp_path / f"out.{pids[7]}.pprof", "l") == 1


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs os.fork")
def test_multiprocessing_fork_children_write_their_profiles(tmp_path):
    # multiprocessing's children leave through os._exit: no atexit
    prog = _script(tmp_path, """
        import multiprocessing as mp, threading
        def work(n):
            l = threading.Lock()
            for _ in range(n):
                with l:
                    pass
        if __name__ == "__main__":
            ctx = mp.get_context("fork")
            ps = [ctx.Process(target=work, args=(4,)) for _ in range(2)]
            for p in ps:
                p.start()
            for p in ps:
                p.join()
            print("pids", *[p.pid for p in ps], flush=True)
    """)
    r = _run(["run", "-q", "--sample-rate", "1", "-f", "pprof", prog], tmp_path)
    assert r.returncode == 0, r.stderr
    pids = [int(x) for x in re.search(r"pids (.*)", r.stdout).group(1).split()]
    for pid in pids:
        assert _acquisitions(tmp_path / f"lockprof-prog.{pid}.pprof", "l") == 4


def test_interval_export_covers_every_event_once(tmp_path):
    prog = _script(tmp_path, """
        import threading, time
        tick = threading.Lock()
        end = time.monotonic() + 1.5
        n = 0
        while time.monotonic() < end:
            with tick:
                n += 1
            if n % 200 == 0:
                time.sleep(0.001)
        print("n", n)
    """)
    r = _run(["run", "-q", "--sample-rate", "1", "--max-overhead", "0", "--interval", "0.3", "--keep", "1000",
              "-o", "snaps", prog], tmp_path)
    assert r.returncode == 0, r.stderr
    n = int(re.search(r"n (\d+)", r.stdout).group(1))
    files = sorted(glob.glob(str(tmp_path / "snaps" / "lockprof-prog.*.pprof")))
    assert len(files) >= 3, files
    seqs = [int(f.rsplit(".", 2)[1]) for f in files]
    assert seqs == list(range(1, len(files) + 1))
    # windows are disjoint and complete: their sum is the exact count
    assert sum(_acquisitions(f, "tick") for f in files) == n
    # each covers its own slice of time
    starts = [pprof.read(f).time_nanos for f in files]
    assert starts == sorted(starts) and len(set(starts)) == len(starts)


def test_interval_rotation_keeps_the_newest(tmp_path):
    prog = _script(tmp_path, "import time, threading\nl = threading.Lock()\ntime.sleep(1.2)\n")
    r = _run(["run", "-q", "--interval", "0.2", "--keep", "2", "-f", "collapsed", prog], tmp_path,
             env={"LOCKPROF_OUTPUT": "d"})
    assert r.returncode == 0, r.stderr
    files = sorted(os.listdir(tmp_path / "d"))
    assert len(files) == 2 and all(f.endswith(".folded") for f in files)
    assert int(files[-1].rsplit(".", 2)[1]) >= 4   # the newest survive


def test_interval_output_must_be_a_directory(tmp_path):
    (tmp_path / "f").write_text("")
    r = _run(["run", "--interval", "1", "-o", "f", "-c", "open('ran', 'w')"], tmp_path)
    assert r.returncode == 2 and "is a file" in r.stderr and len(r.stderr.splitlines()) == 1
    assert not (tmp_path / "ran").exists()


MODULES = {
    "helper.py": "import threading\ndef make():\n    return threading.Lock()\n",
    "prog.py": textwrap.dedent("""
        import threading, helper
        mine = threading.Lock()
        theirs = helper.make()
        for l in (mine, theirs):
            with l:
                pass
        from lockprof._lockprof import is_wrapper
        print(is_wrapper(mine), is_wrapper(theirs))
    """),
}


@pytest.mark.parametrize("how, profiled", [
    ([], {"mine", "theirs"}),
    (["--exclude-module", "helper"], {"mine"}),
    (["--include-module", "helper"], {"theirs"}),
    (["--include-module", "nothing,helper"], {"theirs"}),
    ({"LOCKPROF_EXCLUDE_MODULE": "helper"}, {"mine"}),
    ({"LOCKPROF_INCLUDE_MODULE": "__main__"}, {"mine"}),
])
def test_module_filters(tmp_path, how, profiled):
    for name, text in MODULES.items():
        (tmp_path / name).write_text(text)
    args, env = (how, None) if isinstance(how, list) else ([], how)
    r = _run(["run", "-q", "--sample-rate", "1", "-o", "p.pprof", *args, "prog.py"], tmp_path,
             env=env)
    assert r.returncode == 0, r.stderr
    got = {v for v in ("mine", "theirs") if _acquisitions(tmp_path / "p.pprof", v)}
    assert got == profiled
    # native locks where not profiled: the program sees the stdlib's own type
    kinds = r.stdout.split()
    assert kinds == [str("mine" in profiled), str("theirs" in profiled)]


def test_exclusions_add_to_the_builtin_ones(tmp_path):
    # excluding the program's module keeps threading's internals excluded too
    r = _run(["run", "-q", "--sample-rate", "1", "--exclude-module", "helper", "-o", "p.pprof",
              "-c", "import threading\nfrom lockprof._lockprof import is_wrapper\n"
              "e = threading.Event()\nprint(is_wrapper(e._cond), is_wrapper(threading.Lock()))"],
             tmp_path)
    assert r.returncode == 0 and r.stdout.split() == ["False", "True"]


BAD_ENV = {
    "sample_rate": "1.5", "format": "svg", "max_frames": "0", "interval": "0", "keep": "0",
    "exclude_module": "not-a-module", "include_module": "a..b", "top": "-1",
    "quiet": "maybe", "force": "2", "max_locks": "0", "max_stacks": "many",
    "max_samples": "-5", "max_sites": "1.5", "max_thread_names": "0", "max_task_names": "x",
    "lock_order": "maybe", "max_order_edges": "0", "hang_timeout": "soon",
    "max_hang_waits": "0", "http": "localhost:http", "max_label_sets": "0",
    "max_label_value": "ten", "http_max_clients": "2000", "max_overhead": "101",
    "max_rate_windows": "0", "own_code": "/no/such/dir",
}


@pytest.mark.parametrize("opt", [o for o in _config.OPTIONS if o.name != "output"],
                         ids=lambda o: o.env)
def test_every_option_has_an_env_twin_checked_before_the_program_runs(tmp_path, opt):
    bad = BAD_ENV[opt.name]
    r = _run(["run", "-c", "open('ran', 'w')"], tmp_path, env={opt.env: bad})
    assert r.returncode == 2, (r.stdout, r.stderr)
    line = r.stderr.strip()
    assert len(line.splitlines()) == 1 and line.startswith(f"lockprof: error: {opt.env}=")
    assert repr(bad) in line or bad in line
    assert not (tmp_path / "ran").exists()


@pytest.mark.parametrize("name, value, check", [
    ("LOCKPROF_QUIET", "1", lambda r, d: "lockprof:" not in r.stderr),
    ("LOCKPROF_TOP", "0", lambda r, d: "top 0 of" in r.stderr),
    ("LOCKPROF_FORMAT", "text", lambda r, d: glob.glob(os.path.join(d, "lockprof-c.*.txt"))),
    ("LOCKPROF_FORCE", "yes", lambda r, d: r.returncode == 0),
    ("LOCKPROF_MAX_FRAMES", "1", lambda r, d: all(
        len(s["frames"]) == 1 for s in pprof.read(os.path.join(d, "x.pprof")).samples())),
])
def test_env_twins_take_effect(tmp_path, name, value, check):
    (tmp_path / "x.pprof").write_bytes(b"")
    env = {name: value, "LOCKPROF_SAMPLE_RATE": "1"}
    if name != "LOCKPROF_FORMAT":
        env["LOCKPROF_OUTPUT"] = "x.pprof"
        if name != "LOCKPROF_FORCE":
            env["LOCKPROF_FORCE"] = "1"
    r = _run(["run", "-c", "import threading\ndef f():\n  with threading.Lock(): pass\nf()"],
             tmp_path, env=env)
    assert r.returncode == 0, r.stderr
    assert check(r, str(tmp_path))


def test_command_line_adds_to_env_module_lists(tmp_path):
    for name, text in MODULES.items():
        (tmp_path / name).write_text(text)
    r = _run(["run", "-q", "--sample-rate", "1", "-o", "p.pprof", "--exclude-module", "helper",
              "prog.py"], tmp_path, env={"LOCKPROF_EXCLUDE_MODULE": "__main__"})
    assert r.returncode == 0
    assert not any(_acquisitions(tmp_path / "p.pprof", v) for v in ("mine", "theirs"))


def test_flamegraph_command(tmp_path):
    prog = _script(tmp_path, """
        import threading, time
        gate = threading.Lock()
        def hold():
            with gate:
                time.sleep(0.05)
        t = threading.Thread(target=hold)
        t.start()
        time.sleep(0.01)
        with gate:
            pass
        t.join()
    """)
    assert _run(["run", "-q", "-o", "p.pprof", prog], tmp_path).returncode == 0
    r = _run(["flamegraph", "p.pprof"], tmp_path)
    assert r.returncode == 0, r.stderr
    page = (tmp_path / "p.html").read_text()
    import json
    data = json.loads(re.search(r'id="lockprof-data">(.*?)</script>', page, re.S).group(1))
    delay = next(m for m in data["measures"] if m["key"] == "delay")
    wait = sum(s["value"] for s in pprof.read(str(tmp_path / "p.pprof")).samples()
               if s["event"] == "contention")
    assert delay["total"] == pytest.approx(wait, abs=2) and delay["total"] > 20e6
    r = _run(["flamegraph", "p.pprof"], tmp_path)
    assert r.returncode == 2 and "exists; use --force" in r.stderr


# -- LOCKPROF_ENABLED: the start-up hook ------------------------------------

def _with_hook(tmp_path, code, env):
    """Runs `code` in an interpreter that processed lockprof's .pth file the
    way site.py does for site-packages."""
    site_dir = tmp_path / "site"
    site_dir.mkdir(exist_ok=True)
    (site_dir / "lockprof-autostart.pth").write_text(
        open(os.path.join(ROOT, "lockprof-autostart.pth")).read())
    boot = f"import site; site.addsitedir({str(site_dir)!r})\n" + code
    return subprocess.run([sys.executable, "-c", boot], cwd=tmp_path, env=_env(env),
                          capture_output=True, text=True, timeout=120)


def test_hook_starts_profiling_when_enabled(tmp_path):
    code = "import threading\nl = threading.Lock()\nfor _ in range(5):\n    with l: pass\n"
    r = _with_hook(tmp_path, code, {"LOCKPROF_ENABLED": "1", "LOCKPROF_SAMPLE_RATE": "1",
                                    "LOCKPROF_OUTPUT": "svc.{pid}.pprof"})
    assert r.returncode == 0, r.stderr
    files = glob.glob(str(tmp_path / "svc.*.pprof"))
    assert len(files) == 1 and _acquisitions(files[0], "l") == 5
    assert "lockprof: profile written to svc." in r.stderr


def test_hook_is_inert_unless_enabled(tmp_path):
    code = "import sys\nprint('lockprof._autostart' in sys.modules, 'lockprof' in sys.modules)"
    for value in (None, "0", "off"):
        r = _with_hook(tmp_path, code, {} if value is None else {"LOCKPROF_ENABLED": value})
        assert r.returncode == 0 and r.stdout.split() == ["False", "False"], (value, r.stderr)
    assert not glob.glob(str(tmp_path / "lockprof-*"))


def test_hook_bad_setting_leaves_the_program_running(tmp_path):
    r = _with_hook(tmp_path, "print('ran')", {"LOCKPROF_ENABLED": "1",
                                              "LOCKPROF_SAMPLE_RATE": "fast"})
    assert r.returncode == 0 and r.stdout == "ran\n"
    assert r.stderr.strip() == ("lockprof: error: LOCKPROF_SAMPLE_RATE='fast' is not a number "
                                "in [0, 1]; profiling is off")
    r = _with_hook(tmp_path, "print('ran')", {"LOCKPROF_ENABLED": "sure"})
    assert r.stdout == "ran\n" and "LOCKPROF_ENABLED='sure'" in r.stderr


def test_run_takes_over_from_the_hook(tmp_path):
    site_dir = tmp_path / "site"
    site_dir.mkdir()
    (site_dir / "lockprof-autostart.pth").write_text(
        open(os.path.join(ROOT, "lockprof-autostart.pth")).read())
    boot = (f"import site, sys; site.addsitedir({str(site_dir)!r}); "
            "from lockprof.__main__ import main; sys.exit(main())")
    r = subprocess.run([sys.executable, "-c", boot, "run", "-q", "-o", "run.pprof", "-c", "pass"],
                       cwd=tmp_path, env=_env({"LOCKPROF_ENABLED": "1"}), capture_output=True,
                       text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert os.listdir(tmp_path) == ["site", "run.pprof"] or sorted(os.listdir(tmp_path)) == [
        "run.pprof", "site"]


def test_wheel_build_ships_the_hook(tmp_path):
    r = subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib",
                        str(tmp_path)], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    pth = (tmp_path / "lockprof-autostart.pth").read_text()
    assert pth.startswith("import ") and "LOCKPROF_ENABLED" in pth
    assert (tmp_path / "lockprof" / "_autostart.py").exists()
    assert (tmp_path / "lockprof" / "export" / "flamegraph.html").exists()
