#!/usr/bin/env python3
"""The PyTorch side of scripts/check-grpo-parity.sh (issue #15 item 8).

It re-implements TRL's `GRPOTrainer._compute_loss` (token-level importance sampling, the loss
types grpo / bnpo / dapo / dr_grpo, two-sided clip with epsilon_low / epsilon_high, the k3 KL to a
reference model, TRL's truncated importance-sampling correction and its entropy bonus) on the
Hugging Face transformers model of a folder written by `asl model init-tiny`, and compares the
loss and every parameter's gradient with what examples/grpo_parity.rs computed through asl's own
functions on the same batch.

  tokenizer OUT.json [--vocab 512]
        a WordLevel tokenizer.json with VOCAB tokens, for `asl model init-tiny --tokenizer`
  prepare --policy DIR --reference DIR --out SPEC.json [--seed 0]
        the fixed batch (seeded): sequences of different prompt / completion lengths, loss-mask
        zeros inside completions (tool text), advantages of both signs, and per case the old
        log-probs = the policy's current log-probs at the case's temperature + seeded noise, so
        that ratios fall on both sides of both clip bounds.
  compare --spec SPEC.json --asl DIR [--rtol 1e-4]
        the TRL loss in float64 (the reference) and float32 (the noise floor of f32 arithmetic),
        compared with asl's; prints the table and exits 1 when a checked row is above tolerance.

The batch is laid out as TRL's `_compute_loss` receives it: prompts left-padded, completions
right-padded, `input_ids = cat(prompt_ids, completion_ids)`, `logits[:, :-1][:, -C:] / T`,
log-softmax, gather; `mask = completion_mask * tool_mask`. (asl right-pads prompt + completion
as one sequence; with RoPE the two layouts give the same values, and `compare` also checks that
by recomputing the first case right-padded.) Attention is transformers' sdpa: in float64 its
eager path turns the fully masked rows of left padding into NaN. The float64 model is float64
except where transformers itself computes in float32 (RMSNorm's variance, RoPE's angles), so the
reference is accurate to ~1e-8, far below the 1e-4 tolerance.
"""

import argparse
import json
import math
import random
import struct
import sys

# The asl loss types and the TRL loss types each must equal (single process, no gradient
# accumulation: TRL's dapo normaliser num_items_in_batch / num_processes is then the batch's
# token count, the same as bnpo's).
TRL_EQUIVALENT = {"grpo": ["grpo"], "token_mean": ["dapo", "bnpo"], "dr_grpo": ["dr_grpo"]}

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<repo_name>", "<reponame>",
            "<file_sep>", "<filename>", "<gh_stars>", "<issue_start>", "<issue_comment>",
            "<issue_closed>", "<jupyter_start>", "<jupyter_text>", "<jupyter_code>",
            "<jupyter_output>", "<jupyter_script>", "<empty_output>"]


def f32(x):
    """x rounded to the nearest float32, so both sides read the same number."""
    return struct.unpack("f", struct.pack("f", x))[0]


def cmd_tokenizer(a):
    vocab = {s: i for i, s in enumerate(SPECIALS)}
    for i in range(len(SPECIALS), a.vocab):
        vocab[f"t{i}"] = i
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for i, s in enumerate(SPECIALS)],
        "normalizer": None, "pre_tokenizer": {"type": "WhitespaceSplit"},
        "post_processor": None, "decoder": None,
        "model": {"type": "WordLevel", "vocab": vocab, "unk_token": "<|endoftext|>"},
    }
    with open(a.out, "w") as f:
        json.dump(tok, f)


# --------------------------------------------------------------------------------------------
# The model side: TRL's `_get_per_token_logps_and_entropies`.

def load_model(path, dtype):
    import torch
    from transformers import AutoModelForCausalLM
    kw = {"attn_implementation": "sdpa"}
    try:
        m = AutoModelForCausalLM.from_pretrained(path, dtype=dtype, **kw)
    except TypeError:  # transformers < 4.56 knows only torch_dtype
        m = AutoModelForCausalLM.from_pretrained(path, torch_dtype=dtype, **kw)
    m.to(dtype)
    m.train()  # no dropout in llama; train mode as in the trainer's loss
    return m


