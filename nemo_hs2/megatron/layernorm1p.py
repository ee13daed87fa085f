"""Nemotron-4's ``layernorm1p`` for megatron-core's local layer spec (apex and Transformer Engine have their own)."""

from __future__ import annotations

import torch


class LayerNorm1PError(ValueError):
    """A config asks LayerNorm1P for something only apex or Transformer Engine provide."""


class LayerNorm1P(torch.nn.LayerNorm):
    """Zero-centred-gamma LayerNorm (NeMo's ``layernorm1p``, Nemotron-4): ``LN(x) * (1 + w) + b``.

    What apex's FusedLayerNorm and TE's norm compute with ``layernorm_zero_centered_gamma``; the weight starts at 0
    (a unit scale), and weight decay pulls the scale towards 1 rather than 0. A ``torch.nn.LayerNorm`` subclass, so
    NeMo's optimizer grouping exempts it from weight decay like every other norm.
    """

    def __init__(self, config, hidden_size: int, eps: float = 1e-5, **unused):
        if config.normalization != "LayerNorm":
            raise LayerNorm1PError(f"zero-centred gamma with normalization={config.normalization}: only LayerNorm has it")
        if config.sequence_parallel or config.persist_layer_norm or config.memory_efficient_layer_norm:
            raise LayerNorm1PError("sequence_parallel / persist_layer_norm / memory_efficient_layer_norm need apex or "
                              "Transformer Engine; set them false on this machine")
        super().__init__(hidden_size, eps=eps)
        torch.nn.init.zeros_(self.weight)

    def forward(self, x):
        return torch.nn.functional.layer_norm(x, self.normalized_shape, self.weight + 1, self.bias, self.eps)


def layernorm1p_spec(spec, config):
    """``spec`` (a GPT layer spec) as a block spec whose torch norms are LayerNorm1P; apex/TE norms are kept."""
    import dataclasses

    import megatron.core.transformer.transformer_block as block
    from megatron.core.transformer.spec_utils import ModuleSpec
    from megatron.core.transformer.torch_norm import WrappedTorchNorm

    swap = {k: LayerNorm1P for k in ("input_layernorm", "pre_mlp_layernorm")
            if getattr(spec.submodules, k) is WrappedTorchNorm}
    layer = dataclasses.replace(spec, submodules=dataclasses.replace(spec.submodules, **swap))
    final = LayerNorm1P if block.LayerNormImpl is WrappedTorchNorm else block.LayerNormImpl
    return ModuleSpec(module=block.TransformerBlock, submodules=block.TransformerBlockSubmodules(
        layer_specs=[layer] * block.get_num_layers_to_build(config), layer_norm=final))
