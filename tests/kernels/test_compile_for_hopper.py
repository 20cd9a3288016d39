"""The kernels compile for an H100 (sm_90) even on CI's CPU.

The interpreter that runs the other kernel tests accepts code the GPU compiler rejects, so this test
compiles each kernel variant with Triton's bundled LLVM and ptxas, launching nothing.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

REPOSITORY = Path(__file__).resolve().parents[2]


def test_kernels_compile_for_hopper() -> None:
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    result = subprocess.run(
        [sys.executable, "-m", "tests.kernels.hopper_compile"],
        cwd=REPOSITORY,
        env=environment,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert result.returncode == 0, result.stderr[-4000:]


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
    """The throughput benchmark's recorder sees a compile into an empty Triton cache, then a load from
    it; and leaves Triton as it found it."""
    environment = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"}
    environment["TRITON_CACHE_DIR"] = str(tmp_path)
    result = subprocess.run([sys.executable, "-c", RECORD_COMPILES], cwd=REPOSITORY, env=environment,
                            capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, result.stderr[-4000:]
    recorded = json.loads(result.stdout.strip().splitlines()[-1])
    assert [(e["kernel"], e["cache_hit"]) for e in recorded["first"]] == [("_silu_and_mul_kernel", False)]
    assert [(e["kernel"], e["cache_hit"]) for e in recorded["second"]] == [("_silu_and_mul_kernel", True)]
    assert recorded["first"][0]["compile_ms"] > 0
    assert not recorded["listener_left"]