def trl_inputs(seqs, pad_id):
    """prompt_ids left-padded, completion_ids right-padded, and their masks (TRL's layout)."""
    import torch
    p = max(len(s["prompt"]) for s in seqs)
    c = max(len(s["completion"]) for s in seqs)
    prompt_ids, prompt_mask, completion_ids, completion_mask, tool_mask = [], [], [], [], []
    for s in seqs:
        lp, lc = len(s["prompt"]), len(s["completion"])
        prompt_ids.append([pad_id] * (p - lp) + s["prompt"])
        prompt_mask.append([0] * (p - lp) + [1] * lp)
        completion_ids.append(s["completion"] + [pad_id] * (c - lc))
        completion_mask.append([1] * lc + [0] * (c - lc))
        tool_mask.append(list(s["loss_mask"]) + [0] * (c - lc))
    t = lambda x: torch.tensor(x, dtype=torch.long)
    return t(prompt_ids), t(prompt_mask), t(completion_ids), t(completion_mask), t(tool_mask)


def selective_log_softmax(logits, index):
    import torch
    return torch.gather(logits.log_softmax(-1), -1, index.unsqueeze(-1)).squeeze(-1)


def entropy_from_logits(logits):
    p = logits.softmax(-1)
    return -(p * logits.log_softmax(-1)).sum(-1)


def per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask, temperature,
                    entropy=False):
    """(B, C) log-probs of the completion tokens at `temperature` (and entropies): TRL's way."""
    import torch
    input_ids = torch.cat([prompt_ids, completion_ids], dim=1)
    attention_mask = torch.cat([prompt_mask, completion_mask], dim=1)
    keep = completion_ids.size(1)
    logits = model(input_ids=input_ids, attention_mask=attention_mask, use_cache=False).logits
    logits = logits[:, :-1, :][:, -keep:, :] / temperature
    logps = selective_log_softmax(logits, completion_ids)
    return logps, (entropy_from_logits(logits) if entropy else None)


def right_padded_logps(model, seqs, pad_id, temperature):
    """The same log-probs from asl's layout (prompt + completion right-padded as one row), as
    (B, C) aligned with completion tokens: the layout cross-check."""
    import torch
    L = max(len(s["prompt"]) + len(s["completion"]) for s in seqs)
    C = max(len(s["completion"]) for s in seqs)
    ids, att = [], []
    for s in seqs:
        row = s["prompt"] + s["completion"]
        ids.append(row + [pad_id] * (L - len(row)))
        att.append([1] * len(row) + [0] * (L - len(row)))
    ids, att = torch.tensor(ids), torch.tensor(att)
    logits = model(input_ids=ids, attention_mask=att, use_cache=False).logits[:, :-1] / temperature
    full = selective_log_softmax(logits, ids[:, 1:])  # (B, L-1): logp of token t+1
    out = torch.zeros(len(seqs), C, dtype=full.dtype)
    for b, s in enumerate(seqs):
        lp, lc = len(s["prompt"]), len(s["completion"])
        out[b, :lc] = full[b, lp - 1:lp - 1 + lc]
    return out


# --------------------------------------------------------------------------------------------
# TRL's `_compute_loss`, written from its definition (token-level importance sampling).

