"""`lockprof run` and the output formats, as a user runs them."""
import gzip
import json
import os
import re
import subprocess
import sys
import textwrap

import pytest

import lockprof

PROGRAM = textwrap.dedent('''
    import sys, threading, time
    lock = threading.Lock()
    def waiter():
        with lock:
            pass
    def main():
        with lock:
            t = threading.Thread(target=waiter)
            t.start()
            time.sleep(0.02)
        t.join()
        print("args", sys.argv[1:])
        open(sys.argv[1], "w").write("ran") if len(sys.argv) > 1 and sys.argv[1].endswith(".marker") else None
        sys.exit(int(sys.argv[-1]) if sys.argv[-1].isdigit() else 0)
    main()
''')


def _run(args, cwd):
    # the same lockprof the tests imported, installed or not
    env = dict(os.environ)
    root = os.path.dirname(os.path.dirname(os.path.abspath(lockprof.__file__)))
    env["PYTHONPATH"] = root + os.pathsep + env.get("PYTHONPATH", "")
    return subprocess.run([sys.executable, "-m", "lockprof", *args], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)


@pytest.fixture
def script(tmp_path):
    p = tmp_path / "prog.py"
    p.write_text(PROGRAM)
    return p


def test_run_script_passes_args_and_exit_code_and_writes_pprof(tmp_path, script):
    r = _run(["run", "--sample-rate", "1", "-o", "out.pprof", str(script), "--x", "-y", "3"],
             tmp_path)
    assert r.returncode == 3, r.stderr
    assert "args ['--x', '-y', '3']" in r.stdout
    assert "Traceback" not in r.stderr
    data = gzip.decompress((tmp_path / "out.pprof").read_bytes())
    assert b"contentions" in data and b"lock" in data
    assert "next: go tool pprof" in r.stderr
    assert re.search(r"prog.py:3:lock +threading.Lock +[0-9.]+ +1 ", r.stderr), r.stderr


def test_default_output_name_has_script_and_pid(tmp_path, script):
    r = _run(["run", "-q", str(script)], tmp_path)
    assert r.returncode == 0, r.stderr
    names = [p.name for p in tmp_path.iterdir() if p.name.startswith("lockprof-")]
    assert len(names) == 1 and re.fullmatch(r"lockprof-prog\.\d+\.pprof", names[0])


def test_existing_output_refused_before_the_program_runs(tmp_path, script):
    (tmp_path / "out.pprof").write_bytes(b"keep")
    r = _run(["run", "-o", "out.pprof", str(script), "side.marker"], tmp_path)
    assert r.returncode == 2
    assert r.stderr.strip() == "lockprof: error: 'out.pprof' exists; use --force to overwrite it"
    assert not (tmp_path / "side.marker").exists()          # the program never ran
    assert (tmp_path / "out.pprof").read_bytes() == b"keep"
    r = _run(["run", "--force", "-q", "-o", "out.pprof", str(script)], tmp_path)
    assert r.returncode == 0 and (tmp_path / "out.pprof").read_bytes() != b"keep"


@pytest.mark.parametrize("args, message", [
    (["run", "--sample-rate", "2", "-c", "pass"], "--sample-rate: '2' is not a number in [0, 1]"),
    (["run", "--sample-rate", "x", "-c", "pass"], "--sample-rate: 'x' is not a number in [0, 1]"),
    (["run", "-o", "/nonexistent-dir/p.pprof", "-c", "pass"], "directory '/nonexistent-dir' does not exist"),
    (["run", "-o", "p.bin", "-c", "pass"], "cannot tell the format of 'p.bin'"),
    (["run", "missing_script.py"], "script 'missing_script.py' not found"),
])
def test_bad_input_one_line_exit_2(tmp_path, args, message):
    r = _run(args, tmp_path)
    assert r.returncode == 2
    assert message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert "Traceback" not in r.stderr


