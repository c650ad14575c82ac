"""python -m bench [--quick] [--json FILE] [--md FILE] [--only micro,sampled,memory,service,servers,scale,parallel]

Per-type microbenchmarks (native, lockprof stopped / rate 0 / default /
rate 1, the seed-style pure-Python reference, ddtrace's lock profiler when
installed: `pip install -e '.[bench]'`), the cost of a recorded event, memory,
and a service-like workload; a Markdown report with the targets met or missed.
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time
from typing import Any, Dict, List, Optional

from . import write_results
from . import ddtrace_locks, instructions, memory, micro, parallel, sampled, scale, servers, service

SECTIONS = ("micro", "instructions", "sampled", "memory", "service", "servers", "scale", "parallel")


def _commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True,
                              text=True, cwd=os.path.dirname(os.path.dirname(__file__))
                              ).stdout.strip() or "unknown"
    except OSError:
        return "unknown"


def _cpu() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown cpu"


def micro_table(results: List[Dict]) -> str:
    cols = [c for c, _, _ in micro.CONFIGS if any(c in r["ns"] for r in results)]
    lines = ["| type | op | " + " | ".join(cols) + " | default / native | added ns: lockprof"
             " / ddtrace |",
             "|---|---|" + "---:|" * len(cols) + "---:|---:|"]
    for r in results:
        cells = " | ".join(f"{r['ns'][c]:.0f}" if c in r["ns"] else "n/a" for c in cols)
        added = r["ns"][micro.DEFAULT] - r["ns"]["native"]
        dd = r["ns"].get("ddtrace 1%")
        vs = f"{added:.0f} / {dd - r['ns']['native']:.0f}" if dd is not None else f"{added:.0f} / n/a"
        lines.append(f"| {r['type']} | {r['op']} | {cells} | "
                     f"{r['ratio'][micro.DEFAULT]:.2f}x | {vs} |")
    return "\n".join(lines)


def _ratio(results, type_, op, config=micro.DEFAULT) -> Optional[float]:
    for r in results:
        if r["type"] == type_ and r["op"] == op and config in r["ratio"]:
            return r["ratio"][config]
    return None


def _instr_as_micro(report) -> List[Dict]:
    """Instruction ratios in the shape of micro results (config names alike)."""
    out = []
    for r in report.get("instructions") or []:
        out.append({"type": r["type"], "op": r["op"],
                    "ratio": {micro.DEFAULT: r["ratio"]["0.01"], "native": 1.0}})
    return out


def targets(report: Dict[str, Any]) -> List[Dict[str, Any]]:
    """Each target of issue #5: what was measured, met or not."""
    out = []

    def add(name, value, limit, ok, unit=""):
        out.append({"target": name, "measured": value, "limit": limit, "met": ok, "unit": unit})

    # ratio targets by instruction count when measured (deterministic), else
    # by the interleaved wall-clock minimum
    res = _instr_as_micro(report) or report.get("micro") or []
    how = "instructions" if report.get("instructions") else "wall clock"
    for t in ("threading.Lock", "threading.RLock"):
        r = _ratio(res, t, "acquire+release")
        if r is not None:
            add(f"{t} acquire()+release() at the default rate", r, "<= 1.10x (hard 1.25x)",
                r <= 1.10, "x")
        r = _ratio(res, t, "with")
        if r is not None:
            add(f"{t} `with` at the default rate", r, "<= 1.00x", r <= 1.0, "x")
    for t in ("threading.Semaphore", "threading.BoundedSemaphore", "threading.Condition"):
        for op in ("acquire+release", "with"):
            r = _ratio(res, t, op)
            if r is not None:
                add(f"{t} {op} at the default rate", r, "<= 1.03x", r <= 1.03, "x")
    for t in ("asyncio.Lock", "asyncio.Semaphore", "asyncio.BoundedSemaphore", "asyncio.Condition"):
        r = _ratio(res, t, "async with")
        if r is not None:
            add(f"{t} `async with` at the default rate", r, "<= 1.10x", r <= 1.10, "x")
    for t in ("multiprocessing.Lock", "multiprocessing.RLock",              # issue 20
              "multiprocessing.Semaphore"):
        r = _ratio(res, t, "with")
        if r is not None:
            add(f"{t} `with` at the default rate", r, "<= 1.05x", r <= 1.05, "x")
    for t in ("anyio.Lock", "anyio.Semaphore", "anyio.CapacityLimiter",     # issue 20
              "trio.Lock", "trio.Semaphore", "trio.CapacityLimiter", "trio.Condition"):
        r = _ratio(res, t, "async with")
        if r is not None:
            add(f"{t} `async with` at the default rate", r, "<= 1.05x", r <= 1.05, "x")
    for t in out:
        if t["unit"] == "x":
            t["target"] += f" ({how})"
    res = report.get("micro") or []
    uncontended = [r for r in res if "thread" not in r["op"] and "task" not in r["op"]
                   and "round trip" not in r["op"] and "ddtrace 1%" in r["ns"]]
    if uncontended:
        factors = []
        for r in uncontended:
            ours = max(r["ns"][micro.DEFAULT] - r["ns"]["native"], 1.0)
            theirs = r["ns"]["ddtrace 1%"] - r["ns"]["native"]
            factors.append(theirs / ours)
        worst = min(factors)
        add("ddtrace's added cost / lockprof's, per uncontended operation (worst case)",
            round(worst, 1), ">= 10x", worst >= 10, "x")
    ev = {e["depth"]: e["ns_per_event"] for e in report.get("sampled_event") or []}
    if 20 in ev:
        add("one recorded event with a 20-frame stack", ev[20], "<= 1000 ns", ev[20] <= 1000, "ns")
    mem = report.get("memory") or {}
    for w in mem.get("per_wrapper", []):
        add(f"bytes per {w['type']} wrapper", w["wrapper_bytes"], "<= 64 B",
            w["wrapper_bytes"] <= 64, "B")
    svc = (report.get("service") or {}).get("configs", {})
    if "lockprof" in svc and "off" in svc:
        for k, label in (("cpu_s", "CPU seconds"), ("p99_us", "p99 latency")):
            v = svc["lockprof"]["vs_off"][k]
            add(f"service workload {label}, lockprof default vs off", v, "<= 1.02x", v <= 1.02, "x")
    for app, r in ((report.get("servers") or {}).get("apps") or {}).items():
        for key, label in (("cpu_ms_per_1k", "CPU per request"), ("p50_us", "p50 latency"),
                           ("p99_us", "p99 latency")):
            v = (r.get("median") or {}).get("lockprof", {}).get("vs_off", {}).get(key)
            if v is not None:
                add(f"{app} {label}, lockprof default vs off", round(v, 3), "<= 1.02x",
                    v <= 1.02, "x")
    sc = report.get("scale")
    if sc:
        by = {}
        for r in sc["programs"]:
            by.setdefault(r["program"], []).append(r)
        for name in ("tasks", "threads", "tasks-contended"):
            runs = sorted(by.get(name, []), key=lambda r: r["n"])
            if len(runs) >= 2:
                growth = runs[-1]["rows"] / max(runs[0]["rows"], 1)
                add(f"scale: rows for x10 {name} ({runs[0]['n']:,} -> {runs[-1]['n']:,})",
                    round(growth, 2), "<= 1.2x", growth <= 1.2, "x")
        for r in by.get("tasks", [])[-1:]:
            add(f"scale: `lockprof run` user CPU over plain, {r['n']:,} tasks",
                round(r["cpu_ratio"], 3), "<= 1.05x", r["cpu_ratio"] <= 1.05, "x")
        e = sc["export"]
        us = e["us_per_row"]["pprof"]
        add(f"scale: pprof export per row, C tables to file ({e['rows']:,} rows)", round(us, 2),
            "<= 1 us", us <= 1.0, " us")
        if "rows_per_s" in e:
            rps = e["rows_per_s"]["merge"]
            add("scale: merging profiles (lockprof report/merge of many files), rows per "
                "second", round(rps), ">= 100,000 rows/s", rps >= 100_000, " rows/s")
        lg = sc.get("long")
        if lg:
            add(f"scale: RSS growth of a long run ({lg['n']:,} requests), first fifth to end, "
                f"lockprof run", lg["rss_growth_kb"]["lockprof"], "<= 2048 kB",
                lg["rss_growth_kb"]["lockprof"] <= 2048, " kB")
        for r in by.get("stacks", []):
            add(f"scale: exit after a {r['rows']:,}-row profile (lockprof run minus plain)",
                round(r["exit_ms"]["lockprof"] - r["exit_ms"]["plain"]), "<= 100 ms",
                r["exit_ms"]["lockprof"] - r["exit_ms"]["plain"] <= 100, " ms")
    mx = report.get("mutex")
    if mx:
        add("free-threaded: the tables' mutex, per sampled or contended event (instructions)",
            mx["mutex_per_event"], "<= 40", mx["mutex_per_event"] <= 40)
    par = report.get("parallel")
    if par and par["free_threaded"] and not par["gil"]:
        for r in par["rows"]:
            if r["locks"] == "own" and r["threads"] > 1:
                add(f"free-threaded: {r['threads']} threads on their own locks scale as natively "
                    f"(k-thread / 1-thread time, lockprof over native)", r["scaling_ratio"],
                    "<= 1.05x", r["scaling_ratio"] <= 1.05, "x")
    return out


