"""The prepared GPU check: one call on a lent GPU machine prints one JSON block and one table.

    bash benchmarks/gpu_check.sh                     # on the device, after scripts/device_kit.sh here (README)
    .venv/bin/python benchmarks/gpu_check.py --device cpu   # the same stages at tiny sizes, on this machine

Stages, each in its own process so a failure is reported with its stage and the others still run:
* env: torch / CUDA / apex / Transformer Engine, and the compat patches planned (on a GPU none of the cuda group);
* train: a Llama-architecture reward model (>= 1B parameters on the GPU: 24 x 2048, GQA 8, SwiGLU, RMSNorm) in bf16
  with megatron_amp_O2 at seq_length 4096, ours vs stock NeMo-Aligner padding on the same rows
  (benchmarks/train_throughput.py): step time, real tokens/s, TFLOP/s, MFU against --peak-tflops;
* memory: the measured peak against the planner's estimate for the same configuration;
* parity: a tiny fp32 model's rewards on the GPU against the CPU, same weights (the CPU side runs with CUDA hidden,
  so compat maps it to the CPU exactly as on our machines);
* packed: data.packing on the device. Exactness: a tiny fp32 model's losses, predictions and gradients packed vs
  unpacked on the same preference pairs (the dense block-diagonal mask; and megatron-core's THD layout through
  Transformer Engine where it is installed, which it is not on this CPU machine). Throughput: the train stage's
  model on HelpSteer pairs (Bradley-Terry), per-micro-batch trimming vs packed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

LLAMA = ["model.normalization=rmsnorm", "model.activation=fast-swiglu", "model.bias=false",
         "model.bias_activation_fusion=false", "model.position_embedding_type=rope"]
SIZES = {  # (overrides, seq_length, micro-batch, micro-batches, steps)
    "1b": (LLAMA + ["model.num_layers=24", "model.hidden_size=2048", "model.ffn_hidden_size=5632",
                    "model.num_attention_heads=16", "++model.num_query_groups=8"], 4096, 2, 2, 5),
    "tiny": (LLAMA + ["model.num_layers=2", "model.hidden_size=128", "model.ffn_hidden_size=352",
                      "model.num_attention_heads=4", "++model.num_query_groups=2"], 512, 2, 2, 2),
}
PARITY = LLAMA + ["model.num_layers=2", "model.hidden_size=128", "model.ffn_hidden_size=352",
                  "model.num_attention_heads=4", "++model.num_query_groups=2"]


# ------------------------------------------------------------------------------------------------------- stages
def stage_env(args) -> dict:
    import torch

    from nemo_hs2.megatron import compat

    env = compat.Environment.detect()
    planned = compat.planned(env)
    out = {"torch": torch.__version__, "cuda": torch.version.cuda, "cuda_available": env.cuda, "apex": env.apex,
           "transformer_engine": env.te, "python": sys.version.split()[0],
           "device_name": torch.cuda.get_device_name(0) if env.cuda else None,
           "compat_planned": {p.name: p.kind for p in planned}}
    import numpy
    import transformers

    out["numpy"], out["transformers"] = numpy.__version__, transformers.__version__
    out["compat_applied"] = compat.apply(env)
    cuda_group = [p.name for p in planned if p.kind == "cuda"]
    if env.cuda and cuda_group:
        raise RuntimeError(f"on a GPU the cuda group must plan nothing, but it planned {cuda_group}")
    out["cuda_group_planned"] = cuda_group
    return out


def stage_train(args) -> dict:
    """benchmarks/train_throughput.py's own run (one layout, ours vs stock on the same rows), with our sizes."""
    from benchmarks import train_throughput as tt

    overrides, seq, mbs, mbn, steps = SIZES[args.size]
    argv = ["--device", args.device, "--pp", "1", "--size", "tiny", "--seq-length", str(seq), "--micro-batch",
            str(mbs), "--micro-batches", str(mbn), "--steps", str(steps), "--warmup", str(args.warmup), "--data",
            args.data, "--peak-tflops", str(args.peak_tflops), "--master-port", str(_free_port())]
    for o in overrides:
        argv += ["--override", o]
    targs = tt.parse_args(argv)
    with tempfile.TemporaryDirectory() as tmp:
        info = tt.launch(targs, argv, 1, Path(tmp) / "train.json")
    targs.layout_pp = 1
    return {"parameters": info["params"], "tokenizer": info["tokenizer"], "seq_length": seq, "micro_batch": mbs,
            "micro_batches": mbn, "steps": steps, "rows": info["rows"],
            "peak_gib": max(r["peak_gib"] for r in info["rows"]),
            "planner": _planner_estimate(targs, overrides, 256)}


