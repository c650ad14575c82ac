import sys; print("AUTOSTART", file=sys.stderr)
