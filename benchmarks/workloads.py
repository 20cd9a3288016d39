"""The benchmark workloads of ../shared/WORKLOADS.md: model shapes, request recipes and the physical floor."""

from __future__ import annotations

import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch

from lmserve.attention.cache_dtype import kv_cache_torch_dtype

# Hugging Face configs of the workloads' architectures; weights are random ("dummy").
PRESETS: dict[str, dict] = {
    "A": {  # Qwen3-0.6B
        "model_type": "qwen3", "vocab_size": 151936, "hidden_size": 1024, "intermediate_size": 3072,
        "num_hidden_layers": 28, "num_attention_heads": 16, "num_key_value_heads": 8, "head_dim": 128,
        "tie_word_embeddings": True, "rope_theta": 1000000.0, "rms_norm_eps": 1e-6,
        "max_position_embeddings": 40960, "dtype": "bfloat16",
    },
    "B": {  # Llama-3.1-8B
        "model_type": "llama", "vocab_size": 128256, "hidden_size": 4096, "intermediate_size": 14336,
        "num_hidden_layers": 32, "num_attention_heads": 32, "num_key_value_heads": 8,
        "rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                         "original_max_position_embeddings": 8192},
        "rope_theta": 500000.0, "rms_norm_eps": 1e-5, "max_position_embeddings": 131072, "dtype": "bfloat16",
    },
}


@dataclass
class Request:
    prompt_token_ids: list[int]
    output_len: int


def make_requests(num: int, input_len: tuple[int, int], output_len: tuple[int, int], seed: int) -> list[Request]:
    """The WORKLOADS.md recipe: per request, draw the input length, the output length, then the input ids."""
    rng = random.Random(seed)
    requests = []
    for _ in range(num):
        num_input = rng.randint(*input_len)
        num_output = rng.randint(*output_len)
        requests.append(Request([rng.randint(10, 99999) for _ in range(num_input)], num_output))
    return requests


def latency_prompts(batch_size: int, input_len: int, seed: int) -> list[list[int]]:
    """The latency benchmark's prompts: `batch_size` random prompts of `input_len` token ids."""
    rng = random.Random(seed)
    return [[rng.randint(10, 99999) for _ in range(input_len)] for _ in range(batch_size)]


def latency_floor_seconds(
    config: dict, batch_size: int, input_len: int, output_len: int, bandwidth: float, kv_element_size: int = 2
) -> float:
    """One decode step's floor: every weight and each request's mean context, read once."""
    mean_context = input_len + output_len / 2
    kv_bytes = batch_size * mean_context * kv_bytes_per_token(config, kv_element_size)
    return (weight_bytes(config) + kv_bytes) / bandwidth


def kv_element_size(engine_options: dict) -> int:
    """Bytes per cached key or value element: 1 with a float8 cache, else the model dtype's."""
    model_dtype = getattr(torch, engine_options.get("dtype", "bfloat16"))
    return kv_cache_torch_dtype(engine_options.get("kv_cache_dtype", "auto"), model_dtype).itemsize


def load_config(name_or_path: str) -> dict:
    """A preset name (A, B) or a JSON file holding a Hugging Face config."""
    if name_or_path in PRESETS:
        return dict(PRESETS[name_or_path])
    return json.loads(Path(name_or_path).read_text())


def write_model_dir(config: dict) -> str:
    """A model directory holding only config.json, for dummy-weight loading."""
    from transformers import AutoConfig
    from transformers.models.auto.modeling_auto import MODEL_FOR_CAUSAL_LM_MAPPING_NAMES

    directory = tempfile.mkdtemp(prefix="lmserve-bench-")
    fields = {key: value for key, value in config.items() if key != "model_type"}
    fields.setdefault("architectures", [MODEL_FOR_CAUSAL_LM_MAPPING_NAMES[config["model_type"]]])
    AutoConfig.for_model(config["model_type"], **fields).save_pretrained(directory)
    return directory


def kv_bytes_per_token(config: dict, element_size: int = 2) -> int:
    head_dim = config.get("head_dim") or config["hidden_size"] // config["num_attention_heads"]
    return config["num_hidden_layers"] * 2 * config["num_key_value_heads"] * head_dim * element_size


