"""The GRM's verdicts read from its log-probs instead of sampled: for each held-out prediction an
eval scored with the reference shown, is log p(the warm-up's "correct" completion) above
log p(its "wrong" one)? Prints the pass rate on right and on wrong predictions (the eval's
labels). A judge that passes both alike carries no signal, whether or not its sampled thought
was the trouble.

The prompt is `roles::grm::prompt` with the `tags` tool format under SmolLM2's chat template, and
the two completions are the warm-up's GRM demonstrations (src/stages/warmup.rs); keep them in step.
With DEMOS `contrast` the completions are those of `warmup.grm_demos = contrast`, which restate
the reference first (`warmup::grm_thought`).
Usage: python scripts/judge_logits.py MODEL_DIR EVAL_DIR [DEMOS]   (run by scripts/judge-logits.sh)
"""

import sys

import pyarrow.parquet as pq
import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

SYSTEM = "You are a careful judge of answers to factual questions."
ASK = (
    "Decide whether the candidate answer is correct. You may think inside <think> and </think> "
    "and search with <search> query </search>. End with <answer>conclusion: correct</answer> or "
    "<answer>conclusion: wrong</answer>."
)
VERDICT = {True: "correct", False: "wrong"}


def completion(demos, reference, correct):
    if demos == "contrast":
        says = "names it" if correct else "does not name it"
        thought = f"The reference is {reference}. The candidate {says}."
    else:
        thought = f"The candidate {'matches' if correct else 'does not match'} the reference."
    return f"<think>{thought}</think>\n<answer>conclusion: {VERDICT[correct]}</answer>"


def prompt(question, reference, candidate):
    user = f"Question: {question}\nReference answer: {reference}\nCandidate answer: {candidate}\n{ASK}"
    return (
        f"<|im_start|>system\n{SYSTEM}<|im_end|>\n<|im_start|>user\n{user}<|im_end|>\n"
        "<|im_start|>assistant\n"
    )


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit("usage: judge_logits.py MODEL_DIR EVAL_DIR [answers|mixed|contrast]")
    model_dir, eval_dir = sys.argv[1], sys.argv[2]
    demos = sys.argv[3] if len(sys.argv) == 4 else "answers"
    tok = AutoTokenizer.from_pretrained(model_dir)
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32).eval()
    items = [
        x
        for x in pq.read_table(f"{eval_dir}/eval_items-00000.parquet").to_pylist()
        if x["role"] == "grm" and x["dataset"].startswith("qa:test")
    ]
    if not items:
        sys.exit(f"{eval_dir}: no GRM rows on test predictions (eval.grm_questions = 0?)")

    def logprob(p, c):
        ids = tok(p + c, return_tensors="pt").input_ids
        n = len(tok(p).input_ids)
        with torch.no_grad():
            logp = model(ids).logits[0, :-1].log_softmax(-1)
        return logp[n - 1 :].gather(1, ids[0, n:, None]).sum().item()

    seen = {True: 0, False: 0}
    passed = {True: 0, False: 0}
    for x in items:
        reference = x["references"][0].strip()
        p = prompt(x["question"], reference, x["candidate"] or "")
        says = logprob(p, completion(demos, reference, True)) > logprob(
            p, completion(demos, reference, False)
        )
        seen[bool(x["label"])] += 1
        passed[bool(x["label"])] += says
    right, wrong = seen[True], seen[False]
    acc = (passed[True] + wrong - passed[False]) / (right + wrong)
    print(
        f"{model_dir}: passes {passed[True] / max(right, 1):.2f} of {right} right and "
        f"{passed[False] / max(wrong, 1):.2f} of {wrong} wrong predictions; accuracy {acc:.3f}"
    )


if __name__ == "__main__":
    main()
