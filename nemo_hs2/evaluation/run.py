"""``examples/evaluate_reward_model.py``: RewardBench and/or a HelpSteer2 report for one checkpoint.

Inputs are read and checked before the model is built, so a wrong path or a bad row fails in seconds. Every rank
of a model-parallel launch scores the same rows; rank 0 writes.
"""

from __future__ import annotations

import logging
import os
import time

from omegaconf import DictConfig, OmegaConf

from nemo_hs2.core.rank import is_main_rank
from nemo_hs2.evaluation import outputs as out
from nemo_hs2.evaluation import rewardbench as rb
from nemo_hs2.evaluation import rewardbench2 as rb2
from nemo_hs2.evaluation import report

log = logging.getLogger(__name__)

RESULT_FILES = ("rewardbench.json", "rewardbench.md", "rewardbench_scores.jsonl", "helpsteer2.json",
                "helpsteer2_predictions.jsonl", "report.md",
                "rewardbench2.json", "rewardbench2.md", "rewardbench2_scores.jsonl")


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


def run(cfg, model=None) -> dict:
    """Evaluate; returns what was written (paths and headline numbers). ``model``: an already loaded one."""
    started = time.time()
    rb_file = (cfg.get("rewardbench") or {}).get("file")
    rb2_cfg = cfg.get("rewardbench2") or {}
    rb2_file = rb2_cfg.get("file")
    hs2_cfg = cfg.get("helpsteer2") or {}
    hs2_file = hs2_cfg.get("file")
    if not rb_file and not rb2_file and not hs2_file:
        raise ValueError("nothing to evaluate: give rewardbench.file=PATH (or rewardbench.file=hub), "
                         "rewardbench2.file=PATH (or hub) and/or helpsteer2.file=PATH")
    if not cfg.get("output_dir"):
        raise ValueError("output_dir is required")
    output_dir = str(cfg.output_dir)
    out.check_outputs([os.path.join(output_dir, f) for f in RESULT_FILES], [rb_file, rb2_file, hs2_file])
    if bool(cfg.get("checkpoint")) == bool(cfg.get("hf_model")):
        raise ValueError("give exactly one of checkpoint=RM.nemo and hf_model=DIR (an examples/export_hf.py export)")
    label = str(cfg.get("checkpoint") or cfg.hf_model)
    scorer = hf_scorer(cfg) if cfg.get("hf_model") else None

    rows = rows2 = examples = None
    if rb_file:
        rows = rb.read_rows(str(rb_file), cfg.rewardbench.get("dataset", rb.HUB_DATASET),
                            cfg.rewardbench.get("split", rb.HUB_SPLIT))
        log.info(f"RewardBench: {len(rows)} rows from {rb_file}")
    if rb2_file:
        rows2 = rb2.read_rows(str(rb2_file), rb2_cfg.get("dataset", rb2.HUB_DATASET),
                              rb2_cfg.get("split", rb2.HUB_SPLIT))
        log.info(f"RewardBench 2: {len(rows2)} rows from {rb2_file}")
    if hs2_file:
        from nemo_hs2.data.sources import read_examples
        from nemo_hs2.megatron.loading import checkpoint_config

        if scorer is not None:
            if scorer.head != "attributes":
                raise ValueError(f"helpsteer2.file needs per-attribute outputs: hf_model={cfg.hf_model} was exported "
                                 "with export.head=reward")
            attributes = list(scorer.attributes)
        else:
            wanted = ((cfg.get("model") or {}).get("regression") or {}).get("attributes")
            attributes = list(checkpoint_config(cfg.checkpoint, cfg.get("head_layout"), wanted).regression.attributes) \
                if model is None else list(model.attributes)
        examples, skipped = read_examples(str(hs2_file), attributes, tuple(hs2_cfg.get("score_range", (0, 4))),
                                          hs2_cfg.get("on_bad_row", "error"))
        log.info(f"HelpSteer2: {len(examples)} rows from {hs2_file}, skipped {dict(skipped)}")

    if scorer is None:
        scorer = make_scorer(load_model(cfg) if model is None else model, cfg)
    main = is_main_rank()
    progress = bool(cfg.get("progress", True)) and main
    summary = {"checkpoint": label, "output_dir": output_dir, "files": []}
    rb_summary = rb2_summary = hs2 = plots = None
    written = []

    if rows is not None:
        rb_summary, records = rb.evaluate(scorer, rows, progress=progress,
                                          prior_weight=float(cfg.rewardbench.get("prior_weight") or 0.0))
        rb_summary = {"checkpoint": label, "source": str(rb_file), **rb_summary}
        if main:
            written.append(out.write_json(os.path.join(output_dir, "rewardbench.json"), rb_summary))
            written.append(out.write_text(os.path.join(output_dir, "rewardbench.md"),
                                          f"# RewardBench: `{label}`\n\n{rb.describe(rb_summary)}\n\n"
                                          + rb.markdown(rb_summary)))
            if cfg.rewardbench.get("save_scores", True):
                written.append(out.write_jsonl(os.path.join(output_dir, "rewardbench_scores.jsonl"), records))
        summary["rewardbench"] = {"overall": rb_summary["overall"], "sections": rb_summary["sections"],
                                  "rows": rb_summary["rows"]}

    if rows2 is not None:
        rb2_summary, records2 = rb2.evaluate(scorer, rows2, progress=progress)
        rb2_summary = {"checkpoint": label, "source": str(rb2_file), **rb2_summary}
        if main:
            written.append(out.write_json(os.path.join(output_dir, "rewardbench2.json"), rb2_summary))
            written.append(out.write_text(os.path.join(output_dir, "rewardbench2.md"),
                                          f"# RewardBench 2: `{label}`\n\n{rb2.describe(rb2_summary)}\n\n"
                                          + rb2.markdown(rb2_summary)))
            if rb2_cfg.get("save_scores", True):
                written.append(out.write_jsonl(os.path.join(output_dir, "rewardbench2_scores.jsonl"), records2))
        summary["rewardbench2"] = {"overall": rb2_summary["overall"], "subsets": rb2_summary["subset_scores"],
                                   "rows": rb2_summary["rows"]}

    if examples is not None:
        hs2 = report.evaluate_helpsteer2(scorer, examples, tuple(hs2_cfg.get("score_range", (0, 4))), progress)
        if main:
            if hs2_cfg.get("plots", True):
                plots = report.write_plots(hs2, output_dir)
                written += [os.path.join(output_dir, p) for p in
                            [*plots["pred_vs_true"].values(), plots["score_distributions"]]]
            written.append(out.write_json(os.path.join(output_dir, "helpsteer2.json"),
                                          {"checkpoint": label, "source": str(hs2_file),
                                           **report.json_ready(hs2), "plots": plots}))
            preds = [{"line": e.line, "pair_id": e.pair_id, "reward": float(r),
                      "pred": dict(zip(hs2["attributes"], p.tolist())),
                      "target": {a: e.labels.get(a) for a in hs2["attributes"]}}
                     for e, p, r in zip(examples, hs2["pred"], hs2["reward"])]
            written.append(out.write_jsonl(os.path.join(output_dir, "helpsteer2_predictions.jsonl"), preds))
        m = hs2["metrics"]
        summary["helpsteer2"] = {"rows": hs2["rows"], "mse": m["mse"], "baseline_mse": m["baseline_mse"],
                                 "pairwise_acc/reward": m["pairwise_acc/reward"]}

    if main:
        written.append(out.write_text(os.path.join(output_dir, "report.md"), report.report_markdown(
            label, rb_summary, str(rb_file) if rb_file else None, hs2,
            str(hs2_file) if hs2_file else None, plots, rb2_summary, str(rb2_file) if rb2_file else None)))
    summary["files"] = written
    summary["wall_time_s"] = round(time.time() - started, 1)
    return summary
