"""The kernels compile for an H100 (sm_90) even on CI's CPU.

The interpreter that runs the other kernel tests accepts code the GPU compiler rejects, so this test
compiles each kernel variant with Triton's bundled LLVM and ptxas, launching nothing.
"""

from __future__ import annotations

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

