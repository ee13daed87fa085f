"""Reading HelpSteer2-style rated rows (and HelpSteer2-Preference pairs) from files or the Hugging Face hub.

Every row is checked before it becomes an ``Example``: a training run that silently learns from a truncated line,
a string label or a score of 40 is much harder to diagnose than one that stops at the offending line.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import os
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from nemo_hs2.core.attributes import HELPSTEER2_ATTRIBUTES, check_attributes
from nemo_hs2.core.conversation import Conversation, ConversationError
from nemo_hs2.data.rows import Example
from nemo_hs2.data.records import (  # noqa: F401  (BadRowError, HubUnavailableError: part of this module's face)
    BAD_CONVERSATION,
    EMPTY_TEXT,
    LABEL_NOT_FINITE,
    LABEL_OUT_OF_RANGE,
    MISSING_FIELD,
    NO_LABELS,
    WHOLE_LINE,
    WRONG_TYPE,
    BadRowError,
    HubUnavailableError,
)
# The row checks below keep their short private names for the shared pieces.
from nemo_hs2.data.records import RowProblem as _Bad
from nemo_hs2.data.records import file_records as _file_records
from nemo_hs2.data.records import hub_connection_errors as _hub_connection_errors
from nemo_hs2.data.records import json_type as _json_type
from nemo_hs2.data.records import offline_mode_from_env as _offline_mode_from_env

BAD_ROW_POLICIES = ("error", "skip")
PREFERENCE_STRENGTH_RANGE = (-3, 3)


@dataclasses.dataclass(frozen=True)
class PreferencePair:
    prompt: str
    response_1: str
    response_2: str
    strength: int  # -3..3; negative means response_1 is better
    split: str | None
    source: str
    line: int


class PreferenceRows(list):
    """The pairs read by ``read_preference``; a plain list that also carries the skipped-row Counter."""

    def __init__(self, rows: Iterable[PreferencePair] = (), skipped: Counter | None = None):
        super().__init__(rows)
        self.skipped = Counter() if skipped is None else skipped


# ----------------------------------------------------------------------------------------------------------------
# Field checks


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but a ``true`` score is a data bug, not a 1.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def text_field(record: dict, field: str) -> str:
    if field not in record:
        raise _Bad(field, MISSING_FIELD, "field is missing")
    value = record[field]
    if not isinstance(value, str):
        raise _Bad(field, WRONG_TYPE, f"expected a string, got {_json_type(value)}")
    if not value.strip():
        raise _Bad(field, EMPTY_TEXT, "empty or whitespace-only text")
    return value


def _score(field: str, value: Any, low: float, high: float) -> float:
    if not _is_number(value):
        raise _Bad(field, WRONG_TYPE, f"expected a number, got {_json_type(value)}")
    # Integers skip the finiteness test: math.isfinite overflows on ints too large for a float, and the range
    # comparison below is exact for them anyway.
    if not isinstance(value, numbers.Integral) and not math.isfinite(value):
        raise _Bad(field, LABEL_NOT_FINITE, f"score {value} is not finite")
    if not low <= value <= high:
        raise _Bad(field, LABEL_OUT_OF_RANGE, f"score {value} is outside [{low}, {high}]")
    return float(value)


def _labels(record: dict, attributes: Sequence[str], low: float, high: float) -> dict[str, float]:
    labels = {}
    for name in attributes:
        value = record.get(name)
        if value is None:
            # Absent or null: not rated for this attribute. Masked downstream, never read as a zero.
            continue
        labels[name] = _score(name, value, low, high)
    if not labels:
        raise _Bad(WHOLE_LINE, NO_LABELS, f"none of the attributes {list(attributes)} is present")
    return labels


def helpsteer2_conversation(prompt: str, response: str, field: str = "prompt") -> Conversation:
    """A HelpSteer2 prompt's turns (multi-turn prompts embed earlier turns) and the rated response."""
    try:
        return Conversation.from_helpsteer2(prompt, response)
    except ConversationError as e:
        raise _Bad(field, BAD_CONVERSATION, f"{e} (HelpSteer2 multi-turn prompts alternate user and assistant turns, "
                                            "starting and ending with the user)") from None


