"""The HTML flame graph, checked in a real headless browser (Debian's
chromium): the DOM it renders after its script ran, and a screenshot."""
import json
import os
import re
import shutil
import struct
import subprocess
import threading
import time
import zlib

import pytest

import lockprof
from lockprof.export import html as html_writer
from lockprof.export import model

BROWSER = shutil.which("chromium") or shutil.which("chromium-browser") or shutil.which("google-chrome")
if BROWSER is None and os.environ.get("LOCKPROF_REQUIRE_BROWSER"):
    raise RuntimeError("LOCKPROF_REQUIRE_BROWSER is set but chromium is not on PATH "
                       "(apt-get install chromium)")
needs_browser = pytest.mark.skipif(
    BROWSER is None, reason="no chromium on this machine (CI installs it and sets "
                            "LOCKPROF_REQUIRE_BROWSER)")


def _contended_profile():
    lockprof.reset()
    lockprof.start(1.0, seed=3)
    try:
        hot_lock = threading.Lock()

        def holder():
            with hot_lock:
                time.sleep(0.05)

        def waiter():
            time.sleep(0.01)
            with hot_lock:
                pass

        ts = [threading.Thread(target=holder), threading.Thread(target=waiter)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        lockprof.stop()
    rec = next(r for r in lockprof.stats() if r["var"] == "hot_lock")
    return rec


def _browser(*args, timeout=90):
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}   # (sanitizer runs)
    out = subprocess.run([BROWSER, "--headless", "--no-sandbox", "--disable-gpu",
                          "--no-first-run", "--hide-scrollbars", *args],
                         capture_output=True, text=True, timeout=timeout, env=env)
    return out.stdout


def _dom(path, fragment=""):
    return _browser("--window-size=1200,800", "--dump-dom", f"file://{path}{fragment}")


def _boxes(dom):
    return [(m.group(1), float(m.group(2)), float(m.group(3)))
            for m in re.finditer(r'<div class="f[^"]*" data-name="([^"]*)" data-value="([^"]*)" '
                                 r'style="left: [^;]*; width: ([0-9.]+)px', dom)]


def test_page_is_self_contained(tmp_path):
    _contended_profile()
    path = str(tmp_path / "p.html")
    lockprof.write(path)
    page = open(path, encoding="utf-8").read()
    assert "<script src" not in page and "<link" not in page
    assert not re.search(r"(src|href)\s*=\s*[\"']?(https?:)?//", page)
    assert "@import" not in page and "url(" not in page
    data = json.loads(re.search(r'id="lockprof-data">(.*?)</script>', page, re.S).group(1))
    assert [m["key"] for m in data["measures"]] == list(model.MEASURES)


def test_hostile_names_cannot_break_out_of_the_page():
    from array import array
    p = model.Profile(
        locks=[{"name": "a</script>b", "kind": "threading.Lock", "contentions": 1,
                "wait_ns": 10}],
        frames=[("</script><script>alert(1)</script>", "<!--x", 3)],
        stack_offsets=array("I", [0, 1]), stack_frames=array("I", [0]),
        rows={"lock": array("I", [0]), "stack": array("I", [0]), "event": array("B", [1]),
              "thread": array("I", [model.NONE]), "task": array("I", [model.NONE]),
              "samples": array("Q", [1]), "count": array("d", [1]), "value": array("d", [10])},
        threads=[], thread_ids=[], tasks=[], exact=True)
    page = html_writer.render(p, title="</title><b>x")
    body = page.split('id="lockprof-data">', 1)[1]
    assert body.index("</script>") > body.index("alert(1)")   # the data ends at ours
    assert "<title>&lt;/title&gt;&lt;b&gt;x</title>" in page
    data = json.loads(body.split("</script>", 1)[0])
    assert data["frames"][0][1] == "</script><script>alert(1)</script>"
    assert data["frames"][0][0] == "<!--x" and data["title"] == "</title><b>x"


