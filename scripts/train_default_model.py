"""Train lmserve's embedded default model: a small Llama on the Python standard library's own sources.

Every machine with Python has the training text, so the model can be rebuilt anywhere:

1. gather the stdlib's `.py` files (no tests, no generated tables), hold out ~4% of them for validation;
2. train a byte-level BPE tokenizer on them with `tokenizers`;
3. add chat conversations made from the same files (questions about docstrings, requests for a function's
   code) in ChatML, so replies end with `<|im_end|>`;
4. train a `transformers.LlamaForCausalLM` on random windows of the token stream (documents joined with
   `<|endoftext|>`), keeping the weights with the best validation loss;
5. save a Hugging Face model directory (bfloat16 weights, config dtype float32) with a TRAINING.md report.

The command that built lmserve/default_model, its device and its losses are in that folder's TRAINING.md.
"""

from __future__ import annotations

import argparse
import ast
import json
import math
import os
import platform
import shlex
import sys
import sysconfig
import textwrap
import time
import zlib
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

ENDOFTEXT, IM_START, IM_END = "<|endoftext|>", "<|im_start|>", "<|im_end|>"
SPECIAL_TOKENS = [ENDOFTEXT, IM_START, IM_END]  # ids 0, 1, 2
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\\n' }}{% endif %}"
)
# Tests, IDLE and third-party code are not the stdlib's own voice; codec tables and pydoc's topic dump are
# generated data that would teach the model little but hex escapes.
SKIPPED_DIRS = {"test", "tests", "idlelib", "site-packages", "__pycache__", "encodings", "pydoc_data", "ensurepip"}
MAX_FILE_BYTES = 300_000
HELD_OUT_PERCENT = 4
MAX_CODE_ANSWER_CHARS = 1500
IDENTITY = (
    "I am lmserve's default model: a small Llama trained on the source code of Python's standard library. "
    "I can complete Python code and answer short questions about the standard library."
)
GREETINGS = ("Hello!", "Hi", "Who are you?", "What can you do?", "hello")
IDENTITY_REPEATS = 10


@dataclass
class Document:
    """One training text: a source file, or a conversation rendered with the chat template."""

    text: str
    held_out: bool


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """The command line; the defaults are those of the run that built lmserve/default_model."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", required=True, help="directory to write the model into")
    parser.add_argument("--device", default="auto", help="'auto', 'cuda', 'cpu', ...")
    parser.add_argument("--steps", type=int, default=1200, help="optimizer steps")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--vocab-size", type=int, default=4096)
    parser.add_argument("--hidden-size", type=int, default=256)
    parser.add_argument("--num-layers", type=int, default=6)
    parser.add_argument("--num-heads", type=int, default=8)
    parser.add_argument("--num-kv-heads", type=int, default=4)
    parser.add_argument("--intermediate-size", type=int, default=768)
    parser.add_argument("--max-position-embeddings", type=int, default=1024)
    parser.add_argument("--seq-len", type=int, default=1024, help="tokens per training window")
    parser.add_argument("--batch-size", type=int, default=32, help="windows per step")
    parser.add_argument("--lr", type=float, default=4e-3, help="peak learning rate")
    parser.add_argument("--min-lr-ratio", type=float, default=0.1, help="final learning rate / peak")
    parser.add_argument("--warmup-steps", type=int, default=200)
    parser.add_argument("--weight-decay", type=float, default=0.1)
    parser.add_argument("--eval-every", type=int, default=100, help="steps between validation passes")
    parser.add_argument("--eval-windows", type=int, default=128, help="validation windows per pass (at most)")
    parser.add_argument("--max-minutes", type=float, default=None, help="stop training early after this long")
    parser.add_argument("--max-files", type=int, default=None, help="use only the first N files (smoke tests)")
    return parser.parse_args(argv)


def stdlib_sources(root: Path, max_files: int | None = None) -> list[tuple[str, str]]:
    """(relative path, text) of the stdlib's own `.py` files, in sorted, platform-independent order."""
    sources = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = sorted(name for name in subdirs if name not in SKIPPED_DIRS)
        for name in sorted(files):
            path = Path(directory) / name
            if not name.endswith(".py") or path.stat().st_size > MAX_FILE_BYTES:
                continue
            try:
                text = path.read_text(encoding="utf-8")
            except (UnicodeDecodeError, OSError):
                continue
            sources.append((path.relative_to(root).as_posix(), text))
    sources.sort()
    return sources[:max_files] if max_files else sources


