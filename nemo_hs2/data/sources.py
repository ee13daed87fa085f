"""Reading HelpSteer2-style rated rows (and HelpSteer2-Preference pairs) from files or the Hugging Face hub.

Every row is checked before it becomes an ``Example``: a training run that silently learns from a truncated line,
a string label or a score of 40 is much harder to diagnose than one that stops at the offending line.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gzip
import json
import math
import numbers
import os
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from nemo_hs2.attributes import HELPSTEER2_ATTRIBUTES, check_attributes
from nemo_hs2.data.examples import Example

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")
BAD_ROW_POLICIES = ("error", "skip")
PREFERENCE_STRENGTH_RANGE = (-3, 3)

# Reason keys, as counted in the skipped-rows Counter and carried by BadRowError.reason.
MALFORMED_JSON = "malformed_json"
NOT_AN_OBJECT = "not_an_object"
INVALID_UTF8 = "invalid_utf8"
MISSING_FIELD = "missing_field"
WRONG_TYPE = "wrong_type"
EMPTY_TEXT = "empty_text"
LABEL_OUT_OF_RANGE = "label_out_of_range"
LABEL_NOT_FINITE = "label_not_finite"
NO_LABELS = "no_labels"

WHOLE_LINE = "-"


class BadRowError(ValueError):
    """A row that cannot be used; the message is ``{source}:{line}: {field}: {detail}``."""

    def __init__(self, source: str, line: int, field: str, reason: str, detail: str):
        super().__init__(f"{source}:{line}: {field}: {detail}")
        self.source = source
        self.line = line
        self.field = field
        self.reason = reason
        self.detail = detail


class HubUnavailableError(RuntimeError):
    """The Hugging Face hub could not be reached (no network, or offline mode) and nothing usable was cached."""


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


class _Bad(Exception):
    """Raised inside the row checks; turned into a BadRowError or a count by the caller's policy."""

    def __init__(self, field: str, reason: str, detail: str):
        super().__init__(detail)
        self.field = field
        self.reason = reason
        self.detail = detail


# ----------------------------------------------------------------------------------------------------------------
# Raw records


def _suffix(path: Path) -> str:
    name = path.name.lower()
    # Longest first, so that ``x.jsonl.gz`` is not taken for a plain ``.gz``-less ``.jsonl``.
    for suffix in sorted(SUPPORTED_SUFFIXES, key=len, reverse=True):
        if name.endswith(suffix):
            return suffix
    raise ValueError(f"{path}: unsupported file type; supported suffixes are {', '.join(SUPPORTED_SUFFIXES)}")


def _jsonl_records(path: Path, opener) -> Iterator[tuple[int, Any]]:
    """(line number, dict or _Bad) per non-blank line.

    Lines are decoded one at a time so that a single corrupt line is reported (or skipped) on its own rather than
    making the whole file unreadable through a text-mode decoder.
    """
    try:
        with opener(path, "rb") as f:
            for number, raw in enumerate(f, start=1):
                if number == 1 and raw.startswith(b"\xef\xbb\xbf"):
                    # Files saved by some Windows editors start with a BOM, which json.loads rejects.
                    raw = raw[3:]
                if not raw.strip():
                    continue
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as e:
                    yield number, _Bad(WHOLE_LINE, INVALID_UTF8, f"invalid UTF-8 at byte {e.start} of the line")
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    yield number, _Bad(WHOLE_LINE, MALFORMED_JSON, f"malformed JSON ({e.msg} at column {e.colno})")
                    continue
                if not isinstance(record, dict):
                    yield number, _Bad(WHOLE_LINE, NOT_AN_OBJECT,
                                       f"expected a JSON object, got {_json_type(record)}")
                    continue
                yield number, record
    except (gzip.BadGzipFile, EOFError) as e:
        # A truncated download fails here, part-way through the file; name the file, not just zlib's complaint.
        raise ValueError(f"{path}: not a complete gzip file ({e})") from e


def _parquet_records(path: Path) -> Iterator[tuple[int, Any]]:
    import pyarrow.parquet as pq

    number = 0
    for batch in pq.ParquetFile(path).iter_batches(batch_size=1024):
        for record in batch.to_pylist():
            number += 1
            yield number, record


