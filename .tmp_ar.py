import sys, threading
cfg, n = sys.argv[1], int(sys.argv[2])
if cfg != "native":
    import lockprof
    lockprof.start(0.01, seed=1, max_overhead=0)
l = threading.Lock()
for _ in range(n):
    l.acquire(); l.release()
