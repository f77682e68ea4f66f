#!/usr/bin/env python3
"""Per Wasm function costs of a harness run under callgrind (`just profile-wasm`).

Reads the symbol map the harness wrote (GATEWASM_HARNESS_SYMBOL_MAP: `<start hex> <len hex>
<module>:<function>` per compiled function) and callgrind's flat profile, and prints the
machine instructions each Wasm function executed (exclusive; inlined code counts in its
caller), divided by the number of requests, largest first. Cranelift's code is what the
harness runs, not V8's: read the figures as where the instructions go, not as Envoy's count.

usage: wasm_functions.py SYMBOL_MAP CALLGRIND_OUT REQUESTS [TOP [CALLEE]]

With CALLEE (part of a function's name), the callers of the functions it names instead, with
the inclusive cost of their calls to them.
"""
import bisect
import re
import subprocess
import sys


def main() -> int:
    if len(sys.argv) < 4:
        print(__doc__, file=sys.stderr)
        return 2
    symmap, out, requests = sys.argv[1], sys.argv[2], int(sys.argv[3])
    top = int(sys.argv[4]) if len(sys.argv) > 4 else 60
    ranges = []
    with open(symmap) as f:
        for line in f:
            start, length, name = line.rstrip("\n").split(" ", 2)
            ranges.append((int(start, 16), int(length, 16), name))
    ranges.sort()
    starts = [r[0] for r in ranges]
    flat = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", out],
        capture_output=True, text=True, check=True,
    ).stdout
    def named(addr: int) -> str | None:
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < ranges[i][0] + ranges[i][1]:
            return ranges[i][2]
        return None

    if len(sys.argv) > 5:
        return callers(out, named, sys.argv[5], requests, top)
    costs: dict[str, int] = {}
    unmapped = 0
    for line in flat.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+\?\?\?:0x([0-9a-f]+)", line)
        if not m:
            continue
        cost, addr = int(m.group(1).replace(",", "")), int(m.group(2), 16)
        i = bisect.bisect_right(starts, addr) - 1
        if i >= 0 and addr < ranges[i][0] + ranges[i][1]:
            name = ranges[i][2]
            costs[name] = costs.get(name, 0) + cost
        else:
            unmapped += cost
    total = sum(costs.values())
    print(f"Wasm code: {total / requests:,.0f} instructions/request "
          f"(not in a Wasm function: {unmapped / requests:,.0f})")
    for name, cost in sorted(costs.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{cost / requests:10,.0f}  {name}")
    return 0


def callers(out, named, callee: str, requests: int, top: int) -> int:
    tree = subprocess.run(
        ["callgrind_annotate", "--threshold=100", "--auto=no", "--tree=caller", out],
        capture_output=True, text=True, check=True,
    ).stdout
    # Blocks: caller lines ("N < fn (calls)") then the function ("N * fn").
    pending: list[tuple[int, int, str]] = []
    found: dict[str, int] = {}
    for line in tree.splitlines():
        m = re.match(r"\s*([\d,]+)\s+\([^)]*\)\s+([<*])\s+\?\?\?:0x([0-9a-f]+)(?:\s+\(([\d,]+)x\))?", line)
        if not m:
            if not line.strip():
                pending = []
            continue
        cost, kind, addr = int(m.group(1).replace(",", "")), m.group(2), int(m.group(3), 16)
        if kind == "<":
            calls = int((m.group(4) or "0").replace(",", ""))
            pending.append((cost, calls, named(addr) or hex(addr)))
            continue
        name = named(addr) or ""
        if callee in name:
            for c, calls, caller in pending:
                key = f"{caller}  ({calls / requests:.1f} calls)"
                found[key] = found.get(key, 0) + c
        pending = []
    for name, cost in sorted(found.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{cost / requests:10,.0f}  {name}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
