"""The tokenized-split cache (nemo_hs2/data/cache.py): warm starts, key misses, atomic writes, memmapped rows."""

import json
import pickle
from pathlib import Path

import numpy as np
import pytest

from nemo_hs2.data import cache
from nemo_hs2.data.build import build_datasets
from nemo_hs2.data.dataset import RewardDataset
from tests.conftest import data_config

ROOT = Path(__file__).resolve().parents[1]


class CountingBytes:
    """Byte-level ids; counts the texts it tokenizes, the cache's probe text aside."""

    eos_id = 258
    vocab_size = 259

    def __init__(self, shift=0):
        self.calls = 0
        self.shift = shift

    def text_to_ids(self, text):
        if text != cache.PROBE_TEXT:
            self.calls += 1
        return [(b + self.shift) % 256 for b in text.encode("utf-8")]


class BiggerVocab(CountingBytes):
    vocab_size = 300


def row(prompt, response, h=3, c=4):
    return {"prompt": prompt, "response": response, "helpfulness": h, "correctness": c, "coherence": 4,
            "complexity": 2, "verbosity": 1}


ROWS = [row("What is 2+2?", "4."), row("What is 2+2?", "Four, since 2+2=4.", h=4),
        row("Q1\n<extra_id_1>Assistant\nA1\n<extra_id_1>User\nQ2", "A2 " * 40, h=1, c=2),
        row("Q1\n<extra_id_1>Assistant\nA1\n<extra_id_1>User\nQ2", "A2", h=2)]


