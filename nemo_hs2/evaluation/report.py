"""HelpSteer2 validation report: per-attribute fit, pairwise accuracy, confusion matrices, plots and report.md.

Metrics are ``nemo_hs2.core.metrics``' (the same numbers training's validation reports), computed here on whatever rated
file is given, with the checkpoint's own formatting. Plots are PNGs written with matplotlib's Agg backend (no
display needed); ``report.md`` embeds them by relative path, so the output directory can be moved as a whole.
"""

from __future__ import annotations

import math
import os
from collections.abc import Mapping, Sequence

import numpy as np

from nemo_hs2.core.metrics import confusion_matrix, pairwise_metrics, regression_metrics, strict_json

PLOTS_DIR = "plots"


def evaluate_helpsteer2(scorer, examples, score_range=(0, 4), progress: bool = True) -> dict:
    """Predictions and metrics for rated rows (``nemo_hs2.data.sources.read_examples``' output)."""
    from nemo_hs2.evaluation.scoring import score_conversations

    attributes = list(scorer.attributes)
    if not examples:
        raise ValueError("no HelpSteer2 rows to evaluate")
    scored = score_conversations(scorer, [e.conversation for e in examples],
                                 desc="HelpSteer2", progress=progress)
    target = np.array([[e.labels.get(a, math.nan) for a in attributes] for e in examples], dtype=np.float64)
    pair_ids = np.array([e.pair_id for e in examples], dtype=np.int64)
    metrics = regression_metrics(scored.pred, target, attributes, score_range)
    metrics.update(pairwise_metrics(scored.pred, target, pair_ids, attributes, scorer.weights))
    confusion = {a: confusion_matrix(scored.pred[:, j], target[:, j], score_range).tolist()
                 for j, a in enumerate(attributes)}
    return {"rows": len(examples), "pairs": int(len(np.unique(pair_ids[pair_ids >= 0]))), "attributes": attributes,
            "score_range": [int(score_range[0]), int(score_range[1])], "metrics": metrics, "confusion": confusion,
            "truncated_rows": scored.truncated, "max_length": scored.max_length,
            "reward_weights": dict(zip(attributes, (float(w) for w in scorer.weights))),
            "pred": scored.pred, "target": target, "pair_ids": pair_ids, "reward": scored.reward}


# ------------------------------------------------------------------------------------------------------ plots
def _pyplot():
    import matplotlib

    matplotlib.use("Agg", force=True)
    import matplotlib.pyplot as plt

    return plt


def plot_pred_vs_true(pred, target, attributes: Sequence[str], out_dir: str, score_range=(0, 4)) -> dict[str, str]:
    """One PNG per attribute with labels: predictions against true scores (jittered), the mean prediction per true
    score, and the diagonal. Returns {attribute: path}; attributes without a single label get no plot."""
    plt = _pyplot()
    lo, hi = score_range
    rng = np.random.default_rng(0)  # jitter only; fixed so re-running gives the same image
    paths = {}
    os.makedirs(out_dir, exist_ok=True)
    for j, name in enumerate(attributes):
        present = ~np.isnan(target[:, j])
        if not present.any():
            continue
        t, p = target[present, j], pred[present, j]
        fig, ax = plt.subplots(figsize=(4.5, 4.2), dpi=100)
        ax.scatter(t + rng.uniform(-0.15, 0.15, size=t.shape), p, s=8, alpha=0.4, label="rows")
        levels = np.unique(t)
        ax.plot(levels, [p[t == v].mean() for v in levels], "o-", color="C3", label="mean prediction")
        ax.plot([lo, hi], [lo, hi], "--", color="0.5", label="y = x")
        low, high = min(lo - 0.5, float(p.min()) - 0.2), max(hi + 0.5, float(p.max()) + 0.2)
        ax.set(xlim=(lo - 0.5, hi + 0.5), ylim=(low, high), xlabel="true score", ylabel="predicted score",
               title=f"{name} (n={int(present.sum())})")
        ax.legend(loc="upper left", fontsize=7)
        fig.tight_layout()
        paths[name] = os.path.join(out_dir, f"pred_vs_true_{name}.png")
        fig.savefig(paths[name])
        plt.close(fig)
    return paths


