"""Run the Triton kernels on a machine without a GPU: Triton's interpreter executes them with numpy.

Three gaps of Triton 3.6's interpreter are patched here, for the tests only; none touches GPU runs.
"""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

REPOSITORY = Path(__file__).resolve().parents[2]


def use_interpreter_without_gpu() -> None:
    """Call before the first import of `lmserve.kernels`: Triton picks interpreter or compiler per @jit."""
    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime import interpreter

    _let_interpreter_index_with_numpy_scalars(interpreter)
    _let_interpreter_multiply_bfloat16(interpreter)
    _let_interpreter_round_float8_to_nearest_even(interpreter)


def run_compiling(arguments: list[str], **environment: str) -> subprocess.CompletedProcess:
    """`python <arguments>` from the repository root in a process where Triton compiles (no interpreter:
    under it even Triton's own library functions cannot be compiled), with `environment` added."""
    variables = {name: value for name, value in os.environ.items() if name != "TRITON_INTERPRET"} | environment
    return subprocess.run([sys.executable, *arguments], cwd=REPOSITORY, env=variables, capture_output=True,
                          text=True, timeout=300)


def record_launches(monkeypatch, module, kernel_names: tuple[str, ...]) -> list[tuple[str, tuple]]:
    """Wrap `module`'s kernels so that each launch appends (kernel name, its constants) to the returned list:
    the kernel variants a run compiles."""
    launched = []

    class Recorder:
        def __init__(self, kernel):
            self.kernel = kernel

        def __getitem__(self, grid):
            def launch(*args, **constants):
                launched.append((self.kernel.__name__, tuple(sorted(constants.items()))))
                return self.kernel[grid](*args, **constants)
            return launch

    for name in kernel_names:
        monkeypatch.setattr(module, name, Recorder(getattr(module, name)))
    return launched


def _let_interpreter_index_with_numpy_scalars(interpreter) -> None:
    """The interpreter keeps scalars as 1-element arrays and turns them into loop bounds with `int(array)`,
    which numpy >= 2.4 refuses for arrays that are not 0-d (Triton 3.7+ squeezes first)."""
    patch_tensor = interpreter._patch_lang_tensor
    if getattr(patch_tensor, "indexes_0d", False):
        return

    def patch_tensor_indexing_0d(tensor, scope) -> None:
        patch_tensor(tensor, scope)
        scope.set_attr(tensor, "__index__", lambda self: int(self.handle.data.reshape(())))

    patch_tensor_indexing_0d.indexes_0d = True
    interpreter._patch_lang_tensor = patch_tensor_indexing_0d


def _let_interpreter_multiply_bfloat16(interpreter) -> None:
    """The interpreter stores bfloat16 as its uint16 bits, and its `tl.dot` multiplies those bits
    (triton-lang/triton#11584); widen bfloat16 operands to the float32 they encode first."""
    builder = interpreter.InterpreterBuilder
    create_dot = builder.create_dot
    if getattr(create_dot, "widens_bfloat16", False):
        return
    bfloat16 = interpreter.tl.bfloat16

    def widen(operand):
        if operand.dtype != bfloat16:
            return operand
        bits = operand.data.astype(np.uint32) << 16
        return interpreter.TensorHandle(bits.view(np.float32), interpreter.tl.float32)

    def create_dot_widening_bfloat16(self, a, b, d, input_precision, max_num_imprecise_acc):
        return create_dot(self, widen(a), widen(b), d, input_precision, max_num_imprecise_acc)

    create_dot_widening_bfloat16.widens_bfloat16 = True
    builder.create_dot = create_dot_widening_bfloat16


def _let_interpreter_round_float8_to_nearest_even(interpreter) -> None:
    """The interpreter's float conversions round a half up and drop the carry into the exponent (so
    125.5 becomes 64 in float8 e4m3, where the GPU gives 128); convert to and from float8 e4m3 in torch.

    Both round to nearest even, the only mode the kernels ask for. Out of range they differ (torch gives
    NaN where the GPU saturates); the kernels clamp before they convert.
    """
    builder = interpreter.InterpreterBuilder
    create_fp_to_fp = builder.create_fp_to_fp
    if getattr(create_fp_to_fp, "rounds_float8", False):
        return
    tl = interpreter.tl
    # Each type as torch holds it, and as the interpreter stores it (bfloat16 and float8 as their bits).
    types = {tl.float32: (torch.float32, torch.float32), tl.float16: (torch.float16, torch.float16),
             tl.bfloat16: (torch.bfloat16, torch.uint16), tl.float8e4nv: (torch.float8_e4m3fn, torch.uint8)}

    def create_fp_to_fp_through_torch(self, src, dst_type, rounding_mode):
        source, target = src.dtype.scalar, dst_type.scalar
        if tl.float8e4nv not in (source, target) or source not in types or target not in types:
            return create_fp_to_fp(self, src, dst_type, rounding_mode)
        stored = torch.from_numpy(np.ascontiguousarray(src.data)).view(types[source][1])
        converted = stored.view(types[source][0]).float().to(types[target][0]).view(types[target][1])
        return interpreter.TensorHandle(converted.numpy(), target)

    create_fp_to_fp_through_torch.rounds_float8 = True
    builder.create_fp_to_fp = create_fp_to_fp_through_torch
