"""examples/slurm on a real two-node SLURM, in host mode: scripts/slurm/start_two_node_slurm.sh runs slurmctld and two
slurmd, each in its own network namespace with its own address and hostname (hs2n1, hs2n2), on one machine.

TP=2 and PP=2 with one task per node, each compared with the same layout on one node of the same cluster; then a
two-node job pre-empted (USR1 to every task), requeued and resumed, then one node lost mid-run (every process in its
namespace SIGKILLed: slurmd, slurmstepd, the task) and brought back: it ends with the uninterrupted run's numbers and
nothing of it is left on either node.

The cluster is started by .ci/run (or here, when we are root and it is not up). Where it cannot run the tests skip,
except under CI, where they fail.
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
START = ROOT / "scripts" / "slurm" / "start_two_node_slurm.sh"
STOP = ROOT / "scripts" / "slurm" / "stop_two_node_slurm.sh"
BASE = Path(os.environ.get("SLURM_TWO_NODE_DIR", Path(os.environ.get("TMPDIR", "/tmp")) / "nemo_hs2_slurm2"))
NODES = ("hs2n1", "hs2n2")
# The CPU demo, short: a validation and a checkpoint every 4 steps.
RUN = ["trainer.rm.max_steps=24", "trainer.rm.val_check_interval=4", "trainer.rm.save_interval=4"]
# The layout comparisons need no checkpoint but the final one (a save changes no number: the pre-emption job below,
# which saves every 4 steps, ends equal to the two-node TP run); each save costs ~2 s a rank.
FINAL_SAVE_ONLY = [*RUN[:2], "trainer.rm.save_interval=24"]
LAYOUTS = {"tp": ["model.tensor_model_parallel_size=2"], "pp": ["model.pipeline_model_parallel_size=2"]}
TWO_NODES, ONE_NODE = ["trainer.num_nodes=2", "trainer.devices=1"], ["trainer.num_nodes=1", "trainer.devices=2"]
# Lightning sets each rank's torch threads to cores / tasks per node when OMP_NUM_THREADS is unset (1 on one node
# with two tasks, 2 with one task per node), and a CPU GEMM's sums depend on its thread count: measured, the final
# metrics then differ by up to 6e-5. With the threads fixed, one node and two nodes agree bit for bit.
ENV = {**{k: v for k, v in os.environ.items() if not k.startswith(("SLURM_", "NEMO_HS2_"))},
       "SLURM_CONF": str(BASE / "slurm.conf"), "OMP_NUM_THREADS": "1", "PYTHON": sys.executable}
pytestmark = pytest.mark.slow


def slurm(*cmd, check=True):
    return subprocess.run(cmd, env=ENV, capture_output=True, text=True, timeout=120, check=check).stdout


def _up() -> bool:
    try:
        out = slurm("sinfo", "-h", "-N", "-o", "%N %T", check=False)
    except (OSError, subprocess.TimeoutExpired):
        return False
    states = dict(line.split() for line in out.splitlines() if len(line.split()) == 2)
    return all(states.get(n) in ("idle", "mixed", "allocated") for n in NODES)


@pytest.fixture(scope="module")
def cluster():
    started = False
    if not _up() and os.geteuid() == 0:
        subprocess.run(["bash", str(START)], capture_output=True, timeout=300)
        started = _up()
    if not _up():
        msg = "no two-node SLURM here and scripts/slurm/start_two_node_slurm.sh could not start one"
        pytest.fail(msg) if os.environ.get("CI") else pytest.skip(msg)
    yield
    if started:
        subprocess.run(["bash", str(STOP)], capture_output=True, timeout=180)


def submit(results: Path, *overrides, run=RUN) -> str:
    proc = subprocess.run(["bash", str(SUBMIT), "--host", "--results", str(results), "--time", "00:30:00",
                           "--signal-lead", "5", *run, *overrides], env=ENV, cwd=results, capture_output=True,
                          text=True, timeout=180)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    return re.search(r"Submitted batch job (\d+)", proc.stdout).group(1)


def job_info(job: str) -> dict:
    return dict(re.findall(r"(\w+)=(\S*)", slurm("scontrol", "show", "job", job, check=False)))


def wait(job: str, done, timeout: float, what: str) -> dict:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = job_info(job)
        if done(info):
            return info
        if info.get("JobState") in ("FAILED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"):
            break
        time.sleep(1)
    slurm("scancel", job, check=False)
    raise AssertionError(f"job {job}: waited for {what}; last state {job_info(job)}")


def finished(info):
    return info.get("JobState") == "COMPLETED"


def checkpoint_steps(log_dir: Path) -> set[int]:
    """Steps of the complete checkpoints (NeMo marks one being written with a sibling ``*-unfinished``)."""
    ckpts = log_dir / "checkpoints"
    names = {p.name for p in ckpts.iterdir()} if ckpts.is_dir() else set()
    return {int(m.group(1)) for n in names if not n.endswith("-unfinished") and f"{n}-unfinished" not in names
            for m in [re.search(r"step=(\d+)", n)] if m and (ckpts / n).is_dir()}


def final_validation(log_dir: Path) -> dict:
    final = json.loads((log_dir / "metrics.json").read_text())["final_validation"]
    return {k: v for k, v in final.items() if not k.endswith("_time")}  # timings are not results


def max_difference(a: dict, b: dict) -> float:
    assert a.keys() == b.keys() and len(a) > 20
    return max(abs(a[k] - b[k]) for k in a)


def output(log_dir: Path, job: str) -> str:
    return (log_dir / "slurm" / f"slurm-{job}.out").read_text(errors="replace")


def leftovers(grace_s: float = 60) -> dict:
    """Processes in each node's namespace other than its slurmd: a job's, if anything is left of one ``grace_s``
    after it ended (a step's slurmstepd finishes its teardown after the job reads COMPLETED)."""
    end = time.monotonic() + grace_s
    while (found := _job_processes()) and time.monotonic() < end:
        time.sleep(1)
    return found


def _job_processes() -> dict:
    found = {}
    for node in NODES:
        slurmd = (BASE / "run" / f"slurmd-{node}.pid").read_text().strip()
        pids = [p for p in slurm("ip", "netns", "pids", node).split() if p != slurmd]
        found[node] = [Path(f"/proc/{p}/cmdline").read_bytes().replace(b"\0", b" ")[:120].decode(errors="replace")
                       for p in pids if Path(f"/proc/{p}").exists()]
    return {n: cmds for n, cmds in found.items() if cmds}


@pytest.fixture(scope="module")
def runs(cluster, tmp_path_factory):
    """Every layout on two nodes and on one, submitted at once (SLURM runs them as nodes free up)."""
    jobs = {}
    for layout, overrides in LAYOUTS.items():
        for where, nodes in (("two", TWO_NODES), ("one", ONE_NODE)):
            results = tmp_path_factory.mktemp(f"{where}_{layout}")
            name = f"{where}_nodes_{layout}"
            jobs[where, layout] = (submit(results, *nodes, *overrides, f"name={name}", run=FINAL_SAVE_ONLY),
                                   results / name)
    done = {}
    for key, (job, log_dir) in jobs.items():
        info = wait(job, finished, 1200, f"{key} to finish")
        done[key] = {"job": job, "log_dir": log_dir, "info": info, "out": output(log_dir, job)}
    return done


@pytest.mark.parametrize("layout", LAYOUTS)
def test_one_task_per_node_sees_its_node_and_ends_where_one_node_ends(runs, layout):
    two, one = runs["two", layout], runs["one", layout]
    port = 20000 + int(two["job"]) % 40000
    assert two["info"]["NodeList"] == "hs2n[1-2]" and two["info"]["NumNodes"] == "2", two["info"]
    # what each task was given: its node, rank and local rank, the world, and the first node as the master
    for rank, node in enumerate(NODES):
        assert f"[task {rank}/2 local 0 node {rank} on {node}] master hs2n1:{port}" in two["out"], two["out"][-3000:]
    one_node = one["info"]["NodeList"]
    one_port = 20000 + int(one["job"]) % 40000
    for rank in (0, 1):
        assert f"[task {rank}/2 local {rank} node 0 on {one_node}] master {one_node}:{one_port}" in one["out"]
    for run in (two, one):
        summary = json.loads((run["log_dir"] / "metrics.json").read_text())
        assert summary["layout"]["world"] == 2 and summary["layout"][layout] == 2
        assert "training finished" in run["out"] and list((run["log_dir"] / "checkpoints").glob("*.nemo"))
    difference = max_difference(final_validation(two["log_dir"]), final_validation(one["log_dir"]))
    print(f"{layout.upper()}=2: job run time on two nodes {two['info']['RunTime']}, on one node "
          f"{one['info']['RunTime']}; final validation differs by at most {difference:g}")
    assert difference <= 1e-6
    assert not leftovers()


def lose_node(node: str) -> list[str]:
    """A node crash: every process in the node's namespace (its slurmd, the job's slurmstepd and task) SIGKILLed."""
    pids = slurm("ip", "netns", "pids", node).split()
    subprocess.run(["kill", "-KILL", *pids], check=False)
    return pids


def test_preemption_then_a_lost_node_requeue_and_resume_to_the_same_result(runs, tmp_path):
    """USR1 to every task (what --signal=USR1@N sends) -> every rank checkpoints and exits 75, the script requeues;
    then node hs2n2 dies mid-run -> the job is requeued, waits for the node, resumes; the same final numbers."""
    reference = runs["two", "tp"]
    log_dir = tmp_path / "faults"
    t0 = time.time()
    job = submit(tmp_path, *TWO_NODES, *LAYOUTS["tp"], "name=faults")
    wait(job, lambda i: i.get("JobState") == "RUNNING" and checkpoint_steps(log_dir), 600, "a first checkpoint")
    slurm("scancel", "--signal=USR1", job)
    wait(job, lambda i: i.get("Restarts") == "1" and i.get("JobState") == "RUNNING", 600, "the requeued run")
    out = output(log_dir, job)
    assert "training checkpointed on a pre-emption / time-limit signal, or lost a rank (exit 75)" in out, out[-5000:]
    for rank in (0, 1):
        assert f"rank {rank}: all 2 ranks wrote their part of the checkpoint" in out, out[-5000:]

    before = max(checkpoint_steps(log_dir))
    wait(job, lambda i: max(checkpoint_steps(log_dir), default=0) > before, 600, "a checkpoint after the resume")
    lost_at = time.time()
    lose_node("hs2n2")
    # The controller notices within SlurmdTimeout; then the node comes back, as a rebooted node would.
    wait(job, lambda i: i.get("Restarts") == "2" or "hs2n2" in slurm("sinfo", "-h", "-N", "-t", "down", "-o", "%N"),
         300, "the node to be down")
    down_s = time.time() - lost_at
    # SLURM 22.05 retries a step signal that could not reach the dead node (srun's kill-on-bad-exit), ~70 s later.
    # A node back sooner, with the job's next run on it (same step id), got it: mid-run (one more pre-emption and
    # requeue) or in its teardown (its step daemons then stayed). A crashed node takes longer than that to reboot.
    time.sleep(max(0.0, lost_at + 90 - time.time()))
    subprocess.run(["bash", str(START)], env=ENV, capture_output=True, timeout=300, check=True)
    info = wait(job, lambda i: finished(i) and int(i.get("Restarts", 0)) >= 2, 900, "the requeued run to finish")
    out = output(log_dir, job)
    print(f"pre-emption + lost node: {time.time() - t0:.0f} s in all, {info['Restarts']} restarts; hs2n2 seen down "
          f"{down_s:.0f} s after it died")
    for restart in (0, 1, 2):  # --open-mode=append: every run's output is kept
        assert f"(restart {restart}, host mode)" in out, out[-3000:]
    assert "rank 0: lost another rank of the job" in out  # the survivor on hs2n1 left at once, for requeue
    assert info["ExitCode"].startswith("0:")
    assert max_difference(final_validation(log_dir), final_validation(reference["log_dir"])) <= 1e-6
    assert not leftovers()
