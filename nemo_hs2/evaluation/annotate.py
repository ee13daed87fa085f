"""Label conversations with a reward model's attributes, SteerLM-style: clamped to the score range, optionally rounded.

Input rows (``.jsonl``, ``.jsonl.gz`` or ``.parquet``) hold a ``conversation`` (``[{"role", "content"}, ...]``
ending with the assistant turn to rate) or HelpSteer2's ``prompt`` + ``response``. Each output row is the input row
plus the scores (under ``output_field``, or as top-level HelpSteer2 columns when it is null) and optionally a
NeMo-Aligner SteerLM label string (``helpfulness:3,correctness:4,...``).

The output goes to ``output_dir/<input name>.annotated.jsonl`` and never replaces the input. It is written in
batches; after each, a progress file beside it records how far the input has been read and how many output bytes
are complete. A restarted run (same command) cuts the output back to that point (a kill mid-batch leaves a partial
batch) and continues with the next input row, so no row is labelled twice or skipped.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from collections import Counter
from pathlib import Path

import numpy as np

from nemo_hs2.core.conversation import Conversation
from nemo_hs2.evaluation.outputs import OutputError, check_outputs, write_json

PROGRESS_SUFFIX = ".progress.json"


@dataclasses.dataclass
class AnnotateOptions:
    conversation_field: str = "conversation"
    output_field: str | None = "attributes"   # null: top-level keys, as HelpSteer2's columns
    label_field: str | None = None            # e.g. "label": SteerLM's "helpfulness:3,correctness:4,..." string
    round: bool = True
    score_range: tuple[float, float] = (0, 4)
    batch_rows: int = 256                     # rows per write (and per progress checkpoint)
    on_bad_row: str = "error"                 # error | skip


def output_path(input_path: str, output_dir: str) -> str:
    name = Path(input_path).name
    for suffix in (".jsonl.gz", ".jsonl", ".parquet"):
        if name.lower().endswith(suffix):
            name = name[: -len(suffix)]
            break
    return os.path.join(output_dir, f"{name}.annotated.jsonl")


def _fingerprint(path: str) -> dict:
    """Size and a hash of the first MiB: enough to notice that a resumed run was given a different input."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(2 ** 20))
    return {"size": os.path.getsize(path), "head_sha256": digest.hexdigest()}


def row_conversation(record: dict, field: str) -> Conversation:
    """The conversation a row asks to rate; raises ``ValueError`` naming what is wrong."""
    if field in record:
        conv = record[field]
        if not isinstance(conv, list):
            raise ValueError("expected a list of turns")
        return Conversation.from_messages(conv)
    prompt, response = record.get("prompt"), record.get("response")
    if isinstance(prompt, str) and isinstance(response, str):
        return Conversation.from_helpsteer2(prompt, response)
    raise ValueError(f"no '{field}' list and no 'prompt' / 'response' strings")


def labels(pred: np.ndarray, attributes, options: AnnotateOptions) -> list[dict]:
    lo, hi = options.score_range
    clamped = np.clip(pred, lo, hi)
    if options.round:  # half up, like nemo_hs2.core.metrics' rounded accuracy
        return [{a: int(v) for a, v in zip(attributes, row)} for row in np.floor(clamped + 0.5)]
    return [{a: float(v) for a, v in zip(attributes, row)} for row in clamped]


def _annotated(record: dict, scores: dict, options: AnnotateOptions) -> dict:
    out = dict(record)
    if options.output_field:
        out[options.output_field] = scores
    else:
        out.update(scores)
    if options.label_field:
        out[options.label_field] = ",".join(f"{a}:{v}" for a, v in scores.items())
    return out


def _load_progress(out_path: str, fingerprint: dict) -> dict:
    progress_path = out_path + PROGRESS_SUFFIX
    if not os.path.exists(out_path):
        return {"last_line": 0, "output_bytes": 0, "written": 0, "skipped": {}, "truncated": 0}
    if not os.path.exists(progress_path):
        raise OutputError(f"{out_path} exists but {progress_path} does not, so it cannot be resumed safely: "
                          "move it away or use another output_dir")
    with open(progress_path) as f:
        state = json.load(f)
    if state.get("input") != fingerprint:
        raise OutputError(f"{out_path} was written from a different input (size or content changed): move it away "
                          "or use another output_dir")
    return state


