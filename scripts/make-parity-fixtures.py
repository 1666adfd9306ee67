"""Tiny random models of each family asl loads, with `transformers`' own outputs (issue 18).

For each family (Llama 3 with `llama3` RoPE scaling and several eos ids, Qwen2 with q/k/v biases
and tied embeddings, Qwen3 with per-head q/k norms and a head_dim of its own) this builds a
2-layer model with a 512-token BPE vocabulary, sets every weight, bias and norm scale to random
values (transformers initialises biases to 0 and norms to 1, which would hide a missing bias or
norm), saves it with `save_pretrained`, and writes beside it what the Rust tests compare with:

  reference.safetensors   logits_N (f32, L x V) of each prompt, greedy_N (i64) its 8 greedy tokens
  prompts.json            the prompts' token ids
  config.v4.json          the same config in transformers 4's conventions (`torch_dtype`,
                          `rope_theta` + `rope_scaling`), so both are read

The folders go to tests/fixtures/parity/FAMILY (well under 1 MiB each) and are committed with
this script; the suite needs no torch. Rerun: needs torch, transformers and tokenizers
(scripts/make-parity-fixtures.sh makes a venv for them outside the repo).
Made with transformers 5.24.0 and torch 2.15.0.
"""
import json
import shutil
import sys
from pathlib import Path

import torch
import transformers
from safetensors.torch import save_file
from tokenizers import Tokenizer, models, pre_tokenizers, decoders, trainers

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "fixtures" / "parity"
VOCAB = 512
TEXT = [
    "The quick brown fox jumps over the lazy dog near the river bank.",
    "Kubrick directed the film in 1968; it was shot in England.",
    "Search the corpus, read the passages, then answer in a few words.",
    "Paris is the capital of France and Berlin is the capital of Germany.",
    "<search> query </search> <information> passage </information> <answer> x </answer>",
] * 4

# The families' chat templates as their Hub folders ship them (Qwen2.5-Instruct, Qwen3's
# hybrid-thinking template, Llama 3.2-Instruct's), so the fixtures exercise what users bring.
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

