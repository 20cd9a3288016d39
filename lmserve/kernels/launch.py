"""Programmatic dependent launch (PDL): the next kernel of a step is scheduled before this one has drained.

Between two kernels in a stream the GPU normally waits for the first to finish before it schedules the
second. At decode batch sizes that gap is as long as many of the kernels themselves, a few dozen times a
layer. With PDL (Hopper and newer) a kernel is scheduled once every program of the kernel before it has
started; its programs then wait at their start until that kernel has finished and its writes are visible.
Each kernel here takes a `DEPENDENT_LAUNCH` constexpr, calls `wait_for_previous_kernel` before touching
memory, and is launched with `**dependent_launch(device)`. `LMSERVE_PDL=0` turns it off.

The wait covers every earlier kernel, not only the previous one: that one finished only after its own
wait, or, launched without PDL (cuBLAS, torch), after everything before it.
"""

from __future__ import annotations

import functools
import os

import torch
import triton
import triton.language as tl
from triton.language.extra.cuda import gdc_launch_dependents, gdc_wait


@triton.jit
def wait_for_previous_kernel(ENABLED: tl.constexpr):
    """Let the next kernel be scheduled, then wait for the ones before; nothing unless ENABLED."""
    if ENABLED:
        gdc_launch_dependents()
        gdc_wait()


def dependent_launch(device: torch.device) -> dict:
    """Keyword arguments for a launch on `device`: PDL on a CUDA GPU of compute capability 9.0 or newer."""
    return {"DEPENDENT_LAUNCH": True, "launch_pdl": True} if _has_pdl(device) else {"DEPENDENT_LAUNCH": False}


@functools.cache
def _has_pdl(device: torch.device) -> bool:
    if device.type != "cuda" or os.environ.get("TRITON_INTERPRET") == "1" or os.environ.get("LMSERVE_PDL") == "0":
        return False
    return torch.cuda.get_device_capability(device)[0] >= 9
