"""Real servers under wrk on loopback, beside plain and ddtrace.

Four apps (bench/apps/): a Flask app on waitress with an RLock-guarded
cache, a file logger and a SQLAlchemy QueuePool(4) over SQLite; an aiohttp
app (asyncio Semaphore + Lock); a FastAPI app with a sync endpoint (anyio's
worker threads, a threading.Lock) on uvicorn; a Starlette app with an async
endpoint (an asyncio.Lock) on uvicorn.  Each runs in each
configuration (no profiler, lockprof at its defaults, ddtrace's lock
collectors at their default 1% capture), in a fresh server process, rounds
interleaved (the order rotates each round).  Per run: a warm-up, then wrk
for a fixed time; the server's CPU (user + system, from /proc) per 1,000
requests, and wrk's p50 and p99.  Medians over rounds; ratios against the
run with no profiler.

`python -m bench.servers [--rounds N] [--seconds S] [--apps a,b] [--md F]`;
`--serve APP --config C --port P --workdir D` is one server (internal).
Needs wrk (Debian's `wrk`) and the apps' packages (flask, waitress,
sqlalchemy, aiohttp, fastapi, starlette, uvicorn); ddtrace for its column.
"""
from __future__ import annotations

import argparse
import importlib
import os
import re
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from typing import Dict, List, Optional

APPS = ("flask_pool", "aiohttp_app", "fastapi_sync", "starlette_async")
CONFIGS = ("off", "lockprof", "ddtrace")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LUA = """
counter = 0
request = function()
  counter = counter + 1
  return wrk.format("GET", (string.gsub(wrk.path, "{id}", tostring(counter % 1000))))
end
"""


def why_unavailable(app: str) -> Optional[str]:
    if shutil.which("wrk") is None:
        return "wrk is not installed (Debian: apt-get install wrk)"
    need = {"flask_pool": ("flask", "waitress", "sqlalchemy"), "aiohttp_app": ("aiohttp",),
            "fastapi_sync": ("fastapi", "uvicorn"),
            "starlette_async": ("starlette", "uvicorn")}[app]
    for mod in need:
        try:
            importlib.import_module(mod)
        except ImportError:
            return f"{mod} is not installed"
    return None


def _serve(app: str, config: str, port: int, workdir: str) -> None:
    from bench import service
    if config == "lockprof":
        import lockprof
        lockprof.start()            # its defaults: rate 0.01, a 1% CPU budget
    else:
        service._start_profiler(config)
    importlib.import_module(f"bench.apps.{app}").serve(port, workdir)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _cpu_ticks(pid: int) -> int:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])    # utime + stime (fields 14, 15)


def _wrk(url: str, seconds: float, script: str, connections: int) -> Dict:
    # (a sanitizer runtime preloaded for the Python under test is not wrk's)
    env = {k: v for k, v in os.environ.items() if k != "LD_PRELOAD"}
    out = subprocess.run(["wrk", "-t1", f"-c{connections}", f"-d{seconds:g}s", "--latency",
                          "-s", script, url], capture_output=True, text=True, env=env,
                         timeout=seconds + 60).stdout
    unit = {"us": 1.0, "ms": 1e3, "s": 1e6}
    lat = {p: float(v) * unit[u] for p, v, u in
           re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)\s*$", out, re.M)}
    m = re.search(r"(\d+) requests in", out)
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)|Socket errors: (.*)", out)
    if m is None or "50" not in lat or "99" not in lat:
        raise RuntimeError(f"wrk printed no result: {out.strip()[-300:]}")
    return {"requests": int(m.group(1)), "p50_us": lat["50"], "p99_us": lat["99"],
            "errors": errors.group(0) if errors else None}