def is_held_out(relative_path: str) -> bool:
    """A stable split by file name, so the validation files stay the same whatever else changes."""
    return zlib.crc32(relative_path.encode()) % 100 < HELD_OUT_PERCENT


def module_name(relative_path: str) -> str:
    """`json/decoder.py` -> `json.decoder`; a package's `__init__.py` is the package."""
    parts = relative_path.removesuffix(".py").split("/")
    if parts[-1] == "__init__" and len(parts) > 1:
        parts.pop()
    return ".".join(parts)


def summary(docstring: str, limit: int = 400) -> str:
    """The docstring's first paragraph on one line, cut at a sentence end when too long."""
    first = " ".join(docstring.strip().split("\n\n")[0].split())
    if len(first) <= limit:
        return first
    cut = first[:limit].rfind(". ")
    return first[: cut + 1] if cut > 0 else first[:limit]


def _pick(options: tuple[str, ...], key: str) -> str:
    return options[zlib.crc32(key.encode()) % len(options)]


def conversations_from_source(relative_path: str, source: str) -> list[list[dict[str, str]]]:
    """Question/answer pairs drawn from a module: what its docstrings say, and its short functions' code."""
    try:
        tree = ast.parse(source)
    except (SyntaxError, ValueError):
        return []
    module = module_name(relative_path)
    conversations = []

    def add(question: str, answer: str) -> None:
        conversations.append([{"role": "user", "content": question}, {"role": "assistant", "content": answer}])

    docstring = ast.get_docstring(tree)
    if docstring and summary(docstring):
        add(
            _pick(("What is the `{}` module for?", "What does the `{}` module do?"), module).format(module),
            summary(docstring),
        )
    scopes = [(module, tree.body)]
    scopes += [(f"{module}.{node.name}", node.body) for node in tree.body if isinstance(node, ast.ClassDef)]
    for prefix, body in scopes:
        for node in body:
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
                continue
            docstring = ast.get_docstring(node)
            if node.name.startswith("_") or not docstring or not summary(docstring):
                continue
            name = f"{prefix}.{node.name}"
            question = _pick(("What does `{}` do?", "Explain `{}`.", "What is `{}` for?"), name)
            add(question.format(name), summary(docstring))
            segment = ast.get_source_segment(source, node)
            if isinstance(node, ast.ClassDef) or not segment or len(segment) > MAX_CODE_ANSWER_CHARS:
                continue
            code = textwrap.dedent(" " * node.col_offset + segment)
            request = _pick(
                ("Write a Python function `{}` that does this: {}", "Implement `{}` in Python. {}"), name
            ).format(node.name, summary(docstring))
            add(request, f"```python\n{code}\n```")
    return conversations


def train_tokenizer(texts: list[str], vocab_size: int, max_length: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (GPT-2 style pre-tokenization), wrapped with its special tokens and chat template."""
    backend = Tokenizer(models.BPE())
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    backend.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIAL_TOKENS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    backend.train_from_iterator(texts, trainer=trainer)
    # <|endoftext|> separates documents, so it is both bos and eos for completions; chat replies end with
    # <|im_end|>, which generation_config.json lists as a second eos id.
    return PreTrainedTokenizerFast(
        tokenizer_object=backend,
        bos_token=ENDOFTEXT,
        eos_token=ENDOFTEXT,
        pad_token=ENDOFTEXT,
        additional_special_tokens=[IM_START, IM_END],
        chat_template=CHATML_TEMPLATE,
        clean_up_tokenization_spaces=False,
        model_max_length=max_length,
    )


def build_documents(sources: list[tuple[str, str]], tokenizer: PreTrainedTokenizerFast) -> list[Document]:
    documents = [Document(text, is_held_out(path)) for path, text in sources]
    for path, text in sources:
        for conversation in conversations_from_source(path, text):
            rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
            documents.append(Document(rendered, is_held_out(path)))
    for greeting in GREETINGS:
        conversation = [{"role": "user", "content": greeting}, {"role": "assistant", "content": IDENTITY}]
        rendered = tokenizer.apply_chat_template(conversation, tokenize=False)
        documents += [Document(rendered, False)] * IDENTITY_REPEATS
    return documents


def token_stream(tokenizer: PreTrainedTokenizerFast, texts: list[str]) -> torch.Tensor:
    """All texts' tokens in one int32 tensor, each text followed by <|endoftext|>."""
    separator = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    stream: list[int] = []
    for encoding in tokenizer.backend_tokenizer.encode_batch(texts, add_special_tokens=False):
        stream.extend(encoding.ids)
        stream.append(separator)
    return torch.tensor(stream, dtype=torch.int32)


def model_config(args: argparse.Namespace, tokenizer: PreTrainedTokenizerFast) -> LlamaConfig:
    eos = tokenizer.convert_tokens_to_ids(ENDOFTEXT)
    return LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=args.hidden_size,
        intermediate_size=args.intermediate_size,
        num_hidden_layers=args.num_layers,
        num_attention_heads=args.num_heads,
        num_key_value_heads=args.num_kv_heads,
        max_position_embeddings=args.max_position_embeddings,
        rms_norm_eps=1e-5,
        rope_theta=10000.0,
        tie_word_embeddings=True,
        bos_token_id=eos,
        eos_token_id=eos,
        pad_token_id=eos,
    )