def markdown(report: Dict[str, Any]) -> str:
    m = report["meta"]
    parts = [f"{m['date']}, CPython {m['python']}, {m['cpu']}, {m['machine']}, commit "
             f"{m['commit']}; ddtrace: {m['ddtrace']}. Microbenchmarks: ns per operation, "
             f"min of {m['rounds']} interleaved rounds (medians in the JSON)."]
    if report.get("micro"):
        parts += ["", micro_table(report["micro"])]
    if report.get("instructions"):
        parts += ["", "Instructions per operation (valgrind callgrind; deterministic):", "",
                  "| type | op | native | lockprof default | ratio |", "|---|---|---:|---:|---:|"]
        for r in report["instructions"]:
            parts.append(f"| {r['type']} | {r['op']} | {r['instructions']['native']:.0f} | "
                         f"{r['instructions']['0.01']:.0f} | {r['ratio']['0.01']:.2f}x |")
    lb = report.get("labels")
    if lb:
        parts += ["", "Request labels (`lockprof.labels`), threading.Lock `with`, instructions "
                      "(callgrind):", "",
                  "| | instructions |", "|---|---:|",
                  f"| per `with`, default rate, no labels | {lb['default']:.0f} |",
                  f"| per `with`, default rate, two labels set | {lb['default_labels']:.0f} |",
                  f"| one recorded event (rate 1), no labels | {lb['event']:.0f} |",
                  f"| added to a recorded event by two labels | {lb['event_labels']:.0f} |",
                  f"| added by the middleware's route label (read late) | "
                  f"{lb['event_late']:.0f} |"]
    mx = report.get("mutex")
    if mx:
        parts += ["", f"Free-threaded: the tables' mutex costs a sampled event "
                      f"{mx['mutex_per_event']:.0f} instructions (lp_enter + lp_exit, calls "
                      f"included; callgrind, rate 1.0)."]
    if report.get("sampled_event"):
        parts += ["", "One recorded event (a sampled acquisition or its hold, with its stack):", "",
                  "| stack depth | ns per recorded event |", "|---|---:|"]
        parts += [f"| {e['depth']} | {e['ns_per_event']:.0f} |" for e in report["sampled_event"]]
        fe = report.get("first_event")
        if fe:
            parts += ["", f"A lock's first recorded event also creates its record and resolves its "
                          f"name: {fe['ns_first_event']:.0f} ns more."]
    mem = report.get("memory")
    if mem:
        parts += ["", "Memory (tracemalloc):", "",
                  "| type | sys.getsizeof(wrapper) | bytes added per wrapped lock | lock record "
                  "(first event) |", "|---|---:|---:|---:|"]
        for w in mem["per_wrapper"]:
            rec = "n/a" if w["record_bytes"] is None else f"{w['record_bytes']:.0f}"
            parts.append(f"| {w['type']} | {w['getsizeof']} | {w['wrapper_bytes']:.0f} | {rec} |")
        p = mem["profile"]
        parts += ["", f"The profile after {p['events']:,} recorded events over {p['stacks']:,} "
                      f"distinct stacks: {p['bytes'] / 1e6:.2f} MB ({p['bytes_per_stack']:.0f} B "
                      f"per stack; repeated events on a known stack add nothing)."]
    svc = report.get("service")
    if svc and svc.get("configs"):
        parts += ["", f"Service workload ({svc['requests']:,} requests, 16 clients, 8 workers; "
                      f"median of {svc['rounds']} runs, each in a fresh interpreter, interleaved):",
                  "", "| configuration | requests/s | p50 us | p99 us | CPU s | vs off: "
                      "throughput, p50, p99, CPU |", "|---|---:|---:|---:|---:|---|"]
        for c, v in svc["configs"].items():
            r = v.get("vs_off", {})
            parts.append(f"| {v['profiler']} | {v['throughput']:.0f} | {v['p50_us']:.0f} | "
                         f"{v['p99_us']:.0f} | {v['cpu_s']:.2f} | "
                         f"{r.get('throughput', 0):.2f}, {r.get('p50_us', 0):.2f}, "
                         f"{r.get('p99_us', 0):.2f}, {r.get('cpu_s', 0):.2f} |")
        for c, e in svc.get("errors", {}).items():
            parts.append(f"\n{c}: not measured ({e})")
    srv = report.get("servers")
    if srv:
        parts += ["", "Real servers (`bench/servers.py`): " + servers.table(srv)]
    sc = report.get("scale")
    if sc:
        parts += ["", "Scale (each program in fresh interpreters, plain and under `lockprof run`, "
                      "interleaved, medians; exit: from the program's last statement to the "
                      "process's end):", ""] + scale.table(sc)
    par = report.get("parallel")
    if par:
        parts += ["", f"Threads in parallel (CPython {par['python']}"
                      f"{', free-threaded, GIL off' if par['free_threaded'] and not par['gil'] else ''}"
                      f", {par['cpus']} cpus; {par['ops_per_thread']:,} acquire()+release() per "
                      f"thread, min of {par['rounds']} interleaved rounds):", ""]
        parts += parallel.table(par)
    tg = report.get("targets")
    if tg:
        parts += ["", "Targets:", "", "| target | measured | limit | |", "|---|---:|---|---|"]
        for t in tg:
            parts.append(f"| {t['target']} | {t['measured']}{t['unit']} | {t['limit']} | "
                         f"{'met' if t['met'] else '**missed**'} |")
    return "\n".join(parts)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(prog="python -m bench", description=__doc__.split("\n\n")[0])
    p.add_argument("--quick", action="store_true", help="few rounds and small sizes (smoke test)")
    p.add_argument("--rounds", type=int, default=9)
    p.add_argument("--loops", type=int, default=2000)
    p.add_argument("--requests", type=int, default=20000, help="service workload requests")
    p.add_argument("--service-rounds", type=int, default=5)
    p.add_argument("--instr-ops", type=int, default=20000,
                   help="operations per callgrind run (instructions section)")
    p.add_argument("--only", default=",".join(SECTIONS),
                   help=f"comma-separated sections ({', '.join(SECTIONS)})")
    p.add_argument("--json", help="write results as JSON to this file")
    p.add_argument("--md", help="write the Markdown report to this file")
    args = p.parse_args(argv)
    only = {s.strip() for s in args.only.split(",") if s.strip()}
    bad = only - set(SECTIONS)
    if bad:
        p.error(f"--only: unknown section(s) {', '.join(sorted(bad))}; accepted: "
                f"{', '.join(SECTIONS)}")
    if args.quick:
        args.rounds, args.loops, args.requests, args.service_rounds = 2, 50, 800, 1
    reason = ddtrace_locks.why_unavailable()
    meta = {"date": time.strftime("%Y-%m-%d"), "python": platform.python_version(),
            "cpu": _cpu(), "machine": f"{platform.machine()}, {os.cpu_count()} cpus, "
                                      f"{platform.platform()}",
            "commit": _commit(), "rounds": args.rounds, "loops": args.loops,
            "ddtrace": (f"{ddtrace_locks.version()} (lock collectors, 1% capture)"
                        if reason is None else f"not measured ({reason})")}
    report: Dict[str, Any] = {"meta": meta}
    if "micro" in only:
        report["micro"] = micro.measure(rounds=args.rounds, loops=args.loops)
    if "instructions" in only and instructions.available() is None and not args.quick:
        report["instructions"] = instructions.measure(n=args.instr_ops)
        report["mutex"] = instructions.mutex_cost(n=args.instr_ops)
        report["labels"] = instructions.labels_cost(n=args.instr_ops)
        report["startup"] = instructions.startup_cost()
        report["contended"] = instructions.contended_cost()
    if "sampled" in only:
        report["sampled_event"] = sampled.measure(rounds=args.rounds, loops=max(10, args.loops))
        report["first_event"] = sampled.first_event(rounds=args.rounds, n=max(10, args.loops))
    if "memory" in only:
        report["memory"] = {
            "per_wrapper": memory.per_wrapper(500 if args.quick else 5000),
            "profile": memory.profile_size(20_000 if args.quick else 1_000_000,
                                           100 if args.quick else 1000)}
    if "service" in only:
        report["service"] = service.run(requests=args.requests, rounds=args.service_rounds)
    if "servers" in only:
        # real servers under wrk (skipped, with the reason, where wrk or an
        # app's packages are missing)
        report["servers"] = (servers.run(rounds=1, seconds=2.0) if args.quick
                             else servers.run())
    if "scale" in only:
        report["scale"] = (scale.measure(n_tasks=500, n_threads=100, paths=100, rounds=1,
                                         server_requests=400, export_paths=100,
                                         long_requests=20_000)
                           if args.quick else
                           scale.measure(rounds=max(3, args.service_rounds)))
    if "parallel" in only:
        report["parallel"] = parallel.measure(rounds=2 if args.quick else args.rounds,
                                              n=20_000 if args.quick else 200_000)
    report["targets"] = targets(report)
    write_results(report, markdown(report), args.json, args.md)
    return 0


if __name__ == "__main__":
    sys.exit(main())
