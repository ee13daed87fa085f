"""Gradient-norm clipping without apex: the same parameter filters as NeMo, reduced over TP and PP ranks."""

import torch


@torch.no_grad()
def clip_grad_norm_fp32(parameters, max_norm, norm_type=2, use_fsdp=False):
    """Drop-in for ``nemo...clip_grads.clip_grad_norm_fp32`` (L2 only, no FSDP).

    Shared parameters and tensor-parallel duplicates (e.g. LayerNorm weights) are counted once, as NeMo does; the
    squared norm is summed over the model-parallel group so every rank sees the norm of the whole model.
    """
    from megatron.core import parallel_state
    from megatron.core.tensor_parallel.layers import param_is_not_tensor_parallel_duplicate
    from nemo.utils.model_utils import param_is_not_shared

    if norm_type != 2 or use_fsdp:
        raise NotImplementedError("nemo_hs2 CPU gradient clipping supports the L2 norm without FSDP only")
    if isinstance(parameters, torch.Tensor):
        parameters = [parameters]
    params = [p for p in parameters if p.grad is not None]
    grads = [p.grad.detach() for p in params]
    counted = [p.grad.detach() for p in params if param_is_not_shared(p) and param_is_not_tensor_parallel_duplicate(p)]
    total = torch.zeros((), dtype=torch.float32, device=grads[0].device if grads else "cpu")
    for g in counted:
        total += g.float().pow(2).sum()
    torch.distributed.all_reduce(total, group=parallel_state.get_model_parallel_group())
    total = total.sqrt()
    coeff = torch.clamp(float(max_norm) / (total + 1e-6), max=1.0)
    if grads:
        torch._foreach_mul_(grads, coeff)
    return total
