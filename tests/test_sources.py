import collections
import dataclasses
import gzip
import itertools
import json
import time
from pathlib import Path

import pytest

from nemo_hs2.core.attributes import HELPSTEER2_ATTRIBUTES
from nemo_hs2.data.rows import Example
from nemo_hs2.data.sources import (
    BadRowError,
    HubUnavailableError,
    PreferencePair,
    assign_pairs,
    read_examples,
    read_hub,
    read_preference,
)
from nemo_hs2.core.render import Renderer

SAMPLE = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "helpsteer_sample_300.jsonl"

ATTRS = HELPSTEER2_ATTRIBUTES


def rated(prompt, response, **labels):
    return {"prompt": prompt, "response": response, **labels}


def full(prompt, response, h=3, c=4, o=4, x=2, v=1):
    return rated(prompt, response, helpfulness=h, correctness=c, coherence=o, complexity=x, verbosity=v)


def write_jsonl(path, lines):
    """Each entry is a dict (dumped as JSON) or raw bytes (written as they are, for broken lines)."""
    data = b"".join((line if isinstance(line, bytes) else json.dumps(line).encode()) + b"\n" for line in lines)
    if str(path).endswith(".gz"):
        with gzip.open(path, "wb") as f:
            f.write(data)
    else:
        Path(path).write_bytes(data)
    return path


def write_parquet(path, rows):
    import pyarrow as pa
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(rows), path)
    return path


# ---------------------------------------------------------------------------------------------------------------
# Formats


FORMAT_ROWS = [
    full("What is 2+2?", "4."),
    full("What is 2+2?", "Four, because 2+2=4.", h=4, v=2),
    # correctness not rated: absent from the jsonl row, null in the parquet column
    rated("Name a prime.", "7", helpfulness=4, coherence=4, complexity=0, verbosity=0),
    full("Capital of France?", "Paris", h=4, c=4, o=4, x=1, v=0),
]


def test_jsonl_gz_and_parquet_give_identical_examples(tmp_path):
    paths = [
        write_jsonl(tmp_path / "rows.jsonl", FORMAT_ROWS),
        write_jsonl(tmp_path / "rows.jsonl.gz", FORMAT_ROWS),
        write_parquet(tmp_path / "rows.parquet", FORMAT_ROWS),
    ]
    results = [read_examples(p, ATTRS) for p in paths]
    for path, (examples, skipped) in zip(paths, results):
        assert skipped == collections.Counter()
        assert [e.source for e in examples] == [str(path)] * 4
    stripped = [[dataclasses.replace(e, source="") for e in examples] for examples, _ in results]
    assert stripped[0] == stripped[1] == stripped[2]
    assert stripped[0] == [
        Example.rated("What is 2+2?", "4.", dict(helpfulness=3.0, correctness=4.0, coherence=4.0, complexity=2.0,
                                           verbosity=1.0), "", 1, 0),
        Example.rated("What is 2+2?", "Four, because 2+2=4.", dict(helpfulness=4.0, correctness=4.0, coherence=4.0,
                                                             complexity=2.0, verbosity=2.0), "", 2, 0),
        Example.rated("Name a prime.", "7", dict(helpfulness=4.0, coherence=4.0, complexity=0.0, verbosity=0.0), "", 3, -1),
        Example.rated("Capital of France?", "Paris", dict(helpfulness=4.0, correctness=4.0, coherence=4.0,
                                                    complexity=1.0, verbosity=0.0), "", 4, -1),
    ]


def test_unsupported_suffix_names_file_and_suffixes(tmp_path):
    path = tmp_path / "rows.csv"
    path.write_text("prompt,response\n")
    with pytest.raises(ValueError) as err:
        read_examples(path, ATTRS)
    message = str(err.value)
    assert str(path) in message
    assert all(s in message for s in (".jsonl", ".jsonl.gz", ".parquet"))


def test_unknown_bad_row_policy_is_rejected(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [full("p", "r")])
    with pytest.raises(ValueError, match="on_bad_row"):
        read_examples(path, ATTRS, on_bad_row="warn")


def test_custom_field_names_and_attribute_subset(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [{"question": "q", "answer": "a", "helpfulness": 2, "x": "junk"}])
    (example,), _ = read_examples(path, ["helpfulness"], prompt_field="question", response_field="answer")
    assert (example.prompt, example.response, example.labels) == ("q", "a", {"helpfulness": 2.0})


