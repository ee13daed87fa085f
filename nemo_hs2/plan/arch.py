"""The model's shape and parameter counts (whole model and per tensor-parallel rank), from a model config.

Counts follow Megatron's GPT layer: fused QKV (grouped-query: a + 2g heads of size d), output projection, FC1
(doubled for gated MLPs), FC2, two norms; biases when ``model.bias``. The reward model keeps the backbone, adds a
``attributes``-output head (RowParallelLinear: weight split over TP, bias not) and still allocates the LM output
layer (NeMo-Aligner's ``GPTRewardModel`` builds it and never calls it)."""

from __future__ import annotations

from dataclasses import dataclass

from nemo_hs2.plan.layout import Layout, Vocab, tokenizer_vocab
from nemo_hs2.plan.read import get


@dataclass
class Arch:
    layers: int
    hidden: int
    ffn: int
    heads: int
    groups: int
    head_dim: int
    vocab: int | None
    padded_vocab: int | None
    gated: bool
    norm: int          # parameters of one norm (2h LayerNorm / LayerNorm1p, h RMSNorm)
    bias: bool
    learned_pos: int   # learned absolute position-embedding parameters (0 for RoPE)
    attributes: int

    def layer_params(self, tp: int = 1) -> float:
        """Parameters of one transformer layer on one TP rank (tp=1: the whole layer)."""
        h, a, g, d, f = self.hidden, self.heads, self.groups, self.head_dim, self.ffn
        k = 2 if self.gated else 1
        qkv = h * (a + 2 * g) * d + ((a + 2 * g) * d if self.bias else 0)
        proj = a * d * h
        fc1 = h * f * k + (f * k if self.bias else 0)
        fc2 = f * h
        replicated = 2 * self.norm + ((2 * h) if self.bias else 0)  # norms, proj and fc2 biases
        return (qkv + proj + fc1 + fc2) / tp + replicated

    def matmul_weights_per_layer(self) -> int:
        h, a, g, d, f = self.hidden, self.heads, self.groups, self.head_dim, self.ffn
        return h * (a + 2 * g) * d + a * d * h + h * f * (2 if self.gated else 1) + f * h

    def head_params(self, tp: int = 1) -> float:
        return self.hidden * self.attributes / tp + self.attributes  # RowParallelLinear: weight split, bias not

    def counts(self) -> dict[str, float]:
        """Parameter counts; 'lm_with_output_layer' uses the tokenizer's vocabulary (published sizes do)."""
        v, pv, h = self.vocab or 0, self.padded_vocab or 0, self.hidden
        layers = self.layers * self.layer_params()
        backbone = v * h + self.learned_pos + layers + self.norm
        return {
            "per_layer": self.layer_params(),
            "transformer_layers": layers,
            "embedding": v * h,
            "lm_output_layer": v * h,
            "reward_head": self.head_params(),
            "lm_with_output_layer": backbone + v * h,
            "reward_model": backbone + self.head_params(),
            "allocated_padded": pv * h + self.learned_pos + layers + self.norm + pv * h + self.head_params(),
        }


def arch_of(m, layout: Layout, vocab: Vocab | None) -> Arch | None:
    """The architecture to count; None when the head size is undefined (hidden not divisible by the heads and no
    kv_channels). Independent of the layout's errors: a model's size does not depend on how it is split."""
    hidden, heads = int(m.hidden_size), int(m.num_attention_heads)
    if get(m, "kv_channels") is None and (heads < 1 or hidden % heads):
        return None
    norm = str(get(m, "normalization", "layernorm")).lower()
    learned = str(get(m, "position_embedding_type", "learned_absolute")) == "learned_absolute"
    max_pos = int(get(m, "max_position_embeddings", get(m, "encoder_seq_length", 0)))
    return Arch(
        layers=int(m.num_layers), hidden=hidden, ffn=int(get(m, "ffn_hidden_size", 4 * hidden)), heads=heads,
        groups=int(get(m, "num_query_groups", heads)),
        head_dim=int(get(m, "kv_channels", hidden // heads if heads else 0)),
        vocab=tokenizer_vocab(m), padded_vocab=vocab.padded if vocab is not None else None,
        gated=str(get(m, "activation", "gelu")).endswith("glu"),
        norm=hidden if norm == "rmsnorm" else 2 * hidden, bias=bool(get(m, "bias", True)),
        learned_pos=max_pos * hidden if learned else 0, attributes=layout.attributes,
    )


def parameter_counts(arch: Arch) -> dict[str, int]:
    return {k: round(v) for k, v in arch.counts().items()}