def test_run_module_and_code(tmp_path, script):
    (tmp_path / "mymod.py").write_text(PROGRAM)
    r = _run(["run", "-q", "-o", "m.folded", "-m", "mymod", "a"], tmp_path)
    assert r.returncode == 0 and "args ['a']" in r.stdout, r.stderr
    r = _run(["run", "-q", "-o", "c.txt", "-c", "import sys; print('code', sys.argv)", "z"],
             tmp_path)
    assert r.returncode == 0 and "code ['-c', 'z']" in r.stdout


def test_collapsed_and_speedscope_content(tmp_path):
    with lockprof.Profiler(sample_rate=1.0) as prof:
        lock = __import__("threading").Lock()

        def waiter():
            with lock:
                pass

        with lock:
            t = __import__("threading").Thread(target=waiter)
            t.start()
            __import__("time").sleep(0.02)
        t.join()
    prof.write(str(tmp_path / "p.folded"))
    lines = (tmp_path / "p.folded").read_text().splitlines()
    assert len(lines) == 1
    stack, value = lines[0].rsplit(" ", 1)
    frames = stack.split(";")
    assert frames[-1].endswith(":lock]") and frames[-2].startswith("waiter (")
    assert int(value) == prof.stats()[0]["wait_ns"]          # one wait over 1 ms: exact
    prof.write(str(tmp_path / "p.speedscope.json"))
    doc = json.loads((tmp_path / "p.speedscope.json").read_text())
    assert doc["$schema"] == "https://www.speedscope.app/file-format-schema.json"
    names = [p["name"] for p in doc["profiles"]]
    assert names == [f"lockprof: {m}" for m in
                     ("delay", "contentions", "caused-delay", "acquisitions", "hold", "cond-wait")]
    nframes = len(doc["shared"]["frames"])
    for p in doc["profiles"]:
        assert p["type"] == "sampled" and len(p["samples"]) == len(p["weights"])
        assert all(0 <= i < nframes for s in p["samples"] for i in s)
        assert p["endValue"] == sum(p["weights"])
    delay = doc["profiles"][0]
    assert delay["endValue"] == prof.stats()[0]["wait_ns"] and delay["unit"] == "nanoseconds"
    with pytest.raises(ValueError, match="unknown format 'svg'"):
        prof.write(str(tmp_path / "p.svg"), "svg")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["p.folded", "p.speedscope.json"]


def _profile_with_contention(path):
    import threading
    import time
    with lockprof.Profiler(sample_rate=1.0) as prof:
        lock = threading.Lock()

        def waiter():
            with lock:
                pass

        with lock:
            t = threading.Thread(target=waiter)
            t.start()
            time.sleep(0.02)
        t.join()
        for _ in range(5):
            with lock:
                pass
    prof.write(str(path))
    return prof.stats()[0]


def test_report_and_convert_read_the_saved_profile(tmp_path):
    stats = _profile_with_contention(tmp_path / "p.pprof")
    r = _run(["report", "p.pprof", "--json"], tmp_path)
    assert r.returncode == 0, r.stderr
    (rec,) = json.loads(r.stdout)
    assert rec["name"] == stats["name"] and rec["kind"] == "threading.Lock"
    assert rec["contentions"] == stats["contentions"] == 1
    assert rec["wait_ns"] == stats["wait_ns"]
    assert rec["acquisitions"] == stats["acquisitions"] == 7
    r = _run(["report", "p.pprof", "--sort", "acquisitions", "--top", "3"], tmp_path)
    assert r.returncode == 0 and stats["name"].split("/")[-1] in r.stdout
    r = _run(["convert", "p.pprof", "-f", "collapsed"], tmp_path)
    assert r.returncode == 0, r.stderr
    lockprof.write(str(tmp_path / "direct.folded"))        # same data, written directly
    assert (tmp_path / "p.folded").read_text() == (tmp_path / "direct.folded").read_text()
    r = _run(["convert", "p.pprof", "-f", "collapsed"], tmp_path)
    assert r.returncode == 2 and "exists; use --force" in r.stderr


@pytest.mark.parametrize("content", [b"", b"not a profile", b"\x1f\x8b\x08\x00garbage",
                                     "truncate"])
