"""Dev-only: one markdown row per `msn train` run directory, for issue 19's ablations.

Run: python3 scripts/ablation_table.py RUN_DIR... [--group]
Columns: final test accuracy, epoch-1 test accuracy, the pre-activation std of the first and of
the last conv block (epoch 1 and final: how much of the signal survives the blocks), the mean
drift of the last block (|mean| of its pre-activation), the global gradient norm (epoch 1 and
final) and MSN's mean |g|. With --group, runs named NAME-sS (seeds) are also summarised as
mean +- standard deviation of the final test accuracy."""
import json, statistics, sys
from pathlib import Path


def rows(run):
    return [json.loads(l) for l in (Path(run) / "metrics.jsonl").read_text().splitlines() if l.strip()]


def fmt(x, p=3):
    return "-" if x is None else f"{x:.{p}f}"


def main():
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    print("| run | epochs | final test | epoch-1 test | std first / last block (ep 1) | "
          "std first / last (final) | last-block mean drift | grad norm ep 1 / final | mean g |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|")
    groups = {}
    for run in args:
        if not (Path(run) / "metrics.jsonl").is_file():
            continue
        m = rows(run)
        if not m:
            continue
        first, last = m[0], m[-1]
        l1, lN = first["layers"], last["layers"]
        name = Path(run).name
        if name.startswith("seed"):  # msn experiment --seeds: OUT/<norm>/seed<S>
            name = f"{Path(run).parent.name}-s{name[4:]}"
        print(f"| {name} | {len(m)} | {100 * last['test_acc']:.2f} | {100 * first['test_acc']:.2f} | "
              f"{fmt(l1[0]['std'])} / {fmt(l1[-1]['std'])} | {fmt(lN[0]['std'])} / {fmt(lN[-1]['std'])} | "
              f"{fmt(abs(lN[-1]['mean']))} | {fmt(first.get('grad_norm'), 2)} / {fmt(last.get('grad_norm'), 2)} | "
              f"{fmt(last.get('msn_scale_mean'), 2)} |")
        base = name.rsplit("-s", 1)[0] if "-s" in name else name
        groups.setdefault(base, []).append(100 * last["test_acc"])
    if "--group" in sys.argv:
        print()
        print("| runs | seeds | mean | std | each |")
        print("|---|---:|---:|---:|---|")
        for k, v in groups.items():
            sd = statistics.stdev(v) if len(v) > 1 else 0.0
            print(f"| {k} | {len(v)} | {statistics.mean(v):.2f} | {sd:.2f} | {', '.join(f'{x:.2f}' for x in v)} |")


if __name__ == "__main__":
    main()