def trl_compute_loss(per_token_logps, old_per_token_logps, ref_per_token_logps, advantages, mask,
                     loss_type, epsilon_low, epsilon_high, beta, max_completion_length,
                     importance_sampling_ratio=None, entropies=None, entropy_coef=0.0):
    """The loss TRL's GRPOTrainer back-propagates for one batch with gradient_accumulation_steps
    1 and one process; also the clip counts TRL logs."""
    import torch
    advantages = advantages.unsqueeze(1)  # (B, 1)
    coef_1 = torch.exp(per_token_logps - old_per_token_logps)
    if beta != 0.0:
        d = ref_per_token_logps - per_token_logps
        per_token_kl = torch.exp(d) - d - 1
    coef_2 = torch.clamp(coef_1, 1 - epsilon_low, 1 + epsilon_high)
    per_token_loss = -torch.min(coef_1 * advantages, coef_2 * advantages)
    if importance_sampling_ratio is not None:
        per_token_loss = per_token_loss * importance_sampling_ratio
    if beta != 0.0:
        per_token_loss = per_token_loss + beta * per_token_kl
    if loss_type == "grpo":
        loss = ((per_token_loss * mask).sum(-1) / mask.sum(-1).clamp(min=1.0)).mean()
    elif loss_type == "bnpo":
        loss = (per_token_loss * mask).sum() / mask.sum().clamp(min=1.0)
    elif loss_type == "dr_grpo":
        loss = (per_token_loss * mask).sum() / (per_token_loss.size(0) * max_completion_length)
    elif loss_type == "dapo":
        num_items_in_batch = mask.sum()  # over the whole step; one process
        normalizer = num_items_in_batch.clamp(min=1.0) / 1
        loss = (per_token_loss * mask).sum() / normalizer
    else:
        raise ValueError(loss_type)
    if entropy_coef != 0.0:
        # TRL's bonus is the mean per-token entropy whatever the loss type.
        if loss_type == "dapo":
            entropy_loss = (entropies * mask).sum() / normalizer
        else:
            entropy_loss = (entropies * mask).sum() / mask.sum().clamp(min=1.0)
        loss = loss - entropy_coef * entropy_loss
    with torch.no_grad():
        low = (coef_1 < 1 - epsilon_low) & (advantages < 0)
        high = (coef_1 > 1 + epsilon_high) & (advantages > 0)
        m = mask.bool()
        clip = {"low": int((low & m).sum()), "high": int((high & m).sum()),
                "region_low": int(((coef_1 < 1 - epsilon_low) & m).sum()),
                "region_high": int(((coef_1 > 1 + epsilon_high) & m).sum()),
                "tokens": int(m.sum()),
                "per_seq": (((low | high) & m).sum(-1).double()
                            / m.sum(-1).clamp(min=1).double()).tolist()}
        if beta != 0.0:
            clip["max_abs_ref_minus_logp"] = float((d.abs() * mask).max())
    return loss, clip


# --------------------------------------------------------------------------------------------
# prepare

def cmd_prepare(a):
    import torch
    torch.manual_seed(a.seed)
    rng = random.Random(a.seed)
    cfg = json.load(open(f"{a.policy}/config.json"))
    vocab, pad_id = cfg["vocab_size"], cfg.get("pad_token_id") or 0
    # Different prompt and completion lengths; loss-mask zeros inside completions (tool text);
    # one completion ends in tool text; one is the longest of both.
    shapes = [  # (prompt length, completion length, masked [start, end) spans of the completion)
        (6, 14, [(4, 8)]),
        (11, 5, []),
        (3, 17, [(2, 3), (9, 13)]),
        (8, 9, [(7, 9)]),
    ]
    draw = lambda n: [rng.randrange(len(SPECIALS), vocab) for _ in range(n)]
    seqs = []
    for (lp, lc, spans) in shapes:
        mask = [1] * lc
        for s, e in spans:
            mask[s:e] = [0] * (e - s)
        seqs.append({"prompt": draw(lp), "completion": draw(lc), "loss_mask": mask})
    advantages = [1.25, -0.75, 0.5, -1.5]
    for s, adv in zip(seqs, advantages):
        s["advantage"] = f32(adv)
    max_len = 20  # dr_grpo's max_completion_length (>= the longest completion, 17)

    cases = [
        # name, asl loss_type, eps_low, eps_high, beta, temperature, micro_batch, IS, entropy, checked
        ("grpo", "grpo", 0.2, 0.28, 0.04, 0.7, 4, False, 0.0, True),
        ("dr_grpo", "dr_grpo", 0.2, 0.2, 0.04, 0.7, 2, False, 0.0, True),
        ("token_mean", "token_mean", 0.2, 0.28, 0.04, 0.7, 2, False, 0.0, True),
        ("grpo_t1_nokl_mb1", "grpo", 0.1, 0.3, 0.0, 1.0, 1, False, 0.0, True),
        ("grpo_is", "grpo", 0.2, 0.28, 0.1, 1.3, 3, True, 0.0, True),
        ("token_mean_entropy", "token_mean", 0.2, 0.28, 0.04, 0.7, 2, False, 0.01, True),
        # asl aggregates its entropy bonus like the loss (verl's convention); TRL's is always the
        # token mean. These rows show the difference and do not count toward the exit status.
        ("grpo_entropy", "grpo", 0.2, 0.28, 0.04, 0.7, 2, False, 0.01, False),
        ("dr_grpo_entropy", "dr_grpo", 0.2, 0.2, 0.04, 0.7, 2, False, 0.01, False),
    ]
    model = load_model(a.policy, torch.float64)
    ids = trl_inputs(seqs, pad_id)
    current = {}
    out_cases = []
    for (name, lt, lo, hi, beta, temp, mb, is_w, ent, checked) in cases:
        if temp not in current:
            with torch.no_grad():
                current[temp] = per_token_logps(model, *ids[:4], temp)[0]
        cur = current[temp]
        bounds = [math.log(1 - lo), math.log(1 + hi)]
        old, isw = [], []
        for b, s in enumerate(seqs):
            row, wrow = [], []
            for t in range(len(s["completion"])):
                # log ratio = cur - old = -delta; keep it 1e-3 away from both clip bounds, so
                # f32 and f64 agree on which side of the bound every token lies
                while True:
                    delta = rng.uniform(-0.45, 0.45)
                    if all(abs(-delta - x) > 1e-3 for x in bounds):
                        break
                row.append(f32(float(cur[b, t]) + delta))
                wrow.append(f32(rng.uniform(0.3, 1.0)))
            old.append(row)
            isw.append(wrow)
        out_cases.append({
            "name": name, "loss_type": lt, "eps_low": lo, "eps_high": hi, "beta": beta,
            "entropy_coef": ent, "temperature": temp, "max_completion_length": max_len,
            "micro_batch": mb, "old_logps": old, "is_weights": isw if is_w else None,
            "checked": checked,
        })
    spec = {"policy": a.policy, "reference": a.reference, "seed": a.seed, "sequences": seqs,
            "cases": out_cases}
    with open(a.out, "w") as f:
        json.dump(spec, f)


