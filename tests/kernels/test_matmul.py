"""The stream-K GEMM equals F.linear, however its programs share the tiles, and leaves its flags reset."""

from __future__ import annotations

import pytest
import torch

from lmserve.kernels.matmul import _WORKSPACE, MatmulTiles, matmul, reserve_workspace, supports, tiles_for
from tests.kernels.paged_batch import DEVICE

SMALL_TILES = MatmulTiles(block_m=16, block_n=16, block_k=16, num_warps=4, num_stages=2)
TOLERANCES = {torch.float16: 4e-3, torch.bfloat16: 2e-2}


def random_tensor(*shape: int, dtype: torch.dtype, seed: int) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return torch.randn(*shape, generator=generator).to(device=DEVICE, dtype=dtype)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
@pytest.mark.parametrize(("rows", "num_out", "num_in", "programs"), [
    (1, 32, 64, 4),  # 8 units: two per program, every tile shared
    (5, 48, 48, 3),  # 9 units, one tile per program: no sharing
    (33, 32, 80, 4),  # 3 row tiles, the last mostly padding; 5 k-steps in runs of 8: tiles shared by 2-3
    (40, 64, 32, 7),  # 24 units over 6 programs: runs of 4, 2 k-steps a tile
    (17, 16, 160, 5),  # 20 units: runs of 4 inside 10-step tiles, so a tile spans three programs
])
def test_matmul_matches_linear(rows: int, num_out: int, num_in: int, programs: int, dtype: torch.dtype) -> None:
    # Rows of x lie in a wider buffer: the row stride is not the width.
    x = random_tensor(rows, num_in + 16, dtype=dtype, seed=rows)[:, :num_in]
    weight = random_tensor(num_out, num_in, dtype=dtype, seed=1) * num_in**-0.5
    out = matmul(x, weight, SMALL_TILES, programs=programs)
    expected = torch.nn.functional.linear(x.float(), weight.float())
    assert out.dtype == dtype and out.shape == (rows, num_out)
    error = (out.float() - expected).abs().max()
    assert error <= TOLERANCES[dtype] * expected.abs().max(), error
    _, flags, ticket = _WORKSPACE.get(x.device, 1, 1)
    assert not flags.any(), "every partial was consumed and its flag reset"
    assert ticket.item() == 0, "the last program to start reset the id counter"
    again = matmul(x, weight, SMALL_TILES, programs=programs)
    assert torch.equal(again, out), "the partials are added in a fixed order"


@pytest.mark.parametrize("rows", [40, 100, 130])
def test_matmul_at_the_tiles_it_picks_for_the_rows(rows: int) -> None:
    """64-, 128- and 256-row tiles; 2 column blocks of 3 k-steps over 4 programs on the CPU (one per SM on a
    GPU), so that tiles are shared there."""
    assert tiles_for(rows).block_m == {40: 64, 100: 128, 130: 256}[rows]
    x = random_tensor(rows, 192, dtype=torch.bfloat16, seed=rows)
    weight = random_tensor(256, 192, dtype=torch.bfloat16, seed=1) * 192**-0.5
    expected = torch.nn.functional.linear(x.float(), weight.float())
    assert (matmul(x, weight).float() - expected).abs().max() <= TOLERANCES[torch.bfloat16] * expected.abs().max()


def test_matmul_without_rows() -> None:
    weight = random_tensor(32, 32, dtype=torch.bfloat16, seed=1)
    assert matmul(torch.empty(0, 32, dtype=torch.bfloat16, device=DEVICE), weight, SMALL_TILES).shape == (0, 32)


@pytest.mark.parametrize(("x_shape", "weight_shape", "dtype"), [
    ((4, 32), (24, 32), torch.bfloat16),  # out not a multiple of the tile
    ((4, 24), (32, 24), torch.bfloat16),  # nor in
    ((4, 16), (32, 32), torch.bfloat16),  # x's width is not the weight's
    ((4, 32), (32, 32), torch.float32),  # the tensor cores would round float32 to TF32
    ((4, 32), (0, 32), torch.bfloat16),  # no outputs: no tiles to share out
])
def test_matmul_rejects_operands_it_does_not_take(x_shape: tuple, weight_shape: tuple, dtype: torch.dtype) -> None:
    x, weight = torch.zeros(x_shape, dtype=dtype, device=DEVICE), torch.zeros(weight_shape, dtype=dtype, device=DEVICE)
    assert not supports(x, weight, SMALL_TILES)
    with pytest.raises(ValueError, match="16-bit float dtype, out a multiple of 16"):
        matmul(x, weight, SMALL_TILES)


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_on_a_gpu_launches_in_a_row_and_graph_replays_match_linear() -> None:
    """On a GPU programs really wait on each other (under the interpreter they run one by one): many launches
    in a row, eager and replayed from a CUDA graph, at each tile tiles_for picks, on Llama-3.1-8B's down
    projection (32 column tiles of 224 k-steps: each tile shared by several programs)."""
    device = torch.device("cuda")
    reserve_workspace(device)
    weight = torch.randn(4096, 14336, dtype=torch.bfloat16, device=device) * 14336**-0.5
    for rows in (64, 128, 200, 256):
        x = torch.randn(rows, 14336, dtype=torch.bfloat16, device=device)
        expected = torch.nn.functional.linear(x.float(), weight.float())
        eager = [matmul(x, weight) for _ in range(20)]
        graph, replayed = torch.cuda.CUDAGraph(), []
        with torch.cuda.graph(graph):
            replayed = [matmul(x, weight) for _ in range(10)]
        for _ in range(5):
            graph.replay()
        torch.cuda.synchronize()
        assert all(torch.equal(out, eager[0]) for out in eager + replayed), "the same sums in the same order"
        assert (eager[0].float() - expected).abs().max() <= TOLERANCES[torch.bfloat16] * expected.abs().max()
    _, flags, ticket = _WORKSPACE.get(device, 1, 1)
    assert not flags.any() and ticket.item() == 0
