"""NeMo-Aligner's ``GPTRewardModel`` taught to run packed micro-batches (``nemo_hs2.data.packing``).

The stock forward reads the reward at ``hidden[lengths - 1, b]``, one row per batch entry. Packed, a batch entry
holds several rows, so ``PackedGPTRewardModel.forward`` takes ``row_ends`` ([rows, 2]: packed row, column of each
row's end-of-response token) and hands the stock ``RewardModelHead`` those hidden states as a batch of one-token
rows, so the head itself (weights, fp32 autocast, attribute outputs) is the parent's, unchanged. Without
``row_ends`` it is exactly the parent's forward.

The backbone runs with either a block-diagonal causal ``attention_mask`` (local attention) or ``packed_seq_params``
(THD, Transformer Engine: its RoPE restarts per sequence by ``cu_seqlens``). On the local path megatron-core
rotates every token by its column, so there RoPE is gathered by ``position_ids`` (restarting per row) for the
duration of the call: each token gets the very angles it has unpacked.

The class is set on the instance NeMo-Aligner's ``model_provider_func`` built (``make_packable``): it adds no
state, so weights, sharded state dicts and checkpoints are the parent's.
"""

from __future__ import annotations

import contextlib
from unittest.mock import patch

import torch
from megatron.core.models.gpt import GPTModel
from nemo_aligner.models.nlp.gpt.gpt_reward_model import GPTRewardModel


class PackedGPTRewardModel(GPTRewardModel):
    def forward(self, input_ids, lengths, position_ids, attention_mask, decoder_input=None, labels=None,
                inference_params=None, row_ends=None, packed_seq_params=None):
        if row_ends is None:
            return super().forward(input_ids=input_ids, lengths=lengths, position_ids=position_ids,
                                   attention_mask=attention_mask, decoder_input=decoder_input, labels=labels,
                                   inference_params=inference_params)
        rotary = contextlib.nullcontext() if packed_seq_params is not None else self._rotary_by_position(position_ids)
        with patch.object(self, "post_process", False), rotary:
            hidden = GPTModel.forward(self, input_ids=input_ids, position_ids=position_ids,
                                      attention_mask=attention_mask, decoder_input=decoder_input,
                                      inference_params=inference_params, packed_seq_params=packed_seq_params)
        if not self.post_process:
            return hidden
        last = hidden[row_ends[:, 1], row_ends[:, 0]]  # hidden is [width, packed rows, hidden]: [rows, hidden]
        ones = torch.ones(last.shape[0], dtype=torch.int64, device=last.device)
        return self.rm_head(last.unsqueeze(0), ones)  # each row a one-token sequence: the head reads it at 0

    @contextlib.contextmanager
    def _rotary_by_position(self, position_ids):
        rotary = getattr(self, "rotary_pos_emb", None)
        if self.position_embedding_type != "rope" or rotary is None:
            yield
            return
        by_column = rotary.forward

        def by_position(max_seq_len, offset=0, packed_seq=False):
            table = by_column(int(position_ids.max()) + 1, offset)  # [positions, 1, 1, dim], angles by position
            return table[position_ids.t()].flatten(2, 3)  # [width, packed rows, 1, dim]: broadcast over heads

        with patch.object(rotary, "forward", by_position):
            yield


def check_packable(model) -> None:
    """Packing reads one end-of-response token per row; the parent's other head modes read something else."""
    head = getattr(model, "rm_head", None)
    if head is not None and (head.output_sequence or head.use_avg_pool):
        raise ValueError("data.packing=true needs a reward head that reads the end-of-response token "
                         "(output_sequence and use_avg_pool are off)")


def make_packable(model):
    if type(model) is not GPTRewardModel:  # a subclass may have a forward of its own that this would bypass
        raise TypeError(f"packing expects NeMo-Aligner's GPTRewardModel, got {type(model).__name__}")
    model.__class__ = PackedGPTRewardModel
    return model
