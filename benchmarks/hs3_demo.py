"""The HelpSteer3-format demo run of README "HelpSteer3-Preference", as its commands, and what it ends with.

    .venv/bin/python benchmarks/hs3_demo.py [--prompts 256] [--steps 64] [--workdir DIR]

Writes the demo pairs (``python -m nemo_hs2.data.helpsteer3``), trains scaled BT through
``examples/train_reward_model.py`` and prints the final validation BT loss, preference accuracy over the non-tie
validation pairs, the wall time and the machine's load average. NOT HelpSteer3: the demo generator's pairs.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--prompts", type=int, default=256)
    p.add_argument("--steps", type=int, default=64)
    p.add_argument("--workdir", default=None)
    args = p.parse_args(argv)
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hs3_demo_"))
    data = work / "hs3_demo"
    subprocess.run([sys.executable, "-m", "nemo_hs2.data.helpsteer3", str(data), str(args.prompts)], check=True,
                   cwd=ROOT)
    started = time.time()
    subprocess.run([sys.executable, str(ROOT / "examples" / "train_reward_model.py"), "data=helpsteer3_preference",
                    "model.regression.loss_func=scaled_bt", f"data.train_file={data / 'train.jsonl'}",
                    f"data.validation_file={data / 'validation.jsonl'}", "data.attributes=[helpfulness]",
                    "model.regression.reward_weights=helpfulness_only", f"trainer.rm.max_steps={args.steps}",
                    f"trainer.rm.val_check_interval={args.steps}", f"trainer.rm.save_interval={args.steps}",
                    f"exp_manager.explicit_log_dir={work / 'run'}"], check=True, cwd=ROOT,
                   stdout=subprocess.DEVNULL)
    final = json.loads((work / "run" / "metrics.json").read_text())["final_validation"]
    result = {"steps": args.steps, "validation_bt_loss": round(final["bt_loss"], 4),
              "preference_acc": final["preference_acc"], "preference_pairs": final["preference_pairs"],
              "wall_s": round(time.time() - started, 1), "loadavg": os.getloadavg()[0]}
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
