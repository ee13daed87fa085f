"""What a prepared data set looks like: row accounting, token lengths and label histograms per split.

Percentiles are nearest-rank (the smallest length with at least p% of rows at or below it), so every number in the
report is a length some row really has.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MISSING = "missing"


def nearest_rank(sorted_values: np.ndarray, p: float) -> int:
    n = len(sorted_values)
    return int(sorted_values[max(0, math.ceil(p / 100.0 * n) - 1)])


def length_summary(lengths) -> dict:
    values = np.sort(np.asarray(lengths, dtype=np.int64))
    if len(values) == 0:
        return {"mean": 0.0, "p50": 0, "p90": 0, "max": 0}
    return {"mean": round(float(values.mean()), 1), "p50": nearest_rank(values, 50),
            "p90": nearest_rank(values, 90), "max": int(values[-1])}


def _score_key(value: float) -> str:
    return str(int(value)) if float(value).is_integer() else repr(float(value))


def score_histogram(column: np.ndarray, score_range: Sequence[float]) -> dict[str, int]:
    """Rows per score value: every integer of the range (zeros included), any other value seen, and missing."""
    low, high = score_range
    counts = {str(v): 0 for v in range(math.ceil(low), math.floor(high) + 1)}
    column = np.asarray(column, dtype=np.float64)
    present = column[~np.isnan(column)]
    values, freq = np.unique(present, return_counts=True)
    for v, c in zip(values.tolist(), freq.tolist()):
        key = _score_key(v)
        counts[key] = counts.get(key, 0) + int(c)
    ordered = dict(sorted(counts.items(), key=lambda kv: float(kv[0])))
    ordered[MISSING] = int(np.isnan(column).sum())
    return ordered


def length_histogram(lengths, bin_width: int) -> dict:
    """Rows per padded length (the upper edge of each ``bin_width`` bin, the width a batch pads such a row to);
    the planner reads it to estimate micro-batch widths."""
    edges = -(-np.asarray(lengths, dtype=np.int64) // bin_width) * bin_width
    values, counts = np.unique(edges, return_counts=True)
    return {"bin_width": int(bin_width), "counts": {str(int(v)): int(c) for v, c in zip(values, counts)}}


def split_report(dataset, stats, attributes: Sequence[str], score_range: Sequence[float],
                 length_bin: int = 8) -> dict:
    labels = np.asarray(dataset.labels)
    report = {
        "rows_read": int(stats.rows),
        "used": int(stats.used),
        "skipped": {k: int(v) for k, v in sorted(stats.skipped.items())},
        "truncated": int(stats.truncated),
        "unpaired": int(stats.unpaired),  # kept, but their pair partner was dropped
        "tokens": length_summary(dataset.lengths()),
        "length_histogram": length_histogram(dataset.lengths(), length_bin),
    }
    full = getattr(dataset, "full_lengths", None)
    if full is not None:
        report["tokens_before_truncation"] = length_summary(full)
    report["attributes"] = {name: score_histogram(labels[:, j], score_range) for j, name in enumerate(attributes)}
    if getattr(stats, "cache_path", None):
        report["cache"] = {"path": stats.cache_path, "hit": bool(stats.cache_hit)}
    return report


def data_report(datasets: dict, stats: dict, attributes: Sequence[str], score_range: Sequence[float],
                settings: dict | None = None, length_bin: int = 8) -> dict:
    return {"settings": settings or {},
            "splits": {split: split_report(datasets[split], stats[split], attributes, score_range, length_bin)
                       for split in datasets}}


def format_report(report: dict) -> str:
    """A plain-text summary of ``data_report``'s output."""
    lines = []
    settings = report.get("settings", {})
    if settings:
        tok = settings.get("tokenizer") or {}
        template = (settings.get("template") or {}).get("template")
        lines.append(f"source={settings.get('source')}  template={template}  tokenizer={tok.get('class')} "
                     f"(vocab {tok.get('vocab_size')})  seq_length={settings.get('seq_length')}  "
                     f"overlength={settings.get('overlength')}  on_bad_row={settings.get('on_bad_row')}")
    header = (f"{'split':<11}{'read':>7}{'used':>7}{'truncated':>11}  {'tokens mean':>11}{'p50':>7}{'p90':>7}"
              f"{'max':>7}  skipped")
    lines += [header, "-" * len(header)]
    for split, r in report["splits"].items():
        t = r["tokens"]
        skipped = ", ".join(f"{k}: {v}" for k, v in r["skipped"].items()) or "none"
        lines.append(f"{split:<11}{r['rows_read']:>7}{r['used']:>7}{r['truncated']:>11}  {t['mean']:>11}{t['p50']:>7}"
                     f"{t['p90']:>7}{t['max']:>7}  {skipped}")
        full = r.get("tokens_before_truncation")
        if full is not None and r["truncated"]:
            lines.append(f"{'':<11}{'':>25}  {full['mean']:>11}{full['p50']:>7}{full['p90']:>7}{full['max']:>7}"
                         f"  (before truncation)")
    for split, r in report["splits"].items():
        lines.append("")
        lines.append(f"{split}: label histogram (used rows; score: rows)")
        width = max(len(a) for a in r["attributes"])
        for name, hist in r["attributes"].items():
            cells = "  ".join(f"{k}:{v:>5}" for k, v in hist.items())
            lines.append(f"  {name:<{width}}  {cells}")
        if "cache" in r:
            lines.append(f"  cache: {r['cache']['path']} ({'reused' if r['cache']['hit'] else 'written'})")
    return "\n".join(lines)