# --------------------------------------------------------------------------------------------
# compare

def trl_loss_and_grads(model, ref_model, spec, case, trl_type, dtype):
    import torch
    seqs = spec["sequences"]
    pad_id = model.config.pad_token_id or 0
    prompt_ids, prompt_mask, completion_ids, completion_mask, tool_mask = trl_inputs(seqs, pad_id)
    mask = (completion_mask * tool_mask).to(dtype)
    C = completion_ids.size(1)
    pad = lambda rows: torch.tensor([r + [0.0] * (C - len(r)) for r in rows], dtype=dtype)
    old = pad(case["old_logps"])
    isr = pad(case["is_weights"]) if case["is_weights"] is not None else None
    adv = torch.tensor([s["advantage"] for s in seqs], dtype=dtype)
    T = case["temperature"]
    ref = None
    if case["beta"] != 0.0:
        with torch.no_grad():
            ref = per_token_logps(ref_model, prompt_ids, prompt_mask, completion_ids,
                                  completion_mask, T)[0]
    model.zero_grad(set_to_none=True)
    logps, ent = per_token_logps(model, prompt_ids, prompt_mask, completion_ids, completion_mask,
                                 T, entropy=case["entropy_coef"] != 0.0)
    loss, clip = trl_compute_loss(logps, old, ref, adv, mask, trl_type, case["eps_low"],
                                  case["eps_high"], case["beta"], case["max_completion_length"],
                                  isr, ent, case["entropy_coef"])
    loss.backward()
    grads = {n: p.grad.detach().to(torch.float64).clone() for n, p in model.named_parameters()
             if p.grad is not None}
    return float(loss.detach()), grads, clip


def grad_diffs(ref, other):
    """max |Δ| over every element, and max over tensors of ‖Δ‖∞ / ‖g_ref‖∞."""
    import torch
    max_abs, max_rel, worst = 0.0, 0.0, ""
    for name, g in ref.items():
        d = float((other[name].to(torch.float64) - g).abs().max())
        scale = float(g.abs().max())
        rel = d / scale if scale > 0 else (0.0 if d == 0 else math.inf)
        max_abs = max(max_abs, d)
        if rel > max_rel:
            max_rel, worst = rel, name
    return max_abs, max_rel, worst


