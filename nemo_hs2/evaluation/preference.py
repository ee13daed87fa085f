"""Preference sets as users evaluate an RM on them: HelpSteer2-Preference (``val`` split) and HelpSteer3-Preference.

Both responses of every pair are scored; the metrics are training's own validation metrics
(``nemo_hs2.core.metrics.preference_metrics``): the Bradley-Terry loss of the recipe the checkpoint trained with and
preference accuracy over the pairs with a nonzero strength. Ties (strength 0) are counted apart and never counted as
right or wrong. HelpSteer3 is also broken down by domain.
"""

from __future__ import annotations

import dataclasses
from collections import Counter

import numpy as np

from nemo_hs2.core.metrics import preference_metrics, strict_json
from nemo_hs2.core.scorer import BTSettings


def bt_settings(scorer) -> BTSettings:
    """The checkpoint's own BT settings; a model trained without BT is read with regular BT on its reward."""
    own = getattr(scorer, "bt", None)
    if own is not None:
        return own
    return BTSettings(np.asarray(scorer.weights, dtype=np.float64), "regular_bt", "drop",
                      "regular BT on the weighted reward (the model was not trained with a BT loss)")


@dataclasses.dataclass
class Pairs:
    rows: list  # Examples, two per pair: response 1, response 2
    strengths: np.ndarray  # negative = response 1 better
    domains: list[str] | None
    lines: list[int]
    skipped: Counter


def read_helpsteer2_preference(path: str, split: str, on_bad_row: str = "error") -> Pairs:
    from nemo_hs2.data.preference import pair_rows
    from nemo_hs2.data.sources import read_preference

    pairs = read_preference(path, split=split, on_bad_row=on_bad_row)
    rows, strengths = pair_rows(pairs)
    return Pairs(rows, np.asarray(strengths, dtype=np.float64), None, [p.line for p in pairs], Counter(pairs.skipped))


def read_helpsteer3(path: str, domains=None, languages=None, on_bad_row: str = "error") -> Pairs:
    from nemo_hs2.data import helpsteer3 as hs3

    pairs = hs3.read_helpsteer3(path, domains, languages, on_bad_row)
    if not pairs:
        raise ValueError(f"{path}: no HelpSteer3 pairs left (filtered out: {dict(pairs.filtered)}, skipped: "
                         f"{dict(pairs.skipped)})")
    rows, strengths = hs3.pair_examples(pairs)
    skipped = pairs.skipped + Counter({f"filtered_{k}": v for k, v in pairs.filtered.items()})
    return Pairs(rows, np.asarray(strengths, dtype=np.float64), [p.domain for p in pairs], [p.line for p in pairs],
                 skipped)


def _metrics(pred, strengths, bt: BTSettings) -> dict:
    arrays = {"pred": pred, "pair_ids": np.repeat(np.arange(len(strengths)), 2),
              "preference": np.repeat(strengths, 2)}
    m = preference_metrics(arrays, bt.weights, bt.kind, bt.ties)
    m["pairs"] = int(len(strengths))
    m["ties"] = int((strengths == 0).sum())
    return m


def evaluate(scorer, pairs: Pairs, desc: str, progress: bool = True) -> tuple[dict, list[dict]]:
    """The summary (overall and per domain) and one record per pair (both rewards under the BT weights)."""
    from nemo_hs2.evaluation.scoring import score_conversations

    if not pairs.rows:
        raise ValueError("no preference pairs to evaluate")
    bt = bt_settings(scorer)
    scored = score_conversations(scorer, [r.conversation for r in pairs.rows], desc=desc, progress=progress)
    summary = {"metrics": _metrics(scored.pred, pairs.strengths, bt), "bt_loss_kind": bt.kind, "bt_ties": bt.ties,
               "bt_reward": bt.source, "truncated_rows": scored.truncated, "skipped": dict(pairs.skipped)}
    if pairs.domains is not None:
        domains = np.asarray(pairs.domains)
        summary["domains"] = {d: _metrics(scored.pred.reshape(-1, 2, scored.pred.shape[1])[domains == d]
                                          .reshape(-1, scored.pred.shape[1]), pairs.strengths[domains == d], bt)
                              for d in sorted(set(pairs.domains))}
    reward = scored.pred @ bt.weights
    records = [{"line": line, "strength": float(s), "reward_1": float(reward[2 * i]), "reward_2": float(reward[2 * i + 1]),
                **({"domain": pairs.domains[i]} if pairs.domains is not None else {})}
               for i, (line, s) in enumerate(zip(pairs.lines, pairs.strengths))]
    return strict_json(summary), records


def markdown(summary: dict) -> str:
    def row(name, m):
        acc = "-" if m["preference_acc"] is None else f"{100 * m['preference_acc']:.1f}"
        loss = "-" if m["bt_loss"] is None else f"{m['bt_loss']:.4f}"
        return f"| {name} | {m['pairs']} | {m['ties']} | {m['preference_pairs']} | {acc} | {loss} |"

    lines = ["| set | pairs | ties | scored pairs | accuracy % | BT loss |", "|---|---:|---:|---:|---:|---:|",
             row("all", summary["metrics"])]
    lines += [row(d, m) for d, m in (summary.get("domains") or {}).items()]
    lines += ["", f"BT loss: {summary['bt_loss_kind']} (ties: {summary['bt_ties']}) on {summary['bt_reward']}."]
    return "\n".join(lines)