QWEN3_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0].role == 'system' %}
        {{- messages[0].content + '\n\n' }}
    {%- endif %}
    {{- "# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0].role == 'system' %}
        {{- '<|im_start|>system\n' + messages[0].content + '<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- set ns = namespace(multi_step_tool=true, last_query_index=messages|length - 1) %}
{%- for message in messages[::-1] %}
    {%- set index = (messages|length - 1) - loop.index0 %}
    {%- if ns.multi_step_tool and message.role == "user" and message.content is string and not(message.content.startswith('<tool_response>') and message.content.endswith('</tool_response>')) %}
        {%- set ns.multi_step_tool = false %}
        {%- set ns.last_query_index = index %}
    {%- endif %}
{%- endfor %}
{%- for message in messages %}
    {%- if message.content is string %}
        {%- set content = message.content %}
    {%- else %}
        {%- set content = '' %}
    {%- endif %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) %}
        {{- '<|im_start|>' + message.role + '\n' + content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {%- set reasoning_content = '' %}
        {%- if message.reasoning_content is string %}
            {%- set reasoning_content = message.reasoning_content %}
        {%- else %}
            {%- if '</think>' in content %}
                {%- set reasoning_content = content.split('</think>')[0].rstrip('\n').split('<think>')[-1].lstrip('\n') %}
                {%- set content = content.split('</think>')[-1].lstrip('\n') %}
            {%- endif %}
        {%- endif %}
        {%- if loop.index0 > ns.last_query_index %}
            {%- if loop.last or (not loop.last and reasoning_content) %}
                {{- '<|im_start|>' + message.role + '\n<think>\n' + reasoning_content.strip('\n') + '\n</think>\n\n' + content.lstrip('\n') }}
            {%- else %}
                {{- '<|im_start|>' + message.role + '\n' + content }}
            {%- endif %}
        {%- else %}
            {{- '<|im_start|>' + message.role + '\n' + content }}
        {%- endif %}
        {%- if message.tool_calls %}
            {%- for tool_call in message.tool_calls %}
                {%- if (loop.first and content) or (not loop.first) %}
                    {{- '\n' }}
                {%- endif %}
                {%- if tool_call.function %}
                    {%- set tool_call = tool_call.function %}
                {%- endif %}
                {{- '<tool_call>\n{"name": "' }}
                {{- tool_call.name }}
                {{- '", "arguments": ' }}
                {%- if tool_call.arguments is string %}
                    {{- tool_call.arguments }}
                {%- else %}
                    {{- tool_call.arguments | tojson }}
                {%- endif %}
                {{- '}\n</tool_call>' }}
            {%- endfor %}
        {%- endif %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if loop.first or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
    {%- if enable_thinking is defined and enable_thinking is false %}
        {{- '<think>\n\n</think>\n\n' }}
    {%- endif %}
{%- endif %}"""

LLAMA3_TEMPLATE = r"""{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- if strftime_now is defined %}
        {%- set date_string = strftime_now("%d %b %Y") %}
    {%- else %}
        {%- set date_string = "26 Jul 2024" %}
    {%- endif %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message #}
{{- "<|start_header_id|>system<|end_header_id|>\n\n" }}
{%- if tools is not none %}
    {{- "Environment: ipython\n" }}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\n" }}
{{- "Today Date: " + date_string + "\n\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\n\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\n\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\n\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\n\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' -}}
        {{- '{"name": "' + tool_call.name + '", ' }}
        {{- '"parameters": ' }}
        {{- tool_call.arguments | tojson }}
        {{- "}" }}
        {{- "<|eot_id|>" }}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\n\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\n\n' }}
{%- endif %}
"""

SEARCH_TOOL = {"type": "function", "function": {
    "name": "search", "description": "Search the corpus for passages about a query.",
    "parameters": {"type": "object", "properties": {
        "query": {"type": "string", "description": "What to look up"}}, "required": ["query"]}}}

# Conversations rendered by transformers' apply_chat_template into chat.json.
CONVERSATIONS = [
    dict(messages=[{"role": "system", "content": "You answer with search."},
                   {"role": "user", "content": "Who directed 2001: A Space Odyssey?"}],
         add_generation_prompt=True),
    dict(messages=[{"role": "user", "content": "Hi there"}], add_generation_prompt=True),
    dict(messages=[{"role": "system", "content": "S"}, {"role": "user", "content": "Q1"},
                   {"role": "assistant", "content": "<think>\nhmm\n</think>\n\nA1"},
                   {"role": "user", "content": "Q2 — “quoted” é"}],
         add_generation_prompt=True),
    dict(messages=[{"role": "system", "content": "S"},
                   {"role": "user", "content": "Where was the film shot?"},
                   {"role": "assistant", "content": "",
                    "tool_calls": [{"type": "function", "function": {
                        "name": "search", "arguments": {"query": "2001 film shot \"England\""}}}]},
                   {"role": "tool", "content": "Doc 1: It was shot in England."}],
         tools=[SEARCH_TOOL], add_generation_prompt=True),
    dict(messages=[{"role": "user", "content": "Q"}, {"role": "assistant", "content": "A"}],
         add_generation_prompt=False),
]


def tokenizer(specials):
    tok = Tokenizer(models.BPE(unk_token=None))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=VOCAB - len(specials), special_tokens=[],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator(TEXT, trainer)
    tok.add_special_tokens(specials)
    return tok


def randomise(model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in sorted(model.named_parameters()):
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.1 * torch.randn(p.shape, generator=g))
            elif name.endswith("bias"):
                p.copy_(0.3 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.25 * torch.randn(p.shape, generator=g))


def v4_config(config):
    """transformers 4's spelling of a transformers 5 config.json."""
    c = dict(config)
    if "dtype" in c:
        c["torch_dtype"] = c.pop("dtype")
    rope = c.pop("rope_parameters", None)
    if rope is not None:
        rope = dict(rope)
        c["rope_theta"] = rope.pop("rope_theta")
        c["rope_scaling"] = None if rope.get("rope_type", "default") == "default" else rope
    c.pop("layer_types", None)
    return c


FAMILIES = {
    "llama3": dict(
        cls="LlamaConfig",
        specials=["<|begin_of_text|>", "<|end_of_text|>", "<|start_header_id|>",
                  "<|end_header_id|>", "<|eot_id|>"],
        bos="<|begin_of_text|>", eos=["<|end_of_text|>", "<|eot_id|>"],
        template=LLAMA3_TEMPLATE, template_file=False,
        kwargs=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                    num_key_value_heads=2, rope_theta=500000.0, tie_word_embeddings=False,
                    rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                  "high_freq_factor": 4.0,
                                  "original_max_position_embeddings": 16}),
    ),
    "qwen2": dict(
        cls="Qwen2Config",
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None, eos=["<|im_end|>", "<|endoftext|>"],
        template=QWEN25_TEMPLATE, template_file=False,
        kwargs=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                    num_key_value_heads=2, rope_theta=1000000.0, tie_word_embeddings=True,
                    use_sliding_window=False, sliding_window=64, max_window_layers=1),
    ),
    "qwen3": dict(
        cls="Qwen3Config",
        specials=["<|endoftext|>", "<|im_start|>", "<|im_end|>"],
        bos=None, eos=["<|im_end|>"],
        template=QWEN3_TEMPLATE, template_file=True,
        kwargs=dict(hidden_size=32, intermediate_size=64, num_attention_heads=4,
                    num_key_value_heads=2, head_dim=16, rope_theta=1000000.0,
                    tie_word_embeddings=False, use_sliding_window=False),
    ),
}


def build(name, spec, seed):
    out = OUT / name
    if out.exists():
        shutil.rmtree(out)
    out.mkdir(parents=True)
    tok = tokenizer(spec["specials"])
    ids = {t: tok.token_to_id(t) for t in spec["specials"]}
    eos = [ids[t] for t in spec["eos"]]
    config = getattr(transformers, spec["cls"])(
        vocab_size=VOCAB, num_hidden_layers=2, max_position_embeddings=4096, rms_norm_eps=1e-6,
        bos_token_id=ids.get(spec["bos"]), eos_token_id=eos if len(eos) > 1 else eos[0],
        **spec["kwargs"])
    torch.manual_seed(seed)
    model = transformers.AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    randomise(model, seed)
    model.eval()
    model.save_pretrained(out, safe_serialization=True)
    tok.save(str(out / "tokenizer.json"))
    # transformers 4 keeps the template in tokenizer_config.json, 5 in chat_template.jinja.
    tokenizer_config = {"bos_token": spec["bos"], "eos_token": spec["eos"][0],
                        "tokenizer_class": "PreTrainedTokenizerFast"}
    if spec["template_file"]:
        (out / "chat_template.jinja").write_text(spec["template"])
    else:
        tokenizer_config["chat_template"] = spec["template"]
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2))
    hf_tok = transformers.AutoTokenizer.from_pretrained(out)
    chats = []
    for conv in CONVERSATIONS:
        # date_string: transformers defines strftime_now, asl does not (prompts must not change
        # from day to day); the Llama template then falls back to this date.
        text = hf_tok.apply_chat_template(
            conv["messages"], tools=conv.get("tools"), tokenize=False,
            add_generation_prompt=conv["add_generation_prompt"], date_string="26 Jul 2024")
        chats.append(dict(conv, rendered=text, ids=hf_tok(text, add_special_tokens=False)["input_ids"]))
    (out / "chat.json").write_text(json.dumps(chats, indent=1, ensure_ascii=False))
    cfg = json.loads((out / "config.json").read_text())
    (out / "config.v4.json").write_text(json.dumps(v4_config(cfg), indent=2))

    prompts = [tok.encode(t).ids[:12] for t in
               ["The capital of France is", "Kubrick directed the film",
                "<search> query </search> the river"]]
    tensors = {}
    with torch.no_grad():
        for i, p in enumerate(prompts):
            x = torch.tensor([p])
            tensors[f"logits_{i}"] = model(x).logits[0].float().contiguous()
            seq = list(p)
            for _ in range(8):
                nxt = int(model(torch.tensor([seq])).logits[0, -1].argmax())
                seq.append(nxt)
            tensors[f"greedy_{i}"] = torch.tensor(seq[len(p):], dtype=torch.int64)
    save_file(tensors, out / "reference.safetensors")
    (out / "prompts.json").write_text(json.dumps(prompts))
    size = sum(f.stat().st_size for f in out.iterdir())
    print(f"{name}: {size / 1024:.0f} KiB, transformers {transformers.__version__}, "
          f"torch {torch.__version__}")


def main():
    names = sys.argv[1:] or list(FAMILIES)
    for i, name in enumerate(names):
        build(name, FAMILIES[name], 1000 + i)


if __name__ == "__main__":
    main()
