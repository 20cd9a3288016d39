"""Host-to-device copies of a step's small arrays that never make the host wait for the GPU.

A copy from pageable host memory makes CUDA synchronise with the stream first, so the host would wait
for the step still running on the GPU, which is exactly the work the engine overlaps with. These copies
go through pinned buffers instead. Each call packs its arrays into one buffer of a ring and issues one
asynchronous copy; before a buffer is rewritten, the host waits for that buffer's previous copy, which
was issued several calls (at least two steps) earlier and has long finished.
"""

from __future__ import annotations

import numpy as np
import torch

_ALIGNMENT = 16  # bytes: every array starts aligned, so its device view is valid for any element type
_RING_SIZE = 16  # buffers in the ring: a step makes up to five calls, so a buffer comes back after 3 steps


class _PinnedBuffer:
    def __init__(self, num_bytes: int, device: torch.device) -> None:
        self.host = torch.empty(num_bytes, dtype=torch.uint8, pin_memory=True)
        self.host_array = self.host.numpy()
        self.device = torch.empty(num_bytes, dtype=torch.uint8, device=device)
        self.copied = torch.cuda.Event()
        self.copied.record()


class HostToDevice:
    """`move(arrays)` gives device tensors with the arrays' contents; on the CPU it only wraps them."""

    def __init__(self, device: torch.device, initial_bytes: int = 1 << 20) -> None:
        self.device = device
        self._initial_bytes = initial_bytes
        self._ring: list[_PinnedBuffer | None] = [None] * _RING_SIZE
        self._next = 0

    def move(self, arrays: list[np.ndarray]) -> list[torch.Tensor]:
        if self.device.type != "cuda":
            return [torch.from_numpy(np.ascontiguousarray(array)) for array in arrays]
        offsets = []
        total = 0
        for array in arrays:
            offsets.append(total)
            total += -(-array.nbytes // _ALIGNMENT) * _ALIGNMENT
        buffer = self._take(total)
        for array, offset in zip(arrays, offsets, strict=True):
            buffer.host_array[offset : offset + array.nbytes] = np.ascontiguousarray(array).view(np.uint8).reshape(-1)
        buffer.device[:total].copy_(buffer.host[:total], non_blocking=True)
        buffer.copied.record()
        dtypes = [torch.from_numpy(array[:0]).dtype for array in arrays]
        return [
            buffer.device[offset : offset + array.nbytes].view(dtype).view(array.shape)
            for array, offset, dtype in zip(arrays, offsets, dtypes, strict=True)
        ]

    def _take(self, num_bytes: int) -> _PinnedBuffer:
        index = self._next
        self._next = (index + 1) % _RING_SIZE
        buffer = self._ring[index]
        if buffer is not None:
            buffer.copied.synchronize()  # its last copy must have read the host side before it is rewritten
        if buffer is None or buffer.host.numel() < num_bytes:
            buffer = _PinnedBuffer(max(num_bytes, self._initial_bytes), self.device)
            self._ring[index] = buffer
        return buffer


def start_copy_to_host(tensor: torch.Tensor) -> torch.Tensor:
    """A host copy of `tensor`, issued without waiting: read it only after an event recorded later is done.

    The destination is pinned, so the copy is truly asynchronous (into pageable memory it would not be).
    """
    if tensor.device.type != "cuda":
        return tensor
    host = torch.empty(tensor.shape, dtype=tensor.dtype, pin_memory=True)
    return host.copy_(tensor, non_blocking=True)
