"""RewardBench 2 (allenai/reward-bench-2, split ``test``): best-of-N scoring and the Ties subset, as upstream does.

Every completion is scored as ``[user: prompt, assistant: completion]``. The rules are allenai/reward-bench's
``rewardbench/utils.py`` (``load_bon_dataset_v2``, ``reroll_and_score_dataset``, ``process_single_model``) and
``scripts/run_v2.py``:

- a row's completions are ``chosen + rejected`` in that order; outside Ties a row scores
  ``1 / (completions tied at the top score)`` when the first one is at the top, else 0; a subset scores the mean;
- Ties (``subset.lower() == "ties"``): ids ``ref:N`` / ``tied:N``, the first ``num_correct`` completions are the
  correct ones; per prompt ``accurate = min(correct) - max(incorrect) > 0``, ``dcm = max(correct) - min(correct)``,
  ``cim = min(correct) - max(incorrect)``; the subset score is
  ``0.30 tied_acc + 0.30 ref_acc + 0.20 cp + 0.20 cp_hard + 0.01 margin`` (see ``ties_score``);
- the overall score (the leaderboard's) is the unweighted mean of the six subsets.

Differences, all where upstream would crash or print a misleading number: a missing subset is reported missing and
so is the overall score (as for RewardBench 1 here); Ties with no prompt id in both ``ref`` and ``tied`` is missing
(upstream: NaN); a ``tied`` prompt with one correct completion is an error (upstream: a TypeError). Identical
completions of a row are scored once, so they tie exactly whatever batch they would have landed in.
"""

from __future__ import annotations

import os
import re
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from nemo_hs2.evaluation.rewardbench import conversation, percent

SUBSETS = ("Factuality", "Precise IF", "Math", "Safety", "Focus", "Ties")
HUB_DATASET = "allenai/reward-bench-2"
HUB_SPLIT = "test"
TIES_WEIGHTS = {"tied_accuracy": 0.30, "ref_accuracy": 0.30, "correctness_preferred": 0.20,
                "correctness_preferred_hard": 0.20, "correctness_margin": 0.01}
_TIES_ID = re.compile(r"^(ref|tied):(\d+)$")


def is_ties(subset: str) -> bool:
    return subset.lower() == "ties"


@dataclass(frozen=True)
class Row:
    id: str
    prompt: str
    chosen: tuple[str, ...]
    rejected: tuple[str, ...]
    num_correct: int
    subset: str
    line: int

    @property
    def completions(self) -> tuple[str, ...]:
        return self.chosen + self.rejected


# ------------------------------------------------------------------------------------------------------ reading
def _texts(record: dict, field: str, source: str, line: int, allow_empty: bool) -> tuple[str, ...]:
    from nemo_hs2.data.records import BadRowError, json_type

    value = record.get(field)
    if value is None:
        raise BadRowError(source, line, field, "missing_field", "field is missing")
    if hasattr(value, "tolist"):  # a parquet list column read through pandas
        value = value.tolist()
    if not isinstance(value, (list, tuple)):
        raise BadRowError(source, line, field, "wrong_type", f"expected a list of strings, got {json_type(value)}")
    for i, text in enumerate(value):
        if not isinstance(text, str):
            raise BadRowError(source, line, field, "wrong_type", f"item {i}: expected a string, got {json_type(text)}")
    if not value and not allow_empty:
        raise BadRowError(source, line, field, "empty_text", "no completions")
    return tuple(value)


def _int(record: dict, field: str, source: str, line: int) -> int | None:
    from nemo_hs2.data.records import BadRowError, json_type

    value = record.get(field)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not float(value).is_integer():
        raise BadRowError(source, line, field, "wrong_type", f"expected an integer, got {json_type(value)} {value!r}")
    return int(value)


def _rows(records: Iterable[tuple[int, object]], source: str) -> list[Row]:
    from nemo_hs2.data.records import BadRowError, RowProblem, json_type

    rows = []
    for line, record in records:
        if isinstance(record, RowProblem):
            raise BadRowError(source, line, record.field, record.reason, record.detail)
        for field in ("prompt", "subset"):
            if record.get(field) is None:
                raise BadRowError(source, line, field, "missing_field", "field is missing")
            if not isinstance(record[field], str):
                raise BadRowError(source, line, field, "wrong_type",
                                  f"expected a string, got {json_type(record[field])}")
        subset = record["subset"]
        if not subset.strip():
            raise BadRowError(source, line, "subset", "empty_text", "empty subset name")
        chosen = _texts(record, "chosen", source, line, allow_empty=False)
        rejected = _texts(record, "rejected", source, line, allow_empty=False)
        total = len(chosen) + len(rejected)
        declared = _int(record, "total_completions", source, line)
        if declared is not None and declared != total:
            # Upstream regroups the flat scores by total_completions: a mismatch would shift every later row.
            raise BadRowError(source, line, "total_completions", "label_out_of_range",
                              f"{declared}, but chosen + rejected hold {total}")
        num_correct = _int(record, "num_correct", source, line)
        row_id = record.get("id")
        if isinstance(row_id, (dict, list, bool)):
            raise BadRowError(source, line, "id", "wrong_type",
                              f"expected a string or number, got {json_type(row_id)}")
        row_id = str(line) if row_id is None else str(row_id)
        if is_ties(subset):
            if not _TIES_ID.match(row_id):
                raise BadRowError(source, line, "id", "wrong_type", f"Ties ids are ref:N or tied:N, got {row_id!r}")
            if num_correct is None:
                raise BadRowError(source, line, "num_correct", "missing_field", "field is missing (needed for Ties)")
            if not 1 <= num_correct < total:
                raise BadRowError(source, line, "num_correct", "label_out_of_range",
                                  f"{num_correct}: Ties needs at least one correct and one incorrect of {total}")
        rows.append(Row(row_id, record["prompt"], chosen, rejected,
                        len(chosen) if num_correct is None else num_correct, subset, line))
    if not rows:
        raise ValueError(f"{source}: no rows")
    return rows


