"""lockprof's build-time code generator: spec (locks.json) -> model -> templates -> generated/."""