def test_corrupt_or_truncated_profile_is_one_line_exit_2(tmp_path, content):
    if content == "truncate":
        _profile_with_contention(tmp_path / "good.pprof")
        content = (tmp_path / "good.pprof").read_bytes()[:60]
    (tmp_path / "bad.pprof").write_bytes(content)
    for cmd in (["report", "bad.pprof"], ["convert", "bad.pprof", "-f", "text"]):
        r = _run(cmd, tmp_path)
        assert r.returncode == 2, (cmd, r.stderr)
        assert r.stderr.startswith("lockprof: error: 'bad.pprof'")
        assert len(r.stderr.strip().splitlines()) == 1 and "Traceback" not in r.stderr


def test_env_twins_and_their_errors(tmp_path, script):
    def run(env, *args):
        e = dict(os.environ, **env)
        root = os.path.dirname(os.path.dirname(os.path.abspath(lockprof.__file__)))
        e["PYTHONPATH"] = root + os.pathsep + e.get("PYTHONPATH", "")
        return subprocess.run([sys.executable, "-m", "lockprof", "run", *args], cwd=tmp_path,
                              env=e, capture_output=True, text=True, timeout=120)

    r = run({"LOCKPROF_OUTPUT": "env.folded", "LOCKPROF_SAMPLE_RATE": "1"}, "-q", str(script))
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "env.folded").read_text().strip()
    r = run({"LOCKPROF_OUTPUT": "env.folded"}, "-q", "-o", "cli.txt", str(script))
    assert r.returncode == 0 and (tmp_path / "cli.txt").exists()     # the option wins
    for var, value, message in [
        ("LOCKPROF_SAMPLE_RATE", "lots", "LOCKPROF_SAMPLE_RATE='lots' is not a number in [0, 1]"),
        ("LOCKPROF_MAX_FRAMES", "0", "LOCKPROF_MAX_FRAMES='0' is not an integer in [1, 512]"),
        ("LOCKPROF_FORMAT", "svg", "LOCKPROF_FORMAT='svg' is not one of pprof, collapsed"),
    ]:
        r = run({var: value}, str(script), "side.marker")
        assert r.returncode == 2 and message in r.stderr, r.stderr
        assert len(r.stderr.strip().splitlines()) == 1
        assert not (tmp_path / "side.marker").exists()


def test_max_frames_option(tmp_path):
    r = _run(["run", "-q", "--sample-rate", "1", "--max-frames", "2", "-o", "p.pprof", "-c",
              "import threading\ndef a(l):\n  b(l)\ndef b(l):\n  c(l)\ndef c(l):\n  l.acquire(); l.release()\n"
              "l = threading.Lock()\na(l)\n"], tmp_path)
    assert r.returncode == 0, r.stderr
    from lockprof.export import pprof
    rows = [s for s in pprof.read(str(tmp_path / "p.pprof")).samples() if s["event"] == "acquire"]
    assert [f[1] for f in rows[0]["frames"]] == ["c", "b"] and rows[0]["omitted"] >= 2
    r = _run(["run", "--max-frames", "0", "-c", "pass"], tmp_path)
    assert r.returncode == 2 and "--max-frames: '0' is not an integer in [1, 512]" in r.stderr


def test_a_fifo_or_device_is_written_into_not_replaced(tmp_path):
    """write() makes a temp file and renames it over a regular file; a path
    that is a FIFO (or /dev/stdout, /dev/null) keeps what it is and gets the
    bytes: the rename would have replaced the device for every program."""
    import stat
    import threading

    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    lockprof.start(1.0)
    try:
        lk = threading.Lock()
        with lk:
            pass
        lockprof.write(str(fifo), "pprof")
    finally:
        lockprof.stop()
    reader.join(30)
    assert stat.S_ISFIFO(os.stat(fifo).st_mode)
    assert b":lk" in gzip.decompress(got[0])
    assert not [p for p in os.listdir(tmp_path) if p.startswith(".lockprof-")]
