"""An HTTP reward server: NeMo-Aligner's reward-server interface plus per-attribute scores, with every resource
bounded.

NeMo-Aligner 0.7.0 serves its reward model with PyTriton (``nemo_aligner/algorithms/reward_server.py``): one model
(default name ``reward_model``, port 5555) with optional inputs ``sentences`` (BYTES, fully formatted prompt +
response text), ``tokens`` (INT64 ``[B, T]``) and ``sequence_lengths`` (INT64 ``[B, 1]``), and one output
``rewards`` (FP32 ``[B, 1]``). Its PPO and rejection-sampling clients (``RemoteGPTRMClient``) and the SteerLM
annotation script reach it through PyTriton's ``ModelClient``, i.e. ``tritonclient.http`` speaking Triton's KServe
v2 HTTP protocol. This package answers the calls those clients make: health, readiness, repository index, model
config / metadata, and ``POST /v2/models/{name}[/versions/1]/infer`` with JSON or binary tensors, answering in
kind; errors are ``{"error": message}`` with a 4xx/5xx status, which tritonclient raises as
``InferenceServerException``. Outputs: ``rewards`` (FP32 ``[B, 1]``, the weighted reward; ``[B, A]`` with
``server.rewards_output=attributes``), ``attributes`` (FP32 ``[B, A]``) and ``exceeded`` (BOOL ``[B, 1]``).
Plus ``POST /score`` (``{"conversations": [[{"role", "content"}, ...], ...]}``, scored with the checkpoint's own
template), ``GET /health``, ``/info``, ``/stats``.

Parts: ``config`` (every limit), ``protocol`` (KServe v2 tensors, bounded before allocation), ``service``
(requests to rows, predictions to answers), ``batching`` (the model loop and its scheduler), ``app`` (HTTP).

Over-length inputs are rejected by default (HTTP 400 naming the limit): a truncated input would be scored as a
different text than the one sent. ``server.overlength=truncate`` keeps the end of the input instead (as training
does) and reports it in ``exceeded`` / ``truncated``.
"""

from nemo_hs2.serving.app import EXIT_MODEL_FAILED, RewardServer, build_server
from nemo_hs2.serving.batching import Batcher, ModelLoopFailed, ShuttingDown, TokenScorer
from nemo_hs2.serving.config import ServerConfig
from nemo_hs2.serving.protocol import RequestError, encode_kserve_response, parse_kserve_request
from nemo_hs2.serving.service import RewardService

__all__ = ["EXIT_MODEL_FAILED", "Batcher", "ModelLoopFailed", "RequestError", "RewardServer",
           "RewardService", "ServerConfig", "ShuttingDown", "TokenScorer", "build_server", "encode_kserve_response",
           "parse_kserve_request"]