def check_policy(on_bad_row: str) -> None:
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {on_bad_row!r}")


def _check_score_range(score_range: Sequence[float]) -> tuple[float, float]:
    low, high = (float(x) for x in score_range)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"score_range must be two finite numbers, low <= high; got {tuple(score_range)}")
    return low, high


def convert_rows(records: Iterable[tuple[int, Any]], source: str, on_bad_row: str, skipped: Counter, convert):
    """Apply ``convert`` to each record; bad ones raise at once ("error") or are counted by reason ("skip")."""
    for number, record in records:
        try:
            if isinstance(record, _Bad):
                raise record
            yield convert(record, number)
        except _Bad as bad:
            if on_bad_row == "error":
                raise BadRowError(source, number, bad.field, bad.reason, bad.detail) from None
            skipped[bad.reason] += 1


# ----------------------------------------------------------------------------------------------------------------
# Rated rows


def assign_pairs(examples: Iterable[Example]) -> list[Example]:
    """Give consecutive rows with an identical prompt a shared ``pair_id``.

    HelpSteer2 stores the two rated responses to a prompt in adjacent rows; HelpSteer v1 has up to four, which
    are paired greedily (1&2, 3&4) so that every id names exactly two rows. A row left over gets -1.
    """
    rows = list(examples)
    out = []
    next_id = 0
    i = 0
    while i < len(rows):
        if i + 1 < len(rows) and rows[i].context == rows[i + 1].context:
            out += [dataclasses.replace(rows[i], pair_id=next_id), dataclasses.replace(rows[i + 1], pair_id=next_id)]
            next_id += 1
            i += 2
        else:
            out.append(dataclasses.replace(rows[i], pair_id=-1))
            i += 1
    return out


def _examples_from_records(records, source: str, attributes, score_range, on_bad_row: str,
                           prompt_field: str, response_field: str) -> tuple[list[Example], Counter]:
    check_policy(on_bad_row)
    attributes = check_attributes(attributes)
    low, high = _check_score_range(score_range)

    def convert(record: dict, number: int) -> Example:
        prompt = text_field(record, prompt_field)
        response = text_field(record, response_field)
        return Example(helpsteer2_conversation(prompt, response, prompt_field), _labels(record, attributes, low, high),
                       source=source, line=number)

    skipped = Counter()
    # Bad rows are dropped before pairing, so a pair whose partner was skipped is not mismatched with a neighbour.
    examples = assign_pairs(convert_rows(records, source, on_bad_row, skipped, convert))
    return examples, skipped


def read_examples(path: str | os.PathLike, attributes: Sequence[str] = HELPSTEER2_ATTRIBUTES,
                  score_range: Sequence[float] = (0.0, 4.0), on_bad_row: str = "error",
                  prompt_field: str = "prompt", response_field: str = "response") -> tuple[list[Example], Counter]:
    """Rated rows of a HelpSteer2 / HelpSteer ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file.

    Returns the examples and a Counter of skipped rows by reason (empty unless ``on_bad_row="skip"``).
    ``line`` is the 1-based physical line (jsonl; blank lines count but are not rows) or row number (parquet).
    """
    records = _file_records(Path(path))
    return _examples_from_records(records, str(path), attributes, score_range, on_bad_row, prompt_field,
                                  response_field)


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face hub


def hub_unavailable_message(dataset: str, split: str, cause: BaseException | None = None) -> str:
    why = f" ({type(cause).__name__}: {cause})" if cause is not None else ""
    return (
        f"could not reach the Hugging Face hub to load {dataset} (split '{split}'){why}. "
        f"Download train.jsonl.gz and validation.jsonl.gz from the {dataset} dataset repository on a machine "
        f"with access and pass them as local files: "
        f"data.train_file=/path/to/train.jsonl.gz data.validation_file=/path/to/validation.jsonl.gz"
    )


