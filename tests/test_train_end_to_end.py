"""The real entry point, end to end on CPU: the default demo, and TP=2 / PP=2 under torchrun."""

import json
import math
import os
import subprocess
import sys

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SCRIPT = os.path.join(ROOT, "examples", "train_reward_model.py")
SHORT = ["trainer.rm.max_steps=6", "trainer.rm.val_check_interval=3", "trainer.rm.save_interval=6",
         "data.demo.train_prompts=64", "data.demo.validation_prompts=12"]


def run(cmd, log_dir):
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.run([*cmd, f"exp_manager.explicit_log_dir={log_dir}"], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{cmd} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}"
    return json.loads((log_dir / "metrics.json").read_text())


def check(metrics, log_dir, steps):
    assert metrics["steps"] == steps
    assert [r["step"] for r in metrics["loss_curve"]] == list(range(steps))
    assert all(math.isfinite(r["loss"]) for r in metrics["loss_curve"])
    final = metrics["final_validation"]
    assert final["rows"] == 24  # every validation row exactly once (12 prompts x 2), none dropped or padded in
    for a in metrics["attributes"]:
        assert math.isfinite(final[f"{a}/mse"]) and final[f"{a}/count"] > 0
    assert (log_dir / "checkpoints" / "hs2_reward_model.nemo").is_file()
    assert any(p.name.endswith("-last") for p in (log_dir / "checkpoints").iterdir())


def test_default_demo_run(tmp_path):
    metrics = run([sys.executable, SCRIPT, *SHORT], tmp_path)
    check(metrics, tmp_path, 6)
    assert metrics["layout"] == {"world": 1, "tp": 1, "pp": 1, "dp": 1, "num_microbatches": 4}
    assert metrics["data"]["train"]["used"] == 128


@pytest.mark.parametrize("parallel", ["model.tensor_model_parallel_size=2", "model.pipeline_model_parallel_size=2"])
def test_two_process_runs(tmp_path, parallel):
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_port",
           str(29100 + len(parallel)), SCRIPT, "trainer.devices=2", parallel, *SHORT]
    metrics = run(cmd, tmp_path)
    check(metrics, tmp_path, 6)
    assert metrics["layout"]["world"] == 2 and metrics["layout"]["dp"] == 1