@needs_browser
def test_browser_renders_the_exported_wait(tmp_path):
    rec = _contended_profile()
    path = str(tmp_path / "wait.html")
    lockprof.write(path)
    dom = _dom(path)
    assert 'data-rendered="delay"' in dom, dom[:2000]
    boxes = _boxes(dom)
    root = boxes[0]
    assert root[0] == "all (wait)"
    # the whole exported wait is the root's value, and it is the exact wait_ns
    assert root[1] == pytest.approx(rec["wait_ns"], abs=1)
    lock = [b for b in boxes if b[0].endswith(":hot_lock]")]
    assert len(lock) == 1 and lock[0][1] == root[1]
    assert lock[0][2] == pytest.approx(root[2], rel=0.01)   # full width: the only lock waited on
    assert any(b[0].startswith("waiter (test_html.py:") for b in boxes)
    status = re.search(r'id="status">([^<]*)', dom).group(1)
    assert status.startswith("wait: ") and " ms in 1 stacks" in status


@needs_browser
def test_browser_switch_search_and_zoom(tmp_path):
    _contended_profile()
    path = str(tmp_path / "all.html")
    lockprof.write(path)
    page = open(path, encoding="utf-8").read()
    data = json.loads(re.search(r'id="lockprof-data">(.*?)</script>', page, re.S).group(1))
    acq = next(m for m in data["measures"] if m["key"] == "acquisitions")

    dom = _dom(path, "#measure=acquisitions&search=holder")
    assert 'data-rendered="acquisitions"' in dom
    boxes = _boxes(dom)
    assert boxes[0] == ("all (acquisitions)", acq["total"], boxes[0][2])
    assert re.search(r'class="f hit" data-name="holder \(test_html\.py:', dom)
    status = re.search(r'id="status">([^<]*)', dom).group(1)
    matched = sum(w for stack, w in acq["stacks"]
                  if any(data["frames"][f][0] == "holder" for f in stack))
    assert f"search matches {matched:,}" in status

    # zoom on the holder's frame: it spans the width, its callers are dimmed
    holder_path = next(stack for stack, w in acq["stacks"]
                       if any(data["frames"][f][0] == "holder" for f in stack))
    cut = [f for f in holder_path]
    cut = cut[:next(i for i, f in enumerate(cut) if data["frames"][f][0] == "holder") + 1]
    dom = _dom(path, "#measure=acquisitions&zoom=" + ",".join(map(str, cut)))
    assert "zoomed on holder" in dom
    boxes = _boxes(dom)
    focus = next(b for b in boxes if b[0].startswith("holder ("))
    assert focus[2] == pytest.approx(boxes[0][2], rel=0.01)
    assert re.search(r'class="f dim" data-name="all \(acquisitions\)"', dom)


