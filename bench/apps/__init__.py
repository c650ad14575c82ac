"""Real servers for bench/servers.py: each module has `serve(port, workdir)`,
run after the configuration's profiler started (so the app's locks are made
profiled), and a `PATH` for wrk (a `{id}` in it varies per request)."""
