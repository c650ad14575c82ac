"""Reads ThreadSanitizer's logs (TSAN_OPTIONS log_path) and fails on any
report.  One whose racing access is lockprof's (the innermost frame of
either access's stack is in lockprof's extension) is printed whole; any
other one (a race of CPython's not yet in tsan-suppressions.txt, which may
have lockprof further down its stacks, as a thread parked in a profiled
acquire) by its first frames.  Usage: python .ci/tsan_filter.py LOG_DIR"""
import os
import re
import sys

OURS = re.compile(r"_lockprof\.cpython|/runtime/lp_|/generated/lp_|\blp_[a-z_]+\b")
SEP = "=================="


def is_ours(rep):
    """the innermost frame (#0) of one of the report's stacks (an access, a
    mutex operation) is in lockprof's code"""
    return any(OURS.search(line) for line in rep.splitlines() if line.strip().startswith("#0 "))


def reports(text):
    chunks = text.split(SEP)
    for c in chunks:
        if "WARNING: ThreadSanitizer:" in c:
            yield c.strip()


def main(log_dir):
    ours, theirs, first = [], {}, {}
    for name in sorted(os.listdir(log_dir)):
        with open(os.path.join(log_dir, name), errors="replace") as f:
            for rep in reports(f.read()):
                if is_ours(rep):
                    ours.append(rep)
                    continue
                frames = re.findall(r"#\d+ (\S+)", rep)
                kind = re.sub(r" \(pid=\d+\)", "", rep.splitlines()[0].replace(
                    "WARNING: ThreadSanitizer: ", ""))
                key = (kind, tuple(frames[:3]))
                theirs[key] = theirs.get(key, 0) + 1
                first.setdefault(key, rep)        # each kind printed whole once
    for rep in ours:
        print(rep, "\n" + SEP)
    for (kind, frames), n in sorted(theirs.items(), key=lambda kv: -kv[1]):
        print(f"tsan: {n} x {kind} in CPython: {' <- '.join(frames)}")
    for rep in first.values():
        print(rep, "\n" + SEP)
    print(f"tsan: {len(ours)} report(s) in lockprof's frames, "
          f"{sum(theirs.values())} unsuppressed elsewhere")
    return 1 if ours or theirs else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