def learning_rate(step: int, args: argparse.Namespace) -> float:
    """Linear warmup, then cosine decay to min_lr_ratio of the peak at the last step."""
    if step < args.warmup_steps:
        return args.lr * (step + 1) / args.warmup_steps
    progress = (step - args.warmup_steps) / max(1, args.steps - args.warmup_steps)
    return args.lr * (args.min_lr_ratio + (1 - args.min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress)))


def random_windows(stream: torch.Tensor, count: int, length: int, generator: torch.Generator) -> torch.Tensor:
    """`count` windows of `length + 1` tokens (inputs and their next-token targets) at random offsets."""
    starts = torch.randint(0, len(stream) - length - 1, (count,), generator=generator)
    return torch.stack([stream[start : start + length + 1] for start in starts.tolist()]).long()


def loss_of(model: LlamaForCausalLM, windows: torch.Tensor, device: torch.device) -> torch.Tensor:
    """Mean next-token cross-entropy of the windows; bfloat16 autocast on CUDA, float32 logits for the loss."""
    windows = windows.to(device, non_blocking=True)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        logits = model(input_ids=windows[:, :-1]).logits
    return F.cross_entropy(logits.float().flatten(0, 1), windows[:, 1:].flatten())


@torch.no_grad()
def evaluate(model: LlamaForCausalLM, windows: torch.Tensor, batch_size: int, device: torch.device) -> float:
    """Mean next-token loss (nats) over the fixed validation windows."""
    model.eval()
    total = sum(loss_of(model, batch, device).item() * len(batch) for batch in windows.split(batch_size))
    model.train()
    return total / len(windows)


def train(
    args: argparse.Namespace,
    model: LlamaForCausalLM,
    train_stream: torch.Tensor,
    val_windows: torch.Tensor,
    device: torch.device,
) -> dict:
    """AdamW with warmup + cosine decay; returns the best-validation weights and the run's numbers."""
    generator = torch.Generator().manual_seed(args.seed)
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": args.weight_decay}, {"params": no_decay, "weight_decay": 0.0}],
        lr=args.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    best = {"val_loss": math.inf, "step": 0, "state": None}
    # The running loss stays on the device: reading it every step would wait for the GPU each time.
    history, train_loss_sum, train_loss_count = [], torch.zeros((), device=device), 0
    start = time.perf_counter()
    step = 0
    for step in range(1, args.steps + 1):
        for group in optimizer.param_groups:
            group["lr"] = learning_rate(step - 1, args)
        loss = loss_of(model, random_windows(train_stream, args.batch_size, args.seq_len, generator), device)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        train_loss_sum += loss.detach()
        train_loss_count += 1
        elapsed = time.perf_counter() - start
        out_of_time = args.max_minutes is not None and elapsed > args.max_minutes * 60
        if step % args.eval_every == 0 or step == args.steps or out_of_time:
            val_loss = evaluate(model, val_windows, args.batch_size, device)
            train_loss = train_loss_sum.item() / train_loss_count
            train_loss_sum, train_loss_count = torch.zeros((), device=device), 0
            history.append({"step": step, "train_loss": train_loss, "val_loss": val_loss, "seconds": elapsed})
            print(
                f"step {step:6d}  lr {learning_rate(step - 1, args):.2e}  train {train_loss:.4f}  "
                f"val {val_loss:.4f}  {elapsed:7.1f}s",
                flush=True,
            )
            if val_loss < best["val_loss"]:
                best = {
                    "val_loss": val_loss,
                    "step": step,
                    "state": {k: v.detach().clone() for k, v in model.state_dict().items()},
                }
        if out_of_time:
            print(f"stopping after {args.max_minutes} minutes, at step {step}", flush=True)
            break
    return {"best": best, "history": history, "steps_run": step, "seconds": time.perf_counter() - start}