def _planner_estimate(targs, overrides, vocab) -> dict:
    try:
        return _plan(targs, overrides, vocab)
    except Exception as e:  # the measurement stands without the estimate
        return {"error": f"planner: {type(e).__name__}: {e}"}


def _plan(targs, overrides, vocab) -> dict:
    from hydra import compose, initialize_config_dir

    from nemo_hs2.core.resolvers import register_resolvers
    from nemo_hs2.plan import make_plan

    register_resolvers()
    composed = [*overrides, f"model.encoder_seq_length={targs.seq_length}",
                f"model.micro_batch_size={targs.micro_batch}",
                f"model.global_batch_size={targs.micro_batch * targs.micro_batches}", f"+model.override_vocab_size={vocab}"]
    if targs.device == "cuda":
        composed += ["trainer=gpu", "trainer.devices=1", "model.megatron_amp_O2=true"]
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=composed)
    plan = make_plan(cfg)
    return {"peak_gib": plan.memory.get("peak"), "params": plan.params, "errors": plan.errors}


def stage_parity(args) -> dict:
    """Rewards of the same tiny fp32 model here (GPU, or CPU in --device cpu mode) and in a CPU-only process."""
    with tempfile.TemporaryDirectory() as tmp:
        here = _parity_side(args.device, Path(tmp), save=True)
        # Hidden CUDA; its own rendezvous port, since this process's process group still holds the default one.
        env = dict(os.environ, CUDA_VISIBLE_DEVICES="", MASTER_PORT=str(_free_port()))
        cmd = [sys.executable, __file__, "--parity-side", tmp]
        proc = subprocess.run(cmd, env=env, capture_output=True, text=True)
        if proc.returncode:
            raise RuntimeError(f"CPU side failed: {proc.stderr[-1500:]}")
        import numpy as np

        there = np.load(Path(tmp) / "cpu.npy")
    diff = float(abs(here - there).max())
    return {"compared": f"{args.device} vs cpu", "rows": int(here.shape[0]), "max_abs_diff": diff,
            "reward_absmax": float(abs(there).max()), "ok": diff <= 1e-4}


def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _parity_side(device: str, tmp: Path, save: bool):
    """Build the tiny model on ``device``; the first side saves its weights and batch, the second loads them."""
    import numpy as np
    import torch

    from benchmarks import train_throughput as tt

    targs = argparse.Namespace(size="tiny", device=device, seq_length=256, micro_batch=2, micro_batches=2,
                               precision="fp32", layout_pp=1, tp=1)
    # The loading side starts from another seed, so equal rewards show that the weights really travelled.
    _, model, _ = tt.build_model(targs, 256, PARITY + ([] if save else ["model.seed=4321"]))
    model.eval()
    if save:
        rng = np.random.default_rng(0)
        lengths = rng.integers(8, 256, size=6)
        batch = {"tokens": [rng.integers(1, 255, size=n).astype(np.int32) for n in lengths]}  # 255 pads
        torch.save({"weights": {k: v.detach().cpu() for k, v in model.state_dict().items() if v is not None},
                    "batch": batch}, tmp / "parity.pt")
    saved = torch.load(tmp / "parity.pt", weights_only=False)
    if not save:
        model.load_state_dict(saved["weights"])
    from nemo_hs2.data.dataset import Collator

    empty = np.full(len(model.attributes), np.nan, np.float32)
    batch = Collator(255, 8)([{"tokens": t, "labels": empty, "pair_id": -1} for t in saved["batch"]["tokens"]])
    with torch.no_grad():
        pred = model.predict(batch).float().cpu().numpy()
    np.save(tmp / ("cpu.npy" if not save else "here.npy"), pred)
    return pred


def stage_packed(args) -> dict:
    """Packed == unpacked on the device (fp32, tiny), per attention path; then trimming vs packing throughput."""
    from nemo_hs2.megatron import compat

    paths = {"dense": []}
    if compat.Environment.detect().te:
        paths["thd"] = ["model.transformer_engine=true"]
    out = {"exactness": {name: _packed_exactness(args, extra) for name, extra in paths.items()}}
    from benchmarks import train_throughput as tt

    overrides, seq, mbs, mbn, steps = SIZES[args.size]
    argv = ["--device", args.device, "--pp", "1", "--size", "tiny", "--seq-length", str(seq), "--micro-batch",
            str(mbs), "--micro-batches", str(mbn), "--steps", str(steps), "--warmup", str(args.warmup), "--data",
            args.data, "--peak-tflops", str(args.peak_tflops), "--master-port", str(_free_port()), "--pairs",
            "--packing", "--no-length-grouped"]
    for o in overrides:
        argv += ["--override", o]
    with tempfile.TemporaryDirectory() as tmp:
        info = tt.launch(tt.parse_args(argv), argv, 1, Path(tmp) / "packed.json")
    out.update({"rows": info["rows"], "pairs": info["samples"], "epoch_fraction": info["epoch_fraction"],
                "thd": "thd" in paths})
    return out