def write(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture
def cfg(tmp_path):
    data = data_config("helpsteer2")
    data.seq_length = 200
    data.train_file = str(write(tmp_path / "train.jsonl", ROWS))
    data.validation_file = str(write(tmp_path / "validation.jsonl", ROWS[:2]))
    data.cache_dir = str(tmp_path / "cache")
    data.system_prompt = "S"
    return data


def build(cfg, tok, seq_length=200):
    return build_datasets(cfg, tok, seq_length, progress=False)


def entries(cfg):
    return sorted(p.name for p in Path(cfg.cache_dir).iterdir() if not p.name.startswith("."))


def is_mapped(array):
    """Whether ``array`` is a view of a memory-mapped file (not a copy in process memory)."""
    import mmap

    while array is not None:
        if isinstance(array, mmap.mmap):
            return True
        array = getattr(array, "base", None)
    return False


def test_warm_start_reads_the_cache_without_tokenizing(cfg):
    cold_tok = CountingBytes()
    cold, cold_stats = build(cfg, cold_tok)
    assert cold_tok.calls > 0 and not cold_stats["train"].cache_hit
    warm_tok = CountingBytes()
    warm, warm_stats = build(cfg, warm_tok)
    assert warm_tok.calls == 0
    for split in ("train", "validation"):
        assert warm_stats[split].cache_hit and warm_stats[split].cache_path == cold_stats[split].cache_path
        assert warm_stats[split].to_dict() == cold_stats[split].to_dict()
        a, b = cold[split], warm[split]
        assert len(a) == len(b) and a.attributes == b.attributes
        assert all(np.array_equal(a.tokens[i], b.tokens[i]) for i in range(len(a)))
        np.testing.assert_array_equal(a.labels, b.labels)
        np.testing.assert_array_equal(a.pair_ids, b.pair_ids)
        assert is_mapped(a.flat_tokens) and is_mapped(b.flat_tokens)  # served from the file, cold or warm
    assert entries(cfg) == sorted(Path(cold_stats[s].cache_path).name for s in ("train", "validation"))
    assert (Path(cfg.cache_dir) / ".gitignore").read_text() == "*\n"


CHANGES = {
    "file contents": lambda cfg, tmp: write(Path(cfg.train_file), [*ROWS[:3], row(ROWS[3]["prompt"], "A2", h=3)]),
    "system prompt": lambda cfg, tmp: cfg.update({"system_prompt": "Be terse."}),
    "attributes": lambda cfg, tmp: cfg.update({"attributes": ["helpfulness", "correctness"]}),
    "attribute order": lambda cfg, tmp: cfg.update({"attributes": ["correctness", "helpfulness", "coherence",
                                                                   "complexity", "verbosity"]}),
    "score range": lambda cfg, tmp: cfg.update({"score_range": [0, 5]}),
    "overlength": lambda cfg, tmp: cfg.update({"overlength": "drop"}),
    "on_bad_row": lambda cfg, tmp: cfg.update({"on_bad_row": "skip"}),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_change_of_any_key_component_misses(cfg, tmp_path, change):
    build(cfg, CountingBytes())
    before = entries(cfg)
    CHANGES[change](cfg, tmp_path)
    tok = CountingBytes()
    _, stats = build(cfg, tok)
    assert tok.calls > 0 and not stats["train"].cache_hit
    assert Path(stats["train"].cache_path).name not in before


@pytest.mark.parametrize("tokenizer, seq_length", [(CountingBytes(shift=1), 200), (BiggerVocab(), 200),
                                                   (CountingBytes(), 150)],
                         ids=["token ids", "vocab size", "seq_length"])
def test_tokenizer_and_seq_length_are_part_of_the_key(cfg, tokenizer, seq_length):
    build(cfg, CountingBytes())
    _, stats = build(cfg, tokenizer, seq_length)
    assert tokenizer.calls > 0 and not stats["train"].cache_hit
    assert len(entries(cfg)) == 4


def test_demo_source_is_keyed_by_its_parameters(tmp_path):
    data = data_config("demo")
    data.seq_length = 256
    data.demo.train_prompts, data.demo.validation_prompts = 8, 4
    data.cache_dir = str(tmp_path / "cache")
    build(data, CountingBytes(), 256)
    tok = CountingBytes()
    build(data, tok, 256)
    assert tok.calls == 0
    data.demo.seed += 1
    build(data, tok, 256)
    assert tok.calls > 0


def test_leftovers_of_an_interrupted_write_are_not_a_cache(cfg, tmp_path):
    _, stats = build(cfg, CountingBytes())
    name = Path(stats["train"].cache_path).name
    other = tmp_path / "other_cache"
    other.mkdir()
    # A writer killed before its rename leaves a temp dir; one killed while moving a stale entry aside, or an
    # entry damaged later, can leave the final name without meta.json.
    for leftover in (other / f".tmp-{name}-999-deadbeef", other / name):
        leftover.mkdir()
        for array in cache.ARRAYS:
            np.save(leftover / f"{array}.npy", np.zeros(3, np.int32))
    cfg.cache_dir = str(other)
    tok = CountingBytes()
    ds, stats = build(cfg, tok)
    assert tok.calls > 0 and not stats["train"].cache_hit
    assert (other / name / "meta.json").is_file() and len(ds["train"]) == 4
    tok = CountingBytes()
    build(cfg, tok)
    assert tok.calls == 0


def test_a_failed_write_leaves_nothing_behind(cfg, monkeypatch):
    real_save = np.save
    written = []

    def failing_save(f, arr, *a, **k):
        written.append(arr)
        if len(written) == 3:
            raise OSError("disk full")
        return real_save(f, arr, *a, **k)

    monkeypatch.setattr(cache.np, "save", failing_save)
    with pytest.raises(OSError, match="disk full"):
        build(cfg, CountingBytes())
    assert list(Path(cfg.cache_dir).iterdir()) == [Path(cfg.cache_dir) / ".gitignore"]
    monkeypatch.setattr(cache.np, "save", real_save)
    tok = CountingBytes()
    build(cfg, tok)
    assert tok.calls > 0


def test_memmapped_dataset_keeps_the_row_contract(cfg):
    build(cfg, CountingBytes())
    (ds, _), = [cache.load(p, json.loads((p / "meta.json").read_text())["key"])
                for p in Path(cfg.cache_dir).iterdir() if p.name.startswith("train-")]
    plain = RewardDataset([np.asarray(ds.tokens[i]) for i in range(len(ds))], np.asarray(ds.labels),
                          np.asarray(ds.pair_ids), ds.attributes)
    np.testing.assert_array_equal(ds.lengths(), plain.lengths())
    for i in (0, 2, 3, -1):
        a, b = ds[i], plain[i]
        np.testing.assert_array_equal(a["tokens"], b["tokens"])
        np.testing.assert_array_equal(a["labels"], b["labels"])
        assert a["pair_id"] == b["pair_id"]
    assert np.isnan(ds[-1]["labels"]).all() and ds[-1]["pair_id"] == -1 and len(ds[-1]["tokens"]) == 1
    # A spawned DataLoader worker gets the cache path, not a copy of every token.
    blob = pickle.dumps(ds)
    assert len(blob) < ds.flat_tokens.nbytes
    again = pickle.loads(blob)
    np.testing.assert_array_equal(again[2]["tokens"], ds[2]["tokens"])


def test_rows_read_count_bad_rows(cfg, tmp_path):
    Path(cfg.train_file).write_text(Path(cfg.train_file).read_text() + '{"prompt": "broken\n')
    cfg.on_bad_row = "skip"
    _, stats = build(cfg, CountingBytes())
    st = stats["train"]
    assert (st.rows, st.used, dict(st.skipped)) == (5, 4, {"malformed_json": 1})
    assert st.rows == st.used + sum(st.skipped.values())


def test_two_writers_of_one_key_keep_one_entry(cfg):
    """Every rank of a job may tokenize and publish at once; the first rename wins and the rest discard theirs."""
    _, stats = build(cfg, CountingBytes())
    path = Path(stats["train"].cache_path)
    meta = json.loads((path / "meta.json").read_text())
    ds, st = cache.load(path, meta["key"])
    before = (path / "meta.json").stat().st_mtime_ns
    assert cache.save(path, meta["key"], meta["components"], ds, st) == path
    assert (path / "meta.json").stat().st_mtime_ns == before
    assert not [p for p in Path(cfg.cache_dir).iterdir() if p.name.startswith(".tmp-")]