def read_hub(dataset: str = "nvidia/HelpSteer2", split: str = "train", data_dir: str | None = None,
             attributes: Sequence[str] = HELPSTEER2_ATTRIBUTES, score_range: Sequence[float] = (0.0, 4.0),
             on_bad_row: str = "error", prompt_field: str = "prompt", response_field: str = "response",
             cache_dir: str | os.PathLike | None = None,
             revision: str | None = None) -> tuple[list[Example], Counter]:
    """Like ``read_examples``, for a dataset on the Hugging Face hub (or in the local ``datasets`` cache).

    Raises HubUnavailableError when the hub cannot be reached and the dataset is not cached.
    """
    check_policy(on_bad_row)
    import datasets

    try:
        with _offline_mode_from_env():
            table = datasets.load_dataset(dataset, data_dir=data_dir, split=split,
                                          cache_dir=None if cache_dir is None else str(cache_dir),
                                          revision=revision)
    except _hub_connection_errors() as e:
        raise HubUnavailableError(hub_unavailable_message(dataset, split, e)) from e
    source = "/".join(p for p in ("hf:/", dataset, data_dir, split) if p)
    records = ((number, row) for number, row in enumerate(table, start=1))
    return _examples_from_records(records, source, attributes, score_range, on_bad_row, prompt_field,
                                  response_field)


# ----------------------------------------------------------------------------------------------------------------
# HelpSteer2-Preference


def preference_strength(value: Any) -> int:
    field = "preference_strength"
    if not _is_number(value):
        raise _Bad(field, WRONG_TYPE, f"expected an integer, got {_json_type(value)}")
    if not isinstance(value, numbers.Integral):
        if not math.isfinite(value):
            raise _Bad(field, LABEL_NOT_FINITE, f"strength {value} is not finite")
        # Integer columns with nulls come back as floats from pandas; 2.0 is still the integer 2.
        if not float(value).is_integer():
            raise _Bad(field, WRONG_TYPE, f"expected an integer, got {value}")
    low, high = PREFERENCE_STRENGTH_RANGE
    if not low <= value <= high:
        raise _Bad(field, LABEL_OUT_OF_RANGE, f"strength {value} is outside [{low}, {high}]")
    return int(value)


def read_preference(path: str | os.PathLike, split: str | None = None,
                    on_bad_row: str = "error") -> PreferenceRows:
    """HelpSteer2-Preference pairs (``preference/preference.jsonl.gz``), optionally only those of one ``split``.

    Rows of every split are checked, because a malformed line has no readable split; the skipped-row Counter
    is ``result.skipped``.
    """
    check_policy(on_bad_row)
    source = str(path)

    def convert(record: dict, number: int) -> PreferencePair:
        prompt = text_field(record, "prompt")
        response_1 = text_field(record, "response_1")
        response_2 = text_field(record, "response_2")
        if record.get("preference_strength") is None:
            raise _Bad("preference_strength", MISSING_FIELD, "field is missing")
        strength = preference_strength(record["preference_strength"])
        row_split = record.get("split")
        if row_split is not None and not isinstance(row_split, str):
            raise _Bad("split", WRONG_TYPE, f"expected a string, got {_json_type(row_split)}")
        return PreferencePair(prompt, response_1, response_2, strength, row_split, source, number)

    skipped = Counter()
    rows = list(convert_rows(_file_records(Path(path)), source, on_bad_row, skipped, convert))
    kept = [r for r in rows if split is None or r.split == split]
    if split is not None and not kept:
        found = Counter(r.split for r in rows)
        raise ValueError(f"{source}: no pair has split {split!r}; the file's split values are "
                         f"{ {k: found[k] for k in sorted(found, key=str)} } (pairs each). Map the run's splits to "
                         "them with data.splits (HelpSteer2-Preference writes 'train' and 'val')")
    return PreferenceRows(kept, skipped)
