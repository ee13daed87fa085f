"""Training batch samplers (nemo_hs2/megatron/sampler.py): Megatron's conventions, resume, length grouping."""

import os

import numpy as np
import pytest
import torch
from omegaconf import OmegaConf

from nemo_hs2.data.dataset import Collator, RewardDataset, pad_length
from nemo_hs2.megatron.sampler import LengthGroupedBatchSampler, MegatronPretrainingRandomBatchSampler, build_train_sampler
from tests.conftest import data_config

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOTAL, MBS, GBS, DP = 203, 2, 8, 2  # 25 steps an epoch; 3 rows left out of each epoch
STEPS = TOTAL // GBS
LENGTHS = np.random.default_rng(0).integers(5, 2000, size=TOTAL)


def dataset(lengths=LENGTHS):
    tokens = [np.full(n, i % 250, dtype=np.int32) for i, n in enumerate(lengths)]
    labels = np.zeros((len(lengths), 1), np.float32)
    return RewardDataset(tokens, labels, np.arange(len(lengths)), ["helpfulness"])


DS = dataset()


def sampler(kind, rank, consumed=0, seed=1234, dp=DP):
    cfg = OmegaConf.create({"length_grouped": kind == "grouped", "length_group_size": 4})
    return build_train_sampler(cfg, DS, consumed, MBS, GBS, rank, dp, seed)


def run(s, steps):
    """Batches of ``steps`` training steps, re-entering the sampler at each epoch end as the trainer does."""
    out = []
    while len(out) < steps:
        for batch in s:
            out.append(batch)
            if len(out) == steps:
                break
    return out


@pytest.mark.parametrize("kind", ["stock", "grouped"])
def test_builder_returns_the_configured_class(kind):
    s = sampler(kind, 0)
    assert isinstance(s, MegatronPretrainingRandomBatchSampler)
    assert isinstance(s, LengthGroupedBatchSampler) == (kind == "grouped")
    assert (s.total_samples, s.global_batch_size, s.micro_batch_size, s.drop_last) == (TOTAL, GBS, MBS, True)
    assert len(s) == STEPS


@pytest.mark.parametrize("kind", ["stock", "grouped"])
def test_ranks_partition_each_global_batch_without_repeats_in_an_epoch(kind):
    per_rank = [run(sampler(kind, r), 2 * STEPS) for r in range(DP)]
    for epoch in range(2):
        seen = []
        for step in range(epoch * STEPS, (epoch + 1) * STEPS):
            shares = [per_rank[r][step] for r in range(DP)]
            assert all(len(s) == GBS // DP for s in shares)
            union = [i for s in shares for i in s]
            assert len(set(union)) == GBS and all(0 <= i < TOTAL for i in union)
            seen += union
        assert len(seen) == len(set(seen)) == STEPS * GBS
    assert per_rank[0][:STEPS] != per_rank[0][STEPS:]  # a new order each epoch


@pytest.mark.parametrize("kind", ["stock", "grouped"])
@pytest.mark.parametrize("k", [1, 7, STEPS - 1, STEPS, STEPS + 3])
def test_resume_yields_the_uninterrupted_batches(kind, k):
    for rank in range(DP):
        straight = run(sampler(kind, rank), 2 * STEPS)
        resumed = sampler(kind, rank, consumed=k * GBS)
        assert run(resumed, 2 * STEPS - k) == straight[k:]
        assert resumed.consumed_samples == 2 * STEPS * GBS


@pytest.mark.parametrize("kind", ["stock", "grouped"])
def test_deterministic_given_seed(kind):
    assert run(sampler(kind, 0), 5) == run(sampler(kind, 0), 5)
    assert run(sampler(kind, 0), 5) != run(sampler(kind, 0, seed=99), 5)


def padded_fraction(batches):
    """Mean over micro-batches of real / padded tokens, each micro-batch cut to its longest row."""
    fractions = []
    for b in batches:
        for mb in np.asarray(b).reshape(-1, MBS):
            lengths = LENGTHS[mb]
            fractions.append(lengths.sum() / (len(mb) * pad_length(lengths.max(), 8)))
    return float(np.mean(fractions))


def test_grouping_puts_similar_lengths_together():
    stock = run(sampler("stock", 0), STEPS) + run(sampler("stock", 1), STEPS)
    grouped = run(sampler("grouped", 0), STEPS) + run(sampler("grouped", 1), STEPS)
    assert padded_fraction(grouped) > 0.9 > padded_fraction(stock)
    # The ranks of a step get similar work (padded tokens), so neither waits long for the other.
    assert imbalance("grouped") < imbalance("stock") / 2


def imbalance(kind):
    """Mean over steps of |work(rank 0) - work(rank 1)| / max(work), work = padded tokens of its micro-batches."""
    def work(batch):
        return sum(len(mb) * pad_length(LENGTHS[mb].max(), 8) for mb in np.asarray(batch).reshape(-1, MBS))

    gaps = [abs(work(a) - work(b)) / max(work(a), work(b))
            for a, b in zip(run(sampler(kind, 0), STEPS), run(sampler(kind, 1), STEPS))]
    return float(np.mean(gaps))


def test_grouped_sampler_feeds_a_dataloader_with_the_collate():
    s = sampler("grouped", 1)
    loader = torch.utils.data.DataLoader(DS, batch_sampler=s, collate_fn=Collator(0, 8), num_workers=0)
    batch = next(iter(loader))
    assert batch["inputs"].shape[0] == GBS // DP and batch["inputs"].shape[1] % 8 == 0
    assert s.consumed_samples == GBS


def test_rejects_what_it_cannot_do():
    with pytest.raises(ValueError, match="drop_last"):
        LengthGroupedBatchSampler(TOTAL, 0, 1, 1, 0, 1, drop_last=False, lengths=LENGTHS)
    with pytest.raises(ValueError, match="one entry per sample"):
        LengthGroupedBatchSampler(TOTAL, 0, MBS, GBS, 0, DP, drop_last=True, lengths=LENGTHS[:-1])
    with pytest.raises(ValueError, match="whole number of global batches"):
        list(sampler("grouped", 0, consumed=GBS // 2))


def test_grouped_order_is_random_within_and_across_epochs():
    """Grouping sorts rows only inside a mega-chunk: the steps of an epoch show no length trend, and each epoch
    brings new batches (not the same groups reshuffled), so training does not see a curriculum or a fixed cycle."""
    # One mega-chunk per epoch: without the batch shuffle its batches would run longest-first.
    steps = run(LengthGroupedBatchSampler(TOTAL, 0, MBS, GBS, 0, 1, drop_last=True, seed=1234, lengths=LENGTHS,
                                          group_size=STEPS), 2 * STEPS)
    means = np.array([LENGTHS[b].mean() for b in steps[:STEPS]])
    rho = np.corrcoef(np.argsort(np.argsort(means)), np.arange(STEPS))[0, 1]  # Spearman: step index vs length
    print(f"Spearman(step, batch length) = {rho:.3f}")
    assert abs(rho) < 0.4
    first, second = ({frozenset(b) for b in steps[:STEPS]}, {frozenset(b) for b in steps[STEPS:]})
    assert len(first & second) <= STEPS // 10
    assert LENGTHS[steps[0]].mean() != LENGTHS[steps[STEPS]].mean()


def test_training_configs_keep_megatrons_random_batches_by_default():
    # Length grouping trained the demo model worse (README, "Performance"): it is opt-in.
    for name in ("demo", "helpsteer2"):
        assert data_config(name).length_grouped is False
