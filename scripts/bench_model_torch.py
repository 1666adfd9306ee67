#!/usr/bin/env python3
"""The transformers + PyTorch side of scripts/bench-model.sh (issue #5 item 6).

Bench mode (default) measures on a converted HF folder, in float32 on the CPU, what
examples/bench_model.rs measures for asl, and prints one JSON object per line:
  decode    batch B of the same chat prompt, greedy, min_new_tokens = max_new_tokens = N (so
            end-of-sequence cannot stop a row early); prefill included; tokens/s = B*N / wall.
  train     one full fine-tuning step on B x L random token ids with labels (token-mean
            cross-entropy): forward + loss, backward, grad-norm clip to 1.0 and AdamW (lr 1e-5,
            betas 0.9/0.999, eps 1e-8, no weight decay: asl's TrainConfig defaults). One warm-up
            step first; the second is reported.
  peak_rss  ru_maxrss of the process after each phase (same phase order as the asl side).

Check mode (--check ASL.json, written by `bench_model MODEL_DIR --check ASL.json`) loads the
folder as it is and compares with asl: loading info (missing / unexpected keys), tokenizer ids
and the chat template, the greedy answer to "What is the capital of France?", and on three
prompts the next-token logits and a greedy 20-token continuation. Prints a JSON line with
everything and exits 1 when the answer lacks "Paris" or differs from asl's.

With --device cuda (scripts/gpu-check.sh) every phase runs on the GPU: decode in --dtype
(bf16 there, as asl's side), training with f32 weights; each timed phase ends with
torch.cuda.synchronize(), and the lines add peak_gpu_mib (torch.cuda.max_memory_allocated).

usage: bench_model_torch.py MODEL_DIR [--batches 1,8,32] [--new-tokens 128] [--train-batch 8]
                            [--train-len 256] [--threads N] [--no-train] [--check ASL.json]
                            [--device cpu|cuda] [--dtype f32|bf16|f16]
"""

import argparse
import json
import os
import resource
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

DECODE_PROMPT = "Write a long story about a dragon who learns to cook."
DEFAULT_SYSTEM = "You are a helpful AI assistant named SmolLM, trained by Hugging Face"
FRANCE = "What is the capital of France?"
DEVICE = "cpu"
DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def sync():
    if DEVICE.startswith("cuda"):
        torch.cuda.synchronize()


def peak_gpu():
    if DEVICE.startswith("cuda"):
        return {"peak_gpu_mib": torch.cuda.max_memory_allocated() / 2**20}
    return {}


def peak_rss_mib():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # KiB on Linux


def emit(**kv):
    print(json.dumps({"side": "torch", **kv}), flush=True)


def chatml(text):
    """The same prompt text asl renders with the folder's ChatML template."""
    return (f"<|im_start|>system\n{DEFAULT_SYSTEM}<|im_end|>\n"
            f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n")


def load_model(path, **kw):
    try:
        return AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, **kw)
    except TypeError:  # transformers < 4.56 knows only torch_dtype
        return AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32, **kw)


