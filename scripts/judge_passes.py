"""What the judge passes that the rule label does not, and whether the attempt read it.

Per round of a run with a `judge` stage: the GRM's verdicts on policy attempts split by the rule
label (exact match after SQuAD normalisation against the task's answer, as the audit's "GRM–rule
agreement"), the verdict, and whether the answer appears (normalised, whole words) in the search
results the attempt read, which is what `reward.grounded_answers` checks; the last column is
the share of the rule-wrong answers the judge passed. Then a few of the last
round's false accepts (passed, the rule says wrong), unread ones first.

Usage: python scripts/judge_passes.py RUN_DIR [EXAMPLES]
"""
import json
import re
import string
import sys
from pathlib import Path

import pyarrow.parquet as pq

from learning_curve import outputs

PUNCT = set(string.punctuation)


def norm(s):
    s = "".join(c for c in (s or "").lower() if c not in PUNCT)
    return " ".join(re.sub(r"\b(a|an|the)\b", " ", s).split())


def read_text(text):
    blocks = re.findall(r"<(information|tool_response)>(.*?)</\1>", text, re.S)
    return "\n".join(b for _, b in blocks)


def main():
    run = Path(sys.argv[1])
    examples = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    manifest = json.loads((run / "manifest.json").read_text())
    rounds = sorted({e["round"] for e in manifest["entries"] if e["stage"] == "judge"})
    print("round  judged  rule-right  passed-right  passed-wrong (unread)  rule-right-unread-passed"
          "  passed-of-wrong")
    last = []
    for rnd in rounds:
        jfiles = [f for f in outputs(manifest, "judge", rnd) if "judgments" in Path(f).name]
        tfiles = [f for f in outputs(manifest, "rollout", rnd) if "trajectories" in Path(f).name]
        if not jfiles or not tfiles:
            continue
        texts = {}
        for f in tfiles:
            for r in pq.read_table(run / f, columns=["trajectory_id", "text"]).to_pylist():
                texts[r["trajectory_id"]] = r["text"]
        n = right = pass_right = pass_wrong = pass_wrong_unread = pass_right_unread = 0
        false_accepts = []
        for f in jfiles:
            for j in pq.read_table(run / f).to_pylist():
                if j["target"] != "policy" or not j["parsed"]:
                    continue
                cand = j["candidate_answer"] or ""
                ok = norm(cand) == norm(j["reference_answer"])
                read = f" {norm(read_text(texts.get(j['target_trajectory_id'], '')))} "
                unread = not norm(cand) or f" {norm(cand)} " not in read
                passed = j["verdict"] == "correct"
                n += 1
                right += ok
                if passed and ok:
                    pass_right += 1
                    pass_right_unread += unread
                elif passed:
                    pass_wrong += 1
                    pass_wrong_unread += unread
                    false_accepts.append((not unread, j["question"], j["reference_answer"], cand))
        print(f"{rnd:5}  {n:6}  {right:10}  {pass_right:12}  {pass_wrong:12} ({pass_wrong_unread:3})"
              f"  {pass_right_unread:24}  {pass_wrong / max(n - right, 1):15.2f}")
        last = false_accepts
    if last:
        print(f"\nround {rounds[-1]}: false accepts (unread first)")
        for read, q, ref, cand in sorted(last)[:examples]:
            print(f"  {'read  ' if read else 'unread'} {q[:70]!r} reference {ref!r}, answer {cand!r}")


if __name__ == "__main__":
    main()
