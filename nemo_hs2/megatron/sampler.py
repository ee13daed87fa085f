"""Training batch samplers: Megatron's random batch sampler, or a length-grouped one with the same contract.

Both yield, per data-parallel rank, that rank's share of one global batch (``global_batch_size / dp`` indices,
the ``load_gbs=True`` convention of NeMo-Aligner's ``build_dataloader``), advance ``consumed_samples`` by
``global_batch_size`` per step, derive the epoch from ``consumed_samples`` and are deterministic given
(seed, epoch): a run resumed with ``consumed_samples = k * global_batch_size`` sees exactly the batches an
uninterrupted run sees from step k on.
"""

from __future__ import annotations

import numpy as np
import torch

from nemo.collections.nlp.data.language_modeling.megatron.megatron_batch_samplers import (
    MegatronPretrainingRandomBatchSampler,
)

DEFAULT_GROUP_SIZE = 64  # global batches per length-sorted mega-chunk
# Lengths within 5% of each other sort as equal, so such rows keep their random order: an epoch's batches are
# new groupings, not the previous epoch's reshuffled (which an exact sort gives when an epoch is one mega-chunk).
LENGTH_TOLERANCE = 0.05


class LengthGroupedBatchSampler(MegatronPretrainingRandomBatchSampler):
    """Random batches in which the rows of a micro-batch have similar lengths.

    Per epoch: a random permutation of all rows (``torch.randperm`` seeded with ``seed + epoch``, like the stock
    sampler), cut into mega-chunks of ``group_size`` global batches; each chunk is sorted by length (longest
    first, ties in permutation order) and cut into global batches; then the epoch's global batches are shuffled.
    A global batch is ``dp * num_micro_batches`` consecutive micro-batches of the sorted chunk, dealt to the ranks
    in snake order (round 0: ranks 0..dp-1, round 1: dp-1..0, ...), so that the ranks of one step get rows of
    similar lengths and similar totals and wait for each other as little as possible. The rows that do not fill a
    last global batch are left out of the epoch (drop_last), as the stock sampler does: a different random set
    each epoch.
    """

    def __init__(self, total_samples: int, consumed_samples: int, micro_batch_size: int, global_batch_size: int,
                 data_parallel_rank: int, data_parallel_size: int, drop_last: bool,
                 pad_samples_to_global_batch_size: bool = False, seed: int = 0, *, lengths,
                 group_size: int = DEFAULT_GROUP_SIZE):
        super().__init__(total_samples=total_samples, consumed_samples=consumed_samples,
                         micro_batch_size=micro_batch_size, global_batch_size=global_batch_size,
                         data_parallel_rank=data_parallel_rank, data_parallel_size=data_parallel_size,
                         drop_last=drop_last, pad_samples_to_global_batch_size=pad_samples_to_global_batch_size,
                         seed=seed)
        if not drop_last:
            raise ValueError("length-grouped sampling needs drop_last=True (so does NeMo-Aligner's SupervisedTrainer)")
        lengths = np.asarray(lengths, dtype=np.int64)
        if lengths.shape != (total_samples,):
            raise ValueError(f"lengths must have one entry per sample ({total_samples}), got shape {lengths.shape}")
        if int(group_size) < 1:
            raise ValueError(f"length group size must be >= 1 global batch, got {group_size}")
        if total_samples < global_batch_size:
            raise ValueError(f"{total_samples} samples do not fill one global batch of {global_batch_size}")
        self.lengths = lengths
        self._sort_keys = np.floor(np.log(np.maximum(lengths, 1)) / np.log1p(LENGTH_TOLERANCE)).astype(np.int64)
        self.group_size = int(group_size)
        self._cached_epoch: tuple[int, np.ndarray] | None = None

    def epoch_batches(self, epoch: int) -> np.ndarray:
        """``[batches_per_epoch, global_batch_size]`` sample indices of one epoch, in step order."""
        if self._cached_epoch is not None and self._cached_epoch[0] == epoch:
            return self._cached_epoch[1]
        gbs = self._global_batch_size
        active = self.total_samples - self.last_batch_size
        g = torch.Generator()
        g.manual_seed(self.seed + epoch)
        perm = torch.randperm(self.total_samples, generator=g).numpy()[:active]
        chunk = self.group_size * gbs
        batches = []
        for start in range(0, active, chunk):
            rows = perm[start:start + chunk]
            # Stable sort on the negated length bucket: ties keep their random order, the longest rows come first.
            rows = rows[np.argsort(-self._sort_keys[rows], kind="stable")]
            batches.append(rows.reshape(-1, gbs))
        batches = np.concatenate(batches)
        batches = batches[torch.randperm(len(batches), generator=g).numpy()]
        self._cached_epoch = (epoch, batches)
        return batches

    def rank_share(self, global_batch: np.ndarray) -> list[int]:
        mbs, dp = self.micro_batch_size, self.data_parallel_size
        # [micro-batch round, rank, row]: round g holds the dp micro-batches the ranks run at the same time.
        rounds = np.asarray(global_batch).reshape(-1, dp, mbs).copy()
        # Longest first means rank 0 would always draw the longest micro-batch of a round; dealing every other
        # round in reverse (snake order) evens out the ranks' totals.
        rounds[1::2] = rounds[1::2, ::-1]
        return rounds[:, self.data_parallel_rank].reshape(-1).tolist()

    def __iter__(self):
        gbs = self._global_batch_size
        active = self.total_samples - self.last_batch_size
        self.epoch = self.consumed_samples // active
        done = self.consumed_samples % active
        if done % gbs:
            raise ValueError(f"consumed_samples={self.consumed_samples} is not a whole number of global batches "
                             f"({gbs}) into the epoch")
        batches = self.epoch_batches(self.epoch)
        for global_batch in batches[done // gbs:]:
            self.consumed_samples += gbs
            yield self.rank_share(global_batch)


def build_train_sampler(data_cfg, dataset, consumed_samples: int, mbs: int, gbs: int, dp_rank: int, dp_size: int,
                        seed: int):
    """The training batch sampler: length-grouped when ``data.length_grouped`` is true, else Megatron's own
    ``MegatronPretrainingRandomBatchSampler`` exactly as NeMo-Aligner's ``build_dataloader`` makes it.

    Use it as ``DataLoader(dataset, batch_sampler=..., collate_fn=..., num_workers=...)``. ``dataset`` must have
    ``lengths()`` when grouping (RewardDataset and PairDataset do).
    """
    common = dict(total_samples=len(dataset), consumed_samples=int(consumed_samples), micro_batch_size=int(mbs),
                  global_batch_size=int(gbs), data_parallel_rank=int(dp_rank), data_parallel_size=int(dp_size),
                  drop_last=True, pad_samples_to_global_batch_size=False, seed=int(seed))
    if not data_cfg.get("length_grouped", False):
        return MegatronPretrainingRandomBatchSampler(**common)
    return LengthGroupedBatchSampler(**common, lengths=dataset.lengths(),
                                     group_size=int(data_cfg.get("length_group_size", DEFAULT_GROUP_SIZE)))
