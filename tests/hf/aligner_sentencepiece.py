"""A NeMo-Aligner reward model as NVIDIA ships Nemotron-4's: written by NeMo-Aligner's own classes, scored by them.

``python tests/hf/aligner_sentencepiece.py DIR`` builds NeMo-Aligner 0.7.0's ``MegatronGPTRegressionRewardModel``
with Nemotron-4's architecture (LayerNorm1P, squared-ReLU, RoPE on half of each head, grouped-query attention, no
biases; tiny sizes) and tokenizer kind (``library: sentencepiece``, ``sentencepiece_legacy: false``, the
``tokenizer.model`` packed in the ``.nemo``; here the SentencePiece Unigram trained by tests/tokenizers.py), a 9-slot
positional head without names (``num_attributes: 9``, as Nemotron-4-340B-Reward), and a head with a clear bias.
It saves DIR/aligner_sp.nemo and scores the parity worker's conversations with NeMo-Aligner's own ``infer`` on their
SteerLM texts (tokenized as its ``tokenize_batch`` does: NeMo's ``text_to_ids``, eos padding): DIR/reference.json.
"""

from __future__ import annotations

import json
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
sys.path.insert(0, ROOT)

# Nemotron-4 15B's architecture fields (conf/model/nemotron4_15b.yaml) at a size a CPU test can run.
NEMOTRON_TINY = {"num_layers": 2, "hidden_size": 64, "ffn_hidden_size": 128, "num_attention_heads": 4,
                 "num_query_groups": 2, "kv_channels": None, "normalization": "layernorm1p",
                 "layernorm_epsilon": 1e-5, "activation": "squared-relu", "bias": False,
                 "position_embedding_type": "rope", "rotary_percentage": 0.5, "rotary_base": 10000,
                 "share_embeddings_and_output_weights": False, "encoder_seq_length": 4096,
                 "max_position_embeddings": 4096, "init_method_std": 0.2, "make_vocab_size_divisible_by": 128}


def write(out_dir: str) -> None:
    import torch
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf, open_dict

    from nemo_hs2.core.conversation import Conversation
    from nemo_hs2.core.render import Renderer
    from nemo_hs2.megatron import compat
    from nemo_hs2.megatron.build import seed_model_parallel_rng
    from tests.parallel.hf_export_parity import conversations
    from tests.tokenizers import sentencepiece_model

    os.makedirs(out_dir, exist_ok=True)
    spm_path = os.path.join(out_dir, "tokenizer.model")
    with open(spm_path, "wb") as f:
        f.write(sentencepiece_model())
    OmegaConf.register_new_resolver("multiply", lambda x, y: x * y, replace=True)
    OmegaConf.register_new_resolver("int_div", lambda x, y: x // y, replace=True)
    with initialize_config_dir(config_dir=os.path.join(ROOT, "conf"), version_base=None):
        cfg = compose(config_name="train_reward_model", overrides=["model.global_batch_size=4",
                                                                   "model.micro_batch_size=1"])
    cfg = OmegaConf.create(OmegaConf.to_container(cfg, resolve=True))
    with open_dict(cfg):
        cfg.exp_manager = None
        for key in ("template", "system_prompt", "pad_to_multiple", "packing", "pack_length",
                    "variable_micro_batch_widths"):  # nemo_hs2's own keys: not in NeMo-Aligner's configs
            cfg.model.pop(key, None)
        cfg.model.update(NEMOTRON_TINY)
        # Nemotron-4-340B-Reward's model_config.yaml tokenizer section, with this test's model file
        cfg.model.tokenizer = {"library": "sentencepiece", "type": None, "model": spm_path, "vocab_file": None,
                               "merge_file": None, "delimiter": None, "sentencepiece_legacy": False}
        # NeMo-Aligner's regression RM config (examples/nlp/gpt/conf/training_rm.yaml, SteerLM's 9 slots)
        cfg.model.regression = {"num_attributes": 9, "merge_attributes": False, "attribute_weights": None,
                                "loss_mask_val": -100, "load_rm_head_weights": False}
        cfg.model.reward_model_type = "regression"
    compat.apply()
    from nemo_aligner.models.nlp.gpt.megatron_gpt_regression_reward_model import MegatronGPTRegressionRewardModel
    from nemo_aligner.utils.train_script_utils import init_distributed, resolve_and_create_trainer

    torch.manual_seed(11)
    trainer = resolve_and_create_trainer(cfg, "rm")
    model = MegatronGPTRegressionRewardModel(cfg.model, trainer)
    init_distributed(trainer, model, False)
    seed_model_parallel_rng(11)
    with torch.no_grad():  # norms away from their init and a clear head bias, so every weight moves the scores
        for name, p in model.model.named_parameters():
            if "layernorm" in name:
                p.normal_(0.0, 0.2)
        model.model.rm_head.weight.normal_(0, 0.3)
        model.model.rm_head.bias.normal_(0, 1.0)
    renderer = Renderer("steerlm", model.tokenizer)
    texts = [renderer.text(Conversation.from_messages(c)) for c in conversations()]
    # NeMo-Aligner's text path (its reward server's infer(list of str)) is tokenize_batch: text_to_ids, eos padding
    # to max_len. Its torch.cuda.LongTensor has no CPU form, so the same is done here with max_len = the longest.
    rows = [list(model.tokenizer.text_to_ids(t)) for t in texts]
    width = max(map(len, rows))
    tokens = torch.tensor([r + [model.tokenizer.eos_id] * (width - len(r)) for r in rows])
    model.prepare_for_inference()
    rewards = model.infer((tokens, torch.tensor([len(r) for r in rows])))
    model.finish_inference()
    model.save_to(os.path.join(out_dir, "aligner_sp.nemo"))
    with open(os.path.join(out_dir, "reference.json"), "w") as f:
        json.dump({"tokens": rows, "rewards": rewards.float().tolist()}, f)


if __name__ == "__main__":
    write(sys.argv[1])