def _file_records(path: Path) -> Iterator[tuple[int, Any]]:
    suffix = _suffix(path)
    if suffix == ".parquet":
        return _parquet_records(path)
    return _jsonl_records(path, gzip.open if suffix == ".jsonl.gz" else open)


# ----------------------------------------------------------------------------------------------------------------
# Field checks


def _json_type(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, numbers.Number):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, (list, tuple)):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def _is_number(value: Any) -> bool:
    # bool is an int subclass, but a ``true`` score is a data bug, not a 1.
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def _text(record: dict, field: str) -> str:
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


def _check_policy(on_bad_row: str) -> None:
    if on_bad_row not in BAD_ROW_POLICIES:
        raise ValueError(f"on_bad_row must be one of {BAD_ROW_POLICIES}, got {on_bad_row!r}")


def _check_score_range(score_range: Sequence[float]) -> tuple[float, float]:
    low, high = (float(x) for x in score_range)
    if not (math.isfinite(low) and math.isfinite(high) and low <= high):
        raise ValueError(f"score_range must be two finite numbers, low <= high; got {tuple(score_range)}")
    return low, high


def _rows(records: Iterable[tuple[int, Any]], source: str, on_bad_row: str, skipped: Counter, convert):
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
        if i + 1 < len(rows) and rows[i].prompt == rows[i + 1].prompt:
            out += [dataclasses.replace(rows[i], pair_id=next_id), dataclasses.replace(rows[i + 1], pair_id=next_id)]
            next_id += 1
            i += 2
        else:
            out.append(dataclasses.replace(rows[i], pair_id=-1))
            i += 1
    return out


def _examples_from_records(records, source: str, attributes, score_range, on_bad_row: str,
                           prompt_field: str, response_field: str) -> tuple[list[Example], Counter]:
    _check_policy(on_bad_row)
    attributes = check_attributes(attributes)
    low, high = _check_score_range(score_range)

    def convert(record: dict, number: int) -> Example:
        prompt = _text(record, prompt_field)
        response = _text(record, response_field)
        return Example(prompt=prompt, response=response, labels=_labels(record, attributes, low, high),
                       source=source, line=number)

    skipped = Counter()
    # Bad rows are dropped before pairing, so a pair whose partner was skipped is not mismatched with a neighbour.
    examples = assign_pairs(_rows(records, source, on_bad_row, skipped, convert))
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

_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def _offline_requested() -> bool:
    return any(os.environ.get(v, "").upper() in _TRUE_VALUES for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@contextlib.contextmanager
def _offline_mode_from_env():
    """Honour HF_HUB_OFFLINE as it is now, not as it was when ``datasets`` was imported.

    Both ``datasets`` and ``huggingface_hub`` read the variable once, at import. A launcher or test that sets it
    later would otherwise sit through ~25 s of connection retries before failing. Not thread-safe: the flags are
    module globals, restored on exit.
    """
    if not _offline_requested():
        yield
        return
    import datasets.config
    import huggingface_hub.constants

    saved = [(datasets.config, "HF_HUB_OFFLINE"), (datasets.config, "HF_DATASETS_OFFLINE"),
             (huggingface_hub.constants, "HF_HUB_OFFLINE")]
    saved = [(module, name, getattr(module, name)) for module, name in saved if hasattr(module, name)]
    try:
        for module, name, _ in saved:
            setattr(module, name, True)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)


def _hub_connection_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        import requests

        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    with contextlib.suppress(ImportError):
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    return tuple(errors)


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
    _check_policy(on_bad_row)
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


def _strength(value: Any) -> int:
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
    _check_policy(on_bad_row)
    source = str(path)

    def convert(record: dict, number: int) -> PreferencePair:
        prompt = _text(record, "prompt")
        response_1 = _text(record, "response_1")
        response_2 = _text(record, "response_2")
        if record.get("preference_strength") is None:
            raise _Bad("preference_strength", MISSING_FIELD, "field is missing")
        strength = _strength(record["preference_strength"])
        row_split = record.get("split")
        if row_split is not None and not isinstance(row_split, str):
            raise _Bad("split", WRONG_TYPE, f"expected a string, got {_json_type(row_split)}")
        return PreferencePair(prompt, response_1, response_2, strength, row_split, source, number)

    skipped = Counter()
    rows = _rows(_file_records(Path(path)), source, on_bad_row, skipped, convert)
    return PreferenceRows((r for r in rows if split is None or r.split == split), skipped)
