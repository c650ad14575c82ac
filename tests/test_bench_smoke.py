"""The benchmark runs (briefly) and measures what it claims, so it cannot rot."""
from bench import micro, sampled
from bench.__main__ import table


def test_micro_benchmark_smoke():
    res = micro.measure(rounds=1, loops=5, types={"threading.Lock", "asyncio.Lock"})
    assert {(r["type"], r["op"]) for r in res} == {
        ("threading.Lock", "acquire+release"), ("threading.Lock", "with"),
        ("threading.Lock", "failed try"), ("asyncio.Lock", "async with")}
    for r in res:
        assert set(r["ns"]) == {c for c, _ in micro.CONFIGS}
        assert all(v > 0 for v in r["ns"].values())
        assert r["ratio"]["native"] == 1.0
    assert "| threading.Lock | with |" in table(res)


def test_sampled_event_benchmark_smoke():
    res = sampled.measure(depths=(5, 20), rounds=1, loops=20)
    assert [r["depth"] for r in res] == [5, 20]
    assert all(r["ns_unsampled_with"] > 0 for r in res)