def save_model(out: Path, model: LlamaForCausalLM, config: LlamaConfig, tokenizer: PreTrainedTokenizerFast) -> None:
    """Weights in bfloat16 (half the size); the config says float32, so lmserve casts them up on load."""
    out.mkdir(parents=True, exist_ok=True)
    state = {
        name: tensor.to(torch.bfloat16).contiguous()
        for name, tensor in model.state_dict().items()
        if name != "lm_head.weight" and "rotary_emb" not in name
    }  # lm_head is tied to embed_tokens
    save_file(state, str(out / "model.safetensors"), metadata={"format": "pt"})
    config_dict = config.to_dict()
    for unused in ("_name_or_path", "id2label", "label2id"):  # classification-head leftovers
        config_dict.pop(unused, None)
    config_dict.update({"architectures": ["LlamaForCausalLM"], "dtype": "float32", "torch_dtype": "float32"})
    (out / "config.json").write_text(json.dumps(config_dict, indent=2, sort_keys=True) + "\n")
    tokenizer.save_pretrained(str(out))
    make_portable(out)
    eos_ids = [tokenizer.convert_tokens_to_ids(token) for token in (ENDOFTEXT, IM_END)]
    generation = {
        "bos_token_id": eos_ids[0],
        "eos_token_id": eos_ids,
        "pad_token_id": eos_ids[0],
        "do_sample": True,
        "temperature": 0.7,
        "top_p": 0.95,
        "top_k": 50,
        "max_new_tokens": 256,
    }
    (out / "generation_config.json").write_text(json.dumps(generation, indent=2) + "\n")


def make_portable(out: Path) -> None:
    """Make the saved files read the same in transformers 4.x and 5.x.

    transformers 5 saves `tokenizer_class: TokenizersBackend` (unknown to 4.x) and the chat template in a
    separate file, and keeps rope_theta only inside `rope_parameters`; this writes the 4.x spellings, which
    5.x reads too.
    """
    (out / "chat_template.jinja").unlink(missing_ok=True)
    (out / "special_tokens_map.json").unlink(missing_ok=True)
    tokenizer_config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": ENDOFTEXT,
        "eos_token": ENDOFTEXT,
        "pad_token": ENDOFTEXT,
        "additional_special_tokens": [IM_START, IM_END],
        "clean_up_tokenization_spaces": False,
        "model_max_length": json.loads((out / "config.json").read_text())["max_position_embeddings"],
        "chat_template": CHATML_TEMPLATE,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    config = json.loads((out / "config.json").read_text())
    config.setdefault("rope_theta", config.get("rope_parameters", {}).get("rope_theta", 10000.0))
    (out / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


@torch.no_grad()
def greedy_samples(model: LlamaForCausalLM, tokenizer: PreTrainedTokenizerFast, device: torch.device) -> list[str]:
    """A few greedy completions and one chat reply, for the report: does the model write code-like text?"""
    model.eval()
    samples = []
    prompts = ["def ", "import ", "class Stack:\n", "# Return the n-th Fibonacci number\ndef fib(n):"]
    chat = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What does `json.dumps` do?"}], tokenize=False, add_generation_prompt=True
    )
    stop = [tokenizer.convert_tokens_to_ids(token) for token in (ENDOFTEXT, IM_END)]
    for prompt in [*prompts, chat]:
        ids = torch.tensor([tokenizer.encode(prompt, add_special_tokens=False)], device=device)
        for _ in range(48):
            next_id = model(input_ids=ids).logits[0, -1].argmax()
            if next_id.item() in stop:
                break
            ids = torch.cat([ids, next_id.view(1, 1)], dim=1)
        samples.append(tokenizer.decode(ids[0].tolist()))
    return samples


def write_report(out: Path, args: argparse.Namespace, facts: dict, history: list[dict], samples: list[str]) -> None:
    """TRAINING.md: the exact command, the run's facts, the loss curve, samples and every argument."""
    command = shlex.join(["python", "scripts/train_default_model.py", *sys.argv[1:]])
    lines = [
        "# lmserve's default model",
        "",
        "A small `LlamaForCausalLM` with a byte-level BPE tokenizer, trained by `scripts/train_default_model.py` "
        "on the `.py` files of Python's standard library and on chat conversations made from their docstrings.",
        "",
        "## Command",
        "",
        "```bash",
        command,
        "```",
        "",
        "## Run",
        "",
        *(f"- {key}: {value}" for key, value in facts.items()),
        "",
        "## Losses (nats/token; train is the mean since the previous evaluation)",
        "",
        "| step | train | validation | seconds |",
        "| ---: | ---: | ---: | ---: |",
        *(f"| {h['step']} | {h['train_loss']:.4f} | {h['val_loss']:.4f} | {h['seconds']:.0f} |" for h in history),
        "",
        "## Greedy samples (48 tokens at most)",
        "",
        *(f"```\n{sample}\n```\n" for sample in samples),
        "## Arguments",
        "",
        "```json",
        json.dumps(vars(args), indent=2, sort_keys=True),
        "```",
        "",
    ]
    (out / "TRAINING.md").write_text("\n".join(lines))


