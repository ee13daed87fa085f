"""``examples/evaluate_reward_model.py``: RewardBench and/or a HelpSteer2 report for one checkpoint.

Inputs are read and checked before the model is built, so a wrong path or a bad row fails in seconds. Every rank
of a model-parallel launch scores the same rows; rank 0 writes.
"""

from __future__ import annotations

import logging
import os
import time

from omegaconf import DictConfig, OmegaConf

from nemo_hs2.evaluation import outputs as out
from nemo_hs2.evaluation import rewardbench as rb
from nemo_hs2.evaluation import report

log = logging.getLogger(__name__)

RESULT_FILES = ("rewardbench.json", "rewardbench.md", "rewardbench_scores.jsonl", "helpsteer2.json",
                "helpsteer2_predictions.jsonl", "report.md")


def reward_weights(model, spec=None):
    """The weights a config asks for, or (null) the ones the checkpoint trained and validated with."""
    if spec is None:
        spec = model.cfg.regression.get("reward_weights") or "nemotron_340b"
    return OmegaConf.to_container(spec, resolve=True) if isinstance(spec, DictConfig) else spec


def make_scorer(model, cfg):
    from nemo_hs2.inference import RewardScorer

    return RewardScorer(model, weights=reward_weights(model, cfg.get("reward_weights")),
                        batch_size=int(cfg.get("batch_size") or 8), max_length=cfg.get("max_length"))


def load_model(cfg):
    from nemo_hs2.models.loading import load_reward_model

    return load_reward_model(cfg.checkpoint, cfg.get("trainer"), cfg.get("model"), cfg.get("head_layout"))


def _main_rank() -> bool:
    from nemo_hs2.models.loading import is_main_rank

    return is_main_rank()


def run(cfg, model=None) -> dict:
    """Evaluate; returns what was written (paths and headline numbers). ``model``: an already loaded one."""
    started = time.time()
    rb_file = (cfg.get("rewardbench") or {}).get("file")
    hs2_cfg = cfg.get("helpsteer2") or {}
    hs2_file = hs2_cfg.get("file")
    if not rb_file and not hs2_file:
        raise ValueError("nothing to evaluate: give rewardbench.file=PATH (or rewardbench.file=hub) and/or "
                         "helpsteer2.file=PATH")
    if not cfg.get("output_dir"):
        raise ValueError("output_dir is required")
    output_dir = str(cfg.output_dir)
    out.check_outputs([os.path.join(output_dir, f) for f in RESULT_FILES], [rb_file, hs2_file])

    rows = examples = None
    if rb_file:
        rows = rb.read_rows(str(rb_file), cfg.rewardbench.get("dataset", rb.HUB_DATASET),
                            cfg.rewardbench.get("split", rb.HUB_SPLIT))
        log.info(f"RewardBench: {len(rows)} rows from {rb_file}")
    if hs2_file:
        from nemo_hs2.data.sources import read_examples
        from nemo_hs2.models.loading import checkpoint_config

        wanted = ((cfg.get("model") or {}).get("regression") or {}).get("attributes")
        attributes = list(checkpoint_config(cfg.checkpoint, cfg.get("head_layout"), wanted).regression.attributes) \
            if model is None else list(model.attributes)
        examples, skipped = read_examples(str(hs2_file), attributes, tuple(hs2_cfg.get("score_range", (0, 4))),
                                          hs2_cfg.get("on_bad_row", "error"))
        log.info(f"HelpSteer2: {len(examples)} rows from {hs2_file}, skipped {dict(skipped)}")

    if model is None:
        model = load_model(cfg)
    scorer = make_scorer(model, cfg)
    main = _main_rank()
    progress = bool(cfg.get("progress", True)) and main
    summary = {"checkpoint": str(cfg.checkpoint), "output_dir": output_dir, "files": []}
    rb_summary = hs2 = plots = None
    written = []

    if rows is not None:
        rb_summary, records = rb.evaluate(scorer, rows, progress=progress)
        rb_summary = {"checkpoint": str(cfg.checkpoint), "source": str(rb_file), **rb_summary}
        if main:
            written.append(out.write_json(os.path.join(output_dir, "rewardbench.json"), rb_summary))
            written.append(out.write_text(os.path.join(output_dir, "rewardbench.md"),
                                          f"# RewardBench: `{cfg.checkpoint}`\n\n{rb.describe(rb_summary)}\n\n"
                                          + rb.markdown(rb_summary)))
            if cfg.rewardbench.get("save_scores", True):
                written.append(out.write_jsonl(os.path.join(output_dir, "rewardbench_scores.jsonl"), records))
        summary["rewardbench"] = {"overall": rb_summary["overall"], "sections": rb_summary["sections"],
                                  "rows": rb_summary["rows"]}

    if examples is not None:
        hs2 = report.evaluate_helpsteer2(scorer, examples, tuple(hs2_cfg.get("score_range", (0, 4))), progress)
        if main:
            if hs2_cfg.get("plots", True):
                plots = report.write_plots(hs2, output_dir)
                written += [os.path.join(output_dir, p) for p in
                            [*plots["pred_vs_true"].values(), plots["score_distributions"]]]
            written.append(out.write_json(os.path.join(output_dir, "helpsteer2.json"),
                                          {"checkpoint": str(cfg.checkpoint), "source": str(hs2_file),
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
            str(cfg.checkpoint), rb_summary, str(rb_file) if rb_file else None, hs2,
            str(hs2_file) if hs2_file else None, plots)))
    summary["files"] = written
    summary["wall_time_s"] = round(time.time() - started, 1)
    return summary
