"""The learning benchmark's table (scripts/bench-learning.sh): one row per arm.

Reads what the benchmark wrote beside each arm's run dir (`ARM.compare.json` from
`asl eval compare --json --rounds 0 R`, `ARM.audit.json` from `asl audit --json`) and the
arm's shards (per-round T=1 training reward and parse rate, as learning_curve.py reads them).
Columns: rounds done; training reward, last quarter of rounds minus the first, with its 95 %
interval (standard error over tasks, each task the mean of its attempts); T=1 parse rate in the last round; held-out EM start -> end, the paired difference
with its bootstrap 95 % interval and McNemar's p, on the corpus-built test questions and on the
human-written FanOutQA sub-questions the corpus answers; GRM accuracy on the verification pairs start
-> end, and on near misses (gold answers and one-letter misspellings, reference shown); GRM-rule agreement and GRM false accepts (passed where the rule label says wrong) first
-> last round; and whether the audit raised reward_hacking, judge_leniency, unsupported_splits,
judge_regression or heldout_regression.

Usage: python scripts/bench_learning_table.py ROOT ARM... (an ARM with a slash is a run dir of
another root: `runs/bl20 default runs/bl21/default`).
"""
import json
import math
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from learning_curve import mean_se, outputs, read  # noqa: E402


def training_curve(run_dir):
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rounds = sorted({e["round"] for e in manifest["entries"] if e["round"] > 0
                     and e["stage"] == "reward" and e["status"] == "done"})
    per_round = {}
    for r in rounds:
        # One value per task: the mean reward of its attempts. A task's attempts share its
        # question, so they are not independent draws; the standard error is taken over tasks
        # (as learning_curve.py does), not over attempts, which would understate it.
        by_task = {}
        for x in read(run_dir, outputs(manifest, "reward", r), "rewards-"):
            if x["role"] == "policy":
                by_task.setdefault(x["task_id"], []).append(x["reward"])
        rewards = [sum(v) / len(v) for v in by_task.values()]
        attempts = read(run_dir, outputs(manifest, "rollout", r), "trajectories-")
        parsed = sum(a["parsed"] for a in attempts) / max(len(attempts), 1)
        per_round[r] = (rewards, parsed)
    return per_round


def quarter_change(per_round):
    rounds = sorted(per_round)
    if len(rounds) < 2:
        return float("nan"), float("nan")
    q = max(1, len(rounds) // 4)
    first = [x for r in rounds[:q] for x in per_round[r][0]]
    last = [x for r in rounds[-q:] for x in per_round[r][0]]
    (ma, sa), (mb, sb) = mean_se(first), mean_se(last)
    return mb - ma, math.sqrt(sa ** 2 + sb ** 2)


def fmt(x, spec="{:.3f}"):
    return "-" if x is None or (isinstance(x, float) and math.isnan(x)) else spec.format(x)


def main():
    out = Path(sys.argv[1])
    arms = sys.argv[2:]
    header = ["arm", "rounds", "train reward Δ (last−first ¼) [95%]", "parse T=1 end",
              "EM start→end", "ΔEM [95%]", "McNemar p",
              "FanOutQA EM start→end", "FanOutQA ΔEM [95%]", "p", "GRM acc start→end",
              "GRM near-miss acc start→end", "GRM–rule agr. first→last", "GRM false acc. first→last", "reward_hacking", "judge_leniency", "unsupported_splits", "judge_regression", "heldout_regression"]
    rows = []
    for arm in arms:
        # ROOT/ARM, or any run dir the benchmark wrote (a path with a slash: an arm of another
        # run root, so variants of one arm run under separate roots share a table).
        run_dir = Path(arm) if "/" in arm else out / arm
        files = run_dir.parent
        if not (run_dir / "manifest.json").exists():
            rows.append([arm, "not run"] + ["-"] * (len(header) - 2))
            continue
        curve = training_curve(run_dir)
        d, se = quarter_change(curve)
        parse_end = curve[max(curve)][1] if curve else None
        compare = {}
        cj = files / f"{run_dir.name}.compare.json"
        if cj.exists():
            for r in json.loads(cj.read_text()):
                compare[(r["role"], r["dataset"])] = r
        pol = compare.get(("policy", "qa:test")) or next(
            (v for (role, _), v in compare.items() if role == "policy"), None)
        fan = compare.get(("policy", "qa:fanoutqa"))
        ver = next((v for (role, ds), v in compare.items()
                    if role == "grm" and "verification" in ds), None)
        near = next((v for (role, ds), v in compare.items()
                     if role == "grm" and "near misses" in ds), None)
        agreement, false_acc = (None, None), (None, None)
        hacking = lenient = unsupported = judge_regression = regression = "-"
        aj = files / f"{run_dir.name}.audit.json"
        if aj.exists() and aj.stat().st_size > 0:
            audit = json.loads(aj.read_text())
            policy = [j for r in audit["rounds"] if r["round"] > 0
                      for j in r["judges"] if j["target"] == "policy" and j["judgments"] > 0]
            if policy:
                agreement = (policy[0]["rule_agreement"], policy[-1]["rule_agreement"])
                # Audits written before the statistic existed lack it.
                false_acc = (policy[0].get("false_accept"), policy[-1].get("false_accept"))
            def fired(name):
                hits = [s for s in audit["signals"] if s["name"] == name]
                return f"yes (round {hits[0]['round']})" if hits else "no"
            hacking, lenient = fired("reward_hacking"), fired("judge_leniency")
            unsupported = fired("unsupported_splits")
            judge_regression = fired("judge_regression")
            regression = fired("heldout_regression")
        rows.append([
            arm,
            str(len(curve)),
            f"{fmt(d, '{:+.3f}')} [{fmt(d - 1.96 * se, '{:+.3f}')}, {fmt(d + 1.96 * se, '{:+.3f}')}]",
            fmt(parse_end, "{:.2f}"),
            f"{fmt(pol['mean_a'])}→{fmt(pol['mean_b'])}" if pol else "-",
            (f"{pol['delta']:+.3f} [{pol['ci'][0]:+.3f}, {pol['ci'][1]:+.3f}] (n={pol['n']})"
             if pol else "-"),
            fmt(pol["p_value"], "{:.4f}") if pol else "-",
            f"{fmt(fan['mean_a'])}→{fmt(fan['mean_b'])}" if fan else "-",
            (f"{fan['delta']:+.3f} [{fan['ci'][0]:+.3f}, {fan['ci'][1]:+.3f}] (n={fan['n']})"
             if fan else "-"),
            fmt(fan["p_value"], "{:.4f}") if fan else "-",
            f"{fmt(ver['mean_a'])}→{fmt(ver['mean_b'])} (n={ver['n']})" if ver else "-",
            f"{fmt(near['mean_a'])}→{fmt(near['mean_b'])} (n={near['n']})" if near else "-",
            f"{fmt(agreement[0])}→{fmt(agreement[1])}",
            f"{fmt(false_acc[0])}→{fmt(false_acc[1])}",
            hacking,
            lenient,
            unsupported,
            judge_regression,
            regression,
        ])
    widths = [max(len(str(r[i])) for r in rows + [header]) for i in range(len(header))]
    for r in [header] + rows:
        print(" | ".join(str(c).ljust(w) for c, w in zip(r, widths)))
    print(f"curves: {out}/<arm>-audit/*.png; per-round training figures: {out}/<arm>.curve.txt")


if __name__ == "__main__":
    main()