def _packed_exactness(args, extra) -> dict:
    import numpy as np
    import torch

    from benchmarks import train_throughput as tt
    from nemo_hs2.data.preference import PairCollator

    targs = argparse.Namespace(size="tiny", device=args.device, seq_length=256, micro_batch=2, micro_batches=2,
                               precision="fp32", layout_pp=1, tp=1)
    _, model, _ = tt.build_model(targs, 256, PARITY + extra)
    rng = np.random.default_rng(0)
    empty = np.full(len(model.attributes), np.nan, np.float32)
    empty[0] = 2.0
    pairs = [{"rows": tuple({"tokens": rng.integers(1, 250, size=int(rng.integers(8, 250))).astype(np.int32),
                             "labels": empty, "pair_id": i} for _ in range(2)),
              "preference": float(rng.choice([-2, -1, 1, 2])), "pair_id": i} for i in range(4)]
    batch = PairCollator(255, 8)(pairs)
    runs = {}
    for packed, capacity in ((False, None), (True, None), (True, 256)):
        model.packing, model.pack_length = packed, capacity
        for loss in ("regression", "regular_bt"):
            model.loss_name = loss
            model.prepare_for_training_step()
            for prm in model.model.parameters():
                prm.grad = None
            value, _ = model.get_loss_and_metrics(batch, forward_only=False)
            grads = {n: (getattr(p, "main_grad", None) if getattr(p, "main_grad", None) is not None else p.grad)
                     for n, p in model.model.named_parameters()}
            with torch.no_grad():
                pred = model.predict(batch).cpu().numpy()
            runs[(packed, capacity, loss)] = (value, pred, {n: g.detach().clone() for n, g in grads.items()
                                                            if g is not None})
    model.packing, model.pack_length = False, None
    diffs = {}
    for (packed, capacity, loss), (value, pred, grads) in runs.items():
        if not packed:
            continue
        ref_value, ref_pred, ref_grads = runs[(False, None, loss)]
        key = f"{'one_row' if capacity is None else 'bins'}/{loss}"
        diffs[key] = {"loss": abs(value - ref_value), "pred": float(np.abs(pred - ref_pred).max()),
                      "grads": max(float((grads[n] - ref_grads[n]).abs().max()) for n in ref_grads)}
    worst = max(v for d in diffs.values() for v in d.values())
    return {"thd": bool(model.thd), "diffs": diffs, "max_abs_diff": worst, "ok": worst <= 1e-4}


STAGES = {"env": stage_env, "train": stage_train, "parity": stage_parity, "packed": stage_packed}
TIMEOUTS = {"env": 120, "train": 300, "parity": 150, "packed": 300}


def _limit(stage: str, args) -> int:
    return args.stage_timeout or TIMEOUTS[stage] * (1 if args.device == "cuda" else 3)  # 2 shared CPU cores


# ------------------------------------------------------------------------------------------------------- driver
def run_stage(name: str, args) -> dict:
    """One stage in a fresh interpreter: its result, or its error with the stage named."""
    with tempfile.NamedTemporaryFile(suffix=".json", delete=False) as f:
        result = Path(f.name)
    cmd = [sys.executable, __file__, "--stage", name, "--result", str(result), "--device", args.device,
           "--size", args.size, "--data", args.data, "--warmup", str(args.warmup),
           "--peak-tflops", str(args.peak_tflops)]
    t0 = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=_limit(name, args))
    out = json.loads(result.read_text()) if result.stat().st_size else {}
    result.unlink()
    if proc.returncode and "error" not in out:
        out["error"] = f"exit {proc.returncode}: {proc.stderr.strip()[-1500:]}"
    out["wall_s"] = round(time.perf_counter() - t0, 1)
    if "error" in out:
        print(f"gpu_check: stage '{name}' failed: {out['error']}", file=sys.stderr)
    return out


