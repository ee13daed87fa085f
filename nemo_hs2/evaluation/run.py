"""``examples/evaluate_reward_model.py``: one checkpoint (or Hugging Face export) on every benchmark the config names.

Each benchmark is a ``Task``: read and check its input (before the model is built, so a wrong path or a bad row fails
in seconds), score it, write its files, and give a section of ``report.md``. Every rank of a model-parallel launch
scores the same rows; rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import time
from collections.abc import Callable

from omegaconf import DictConfig, OmegaConf

from nemo_hs2.core.rank import is_main_rank
from nemo_hs2.evaluation import outputs as out
from nemo_hs2.evaluation import preference as pref
from nemo_hs2.evaluation import report
from nemo_hs2.evaluation import rewardbench as rb
from nemo_hs2.evaluation import rewardbench2 as rb2

log = logging.getLogger(__name__)


def reward_weights(model, spec=None):
    """The weights a config asks for, or (null) the ones the checkpoint trained and validated with."""
    if spec is None:
        return None  # RewardScorer then uses the checkpoint's own
    return OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec


def make_scorer(model, cfg):
    from nemo_hs2.megatron.scorer import RewardScorer

    return RewardScorer(model, weights=reward_weights(model, cfg.get("reward_weights")),
                        batch_size=int(cfg.get("batch_size") or 8), max_length=cfg.get("max_length"))


def hf_scorer(cfg):
    """A scorer over an exported Hugging Face directory (``hf_model=D``, examples/export_hf.py): the stock class."""
    from nemo_hs2.hf.scorer import HFRewardScorer

    return HFRewardScorer(str(cfg.hf_model), batch_size=int(cfg.get("batch_size") or 8),
                          max_length=cfg.get("max_length"), weights=reward_weights(None, cfg.get("reward_weights")))


def load_model(cfg):
    from nemo_hs2.megatron.loading import load_reward_model

    return load_reward_model(cfg.checkpoint, cfg.get("trainer"), cfg.get("model"), cfg.get("head_layout"))


# ------------------------------------------------------------------------------------------------ the benchmarks
@dataclasses.dataclass
class Task:
    key: str  # the config section
    title: str
    files: tuple[str, ...]  # written into output_dir
    read: Callable  # (section cfg, attributes) -> rows
    evaluate: Callable  # (scorer, rows, progress) -> (summary, records)
    markdown: Callable  # (summary, source) -> str
    headline: Callable  # summary -> the numbers printed and returned


def _hs2_read(section, attributes):
    from nemo_hs2.data.sources import read_examples

    examples, skipped = read_examples(str(section.file), attributes(), tuple(section.get("score_range", (0, 4))),
                                      section.get("on_bad_row", "error"))
    log.info(f"HelpSteer2: {len(examples)} rows from {section.file}, skipped {dict(skipped)}")
    return examples, tuple(section.get("score_range", (0, 4))), bool(section.get("plots", True))


def _hs2_evaluate(scorer, loaded, progress):
    examples, score_range, plots = loaded
    result = report.evaluate_helpsteer2(scorer, examples, score_range, progress)
    records = [{"line": e.line, "pair_id": e.pair_id, "reward": float(r),
                "pred": dict(zip(result["attributes"], p.tolist())),
                "target": {a: e.labels.get(a) for a in result["attributes"]}}
               for e, p, r in zip(examples, result["pred"], result["reward"])]
    return {**result, "want_plots": plots}, records


def _hs2_headline(result):
    m = result["metrics"]
    return {"rows": result["rows"], "mse": m["mse"], "baseline_mse": m["baseline_mse"],
            "pairwise_acc/reward": m["pairwise_acc/reward"]}


def _hub_rows(module, section):
    rows = module.read_rows(str(section.file), section.get("dataset", module.HUB_DATASET),
                            section.get("split", module.HUB_SPLIT))
    log.info(f"{module.__name__}: {len(rows)} rows from {section.file}")
    return rows


def _preference_headline(summary):
    m = summary["metrics"]
    return {k: m[k] for k in ("pairs", "ties", "preference_pairs", "preference_acc", "bt_loss")}


TASKS = (
    Task("rewardbench", "RewardBench", ("rewardbench.json", "rewardbench.md", "rewardbench_scores.jsonl"),
         lambda s, a: (_hub_rows(rb, s), float(s.get("prior_weight") or 0.0)),
         lambda sc, rows, p: rb.evaluate(sc, rows[0], progress=p, prior_weight=rows[1]),
         lambda s, src: f"Source: `{src}`. {rb.describe(s)}\n\n{rb.markdown(s)}",
         lambda s: {"overall": s["overall"], "sections": s["sections"], "rows": s["rows"]}),
    Task("rewardbench2", "RewardBench 2", ("rewardbench2.json", "rewardbench2.md", "rewardbench2_scores.jsonl"),
         lambda s, a: _hub_rows(rb2, s), lambda sc, rows, p: rb2.evaluate(sc, rows, progress=p),
         lambda s, src: f"Source: `{src}`. {rb2.describe(s)}\n\n{rb2.markdown(s)}",
         lambda s: {"overall": s["overall"], "subsets": s["subset_scores"], "rows": s["rows"]}),
    Task("helpsteer2", "HelpSteer2 validation", ("helpsteer2.json", "helpsteer2_predictions.jsonl"),
         _hs2_read, _hs2_evaluate, lambda s, src: report.helpsteer2_markdown(s, s.get("plots"), src), _hs2_headline),
    Task("helpsteer2_preference", "HelpSteer2-Preference",
         ("helpsteer2_preference.json", "helpsteer2_preference_scores.jsonl"),
         lambda s, a: pref.read_helpsteer2_preference(str(s.file), str(s.get("split", "val")),
                                                      s.get("on_bad_row", "error")),
         lambda sc, pairs, p: pref.evaluate(sc, pairs, "HelpSteer2-Preference", p),
         lambda s, src: f"Source: `{src}`.\n\n{pref.markdown(s)}", _preference_headline),
    Task("helpsteer3", "HelpSteer3-Preference", ("helpsteer3.json", "helpsteer3_scores.jsonl"),
         lambda s, a: pref.read_helpsteer3(str(s.file), s.get("domains"), s.get("languages"),
                                           s.get("on_bad_row", "error")),
         lambda sc, pairs, p: pref.evaluate(sc, pairs, "HelpSteer3", p),
         lambda s, src: f"Source: `{src}`.\n\n{pref.markdown(s)}", _preference_headline),
)


def _attributes(cfg, model, scorer):
    """The attribute names the model predicts, known before it is loaded (HelpSteer2 labels are read by them)."""
    if scorer is not None:
        if scorer.head != "attributes":
            raise ValueError(f"helpsteer2.file needs per-attribute outputs: hf_model={cfg.hf_model} was exported "
                             "with export.head=reward")
        return list(scorer.attributes)
    if model is not None:
        return list(model.attributes)
    from nemo_hs2.megatron.loading import checkpoint_config

    wanted = ((cfg.get("model") or {}).get("regression") or {}).get("attributes")
    return list(checkpoint_config(cfg.checkpoint, cfg.get("head_layout"), wanted).regression.attributes)


def _check_request(cfg, asked) -> str:
    if not asked:
        raise ValueError("nothing to evaluate: give one or more of " + ", ".join(
            f"{t.key}.file=PATH" for t in TASKS) + " (rewardbench / rewardbench2 also take =hub)")
    if not cfg.get("output_dir"):
        raise ValueError("output_dir is required")
    if bool(cfg.get("checkpoint")) == bool(cfg.get("hf_model")):
        raise ValueError("give exactly one of checkpoint=RM.nemo and hf_model=DIR (an examples/export_hf.py export)")
    output_dir = str(cfg.output_dir)
    out.check_outputs([os.path.join(output_dir, f) for t in TASKS for f in (*t.files, "report.md")],
                      [cfg[t.key].file for t in asked])
    return output_dir


def _write(task: Task, output_dir: str, label: str, summary: dict, records: list, save_scores: bool) -> list[str]:
    source = str(summary["source"])
    if task.key == "helpsteer2":
        written = []
        if summary.pop("want_plots"):
            summary["plots"] = report.write_plots(summary, output_dir)
            written += [os.path.join(output_dir, p) for p in
                        [*summary["plots"]["pred_vs_true"].values(), summary["plots"]["score_distributions"]]]
        return written + [out.write_json(os.path.join(output_dir, task.files[0]), report.json_ready(summary)),
                          out.write_jsonl(os.path.join(output_dir, task.files[1]), records)]
    written = [out.write_json(os.path.join(output_dir, task.files[0]), summary)]
    if task.files[1].endswith(".md"):
        written.append(out.write_text(os.path.join(output_dir, task.files[1]),
                                      f"# {task.title}: `{label}`\n\n{task.markdown(summary, source)}\n"))
    if save_scores:
        written.append(out.write_jsonl(os.path.join(output_dir, task.files[-1]), records))
    return written


def run(cfg, model=None) -> dict:
    """Evaluate; returns what was written (paths and headline numbers). ``model``: an already loaded one."""
    started = time.time()
    asked = [t for t in TASKS if (cfg.get(t.key) or {}).get("file")]
    output_dir = _check_request(cfg, asked)
    label = str(cfg.get("checkpoint") or cfg.hf_model)
    scorer = hf_scorer(cfg) if cfg.get("hf_model") else None
    inputs = {t.key: t.read(cfg[t.key], lambda: _attributes(cfg, model, scorer)) for t in asked}
    if scorer is None:
        scorer = make_scorer(load_model(cfg) if model is None else model, cfg)
    main = is_main_rank()
    progress = bool(cfg.get("progress", True)) and main
    summary = {"checkpoint": label, "output_dir": output_dir, "files": []}
    sections = [f"# Reward model evaluation\n\nCheckpoint: `{label}`\n"]
    for task in asked:
        result, records = task.evaluate(scorer, inputs[task.key], progress)
        result = {"checkpoint": label, "source": str(cfg[task.key].file), **result}
        if main:
            summary["files"] += _write(task, output_dir, label, result, records,
                                       bool(cfg[task.key].get("save_scores", True)))
        sections.append(f"## {task.title}\n\n{task.markdown(result, result['source'])}\n")
        summary[task.key] = task.headline(result)
    if main:
        summary["files"].append(out.write_text(os.path.join(output_dir, "report.md"), "\n".join(sections)))
    summary["wall_time_s"] = round(time.time() - started, 1)
    return summary