def test_score_range_is_configurable(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [rated("p", "r", helpfulness=9.5)])
    (example,), _ = read_examples(path, ["helpfulness"], score_range=(0, 10))
    assert example.labels == {"helpfulness": 9.5}
    with pytest.raises(BadRowError):
        read_examples(path, ["helpfulness"])


# ---------------------------------------------------------------------------------------------------------------
# Bad rows: each case sits on line 2, between two good rows


GOOD_1 = full("First prompt", "First response")
GOOD_3 = full("Third prompt", "Third response", h=1, c=2, o=3, x=0, v=4)
GOOD_EXAMPLES = [
    Example.rated("First prompt", "First response",
            dict(helpfulness=3.0, correctness=4.0, coherence=4.0, complexity=2.0, verbosity=1.0), "", 1, -1),
    Example.rated("Third prompt", "Third response",
            dict(helpfulness=1.0, correctness=2.0, coherence=3.0, complexity=0.0, verbosity=4.0), "", 3, -1),
]

BAD_CASES = {
    "malformed_json": (b'{"prompt": "p", "response": ', "-", "malformed_json"),
    "not_an_object": (b"[1, 2, 3]", "-", "not_an_object"),
    "json_string": (b'"just a string"', "-", "not_an_object"),
    "invalid_utf8": (b'{"prompt": "caf\xe9", "response": "r", "helpfulness": 1}', "-", "invalid_utf8"),
    "missing_prompt": ({"response": "r", "helpfulness": 1}, "prompt", "missing_field"),
    "missing_response": ({"prompt": "p", "helpfulness": 1}, "response", "missing_field"),
    "prompt_not_string": (rated(5, "r", helpfulness=1), "prompt", "wrong_type"),
    "prompt_null": (rated(None, "r", helpfulness=1), "prompt", "wrong_type"),
    "response_not_string": (rated("p", ["r"], helpfulness=1), "response", "wrong_type"),
    "label_string": (rated("p", "r", helpfulness=1, correctness="3"), "correctness", "wrong_type"),
    "label_bool": (rated("p", "r", helpfulness=True), "helpfulness", "wrong_type"),
    "label_above_range": (rated("p", "r", helpfulness=1, verbosity=5), "verbosity", "label_out_of_range"),
    "label_below_range": (rated("p", "r", complexity=-0.5), "complexity", "label_out_of_range"),
    "label_huge_int": (b'{"prompt": "p", "response": "r", "helpfulness": 1' + b"0" * 400 + b"}",
                       "helpfulness", "label_out_of_range"),
    "label_nan": (b'{"prompt": "p", "response": "r", "helpfulness": NaN}', "helpfulness", "label_not_finite"),
    "label_inf": (b'{"prompt": "p", "response": "r", "coherence": -Infinity}', "coherence", "label_not_finite"),
    "empty_prompt": (rated("", "r", helpfulness=1), "prompt", "empty_text"),
    "whitespace_response": (rated("p", " \n\t ", helpfulness=1), "response", "empty_text"),
    "no_labels": (rated("p", "r"), "-", "no_labels"),
    "all_labels_null": (rated("p", "r", helpfulness=None, correctness=None, coherence=None, complexity=None,
                              verbosity=None), "-", "no_labels"),
}


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_row_raises_with_location(tmp_path, case):
    bad, field, reason = BAD_CASES[case]
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD_1, bad, GOOD_3])
    with pytest.raises(BadRowError) as err:
        read_examples(path, ATTRS, on_bad_row="error")
    assert str(err.value).startswith(f"{path}:2: {field}: ")
    assert len(str(err.value)) > len(f"{path}:2: {field}: ")
    assert (err.value.reason, err.value.line, err.value.field) == (reason, 2, field)
    assert isinstance(err.value, ValueError)


@pytest.mark.parametrize("case", sorted(BAD_CASES))
def test_bad_row_is_skipped_and_counted(tmp_path, case):
    bad, _, reason = BAD_CASES[case]
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD_1, bad, GOOD_3])
    examples, skipped = read_examples(path, ATTRS, on_bad_row="skip")
    assert skipped == collections.Counter({reason: 1})
    assert examples == [dataclasses.replace(e, source=str(path)) for e in GOOD_EXAMPLES]


