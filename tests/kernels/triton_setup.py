"""Run the Triton kernels on a machine without a GPU: Triton's interpreter executes them with numpy.

Two gaps of Triton 3.6's interpreter are patched here, for the tests only; neither touches GPU runs.
"""

from __future__ import annotations

import importlib.util
import os

import numpy as np
import torch


def use_interpreter_without_gpu() -> None:
    """Call before the first import of `lmserve.kernels`: Triton picks interpreter or compiler per @jit."""
    if torch.cuda.is_available() or importlib.util.find_spec("triton") is None:
        return
    os.environ["TRITON_INTERPRET"] = "1"
    from triton.runtime import interpreter

    _let_interpreter_index_with_numpy_scalars(interpreter)
    _let_interpreter_multiply_bfloat16(interpreter)


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
