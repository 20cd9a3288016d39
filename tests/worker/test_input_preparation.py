"""Step inputs: flat tokens, positions, slot mapping and offsets for a batch mixing prefill and decode."""

import torch

from lmserve.engine.scheduler import SchedulerOutput
from lmserve.worker.input_preparation import prepare_inputs
from tests.engine.test_scheduler import make_request


def test_a_mixed_batch_is_laid_out_flat():
    decoding = make_request("decode", [11, 12, 13, 14, 15])
    decoding.num_computed_tokens = 4  # token 15 is its next input, at position 4
    chunk = make_request("chunk", [21, 22, 23, 24, 25, 26])
    chunk.num_computed_tokens = 2  # a prefill chunk continuing a cached prefix: tokens 23, 24
    batch = SchedulerOutput(requests=[decoding, chunk], num_new_tokens=[1, 2], block_ids=[[7, 3], [5]])
    inputs = prepare_inputs(batch, block_size=4, device=torch.device("cpu"))
    assert inputs.input_ids.tolist() == [15, 23, 24]
    assert inputs.positions.tolist() == [4, 2, 3]
    # position 4 of "decode" is slot 0 of its second block (3); "chunk" writes slots 2, 3 of block 5
    assert inputs.metadata.slot_mapping.tolist() == [3 * 4 + 0, 5 * 4 + 2, 5 * 4 + 3]
    assert inputs.metadata.block_tables.tolist() == [[7, 3], [5, 0]]
    assert inputs.metadata.seq_lens.tolist() == [5, 4]
    assert inputs.metadata.query_start_loc.tolist() == [0, 1, 3]
    assert (inputs.metadata.max_query_len, inputs.metadata.max_seq_len) == (2, 5)
    # only "decode" reaches its last known token; "chunk" still has prompt left, so it does not sample
    assert inputs.sampling_rows == [0] and inputs.sample_indices.tolist() == [0]