def table(results: dict) -> str:
    lines = ["| stage | result |", "|---|---|"]
    env = results.get("env")
    if env is not None:
        lines.append(f"| env | {env.get('error') or ''}{env.get('device_name') or 'no GPU'}, torch {env.get('torch')}, "
                     f"apex {env.get('apex')}, TE {env.get('transformer_engine')}, cuda patches planned: "
                     f"{env.get('cuda_group_planned')} |")
    train = results.get("train", {})
    for r in train.get("rows", []):
        extra = f", {r['tflops']:.1f} TFLOP/s, MFU {r['mfu']:.1%}" if "tflops" in r else ""
        lines.append(f"| train {r['mode']} | {r['step_s']:.3f} s/step, {r['real_tok_s']:.0f} real tok/s, real-token "
                     f"fraction {r['real_frac']:.2f}{extra} |")
    if train.get("rows"):
        ours, stock = train["rows"]
        lines.append(f"| train ours/stock | {ours['real_tok_s'] / stock['real_tok_s']:.2f}x real tokens/s |")
        plan = train.get("planner", {})
        planned = f"{plan['peak_gib']:.2f} GiB" if isinstance(plan.get("peak_gib"), float) else plan.get("error")
        lines.append(f"| memory | measured peak {train['peak_gib']:.2f} GiB vs planner {planned} "
                     f"({train['parameters'] / 1e6:.1f} M parameters) |")
    elif "error" in train:
        lines.append(f"| train | failed: {train['error'][:200]} |")
    packed = results.get("packed", {})
    if "error" in packed:
        lines.append(f"| packed | failed: {packed['error'][:200]} |")
    elif packed:
        for name, ex in packed["exactness"].items():
            lines.append(f"| packed {name} exactness | max abs diff {ex['max_abs_diff']:.2e} (losses, predictions, "
                         f"gradients vs unpacked), {'ok' if ex['ok'] else 'FAILED'} |")
        for r in packed["rows"]:
            lines.append(f"| packed pairs, {r['mode']} | {r['step_s']:.3f} s/step, {r['real_tok_s']:.0f} real tok/s, "
                         f"real-token fraction {r['real_frac']:.2f} |")
        if not packed["thd"]:
            lines.append("| packed thd | not run: no Transformer Engine here |")
    par = results.get("parity", {})
    if "error" in par:
        lines.append(f"| parity | failed: {par['error'][:200]} |")
    elif par:
        lines.append(f"| parity | {par['compared']}: max abs diff {par['max_abs_diff']:.2e} over {par['rows']} rows "
                     f"(rewards up to {par['reward_absmax']:.2f}) |")
    return "\n".join(lines)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", choices=["cuda", "cpu"], default="cuda")
    p.add_argument("--size", choices=sorted(SIZES), default=None, help="default: 1b on cuda, tiny on cpu")
    p.add_argument("--data", default=os.environ.get("NEMO_HS2_DATA", str(ROOT.parent / "shared" / "data" /
                                                                         "helpsteer_sample_300.jsonl")))
    p.add_argument("--warmup", type=int, default=2)
    p.add_argument("--peak-tflops", type=float, default=989.0, help="bf16 dense peak (H100/H200 SXM: 989)")
    p.add_argument("--stage-timeout", type=int, default=None,
                   help="seconds per stage (default env 120, train 300, parity 150, packed 300)")
    p.add_argument("--stages", default="env,train,parity,packed", help="comma-separated subset to run")
    p.add_argument("--stage", choices=sorted(STAGES), help=argparse.SUPPRESS)
    p.add_argument("--result", help=argparse.SUPPRESS)
    p.add_argument("--parity-side", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.size = args.size or ("1b" if args.device == "cuda" else "tiny")
    if args.parity_side:  # the CPU side of the parity stage
        from nemo_hs2.megatron import compat

        compat.apply()
        _parity_side("cpu", Path(args.parity_side), save=False)
        return 0
    if args.stage:
        try:
            out = STAGES[args.stage](args)
        except Exception as e:  # reported by the driver with the stage's name
            out = {"error": f"{type(e).__name__}: {e}".replace("\n", " "), "traceback": traceback.format_exc()[-800:]}
        Path(args.result).write_text(json.dumps(out, default=str))
        return 0
    results = {}
    for name in args.stages.split(","):
        try:
            results[name] = run_stage(name, args)
        except subprocess.TimeoutExpired:
            results[name] = {"error": f"timed out after {_limit(name, args)} s"}
    print(json.dumps(results, indent=1, default=str))
    print(table(results))
    return 1 if any("error" in r for r in results.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
