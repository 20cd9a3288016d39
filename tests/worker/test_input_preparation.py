"""Step inputs: flat tokens, positions, slot mapping and offsets for a batch mixing prefill and decode."""

import torch

from lmserve.worker.input_preparation import BlockTableRows, layout_step, to_device
from lmserve.worker.staging import HostToDevice
from tests.engine.test_scheduler import make_batch, make_request


def test_a_mixed_batch_is_laid_out_flat():
    decoding = make_request("decode", [11, 12, 13, 14, 15])
    decoding.num_computed_tokens = 4  # token 15 is its next input, at position 4
    chunk = make_request("chunk", [21, 22, 23, 24, 25, 26])
    chunk.num_computed_tokens = 2  # a prefill chunk continuing a cached prefix: tokens 23, 24
    batch = make_batch([decoding, chunk], [1, 2], [[7, 3], [5]])
    layout = layout_step(batch, block_size=4)
    inputs = to_device(layout, HostToDevice(torch.device("cpu")))
    assert inputs.input_ids.tolist() == [15, 23, 24]
    assert inputs.positions.tolist() == [4, 2, 3]
    # position 4 of "decode" is slot 0 of its second block (3); "chunk" writes slots 2, 3 of block 5
    assert inputs.metadata.slot_mapping.tolist() == [3 * 4 + 0, 5 * 4 + 2, 5 * 4 + 3]
    assert inputs.metadata.block_tables.tolist() == [[7, 3], [5, 0]]
    assert inputs.metadata.seq_lens.tolist() == [5, 4]
    assert inputs.metadata.query_start_loc.tolist() == [0, 1, 3]
    assert (inputs.metadata.max_query_len, inputs.metadata.max_seq_len) == (2, 5)
    assert inputs.metadata.decode_order is None  # a mixed step's attention goes by query tiles
    # only "decode" reaches its last known token; "chunk" still has prompt left, so it does not sample
    assert layout.sampling_rows == [0] and layout.sample_indices.tolist() == [0]
    assert not layout.every_token_samples


def test_in_a_decode_step_every_token_samples():
    first, second = make_request("a", [1, 2, 3]), make_request("b", [4, 5])
    first.num_computed_tokens, second.num_computed_tokens = 2, 1
    layout = layout_step(make_batch([first, second], [1, 1], [[0], [1]]), block_size=4)
    assert layout.every_token_samples and layout.sample_indices.tolist() == [0, 1]
    assert (layout.max_query_len, layout.max_seq_len) == (1, 3)


def test_a_decode_step_attends_to_its_longest_contexts_first():
    requests = [make_request(name, list(range(length))) for name, length in zip("abcd", [3, 9, 5, 9], strict=True)]
    for request in requests:
        request.num_computed_tokens = request.num_tokens - 1
    layout = layout_step(make_batch(requests, [1] * 4, [[0, 1, 2]] * 4), block_size=4)
    inputs = to_device(layout, HostToDevice(torch.device("cpu")))
    assert inputs.metadata.decode_order.tolist() == [1, 3, 2, 0]  # ties keep batch order
    # padded for a CUDA graph, the padding requests (one key each) come last
    padded = to_device(layout.padded(6), HostToDevice(torch.device("cpu")))
    assert padded.metadata.decode_order.tolist() == [1, 3, 2, 0, 4, 5]


def test_block_table_rows_persist_grow_and_are_reused():
    rows = BlockTableRows(num_rows=1, num_columns=2)
    first, second = make_request("a", [1, 2, 3]), make_request("b", [4, 5])
    a_ids, b_ids = [3], [8, 9, 4]
    assert rows.gather(make_batch([first, second], [1, 1], [a_ids, b_ids])).tolist() == [[3, 0, 0], [8, 9, 4]]
    a_ids.append(6)  # the block manager appends to a request's list in place
    assert rows.gather(make_batch([second, first], [1, 1], [b_ids, a_ids])).tolist() == [[8, 9, 4], [3, 6, 0]]
    # "b" was preempted and got a new, shorter list: its row is rewritten, not extended.
    assert rows.gather(make_batch([second], [1], [[1]])).tolist() == [[1]]
    rows.release(["a"])
    third = make_request("c", [7])
    assert rows.gather(make_batch([third, second], [1, 1], [[5], [1]])).tolist() == [[5], [1]]
    assert rows.table.shape[0] == 2  # "c" took the row "a" left
