"""One process of the HF-export parity check; run by tests/test_hf_export.py.

For each family: a tiny random HF model (tests/hf/tiny_models.py) is imported (examples/import_hf.py's ``run``),
given a random head with a nonzero bias, saved as RM.nemo, loaded back as evaluation does, scored with
``RewardScorer``, exported in both head modes and scored again with the stock transformers class
(``HFRewardScorer``: chat template, right padding, the class's own last-token read). Writes the largest differences.
"""

from __future__ import annotations

import argparse
import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

WORDS = ("the quick brown fox jumps over the lazy dog reward model scores responses to prompts helpfulness "
         "correctness coherence complexity verbosity numbers 0 1 2 3 2024 tensor pipeline parallel").split()


def conversations(count: int = 24):
    import random

    rng = random.Random(7)
    out = []
    for i in range(count):
        turns = 1 + i % 3  # single- and multi-turn
        conv = [{"role": "system", "content": "Be brief."}] if i % 5 == 4 else []
        for t in range(turns):
            for role in ("user", "assistant"):
                n = rng.randint(1, 3 + 2 * i)  # lengths differ a lot within a batch
                conv.append({"role": role, "content": " ".join(rng.choice(WORDS) for _ in range(n))})
        out.append(conv)
    return out


def card_scores(directory: str) -> dict:
    """Run the export's model card snippet as written (stdout kept out); its conversations, scores and reward."""
    import contextlib
    import io
    import re

    with open(os.path.join(directory, "README.md")) as f:
        (code,) = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    namespace = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(code, namespace)
    scores = namespace["scores"].double().numpy()
    reward = namespace["reward"].double().numpy() if "reward" in namespace else scores[:, 0]
    return {"conversations": namespace["conversations"], "scores": scores, "reward": reward}


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--out")
    p.add_argument("--tmp")
    p.add_argument("--family", action="append", default=[])
    p.add_argument("--hf-chat", action="append", default=[], help="families trained with template=hf_chat")
    p.add_argument("--evaluate", action="append", default=[], help="NAME: also evaluate its .nemo on RewardBench "
                   "(rb.jsonl), RewardBench 2 and HelpSteer2 rows (hs2.jsonl) under --tmp, into NAME/eval_nemo")
    p.add_argument("--round-trip", action="store_true", help="import the attributes export back and score it")
    p.add_argument("--nemo", action="append", default=[], help="NAME=RM.nemo: an already trained reward model "
                   "(any saved TP / PP layout) instead of an imported family")
    p.add_argument("--head-layout", action="append", default=[], help="NAME=LAYOUT: load and export NAME's "
                   "positional head by name (aligner_9slot)")
    p.add_argument("--reference", action="append", default=[], help="NAME=reference.json: NAME's rewards from "
                   "NeMo-Aligner's own infer on these conversations (tests/hf/aligner_sentencepiece.py)")
    args = p.parse_args()

    import numpy as np
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
    from transformers import AutoModelForSequenceClassification

    from nemo_hs2.megatron.scorer import RewardScorer
    from nemo_hs2.hf import exporter as hf_export
    from nemo_hs2.hf.importer import run as import_hf
    from nemo_hs2.hf.scorer import HFRewardScorer
    from nemo_hs2.megatron.loading import load_reward_model
    from tests.hf import tiny_models

    convs = conversations()
    layouts = dict(s.split("=", 1) for s in args.head_layout)
    references = dict(s.split("=", 1) for s in args.reference)
    results = {}
    sources = [(f, None) for f in args.family] + [tuple(s.split("=", 1)) for s in args.nemo]
    for seed, (family, rm) in enumerate(sources):
        tmp = os.path.join(args.tmp, family)
        source_trained = rm is not None
        if rm is None:
            hf_dir = tiny_models.write(family, os.path.join(tmp, "hf"), seed=seed)
            base, rm = os.path.join(tmp, "base.nemo"), os.path.join(tmp, "rm.nemo")
            with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
                import_hf(compose(config_name="import_hf", overrides=[f"input={hf_dir}", f"output={base}"]))
            model = load_reward_model(base)
            torch.manual_seed(100 + seed)
            with torch.no_grad():  # a trained-looking head: weights and a bias well away from zero
                model.model.rm_head.weight.normal_(0.0, 0.5)
                model.model.rm_head.bias.normal_(0.0, 1.0)
            with open_dict(model.cfg):
                if family in args.hf_chat:
                    model.cfg.template, model.cfg.system_prompt = "hf_chat", "You rate answers."
            model.save_to(rm)
        # at TP = PP = 1 whatever layout it was saved in, as the exporter does
        model = load_reward_model(rm, head_layout=layouts.get(family))
        nemo = RewardScorer(model, batch_size=8)
        want = nemo.score(convs)
        want_pred = np.array([[r["attributes"][a] for a in nemo.attributes] for r in want])
        want_reward = np.array([r["reward"] for r in want])
        r = {"template": nemo.template, "bias": model.model.rm_head.bias.tolist(), "conversations": len(convs),
             "tokens": sorted({len(nemo.tokenize(c)) for c in convs}), "attribute_names": list(nemo.attributes),
             "tokenizer_library": model.cfg.tokenizer.library}
        if family in references:  # NeMo-Aligner's own scores, by slot; the layout names the slots
            from nemo_hs2.megatron.head_layout import resolve_layout

            with open(references[family]) as f:
                reference = json.load(f)
            names = resolve_layout(layouts[family])[0]
            slots = [names.index(a) for a in nemo.attributes]
            aligner = np.array(reference["rewards"])[:, slots]
            r["aligner_tokens_equal"] = reference["tokens"] == [list(map(int, nemo.tokenize(c))) for c in convs]
            r["nemo_vs_aligner"] = float(np.abs(want_pred - aligner).max())
        for head in hf_export.HEADS:
            out_dir = os.path.join(tmp, f"hf_{head}")
            # reward mode is written in shards of ~64 KiB (many files + index), attributes mode as one file
            report = hf_export.export(model, out_dir, head, source="rm.nemo",
                                      max_shard_gb=2**-14 if head == "reward" else 5.0)
            card = card_scores(out_dir)
            cls = type(AutoModelForSequenceClassification.from_pretrained(out_dir)).__name__
            scorer = HFRewardScorer(out_dir, batch_size=8)
            same_tokens = all(list(scorer.tokenize(c)) == list(map(int, nemo.tokenize(c))) for c in convs)
            got = scorer.score(convs)
            got_reward = np.array([g["reward"] for g in got])
            entry = {"class": cls, "same_tokens": same_tokens, "bias_folded": report["bias_folded"],
                     "reward_diff": float(np.abs(got_reward - want_reward).max()),
                     "num_labels": report["num_labels"], "labels": report["labels"], "shards": report["shards"]}
            card_want = nemo.score(card["conversations"])
            entry["card_reward_diff"] = float(np.abs(card["reward"] - [w["reward"] for w in card_want]).max())
            if head == "attributes":
                got_pred = np.array([[g["attributes"][a] for a in nemo.attributes] for g in got])
                entry["attr_diff"] = float(np.abs(got_pred - want_pred).max())
                card_pred = [[w["attributes"][a] for a in nemo.attributes] for w in card_want]
                entry["card_attr_diff"] = float(np.abs(card["scores"] - np.array(card_pred)).max())
                if family in references:
                    entry["aligner_diff"] = float(np.abs(got_pred - aligner).max())
            if not report["bias_folded"]:  # the raw logits alone differ by the recorded bias
                raw = scorer.predict_tokens([scorer.tokenize(c) for c in convs]) - scorer.bias
                entry["raw_logit_offset"] = float(np.abs(raw @ scorer.weights - want_reward).max())
            r[head] = entry
        if args.round_trip:  # the attributes export imported back (examples/import_hf.py) scores the same
            back = os.path.join(tmp, "round_trip.nemo")
            overrides = [f"input={os.path.join(tmp, 'hf_attributes')}", f"output={back}"]
            batch = {}
            if source_trained:
                # Megatron's batch-size calculator is global and this process already holds the trained model's
                # batch sizes; the import (batch 1) runs as users run it, in its own process.
                import subprocess

                proc = subprocess.run([sys.executable, os.path.join(ROOT, "examples", "import_hf.py"), *overrides],
                                      capture_output=True, text=True, cwd=ROOT)
                if proc.returncode != 0:
                    raise RuntimeError(f"import of the export failed:\n{proc.stderr[-4000:]}")
                batch = {k: int(model.cfg[k]) for k in ("micro_batch_size", "global_batch_size")}
            else:
                with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
                    import_hf(compose(config_name="import_hf", overrides=overrides))
            again = RewardScorer(load_reward_model(back, model_overrides=batch or None), batch_size=8).score(convs)
            r["round_trip"] = {"reward_diff": float(np.abs(np.array([g["reward"] for g in again]) - want_reward).max()),
                               "attr_diff": float(np.abs(np.array([[g["attributes"][a] for a in nemo.attributes]
                                                                   for g in again]) - want_pred).max())}
        if family in args.evaluate:
            from nemo_hs2.evaluation.run import run as evaluate

            evaluate(OmegaConf.create({
                "checkpoint": rm, "output_dir": os.path.join(tmp, "eval_nemo"), "batch_size": 8, "progress": False,
                "rewardbench": {"file": os.path.join(args.tmp, "rb.jsonl")},
                "rewardbench2": {"file": os.path.join(ROOT, "tests", "data", "rewardbench2_sample.jsonl")},
                "helpsteer2": {"file": os.path.join(args.tmp, "hs2.jsonl"), "plots": False}}), model=model)
        results[family] = r
    with open(args.out, "w") as f:
        json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
