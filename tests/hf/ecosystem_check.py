"""Exported reward models where users consume them today: transformers 5.x and TRL, in .venv-ecosystem.

Run by tests/test_ecosystem.py with the side environment's python (scripts/ecosystem_env.sh); imports nothing of
nemo_hs2 (whose stack is transformers 4.48). ``python ecosystem_check.py SPEC.json OUT.json``; SPEC gives the export
directories, the conversations, and which reward-head export TRL gets. For each export: the chat template's ids,
the plain padded call's scores (plus the recorded head bias), and the model card's snippet run as written. Then
TRL's ``GRPOTrainer`` with the export as ``reward_funcs`` (two CPU steps, a tiny random policy, the rewards it
logs against the export's own scores of the completions it generated), and TRL's ``RewardTrainer`` continuing to
train the export (two steps on preference pairs, its tokens, the loss, the saved model reloading).
"""

from __future__ import annotations

import contextlib
import io
import json
import math
import re
import sys
import tempfile


def chat_ids(tok, messages) -> list[int]:
    out = tok.apply_chat_template(messages, tokenize=True)
    return list(out["input_ids"] if hasattr(out, "keys") else out)  # transformers 5 returns a BatchEncoding


def plain_scores(model, tok, texts) -> list[list[float]]:
    import torch

    with torch.no_grad():
        batch = tok(texts, padding=True, return_tensors="pt")
        logits = model(**batch).logits.double()
    bias = (getattr(model.config, "nemo_hs2", None) or {}).get("score_bias")
    return (logits + (torch.tensor(bias, dtype=torch.float64) if bias else 0.0)).tolist()


def card(directory: str) -> dict:
    with open(f"{directory}/README.md") as f:
        (code,) = re.findall(r"```python\n(.*?)```", f.read(), re.S)
    namespace = {}
    with contextlib.redirect_stdout(io.StringIO()):
        exec(code, namespace)
    return {"conversations": namespace["conversations"], "scores": namespace["scores"].double().tolist()}


def check_export(directory: str, conversations) -> dict:
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    tok = AutoTokenizer.from_pretrained(directory)
    model = AutoModelForSequenceClassification.from_pretrained(directory).float().eval()
    texts = [tok.apply_chat_template(c, tokenize=False) for c in conversations]
    return {"class": type(model).__name__, "tokenizer_class": type(tok).__name__,
            "keys": sorted(tok(texts[:2], padding=True)), "ids": [chat_ids(tok, c) for c in conversations],
            "plain_ids": [list(tok(t)["input_ids"]) for t in texts], "scores": plain_scores(model, tok, texts),
            "card": card(directory), "pad_token_id": model.config.pad_token_id}


def tiny_policy(tok):
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=1024,
                         pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id)
    return LlamaForCausalLM(config)


def grpo(reward_dir: str, prompts: list[str]) -> dict:
    """Two GRPO steps on CPU with the export as a reward function; a recording function beside it (reward 0)
    keeps the completions TRL generated, which the export then scores itself for the comparison."""
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import GRPOConfig, GRPOTrainer

    calls = []

    def record(prompts, completions, **kwargs):
        calls.append((prompts, completions))
        return [0.0] * len(prompts)

    tok = AutoTokenizer.from_pretrained(reward_dir)  # the policy shares the export's tokenizer and chat template
    data = Dataset.from_dict({"prompt": [[{"role": "user", "content": p}] for p in prompts]})
    with tempfile.TemporaryDirectory() as out:
        args = GRPOConfig(output_dir=out, per_device_train_batch_size=4, num_generations=2, max_completion_length=12,
                          max_steps=2, logging_steps=1, report_to="none", use_cpu=True, save_strategy="no",
                          learning_rate=1e-3, bf16=False, seed=0)
        trainer = GRPOTrainer(model=tiny_policy(tok), reward_funcs=[reward_dir, record], args=args,
                              train_dataset=data, processing_class=tok)
        trainer.train()
    name = reward_dir.rstrip("/").split("/")[-1]
    logged = [h[f"rewards/{name}/mean"] for h in trainer.state.log_history if f"rewards/{name}/mean" in h]
    rm = AutoModelForSequenceClassification.from_pretrained(reward_dir).float().eval()
    rm_tok = AutoTokenizer.from_pretrained(reward_dir)
    ours = []
    for prompt_batch, completion_batch in calls:
        texts = [rm_tok.apply_chat_template(p + c, tokenize=False) for p, c in zip(prompt_batch, completion_batch)]
        scores = [s[0] for s in plain_scores(rm, rm_tok, texts)]
        ours.append(sum(scores) / len(scores))
    return {"steps": trainer.state.global_step, "logged_reward_means": logged, "own_reward_means": ours,
            "completions": [c[0]["content"] for _, batch in calls for c in batch][:8]}


def reward_trainer(reward_dir: str, pairs: list[dict]) -> dict:
    import torch
    from datasets import Dataset
    from transformers import AutoModelForSequenceClassification, AutoTokenizer
    from trl import RewardConfig, RewardTrainer

    data = Dataset.from_list(pairs)
    with tempfile.TemporaryDirectory() as out:
        args = RewardConfig(output_dir=out, per_device_train_batch_size=2, max_steps=2, logging_steps=1,
                            report_to="none", use_cpu=True, save_strategy="no", learning_rate=1e-2, bf16=False,
                            seed=0)
        trainer = RewardTrainer(model=reward_dir, args=args, train_dataset=data)
        before = trainer.model.score.weight.detach().clone()
        chosen_ids = [list(r["chosen_ids"]) for r in trainer.train_dataset]
        trainer.train()
        moved = float((trainer.model.score.weight.detach() - before).abs().max())
        trainer.save_model(f"{out}/continued")
        tok = AutoTokenizer.from_pretrained(f"{out}/continued")
        again = AutoModelForSequenceClassification.from_pretrained(f"{out}/continued").float().eval()
        texts = [tok.apply_chat_template(p["chosen"], tokenize=False) for p in pairs]
        trained = trainer.model.float().eval()
        with torch.no_grad():
            batch = tok(texts, padding=True, return_tensors="pt")
            reload_diff = float((again(**batch).logits - trained(**batch).logits).abs().max())
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]
    return {"steps": trainer.state.global_step, "losses": losses, "score_weight_moved": moved,
            "chosen_ids": chosen_ids, "reload_diff": reload_diff}


def main(spec_path: str, out_path: str) -> None:
    import torch
    import transformers

    try:
        import trl
    except ImportError:  # the pinned stack (.venv) has no TRL: exports are checked there, trainers are not
        trl = None
    with open(spec_path) as f:
        spec = json.load(f)
    out = {"versions": {"transformers": transformers.__version__, "trl": trl and trl.__version__,
                        "torch": torch.__version__}, "exports": {}}
    for name, directory in spec["exports"].items():
        out["exports"][name] = check_export(directory, spec["conversations"])
    if spec.get("grpo"):
        out["grpo"] = grpo(spec["grpo"], spec["prompts"])
    if spec.get("reward_trainer"):
        out["reward_trainer"] = reward_trainer(spec["reward_trainer"], spec["pairs"])
    finite = all(math.isfinite(x) for x in out.get("reward_trainer", {}).get("losses", []))
    out["finite_losses"] = finite
    with open(out_path, "w") as f:
        json.dump(out, f, indent=1)


if __name__ == "__main__":
    main(*sys.argv[1:3])
