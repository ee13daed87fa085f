"""Both ends of a torchrun check: a test launches a worker script and reads back the JSON its ranks gathered."""

from __future__ import annotations

import json
import os
import subprocess
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def torchrun(worker: str, nproc: int, args, out, port: int, timeout: int = 900) -> list:
    """Run ``worker --out OUT ARGS`` on ``nproc`` ranks; every rank's result, in rank order."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", str(nproc), "--master_port", str(port),
           worker, "--out", str(out), *args]
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore", PYTHONPATH=ROOT)
    proc = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{cmd} failed (rc {proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-6000:]}")
    with open(out) as f:
        return json.load(f)


def write_gathered(result, out: str | None) -> None:
    """In a worker: gather every rank's ``result`` and write the list to ``out`` from rank 0."""
    import torch

    gathered = [None] * torch.distributed.get_world_size()
    torch.distributed.all_gather_object(gathered, result)
    if torch.distributed.get_rank() == 0 and out:
        with open(out, "w") as f:
            json.dump(gathered, f, indent=1)
    torch.distributed.barrier()
