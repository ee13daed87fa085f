"""Packing: the rows of a micro-batch laid end to end in fewer, longer rows, each row attending only to itself.

Why per micro-batch, and not in the sampler or the collate: a micro-batch already holds whole preference pairs (a
sample of ``PairDataset`` is a pair, and the batch samplers never split a sample), so a pair's chosen and rejected
are always packed together, and the data order, the samplers' state and resume are exactly an unpacked run's.
Packing changes only the layout the model runs on; every per-row field (labels, pair ids, preferences) keeps its
row order, so the losses read the rows exactly as unpacked.

Two layouts (``nemo_hs2.megatron.packed_gpt`` runs them):

* dense (megatron-core's local attention, the CPU path): bins of at most ``capacity`` tokens (first-fit
  decreasing; a row is never split), each bin one packed row, with a block-diagonal causal mask
  (``block_causal_mask``). Dense attention computes every (query, key) of a packed row, masked or not, so a wider
  row costs more than the padding it saves: by default (``dense_capacity``) the capacity is the micro-batch's
  longest row, so a packed micro-batch is never wider than a trimmed one, only has fewer rows.
* THD (Transformer Engine): one bin, all rows in one sequence described by ``cu_seqlens`` (``thd_cu_seqlens``),
  where flash attention costs only each row's own length.

Positions restart at 0 in every row (``position_ids``): learned absolute embeddings read them, and the dense path
gathers RoPE by them, so every token is rotated exactly as unpacked. ``ends[r] = (packed row, column)`` of row
``r``'s last token, where the reward head reads it (unpacked: ``lengths[r] - 1`` of row ``r``). Padding after the
last row of a packed row is a segment of its own (``PAD_SEGMENT``), never attended by a real token.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from nemo_hs2.data.dataset import pad_length

PAD_SEGMENT = -1
_LAYOUT_KEYS = ("inputs", "position_ids")  # rewritten by packing; every other field is per row and kept


def first_fit(lengths: Sequence[int], capacity: int | None) -> list[list[int]]:
    """Row indices per bin: longest rows first (ties by index), each into the first bin it fits, rows within a bin
    in index order. Deterministic, so every pipeline stage and every resumed run packs a micro-batch alike."""
    if capacity is None:
        return [list(range(len(lengths)))]
    if int(capacity) < 1:
        raise ValueError(f"a packing capacity must be a positive number of tokens, got {capacity}")
    bins: list[list[int]] = []
    loads: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: (-int(lengths[i]), i)):
        n = int(lengths[i])
        for b, load in enumerate(loads):
            if load + n <= capacity:
                bins[b].append(i)
                loads[b] += n
                break
        else:
            bins.append([i])
            loads.append(n)
    return [sorted(b) for b in bins]


def dense_capacity(lengths: Sequence[int], pack_length: int | None, multiple: int) -> int:
    """Tokens per packed row on the dense path: ``data.pack_length``, but never less than the micro-batch's longest
    row rounded up to ``multiple`` (its trimmed width, which that row needs anyway)."""
    return max(pad_length(max(int(n) for n in lengths), multiple), int(pack_length or 0))


def packed_width(lengths: Sequence[int], capacity: int | None, multiple: int) -> tuple[int, int]:
    """(packed rows, width) a micro-batch of rows with these lengths packs into: the tokens it runs on are their
    product. For throughput accounting without building tensors."""
    bins = first_fit(lengths, capacity)
    return len(bins), pad_length(max(sum(int(lengths[i]) for i in b) for b in bins), multiple)


def pack(mb: dict, capacity: int | None, multiple: int, pad_id: int = 0) -> dict:
    """An unpacked micro-batch (``inputs`` / ``position_ids`` ``[rows, width]``, ``lengths [rows]``, per-row fields)
    -> the packed one: ``inputs`` / ``position_ids`` / ``segments`` ``[packed rows, packed width]`` and ``ends
    [rows, 2]``; ``lengths`` and the other per-row fields unchanged. ``pad_id`` fills the padding, which no real
    token attends to."""
    lengths = [int(n) for n in mb["lengths"].tolist()]
    if min(lengths, default=0) < 1:
        raise ValueError(f"every packed row needs at least one token, got lengths {lengths}")
    bins = first_fit(lengths, capacity)
    width = pad_length(max(sum(lengths[i] for i in b) for b in bins), multiple)
    source = mb["inputs"]
    inputs = torch.full((len(bins), width), int(pad_id), dtype=source.dtype)
    segments = torch.full((len(bins), width), PAD_SEGMENT, dtype=torch.int64)
    positions = torch.empty((len(bins), width), dtype=torch.int64)
    ends = torch.empty((len(lengths), 2), dtype=torch.int64)
    for p, rows in enumerate(bins):
        col = 0
        for i in rows:
            n = lengths[i]
            inputs[p, col:col + n] = source[i, :n]
            segments[p, col:col + n] = i
            positions[p, col:col + n] = torch.arange(n)
            ends[i, 0], ends[i, 1] = p, col + n - 1
            col += n
        positions[p, col:] = torch.arange(width - col)
    out = {k: v for k, v in mb.items() if k not in _LAYOUT_KEYS}
    out.update(inputs=inputs, position_ids=positions, segments=segments, ends=ends)
    return out


def block_causal_mask(segments: torch.Tensor) -> torch.Tensor:
    """``[packed rows, 1, width, width]`` bool, True where attention is masked (megatron-core's convention): a token
    sees the tokens of its own row up to itself, nothing of another row."""
    width = segments.shape[1]
    same = segments.unsqueeze(2) == segments.unsqueeze(1)
    causal = torch.ones(width, width, dtype=torch.bool, device=segments.device).tril_()
    return ~(same & causal).unsqueeze(1)


def thd_cu_seqlens(segments: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(``cu_seqlens`` int32, longest segment) of a one-row packing, for megatron-core's ``PackedSeqParams`` (THD):
    each row, then the padding, as a sequence of its own."""
    if segments.shape[0] != 1:
        raise ValueError(f"the THD layout packs a micro-batch into one sequence, got {segments.shape[0]} rows")
    seg = segments[0]
    starts = torch.nonzero(torch.diff(seg) != 0).flatten() + 1
    bounds = torch.cat([seg.new_zeros(1), starts, seg.new_tensor([seg.numel()])])
    return bounds.to(torch.int32), int(torch.diff(bounds).max())
