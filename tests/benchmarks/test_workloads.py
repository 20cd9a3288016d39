"""The benchmarks' recorder of Triton compiles sees a compile into an empty cache, then a load from it.

Compiling needs Triton's own compiler (no interpreter), so the recorder runs in a subprocess that
compiles a kernel for an H100 (sm_90) without launching it, as tests/kernels/hopper_compile.py does.
"""

from __future__ import annotations

import json
from pathlib import Path

from tests.kernels.triton_setup import run_compiling

RECORD_COMPILES = """
import json
from triton import knobs
from benchmarks.workloads import triton_compiles
from lmserve.kernels.activation import _silu_and_mul_kernel
from tests.kernels.hopper_compile import compile_for_hopper

with triton_compiles() as first:
    compile_for_hopper(_silu_and_mul_kernel, "bf16", {"BLOCK": 256}, 4)
with triton_compiles() as second:
    compile_for_hopper(_silu_and_mul_kernel, "bf16", {"BLOCK": 256}, 4)
compile_for_hopper(_silu_and_mul_kernel, "bf16", {"BLOCK": 128}, 4)
print(json.dumps({"first": first, "second": second, "listener_left": knobs.compilation.listener is not None}))
"""


def test_benchmarks_record_the_kernels_compiled_in_a_run(tmp_path: Path) -> None:
    """`triton_compiles` (throughput and latency benchmarks) records both, and leaves Triton's listener
    as it found it."""
    result = run_compiling(["-c", RECORD_COMPILES], TRITON_CACHE_DIR=str(tmp_path))
    assert result.returncode == 0, result.stderr[-4000:]
    recorded = json.loads(result.stdout.strip().splitlines()[-1])
    assert [(e["kernel"], e["cache_hit"]) for e in recorded["first"]] == [("_silu_and_mul_kernel", False)]
    assert [(e["kernel"], e["cache_hit"]) for e in recorded["second"]] == [("_silu_and_mul_kernel", True)]
    assert recorded["first"][0]["compile_ms"] > 0
    assert not recorded["listener_left"]
