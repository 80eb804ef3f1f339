"""Gathering batches of an in-memory TensorDataset: per batch, and in blocks of batches."""
import pytest
import torch

from pystematic_torch.data import _gather
from pystematic_torch.data._gather import gather_blocks, gather_rows


def test_gather_rows_equals_indexing_sample_by_sample():
    tensors = (torch.randn(9, 2, 3), torch.arange(9, dtype=torch.int16))
    batches = list(gather_rows(tensors, [[4, 0, 4], [8], []], pin=False))
    assert [len(batch) for batch in batches] == [2, 2, 2]
    for batch, index in zip(batches, ([4, 0, 4], [8], [])):
        for rows, source in zip(batch, tensors):
            expected = torch.stack([source[i] for i in index]) if index else source[:0]
            assert rows.dtype == source.dtype and torch.equal(rows, expected)


@pytest.mark.parametrize("batch_size", [1, 3, 7, 64])
@pytest.mark.parametrize("block_bytes", [1, 200, 1 << 20])
def test_gather_blocks_delivers_the_same_batches_as_gathering_each(batch_size, block_bytes,
                                                                   monkeypatch):
    monkeypatch.setattr(_gather, "_BLOCK_BYTES", block_bytes)
    generator = torch.Generator().manual_seed(0)
    tensors = (torch.randn(100, 2, 3, generator=generator), torch.arange(100, dtype=torch.int16))
    indices = torch.randperm(100, generator=generator)[:95]
    blocks = list(gather_blocks(tensors, indices, batch_size))
    rows = list(gather_rows(tensors, indices.split(batch_size), pin=False))
    assert len(blocks) == len(rows) == -(-95 // batch_size)
    for got, expected in zip(blocks, rows):
        assert type(got) is list and len(got) == 2
        for a, b in zip(got, expected):
            assert a.dtype == b.dtype and a.is_contiguous() and torch.equal(a, b)


def test_an_epoch_within_the_bounds_is_one_gather_and_a_larger_one_is_split_at_them(
    monkeypatch,
):
    row_bytes = 64 * 4 + 8
    tensors = (torch.randn(8_000, 64), torch.arange(8_000))  # 125 batches, 2.0 MiB
    assert 8_000 * row_bytes <= _gather._BLOCK_BYTES and 125 <= _gather._BLOCK_BATCHES
    batches = list(gather_blocks(tensors, torch.randperm(8_000), 64))
    assert len({batch[0].untyped_storage().data_ptr() for batch in batches}) == 1
    assert batches[0][0].untyped_storage().nbytes() == 8_000 * 64 * 4

    # Bounded by bytes: blocks of 20 batches, the last one holding what is left.
    tensors = (torch.randn(10_000, 64), torch.arange(10_000))
    monkeypatch.setattr(_gather, "_BLOCK_BYTES", 20 * 64 * row_bytes + 1)
    batches = list(gather_blocks(tensors, torch.randperm(10_000), 64))
    sizes = [batch[0].untyped_storage().nbytes() for batch in batches]
    assert sizes[0] == sizes[139] == 20 * 64 * 64 * 4
    pointers = [batch[0].untyped_storage().data_ptr() for batch in batches]
    assert len(set(pointers[:20])) == 1 and pointers[19] != pointers[20]
    assert sizes[-1] == (10_000 - 140 * 64) * 64 * 4  # 156 full batches and 16 rows
    # Bounded by count: tiny rows one at a time make blocks of _BLOCK_BATCHES views each.
    monkeypatch.setattr(_gather, "_BLOCK_BYTES", 4 << 20)
    batches = list(gather_blocks((torch.arange(1_000),), torch.randperm(1_000), 1))
    pointers = [batch[0].untyped_storage().data_ptr() for batch in batches]
    assert len(set(pointers[:128])) == 1 and pointers[127] != pointers[128]
    assert batches[0][0].untyped_storage().nbytes() == 128 * 8
    # A batch larger than a block's bytes is a block of its own.
    monkeypatch.setattr(_gather, "_BLOCK_BYTES", 1 << 20)
    huge = list(gather_blocks((torch.zeros(4, 1 << 18),), torch.arange(4), 2))
    assert [batch[0].untyped_storage().nbytes() for batch in huge] == [2 << 20, 2 << 20]


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_gather_rows_pins_for_the_copy():
    batch = next(gather_rows((torch.randn(8, 4),), [[3, 1]], pin=True))
    assert batch[0].is_pinned()
