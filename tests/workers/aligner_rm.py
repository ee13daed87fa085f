"""NeMo-Aligner's own 9-slot regression reward model, and reading it by name; run by tests/test_head_layout.py.

``write DIR``: build NeMo-Aligner 0.7.0's ``MegatronGPTRegressionRewardModel`` (``num_attributes: 9``, no attribute
names: what NVIDIA's published reward models are) from the tiny preset's architecture, save it as DIR/aligner.nemo
and score a few demo conversations with its own ``infer`` (the SteerLM template, as the scorer formats them):
DIR/reference.json. ``load OUT SPEC...``: load checkpoints with ``load_reward_model`` (the evaluation / serving /
annotation path) and score the same conversations with ``RewardScorer``.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)


def examples():
    from nemo_hs2.data.demo import demo_examples

    return demo_examples(3, seed=5, split="validation")[:5]


def conversations():
    return [[{"role": "user", "content": e.prompt}, {"role": "assistant", "content": e.response}] for e in examples()]


def evaluate(checkpoint: str, layout: str, out_dir: str) -> list[dict]:
    """examples/evaluate_reward_model.py's flow on the same rows as a HelpSteer2 file; its per-row predictions."""
    from hydra import compose, initialize_config_dir

    from nemo_hs2.evaluation.run import run

    os.makedirs(out_dir, exist_ok=True)
    hs2 = os.path.join(out_dir, "hs2.jsonl")
    with open(hs2, "w") as f:
        for e in examples():
            f.write(json.dumps({"prompt": e.prompt, "response": e.response, **e.labels}) + "\n")
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose(config_name="evaluate_reward_model", overrides=[
            f"checkpoint={checkpoint}", f"head_layout={layout}", f"output_dir={out_dir}/eval",
            f"helpsteer2.file={hs2}", "helpsteer2.plots=false", "progress=false"])
    run(cfg)
    with open(os.path.join(out_dir, "eval", "helpsteer2_predictions.jsonl")) as f:
        return [json.loads(line)["pred"] for line in f]


def write(out_dir: str) -> None:
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from nemo_hs2.megatron import compat
    from nemo_hs2.megatron.build import seed_model_parallel_rng

    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=["model.global_batch_size=4",
                                                                   "model.micro_batch_size=1"])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(cfg):
        cfg.exp_manager = None
        for key in ("template", "system_prompt", "pad_to_multiple"):  # nemo_hs2's own keys
            cfg.model.pop(key)
        # NeMo-Aligner's regression RM config (examples/nlp/gpt/conf/training_rm.yaml, SteerLM's 9 slots)
        cfg.model.regression = {"num_attributes": 9, "merge_attributes": False, "attribute_weights": None,
                                "loss_mask_val": -100, "load_rm_head_weights": False}
        cfg.model.reward_model_type = "regression"
    compat.apply()
    from nemo_aligner.models.nlp.gpt.megatron_gpt_regression_reward_model import MegatronGPTRegressionRewardModel
    from nemo_aligner.utils.train_script_utils import init_distributed, resolve_and_create_trainer

    from nemo_hs2.core.conversation import Conversation
    from nemo_hs2.core.render import Renderer

    torch.manual_seed(7)
    trainer = resolve_and_create_trainer(cfg, "rm")
    model = MegatronGPTRegressionRewardModel(cfg.model, trainer)
    init_distributed(trainer, model, False)
    seed_model_parallel_rng(7)
    with torch.no_grad():  # larger than the init, so rows differ clearly; a non-zero bias, so slots do too
        model.model.rm_head.weight.normal_(0, 0.3)
        model.model.rm_head.bias.normal_(0, 1.0)
    steerlm = Renderer("steerlm", model.tokenizer)  # NeMo-Aligner's HelpSteer2 format, the whole text encoded
    rows = [steerlm.ids(Conversation.from_messages(conv)) for conv in conversations()]
    width = max(map(len, rows))
    tokens = torch.tensor([r + [model.tokenizer.eos_id] * (width - len(r)) for r in rows])
    lengths = torch.tensor([len(r) for r in rows])
    model.prepare_for_inference()
    rewards = model.infer((tokens, lengths))
    model.finish_inference()
    model.save_to(os.path.join(out_dir, "aligner.nemo"))
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump({"tokens": rows, "rewards": rewards.float().tolist()}, f)


def load(out: str, *specs: str) -> None:
    """Each spec is ``CKPT|LAYOUT|ATTRIBUTES`` (LAYOUT: none, a name or a JSON list; ATTRIBUTES: comma-separated or
    empty) or ``eval|CKPT|LAYOUT|DIR``; all are loaded in this process, one after another."""
    from nemo_hs2.megatron.scorer import RewardScorer
    from nemo_hs2.megatron.loading import load_reward_model

    results = []
    for spec in specs:
        if spec.startswith("eval|"):
            _, checkpoint, layout, out_dir = spec.split("|")
            results.append({"spec": spec, "scores": evaluate(checkpoint, layout, out_dir)})
            continue
        checkpoint, layout, attributes = spec.split("|")
        head_layout = None if layout == "none" else json.loads(layout) if layout.startswith("[") else layout
        overrides = {"regression": {"attributes": attributes.split(",")}} if attributes else None
        try:
            model = load_reward_model(checkpoint, model_overrides=overrides, head_layout=head_layout)
        except ValueError as e:  # refused before anything is built
            results.append({"spec": spec, "error": str(e)})
            continue
        scorer = RewardScorer(model, weights={model.attributes[0]: 1.0})
        convs = conversations()
        results.append({"spec": spec, "attributes": list(model.attributes),
                        "scores": [s["attributes"] for s in scorer.score(convs)],
                        "tokens": [scorer.tokenize(c).tolist() for c in convs],
                        "cfg_attributes": list(model.cfg.regression.attributes),
                        "num_attributes": model.cfg.regression.num_attributes,
                        "head_shape": list(model.model.rm_head.weight.shape)})
    with open(out, "w") as f:
        json.dump(results, f)


if __name__ == "__main__":
    if sys.argv[1] == "write":
        write(sys.argv[2])
    else:
        load(*sys.argv[2:])
