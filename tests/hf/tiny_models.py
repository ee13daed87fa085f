"""Tiny random-init Hugging Face models of each imported family, written with ``save_pretrained``.

Weights are drawn wider than HF's default init (std 0.2, norms perturbed) so attention is sharp and every weight
(q/k/v order, norm scales, rotary frequencies) moves the outputs well above the parity tolerance.
"""

from __future__ import annotations

import os

CHATML = ("{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
          "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}")
CORPUS = ["The quick brown fox jumps over the lazy dog.", "A reward model scores responses to prompts.",
          "Helpfulness, correctness, coherence, complexity and verbosity.", "Numbers: 0 1 2 3 4 5 6 7 8 9 10 2024.",
          "Tensor and pipeline parallel layouts give the same outputs."] * 4
SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
# A Llama 3.1 RoPE scaling as NeMo applies it; with rope_theta 500000 and head_dim 16, 5 of 8 frequency pairs
# have wavelengths beyond 2048 and are changed, visibly so within a few dozen positions.
LLAMA31_SCALING = {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                   "original_max_position_embeddings": 8192}
# Llama 3.2 (Meta's Llama-3.2-1B / 3B config.json): the same formula with factor 32, and tied embeddings.
LLAMA32_SCALING = {**LLAMA31_SCALING, "factor": 32.0}
FAMILIES = ("llama3", "llama31", "llama32", "llama_tied", "nemotron", "gpt_neox")


def tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    tok.train_from_iterator(CORPUS, trainers.BpeTrainer(vocab_size=300, special_tokens=SPECIALS,
                                                        initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<|im_start|>", eos_token="<|im_end|>",
                                   pad_token="<|im_end|>", unk_token="<|endoftext|>")
    fast.chat_template = CHATML
    return fast


def config(family: str, vocab_size: int):
    from transformers import GPTNeoXConfig, LlamaConfig, NemotronConfig

    common = dict(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=8192, initializer_range=0.2,
                  architectures=None)
    if family == "nemotron":
        return NemotronConfig(**{**common, "architectures": ["NemotronForCausalLM"]}, intermediate_size=128,
                              partial_rotary_factor=0.5, norm_eps=1e-5, rope_theta=10000.0, hidden_act="relu2",
                              tie_word_embeddings=False)
    if family == "gpt_neox":  # Megatron's classic GPT (sequential residuals); partial rotary exercised
        return GPTNeoXConfig(vocab_size=vocab_size, hidden_size=64, num_hidden_layers=2, num_attention_heads=4,
                             intermediate_size=128, max_position_embeddings=8192, initializer_range=0.2,
                             architectures=["GPTNeoXForCausalLM"], hidden_act="gelu", rotary_pct=0.5,
                             rotary_emb_base=10000, layer_norm_eps=1e-5, use_parallel_residual=False,
                             attention_bias=True, tie_word_embeddings=False)
    scaling = {"llama31": LLAMA31_SCALING, "llama32": LLAMA32_SCALING}.get(family)
    extra = {"rope_scaling": dict(scaling), "max_position_embeddings": 131072} if scaling else {}
    return LlamaConfig(**{**common, "architectures": ["LlamaForCausalLM"], **extra}, intermediate_size=96,
                       rope_theta=500000.0, rms_norm_eps=1e-5,
                       tie_word_embeddings=family in ("llama_tied", "llama32"))


def write(family: str, directory: str, seed: int = 0) -> str:
    import torch
    from transformers import AutoModelForCausalLM

    tok = tokenizer()
    cfg = config(family, len(tok))
    torch.manual_seed(seed)
    model = AutoModelForCausalLM.from_config(cfg, torch_dtype=torch.float32)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):  # RMSNorm scales around 1; LayerNorm1P stores scale - 1
                p.copy_((0.0 if family == "nemotron" else 1.0) + 0.2 * torch.randn_like(p))
            elif name.endswith("bias"):
                p.copy_(0.1 * torch.randn_like(p))
            else:
                p.normal_(0.0, 0.2)
    os.makedirs(directory, exist_ok=True)
    model.save_pretrained(directory, safe_serialization=True)
    tok.save_pretrained(directory)
    return directory