def test_first_bad_row_is_the_one_reported(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [GOOD_1, b"{oops", rated("p", "r")])
    with pytest.raises(BadRowError, match=r":2: -: "):
        read_examples(path, ATTRS)
    _, skipped = read_examples(path, ATTRS, on_bad_row="skip")
    assert skipped == collections.Counter({"malformed_json": 1, "no_labels": 1})


def test_blank_lines_are_not_rows_but_count_as_lines(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [b"", GOOD_1, b"   \r", b"\t", GOOD_3, b""])
    examples, skipped = read_examples(path, ATTRS)
    assert skipped == collections.Counter()
    assert [e.line for e in examples] == [2, 5]


def test_utf8_bom_and_non_ascii_text(tmp_path):
    path = tmp_path / "rows.jsonl"
    row = json.dumps(full("Ünïcödé ✓ prompt", "réponse — 答え"), ensure_ascii=False).encode()
    path.write_bytes(b"\xef\xbb\xbf" + row + b"\n")
    (example,), _ = read_examples(path, ATTRS)
    assert (example.prompt, example.response) == ("Ünïcödé ✓ prompt", "réponse — 答え")


def test_parquet_bad_rows_use_row_numbers(tmp_path):
    rows = [full("a", "x"), full("b", "y", h=float("nan")), full("c", "z", v=7)]
    path = write_parquet(tmp_path / "rows.parquet", rows)
    with pytest.raises(BadRowError) as err:
        read_examples(path, ATTRS)
    assert str(err.value).startswith(f"{path}:2: helpfulness: ")
    examples, skipped = read_examples(path, ATTRS, on_bad_row="skip")
    assert skipped == collections.Counter({"label_not_finite": 1, "label_out_of_range": 1})
    assert [(e.prompt, e.line) for e in examples] == [("a", 1)]


def test_parquet_missing_column_is_missing_field(tmp_path):
    path = write_parquet(tmp_path / "rows.parquet", [{"prompt": "p", "helpfulness": 1}])
    with pytest.raises(BadRowError, match=r":1: response: "):
        read_examples(path, ATTRS)