def encode(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


def greedy(model, ids, n, pad_id, min_new=None, eos=None):
    x = torch.tensor([ids], device=DEVICE)
    kw = dict(do_sample=False, max_new_tokens=n, pad_token_id=pad_id,
              attention_mask=torch.ones_like(x), temperature=None, top_p=None, top_k=None)
    if min_new is not None:
        kw["min_new_tokens"] = min_new
    if eos is not None:
        kw["eos_token_id"] = eos
    with torch.inference_mode():
        out = model.generate(x, **kw)
    return out[0, len(ids):].tolist()


def bench(args, model, tok):
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    ids = encode(tok, chatml(DECODE_PROMPT))
    train_model = model
    model = model.to(DTYPES[args.dtype]) if args.dtype != "f32" else model
    model.eval()
    greedy(model, ids, 8, pad_id)  # warm-up
    for b in args.batches:
        x = torch.tensor([ids] * b, device=DEVICE)
        sync()
        t0 = time.perf_counter()
        with torch.inference_mode():
            out = model.generate(x, attention_mask=torch.ones_like(x), do_sample=False,
                                 max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens,
                                 pad_token_id=pad_id, temperature=None, top_p=None, top_k=None)
        sync()
        secs = time.perf_counter() - t0
        new = out.shape[1] - len(ids)
        if new != args.new_tokens:
            sys.exit(f"decode batch {b}: {new} new tokens, expected {args.new_tokens}")
        emit(bench="decode", dtype=args.dtype, batch=b, prompt_tokens=len(ids), new_tokens=new,
             seconds=secs, tokens_per_s=b * new / secs, peak_rss_mib=peak_rss_mib(), **peak_gpu())
    if not args.no_train:
        if model is not train_model or args.dtype != "f32":
            # Training keeps f32 weights, as asl's does.
            del model
            model = load_model(args.model_dir).to(DEVICE)
            if DEVICE.startswith("cuda"):
                torch.cuda.empty_cache()
                torch.cuda.reset_peak_memory_stats()
        model.train()
        opt = torch.optim.AdamW(model.parameters(), lr=1e-5, betas=(0.9, 0.999), eps=1e-8,
                                weight_decay=0.0)
        g = torch.Generator().manual_seed(0)
        x = torch.randint(0, model.config.vocab_size, (args.train_batch, args.train_len),
                          generator=g).to(DEVICE)
        for step in range(2):
            sync()
            t0 = time.perf_counter()
            loss = model(input_ids=x, attention_mask=torch.ones_like(x), labels=x).loss
            t1 = time.perf_counter()
            loss.backward()
            t2 = time.perf_counter()
            norm = torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            opt.zero_grad(set_to_none=True)
            sync()
            t3 = time.perf_counter()
            if step == 1:
                emit(bench="train", loss="cross_entropy", batch=args.train_batch,
                     seq_len=args.train_len, seconds=t3 - t0, forward_s=t1 - t0,
                     backward_s=t2 - t1, optimizer_s=t3 - t2, loss_value=loss.item(),
                     grad_norm=float(norm), peak_rss_mib=peak_rss_mib(), **peak_gpu())
    emit(bench="peak_rss", peak_rss_mib=peak_rss_mib(), **peak_gpu())


def check(args, model, info, tok):
    ref = json.load(open(args.check))
    pad_id = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    model.eval()
    res = {"bench": "check",
           "missing_keys": list(info.get("missing_keys", [])),
           "unexpected_keys": list(info.get("unexpected_keys", [])),
           "mismatched_keys": [list(map(str, m)) for m in info.get("mismatched_keys", [])]}
    # The chat template shipped in tokenizer_config.json, rendered by transformers.
    messages = [{"role": "user", "content": FRANCE}]
    tmpl = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    tmpl_ids = encode(tok, tmpl)
    res["chat_template_text_equal"] = tmpl == chatml(FRANCE)
    res["chat_template_ids_equal"] = tmpl_ids == ref["france"]["prompt_ids"]
    im_end = tok.convert_tokens_to_ids("<|im_end|>")
    toks = greedy(model, tmpl_ids, 64, pad_id, eos=im_end)
    text = tok.decode(toks, skip_special_tokens=False).replace("<|im_end|>", "").strip()
    res["france_answer"] = text
    res["asl_france_answer"] = ref["france"]["text"]
    res["france_has_paris"] = "Paris" in text
    res["france_tokens_equal"] = toks == ref["france"]["tokens"]
    res["prompts"] = []
    for p in ref["prompts"]:
        ids = encode(tok, p["text"])
        x = torch.tensor([p["ids"]], device=DEVICE)  # asl's ids: both models see the same input
        with torch.inference_mode():
            logits = model(input_ids=x).logits[0, -1].float()
        asl = torch.tensor(p["logits"], device=logits.device)
        diff = (logits - asl).abs()
        lp_t, lp_a = torch.log_softmax(logits, -1), torch.log_softmax(asl, -1)
        cont = greedy(model, p["ids"], 20, pad_id, min_new=20)
        res["prompts"].append({
            "text": p["text"], "tokenizer_ids_equal": ids == p["ids"],
            "max_abs_logit_diff": diff.max().item(), "mean_abs_logit_diff": diff.mean().item(),
            "max_abs_logprob_diff": (lp_t - lp_a).abs().max().item(),
            "kl_torch_to_asl": torch.sum(lp_t.exp() * (lp_t - lp_a)).item(),
            "argmax_equal": int(logits.argmax()) == p["argmax"],
            "greedy20_equal": cont == p["greedy20"],
            "greedy20_torch": tok.decode(cont), "greedy20_asl": p["greedy20_text"],
        })
    ok = (res["france_has_paris"] and res["france_tokens_equal"]
          and not res["missing_keys"] and not res["unexpected_keys"])
    res["ok"] = ok
    emit(**res)
    return 0 if ok else 1


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("model_dir")
    ap.add_argument("--batches", default="1,8,32")
    ap.add_argument("--new-tokens", type=int, default=128)
    ap.add_argument("--train-batch", type=int, default=8)
    ap.add_argument("--train-len", type=int, default=256)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--no-train", action="store_true")
    ap.add_argument("--no-grpo", action="store_true", help="accepted for symmetry with asl; no-op")
    ap.add_argument("--check", metavar="ASL_JSON")
    ap.add_argument("--device", default="cpu")
    ap.add_argument("--dtype", default="f32", choices=sorted(DTYPES))
    args = ap.parse_args()
    global DEVICE
    DEVICE = args.device
    args.batches = [int(b) for b in args.batches.split(",")]
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    model, info = load_model(args.model_dir, output_loading_info=True)
    model = model.to(DEVICE)
    tok = AutoTokenizer.from_pretrained(args.model_dir)
    if args.check:
        return check(args, model, info, tok)
    import transformers
    emit(bench="load", seconds=time.perf_counter() - t0, threads=torch.get_num_threads(),
         torch=torch.__version__, transformers=transformers.__version__, device=DEVICE,
         peak_rss_mib=peak_rss_mib())
    bench(args, model, tok)
    return 0


if __name__ == "__main__":
    sys.exit(main())