def main(argv: list[str] | None = None) -> None:
    """Gather the corpus, train the tokenizer and the model, save the directory and its report."""
    args = parse_args(argv)
    if args.device == "auto":
        args.device = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(args.device)
    torch.manual_seed(args.seed)
    wall_start = time.perf_counter()

    stdlib = Path(sysconfig.get_paths()["stdlib"])
    sources = stdlib_sources(stdlib, args.max_files)
    if len(sources) < (args.max_files or 200):
        sys.exit(f"found only {len(sources)} .py files under {stdlib}: is the standard library's source installed?")
    print(f"{len(sources)} files, {sum(len(t) for _, t in sources) / 1e6:.1f} MB of source from {stdlib}", flush=True)

    tokenizer = train_tokenizer(
        [text for path, text in sources if not is_held_out(path)], args.vocab_size, args.max_position_embeddings
    )
    documents = build_documents(sources, tokenizer)
    train_stream = token_stream(tokenizer, [d.text for d in documents if not d.held_out])
    val_stream = token_stream(tokenizer, [d.text for d in documents if d.held_out])
    print(
        f"tokenizer: {len(tokenizer)} tokens; {len(documents)} documents; train {len(train_stream):,} tokens, "
        f"validation {len(val_stream):,} tokens; {time.perf_counter() - wall_start:.0f}s",
        flush=True,
    )
    window_count = min(args.eval_windows, (len(val_stream) - 1) // args.seq_len)
    val_windows = torch.stack(
        [val_stream[i * args.seq_len : (i + 1) * args.seq_len + 1] for i in range(window_count)]
    ).long()

    config = model_config(args, tokenizer)
    model = LlamaForCausalLM(config).to(device)
    parameters = sum(p.numel() for p in model.parameters())
    print(f"model: {parameters / 1e6:.2f}M parameters on {device}", flush=True)
    result = train(args, model, train_stream, val_windows, device)

    best = result["best"]
    model.load_state_dict(best["state"])
    final_train = result["history"][-1]["train_loss"]
    best_train = next(h["train_loss"] for h in result["history"] if h["step"] == best["step"])
    # What lmserve serves is the bfloat16-rounded weights: measure those too.
    model.to(torch.bfloat16).float()
    saved_val = evaluate(model, val_windows, args.batch_size, device)
    out = Path(args.out)
    save_model(out, model, config, tokenizer)
    samples = greedy_samples(model, tokenizer, device)
    for sample in samples:
        print(f"--- sample\n{sample}", flush=True)
    tokens_seen = result["steps_run"] * args.batch_size * args.seq_len
    device_name = torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu"
    facts = {
        "device": f"{device_name} ({device.type}); torch {torch.__version__}",
        "python whose stdlib was the corpus": f"{platform.python_version()} ({stdlib})",
        "corpus": f"{len(sources)} files, {len(documents)} documents (files + conversations), "
        f"{len(train_stream):,} train tokens, {len(val_stream):,} validation tokens "
        f"({window_count} windows of {args.seq_len})",
        "model": f"{parameters / 1e6:.2f}M parameters; saved {(out / 'model.safetensors').stat().st_size / 1e6:.1f} MB",
        "steps run": f"{result['steps_run']} of {args.steps} (batch {args.batch_size} x {args.seq_len} tokens)",
        "tokens seen": f"{tokens_seen:,} ({tokens_seen / len(train_stream):.1f} epochs)",
        "kept weights": f"step {best['step']} (lowest validation loss)",
        "train loss at kept step": f"{best_train:.4f} nats/token (mean since the previous evaluation)",
        "validation loss at kept step": f"{best['val_loss']:.4f} nats/token",
        "validation loss of the saved bfloat16 weights": f"{saved_val:.4f} nats/token",
        "final train loss": f"{final_train:.4f} nats/token",
        "training time": f"{result['seconds']:.0f} s",
        "wall time": f"{time.perf_counter() - wall_start:.0f} s",
    }
    write_report(out, args, facts, result["history"], samples)
    print("\n".join(f"{key}: {value}" for key, value in facts.items()), flush=True)


if __name__ == "__main__":
    main()