def test_truncated_gzip_names_the_file(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl.gz", [GOOD_1] * 50)
    path.write_bytes(path.read_bytes()[:-30])
    with pytest.raises(ValueError, match="rows.jsonl.gz"):
        read_examples(path, ATTRS)


# ---------------------------------------------------------------------------------------------------------------
# Labels and text


def test_missing_attribute_is_masked_not_zero(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [
        rated("p", "r", helpfulness=0, correctness=None, coherence=3),  # verbosity, complexity absent
    ])
    (example,), _ = read_examples(path, ATTRS)
    assert example.labels == {"helpfulness": 0.0, "coherence": 3.0}
    assert "correctness" not in example.labels and "verbosity" not in example.labels
    assert all(isinstance(v, float) for v in example.labels.values())


MULTI_TURN_PROMPT = ("Suggest a name for my cat.\n<extra_id_1>Assistant\nHow about Miso?\n"
                     "<extra_id_1>User\nShe is grey, pick another.\n<extra_id_1>Assistant\nThen Smokey.\n"
                     "<extra_id_1>User\nOne more, please.")


def test_multi_turn_prompt_loads_unchanged_and_formats_into_roles(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [full(MULTI_TURN_PROMPT, "Ash."),
                                                 full(MULTI_TURN_PROMPT, "Pebble, for her colour.", h=4)])
    examples, _ = read_examples(path, ATTRS)
    assert [e.prompt for e in examples] == [MULTI_TURN_PROMPT] * 2
    assert [e.pair_id for e in examples] == [0, 0]
    chars = type("Chars", (), {"text_to_ids": staticmethod(lambda s: [ord(c) for c in s])})()
    assert Renderer("steerlm", chars, "Be brief.").text(examples[0].conversation) == (
        "<extra_id_0>System\nBe brief.\n"
        "<extra_id_1>User\nSuggest a name for my cat.\n"
        "<extra_id_1>Assistant\nHow about Miso?\n"
        "<extra_id_1>User\nShe is grey, pick another.\n"
        "<extra_id_1>Assistant\nThen Smokey.\n"
        "<extra_id_1>User\nOne more, please.\n"
        "<extra_id_1>Assistant\n"
        "Ash.\n<extra_id_2>"
    )


# ---------------------------------------------------------------------------------------------------------------
# Pairs


def pair_ids(path, **kwargs):
    examples, _ = read_examples(path, ATTRS, **kwargs)
    return [(e.prompt, e.pair_id) for e in examples]


def test_helpsteer2_consecutive_pairs(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [full("A", "1"), full("A", "2"), full("B", "1"), full("B", "2")])
    assert pair_ids(path) == [("A", 0), ("A", 0), ("B", 1), ("B", 1)]


def test_four_and_three_responses_pair_greedily(tmp_path):
    rows = [full("A", str(i)) for i in range(4)] + [full("B", str(i)) for i in range(3)] + [full("C", "0")]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    assert pair_ids(path) == [("A", 0), ("A", 0), ("A", 1), ("A", 1), ("B", 2), ("B", 2), ("B", -1), ("C", -1)]


def test_different_prompts_are_never_paired(tmp_path):
    path = write_jsonl(tmp_path / "rows.jsonl", [full("A", "1"), full("B", "1"), full("A", "2"), full("A ", "3")])
    assert pair_ids(path) == [("A", -1), ("B", -1), ("A", -1), ("A ", -1)]


def test_pairing_happens_after_bad_rows_are_skipped(tmp_path):
    rows = [full("A", "1"), b"{broken", full("A", "2"), full("B", "1"), rated("B", "2"), full("C", "1"),
            full("C", "2")]
    path = write_jsonl(tmp_path / "rows.jsonl", rows)
    examples, skipped = read_examples(path, ATTRS, on_bad_row="skip")
    assert skipped == collections.Counter({"malformed_json": 1, "no_labels": 1})
    assert [(e.prompt, e.line, e.pair_id) for e in examples] == [
        ("A", 1, 0), ("A", 3, 0), ("B", 4, -1), ("C", 6, 1), ("C", 7, 1)]


def test_assign_pairs_overrides_existing_ids():
    rows = [Example.rated("A", "1", {}, pair_id=7), Example.rated("A", "2", {}, pair_id=9), Example.rated("B", "1", {}, pair_id=3)]
    assert [e.pair_id for e in assign_pairs(rows)] == [0, 0, -1]


# ---------------------------------------------------------------------------------------------------------------
# Hugging Face hub


def test_hub_offline_fails_fast_naming_local_overrides(tmp_path, monkeypatch):
    # Imported before the variable is set, as in a long-lived process: the offline flag must still be honoured.
    import datasets.config

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    before = datasets.config.HF_HUB_OFFLINE
    start = time.monotonic()
    with pytest.raises(HubUnavailableError) as err:
        read_hub("nvidia/HelpSteer2", split="train", cache_dir=tmp_path / "hf-cache")
    assert time.monotonic() - start < 20
    message = str(err.value)
    assert "could not reach the Hugging Face hub" in message
    assert "nvidia/HelpSteer2" in message
    assert "data.train_file=" in message and "data.validation_file=" in message
    assert "train.jsonl.gz" in message and "validation.jsonl.gz" in message
    assert isinstance(err.value, RuntimeError)
    assert datasets.config.HF_HUB_OFFLINE == before


def test_hub_rows_become_examples(monkeypatch):
    import datasets

    rows = [full("A", "1"), full("A", "2"), rated("B", "1", helpfulness=2)]
    calls = []

    def fake_load_dataset(name, **kwargs):
        calls.append((name, kwargs))
        return datasets.Dataset.from_list(rows)

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    examples, skipped = read_hub("nvidia/HelpSteer2", split="validation")
    assert calls[0][0] == "nvidia/HelpSteer2" and calls[0][1]["split"] == "validation"
    assert skipped == collections.Counter()
    assert [(e.source, e.line, e.pair_id) for e in examples] == [
        ("hf://nvidia/HelpSteer2/validation", 1, 0), ("hf://nvidia/HelpSteer2/validation", 2, 0),
        ("hf://nvidia/HelpSteer2/validation", 3, -1)]
    # from_list fills B's unrated attributes with null: masked, as in a file
    assert examples[2].labels == {"helpfulness": 2.0}


# ---------------------------------------------------------------------------------------------------------------
# HelpSteer2-Preference


def pref(split, prompt, strength, r1="one", r2="two"):
    return {"split": split, "prompt": prompt, "response_1": r1, "response_2": r2, "preference_strength": strength,
            "preference_statement": "@Response 1 is better.", "preference_elaboration": "Because."}


def test_preference_rows_and_split_filter(tmp_path):
    path = write_jsonl(tmp_path / "preference.jsonl.gz",
                       [pref("train", "a", -3), pref("validation", "b", 0), pref("train", "c", 2.0)])
    every = read_preference(path)
    assert every == [PreferencePair("a", "one", "two", -3, "train", str(path), 1),
                     PreferencePair("b", "one", "two", 0, "validation", str(path), 2),
                     PreferencePair("c", "one", "two", 2, "train", str(path), 3)]
    assert isinstance(every[2].strength, int)
    assert [p.line for p in read_preference(path, split="train")] == [1, 3]
    assert [p.prompt for p in read_preference(path, split="validation")] == ["b"]


PREF_BAD = {
    "above": (pref("train", "x", 4), "preference_strength", "label_out_of_range"),
    "below": (pref("train", "x", -4), "preference_strength", "label_out_of_range"),
    "fraction": (pref("train", "x", 1.5), "preference_strength", "wrong_type"),
    "string": (pref("train", "x", "2"), "preference_strength", "wrong_type"),
    "bool": (pref("train", "x", True), "preference_strength", "wrong_type"),
    "missing": ({"split": "train", "prompt": "x", "response_1": "a", "response_2": "b"}, "preference_strength",
                "missing_field"),
    "empty_response": (pref("train", "x", 1, r2=""), "response_2", "empty_text"),
    "malformed": (b"{", "-", "malformed_json"),
}


@pytest.mark.parametrize("case", sorted(PREF_BAD))
def test_preference_bad_rows(tmp_path, case):
    bad, field, reason = PREF_BAD[case]
    path = write_jsonl(tmp_path / "preference.jsonl", [pref("train", "a", 1), bad, pref("train", "c", -1)])
    with pytest.raises(BadRowError) as err:
        read_preference(path)
    assert str(err.value).startswith(f"{path}:2: {field}: ")
    assert err.value.reason == reason
    rows = read_preference(path, on_bad_row="skip")
    assert [(p.prompt, p.line) for p in rows] == [("a", 1), ("c", 3)]
    assert rows.skipped == collections.Counter({reason: 1})


# ---------------------------------------------------------------------------------------------------------------
# The shared HelpSteer (v1) sample


@pytest.fixture(scope="module")
def sample_path():
    if not SAMPLE.is_file():
        pytest.skip(f"shared sample not found at {SAMPLE} (../shared/data beside the repository)")
    return SAMPLE


def test_shared_sample_loads_exactly(sample_path):
    raw = [json.loads(line) for line in sample_path.read_bytes().splitlines() if line.strip()]
    examples, skipped = read_examples(sample_path, ATTRS, on_bad_row="error")
    assert skipped == collections.Counter()
    assert len(examples) == len(raw) == 300
    for number, (example, row) in enumerate(zip(examples, raw), start=1):
        assert example.line == number
        assert example.source == str(sample_path)
        assert (example.prompt, example.response) == (row["prompt"], row["response"])
        assert example.labels == {a: row[a] for a in ATTRS}

    # Pairs: each id names two adjacent rows with one prompt, and a run of n rows sharing a prompt gives n // 2.
    by_id = collections.defaultdict(list)
    for index, example in enumerate(examples):
        by_id[example.pair_id].append(index)
    leftovers = by_id.pop(-1, [])
    for indices in by_id.values():
        assert len(indices) == 2 and indices[1] == indices[0] + 1
        assert examples[indices[0]].prompt == examples[indices[1]].prompt
    runs = [len(list(group)) for _, group in itertools.groupby(row["prompt"] for row in raw)]
    assert len(by_id) == sum(n // 2 for n in runs)
    assert len(leftovers) == sum(n % 2 for n in runs)
    assert sorted(by_id) == list(range(len(by_id)))
    assert len({row["prompt"] for row in raw}) == 83
