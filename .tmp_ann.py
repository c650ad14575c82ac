import sys, os
sys.path.insert(0, "/src")
import bench.instructions as i
py = os.path.realpath(sys.executable)
n = 20000
res = {}
for cfg in ("native", "0.01"):
    t1, f1 = i._annotate([py, "/src/.tmp_ar.py", cfg, str(n)])
    t0, f0 = i._annotate([py, "/src/.tmp_ar.py", cfg, "0"])
    res[cfg] = ((t1 - t0) / n, {k: (f1.get(k, 0) - f0.get(k, 0)) / n for k in set(f1) | set(f0)})
print("per op", {k: round(v[0], 1) for k, v in res.items()})
keys = set(res["native"][1]) | set(res["0.01"][1])
rows = [((res["0.01"][1].get(k, 0)), res["native"][1].get(k, 0), k) for k in keys]
for on, off, k in sorted(rows, key=lambda r: -abs(r[0] - r[1]))[:16]:
    print(f"{on:7.1f} {off:7.1f} {on-off:+7.1f}  {k[:120]}")