def cmd_compare(a):
    import torch
    from safetensors.torch import load_file
    torch.set_num_threads(max(1, a.threads))
    spec = json.load(open(a.spec))
    m64 = load_model(spec["policy"], torch.float64)
    m32 = load_model(spec["policy"], torch.float32)
    r64 = load_model(spec["reference"], torch.float64) if spec["reference"] else None
    r32 = load_model(spec["reference"], torch.float32) if spec["reference"] else None
    for m in (r64, r32):
        if m is not None:
            m.requires_grad_(False)
    names = sorted(n for n, _ in m64.named_parameters())
    n_params = sum(p.numel() for _, p in m64.named_parameters())
    tied = m64.config.tie_word_embeddings

    rows, failures, notes = [], [], []
    for case in spec["cases"]:
        asl = load_file(f"{a.asl}/{case['name']}.safetensors")
        asl_stats = json.load(open(f"{a.asl}/{case['name']}.json"))["stats"]
        asl_loss = float(asl.pop("__loss__")[0])
        asl_names = sorted(asl)
        if asl_names != names:
            failures.append(f"{case['name']}: asl's gradients name {len(asl_names)} tensors, "
                            f"torch's parameters {len(names)}: only asl "
                            f"{sorted(set(asl_names) - set(names))[:5]}, only torch "
                            f"{sorted(set(names) - set(asl_names))[:5]}")
            continue
        for trl_type in TRL_EQUIVALENT[case["loss_type"]]:
            loss64, g64, clip = trl_loss_and_grads(m64, r64, spec, case, trl_type, torch.float64)
            loss32, g32, _ = trl_loss_and_grads(m32, r32, spec, case, trl_type, torch.float32)
            dl = abs(asl_loss - loss64)
            gabs, grel, worst = grad_diffs(g64, asl)
            _, floor_rel, _ = grad_diffs(g64, g32)
            loss_tol = a.atol + a.rtol * abs(loss64)
            ok = dl <= loss_tol and grel <= a.rtol
            # asl's per-sequence clip fraction must count exactly TRL's clipped tokens
            clip_ok = all(abs(x - y) < 1e-6 for x, y in
                          zip([s["clip_fraction"] for s in asl_stats], clip["per_seq"]))
            ok = ok and clip_ok
            rows.append({
                "case": case["name"], "asl": case["loss_type"], "trl": trl_type,
                "T": case["temperature"], "eps": f"{case['eps_low']}/{case['eps_high']}",
                "beta": case["beta"], "mb": case["micro_batch"],
                "extra": " ".join((["IS"] if case["is_weights"] else [])
                                  + ([f"H {case['entropy_coef']}"] if case["entropy_coef"] else [])),
                "loss": loss64, "dloss": dl, "gabs": gabs, "grel": grel, "worst": worst,
                "floor": floor_rel, "f32loss": abs(loss32 - loss64),
                "clipped": f"{clip['low'] + clip['high']} ({clip['region_low'] + clip['region_high']})"
                           f"/{clip['tokens']}",
                "clip_ok": clip_ok, "ok": ok, "checked": case["checked"],
            })
            if case["beta"] and clip.get("max_abs_ref_minus_logp", 0) >= 20:
                notes.append(f"{case['name']}: |ref - logp| reaches "
                             f"{clip['max_abs_ref_minus_logp']:.1f}: asl's k3 clamp is active")
            if case["checked"] and not ok:
                failures.append(f"{case['name']} vs TRL {trl_type}: |Δloss| {dl:.2e} "
                                f"(tol {loss_tol:.1e}), max rel grad diff {grel:.2e} in {worst} "
                                f"(tol {a.rtol:.0e}), clip fractions equal: {clip_ok}")

    # Layout cross-check: TRL's left-padded prompts vs asl's right-padded rows, float64.
    first = spec["cases"][0]
    with torch.no_grad():
        lay_trl = per_token_logps(m64, *trl_inputs(spec["sequences"], m64.config.pad_token_id or 0)[:4],
                                  first["temperature"])[0]
        lay_right = right_padded_logps(m64, spec["sequences"], m64.config.pad_token_id or 0,
                                       first["temperature"])
    lmask = torch.tensor([[1.0] * len(s["completion"]) + [0.0] * (lay_trl.size(1) - len(s["completion"]))
                          for s in spec["sequences"]], dtype=torch.float64)
    layout_diff = float(((lay_trl - lay_right).abs() * lmask).max())

    import transformers
    seqs = spec["sequences"]
    print()
    print(f"GRPO loss parity: asl (candle, f32, examples/grpo_parity.rs) vs TRL's "
          f"GRPOTrainer._compute_loss in PyTorch {torch.__version__} (float64 reference; "
          f"transformers {transformers.__version__})")
    print(f"tiny llama: {m64.config.num_hidden_layers} layers, hidden {m64.config.hidden_size}, "
          f"vocab {m64.config.vocab_size}, tied embeddings {tied}, {len(names)} tensors, "
          f"{n_params:,} parameters; batch: {len(seqs)} sequences, prompts "
          f"{[len(s['prompt']) for s in seqs]}, completions {[len(s['completion']) for s in seqs]}, "
          f"loss tokens {[sum(s['loss_mask']) for s in seqs]}, advantages "
          f"{[s['advantage'] for s in seqs]}")
    print()
    hdr = ("| case | asl loss_type | TRL loss_type | T | eps low/high | beta | micro-batch | other | "
           "loss (TRL f64) | abs. loss diff | max abs. grad diff | max rel. grad diff | "
           "f32 floor (torch f32 rel.) | clipped tokens (outside range)/all | clip frac. equal | result |")
    print(hdr)
    print("|" + "---|" * (hdr.count("|") - 1))
    for r in rows:
        res = ("PASS" if r["ok"] else "FAIL") if r["checked"] else \
              ("info: " + ("equal" if r["ok"] else "differs"))
        print(f"| {r['case']} | {r['asl']} | {r['trl']} | {r['T']} | {r['eps']} | {r['beta']} | "
              f"{r['mb']} | {r['extra'] or '—'} | {r['loss']:.6e} | {r['dloss']:.2e} | "
              f"{r['gabs']:.2e} | {r['grel']:.2e} | {r['floor']:.2e} | {r['clipped']} | "
              f"{r['clip_ok']} | {res} |")
    print()
    print("abs. loss diff: |asl − TRL f64|; max abs. grad diff: over every element of every "
          "parameter; max rel. grad diff: max over parameters of max|Δg| / max|g| (tolerance "
          f"{a.rtol:.0e}; loss: {a.atol:.0e} + {a.rtol:.0e}·|loss|); f32 floor: the same relative "
          "difference between TRL's formula in torch float32 and float64; clipped tokens: those "
          "whose clip is active for their advantage's sign (TRL's count; in brackets every token whose "
          "ratio is outside [1-eps_low, 1+eps_high]), of all loss tokens; "
          "micro-batch: asl's sequences per forward/backward, gradients summed as `train` does.")
    print(f"layout check: TRL's left-padded prompts vs asl's right-padded rows, max |Δlogp| "
          f"(float64) = {layout_diff:.2e}")
    for n in notes:
        print("note:", n)
    info = [r for r in rows if not r["checked"] and not r["ok"]]
    if info:
        print("info rows: asl aggregates its entropy bonus like the loss, as verl does with "
              "loss_agg_mode (grpo: per-sequence mean, then mean; dr_grpo: sum / (B·L_max)); "
              "TRL's bonus is the token mean over the batch whatever the loss type, so for grpo "
              "and dr_grpo those rows differ by convention and do not count.")
    if layout_diff > 1e-6:
        failures.append(f"layout check: {layout_diff:.2e}")
    if failures:
        print()
        for f in failures:
            print("FAIL:", f)
        print(f"grpo parity: FAIL ({len(failures)} problem(s))")
        return 1
    n_checked = sum(1 for r in rows if r["checked"])
    print(f"grpo parity: PASS ({n_checked} comparisons)")
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    t = sub.add_parser("tokenizer")
    t.add_argument("out")
    t.add_argument("--vocab", type=int, default=512)
    p = sub.add_parser("prepare")
    p.add_argument("--policy", required=True)
    p.add_argument("--reference", required=True)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    c = sub.add_parser("compare")
    c.add_argument("--spec", required=True)
    c.add_argument("--asl", required=True)
    c.add_argument("--rtol", type=float, default=1e-4)
    c.add_argument("--atol", type=float, default=1e-6)
    c.add_argument("--threads", type=int, default=2)
    a = ap.parse_args()
    if a.cmd == "tokenizer":
        cmd_tokenizer(a)
        return 0
    if a.cmd == "prepare":
        cmd_prepare(a)
        return 0
    return cmd_compare(a)


if __name__ == "__main__":
    sys.exit(main())