def count_rows(path: str) -> int | None:
    from nemo_hs2.data.records import file_records

    try:
        return sum(1 for _ in file_records(Path(path)))
    except ValueError:
        return None


def annotate(scorer, input_path: str, output_dir: str, options: AnnotateOptions | None = None,
             progress: bool = True, main: bool = True) -> dict:
    """Annotate ``input_path`` into ``output_dir``; returns the summary (also written as annotate_summary.json)."""
    from nemo_hs2.data.records import BadRowError, RowProblem, file_records
    from nemo_hs2.evaluation.scoring import progress_bar, score_conversations

    options = options or AnnotateOptions()
    if options.on_bad_row not in ("error", "skip"):
        raise ValueError(f"on_bad_row must be error or skip, got {options.on_bad_row!r}")
    if not os.path.isfile(input_path):
        raise FileNotFoundError(f"input {input_path} does not exist")
    out_path = output_path(input_path, output_dir)
    summary_path = os.path.join(output_dir, "annotate_summary.json")
    check_outputs([out_path, out_path + PROGRESS_SUFFIX, summary_path], [input_path])
    fingerprint = _fingerprint(input_path)
    state = _load_progress(out_path, fingerprint)
    skipped = Counter(state["skipped"])
    attributes = list(scorer.attributes)

    def save_progress():
        if main:
            write_json(out_path + PROGRESS_SUFFIX, {**state, "skipped": dict(skipped), "input": fingerprint})

    if main:
        os.makedirs(output_dir, exist_ok=True)
        save_progress()  # before the output exists, so an output without one was not written by this function
        with open(out_path, "ab") as f:  # drop a batch a kill left half-written
            f.truncate(state["output_bytes"])

    def flush(batch):
        convs = [conv for _, _, conv in batch]
        scored = score_conversations(scorer, convs, progress=False)
        pred = scored.pred
        state["truncated"] += scored.truncated
        if main:
            lines = "".join(json.dumps(_annotated(record, scores, options), ensure_ascii=False) + "\n"
                            for (_, record, _), scores in zip(batch, labels(pred, attributes, options)))
            with open(out_path, "ab") as f:
                f.write(lines.encode("utf-8"))
                f.flush()
                os.fsync(f.fileno())
                state["output_bytes"] = f.tell()
        state["last_line"] = batch[-1][0]
        state["written"] += len(batch)
        save_progress()

    total = count_rows(input_path)
    done_before = state["written"] + sum(skipped.values())
    batch, last_seen = [], state["last_line"]
    with progress_bar(total if total is not None else 0, "annotating", progress and main) as bar:
        bar.update(done_before)
        for number, record in file_records(Path(input_path)):
            if number <= state["last_line"]:
                continue
            last_seen = number
            if isinstance(record, RowProblem):
                if options.on_bad_row == "error":
                    raise BadRowError(input_path, number, record.field, record.reason, record.detail)
                skipped[record.reason] += 1
                bar.update(1)
                continue
            try:
                conv = row_conversation(record, options.conversation_field)  # checked here, not in a batch
            except ValueError as e:
                if options.on_bad_row == "error":
                    raise BadRowError(input_path, number, options.conversation_field, "bad_conversation",
                                      str(e)) from None
                skipped["bad_conversation"] += 1
                bar.update(1)
                continue
            batch.append((number, record, conv))
            if len(batch) >= options.batch_rows:
                flush(batch)
                bar.update(len(batch))
                batch = []
        if batch:
            flush(batch)
            bar.update(len(batch))
    state["last_line"] = last_seen  # skipped rows after the last batch are done too
    save_progress()

    summary = {"input": input_path, "output": out_path, "rows_written": state["written"],
               "skipped": dict(skipped), "resumed_after_rows": done_before, "truncated_rows": state["truncated"],
               "max_length": int(scorer.max_length), "attributes": attributes,
               "score_range": list(options.score_range), "rounded": options.round}
    if main:
        write_json(summary_path, summary)
    return summary
