"""Reading many profiles as one (issue 14): the windows of --interval and the
files of forked workers, merged by `lockprof report/convert/flamegraph` and
`lockprof merge`; exact figures add up (checked by lockprof and by Go's
pprof), and the page's chart shows wait per window."""
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from lockprof.export import model, pprof

ROOT = Path(__file__).resolve().parent.parent
FIX = Path(__file__).parent / "fixtures" / "reading"
GO = shutil.which("go")
BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")


def _env():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(ROOT)] + [p for p in os.environ.get("PYTHONPATH", "").split(os.pathsep) if p]))
    return {k: v for k, v in env.items() if not k.startswith("LOCKPROF_")}


def _lockprof(*args, cwd=None):
    return subprocess.run([sys.executable, "-m", "lockprof", *args], capture_output=True,
                          text=True, timeout=180, env=_env(), cwd=cwd)


@pytest.fixture(scope="module")
def windows(tmp_path_factory):
    d = tmp_path_factory.mktemp("iv")
    r = _lockprof("run", "-q", "--sample-rate", "0.1", "--interval", "0.4", "--keep", "100",
                  "-o", str(d / "snaps"), str(FIX / "spike.py"))
    assert r.returncode == 0, r.stderr
    files = sorted((d / "snaps").glob("*.pprof"))
    assert len(files) >= 3, files
    return d, files


def _exact(files):
    """per lock name: the inputs' exact figures summed"""
    out = {}
    for f in files:
        for lk in pprof.read(str(f)).locks:
            acc = out.setdefault(lk["name"], {k: 0 for k in ("contentions", "wait_ns",
                                                               "cond_waits")})
            for k in acc:
                acc[k] += lk.get(k) or 0
    return out


def test_report_of_a_directory_adds_up_the_windows(windows):
    d, files = windows
    r = _lockprof("report", "--json", str(d / "snaps"))
    assert r.returncode == 0, r.stderr
    merged = {lk["name"]: lk for lk in json.loads(r.stdout)}
    want = _exact(files)
    for name, fig in want.items():
        if not any(fig.values()):
            continue
        for k, v in fig.items():
            assert merged[name][k] == v, (name, k)
    # a lock of one process seen in several windows is one lock, not one per window
    orders = next(lk for n, lk in merged.items() if n.endswith(":orders_lock"))
    assert orders["locks"] == 1
    # several files given one by one: the same
    r2 = _lockprof("report", "--json", *map(str, files))
    assert json.loads(r2.stdout) == json.loads(r.stdout)
    text = _lockprof("report", str(d / "snaps")).stdout
    assert "orders_lock" in text and "stats_lock" in text


def test_merge_writes_one_profile_whose_totals_are_the_sum(windows, tmp_path):
    d, files = windows
    out = tmp_path / "all.pprof"
    r = _lockprof("merge", str(d / "snaps"), "-o", str(out))
    assert r.returncode == 0, r.stderr
    assert f"merged {len(files)} profiles into {out}" in r.stderr
    merged = pprof.read(str(out))
    want = _exact(files)
    for lk in merged.locks:
        for k in ("contentions", "wait_ns"):
            assert (lk.get(k) or 0) == want[lk["name"]][k]
    # the rows too: every sample value of every input, summed
    def row_sum(p, event):
        e = model.EVENT_ID[event]
        return sum(v for ev, v in zip(*p.columns("event", "value")) if ev == e)
    inputs = [pprof.read(str(f)) for f in files]
    for event in ("contention", "hold"):
        assert row_sum(merged, event) == pytest.approx(sum(row_sum(p, event) for p in inputs))
    # refusing to overwrite, and a non-pprof output
    again = _lockprof("merge", str(d / "snaps"), "-o", str(out))
    assert again.returncode == 2 and "exists; use --force" in again.stderr
    bad = _lockprof("merge", str(d / "snaps"), "-o", str(tmp_path / "x.html"))
    assert bad.returncode == 2 and len(bad.stderr.strip().splitlines()) == 1
    assert "accepted extensions: .pprof, .pb.gz" in bad.stderr
    empty = tmp_path / "empty"
    empty.mkdir()
    none = _lockprof("report", str(empty))
    assert none.returncode == 2 and "holds no profile" in none.stderr


@pytest.mark.skipif(GO is None, reason="go (Debian package golang-go) is not installed")
def test_go_pprof_reads_the_merged_profile_with_the_summed_totals(windows, tmp_path):
    d, files = windows
    out = tmp_path / "all.pprof"
    assert _lockprof("merge", *map(str, files), "-o", str(out)).returncode == 0

    def total(path, index):
        top = subprocess.run([GO, "tool", "pprof", "-top", f"-sample_index={index}", "-unit=ns",
                              str(path)], capture_output=True, text=True, check=True,
                             timeout=120).stdout
        m = re.search(r"Total samples = (\d+)", top) or re.search(r"of (\d+)ns total", top)
        return int(m.group(1)) if m else 0

    for index in ("delay", "contentions"):
        assert total(out, index) == sum(total(f, index) for f in files)


def _browser_dom(path, fragment=""):
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    return subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                           "--no-first-run", "--hide-scrollbars", "--window-size=1200,900",
                           "--dump-dom", f"file://{path}{fragment}"],
                          capture_output=True, text=True, timeout=90, env=env).stdout