def read_file(path: str | os.PathLike) -> list[Row]:
    """Rows of a RewardBench-2 ``.jsonl``, ``.jsonl.gz`` or ``.parquet`` file; a bad row stops with
    ``file:line: field: reason``. Other columns (``models``, ...) are ignored."""
    from nemo_hs2.data.records import file_records

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"RewardBench 2 file {path} does not exist")
    return _rows(file_records(path), str(path))


def read_hub(dataset: str = HUB_DATASET, split: str = HUB_SPLIT) -> list[Row]:
    import datasets

    from nemo_hs2.data.records import HubUnavailableError, hub_connection_errors, offline_mode_from_env

    try:
        with offline_mode_from_env():
            table = datasets.load_dataset(dataset, split=split)
    except hub_connection_errors() as e:
        raise HubUnavailableError(
            f"could not reach the Hugging Face hub to load {dataset} (split '{split}') ({type(e).__name__}: {e}). "
            f"Save the split as .jsonl or .parquet on a machine with access and pass rewardbench2.file=PATH") from e
    return _rows(((i, r) for i, r in enumerate(table, start=1)), f"hf://{dataset}/{split}")


def read_rows(file: str, dataset: str = HUB_DATASET, split: str = HUB_SPLIT) -> list[Row]:
    return read_hub(dataset, split) if str(file) == "hub" else read_file(file)


# ------------------------------------------------------------------------------------------------------ scores
def best_of_n(scores: Sequence[float]) -> float:
    """``reroll_and_score_dataset``: 1 / (number at the top) if the first (chosen) completion is at the top, else 0."""
    scores = np.asarray(scores, dtype=np.float64)
    top = np.max(scores)
    return float(1.0 / np.sum(scores == top)) if scores[0] == top else 0.0


def _prompt_stats(correct: Sequence[float], incorrect: Sequence[float]):
    """``_compute_prompt_stats``: (accurate, dcm or None with one correct completion, cim)."""
    cim = min(correct) - max(incorrect)
    dcm = max(correct) - min(correct) if len(correct) > 1 else None
    return cim > 0, dcm, cim


def ties_score(rows: Sequence[tuple[str, int, Sequence[float]]]) -> dict:
    """``process_single_model`` on ``(id, num_correct, scores)`` per Ties row. Rows sharing an id are one prompt."""
    grouped: dict[tuple[str, int], list[tuple[bool, float]]] = defaultdict(list)
    for row_id, num_correct, scores in rows:
        kind, number = _TIES_ID.match(row_id).groups()
        grouped[(kind, int(number))] += [(i < num_correct, float(s)) for i, s in enumerate(scores)]
    stats: dict[str, dict[int, tuple]] = {"ref": {}, "tied": {}}
    for (kind, number), samples in grouped.items():
        stats[kind][number] = _prompt_stats([s for ok, s in samples if ok], [s for ok, s in samples if not ok])
    ref, tied = stats["ref"], stats["tied"]
    out = {"ref_prompts": len(ref), "tied_prompts": len(tied),
           "ref_accuracy": float(np.mean([s[0] for s in ref.values()])) if ref else 0.0,
           "tied_accuracy": float(np.mean([s[0] for s in tied.values()])) if tied else 0.0}
    common = sorted(set(ref) & set(tied))
    out["prompts_in_both"] = len(common)
    if not common:
        return {**out, "correctness_preferred": None, "correctness_preferred_hard": None,
                "correctness_margin": None, "score": None}
    for pid in common:
        if tied[pid][1] is None:
            raise ValueError(f"Ties: tied:{pid} has one correct completion; its correct-answer spread is undefined")
    dcm = np.array([tied[p][1] for p in common], dtype=np.float64)
    cim_tied = np.array([tied[p][2] for p in common], dtype=np.float64)
    cim_ref = np.array([ref[p][2] for p in common], dtype=np.float64)
    hard = np.minimum(cim_ref, cim_tied)
    with np.errstate(divide="ignore", invalid="ignore"):
        margin = np.nan_to_num(np.tanh(hard / dcm - 1), nan=0.0)
    out.update(correctness_preferred=float(np.mean(cim_tied > dcm)),
               correctness_preferred_hard=float(np.mean(hard > dcm)), correctness_margin=float(np.mean(margin)))
    out["score"] = float(sum(w * out[k] for k, w in TIES_WEIGHTS.items()))
    return out


