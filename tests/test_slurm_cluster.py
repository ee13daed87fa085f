"""examples/slurm against a real SLURM (slurmctld + slurmd on this machine, ../shared/slurm), in host mode.

The cluster is started by .ci/run (or here, from the shared script, when we are root and it is not up). Where SLURM
cannot run at all the tests skip, except under CI, where they fail: CI must not pass without them.
"""

import json
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.conftest import ROOT

SUBMIT = ROOT / "examples" / "slurm" / "submit.sh"
START = ROOT.parent / "shared" / "slurm" / "start_local_slurm.sh"
STOP = ROOT.parent / "shared" / "slurm" / "stop_local_slurm.sh"
# The CPU demo at TP=2 over gloo, short: two ranks, a validation and a checkpoint every 4 steps.
RUN = ["trainer.devices=2", "model.tensor_model_parallel_size=2", "trainer.rm.max_steps=24",
       "trainer.rm.val_check_interval=4", "trainer.rm.save_interval=4"]
pytestmark = pytest.mark.slow


def _up() -> bool:
    try:
        out = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=20)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return out.returncode == 0 and any(s.strip("*") in ("idle", "mixed", "allocated") for s in out.stdout.split())


@pytest.fixture(scope="module")
def cluster():
    started = False
    if not _up() and START.is_file() and os.geteuid() == 0:
        subprocess.run(["bash", str(START)], capture_output=True, timeout=300)
        started = _up()
    if not _up():
        msg = "no SLURM cluster here and ../shared/slurm/start_local_slurm.sh could not start one"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    yield
    if started:
        subprocess.run(["bash", str(STOP)], capture_output=True, timeout=120)


def submit(results: Path, *overrides, check=True):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NEMO_HS2_"))}
    env["PYTHON"] = sys.executable
    proc = subprocess.run(["bash", str(SUBMIT), "--host", "--results", str(results), "--time", "00:30:00",
                           "--signal-lead", "5", *RUN, *overrides], env=env, cwd=results, capture_output=True,
                          text=True, timeout=180)
    if check:
        assert proc.returncode == 0, proc.stdout + proc.stderr
    job = re.search(r"Submitted batch job (\d+)", proc.stdout)
    return proc, (job.group(1) if job else None)


def job_info(job: str) -> dict:
    out = subprocess.run(["scontrol", "show", "job", job], capture_output=True, text=True).stdout
    return dict(re.findall(r"(\w+)=(\S*)", out))


def wait(job: str, done, timeout: float, what: str) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = job_info(job)
        if done(info):
            return info
        if info.get("JobState") in ("FAILED", "CANCELLED", "TIMEOUT", "NODE_FAIL", "OUT_OF_MEMORY"):
            break
        time.sleep(1)
    subprocess.run(["scancel", job])
    raise AssertionError(f"job {job}: waited for {what}; last state {job_info(job)}")


def finished(info):
    return info.get("JobState") == "COMPLETED"


def checkpoint_steps(log_dir: Path) -> set[int]:
    """Steps of the complete dist-ckpt checkpoints (NeMo marks one being written with a sibling ``*-unfinished``)."""
    ckpts = log_dir / "checkpoints"
    if not ckpts.is_dir():
        return set()
    names = {p.name for p in ckpts.iterdir()}
    return {int(m.group(1)) for name in names if not name.endswith("-unfinished") and f"{name}-unfinished" not in names
            for m in [re.search(r"step=(\d+)", name)] if m and (ckpts / name).is_dir()}


def final_validation(log_dir: Path) -> dict:
    final = json.loads((log_dir / "metrics.json").read_text())["final_validation"]
    return {k: v for k, v in final.items() if not k.endswith("_time")}  # timings are not results


@pytest.fixture(scope="module")
def reference(cluster, tmp_path_factory):
    """An uninterrupted TP=2 run: test 1 inspects it, the others compare their final metrics with it."""
    results = tmp_path_factory.mktemp("slurm_ref")
    t0 = time.monotonic()
    proc, job = submit(results)
    info = wait(job, finished, 900, "the run to finish")
    log_dir = results / "hs2_reward_model"
    return {"results": results, "job": job, "info": info, "submit": proc, "log_dir": log_dir,
            "out": (log_dir / "slurm" / f"slurm-{job}.out").read_text(errors="replace"), "wall_s": time.monotonic() - t0}


def test_submit_runs_two_ranks_that_see_what_the_script_meant(reference):
    log_dir, out, job = reference["log_dir"], reference["out"], reference["job"]
    assert "checks: OK" in reference["submit"].stdout  # the planner ran first
    assert (log_dir / "slurm" / "plan.json").is_file() and (log_dir / "metrics.json").is_file()
    assert list((log_dir / "checkpoints").glob("*.nemo"))
    port = 20000 + int(job) % 40000
    master = subprocess.run(["scontrol", "show", "hostnames", reference["info"]["NodeList"]],
                            capture_output=True, text=True).stdout.split()[0]
    for rank in (0, 1):
        assert f"[task {rank}/2 local {rank} node 0 on {master}] master {master}:{port}" in out, out[-3000:]
    summary = json.loads((log_dir / "metrics.json").read_text(errors="replace"))
    assert summary["layout"]["tp"] == 2 and summary["layout"]["world"] == 2
    assert "training finished" in out


def test_preemption_then_node_failure_requeue_and_resume_to_the_same_result(reference, tmp_path):
    """USR1 (what --signal sends) -> checkpoint, exit 75, the script requeues; then `scontrol requeue` of the running
    job (a node failure's equivalent) -> SLURM requeues it. Both resume and end where the uninterrupted run ended."""
    log_dir = tmp_path / "hs2_reward_model"
    _, job = submit(tmp_path)
    wait(job, lambda i: i.get("JobState") == "RUNNING" and checkpoint_steps(log_dir), 600, "a first checkpoint")
    subprocess.run(["scancel", "--signal=USR1", job], check=True)
    wait(job, lambda i: i.get("Restarts") == "1" and i.get("JobState") == "RUNNING", 600, "the requeued run")
    before = max(checkpoint_steps(log_dir))
    wait(job, lambda i: max(checkpoint_steps(log_dir), default=0) > before, 600, "a checkpoint after the resume")
    subprocess.run(["scontrol", "requeue", job], check=True)
    info = wait(job, lambda i: finished(i) and i.get("Restarts") == "2", 900, "the second requeue to finish")

    out = (log_dir / "slurm" / f"slurm-{job}.out").read_text(errors="replace")
    for restart in (0, 1, 2):  # --open-mode=append: every run's output is kept
        assert f"(restart {restart}, host mode)" in out, out[-3000:]
    assert "training checkpointed on a pre-emption / time-limit signal, or lost a rank (exit 75)" in out
    assert info["ExitCode"].startswith("0:")
    assert final_validation(log_dir) == final_validation(reference["log_dir"])


def test_planner_failure_submits_nothing(cluster, tmp_path):
    jobs_before = subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split()
    proc, job = submit(tmp_path, "model.tensor_model_parallel_size=3", "name=refused_by_planner", check=False)
    assert proc.returncode != 0 and job is None
    assert "the planner refused this config" in proc.stderr and "nothing was submitted" in proc.stderr
    assert "tensor_model_parallel_size" in proc.stdout + proc.stderr  # the rule it broke is named
    assert subprocess.run(["squeue", "-h", "-o", "%i"], capture_output=True, text=True).stdout.split() == jobs_before
    assert not (tmp_path / "refused_by_planner").exists()
