#!/usr/bin/env bash
# What one image costs on a board, in instructions counted under qemu-user (dev-time).
#
#   scripts/board_cost.sh [options] MODEL.onnx [MODEL.onnx ...]
#
# For each model and each emulated CPU it prints: the instructions of one inference (and its
# NEON share), per multiply-add and against the arithmetic limit (4 multiply-adds per f32 NEON
# `fmla`, 16 per int8 `sdot`, layer by layer: QLinearConv and the like count as int8); of
# loading the model (file to runnable plan) and of preprocessing the image; and a breakdown
# per tract op type (and the costliest nodes), so kernel work is profile-driven.
#
# How: `msn-classify --threads 1` with one image and with three images gives load and
# (per image) preprocessing + inference; `MSN_INSN_MARKS=1 msn bench --profile` brackets every
# node of the plan with a mark (msn_kernels::probe) that scripts/insn_count.c, the qemu plugin,
# records, which gives inference and its breakdown. Counts are deterministic: one run each.
# A count is not a time (see ../shared/tools/insn-count/README.md).
#
# Options:
#   --image IMG         the photo to classify (default ../shared/data/photos/coffee.png, 600x400)
#   --classify-args "A" extra msn-classify arguments (e.g. "--resize 256 --crop 224")
#   --cpus "C ..."      aarch64 CPUs for qemu's -cpu (default "cortex-a76 cortex-a53")
#   --armv7             also count on armv7 (qemu-arm, -cpu max; totals, no NEON share or marks)
#   --bin-dir DIR       the aarch64 msn and msn-classify (default: built, runtime-only, with
#                       --profile PROFILE into target/aarch64-unknown-linux-gnu/PROFILE)
#   --armv7-bin-dir DIR the same for armv7
#   --profile PROFILE   cargo profile to build (default dist, what scripts/cross.sh ships)
#   --top N             op types and nodes listed per run (default 8)
#   --json              one JSON document on stdout instead of the tables
set -euo pipefail
cd "$(dirname "$0")/.."

image=../shared/data/photos/coffee.png
classify_args=""
cpus="cortex-a76 cortex-a53"
armv7=0
bin_dir=""
armv7_bin_dir=""
profile=dist
top=8
json=0
models=()
while [ $# -gt 0 ]; do
    case "$1" in
        --image) image="$2"; shift 2 ;;
        --classify-args) classify_args="$2"; shift 2 ;;
        --cpus) cpus="$2"; shift 2 ;;
        --armv7) armv7=1; shift ;;
        --bin-dir) bin_dir="$2"; shift 2 ;;
        --armv7-bin-dir) armv7_bin_dir="$2"; shift 2 ;;
        --profile) profile="$2"; shift 2 ;;
        --top) top="$2"; shift 2 ;;
        --json) json=1; shift ;;
        -h|--help) sed -n '2,29p' "$0"; exit 0 ;;
        -*) echo "board_cost.sh: unknown option $1" >&2; exit 2 ;;
        *) models+=("$1"); shift ;;
    esac
