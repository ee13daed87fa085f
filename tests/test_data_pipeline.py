"""Template, demo set, tokenization and dynamic padding (plain Python, no Megatron)."""

import math
import re

import numpy as np
import pytest
import torch

from nemo_hs2.core.attributes import HELPSTEER2_ATTRIBUTES
from nemo_hs2.data.dataset import Collator, RewardDataset, tokenize_examples
from nemo_hs2.data.demo import demo_examples
from nemo_hs2.data.rows import Example
from nemo_hs2.core.conversation import Conversation, ConversationError
from nemo_hs2.core.render import Renderer


class Bytes:
    """The byte-level tokenizer's contract (one id per UTF-8 byte)."""

    eos_id = 257

    def text_to_ids(self, text):
        return list(text.encode("utf-8"))


def steerlm(system="S"):
    return Renderer("steerlm", Bytes(), system)


def test_steerlm_template_single_turn():
    assert steerlm().text(Conversation.from_helpsteer2("Hi?", "Hello.")) == (
        "<extra_id_0>System\nS\n<extra_id_1>User\nHi?\n<extra_id_1>Assistant\nHello.\n<extra_id_2>")


def test_helpsteer2_multi_turn_prompt_keeps_roles():
    prompt = "Q1\n<extra_id_1>Assistant\nA1\n<extra_id_1>User\nQ2"
    conv = Conversation.from_helpsteer2(prompt, "A2")
    assert [(t.role, t.content) for t in conv.turns] == [("user", "Q1"), ("assistant", "A1"), ("user", "Q2"),
                                                          ("assistant", "A2")]
    assert steerlm().text(conv) == ("<extra_id_0>System\nS\n<extra_id_1>User\nQ1\n<extra_id_1>Assistant\nA1\n"
                                    "<extra_id_1>User\nQ2\n<extra_id_1>Assistant\nA2\n<extra_id_2>")
    with pytest.raises(ConversationError, match="where 'user' was expected"):
        Conversation.from_helpsteer2("Q1\n<extra_id_1>Assistant\nA1", "A2")