def aggregate(rows: Sequence[Row], scores: Sequence[Sequence[float]]) -> tuple[dict, list[float | None]]:
    """Subset scores and the overall score from every row's completion scores; also each row's result
    (None for Ties rows, which score as a subset only, as upstream)."""
    if len(rows) != len(scores):
        raise ValueError(f"{len(rows)} rows for {len(scores)} score lists")
    results: list[float | None] = []
    by_subset: dict[str, list] = defaultdict(list)
    for row, s in zip(rows, scores):
        if len(s) != len(row.completions):
            raise ValueError(f"row {row.id}: {len(s)} scores for {len(row.completions)} completions")
        result = None if is_ties(row.subset) else best_of_n(s)
        results.append(result)
        by_subset[row.subset].append((row, s, result))
    known, unknown, ties = {}, {}, None
    for subset in sorted(by_subset, key=lambda n: (SUBSETS.index(n) if n in SUBSETS else len(SUBSETS), n)):
        entries = by_subset[subset]
        if is_ties(subset):
            ties = ties_score([(r.id, r.num_correct, s) for r, s, _ in entries])
            entry = {"rows": len(entries), "score": ties["score"], "ties": ties}
        else:
            points = [res for _, _, res in entries]
            entry = {"rows": len(entries), "score": float(np.mean(points)),
                     "first_at_top": int(sum(p > 0 for p in points)),
                     "top_ties": int(sum(0 < p < 1 for p in points))}
        (known if subset in SUBSETS else unknown)[subset] = entry
    subset_scores = {s: known[s]["score"] if s in known else None for s in SUBSETS}
    missing = [s for s in SUBSETS if subset_scores[s] is None]
    overall = None if missing else float(np.mean([subset_scores[s] for s in SUBSETS]))
    return {"subsets": known, "unknown_subsets": unknown, "subset_scores": subset_scores,
            "missing_subsets": missing, "overall": overall, "rows": len(rows),
            "completions": int(sum(len(s) for s in scores))}, results


def evaluate(scorer, rows: Sequence[Row], progress: bool = True) -> tuple[dict, list[dict]]:
    """Score every completion (each distinct one once); returns the results dict and one record per row."""
    from nemo_hs2.evaluation.scoring import score_conversations

    index: dict[tuple[str, str], int] = {}
    for r in rows:
        for c in r.completions:
            index.setdefault((r.prompt, c), len(index))
    scored = score_conversations(scorer, [conversation(p, c) for p, c in index], desc="RewardBench 2",
                                 progress=progress)
    scores = [[float(scored.reward[index[(r.prompt, c)]]) for c in r.completions] for r in rows]
    summary, results = aggregate(rows, scores)
    over = scored.lengths > scored.max_length
    summary.update({"distinct_completions": len(index), "truncated_completions": int(over.sum()),
                    "max_length": scored.max_length,
                    "reward_weights": dict(zip(scorer.attributes, (float(w) for w in scorer.weights)))})
    records = [{"id": r.id, "subset": r.subset, "num_correct": r.num_correct, "scores": s, "result": res}
               for r, s, res in zip(rows, scores, results)]
    return summary, records


# ------------------------------------------------------------------------------------------------------ output
def markdown(summary: Mapping) -> str:
    lines = ["| Subset | Score | Rows |", "|---|---:|---:|"]
    for subset in SUBSETS:
        entry = summary["subsets"].get(subset)
        lines.append(f"| {subset} | {percent(entry['score'] if entry else None)} | {entry['rows'] if entry else 0} |")
    note = "" if summary["overall"] is not None else " (needs all six subsets)"
    lines.append(f"| **Overall** | **{percent(summary['overall'])}**{note} | {summary['rows']} |")
    for subset, entry in summary["unknown_subsets"].items():
        lines.append(f"| {subset} (unknown, not in the overall) | {percent(entry['score'])} | {entry['rows']} |")
    ties = summary["subsets"].get("Ties", {}).get("ties")
    if ties:
        lines += ["", "| Ties term (0..1; margin -1..1) | Value | Weight |", "|---|---:|---:|"]
        lines += [f"| {k} | {'missing' if ties[k] is None else f'{ties[k]:.3f}'} | {w:.2f} |"
                  for k, w in TIES_WEIGHTS.items()]
    return "\n".join(lines) + "\n"


def describe(summary: Mapping) -> str:
    weights = ", ".join(f"{k} {v:g}" for k, v in summary.get("reward_weights", {}).items())
    return (f"{summary['rows']} prompts, {summary['completions']} completions. Best-of-N: a row scores 1 / (number "
            f"tied at the top) when the first chosen completion is at the top, else 0; Ties uses upstream's "
            f"accuracy-and-margin formula; overall = mean of the six subsets. Reward weights: {weights or 'n/a'}. "
            f"Completions over {summary.get('max_length', '?')} tokens (kept from the end, as in training): "
            f"{summary.get('truncated_completions', 0)}.")
