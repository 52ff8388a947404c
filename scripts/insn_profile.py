"""Dev-time: instructions by function, from scripts/insn_count.c's `pcs=FILE` output.

    qemu-aarch64 -cpu cortex-a76 -L /usr/aarch64-linux-gnu \\
        -plugin insn_count.so,pcs=/tmp/pcs.txt -d plugin BIN ARGS...
    python3 scripts/insn_profile.py BIN /tmp/pcs.txt [--top N]

BIN must keep its symbols (e.g. `CARGO_PROFILE_DIST_STRIP=false cargo build --profile dist
...`). Each translation block's instructions times its executions go to the function that
holds its first instruction (a block never spans two functions); a position-independent
binary is placed where qemu-user loads one (the lowest executed address's page, matched
against the binary's text). Inlined functions count as their caller.

Shared libraries (libc's memcpy and memset, say) count as "outside the binary" unless given
with `--lib PATH@BASE`, BASE being where `qemu-aarch64 -strace` shows the library mapped
(`mmap(0x...,PROT_EXEC|...)` after its `openat`; the same for every run of one binary).
A library's block goes to its nearest exported symbol below it (`nm -D`), marked `~`
when the address lies past that symbol's size (a local function such as an ifunc's variant).
"""
import argparse
import bisect
import collections
import re
import subprocess
import sys


def symbols(binary, dynamic=False):
    """Sorted (address, size, name) of the binary's functions."""
    nm = "aarch64-linux-gnu-nm"
    flags = ["-D"] if dynamic else []
    out = subprocess.run([nm, "-C", "-S", "-n", "--defined-only", *flags, binary], check=True,
                         capture_output=True, text=True).stdout
    syms = []
    for line in out.splitlines():
        m = re.match(r"([0-9a-f]+) ([0-9a-f]+) [tTwWi] (.*)", line)
        if m:
            syms.append((int(m[1], 16), int(m[2], 16), m[3]))
    if not syms:
        sys.exit(f"insn_profile.py: {binary} has no function symbols (built stripped?)")
    return syms


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("binary")
    ap.add_argument("pcs")
    ap.add_argument("--top", type=int, default=30)
    ap.add_argument("--base", type=lambda s: int(s, 0), default=None,
                    help="load address of a position-independent binary (default: guessed)")
    ap.add_argument("--lib", action="append", default=[], metavar="PATH@BASE",
                    help="a shared library and where qemu mapped it (repeatable)")
    args = ap.parse_args()
    libs = []
    for spec in args.lib:
        path, _, at = spec.rpartition("@")
        lsyms = symbols(path, dynamic=True)
        name = path.rsplit("/", 1)[-1]
        libs.append((int(at, 0), lsyms, [x[0] for x in lsyms], name))
    syms = symbols(args.binary)
    starts = [s[0] for s in syms]
    blocks = []
    for line in open(args.pcs):
        a, n, t = line.split()
        blocks.append((int(a, 16), int(n), int(t)))
    total = sum(n * t for _, n, t in blocks)
    lo, hi = syms[0][0], syms[-1][0] + syms[-1][1]
    base = args.base
    if base is None:
        # qemu-user loads a PIE aarch64 binary at 0x5500000000 unless told otherwise; take
        # the base that puts the most executed instructions inside the binary's functions.
        best = (-1, 0)
        for cand in (0, 0x5500000000, 0x4000000000, 0x5555550000):
            inside = sum(n * t for a, n, t in blocks if lo <= a - cand < hi)
            best = max(best, (inside, cand))
        base = best[1]
    by = collections.Counter()
    for a, n, t in blocks:
        a -= base
        i = bisect.bisect_right(starts, a) - 1
        if i >= 0 and a < syms[i][0] + max(syms[i][1], 1):
            by[syms[i][2]] += n * t
            continue
        for lbase, lsyms, lstarts, lname in libs:
            j = bisect.bisect_right(lstarts, a + base - lbase) - 1
            off = a + base - lbase
            if j >= 0 and off < lsyms[-1][0] + (1 << 20):
                near = "" if off < lsyms[j][0] + max(lsyms[j][1], 1) else "~"
                by[f"{lname}: {near}{lsyms[j][2]}"] += n * t
                break
        else:
            by["(outside the binary: libc, loader)"] += n * t
    print(f"{total / 1e6:.1f} M instructions, base {base:#x}")
    for name, c in by.most_common(args.top):
        print(f"{c / 1e6:9.2f} M {100 * c / total:5.1f}%  {name[:150]}")


main()
