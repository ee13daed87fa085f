"""Raw rows of .jsonl, .jsonl.gz and .parquet files, the row errors, and the hub's offline switches.

The public face every row reader shares (HelpSteer2 sources, RewardBench, annotation): each reader adds its own
field checks on top of ``file_records`` and reports a bad row as ``BadRowError``.
"""

from __future__ import annotations

import contextlib
import gzip
import json
import numbers
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

SUPPORTED_SUFFIXES = (".jsonl", ".jsonl.gz", ".parquet")

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
BAD_CONVERSATION = "bad_conversation"  # turns out of order, a misplaced system turn, ...

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


class RowProblem(Exception):
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
    """(line number, dict or RowProblem) per non-blank line.

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
                    yield number, RowProblem(WHOLE_LINE, INVALID_UTF8, f"invalid UTF-8 at byte {e.start} of the line")
                    continue
                try:
                    record = json.loads(text)
                except json.JSONDecodeError as e:
                    yield number, RowProblem(WHOLE_LINE, MALFORMED_JSON, f"malformed JSON ({e.msg} at column {e.colno})")
                    continue
                if not isinstance(record, dict):
                    yield number, RowProblem(WHOLE_LINE, NOT_AN_OBJECT,
                                       f"expected a JSON object, got {json_type(record)}")
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


def file_records(path: Path) -> Iterator[tuple[int, Any]]:
    suffix = _suffix(path)
    if suffix == ".parquet":
        return _parquet_records(path)
    return _jsonl_records(path, gzip.open if suffix == ".jsonl.gz" else open)


def json_type(value: Any) -> str:
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


# ----------------------------------------------------------------------------------------------------------------
# Hugging Face hub

_TRUE_VALUES = {"1", "ON", "YES", "TRUE"}


def _offline_requested() -> bool:
    return any(os.environ.get(v, "").upper() in _TRUE_VALUES for v in ("HF_HUB_OFFLINE", "HF_DATASETS_OFFLINE"))


@contextlib.contextmanager
def offline_mode_from_env():
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


def hub_connection_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [ConnectionError, TimeoutError]
    with contextlib.suppress(ImportError):
        import requests

        errors += [requests.exceptions.ConnectionError, requests.exceptions.Timeout]
    with contextlib.suppress(ImportError):
        from huggingface_hub.errors import LocalEntryNotFoundError, OfflineModeIsEnabled

        errors += [LocalEntryNotFoundError, OfflineModeIsEnabled]
    return tuple(errors)
