"""Patches for a stack without NVIDIA apex (PyPI has no build of it; NGC images do)."""

from __future__ import annotations

import torch

from nemo_hs2.megatron.compat.registry import no_apex, patch


@patch("ddp-strategy", "apex", "NLPDDPStrategy refuses to start without apex, which only its distributed_fused_adam needs",
        no_apex)
def _ddp_strategy():
    import nemo.collections.nlp.parts.nlp_overrides as nlpo
    from nemo.core.optim.mcore_optim import McoreDistributedOptimizer

    nlpo.HAVE_APEX = True
    # Both names are imported inside nlp_overrides' apex try-block; without apex dist-ckpt save/load hits NameError.
    nlpo.McoreDistributedOptimizer = McoreDistributedOptimizer
    nlpo.MegatronDistributedFusedAdam = type("MegatronDistributedFusedAdamUnavailable", (), {})


@patch("bert-models", "apex", "NLPModel.__init__ lists BERT checkpoints through an apex/TE-only import with a broken fallback",
        lambda env: not (env.apex and env.te))
def _bert_models():
    import nemo.collections.nlp.models.nlp_model as nlp_model

    nlp_model.get_megatron_pretrained_bert_models = lambda: []


@patch("build-model-defaults", "apex", "build_model imports an apex helper that megatron-core also provides", no_apex)
def _build_model_defaults():
    import nemo.collections.nlp.modules.common.megatron.build_model as build_model
    from megatron.core.tensor_parallel.layers import set_defaults_if_not_set_tensor_model_parallel_attributes

    build_model.set_defaults_if_not_set_tensor_model_parallel_attributes = (
        set_defaults_if_not_set_tensor_model_parallel_attributes
    )


@patch("optimizer-param-groups", "apex", "optimizer param grouping uses apex's listify_model and fused LayerNorm classes",
        no_apex)
def _optimizer_param_groups():
    import nemo.collections.nlp.modules.common.megatron.utils as megatron_utils

    megatron_utils.listify_model = lambda model: model if isinstance(model, list) else [model]
    megatron_utils.FusedLayerNorm = megatron_utils.FastLayerNorm = torch.nn.LayerNorm
    megatron_utils.MixedFusedRMSNorm = torch.nn.LayerNorm


@patch("adam-step-sharding", "apex", "torch AdamW keeps a 0-dim per-parameter 'step' that mcore's optimizer sharding rejects; "
        "store it once per param group, as apex FusedAdam does", no_apex)
def _adam_step_sharding():
    import nemo.collections.nlp.parts.nlp_overrides as nlpo

    to_sharding = nlpo.optim_state_to_sharding_state

    def optim_state_to_sharding_state(optim_state_dict, id_to_sharded_param_map, exclude_keys=()):
        steps = [float(s["step"]) for s in optim_state_dict["state"].values() if torch.is_tensor(s.get("step"))]
        to_sharding(optim_state_dict, id_to_sharded_param_map, exclude_keys=tuple(exclude_keys) + ("step",))
        if steps:
            for group in optim_state_dict["param_groups"]:
                group["step"] = max(steps)

    nlpo.optim_state_to_sharding_state = optim_state_to_sharding_state
    load_checkpoint = nlpo.NLPDDPStrategy.load_checkpoint

    def load_with_group_steps(self, *args, **kwargs):
        checkpoint = load_checkpoint(self, *args, **kwargs)
        for osd in checkpoint.get("optimizer_states") or []:
            if not (isinstance(osd, dict) and "state" in osd):
                continue
            for group in osd["param_groups"]:
                if "step" not in group:
                    continue
                for pid in group["params"]:
                    if pid in osd["state"] and "step" not in osd["state"][pid]:
                        osd["state"][pid]["step"] = torch.tensor(float(group["step"]))
        return checkpoint

    nlpo.NLPDDPStrategy.load_checkpoint = load_with_group_steps