@pytest.mark.skipif(BROWSER is None, reason="no chromium on this machine")
def test_the_page_charts_wait_per_window(windows, tmp_path):
    d, files = windows
    page = tmp_path / "iv.html"
    r = _lockprof("flamegraph", str(d / "snaps"), "-o", str(page))
    assert r.returncode == 0, r.stderr
    dom = _browser_dom(page)
    assert 'data-rendered="delay"' in dom
    bars = [(int(m.group(1)), m.group(2), float(m.group(3))) for m in re.finditer(
        r'<rect class="bar[^"]*" data-bin="(\d+)" data-lock="([^"]+)" data-wait="([0-9.e+]+)"',
        dom)]
    assert bars, dom[:3000]
    # one bar per window (they come from one process, one after the other),
    # each the exact wait of its file
    per_file = [sum(lk.get("wait_ns") or 0 for lk in pprof.read(str(f)).locks) for f in files]
    per_bin = {}
    for b, _, v in bars:
        per_bin[b] = per_bin.get(b, 0) + v
    assert sorted(per_bin.values()) == pytest.approx(sorted(v for v in per_file if v))
    # the spike (orders_lock's phase) is the highest bar, and it is orders_lock's
    spike = max(per_bin, key=per_bin.get)
    data = json.loads(re.search(r'id="lockprof-data">(.*?)</script>', page.read_text(),
                                re.S).group(1))
    names = {str(i): lk["name"] for i, lk in enumerate(data["locks"])}
    top = max((v, k) for b, k, v in bars if b == spike)[1]
    assert names[top].endswith(":orders_lock")
    assert "4 profiles" in dom or f"{len(files)} profiles" in dom
    # a merged file keeps its windows: its page draws the same chart
    merged, page2 = tmp_path / "all.pprof", tmp_path / "all.html"
    assert _lockprof("merge", str(d / "snaps"), "-o", str(merged)).returncode == 0
    assert _lockprof("flamegraph", str(merged), "-o", str(page2)).returncode == 0
    data2 = json.loads(re.search(r'id="lockprof-data">(.*?)</script>', page2.read_text(),
                                 re.S).group(1))
    assert data2["windows"] == data["windows"] and data2["locks"] == data["locks"]
    assert len(pprof.read(str(merged)).windows) == len(files)
    # focusing a lock dims the others' bars
    i = next(k for k, n in names.items() if n.endswith(":orders_lock"))
    dom = _browser_dom(page, f"#lock={i}")
    dims = re.findall(r'<rect class="bar( dim)?" data-bin="\d+" data-lock="([^"]+)"', dom)
    assert dims and all((d == "") == (k == i) for d, k in dims)


def test_bootstrap_trimming_is_the_same_in_every_reader_but_pprof(tmp_path):
    import lockprof
    from lockprof.export import collapsed, html, speedscope, text

    from tests.test_html import _contended_profile

    _contended_profile()        # a holder thread and a waiter thread
    p = lockprof.profile()
    lockprof.write(str(tmp_path / "p.pprof"))
    full = pprof.read(str(tmp_path / "p.pprof"))
    # pprof keeps the whole stack, threading's bootstrap included
    assert any(fn == "_bootstrap_inner" for _, fn, _ in full.frames)

    def paths_collapsed():
        out = set()
        for line in collapsed.render(p, "delay").splitlines():
            stack = line.rsplit(" ", 1)[0].split(";")
            out.add(tuple(s.split(" (")[0] for s in stack[:-1]))
        return out

    def paths_speedscope():
        doc = json.loads(speedscope.render(p))
        frames = doc["shared"]["frames"]
        prof = next(x for x in doc["profiles"] if x["name"].endswith(": delay"))
        return {tuple(frames[f]["name"] for f in s[:-1]) for s in prof["samples"]}

    def paths_page():
        page = html.render(p)
        data = json.loads(re.search(r'id="lockprof-data">(.*?)</script>', page, re.S).group(1))
        m = next(x for x in data["measures"] if x["key"] == "delay")
        return {tuple(data["frames"][f][0] for f in s[:-1]) for s, _ in m["stacks"]}

    a, b, c = paths_collapsed(), paths_speedscope(), paths_page()
    assert a == b == c and a, (a, b, c)
    for path in a:
        assert path[0] == "waiter"        # the thread's target is the root
        assert not {"_bootstrap", "_bootstrap_inner", "run"} & set(path)
    report = text.report(p)
    assert "waiter" in report and "_bootstrap" not in report


def test_an_empty_window_leaves_the_merge_exact(tmp_path):
    """The last window of --interval often has no event: it must not turn
    the merged figures into estimates from samples"""
    import lockprof

    from tests.test_html import _contended_profile

    rec = _contended_profile()
    lockprof.write(str(tmp_path / "a.pprof"), reset=True)
    lockprof.write(str(tmp_path / "b.pprof"))          # nothing since the reset
    empty = pprof.read(str(tmp_path / "b.pprof"))
    assert empty.locks == [] and empty.exact
    r = _lockprof("merge", str(tmp_path / "a.pprof"), str(tmp_path / "b.pprof"), "-o",
                  str(tmp_path / "m.pprof"))
    assert r.returncode == 0, r.stderr
    m = pprof.read(str(tmp_path / "m.pprof"))
    assert m.exact
    lk = next(x for x in m.locks if x["name"] == rec["name"])
    assert lk["contentions"] == rec["contentions"] and lk["wait_ns"] == rec["wait_ns"]
    assert lk["file"] is not None