done
[ ${#models[@]} -gt 0 ] || { echo "board_cost.sh: no model given (see --help)" >&2; exit 2; }
for m in "${models[@]}" "$image"; do
    [ -f "$m" ] || { echo "board_cost.sh: $m: no such file" >&2; exit 2; }
done
command -v qemu-aarch64 >/dev/null || { echo "board_cost.sh: qemu-aarch64 missing (apt-get install qemu-user)" >&2; exit 2; }

dir=$profile; [ "$profile" = dev ] && dir=debug
build() { # TARGET -> directory holding msn and msn-classify
    local t=$1
    echo "board_cost.sh: building msn, msn-classify for $t ($profile)" >&2
    cargo build -q --profile "$profile" --target "$t" -p msn-cli --no-default-features \
        --bin msn-classify --bin msn >&2
    echo "target/$t/$dir"
}
[ -n "$bin_dir" ] || bin_dir=$(build aarch64-unknown-linux-gnu)
if [ "$armv7" = 1 ] && [ -z "$armv7_bin_dir" ]; then
    armv7_bin_dir=$(build armv7-unknown-linux-gnueabihf)
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
so=$work/insn_count.so
cc -O2 -shared -fPIC -o "$so" scripts/insn_count.c

# count NAME ARCH CPU BIN ARGS...: runs BIN under qemu with the plugin; its stderr (program's and
# plugin's) goes to $work/NAME.err.
count() {
    local name=$1 arch=$2 cpu=$3 bin=$4; shift 4
    local qemu=qemu-aarch64 sysroot=/usr/aarch64-linux-gnu plugin=$so
    if [ "$arch" = armv7 ]; then
        qemu=qemu-arm; sysroot=/usr/arm-linux-gnueabihf; plugin="$so,arch=arm"
    fi
    # Under qemu tract sees the host's /proc/cpuinfo: say which core it is on, as a board's
    # would tell it (its Cortex-A53 kernels; the A76 takes its generic ones, as under qemu).
    local kind=generic
    [ "$cpu" = cortex-a53 ] && kind=a53
    # On armv7 tract looks for `neon` in /proc/cpuinfo's Features, which a 32-bit Raspberry Pi
    # OS has and the host's (x86-64) does not: without this its NEON kernels would not run.
    if ! TRACT_CPU_ARM32_NEON=true TRACT_CPU_AARCH64_KIND=$kind MSN_INSN_MARKS=${MARKS:-0} "$qemu" -cpu "$cpu" -L "$sysroot" -plugin "$plugin" -d plugin \
        "$bin" "$@" >"$work/$name.out" 2>"$work/$name.err"; then
        echo "board_cost.sh: $bin $* failed under $qemu -cpu $cpu:" >&2
        tail -5 "$work/$name.err" >&2
        exit 1
    fi
}

runs=()
for m in "${models[@]}"; do
    # Multiply-adds, from the model's file (msn info; not counted).
    qemu-aarch64 -L /usr/aarch64-linux-gnu "$bin_dir/msn" info --json "$m" >"$work/info.json"
    set -- $cpus
    plan=()
    for c in "$@"; do plan+=("aarch64 $c $bin_dir"); done
    [ "$armv7" = 1 ] && plan+=("armv7 max $armv7_bin_dir")
    for p in "${plan[@]}"; do
        read -r arch cpu bdir <<<"$p"
        key=$(basename "$m" .onnx).$arch.$cpu
        echo "board_cost.sh: $key" >&2
        # shellcheck disable=SC2086
        MARKS=$([ "$arch" = aarch64 ] && echo 1 || echo 0) \
            count "$key.one" "$arch" "$cpu" "$bdir/msn-classify" --threads 1 --model "$m" \
            $classify_args "$image"
        # shellcheck disable=SC2086
        count "$key.three" "$arch" "$cpu" "$bdir/msn-classify" --threads 1 --model "$m" \
            $classify_args "$image" "$image" "$image"
        MARKS=$([ "$arch" = aarch64 ] && echo 1 || echo 0) \
            count "$key.bench" "$arch" "$cpu" "$bdir/msn" bench --threads 1 --warmup 0 \
            --iters 1 --profile "$m"
        runs+=("$m|$arch|$cpu|$key")
        cp "$work/info.json" "$work/$key.info.json"
    done
done

python3 - "$work" "$json" "$top" "${runs[@]}" <<'EOF'
import json, re, sys
work, as_json, top, runs = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), sys.argv[4:]

def totals(path):
    text = open(path).read()
    m = re.findall(r"^insns=(\d+) simd=(\d+)$", text, re.M)
    if not m:
        sys.exit(f"board_cost.sh: no count in {path}")
    return int(m[-1][0]), int(m[-1][1])

def events(path):
    """The program's marks in order: ("node", id, op, name, insns, simd) for a node bracketed
    by two marks (Model::profile), ("phase", name, insns at its mark) for a load phase's end."""
    text = open(path).read()
    marks = [(int(a), int(b)) for a, b in re.findall(r"^mark insns=(\d+) simd=(\d+)$", text, re.M)]
    lines = re.findall(r"^insn-(mark|phase)\t(.*)$", text, re.M)
    need = sum(2 if kind == "mark" else 1 for kind, _ in lines)
    if len(marks) != need:
        sys.exit(f"board_cost.sh: {len(marks)} marks for {need} in {path}")
    out, k = [], 0
    for kind, rest in lines:
        if kind == "mark":
            nid, op, name = rest.split("\t", 2)
            (i0, s0), (i1, s1) = marks[k], marks[k + 1]
            out.append(("node", int(nid), op, name, i1 - i0, s1 - s0))
            k += 2
        else:
            out.append(("phase", rest, marks[k][0]))
            k += 1
    return out

def marked(path):
    """Per node id: (op, name, insns, simd) of its last evaluation, in plan order."""
    nodes = {}
    for e in events(path):
        if e[0] == "node":
            nodes[e[1]] = e[2:]
    return [nodes[k] for k in sorted(nodes)]

def phases(path):
    """The load's phases: (name, insns) from one phase mark to the next (Model::load)."""
    ps = [e for e in events(path) if e[0] == "phase"]
    return [{"phase": b[1], "insns": b[2] - a[2]} for a, b in zip(ps, ps[1:])]

out = []
for run in runs:
    model, arch, cpu, key = run.split("|")
    info = json.load(open(f"{work}/{key}.info.json"))
    macs = info["macs"]
    int8_ops = ("QLinearConv", "MatMulInteger", "ConvInteger", "QLinearMatMul")
    int8 = any(l["op"] in int8_ops for l in info["layers"])
    # 16 int8 multiply-adds per `sdot`, 4 f32 ones per `fmla` (an int8 model's float layers
    # count as float).
    limit = sum(l["macs"] / (16 if l["op"] in int8_ops else 4) for l in info["layers"])
    one, one_simd = totals(f"{work}/{key}.one.err")
    three, three_simd = totals(f"{work}/{key}.three.err")
    per_image = (three - one) / 2
    r = {"model": model, "arch": arch, "cpu": cpu, "int8": int8, "macs": macs,
         "per_image": per_image,
         "per_image_simd_share": (three_simd - one_simd) / 2 / per_image if arch == "aarch64" else None}
    r["limit"] = limit
    if arch == "aarch64":
        nodes = marked(f"{work}/{key}.bench.err")
        inference = sum(n[2] for n in nodes)
        r["inference"] = inference
        r["inference_simd_share"] = sum(n[3] for n in nodes) / max(inference, 1)
        r["preprocessing"] = per_image - inference
        r["load"] = one - per_image
        r["load_phases"] = phases(f"{work}/{key}.one.err")
        ops = {}
        for op, name, i, s in nodes:
            o = ops.setdefault(op, [0, 0, 0])
            o[0] += 1; o[1] += i; o[2] += s
        r["ops"] = [{"op": op, "nodes": n, "insns": i, "share": i / inference,
                     "simd_share": s / max(i, 1)}
                    for op, (n, i, s) in sorted(ops.items(), key=lambda kv: -kv[1][1])]
        r["nodes"] = [{"node": name, "op": op, "insns": i, "simd_share": s / max(i, 1)}
                      for op, name, i, s in sorted(nodes, key=lambda n: -n[2])[:top]]
    else:
        # No marks on armv7: inference and preprocessing are not separated.
        r["inference"] = None
        r["load"] = one - per_image
    r["per_mac"] = (r["inference"] or per_image) / max(macs, 1)
    r["over_limit"] = (r["inference"] or per_image) / max(limit, 1)
    out.append(r)

if as_json:
    json.dump({"runs": out}, sys.stdout, indent=1)
    print()
    sys.exit(0)

M = lambda x: f"{x / 1e6:,.1f} M"
for r in out:
    kind = "int8" if r["int8"] else "f32"
    print(f"\n{r['model']} ({kind}, {r['macs'] / 1e6:,.0f} M multiply-adds) on {r['arch']} -cpu {r['cpu']}")
    if r["inference"] is not None:
        print(f"  inference      {M(r['inference']):>12}  NEON {100 * r['inference_simd_share']:.0f}%  "
              f"{r['per_mac']:.2f} per multiply-add, {r['over_limit']:.2f}x the limit ({M(r['limit'])})")
        print(f"  preprocessing  {M(r['preprocessing']):>12}")
    else:
        print(f"  per image      {M(r['per_image']):>12}  (inference + preprocessing; "
              f"{r['over_limit']:.2f}x the inference limit {M(r['limit'])})")
    print(f"  load           {M(r['load']):>12}  (process start to runnable plan)")
    for p in r.get("load_phases", []):
        print(f"    {p['phase']:<26} {M(p['insns']):>12}")
    if r.get("ops"):
        print(f"  {'op type':<28} {'nodes':>5} {'instructions':>14} {'share':>6} {'NEON':>5}")
        for o in r["ops"][:top]:
            print(f"  {o['op'][:28]:<28} {o['nodes']:>5} {M(o['insns']):>14} {100 * o['share']:>5.1f}% {100 * o['simd_share']:>4.0f}%")
        print(f"  {'costliest nodes':<40} {'op':<24} {'instructions':>14}")
        for n in r["nodes"]:
            print(f"  {n['node'][:40]:<40} {n['op'][:24]:<24} {M(n['insns']):>14}")
EOF
