"""The kernels compile for an H100 (sm_90) even on CI's CPU.

The interpreter that runs the other kernel tests accepts code the GPU compiler rejects, so this test
compiles each kernel variant with Triton's bundled LLVM and ptxas, launching nothing.
"""

from __future__ import annotations

from tests.kernels.triton_setup import run_compiling


def test_kernels_compile_for_hopper() -> None:
    result = run_compiling(["-m", "tests.kernels.hopper_compile"])
    assert result.returncode == 0, result.stderr[-4000:]