def test_demo_set_is_deterministic_paired_and_follows_its_rules():
    a, b = demo_examples(40, seed=7, split="train"), demo_examples(40, seed=7, split="train")
    assert a == b and a != demo_examples(40, seed=8, split="train")
    assert [e.pair_id for e in a] == [i // 2 for i in range(80)]
    for e in a:
        sentences = len(re.findall(r"\.(?: |$)", e.response))
        assert e.labels["verbosity"] == min(4, sentences - 2)
        assert set(e.labels) <= set(HELPSTEER2_ATTRIBUTES)
    assert any("complexity" not in e.labels for e in a)  # some labels missing, to be masked


def test_truncation_keeps_the_response_end():
    rows = [Example.rated("p" * 50, "the end", {"helpfulness": 3.0}, pair_id=-1)]
    ds, stats = tokenize_examples(rows, steerlm(), ["helpfulness"], max_length=30)
    assert stats.truncated == 1 and len(ds.tokens[0]) == 30
    assert bytes(ds.tokens[0].tolist()).endswith(b"the end\n<extra_id_2>")
    ds, stats = tokenize_examples(rows, steerlm(), ["helpfulness"], max_length=30, overlength="drop")
    assert len(ds) == 0 and stats.skipped["overlength"] == 1


def test_collate_pads_to_the_longest_row_and_masks_missing_labels():
    ds = RewardDataset([np.arange(5, dtype=np.int32), np.arange(11, dtype=np.int32)],
                       np.array([[1.0, math.nan], [2.0, 3.0]], dtype=np.float32), np.array([0, 0]), ["a", "b"])
    batch = Collator(pad_id=99, pad_to_multiple=8)([ds[0], ds[1]])
    assert batch["inputs"].shape == (2, 16)  # longest 11, rounded to 8 -- not a fixed seq_length
    assert batch["lengths"].tolist() == [5, 11]
    assert (batch["inputs"][0, 5:] == 99).all() and batch["inputs"][1, :11].tolist() == list(range(11))
    assert batch["label_mask"].tolist() == [[True, False], [True, True]]
    assert batch["labels"].tolist() == [[1.0, 0.0], [2.0, 3.0]]


def test_sampler_padding_index_is_an_unlabelled_row():
    ds = RewardDataset([np.arange(5, dtype=np.int32)], np.array([[1.0]], dtype=np.float32), np.array([3]), ["a"])
    pad = ds[-1]
    assert np.isnan(pad["labels"]).all() and pad["pair_id"] == -1
    batch = Collator(0)([ds[0], pad])
    assert batch["label_mask"].tolist() == [[True], [False]]


def test_a_chat_and_a_helpsteer2_row_render_the_same():
    prompt = "Q1\n<extra_id_1>Assistant\nA1\n<extra_id_1>User\nQ2"
    conversation = [{"role": "user", "content": "Q1"}, {"role": "assistant", "content": "A1"},
                    {"role": "user", "content": "Q2"}, {"role": "assistant", "content": "A2"}]
    assert Conversation.from_messages(conversation) == Conversation.from_helpsteer2(prompt, "A2")
    with_system = Conversation.from_messages([{"role": "system", "content": "S"}, *conversation])
    assert steerlm("other").text(with_system) == steerlm("S").text(Conversation.from_helpsteer2(prompt, "A2"))


def test_preference_pairs_stay_together():
    from nemo_hs2.data.preference import PairCollator, PairDataset, demo_pairs

    rows, strengths = demo_pairs(3, seed=1, split="train")
    ds, _ = tokenize_examples(rows, steerlm(), list(HELPSTEER2_ATTRIBUTES), max_length=512)
    pairs = PairDataset(ds, np.asarray(strengths))
    batch = PairCollator(0)([pairs[2], pairs[0], pairs[-1]])
    assert batch["inputs"].shape[0] == 6  # two rows per pair, consecutive
    assert batch["pair_ids"].tolist() == [2, 2, 0, 0, -1, -1]
    assert batch["preference"][:4].tolist() == [strengths[2]] * 2 + [strengths[0]] * 2
    assert torch.isnan(batch["preference"][4:]).all() and not batch["label_mask"][4:].any()
    for a, b in zip(rows[0::2], rows[1::2]):  # strength follows the documented rule
        s = max(-3.0, min(3.0, b.labels["helpfulness"] - a.labels["helpfulness"]))
        assert strengths[a.pair_id] == s


def test_overlength_rows_are_truncated_or_dropped_never_replaced():
    rows = [Example.rated("a", "short", {"helpfulness": 1.0}, pair_id=0),
            Example.rated("b" * 80, "long one", {"helpfulness": 2.0}, pair_id=0),
            Example.rated("c", "fits", {"helpfulness": 3.0}, pair_id=1)]
    kept, stats = tokenize_examples(rows, steerlm(), ["helpfulness"], max_length=100, overlength="drop")
    assert (stats.rows, stats.used, dict(stats.skipped)) == (3, 2, {"overlength": 1})
    assert kept.labels[:, 0].tolist() == [1.0, 3.0] and kept.pair_ids.tolist() == [-1, 1]  # "a" lost its partner
    assert stats.unpaired == 1
    cut, stats = tokenize_examples(rows, steerlm(), ["helpfulness"], max_length=100)
    assert stats.truncated == 1 and cut.labels[:, 0].tolist() == [1.0, 2.0, 3.0]
    assert cut.lengths().tolist() == [80, 100, 79] and cut.full_lengths.tolist()[1] == 74 + 80 + 8


def test_flat_rows_match_the_rows_they_were_built_from():
    tokens = [np.arange(3, dtype=np.int32), np.arange(0, dtype=np.int32) + 7, np.arange(5, dtype=np.int32) * 2]
    tokens[1] = np.array([9], dtype=np.int32)
    ds = RewardDataset(tokens, np.zeros((3, 1), np.float32), np.array([0, 0, -1]), ["a"])
    assert ds.offsets.tolist() == [0, 3, 4, 9] and ds.lengths().tolist() == [3, 1, 5]
    assert [ds[i]["tokens"].tolist() for i in range(3)] == [t.tolist() for t in tokens]
    assert list(map(len, ds.tokens)) == [3, 1, 5] and ds.tokens[-1].tolist() == tokens[2].tolist()
    with pytest.raises(IndexError):
        ds.tokens[3]


def test_benchmark_skips_without_data(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).resolve().parents[1] / "benchmarks" / "data_pipeline.py"
    spec = importlib.util.spec_from_file_location("data_pipeline_benchmark", path)
    bench = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(bench)
    assert bench.main(["--data", str(tmp_path / "absent.jsonl")]) == 0
    assert "skipped: no data at" in capsys.readouterr().out


def test_dropping_an_overlength_row_unpairs_its_partner():
    """overlength=drop on HelpSteer2 pairs: the partner stays (its labels still train) but leaves pairwise metrics."""
    from nemo_hs2.core.metrics import pairwise_metrics

    spec = [("p0", "x" * 200, 1.0), ("p0", "y", 2.0), ("p1", "z", 4.0), ("p1", "w", 0.0), ("p2", "v", 1.0),
            ("p2", "u" * 200, 3.0)]
    rows = [Example.rated(p, r, {"helpfulness": h}, pair_id=i // 2) for i, (p, r, h) in enumerate(spec)]
    ds, stats = tokenize_examples(rows, steerlm(), ["helpfulness"], max_length=100, overlength="drop")
    assert (stats.used, stats.skipped["overlength"], stats.unpaired) == (4, 2, 2)
    assert ds.pair_ids.tolist() == [-1, 1, 1, -1] and ds.labels[:, 0].tolist() == [2.0, 4.0, 0.0, 1.0]
    # Before: "every pair id must have exactly 2 rows". Now only pair 1 is compared.
    metrics = pairwise_metrics(ds.labels, ds.labels, ds.pair_ids, ["helpfulness"], {"helpfulness": 1.0})
    assert metrics["pairs/helpfulness"] == 1 and metrics["pairwise_acc/helpfulness"] == 1.0
