"""lockprof's benchmarks: `python -m bench`."""
