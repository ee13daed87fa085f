"""What a training run prints around it: the header (what runs) and the closing summary (how it went, where it is)."""

from __future__ import annotations

import os

from nemo_hs2.cli.console import summary



def run_header(cfg, choices: dict | None = None) -> str:
    """What runs: the config groups, the layout, the schedule and where the results go."""
    groups = " ".join(f"{k}={v}" for k, v in (choices or {}).items() if not k.startswith("hydra"))
    m, rm = cfg.model, cfg.trainer.rm
    world = int(cfg.trainer.num_nodes) * int(cfg.trainer.devices)
    tp, pp = int(m.tensor_model_parallel_size), int(m.pipeline_model_parallel_size)
    dp = world // (tp * pp) if tp * pp and world % (tp * pp) == 0 else "?"
    return "\n".join([
        f"nemo_hs2: training {groups}".rstrip(),
        f"  layout  {world} process(es) = TP {tp} x PP {pp} x DP {dp} on {cfg.trainer.accelerator}, precision "
        f"{cfg.trainer.precision}",
        f"  steps   up to {rm.max_steps} ({rm.max_epochs} epoch(s) max), global batch {m.global_batch_size}, "
        f"micro-batch {m.micro_batch_size}; validation every {rm.val_check_interval} steps",
        f"  output  {cfg.exp_manager.explicit_log_dir}",
    ])


def _fmt(x) -> str:
    return "-" if x is None or x != x else f"{x:.3f}"


def run_summary(result: dict) -> str:
    """The final validation against the constant predictor, and where metrics.json and the checkpoints are."""
    final = result.get("final_validation") or {}
    lines = []
    if final:
        lines.append(f"final validation (step {int(final.get('step', 0))}, {int(final.get('rows', 0))} rows)")
        lines.append(f"  {'attribute':<14}{'MSE':>8}{'constant':>10}{'Pearson':>9}")
        for a in result.get("attributes", []):
            lines.append(f"  {a:<14}{_fmt(final.get(f'{a}/mse')):>8}{_fmt(final.get(f'{a}/baseline_mse')):>10}"
                         f"{_fmt(final.get(f'{a}/pearson')):>9}")
        lines.append(f"  {'all':<14}{_fmt(final.get('mse')):>8}{_fmt(final.get('baseline_mse')):>10}")
        if "pairwise_acc/reward" in final:
            lines.append(f"  pairwise accuracy of the reward: {_fmt(final['pairwise_acc/reward'])} over "
                         f"{int(final.get('pairs/reward', 0))} response pairs")
        if "preference_acc" in final:
            lines.append(f"  preference accuracy: {_fmt(final['preference_acc'])}")
        lines.append("  (constant: the MSE of always predicting the attribute's mean score)")
    path = result.get("metrics_path")
    if path:
        folder = os.path.dirname(path)
        ckpt = os.path.join(folder, "checkpoints")
        nemo = sorted(f for f in os.listdir(ckpt) if f.endswith(".nemo")) if os.path.isdir(ckpt) else []
        lines.append(f"metrics      {path}")
        lines.append(f"checkpoints  {ckpt}" + (f" ({', '.join(nemo)} and dist-ckpt directories)" if nemo else ""))
    if result.get("skipped_steps"):
        lines.append(f"skipped {result['skipped_steps']} step(s) whose global batch had nothing to learn (e.g. only "
                     "tie pairs): no update for them")
    if result.get("preempted"):
        lines.append("stopped early (pre-empted): run the same command again to resume")
    note = summary()
    if note:
        lines.append(note)
    return "\n".join(lines)