def plot_distributions(pred, target, attributes: Sequence[str], path: str, score_range=(0, 4)) -> str:
    """True-score and predicted-score histograms, one panel per attribute."""
    plt = _pyplot()
    lo, hi = score_range
    cols = len(attributes)
    fig, axes = plt.subplots(1, cols, figsize=(3.2 * cols, 3.0), dpi=100, squeeze=False)
    for j, (ax, name) in enumerate(zip(axes[0], attributes)):
        t = target[~np.isnan(target[:, j]), j]
        p = pred[:, j]
        low, high = min(lo - 0.5, float(p.min())), max(hi + 0.5, float(p.max()))
        ax.hist(t, bins=np.arange(lo - 0.5, hi + 1.0, 1.0), alpha=0.5, label="true")
        ax.hist(p, bins=np.linspace(low, high, 4 * (hi - lo + 1) + 1), histtype="step", linewidth=1.5,
                label="predicted")
        ax.set(title=name, xlabel="score", ylabel="rows" if j == 0 else None)
        ax.legend(fontsize=7)
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path)
    plt.close(fig)
    return path


def write_plots(result: Mapping, output_dir: str) -> dict:
    """Writes the plots under ``output_dir/plots``; returns their paths relative to ``output_dir``."""
    plots = os.path.join(output_dir, PLOTS_DIR)
    rng = tuple(result["score_range"])
    per_attribute = plot_pred_vs_true(result["pred"], result["target"], result["attributes"], plots, rng)
    dist = plot_distributions(result["pred"], result["target"], result["attributes"],
                              os.path.join(plots, "score_distributions.png"), rng)
    return {"pred_vs_true": {a: os.path.relpath(p, output_dir) for a, p in per_attribute.items()},
            "score_distributions": os.path.relpath(dist, output_dir)}


# ------------------------------------------------------------------------------------------------------ markdown
def _num(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def helpsteer2_markdown(result: Mapping, plots: Mapping | None, source: str) -> str:
    m = result["metrics"]
    lines = [f"Rows: {result['rows']} from `{source}` ({result['pairs']} response pairs); rows over "
             f"{result['max_length']} tokens (kept from the end, as in training): {result['truncated_rows']}.", "",
             "| Attribute | Labels | MSE | MAE | Pearson | Rounded acc. | Constant-predictor MSE |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for a in result["attributes"]:
        lines.append(f"| {a} | {m[f'{a}/count']} | {_num(m[f'{a}/mse'])} | {_num(m[f'{a}/mae'])} | "
                     f"{_num(m[f'{a}/pearson'])} | {_num(m[f'{a}/rounded_acc'])} | {_num(m[f'{a}/baseline_mse'])} |")
    lines.append(f"| all (pooled) | | {_num(m['mse'])} | | | | {_num(m['baseline_mse'])} |")
    lines += ["", "Pairwise accuracy (pairs whose true scores differ; a predicted tie counts as wrong):", ""]
    weights = ", ".join(f"{k} {v:g}" for k, v in result["reward_weights"].items())
    lines.append(f"- weighted reward ({weights}): {_num(m['pairwise_acc/reward'])} over {m['pairs/reward']} pairs")
    if "pairwise_acc/helpfulness" in m:
        lines.append(f"- helpfulness: {_num(m['pairwise_acc/helpfulness'])} over {m['pairs/helpfulness']} pairs")
    lo, hi = result["score_range"]
    header = "| true \\ predicted | " + " | ".join(str(v) for v in range(lo, hi + 1)) + " |"
    lines += ["", "### Confusion matrices", "",
              "Rows: true score; columns: prediction clipped to the score range and rounded half up.", ""]
    for a in result["attributes"]:
        lines += [f"**{a}**", "", header, "|---" * (hi - lo + 2) + "|"]
        for v, row in zip(range(lo, hi + 1), result["confusion"][a]):
            lines.append(f"| {v} | " + " | ".join(str(c) for c in row) + " |")
        lines.append("")
    if plots:
        lines += ["### Predicted vs. true", ""]
        for a in result["attributes"]:
            path = plots["pred_vs_true"].get(a)
            lines += [f"![{a}: predicted vs. true]({path})" if path else f"{a}: no labels, no plot.", ""]
        lines += ["### Score distributions", "", f"![score distributions]({plots['score_distributions']})"]
    return "\n".join(lines) + "\n"


def json_ready(result: Mapping) -> dict:
    """The result without its arrays, NaN as null (strict JSON)."""
    return strict_json({k: v for k, v in result.items() if not isinstance(v, np.ndarray)})
