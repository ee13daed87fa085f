"""Plan a training run before queuing it: layout, divisibility, parameters, per-GPU memory, step time.

    python examples/plan.py [same overrides as examples/train_reward_model.py] [plan.KEY=VALUE ...]
    python examples/plan.py +recipe=hs2_llama3_70b
    python examples/plan.py +recipe=hs2_nemotron4_340b plan.format=json
    python examples/plan.py model=llama3_70b trainer=gpu trainer.num_nodes=4 model.pipeline_model_parallel_size=4 \
        trainer.rm.max_steps=300 plan.gpu_memory_gb=141

Planner options: plan.KEY=VALUE (with or without `+`), listed with their defaults by --help.
Parameter counts are printed even when the layout breaks a rule (they do not depend on it).
Exit status: 0 the config passes every rule, 1 it breaks one (listed), 2 the overrides do not compose or a plan
option is unknown or out of range.
Needs only hydra-core and omegaconf (no torch / NeMo): it runs on a login node in about a second.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from nemo_hs2.core.resolvers import register_resolvers  # noqa: E402
from nemo_hs2.plan import PlanOptions, format_table, make_plan, split_plan_overrides  # noqa: E402


def compose(overrides: list[str], config_name: str = "train_reward_model"):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir
    from omegaconf import open_dict

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = hydra_compose(config_name=config_name, overrides=overrides, return_hydra_config=True)
    choices = {k: v for k, v in cfg.hydra.runtime.choices.items() if not k.startswith("hydra")}
    with open_dict(cfg):
        del cfg["hydra"]
    return cfg, choices


def main(argv: list[str]) -> int:
    if any(a in ("-h", "--help") for a in argv):
        print(__doc__ + "\nPlanner options (plan.KEY=VALUE, default, meaning):\n" + PlanOptions.describe())
        return 0
    config_name = "train_reward_model"
    args = list(argv)
    for flag in ("--config-name", "-cn"):
        if flag in args:
            i = args.index(flag)
            config_name = args[i + 1]
            del args[i:i + 2]
    opts, overrides = split_plan_overrides(args)
    try:
        cfg, choices = compose(overrides, config_name)
    except Exception as e:  # Hydra / OmegaConf composition errors
        print(f"plan: cannot compose the config: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    try:
        options = PlanOptions.from_config(cfg, opts)
    except ValueError as e:  # an unknown plan.KEY, or a value it does not take
        print(f"plan: {e}", file=sys.stderr)
        return 2
    plan = make_plan(cfg, options, choices=choices)
    doc = plan.to_dict()
    if options.json_out:
        Path(options.json_out).write_text(json.dumps(doc, indent=2, default=str) + "\n")
    if options.format == "json":
        print(json.dumps(doc, indent=2, default=str))
    else:
        print(format_table(plan))
    return 0 if plan.ok else 1


if __name__ == "__main__":
    try:
        sys.exit(main(sys.argv[1:]))
    except BrokenPipeError:  # e.g. `| head`
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(0)