def _png_pixels(path):
    """RGB(A) rows of an 8-bit, non-interlaced PNG (what chromium writes)."""
    blob = open(path, "rb").read()
    assert blob[:8] == b"\x89PNG\r\n\x1a\n"
    i, idat, head = 8, b"", None
    while i < len(blob):
        n, kind = struct.unpack(">I4s", blob[i:i + 8])
        body = blob[i + 8:i + 8 + n]
        if kind == b"IHDR":
            head = struct.unpack(">IIBBBBB", body)
        elif kind == b"IDAT":
            idat += body
        i += 12 + n
    w, h, depth, ctype, _, _, interlace = head
    assert depth == 8 and ctype in (2, 6) and interlace == 0
    bpp = 3 if ctype == 2 else 4
    raw, stride, rows, prev = zlib.decompress(idat), w * bpp, [], bytearray(w * bpp)
    for y in range(h):
        f, line = raw[y * (stride + 1)], bytearray(raw[y * (stride + 1) + 1:(y + 1) * (stride + 1)])
        for x in range(stride):
            a = line[x - bpp] if x >= bpp else 0
            b, c = prev[x], prev[x - bpp] if x >= bpp else 0
            if f == 1:
                line[x] = (line[x] + a) & 255
            elif f == 2:
                line[x] = (line[x] + b) & 255
            elif f == 3:
                line[x] = (line[x] + (a + b) // 2) & 255
            elif f == 4:
                p = a + b - c
                pa, pb, pc = abs(p - a), abs(p - b), abs(p - c)
                line[x] = (line[x] + (a if pa <= pb and pa <= pc else b if pb <= pc else c)) & 255
        rows.append([tuple(line[x:x + 3]) for x in range(0, stride, bpp)])
        prev = line
    return rows


@needs_browser
def test_screenshot_shows_the_flame_graph(tmp_path):
    _contended_profile()
    path = str(tmp_path / "shot.html")
    png = str(tmp_path / "shot.png")
    lockprof.write(path)
    _browser("--window-size=1000,400", f"--screenshot={png}", f"file://{path}")
    rows = _png_pixels(png)
    assert len(rows) == 400 and len(rows[0]) == 1000

    def is_lock(p):   # the lock frame's violet, hsl(265, 55%, 62%)
        return abs(p[0] - 150) < 20 and abs(p[1] - 104) < 20 and abs(p[2] - 211) < 20

    def is_flame(p):  # warm frame colours: red high, blue low
        return p[0] > 180 and p[2] < 120 and p[0] - p[2] > 100

    def is_table_head(p):   # the table's header band, #e8e6f4
        return abs(p[0] - 232) < 6 and abs(p[1] - 230) < 6 and abs(p[2] - 244) < 6

    lock_rows = [y for y, r in enumerate(rows) if sum(map(is_lock, r)) > 500]
    flame_rows = [y for y, r in enumerate(rows) if sum(map(is_flame, r)) > 500]
    head_rows = [y for y, r in enumerate(rows) if sum(map(is_table_head, r)) > 500]
    # the table's header above the graph; the violet lock bar spans the
    # graph's width, under the warm frames of its callers
    assert head_rows, "no lock table drawn"
    assert lock_rows, "no lock frame drawn"
    assert len(flame_rows) > 10 and max(head_rows) < min(flame_rows) < max(flame_rows) < min(lock_rows)

    # lock first: the lock bar on top, its callers under it
    png2 = str(tmp_path / "shot2.png")
    _browser("--window-size=1000,400", f"--screenshot={png2}", f"file://{path}#view=lock")
    rows = _png_pixels(png2)
    lock_rows = [y for y, r in enumerate(rows) if sum(map(is_lock, r)) > 500]
    flame_rows = [y for y, r in enumerate(rows) if sum(map(is_flame, r)) > 500]
    assert lock_rows and flame_rows and max(lock_rows) < min(flame_rows)


def _two_lock_profile():
    """orders_lock: contended, short holds; audit_lock: never contended,
    long holds; idle_lock: made, never taken (no event: no row)"""
    lockprof.reset()
    lockprof.start(1.0, seed=5)
    try:
        orders_lock = threading.Lock()
        audit_lock = threading.Lock()
        idle_lock = threading.Lock()   # noqa: F841

        def holder():
            with orders_lock:
                time.sleep(0.03)

        def waiter():
            time.sleep(0.005)
            with orders_lock:
                pass

        def auditor():
            for _ in range(3):
                with audit_lock:
                    time.sleep(0.02)

        ts = [threading.Thread(target=f) for f in (holder, waiter, waiter, auditor)]
        for t in ts:
            t.start()
        for t in ts:
            t.join()
    finally:
        lockprof.stop()
    return {r["var"]: r for r in lockprof.stats() if r["var"] in ("orders_lock", "audit_lock")}


def _table(dom):
    """rows of the lock table: [{col: data-value}] in the page's order"""
    body = dom.split('<div id="locks">', 1)[1].split("</table>", 1)[0]
    out = []
    for tr in re.findall(r'<tr class="row[^"]*" data-lock="\d+"[^>]*>(.*?)</tr>', body, re.S):
        out.append({m.group(1): m.group(2) for m in
                    re.finditer(r'data-col="([a-z_]+)" data-value="([^"]*)"', tr)})
    return out


@needs_browser
def test_lock_table_shows_the_exact_figures_sorted(tmp_path):
    recs = _two_lock_profile()
    path = str(tmp_path / "t.html")
    lockprof.write(path)
    rows = _table(_dom(path))
    names = [r["name"].rsplit(":", 1)[-1] for r in rows]
    assert "idle_lock" not in names                     # no event, no row
    assert names[:2] == ["orders_lock", "audit_lock"]   # by wait, most first
    for r in rows[:2]:
        rec = recs[r["name"].rsplit(":", 1)[-1]]
        assert r["name"] == rec["name"] and r["kind"] == "threading.Lock"
        for col in ("contentions", "wait_ns", "max_wait_ns", "hold_ns", "acquisitions"):
            assert float(r[col]) == pytest.approx(rec[col]), col
    o = rows[0]
    assert float(o["mean_wait_ns"]) == pytest.approx(recs["orders_lock"]["wait_ns"] /
                                                     recs["orders_lock"]["contentions"])
    # sorted by hold, most first; then by contentions, fewest first
    rows = _table(_dom(path, "#sort=-hold_ns"))
    holds = [float(r["hold_ns"]) for r in rows]
    assert holds == sorted(holds, reverse=True) and rows[0]["name"].endswith(":audit_lock")
    rows = _table(_dom(path, "#sort=contentions"))
    cs = [float(r["contentions"]) for r in rows]
    assert cs == sorted(cs)
    dom = _dom(path, "#sort=contentions")
    assert re.search(r'<th data-sort="contentions" class=" by asc">', dom)


@needs_browser
def test_selecting_a_lock_focuses_the_graph_and_lock_first_view(tmp_path):
    recs = _two_lock_profile()
    path = str(tmp_path / "f.html")
    lockprof.write(path)
    page = open(path, encoding="utf-8").read()
    data = json.loads(re.search(r'id="lockprof-data">(.*?)</script>', page, re.S).group(1))
    i = next(k for k, lk in enumerate(data["locks"]) if lk["name"].endswith(":audit_lock"))
    # hold: both locks have holds; focused on audit_lock, only its tower
    dom = _dom(path, f"#measure=hold&lock={i}")
    assert re.search(rf'<tr class="row sel" data-lock="{i}"', dom)
    boxes = _boxes(dom)
    assert boxes[0][0] == "all (hold, f.html)".replace("f.html", data["locks"][i]["short"])
    assert boxes[0][1] == pytest.approx(recs["audit_lock"]["hold_ns"], rel=0.05)
    locks_drawn = {b[0] for b in boxes if b[0].startswith("[")}
    assert locks_drawn == {f"[{data['locks'][i]['short']}]"}
    assert f"of {data['locks'][i]['short']}" in re.search(r'id="status">([^<]*)', dom).group(1)
    # lock first: the lock right under the root, spanning it; its caller under it
    dom = _dom(path, "#measure=delay&view=lock")
    boxes = _boxes(dom)
    assert boxes[0][0] == "all (wait)"
    assert boxes[1][0].endswith(":orders_lock]") and boxes[1][1] == boxes[0][1]
    assert boxes[1][2] == pytest.approx(boxes[0][2], rel=0.01)
    assert boxes[2][0].startswith("waiter (test_html.py:")
    assert "lock first" in re.search(r'id="status">([^<]*)', dom).group(1)
    assert re.search(r'<button type="button" data-view="lock" class="on">', dom)
    # the thread bootstrap is trimmed on the page
    assert "_bootstrap" not in "".join(b[0] for b in boxes)
