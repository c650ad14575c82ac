"""The report's first screen answers "where did my requests wait, and which
line of mine made them?": a service-like program (request threads logging
through one FileHandler and sharing a pool of two connections; idle workers
waiting for work) read back through `lockprof report`."""
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PROG = ROOT / "tests" / "fixtures" / "report" / "service_like.py"


def _env():
    env = {k: v for k, v in os.environ.items() if not k.startswith("LOCKPROF_")}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _lockprof(*args, cwd):
    r = subprocess.run([sys.executable, "-m", "lockprof", *args], capture_output=True,
                       text=True, timeout=300, cwd=cwd, env=_env())
    assert r.returncode == 0, r.stderr
    return r.stdout


@pytest.fixture(scope="module")
def profile(tmp_path_factory):
    d = tmp_path_factory.mktemp("report")
    _lockprof("run", "-q", "--sample-rate", "0.2", "-o", "p.pprof", str(PROG), "60", cwd=d)
    return d / "p.pprof"


def _rows(report):
    """the table's rows: (name, blocked ms, cond.wait ms)"""
    lines = report.splitlines()
    start = next(i for i, x in enumerate(lines) if x.startswith("----")) + 1
    out = []
    for line in lines[start:]:
        if not line.strip():
            break
        cols = re.split(r"\s{2,}", line.strip())
        out.append((cols[0], float(cols[2]), cols[7]))
    return out


def test_the_own_logging_line_shows_under_the_logging_lock(profile):
    report = _lockprof("report", str(profile), cwd=profile.parent)
    line = PROG.read_text().splitlines().index(
        '            log.info("request %d on %s: %s", i, conn, "x" * 200)   '
        '# the app\'s logging line') + 1
    block = report.split("hottest stacks")[1].split("\n\n")[0]
    logging_lock = re.search(r"\n  (logging/__init__\.py:\d+:lock(?: \([^)]*\))*)\n((?:    .*\n?)+)",
                             block)
    assert logging_lock, report
    # its innermost frames are logging's; the app's line is named after them
    assert re.search(rf"of (wait|acquisitions): .*__init__\.py.* <- \.\.\. <- \*handle "
                     rf"\(service_like\.py:{line}\)", logging_lock.group(2)), report


def test_the_pool_wait_ranks_above_rows_without_wait(profile):
    report = _lockprof("report", str(profile), cwd=profile.parent)
    rows = _rows(report)
    pool = next(i for i, r in enumerate(rows) if r[0].startswith("queue.py:") and
                "not_empty" in r[0])
    assert rows[pool][1] > 0
    # (on a free-threaded build every lock may have waited: then none is without)
    without = [i for i, r in enumerate(rows) if r[1] == 0]
    assert all(pool < i for i in without), report
    # ranked by blocked time: lock wait and Condition wait together
    assert [r[1] for r in rows] == sorted((r[1] for r in rows), reverse=True)


def test_idle_workers_wait_apart(profile):
    report = _lockprof("report", str(profile), cwd=profile.parent)
    rows = _rows(report)
    pool = next(r for r in rows if "not_empty" in r[0])
    section = report.split("waiting for work")[1]
    m = re.search(r"queue\.py:\d+:not_empty(?: \([^)]*\))*\s+threading\.Condition\s+"
                  r"([0-9.]+) ms idle\n(.*)", section)
    assert m, report
    idle_ms = float(m.group(1))
    # three idle threads, for the whole run: more than the requests' waits
    assert idle_ms > float(pool[2]) and idle_ms > 0
    assert "service_like.py" not in m.group(2)      # no frame of the app's
    # the ranked row's Condition wait is the requests' only
    data = json.loads(_lockprof("report", "--json", str(profile), cwd=profile.parent))
    rec = next(x for x in data if "not_empty" in x["name"])
    assert rec["idle_cond_wait_ns"] / 1e6 == pytest.approx(idle_ms, abs=0.01)
    assert rec["blocked_ns"] == pytest.approx(rec["cond_wait_ns"] - rec["idle_cond_wait_ns"]
                                              + rec["wait_ns"])
    assert float(pool[2]) == pytest.approx(
        (rec["cond_wait_ns"] - rec["idle_cond_wait_ns"]) / 1e6, abs=0.01)


@pytest.mark.parametrize("sort", ["wait", "lock-wait", "hold"])
def test_json_keeps_the_text_order(profile, sort):
    report = _lockprof("report", "--top", "100", "--sort", sort, str(profile),
                       cwd=profile.parent)
    data = json.loads(_lockprof("report", "--json", "--sort", sort, str(profile),
                                cwd=profile.parent))
    names = [r[0] for r in _rows(report)]
    shown = [re.sub(r"( \([^)]*\))+$", "", n) for n in names]    # (xN), (owner)
    assert [x["name"].split("/")[-1] for x in data] == [
        n.split("/")[-1] for n in shown], (names, [x["name"] for x in data])


def test_own_code_option_moves_the_line(profile, tmp_path):
    """--own-code names what is the program's: here a directory that holds
    none of its frames, so no line is marked as the program's and every
    Condition wait is idle."""
    report = _lockprof("report", "--own-code", str(tmp_path), str(profile),
                       cwd=profile.parent)
    assert "<- ... <- *" not in report
    rows = _rows(report)
    assert next(r for r in rows if "not_empty" in r[0])[2] == "0.00"