def weight_bytes(config: dict, element_size: int = 2) -> int:
    """Parameter bytes of a Llama-family model (the embedding counted once when tied)."""
    hidden, inter, layers = config["hidden_size"], config["intermediate_size"], config["num_hidden_layers"]
    head_dim = config.get("head_dim") or hidden // config["num_attention_heads"]
    q, kv = config["num_attention_heads"] * head_dim, config["num_key_value_heads"] * head_dim
    per_layer = hidden * (q + 2 * kv) + q * hidden + 3 * hidden * inter + 2 * hidden
    embeddings = config["vocab_size"] * hidden * (1 if config.get("tie_word_embeddings") else 2)
    return (layers * per_layer + embeddings + hidden) * element_size


def floor_seconds(config: dict, requests: list[Request], bandwidth: float, kv_element_size: int = 2) -> float:
    """Decode is memory-bound: with ideal batching every step reads all weights once (steps = the longest
    output), and each request reads its whole context once per output token."""
    steps = max(r.output_len for r in requests)
    context_reads = sum(
        r.output_len * len(r.prompt_token_ids) + r.output_len * (r.output_len - 1) // 2 for r in requests
    )
    return (steps * weight_bytes(config) + context_reads * kv_bytes_per_token(config, kv_element_size)) / bandwidth


def measure_copy_bandwidth() -> float:
    """Bytes per second of a large device-to-device copy (read + write), or the H100's 3.0e12 on CPU."""
    if not torch.cuda.is_available():
        return 3.0e12
    source = torch.empty(1 << 30, dtype=torch.uint8, device="cuda")
    target = torch.empty_like(source)
    for _ in range(3):
        target.copy_(source)
    start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    for _ in range(10):
        start.record()
        target.copy_(source)
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / 1000)
    return 2 * source.numel() / sorted(times)[len(times) // 2]


def device_time_ms(fn: Callable[[], object], iterations: int = 20, calls_per_graph: int = 10) -> float:
    """Device time per call: calls replayed from a CUDA graph, so the host's launch cost does not count.
    The median milliseconds per call of `fn` over `iterations` replays of `calls_per_graph` calls."""
    for _ in range(3):
        fn()
    torch.cuda.synchronize()
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        for _ in range(calls_per_graph):
            fn()
    times = []
    for _ in range(iterations):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        end.synchronize()
        times.append(start.elapsed_time(end) / calls_per_graph)
    return statistics.median(times)


@contextmanager
def triton_compiles() -> Iterator[list[dict] | None]:
    """Collect every Triton kernel variant compiled, or loaded from Triton's disk cache, inside the block
    (None without Triton).

    A timed run should find none: a variant that start-up (warm-up, graph capture) did not produce stalls
    the step that first needs it, by a compile (`cache_hit` false: Triton's cache on disk was empty, as on
    a freshly started machine) or a load from disk. `compile_ms` is the compiler's own time; for a cache
    hit only the lookup (loading the module onto the GPU comes later, at the first launch).
    """
    try:
        from triton import knobs
    except ImportError:
        yield None
        return
    events: list[dict] = []
    previous = knobs.compilation.listener

    def listen(*, src, metadata, metadata_group, times, cache_hit) -> None:
        events.append({"kernel": metadata.get("name"), "cache_hit": cache_hit, "compile_ms": times.total / 1000})
        if previous is not None:
            previous(src=src, metadata=metadata, metadata_group=metadata_group, times=times, cache_hit=cache_hit)

    knobs.compilation.listener = listen
    try:
        yield events
    finally:
        knobs.compilation.listener = previous


SWITCH_PREFIXES = ("LMSERVE_", "PYTORCH_", "TORCH_")


def environment() -> dict:
    """Device, commit and the exact command, for the results file."""
    # The GPU machine gets the working tree without .git: pass LMSERVE_COMMIT=$(git rev-parse HEAD) there.
    commit = os.environ.get("LMSERVE_COMMIT")
    if commit is None:
        result = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True)
        commit = result.stdout.strip() if result.returncode == 0 else "unknown"
    device = torch.cuda.get_device_name() if torch.cuda.is_available() else "cpu"
    return {
        "device": device,
        "commit": commit,
        "command": " ".join([Path(sys.executable).name, *sys.argv]),
        "torch": torch.__version__,
        # Switches such as PYTORCH_TUNABLEOP_ENABLED=1 change what runs, so they belong with the command.
        "environment": {name: value for name, value in os.environ.items()
                        if name.startswith(SWITCH_PREFIXES) and name != "LMSERVE_COMMIT"},
    }
