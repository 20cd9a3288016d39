"""x @ weight.T as a stream-K GEMM: every program gets an equal share of the multiply-accumulate work.

At decode batches of 128-256 rows, Llama-3.1-8B's projections are compute-bound, and cuBLAS cuts them into
tiles that leave the last wave part-empty: gate/up at 256 rows makes 224 tiles of 256x128 for 132 SMs,
1.7 waves, so a third of the second wave idles; down and o_proj make 32-64 tiles. Here the work is counted
in (tile, k-step) units and one program per SM takes a contiguous run of them, so no SM waits on a tail.

A run usually starts inside one tile and ends inside another. The program that holds a tile's last k-step
finishes it: it adds the partial sums that the earlier programs sharing the tile left in a workspace, in
program order (so results are deterministic), and stores the output. Each program runs its units from the
end backwards: the partial it leaves for the next program (its run's last, unfinished tile) is computed
first, and the partials it needs (from its run's first tile) are awaited last, by when they are written.
A program only ever waits on programs with lower ids, and ids are drawn from a counter as programs start
(not taken from the launch grid), so a program waits only on programs already running: no deadlock, even
where other work holds some SMs. (Under Triton's interpreter programs run one by one, in id order.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import triton
import triton.language as tl
from triton.tools.tensor_descriptor import TensorDescriptor

HALF_DTYPES = (torch.float16, torch.bfloat16)

@dataclass(frozen=True)
class MatmulTiles:
    """A tile shape and its launch options."""

    block_m: int = 128
    block_n: int = 128
    block_k: int = 64
    num_warps: int = 8
    num_stages: int = 4


def tiles_for(num_rows: int) -> MatmulTiles:
    """The tile for a row count: one row block holds all rows up to 256, so that each weight tile is read
    from memory once (as cuBLAS's 256x128 tiles do at 256 rows)."""
    if num_rows <= 64:
        return MatmulTiles(block_m=64, num_warps=4)
    if num_rows <= 128:
        return MatmulTiles(block_m=128)
    return MatmulTiles(block_m=256, num_stages=3)


@triton.jit
def _stream_k_kernel(
    x_desc, weight_desc, out_desc, partials_ptr, flags_ptr, ticket_ptr, num_rows, num_out, num_in,
    units_per_program, BLOCK_M: tl.constexpr, BLOCK_N: tl.constexpr, BLOCK_K: tl.constexpr,
    NUM_STAGES: tl.constexpr,
):
    pid = tl.atomic_add(ticket_ptr, 1)  # this program's id: the number of programs that started before it
    if pid == tl.num_programs(0) - 1:
        tl.atomic_xchg(ticket_ptr, 0, sem="relaxed")  # all have drawn: ready for the next launch
    tiles_m = tl.cdiv(num_rows, BLOCK_M)
    steps = num_in // BLOCK_K  # k-steps per tile
    total = tiles_m * (num_out // BLOCK_N) * steps
    first = pid * units_per_program
    end = tl.minimum(first + units_per_program, total)
    tile_offsets = tl.arange(0, BLOCK_M)[:, None] * BLOCK_N + tl.arange(0, BLOCK_N)[None, :]
    while end > first:
        tile = (end - 1) // steps
        tile_start = tile * steps
        k_begin = tl.maximum(first, tile_start) - tile_start
        k_end = end - tile_start
        # Tiles of one weight column block are adjacent in unit order: its rows are read while still in L2.
        row, col = (tile % tiles_m) * BLOCK_M, (tile // tiles_m) * BLOCK_N
        acc = tl.zeros((BLOCK_M, BLOCK_N), dtype=tl.float32)
        for k in tl.range(k_begin, k_end, num_stages=NUM_STAGES):
            # Rows past num_rows load as zeros (the descriptor's bounds); their sums are never stored.
            a = x_desc.load([row, k * BLOCK_K])
            b = weight_desc.load([col, k * BLOCK_K])
            acc = tl.dot(a, b.T, acc)
        if k_end < steps:
            # The tile's later k-steps belong to the next program: leave this part for it.
            tl.store(partials_ptr + pid * BLOCK_M * BLOCK_N + tile_offsets, acc, cache_modifier=".cg")
            tl.debug_barrier()
            tl.atomic_xchg(flags_ptr + pid, 1, sem="release")
        else:
            # Programs from the one holding the tile's first k-step up to this one each left a part.
            for sharer in range(tile_start // units_per_program, pid):
                while tl.atomic_add(flags_ptr + sharer, 0, sem="acquire") == 0:
                    pass
                acc += tl.load(partials_ptr + sharer * BLOCK_M * BLOCK_N + tile_offsets, cache_modifier=".cg")
                tl.atomic_xchg(flags_ptr + sharer, 0, sem="relaxed")  # ready for the next launch
            out_desc.store([row, col], acc.to(out_desc.dtype))  # rows past num_rows are not written
        end = tile_start + k_begin


class _Workspace:
    """Per device: the partial tiles (one per program), the ready flags and the id counter, which the
    programs reset to zero, so one zeroed allocation serves every launch, CUDA graph replays included.
    Launches on one device share it, so they must not run concurrently (the engine runs its steps on one
    stream).

    A graph keeps the addresses it was captured with, so a workspace is never freed: when a launch needs a
    larger one, the smaller one is kept alive beside it. None is allocated during a capture (its zeroing
    would only be recorded): `reserve_workspace` first."""

    def __init__(self) -> None:
        self._by_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor]] = {}
        self._outgrown: list[tuple[torch.Tensor, torch.Tensor]] = []

    def get(self, device: torch.device, programs: int, tile_elements: int) -> tuple[torch.Tensor, ...]:
        """(partials, flags, ticket) for a launch of `programs` programs with tiles of `tile_elements`."""
        held = self._by_device.get(device)
        if held is None or held[0].numel() < programs * tile_elements or held[1].numel() <= programs:
            if device.type == "cuda" and torch.cuda.is_current_stream_capturing():
                raise RuntimeError("the stream-K workspace must be allocated before a CUDA graph capture: "
                                   "call lmserve.kernels.matmul.reserve_workspace(device) first")
            if held is not None:
                self._outgrown.append(held)
            # Room for the largest tile tiles_for picks, so that the engine's launches need one allocation.
            programs = max(programs, program_count(device))
            tile_elements = max(tile_elements, 256 * 128)
            held = (torch.empty(programs * tile_elements, dtype=torch.float32, device=device),
                    torch.zeros(programs + 1, dtype=torch.int32, device=device))  # flags, then the id counter
            self._by_device[device] = held
        partials, counters = held
        return partials, counters[:-1], counters[-1:]


_WORKSPACE = _Workspace()


def reserve_workspace(device: torch.device) -> None:
    """Allocate the device's workspace for every launch `matmul` makes with its own tiles: before CUDA
    graphs are captured, and before the memory profile, so that it counts."""
    _WORKSPACE.get(device, program_count(device), 256 * 128)


def program_count(device: torch.device) -> int:
    """One program per SM: the grid must fit in one wave (programs wait on each other)."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).multi_processor_count
    return 4  # the interpreter: a few programs, so that tiles are shared


def supports(x: torch.Tensor, weight: torch.Tensor, tiles: MatmulTiles | None = None) -> bool:
    """Whether `matmul` takes these operands: 2-D, of one 16-bit float dtype (the tensor cores' inputs; float32
    would run as TF32), the output and inner dimensions whole multiples of the tile, and laid out as the
    tensor memory accelerator reads: unit stride along the inner dimension, rows 16-byte aligned."""
    tiles = tiles or MatmulTiles()
    num_out, num_in = weight.shape
    return (x.dim() == 2 and x.shape[1] == num_in and x.dtype == weight.dtype in HALF_DTYPES and num_out > 0
            and num_in > 0 and num_out % tiles.block_n == 0 and num_in % tiles.block_k == 0
            and all(t.stride(1) == 1 and t.stride(0) * t.element_size() % 16 == 0 and t.data_ptr() % 16 == 0
                    for t in (x, weight)))


def matmul(x: torch.Tensor, weight: torch.Tensor, tiles: MatmulTiles | None = None,
           programs: int | None = None) -> torch.Tensor:
    """x [rows, in] @ weight [out, in].T, as F.linear without bias, accumulated in float32; `tiles` defaults
    to `tiles_for` the row count, `programs` to one per SM."""
    tiles = tiles or tiles_for(x.shape[0])
    if not supports(x, weight, tiles):
        raise ValueError(f"matmul takes [rows, in] @ [out, in].T in one 16-bit float dtype, out a multiple of "
                         f"{tiles.block_n}, in of {tiles.block_k}, unit inner strides and 16-byte aligned rows; "
                         f"got {tuple(x.shape)} {x.dtype} and {tuple(weight.shape)} {weight.dtype}")
    num_rows, (num_out, num_in) = x.shape[0], weight.shape
    out = torch.empty(num_rows, num_out, dtype=x.dtype, device=x.device)
    if num_rows == 0:
        return out
    units = triton.cdiv(num_rows, tiles.block_m) * (num_out // tiles.block_n) * (num_in // tiles.block_k)
    programs = min(programs or program_count(x.device), units)
    units_per_program = triton.cdiv(units, programs)
    programs = triton.cdiv(units, units_per_program)
    partials, flags, ticket = _WORKSPACE.get(x.device, programs, tiles.block_m * tiles.block_n)
    _stream_k_kernel[(programs,)](
        TensorDescriptor.from_tensor(x, [tiles.block_m, tiles.block_k]),
        TensorDescriptor.from_tensor(weight, [tiles.block_n, tiles.block_k]),
        TensorDescriptor.from_tensor(out, [tiles.block_m, tiles.block_n]),
        partials, flags, ticket, num_rows, num_out, num_in, units_per_program,
        BLOCK_M=tiles.block_m, BLOCK_N=tiles.block_n, BLOCK_K=tiles.block_k, NUM_STAGES=tiles.num_stages,
        num_warps=tiles.num_warps,
    )
    return out