def test_page_shows_the_same_ranking_and_own_frame_in_chromium(profile):
    from .test_html import BROWSER, _dom, _table
    if BROWSER is None:
        pytest.skip("no chromium on this machine (CI installs it)")
    page = profile.parent / "p.html"
    _lockprof("convert", "-f", "html", "-o", str(page), "--force", str(profile),
              cwd=profile.parent)
    rows = _table(_dom(str(page)))
    data = json.loads(_lockprof("report", "--json", str(profile), cwd=profile.parent))
    # the report's ranking: blocked time, most first
    assert [r["name"] for r in rows] == [x["name"] for x in data]
    blocked = [float(r["blocked_ns"]) for r in rows]
    assert blocked == sorted(blocked, reverse=True) and blocked[0] > 0
    line = PROG.read_text().splitlines().index(
        '            log.info("request %d on %s: %s", i, conn, "x" * 200)   '
        '# the app\'s logging line') + 1
    logging_row = next(r for r in rows if re.search(r"logging/__init__\.py:\d+:lock$", r["name"]))
    assert logging_row["own"] == f"handle (service_like.py:{line})"
    pool = next(r for r in rows if r["name"].endswith(":not_empty"))
    rec = next(x for x in data if x["name"].endswith(":not_empty"))
    assert float(pool["idle_ns"]) == pytest.approx(rec["idle_cond_wait_ns"], rel=1e-6)
    assert float(pool["blocked_ns"]) == pytest.approx(rec["blocked_ns"], rel=1e-6)


def test_library_locks_say_what_they_belong_to(tmp_path, profile):
    """A lock made inside a library carries the class of the object that
    owns it, found at its first recorded event: logging's handler lock is a
    FileHandler's; a queue.Queue's locks, used by a class of the program's,
    are "Queue of ConnectionPool".  The program's own locks keep their
    names."""
    report = _lockprof("report", str(profile), cwd=profile.parent)
    assert re.search(r"\n(logging/__init__\.py:\d+:lock(?: \(x\d+\))? \(FileHandler(?: of "
                     r"Logger)?\)) ",
                     report), report
    prog = tmp_path / "pool_app.py"
    prog.write_text(
        "import queue, threading, time\n"
        "class ConnectionPool:\n"
        "    def __init__(self):\n"
        "        self.q = queue.Queue(1)\n"
        "        self.q.put('conn')\n"
        "        self.guard = threading.Lock()\n"
        "    def get(self):\n"
        "        with self.guard:\n"
        "            pass\n"
        "        return self.q.get()\n"
        "    def put(self, c):\n"
        "        self.q.put(c)\n"
        "pool = ConnectionPool()\n"
        "def request():\n"
        "    for _ in range(30):\n"
        "        c = pool.get()\n"
        "        time.sleep(0.001)\n"
        "        pool.put(c)\n"
        "ts = [threading.Thread(target=request) for _ in range(4)]\n"
        "for t in ts: t.start()\n"
        "for t in ts: t.join()\n")
    _lockprof("run", "-q", "--sample-rate", "1", "-o", "q.pprof", str(prog), cwd=tmp_path)
    data = json.loads(_lockprof("report", "--json", "q.pprof", cwd=tmp_path))
    by_var = {(x["var"], x["file"].rsplit("/", 1)[-1]): x for x in data}
    assert by_var[("not_empty", "queue.py")]["owner"] == "Queue of ConnectionPool"
    assert by_var[("mutex", "queue.py")]["owner"] == "Queue of ConnectionPool"
    # the program's own lock: its name says it all, nothing added
    guard = by_var[("guard", "pool_app.py")]
    text_report = _lockprof("report", "q.pprof", cwd=tmp_path)
    assert re.search(r"\nqueue\.py:\d+:not_empty \(Queue of ConnectionPool\) ", text_report)
    assert re.search(r"\npool_app\.py:6:guard  ", text_report), text_report
    assert guard["owner"] in (None, "ConnectionPool")


def test_own_code_is_a_run_option_too(tmp_path):
    """`lockprof run --own-code` (and LOCKPROF_OWN_CODE) set it for the
    report printed at exit: naming only a directory without the program's
    frames, nothing is marked as the program's, and the pool's waits count
    as idle."""
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    r = subprocess.run([sys.executable, "-m", "lockprof", "run", "--sample-rate", "0.2",
                        "--own-code", str(elsewhere), "-o", "p.pprof", str(PROG), "20"],
                       capture_output=True, text=True, timeout=300, cwd=tmp_path, env=_env())
    assert r.returncode == 0, r.stderr
    assert "<- ... <- *" not in r.stderr and "waiting for work" in r.stderr, r.stderr
    rows = _rows(r.stderr[r.stderr.index("lockprof: top"):])
    assert next(x for x in rows if "not_empty" in x[0])[1] == 0.0


def test_with_request_labels_the_idle_rule_is_exact():
    """Labels present: a Condition wait inside a labelled request is a
    request's, any other is idle, whatever code it is in."""
    import threading
    import time

    import lockprof
    lockprof.reset()
    lockprof.start(1.0, max_overhead=0)
    try:
        cond = threading.Condition()

        def request():
            with lockprof.labels(endpoint="/orders/{id}"):
                with cond:
                    cond.wait(0.15)

        def idle_worker():          # the program's own code, but outside any request
            with cond:
                cond.wait(0.3)

        ts = [threading.Thread(target=request), threading.Thread(target=idle_worker)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
        p = lockprof.profile()
    finally:
        lockprof.stop()
    i = next(i for i, lk in enumerate(p.locks) if lk["var"] == "cond")
    total = p.locks[i]["cond_wait_ns"]
    idle = p.idle_cond_waits()[i]
    assert 0.25e9 < idle < 0.45e9 and 0.1e9 < total - idle < 0.25e9, (idle, total)
    assert p.blocked_ns(i) == pytest.approx(total - idle + p.locks[i]["wait_ns"])
