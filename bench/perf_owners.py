"""Where a compiled router spends its CPU: each `perf` sample charged to the innermost
compiled (mypyc) function on its stack, with the leaf functions it was in.

`python bench/perf_owners.py PERF_DATA [--comm python] [--top 40]`

Record with DWARF call graphs, e.g. of the hot path alone:
`perf record -e cpu-clock -F 4000 --call-graph dwarf,16384 -o hp.data python
bench/hotpath.py 100000 --shape defaults` (from a tree built by bench/mypyc_build.sh), or
of a running router: `perf record ... -p PID`. A C-API call (a dict lookup, a bytes
format, a generic getattr) then counts against the compiled function that made it, which
is the function to change; `perf report` would spread it over libpython's symbols.
"""

from __future__ import annotations

import argparse
import collections
import subprocess


def owners(
    path: str, comm: str | None
) -> tuple[int, collections.Counter[str], dict[str, collections.Counter[str]]]:
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "comm,tid,ip,sym"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    total = 0
    own: collections.Counter[str] = collections.Counter()
    leaves: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for block in out.split("\n\n"):
        lines = block.strip().splitlines()
        if not lines or (comm and not lines[0].strip().startswith(comm)):
            continue
        frames = [ln.strip().split(" ", 1)[-1] for ln in lines[1:] if ln.strip()]
        total += 1
        owner = next(
            (f for f in frames if f.startswith(("CPyDef_", "CPyPy_"))), "(no compiled frame)"
        )
        own[owner] += 1
        leaves[owner][frames[0] if frames else "?"] += 1
    return total, own, leaves


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("data")
    ap.add_argument("--comm", default="python", help="only samples of this command ('' = all)")
    ap.add_argument("--top", type=int, default=40)
    a = ap.parse_args()
    total, own, leaves = owners(a.data, a.comm or None)
    print(f"{total} samples")
    for name, n in own.most_common(a.top):
        top = ", ".join(
            f"{leaf[:40]} {c * 100 / total:.2f}" for leaf, c in leaves[name].most_common(4)
        )
        print(f"{n * 100 / total:5.2f}%  {name[:60]:60}  [{top}]")


if __name__ == "__main__":
    main()
