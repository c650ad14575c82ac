"""Each benchmark runs briefly and measures what it claims, so none can rot."""
import json
import os

from bench import __main__ as bench_main
from bench import memory, micro, reference, sampled, service


def test_micro_benchmark_smoke():
    res = micro.measure(rounds=1, loops=5, types={"threading.Lock", "asyncio.Lock"})
    assert {(r["type"], r["op"]) for r in res} == {
        ("threading.Lock", "acquire+release"), ("threading.Lock", "with"),
        ("threading.Lock", "failed try"), ("threading.Lock", "with, 2 threads"),
        ("threading.Lock", "with, 8 threads"), ("asyncio.Lock", "async with"),
        ("asyncio.Lock", "async with, 8 tasks")}
    for r in res:
        assert {"native", "stopped", "rate 0", "rate 0.01", "rate 1"} <= set(r["ns"])
        assert ("reference 1%" in r["ns"]) == r["type"].startswith("threading.")
        assert all(v > 0 for v in r["ns"].values())
        assert r["ratio"]["native"] == 1.0
    table = bench_main.micro_table(res)
    assert "| threading.Lock | with |" in table


def test_condition_round_trip_smoke():
    res = micro.measure(rounds=1, loops=50, types={"threading.Condition"},
                        ops={"notify/wait round trip"}, configs={"native", "rate 0.01"})
    assert len(res) == 1 and set(res[0]["ns"]) == {"native", "rate 0.01"}


def test_reference_wrapper_records_like_the_seed_design():
    prof = reference.Profiler(pct=50.0)
    lock = prof.make("Lock")
    for _ in range(10):
        with lock:
            pass
    # a fixed period: every second acquisition, with its hold
    kinds = [e[1] for e in prof.recorder.events]
    assert kinds.count("acquire-wait") == 5 and kinds.count("hold") == 5
    assert all(e[4] and e[4][0][1] == "test_reference_wrapper_records_like_the_seed_design"
               for e in prof.recorder.events)


def test_sampled_event_benchmark_smoke():
    res = sampled.measure(depths=(5, 20), rounds=1, loops=20)
    assert [r["depth"] for r in res] == [5, 20]
    assert all(r["ns_unsampled_with"] > 0 for r in res)
    assert "ns_first_event" in sampled.first_event(rounds=1, n=20)


def test_memory_benchmark_smoke():
    per = memory.per_wrapper(200)
    lock = next(w for w in per if w["type"] == "threading.Lock")
    # a wrapped lock is a real object of its own: it costs something, not a page
    assert 16 <= lock["wrapper_bytes"] <= 512 and lock["record_bytes"] > 0
    prof = memory.profile_size(2000, 20)
    assert prof["bytes"] > 0 and prof["stacks"] == 20


def test_service_workload_smoke():
    res = service.run(requests=320, rounds=1, configs=("off", "lockprof"))
    assert set(res["configs"]) == {"off", "lockprof"}, res["errors"]
    for c in res["configs"].values():
        assert c["throughput"] > 0 and c["p99_us"] >= c["p50_us"] > 0
    assert res["configs"]["off"]["vs_off"]["cpu_s"] == 1.0


def test_real_servers_smoke():
    """bench/servers.py serves the Starlette app (its packages are the
    tests' own) under wrk, plain and profiled, and reads the server's CPU and
    wrk's latencies (CI installs Debian's wrk)"""
    import pytest
    from bench import servers
    reason = servers.why_unavailable("starlette_async")
    if reason is not None:
        if os.environ.get("CI"):
            raise AssertionError(f"the servers bench cannot run in CI: {reason}")
        pytest.skip(reason)
    res = servers.run(rounds=1, seconds=1.0, apps=("starlette_async",),
                      configs=("off", "lockprof"))
    med = res["apps"]["starlette_async"]["median"]
    for c in ("off", "lockprof"):
        assert med[c]["rps"] > 0 and med[c]["cpu_ms_per_1k"] > 0
        assert med[c]["p99_us"] >= med[c]["p50_us"] > 0
    assert med["off"]["vs_off"]["cpu_ms_per_1k"] == 1.0
    assert "| starlette_async | lockprof (defaults) |" in servers.table(res)


def test_bench_command_quick(tmp_path):
    out = tmp_path / "r.json"
    md = tmp_path / "r.md"
    assert bench_main.main(["--quick", "--only", "sampled,memory", "--json", str(out),
                            "--md", str(md)]) == 0
    report = json.loads(out.read_text())
    assert report["meta"]["python"] and report["meta"]["commit"]
    names = [t["target"] for t in report["targets"]]
    assert "one recorded event with a 20-frame stack" in names
    assert "Targets:" in md.read_text()


def test_instruction_count_smoke():
    import pytest
    from bench import instructions
    if instructions.available() is not None:
        pytest.skip(instructions.available())
    ratios = []
    for _ in range(2):
        # one-time work that lands in one run of a pair (a .pyc written, a
        # thread of another program's scheduling) shows as a wild ratio
        # once (a CI run saw 15.9x, never reproduced): a second measure
        # must then be sane; two wild ones fail
        r = instructions.measure(n=5000, cases=[("threading.Lock", "with")])[0]
        assert r["instructions"]["native"] > 0 and r["ratio"]["native"] == 1.0
        ratios.append(r["ratio"]["0.01"])
        if 0.2 < ratios[-1] < 5:
            break
    assert 0.2 < ratios[-1] < 5, ratios


def test_scale_benchmark_smoke():
    from bench import scale
    res = scale.measure(n_tasks=200, n_threads=20, paths=30, rounds=1, server_requests=64,
                        rate=1.0, export_paths=30, long_requests=5000)
    names = [(r["program"], r["n"]) for r in res["programs"]]
    assert ("tasks", 200) in names and ("tasks", 2000) in names and ("server", 64) in names
    for r in res["programs"]:
        assert r["rows"] > 0 and r["bytes"] > 0 and r["user_s"]["plain"] > 0
    tasks = sorted((r for r in res["programs"] if r["program"] == "tasks"), key=lambda r: r["n"])
    assert tasks[0]["rows"] == tasks[1]["rows"]
    e = res["export"]
    assert e["rows"] == 2 * 30 * 30 and set(e["us_per_row"]) == {"pprof", "collapsed",
                                                                "speedscope", "html", "text"}
    assert res["long"]["rows"] > 0 and "rss_growth_kb" in res["long"]
    lines = scale.table(res)
    assert any(line.startswith("| tasks | 2,000 |") for line in lines)


def test_budget_benchmark_smoke():
    from bench import budget
    rows = budget.measure(seconds=0.3)
    assert [(r["sample_rate"], r["max_overhead"]) for r in rows] == [
        (1.0, 0.0), (1.0, 1.0), (0.01, 0.0), (0.01, 1.0)]
    for r in rows:
        assert r["locks_per_s"] > 0 and 0 < r["recording_share"] < 1
    # rate 1 without a budget counts every acquisition
    assert rows[0]["estimate_error"] == 0 and rows[0]["rate_cuts"] == 0
