"""The runtime's files call one way: each calls only files listed after it
in lp_init.c's header (the hot path, events, features, export, tables, a
thread's own state), and none calls back up.  Read from the C sources: a
call or a variable reference to a function or variable that another file
defines is an edge."""
import collections
import re
from pathlib import Path

RUNTIME = Path(__file__).resolve().parent.parent / "runtime"


def _layers():
    head = (RUNTIME / "lp_init.c").read_text().split("*/", 1)[0]
    names = ["lp_init"]
    for f in re.findall(r"\b(lp_\w+)\.c\b", head.split("each calling only files after it", 1)[1]):
        if f not in names:
            names.append(f)
    return names


def _edges():
    defs, src = {}, {}
    for f in sorted(RUNTIME.glob("*.c")):
        s = re.sub(r"/\*.*?\*/", "", f.read_text(), flags=re.S)
        src[f.stem] = s
        for m in re.finditer(r"^(?:[A-Za-z_][\w \*]*\n)?(lp_\w+)\(", s, re.M):
            defs.setdefault(m.group(1), f.stem)
        for m in re.finditer(r"^(?:_Thread_local )?(?:[A-Za-z_]\w*[ \*]+)+(lp_\w+)"
                             r"(?:\[\w*\])?(?: = [^;]*)?(?: __attribute__\S*)?;", s, re.M):
            defs.setdefault(m.group(1), f.stem)
    edges = collections.defaultdict(set)
    for f, s in src.items():
        for name in set(re.findall(r"\b(lp_\w+)\b", s)):
            d = defs.get(name)
            if d is not None and d != f:
                edges[f].add((d, name))
    return edges


def test_every_runtime_file_is_in_the_layer_list():
    assert sorted(_layers()) == sorted(f.stem for f in RUNTIME.glob("*.c"))


def test_calls_flow_one_way_between_runtime_files():
    rank = {n: i for i, n in enumerate(_layers())}
    edges = _edges()
    assert edges, "no call between files found: the scan is broken"
    upward = sorted((f, d, name) for f, es in edges.items() for d, name in es
                    if rank[d] <= rank[f])
    assert upward == [], "calls against the layers: " + ", ".join(
        f"{f}.c -> {d}.c ({n})" for f, d, n in upward)