def one(app: str, config: str, seconds: float, connections: int = 16) -> Dict:
    port = _free_port()
    workdir = tempfile.mkdtemp(prefix="lockprof-servers-")
    env = dict(os.environ, PYTHONPATH=ROOT + os.pathsep + os.environ.get("PYTHONPATH", ""))
    env.pop("LOCKPROF_OUTPUT", None)
    # its output to a file: a pipe nobody reads would fill (waitress warns
    # of its task queue's depth under load) and stall the server
    log = open(os.path.join(workdir, "server.log"), "wb")
    proc = subprocess.Popen([sys.executable, "-m", "bench.servers", "--serve", app, "--config",
                             config, "--port", str(port), "--workdir", workdir], env=env, cwd=ROOT,
                            stdout=log, stderr=subprocess.STDOUT)
    log.close()
    path = importlib.import_module(f"bench.apps.{app}").PATH
    url = f"http://127.0.0.1:{port}{path.replace('{id}', '1')}"
    try:
        deadline = time.monotonic() + 60
        while True:
            try:
                urllib.request.urlopen(url, timeout=2).read()
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    with open(os.path.join(workdir, "server.log"), errors="replace") as f:
                        raise RuntimeError(f"{app} ({config}) did not serve: {f.read()[-500:]}")
                time.sleep(0.1)
        script = os.path.join(workdir, "ids.lua")
        with open(script, "w") as f:
            f.write(LUA)
        base = f"http://127.0.0.1:{port}{path}"
        _wrk(base, min(2.0, seconds), script, connections)               # warm-up
        t0 = _cpu_ticks(proc.pid)
        r = _wrk(base, seconds, script, connections)
        if r["requests"] == 0:
            raise RuntimeError(f"{app} ({config}) served nothing in {seconds:g} s")
        cpu_s = (_cpu_ticks(proc.pid) - t0) / os.sysconf("SC_CLK_TCK")
        r["cpu_ms_per_1k"] = cpu_s * 1e6 / max(1, r["requests"])
        r["rps"] = r["requests"] / seconds
        return r
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        shutil.rmtree(workdir, ignore_errors=True)


def run(rounds: int = 4, seconds: float = 8.0, apps=APPS, configs=CONFIGS) -> Dict:
    from bench import ddtrace_locks
    configs = [c for c in configs if c != "ddtrace" or ddtrace_locks.why_unavailable() is None]
    result: Dict = {"rounds": rounds, "seconds": seconds, "apps": {}}
    for app in apps:
        reason = why_unavailable(app)
        if reason is not None:
            result["apps"][app] = {"skipped": reason}
            continue
        runs: Dict[str, List[Dict]] = {c: [] for c in configs}
        for k in range(rounds):
            order = configs[k % len(configs):] + configs[:k % len(configs)]
            for c in order:
                runs[c].append(one(app, c, seconds))
        med = {c: {key: statistics.median(r[key] for r in rs)
                   for key in ("cpu_ms_per_1k", "p50_us", "p99_us", "rps")}
               for c, rs in runs.items()}
        for c in configs:
            med[c]["vs_off"] = {key: med[c][key] / med["off"][key]
                                for key in ("cpu_ms_per_1k", "p50_us", "p99_us")}
        result["apps"][app] = {"runs": runs, "median": med}
    return result


LABELS = {"off": "no profiler", "lockprof": "lockprof (defaults)",
          "ddtrace": "ddtrace lock collectors (1%)"}


def table(result: Dict) -> str:
    lines = [f"wrk on loopback, 16 connections, {result['seconds']:g} s per run, median of "
             f"{result['rounds']} interleaved rounds, each run a fresh server process.",
             "",
             "| app | configuration | req/s | server CPU ms / 1k req | p50 ms | p99 ms | "
             "vs no profiler: CPU, p50, p99 |",
             "|---|---|---:|---:|---:|---:|---|"]
    for app, r in result["apps"].items():
        if "skipped" in r:
            lines.append(f"| {app} | skipped: {r['skipped']} | | | | | |")
            continue
        for c, m in r["median"].items():
            v = m["vs_off"]
            lines.append(f"| {app} | {LABELS.get(c, c)} | {m['rps']:.0f} | "
                         f"{m['cpu_ms_per_1k']:.0f} | {m['p50_us'] / 1e3:.2f} | "
                         f"{m['p99_us'] / 1e3:.2f} | {v['cpu_ms_per_1k']:.3f}, "
                         f"{v['p50_us']:.3f}, {v['p99_us']:.3f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench.servers")
    p.add_argument("--serve", choices=APPS)
    p.add_argument("--config", choices=CONFIGS, default="off")
    p.add_argument("--port", type=int)
    p.add_argument("--workdir")
    p.add_argument("--rounds", type=int, default=4)
    p.add_argument("--seconds", type=float, default=8.0)
    p.add_argument("--apps", default=",".join(APPS))
    p.add_argument("--json")
    p.add_argument("--md")
    a = p.parse_args(argv)
    if a.serve:
        _serve(a.serve, a.config, a.port, a.workdir)
        return 0
    apps = [x for x in a.apps.split(",") if x]
    bad = [x for x in apps if x not in APPS]
    if bad:
        p.error(f"--apps: unknown app {bad[0]!r} (accepted: {', '.join(APPS)})")
    from bench import write_results
    result = run(a.rounds, a.seconds, apps)
    write_results(result, table(result), a.json, a.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
