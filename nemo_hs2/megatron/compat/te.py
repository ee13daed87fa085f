"""Patches for a stack without Transformer Engine: the local (megatron-core) layer spec, and LayerNorm1P where
neither apex nor TE provides zero-centred gamma. ``local-spec`` must be registered before ``layernorm1p``, which wraps it."""

from __future__ import annotations


from nemo_hs2.megatron.compat.registry import CompatError, no_te, patch


@patch("local-spec", "te", "NeMo-Aligner's reward model builds every layer spec eagerly, TE ones included; "
        "without TE only the local (megatron-core) spec can be built", no_te, dists=("nemo_aligner", "nemo_toolkit"))
def _local_spec():
    import nemo_aligner.models.nlp.gpt.megatron_gpt_reward_model as aligner_rm
    from megatron.core.models.gpt.gpt_layer_specs import get_gpt_layer_local_spec

    def get_specs(spec_name="", transformer_config=None, *args, **kwargs):
        if spec_name not in ("", None):
            raise CompatError(f"layer spec '{spec_name}' needs Transformer Engine, which is not installed")
        return get_gpt_layer_local_spec()

    aligner_rm.get_specs = get_specs


@patch("layernorm1p", "apex", "without apex or TE megatron-core's torch norm refuses zero-centred gamma (layernorm1p, "
        "Nemotron-4); build those norms as LayerNorm1P", lambda env: not (env.apex or env.te),
        dists=("megatron_core", "nemo_aligner"))
def _layernorm1p():
    import nemo_aligner.models.nlp.gpt.megatron_gpt_reward_model as aligner_rm

    from nemo_hs2.megatron.layernorm1p import layernorm1p_spec

    specs = aligner_rm.get_specs  # after local-spec, which is registered (so applied) first

    def get_specs(spec_name="", transformer_config=None, *args, **kwargs):
        spec = specs(spec_name, transformer_config, *args, **kwargs)
        if transformer_config is not None and transformer_config.layernorm_zero_centered_gamma:
            spec = layernorm1p_spec(spec, transformer_config)
        return spec

    aligner_rm.get_specs = get_specs
