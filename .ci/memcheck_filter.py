"""Reads a valgrind memcheck log; prints and counts the reports whose first
frame outside the allocator is in lockprof's extension (an invalid access in
our code, or memory our code allocated and lost).  CPython itself, not built
for valgrind, reports uninitialised reads and unfreed import-time memory of
its own; those are not ours even when an import ran inside our module init."""
import re
import sys

ALLOC = re.compile(r"\b(malloc|calloc|realloc|free|operator new|PyMem_\w+|PyObject_\w*[Aa]lloc\w*|"
                   r"_PyObject_\w*[Aa]lloc\w*|_PyMem_\w+|PyType_GenericAlloc|_PyObject_GC_\w+|"
                   r"gc_alloc|PyObject_GC_\w+|_PyType_AllocNoTrack)\b")


def reports(lines):
    block = []
    for line in lines:
        body = re.sub(r"^==\d+== ?", "", line.rstrip("\n"))
        if body == "":
            if block:
                yield block
            block = []
        else:
            block.append(body)
    if block:
        yield block


def _is_ours(frame):
    m = re.match(r"\s*(?:at|by) 0x[0-9A-Fa-f]+: (\S+) \((.*)\)", frame)
    if not m:
        return False
    func, where = m.groups()
    return (func.startswith(("lp_", "PyInit__lockprof")) or "_lockprof" in where
            or re.search(r"\blp_\w+\.[ch]:", where) is not None)


def ours(block):
    frames = [b for b in block if re.match(r"\s*(at|by) 0x", b)]
    if not frames:
        return False
    head = block[0]
    if "are definitely lost" in head or "are possibly lost" in head:
        if "definitely" not in head:
            return False
        for f in frames:
            if ALLOC.search(f):
                continue
            return _is_ours(f) and not f.strip().split(": ", 1)[1].startswith("PyInit__lockprof")
        return False
    return _is_ours(frames[0])


def main(path):
    bad = [b for b in reports(open(path, errors="replace")) if ours(b)]
    for b in bad[:20]:
        print("\n".join(b), end="\n\n")
    print(f"memcheck: {len(bad)} report(s) in lockprof's code")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
