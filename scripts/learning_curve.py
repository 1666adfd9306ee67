"""The training-reward curve of a run, read from its shards (used by check-learns.sh).

Per round: the policy's mean reward over its attempts (T=1 rollouts of the round's tasks),
the share of attempts that parsed, and the training figures (mean ratio, clip fraction, grad
norm, optimizer steps). Then the change from the first round to the last, paired by question
(a task's `topic` holds its QA id when tasks come from labelled questions), with the standard
error of the mean over questions, and the same for the first and last quarter of rounds.
"""
import json
import math
import sys
from collections import defaultdict
from pathlib import Path

import pyarrow.parquet as pq


def outputs(manifest, stage, rnd, step=None):
    """Files of the newest done run of `stage` in round `rnd` (all parts; one step)."""
    done = [e for e in manifest["entries"]
            if e["stage"] == stage and e["round"] == rnd and e["status"] == "done"]
    if not done:
        return []
    newest = done[-1]
    want = newest.get("steps", 0) if step is None else step
    parts = {}
    for e in done:
        if e.get("step", 0) == want and e["shard"].split("/")[1] == newest["shard"].split("/")[1]:
            parts[e["shard"]] = e
    return [o["path"] for e in parts.values() for o in e["outputs"]]


def read(run_dir, paths, prefix):
    rows = []
    for p in paths:
        if Path(p).name.startswith(prefix) and p.endswith(".parquet"):
            rows.extend(pq.read_table(run_dir / p).to_pylist())
    return rows


def mean_se(xs):
    n = len(xs)
    if n == 0:
        return float("nan"), float("nan")
    m = sum(xs) / n
    if n < 2:
        return m, float("nan")
    var = sum((x - m) ** 2 for x in xs) / (n - 1)
    return m, math.sqrt(var / n)


def main():
    run_dir = Path(sys.argv[1])
    manifest = json.loads((run_dir / "manifest.json").read_text())
    rounds = sorted({e["round"] for e in manifest["entries"] if e["round"] > 0
                     and e["stage"] == "reward" and e["status"] == "done"})
    per_question = {}
    print(f"{'round':>5} {'reward':>8} {'±se':>7} {'parsed':>7} {'ratio':>6} {'clip':>6} "
          f"{'|g|':>7} {'steps':>5}")
    for r in rounds:
        tasks = read(run_dir, outputs(manifest, "generate", r), "tasks-")
        qid = {t["task_id"]: t.get("topic") or t["question"] for t in tasks}
        rewards = [x for x in read(run_dir, outputs(manifest, "reward", r), "rewards-")
                   if x["role"] == "policy"]
        attempts = read(run_dir, outputs(manifest, "rollout", r), "trajectories-")
        by_q = defaultdict(list)
        for x in rewards:
            by_q[qid.get(x["task_id"], x["task_id"])].append(x["reward"])
        per_question[r] = {q: sum(v) / len(v) for q, v in by_q.items()}
        m, se = mean_se(list(per_question[r].values()))
        parsed = sum(a["parsed"] for a in attempts) / max(len(attempts), 1)
        steps = max([e.get("steps", 0) for e in manifest["entries"]
                     if e["stage"] == "apply" and e["round"] == r] or [0])
        ratios, clips, norms = [], [], []
        for s in range(1, steps + 1):
            ups = read(run_dir, outputs(manifest, "train", r, s), "updates-")
            ratios += [u["mean_ratio"] for u in ups]
            clips += [u["clip_fraction"] for u in ups]
            norms += [x["grad_norm"] for x in read(run_dir, outputs(manifest, "apply", r, s),
                                                    "steps-") if x["role"] == "all"]
        avg = lambda xs: sum(xs) / len(xs) if xs else float("nan")
        print(f"{r:>5} {m:>8.3f} {se:>7.3f} {parsed:>7.2f} {avg(ratios):>6.3f} "
              f"{avg(clips):>6.3f} {avg(norms):>7.3f} {steps:>5}")
    if len(rounds) < 2:
        print("learning_curve: fewer than two rounds done")
        return

    def paired(first, last):
        """Paired by question when the rounds share their questions (fixed tasks); otherwise
        the difference of the two groups' means with the unpaired standard error."""
        qs = set.intersection(*(set(per_question[r]) for r in first + last))
        if qs:
            diffs = [sum(per_question[r][q] for r in last) / len(last)
                     - sum(per_question[r][q] for r in first) / len(first) for q in qs]
            return mean_se(diffs) + (f"se over {len(qs)} paired questions",)
        a = [v for r in first for v in per_question[r].values()]
        b = [v for r in last for v in per_question[r].values()]
        (ma, sa), (mb, sb) = mean_se(a), mean_se(b)
        return (mb - ma, math.sqrt(sa ** 2 + sb ** 2),
                f"unpaired se, {len(a)} and {len(b)} questions")

    d, se, how = paired([rounds[0]], [rounds[-1]])
    print(f"round {rounds[-1]} − round {rounds[0]}: {d:+.3f} ± {se:.3f} ({how})")
    q = max(1, len(rounds) // 4)
    d, se, how = paired(rounds[:q], rounds[-q:])
    print(f"last {q} rounds − first {q} rounds: {d:+.3f} ± {se:.3f} ({how}); "
          f"95% interval [{d - 1.96 * se:+.3f}, {d + 1.96 * se:+.3f}]")


if __name__ == "__main__":
    main()
