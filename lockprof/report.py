"""The text report: a table of the top locks by total wait."""
from __future__ import annotations

import os
from typing import Any, Dict, List


def _ms(ns: float) -> str:
    return f"{ns / 1e6:.2f}"


def _site(r: Dict[str, Any]) -> str:
    if not r.get("file"):
        return "<unknown>"
    path = r["file"]
    try:
        rel = os.path.relpath(path)
        if not rel.startswith(".."):
            path = rel
    except ValueError:
        pass
    name = f"{path}:{r['line']}"
    return f"{name}:{r['var']}" if r.get("var") else name


def text_table(records: List[Dict[str, Any]], top: int = 10, sample_rate: float = 0.0) -> str:
    rows = sorted(records, key=lambda r: (-r["wait_ns"], -r["acquisitions"]))[:top]
    head = ["lock (file:line:name)", "kind", "contentions", "wait ms", "mean wait us", "max wait ms",
            "hold ms", "acquisitions"]
    body = []
    for r in rows:
        c = r["contentions"]
        body.append([_site(r), r["kind"], str(c), _ms(r["wait_ns"]),
                     f"{r['wait_ns'] / c / 1e3:.1f}" if c else "-", _ms(r["max_wait_ns"]),
                     _ms(r["hold_ns"]), f"{r['acquisitions']:.0f}"])
    widths = [max(len(x[i]) for x in [head] + body) for i in range(len(head))]
    fmt = lambda row: "  ".join(  # noqa: E731
        c.ljust(w) if i < 2 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths)))
    lines = [f"lockprof: top {len(rows)} of {len(records)} locks by total wait "
             f"(sample rate {sample_rate:g}; contentions and waits exact, acquisitions and hold estimated)",
             fmt(head), fmt(["-" * w for w in widths])]
    lines += [fmt(b) for b in body]
    if not rows:
        lines.append("(no lock events recorded)")
    return "\n".join(lines)
