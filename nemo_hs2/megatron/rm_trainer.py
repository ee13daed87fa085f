"""NeMo-Aligner's SupervisedTrainer with validation metrics over the whole validation set."""

from __future__ import annotations

import glob
import json
import math
import os

import torch
from nemo.collections.nlp.parts.utils_funcs import get_last_rank
from nemo_aligner.algorithms.supervised import SupervisedTrainer

from nemo_hs2.core.rank import is_main_rank
from nemo_hs2.core.metrics import (pairwise_metrics, preference_metrics, regression_metrics, strict_json,
                                   unpair_incomplete)
from nemo_hs2.core.reward_weights import resolve_weights


class RewardModelTrainer(SupervisedTrainer):
    """Replaces the per-batch mean of validation metrics by metrics computed once over every validation row."""

    def __init__(self, *args, reward_weights=None, score_range=(0.0, 4.0), **kwargs):
        super().__init__(*args, **kwargs)
        # None: the model's own (resolved against its attributes when it was built)
        self.reward_weights = self.model.reward_weights if reward_weights is None else reward_weights
        self.score_range = tuple(score_range)

    def run_validation(self):
        self.model.start_validation_collection()
        _, per_batch = super().run_validation()
        arrays = self.model.finish_validation_collection()
        metrics = None
        if arrays is not None:
            attributes = self.model.attributes
            metrics = regression_metrics(arrays["pred"], arrays["target"], attributes, self.score_range)
            weights = resolve_weights(self.reward_weights, attributes)
            pair_ids, cut = unpair_incomplete(arrays["pair_ids"])
            metrics.update(pairwise_metrics(arrays["pred"], arrays["target"], pair_ids, attributes, weights))
            metrics["pairs/cut_by_limit"] = cut
            metrics["rows"] = int(len(arrays["pred"]))
            if self.model.loss_name != "regression":
                metrics.update(preference_metrics(arrays, self.model.bt_weights.numpy(), self.model.bt_kind,
                                                  self.model.bt_ties))
        # Metrics exist on the last pipeline stage; every rank logs and returns the same dict.
        box = [metrics]
        torch.distributed.broadcast_object_list(box, src=get_last_rank())
        metrics = box[0]
        metrics["loss"] = self.model.combine_validation_loss(metrics)
        metrics["validation_step_time"] = per_batch.get("validation_step_time", math.nan)
        return metrics["loss"], metrics


class MetricsRecorder:
    """A logger for NeMo-Aligner's CustomLoggerWrapper that keeps the loss curve and validation history.

    With a ``path`` it rewrites ``metrics.json`` after every validation (validation precedes every checkpoint), so a
    killed run leaves the history of its last checkpoint, which a resumed run continues.
    """

    def __init__(self, path: str | None = None, extra: dict | None = None):
        self.path = path
        self.extra = dict(extra or {})
        self.train: list[dict] = []
        self.validation: list[dict] = []

    def resume_from(self, step: int) -> None:
        """Keep the history of a previous run up to the checkpoint at ``step``; later entries will be redone."""
        if not self.path:
            return
        # exp_manager moves a resumed run's files into run_<n>/: the newest copy holds the previous history.
        folder = os.path.dirname(self.path)
        candidates = [self.path, *sorted(glob.glob(os.path.join(folder, "run_*", os.path.basename(self.path))),
                                         key=os.path.getmtime, reverse=True)]
        found = [c for c in candidates if os.path.exists(c)]
        if not found:
            return
        with open(found[0]) as f:
            doc = json.load(f)
        self.train = [r for r in doc.get("train_history", []) if r["step"] < step]
        self.validation = [r for r in doc.get("validation_history", []) if r["step"] <= step]

    def log_metrics(self, metrics, step=None):
        row = {"step": step, **{k: float(v) for k, v in metrics.items()}}
        if any(k.startswith("val/") for k in metrics):
            self.validation.append({k.removeprefix("val/") if isinstance(k, str) else k: v for k, v in row.items()})
            if self.path:
                self.write()
        elif any(k.startswith("train/") for k in metrics):
            self.train.append({k.removeprefix("train/"): v for k, v in row.items()})

    def log_hyperparams(self, params):
        pass

    def write(self, path: str | None = None, extra: dict | None = None) -> None:
        path = path or self.path
        if not path or not is_main_rank():
            return
        extra = {**self.extra, **(extra or {})}
        final = self.validation[-1] if self.validation else {}
        doc = {**extra, "final_validation": final, "validation_history": self.validation,
               "loss_curve": [{"step": r["step"], "loss": r.get("loss")} for r in self.train],
               "train_history": self.train}
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump(strict_json(doc), f, indent=2)
        os.replace(tmp, path)
